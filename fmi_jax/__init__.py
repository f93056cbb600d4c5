"""fmi_jax: train image classifiers in JAX/Flax and explain their decisions.

Layers (a lower layer never imports a higher one):

  fmi_jax.data         datasets as uint8 NHWC arrays + int32 labels, from original
                       files, well-known local copies or tensorflow-datasets.
  fmi_jax.models       Flax linen modules and a name registry.
  fmi_jax.train        TrainState, jitted optax steps, the training loop,
                       orbax checkpoints, classification metrics.
  fmi_jax.attribution  attribution methods as pure functions of `fn(x) -> logits`,
                       and `flax_model`, which makes any Linen or NNX model such a
                       function.
  fmi_jax.evaluation   metrics of attributions.
  fmi_jax.plotting     numpy in, matplotlib Figure out (a PNG when given a path).
  fmi_jax.layout       the one rule that tells channels-first images from
                       channels-last ones, for every layer that takes images.
  fmi_jax.report       `report(fn, x, methods=..., out=...)`: maps, numbers and an
                       offline HTML page for any model (above attribution,
                       evaluation and plotting, like the studies).
"""

__version__ = "0.1.0"
