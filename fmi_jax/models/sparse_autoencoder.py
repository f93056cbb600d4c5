"""The k-sparse autoencoder and the classifier on its codes.

Encoder, top-k, linear decoder (Makhzani & Frey 2014, "k-Sparse Autoencoders";
the pre-encoder bias and the AuxK loss follow Gao et al. 2024, "Scaling and
evaluating sparse autoencoders"):

    a(x)  = W_enc (x - b_dec) + b_enc                  pre-activations, (L,)
    z(x)  = ReLU(a) * TopK_k(a)                        the sparse code
    x_hat = sum_j z_j d_j + b_dec                      d_j = decoder atom j, (D,)

`TopK_k(a)` is the 0/1 mask of the k largest pre-activations: exactly k ones per
sample, ties broken towards the lower index, so ties never select more than k.
The code has k nonzeros whenever at least k pre-activations are positive (with
1024 latents and k = 50 the trained model's test set measures 50.0 per sample, see
`sae_metrics.json`). The gradient reaches only the selected units: the mask is
piecewise constant in `a`.

Options: a tied decoder (d_j = column j of W_enc), unit-norm atoms (d_j / ||d_j||,
applied in the forward pass so no projection step is needed), and one of two
mitigations for dead latents (latents that stop firing and never recover):

  'aux_k'       during training, the `aux_k` dead latents with the largest
                pre-activations also decode the residual x - x_hat (the
                reconstruction task adds that MSE times `aux_coef` to the loss);
                a latent is dead once it has not fired for `dead_after_steps`
                optimizer steps (Gao et al. 2024, Sec. 2.4);
  'k_schedule'  k starts at `k_start` and falls linearly to k over
                `k_schedule_steps` steps, so early on every latent gets gradient
                (Makhzani & Frey 2014, Sec. 3.2);
  'none'.

The step counter and the per-latent "steps since fired" counters live in the
`batch_stats` collection: like batch-norm statistics they are updated in training,
frozen in evaluation and saved in every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "KSparseAutoencoder",
    "MITIGATIONS",
    "SparseAutoencoderClassifier",
    "SparseCodeClassifier",
    "top_k_mask",
]

MITIGATIONS = ("aux_k", "k_schedule", "none")


def top_k_mask(values: jax.Array, k: int | jax.Array) -> jax.Array:
    """Boolean mask of the `k` largest entries along the last axis, exactly `k` per row.

    Ties are broken towards the lower index. `k` may be a Python int (uses
    `lax.top_k`) or a traced integer (a k schedule; uses ranks from a stable sort).
    """
    n = values.shape[-1]
    if isinstance(k, int):
        if not 0 < k <= n:
            raise ValueError(f"k must be in [1, {n}], got {k}")
        _, idx = jax.lax.top_k(values.reshape(-1, n), k)
        rows = jnp.arange(idx.shape[0])[:, None]
        mask = jnp.zeros((idx.shape[0], n), bool).at[rows, idx].set(True)
        return mask.reshape(values.shape)
    order = jnp.argsort(-values, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return ranks < k


class KSparseAutoencoder(nn.Module):
    """The k-sparse autoencoder (see the module docstring).

    `__call__(x, train)` returns a dict: `reconstruction` (shaped like x), `codes`
    (N, latents) and `num_dead`; in training with `mitigation='aux_k'` also
    `aux_reconstruction`, the decoding of the top `aux_k` dead latents.
    """

    latents: int = 1024
    k: int = 50
    image_shape: Sequence[int] = (28, 28, 1)
    tied: bool = False
    unit_norm_decoder: bool = True
    mitigation: str = "aux_k"
    aux_k: int = 256
    dead_after_steps: int = 20
    k_start: int = 200
    k_schedule_steps: int = 3000

    def setup(self) -> None:
        if self.mitigation not in MITIGATIONS:
            raise ValueError(f"mitigation must be one of {MITIGATIONS}, got {self.mitigation!r}")
        if not 0 < self.k <= self.latents:
            raise ValueError(f"k must be in [1, latents={self.latents}], got {self.k}")
        dim = math.prod(self.image_shape)
        self.b_dec = self.param("b_dec", nn.initializers.zeros, (dim,))
        if self.tied:
            self.w_enc = self.param(
                "w_enc", lambda key, shape: _unit_rows(key, shape[::-1]).T, (dim, self.latents)
            )
        else:
            self.w_dec = self.param("w_dec", _unit_rows, (self.latents, dim))
            # The encoder starts as the decoder's transpose (Gao et al. 2024, Sec. 2.3):
            # every latent begins as a matched filter of its own atom.
            self.w_enc = self.param("w_enc", lambda key, shape: self.w_dec.T, (dim, self.latents))
        self.b_enc = self.param("b_enc", nn.initializers.zeros, (self.latents,))
        self.step = self.variable("batch_stats", "step", jnp.zeros, (), jnp.int32)
        self.since_fired = self.variable(
            "batch_stats", "steps_since_fired", jnp.zeros, (self.latents,), jnp.int32
        )

    # ------------------------------------------------------------------ pieces
    def _flat(self, x: jax.Array) -> jax.Array:
        if tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"KSparseAutoencoder expects inputs (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(x.shape)}; set image_shape in the model config"
            )
        return x.reshape(x.shape[0], -1)

    def pre_activations(self, x: jax.Array) -> jax.Array:
        """a(x) = W_enc (x - b_dec) + b_enc, shape (N, latents)."""
        return (self._flat(x) - self.b_dec) @ self.w_enc + self.b_enc

    def atoms(self) -> jax.Array:
        """Decoder atoms d_j as rows, (latents, D); unit norm when `unit_norm_decoder`."""
        w = self.w_enc.T if self.tied else self.w_dec
        if self.unit_norm_decoder:
            w = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-8)
        return w

    def decoder_atoms(self) -> jax.Array:
        """The atoms shaped like images, (latents, *image_shape)."""
        return self.atoms().reshape(self.latents, *self.image_shape)

    def _active_k(self, train: bool):
        if train and self.mitigation == "k_schedule":
            frac = jnp.clip(self.step.value / max(self.k_schedule_steps, 1), 0.0, 1.0)
            k_now = jnp.round(self.k_start + (self.k - self.k_start) * frac).astype(jnp.int32)
            return jnp.maximum(k_now, self.k)
        return self.k

    def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The sparse code z(x), (N, latents)."""
        a = self.pre_activations(x)
        return jnp.where(top_k_mask(a, self._active_k(train)), nn.relu(a), 0.0)

    def decode(self, codes: jax.Array) -> jax.Array:
        """x_hat = codes @ atoms + b_dec, shaped like the images."""
        flat = codes @ self.atoms() + self.b_dec
        return flat.reshape(codes.shape[0], *self.image_shape)

    # ------------------------------------------------------------------ forward
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        a = self.pre_activations(x)
        codes = jnp.where(top_k_mask(a, self._active_k(train)), nn.relu(a), 0.0)
        out = {"reconstruction": self.decode(codes), "codes": codes}
        dead = self.since_fired.value >= self.dead_after_steps
        out["num_dead"] = jnp.sum(dead)
        if train and self.mitigation == "aux_k":
            # Only dead latents compete; the rest are pushed below every dead one.
            a_dead = jnp.where(dead, a, -jnp.inf)
            k_aux = min(self.aux_k, self.latents)
            # No ReLU here: a dead latent's pre-activation is usually negative, and a
            # ReLU would give it no gradient, which is what left it dead.
            aux_codes = jnp.where(top_k_mask(a_dead, k_aux) & dead, a, 0.0)
            out["aux_reconstruction"] = (aux_codes @ self.atoms()).reshape(x.shape)
        if train and not self.is_initializing():
            fired = jnp.any(codes != 0, axis=0)
            self.since_fired.value = jnp.where(fired, 0, self.since_fired.value + 1)
            self.step.value = self.step.value + 1
        return out


def _unit_rows(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    w = jax.random.normal(key, shape, dtype)
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


class SparseCodeClassifier(nn.Module):
    """MLP on sparse codes: Dense(512) -> ReLU -> dropout -> Dense(256) -> ReLU ->
    dropout -> Dense(num_classes). Layers `fc1`, `fc2`, `head`."""

    hidden: Sequence[int] = (512, 256)
    dropout: float = 0.3
    num_classes: int = 10

    @nn.compact
    def __call__(self, codes: jax.Array, *, train: bool = False) -> jax.Array:
        h = codes
        for i, width in enumerate(self.hidden, 1):
            h = nn.relu(nn.Dense(width, name=f"fc{i}")(h))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_classes, name="head")(h)


class SparseAutoencoderClassifier(nn.Module):
    """images -> `autoencoder.encode` -> `classifier` -> logits.

    The composed pixel-to-prediction function the attribution methods explain.
    `encode`, `classify_codes` and `decoder_atoms` expose its parts (call them with
    `model.apply(variables, ..., method=...)`). Training it with
    `frozen=('autoencoder',)` trains the classifier on frozen codes; without, it
    fine-tunes end to end.
    """

    autoencoder: KSparseAutoencoder
    classifier: SparseCodeClassifier

    def encode(self, x: jax.Array) -> jax.Array:
        return self.autoencoder.encode(x, train=False)

    def classify_codes(self, codes: jax.Array, *, train: bool = False) -> jax.Array:
        return self.classifier(codes, train=train)

    def decoder_atoms(self) -> jax.Array:
        return self.autoencoder.decoder_atoms()

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.classifier(self.autoencoder.encode(x, train=False), train=train)
