"""Faithfulness and complexity of attribution maps: deletion, insertion, pixel flipping,
ROAD, faithfulness correlation and estimate, sensitivity-n, monotonicity,
non-sensitivity, selectivity, IROF, Gini, entropies.

Faithfulness metrics perturb the input in the order an attribution map ranks its
pixels and watch the model's output for the explained class. Notation: example ``x``
with ``P`` pixels, target class ``t``, model score ``f_t`` (the softmax probability by
default, as RISE; the raw logit with ``probabilities=False``), a substrate ``b`` of the
shape of ``x``, and ``m`` pixels per step.

* Pixel relevance. For images ``(N, H, W, C)`` the relevance of a pixel is its
  attribution summed over channels (signed), and removing a pixel replaces all of its
  channels; maps may also be given per pixel, ``(N, H, W)``. Any other input ``(N, ...)``
  treats every scalar feature as a pixel. Pixels are ranked by relevance, highest first
  (``rank 0`` = most relevant); ties are broken by flat pixel index, lower first, so the
  curves are deterministic (this matters for maps that are exactly 0 on a whole
  background, like Integrated Gradients with a black baseline on Fashion-MNIST).
* Steps. ``S = ceil(P / m)`` steps; after step ``k = 0..S`` the pixel set
  ``R_k = {p : rank(p) < k m}`` has been changed (the last step may change fewer than
  ``m`` pixels). The mask of every step is computed from the ranks, so no loop runs over
  steps or images.
* Deletion (Petsiuk, Das & Saenko, "RISE", BMVC 2018, arXiv:1806.07421):
  ``del_k = f_t(x with the pixels of R_k replaced by b)``, from ``f_t(x)`` at ``k = 0`` to
  ``f_t(b)`` at ``k = S``. A faithful map makes it fall fast: low AUC is good.
* Insertion (RISE): ``ins_k = f_t(b with the pixels of R_k taken from x)``, from ``f_t(b)``
  to ``f_t(x)``. A faithful map makes it rise fast: high AUC is good.
* Substrates: ``'zero'`` (``b = 0``, RISE's deletion substrate), ``'rise_blur'``
  (RISE's insertion substrate), ``'gaussian'`` (a Gaussian blur with mass-preserving
  borders), or any array broadcastable to ``x`` (a scalar, a dataset mean, a fixed noise
  image). Both blurs act on every channel separately, keep the image size, and take
  their standard deviation ``sigma`` from ``blur_sigma`` (5 pixels, as RISE).

  - ``'rise_blur'`` is RISE's code (github.com/eclique/RISE, ``evaluation.py``): each
    channel convolved with the 11 x 11 kernel of ``gkern(11, sigma)`` with zero padding
    5. ``gkern`` filters a centred delta, ``scipy.ndimage.gaussian_filter(delta,
    sigma)`` (truncated at ``r = round(4 sigma)``, ``'reflect'`` borders), so the kernel
    is separable, ``k[i, j] = k1[i] k1[j]`` with ``k1[i] = sum_n g(i - n)`` over the
    mirror images ``n`` of the centre sample under half-sample reflection of 11 samples
    (``n mod 22`` is 5 or 16) with ``|i - n| <= r``, and ``g`` the Gaussian normalised
    over its ``2 r + 1`` taps. The Gaussian's mass outside the window is folded back in,
    so the kernel sums to 1 without being the Gaussian normalised over the window: at
    sigma 5 it is nearly a box (``k1`` from 0.0880 at the ends to 0.0940 at the centre,
    where the window-normalised Gaussian goes from 0.066 to 0.109). Zero padding darkens
    a 5-pixel frame: a constant image keeps its value only 5 or more pixels from every
    border, and at sigma 5 falls to 0.547 of it in the middle of an edge and 0.299 at a
    corner. RISE normalised its images by the ImageNet mean and standard deviation, so
    its zero is the mean colour; here it is 0 of whatever the model function takes.
  - ``'gaussian'``: ``b = G_sigma * x``, the separable Gaussian truncated at 4 sigma of
    :func:`fmi_jax.attribution.smoothing.gaussian_kernel` with half-sample symmetric
    borders, as in :mod:`fmi_jax.attribution.smoothing`: every row of the blur is a
    weighted average, so a constant image is its own blur, borders included.

  :func:`insertion_curve` defaults to ``'rise_blur'``: it computes RISE's insertion
  metric, whose other conventions (softmax probability, one row per step, trapezoid AUC,
  ``'zero'`` for deletion) are the defaults here too, so its AUC should be RISE's. The
  two blurs give different AUCs on the same maps (docs/guide.md), and studies that
  reported insertion AUCs with the symmetric blur name ``'gaussian'`` in their configs,
  which keeps their numbers.
* AUC (RISE): the trapezoid rule on ``S + 1`` points equally spaced in ``[0, 1]``,
  ``AUC = (sum_k c_k - (c_0 + c_S) / 2) / S``. When ``m`` divides ``P`` the abscissa is
  exactly the fraction of pixels changed; otherwise the last, shorter step gets the same
  width as the others (RISE's convention).
* Pixel flipping (Samek, Binder, Montavon, Lapuschkin & Müller, "Evaluating the
  visualization of what a deep neural network has learned", IEEE TNNLS 2017,
  arXiv:1509.06321): the deletion curve with pixels removed most relevant first (MoRF,
  identical to :func:`deletion_curve`) or least relevant first (LeRF, ascending
  relevance; ties again lower index first). MoRF should fall faster than LeRF. Samek et
  al. summarise MoRF by the area over the perturbation curve,
  ``AOPC = 1 / (S + 1) * sum_{k=0..S} (c_0 - c_k)`` (:func:`aopc`; high is good). They
  replaced regions by uniform noise; pass a noise image as the substrate to do the same.
* ROAD (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient
  Evaluation Strategy for Attribution Methods", ICML 2022, arXiv:2202.00449): deletion
  in MoRF or LeRF order where the removed pixels are not set to a constant but filled
  by noisy linear imputation from the pixels around them
  (:mod:`fmi_jax.evaluation.imputation`), so the model cannot read the class from the
  shape of the holes. :func:`road` scores the model after removing
  ``floor(f P)`` pixels for each fraction ``f`` (``0.1, ..., 0.9`` by default, the
  paper's), each (example, fraction) pair with its own noise. The paper plots the
  accuracy (``score='correct'``, averaged over a dataset); MoRF should fall fast and
  LeRF stay high (the accuracy needs ``target`` to be the true label; with the
  predicted class, ``'correct'`` says whether the prediction survived). Exactly
  ``floor(f P)`` pixels are removed. Unlike the curves above, tied pixels go in a
  random order drawn from the key: a map that is 0 on a whole background would
  otherwise remove it row by row from the top, and the band-shaped hole would tell
  the model what ROAD is meant to hide.
  pytorch-grad-cam's ``ROADMostRelevantFirst(percentile=q)`` instead removes every pixel
  at or above the map's ``q``-th percentile, so all pixels tied at the threshold go
  (a map that is 0 on most of the image can remove it whole), and it reports the change
  of the score from the clean input; Quantus' ``ROAD`` uses fractions
  ``0.01, 0.03, ..., 0.99`` and the accuracy.
* Faithfulness correlation (Bhatt, Weller & Moura, "Evaluating and Aggregating
  Feature-based Model Explanations", IJCAI 2020, arXiv:2005.00631; Quantus'
  ``FaithfulnessCorrelation``): over ``samples`` random subsets ``S`` of ``|S|``
  pixels, the Pearson correlation between ``sum_{p in S} relevance_p`` and
  ``f_t(x) - f_t(x with S replaced by b)``. The score is the logit by default, as
  Quantus (``softmax=False``); ``|S|`` defaults to one image row, Quantus' 224 on
  224 x 224 images. Quantus' default baseline ``'black'`` is each input's minimum, which
  is the substrate ``'zero'`` here for images in [0, 1] (pass ``x.min((1, 2, 3),
  keepdims=True)`` as the substrate for standardised inputs). Quantus 0.6 spreads a
  per-pixel map over the input's channels and samples single channel values; here a
  subset is always of whole pixels (the map summed over channels), so the two agree on
  single-channel inputs. Quantus' default rescaling (``normalise=True``) divides the
  batch of maps by its largest value, one positive factor, which the correlation
  ignores. Subsets all have the same size, so adding a constant to every relevance or
  scaling the map by a positive factor does not change the correlation (a negative
  factor flips its sign).
* Sensitivity-n (Ancona, Ceolini, Öztireli & Gross, "Towards better understanding of
  gradient-based attribution methods for deep neural networks", ICLR 2018,
  arXiv:1711.06104): faithfulness correlation at several subset sizes ``n``, one column
  each; a map "satisfies sensitivity-n" when every subset's relevance equals the drop,
  so the correlation is 1. Quantus' ``SensitivityN`` computes something else under the
  name: it removes pixels cumulatively, most relevant first, pairs each step's
  relevance (of the pixels removed in that step alone) with the cumulative drop, and
  correlates those pairs across the images of the batch, one value per step and none
  per image (with the softmax probability by default); here, as in the paper, subsets
  are random and each example gets its own correlation over ``samples`` subsets per
  size.
* Monotonicity (Arya et al., "One Explanation Does Not Fit All: A Toolkit and Taxonomy
  of AI Explainability Techniques", 2019, arXiv:1909.03012; AIX360's
  ``monotonicity_metric``): start from the substrate, put the pixels of ``x`` back
  least relevant first, and ask whether the target score never falls after the first
  step (a bool per example). Quantus' ``Monotonicity`` (0.6) fills its start with the
  baseline and then "perturbs" it by writing the baseline into the chosen features
  again, so no value of ``x`` ever enters, every step scores the baseline, and every
  map passes (with a fixed baseline; a random one makes the result random).
  ``scripts/quantus_agreement.py`` shows it.
* Monotonicity correlation (Nguyen & Martínez, "On quantitative aspects of model
  interpretability", 2020, arXiv:2007.07584; Quantus' ``MonotonicityCorrelation``): the
  Spearman correlation, over groups of pixels, between a group's relevance and the mean
  squared change of the target score when the group is replaced by uniform noise; a
  faithful map gives the pixels that move the score most the most relevance.
* Faithfulness estimate (Alvarez-Melis & Jaakkola, "Towards robust interpretability
  with self-explaining neural networks", NeurIPS 2018, arXiv:1806.07538; Quantus'
  ``FaithfulnessEstimate``): the Pearson correlation, over groups of pixels taken most
  relevant first, between a group's relevance and the drop of the target score when
  that group alone is replaced by the substrate.
* Non-sensitivity (Nguyen & Martínez 2020, above; Quantus' ``NonSensitivity``): the
  number of groups of pixels that the map calls irrelevant while replacing them moves
  the score, or relevant while replacing them does not: the symmetric difference of
  the two sets, 0 at best.
* Regions. Selectivity (Montavon, Samek & Müller, "Methods for interpreting and
  understanding deep neural networks", Digital Signal Processing 2018,
  arXiv:1706.07979; Quantus' ``Selectivity``) is the deletion curve over the square
  patches of a grid, ranked by their summed relevance; IROF (Rieger & Hansen, "IROF: a
  low resource evaluation metric for explanation methods", 2020, arXiv:2003.08747;
  Quantus' ``IROF``) deletes superpixels, ranked by their mean relevance, fills them
  with the image's mean colour and reports the area over the curve of the score
  relative to the clean one. Both rank regions as the curves rank pixels (ties: the
  lower region first) and evaluate every (example, step) pair in the same chunks.
* The confidence on the explanation-masked input (Chattopadhay, Sarkar, Howlader &
  Balasubramanian, "Grad-CAM++", WACV 2018, arXiv:1710.11063): the input multiplied
  by its own map, ``x~ = x * E`` with ``E`` the pixel relevance min-max scaled to
  ``[0, 1]`` per example (as pytorch-grad-cam scales its CAMs; ``scale='none'`` takes
  a map already in ``[0, 1]`` as it is), every channel alike. With ``Y = p_t(x)`` and
  ``O = p_t(x~)`` the softmax probabilities of the target, per example,
  ``drop = max(0, Y - O) / Y`` (Average Drop, the mean over examples: low is good),
  ``increase = [O > Y]`` (Increase in Confidence, the mean: high is good), and
  ``gain = max(0, O - Y) / (1 - Y)`` (Average Gain, Zhang et al., "Opti-CAM:
  optimizing saliency maps for interpretability", CVIU 2024, arXiv:2301.07002, which
  pairs it with the drop because a map of ones keeps the whole image and has no drop,
  while a gain is earned only by a mask whose image raises the class). A drop with
  ``Y = 0`` and a gain with ``Y = 1`` are 0. pytorch-grad-cam's ``DropInConfidence`` is
  the absolute ``max(0, Y - O)``, not divided by ``Y``.
* ADCC (Poppi, Cornia, Baraldi & Cucchiara, "Revisiting the evaluation of class
  activation mapping for explainability: a novel metric and experimental analysis",
  CVPR-W 2021, arXiv:2104.10252): the harmonic mean of three scores in ``[0, 1]``,
  ``ADCC = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - drop))`` (0 when any
  of them is 0), per example; high is good. ``drop`` is the Average Drop above;
  ``complexity`` is the mean of ``E`` over the pixels (the L1 norm of the scaled map
  per pixel: how much of the image the explanation keeps); ``coherency`` is
  ``(r + 1) / 2`` with ``r`` the Pearson correlation, over pixels, of the map of ``x``
  and the map the same method gives for ``x~ = x * E`` and the same class: a map that
  explains the class keeps showing the same evidence once the rest is dimmed. The
  authors' code (``aimagelab/ADCC``) computes the same three numbers for one image and
  the predicted class; here ``target`` may be any class, the explainer gets the same
  key for ``x~`` as for ``x`` (so a stochastic method is compared under the same
  noise), and a constant map, whose correlation is undefined (NaN there), has
  coherency 0, and so an ADCC of 0.
* ARCC (Domeniconi, Stramiglio, Lombardi & Salti, "How to evaluate and refine your
  CAM", 2026, arXiv:2605.14641; pytorch-grad-cam's ``ARCC``): ADCC with ROAD in place
  of the Average Drop, ``ARCC = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / R)``
  with ``R = clip(mean_f (p_LeRF(f) - p_MoRF(f)), 0, 1)``, the target's probability
  after removing the least relevant fraction ``f`` of the pixels minus after removing
  the most relevant, averaged over ``f`` in 0.2, 0.4, 0.6, 0.8 (:func:`road`, whose
  noisy linear imputation fills the holes). The package writes ``R`` as twice its
  ``ROADCombined`` (half that difference) and adds 1e-8 to each of the three
  denominators, and to the Pearson correlation's (so a constant map has coherency 0.5
  there); here, as for ADCC, a constant map has coherency 0 and a part at 0 gives 0.
  The complexity of ADCC and ARCC is the mean of ``E``, not the entropy
  :func:`complexity` computes.
* Sparseness (Chalasani, Chen, Chowdhury, Wu & Jha, "Concise explanations of neural
  networks using adversarial training", ICML 2020, arXiv:1810.06583; Quantus'
  ``Sparseness``): the Gini index (Hurley & Rickard 2009) of the absolute attributions
  ``a_(1) <= ... <= a_(n)`` of one example, flattened over all features,
  ``G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_(i))``, ``i = 1..n``. ``G = 0`` for a uniform
  map (and, by convention, an all-zero one), ``G = (n - 1) / n`` for a one-hot map (the
  maximum for ``n`` features; it tends to 1 as ``n`` grows); it is invariant to scaling.
  Apply :func:`~fmi_jax.evaluation.agreement.reduce_channels` first for a per-pixel value.
* Complexity (Bhatt, Weller & Moura 2020, above; Quantus' ``Complexity``): the entropy
  of the fractional contributions ``p_i = |a_i| / sum_j |a_j|``,
  ``C = -sum_i p_i ln p_i`` (natural log). ``C = 0`` for a one-hot map, ``ln n`` for a
  uniform one (the maximum); an all-zero map counts as uniform, as for sparseness. Low
  is concise. Effective complexity (Nguyen & Martínez, "On quantitative aspects of
  model interpretability", 2020, arXiv:2007.07584; Quantus' ``EffectiveComplexity``)
  counts the features with ``|a_i| > eps``, ``eps`` in the map's units (Quantus
  normalises the maps first: divide by the peak for its count). The discrete entropy (Hedström et al.,
  "Sanity checks revisited: an exploration to repair the model parameter randomisation
  test", XAI in Action workshop, NeurIPS 2023, arXiv:2401.06465; Quantus'
  ``discrete_entropy``) is the entropy of the histogram of a map's values, the
  complexity the efficient MPRT (:mod:`fmi_jax.evaluation.sanity`) compares.

Chunking: every model evaluation, the ``N (S + 1)`` (example, step) pairs of a curve, goes
through :func:`~fmi_jax.attribution.core.map_over_samples`, ``batch_size`` pairs at a time
in equally shaped chunks, so peak memory is one chunk of perturbed inputs (plus the ranks,
``(N, P)`` int32, and the substrate, the size of ``x``), and results do not depend on
``batch_size``. The unperturbed input (``k = 0`` of deletion, ``k = S`` of insertion) is
evaluated in the same chunks as the perturbed ones. Every function is jit-compatible with
the non-array arguments static; :func:`irof`'s segments must be concrete too (under jit,
from the closure), since their numbers of labels set the length of its curves.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    as_rows,
    as_target,
    check_explain,
    check_finite,
    example_keys,
    flat_rows,
    image_size,
    map_over_samples,
    minmax_scale,
    refuse_one_output,
    require_key,
    resolve_target,
    sample_keys,
    select_target,
    target_probability,
)
from fmi_jax.attribution.smoothing import reflected_gaussian_matrix, separable_filter
from fmi_jax.evaluation.agreement import pearson, spearman
from fmi_jax.evaluation.imputation import DEFAULT_IMPUTATION_NOISE, noisy_linear_imputation

__all__ = [
    "DEFAULT_METRIC_BATCH",
    "ROAD_FRACTIONS",
    "Adcc",
    "Arcc",
    "ARCC_FRACTIONS",
    "SENSITIVITY_N_FRACTIONS",
    "adcc",
    "aopc",
    "arcc",
    "auc",
    "average_drop",
    "average_gain",
    "coherency",
    "complexity",
    "deletion_curve",
    "discrete_entropy",
    "effective_complexity",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "increase_in_confidence",
    "insertion_curve",
    "irof",
    "monotonicity",
    "monotonicity_correlation",
    "non_sensitivity",
    "pixel_flipping",
    "road",
    "selectivity",
    "sensitivity_n",
    "sparseness",
]

Substrate = str | float | Array

_BLUR_TRUNCATE = 4.0  # radius of both blurs' Gaussian in sigmas (scipy.ndimage's default)
_RISE_WINDOW = 11  # RISE's klen: an 11 x 11 kernel, zero padding 5
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SENSITIVITY_N_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8)
# Evaluations per chunk for the metrics whose default evaluation count grows with the
# number of pixels or regions (P + 1 for monotonicity, 100 P + 1 for monotonicity
# correlation): all at once would hold every perturbed input in memory.
DEFAULT_METRIC_BATCH = 1024
_SCORES = ("probability", "logit", "correct")
# What a model with one output can score instead (fmi_jax.attribution.core.refuse_one_output).
_LOGIT_OPTION = "pass probabilities=False to score the logit"
_LOGIT_SCORE = "pass score='logit'"


def _pixel_relevance(x: Array, attributions: Any) -> tuple[Array, tuple[int, ...]]:
    """Relevance per pixel ``(N, P)`` and the shape of a per-example removal mask, which
    broadcasts against one example of ``x`` (a trailing 1 for the channels of images)."""
    attributions = jnp.asarray(attributions, jnp.float32)
    if x.ndim == 4:
        image_size(x, "pixel metrics")
        if attributions.shape == x.shape[:-1] + (1,):  # one channel: a CAM explainer's
            attributions = attributions[..., 0]
        elif attributions.shape == x.shape:
            attributions = attributions.sum(-1)
        elif attributions.shape != x.shape[:-1]:
            shapes = [x.shape, x.shape[:-1] + (1,)] if x.shape[-1] > 1 else [x.shape]
            raise ValueError(
                f"attributions of shape {attributions.shape} do not fit images of shape "
                f"{x.shape}: give one map per image, {' or '.join(map(str, shapes))}, or "
                f"per pixel {x.shape[:-1]}"
            )
        mask_shape = x.shape[1:-1] + (1,)
    else:
        if attributions.shape != x.shape:
            raise ValueError(
                f"attributions of shape {attributions.shape} must have the shape of "
                f"the input {x.shape}"
            )
        mask_shape = x.shape[1:]
    check_finite(attributions, "attributions")
    return attributions.reshape(x.shape[0], -1), mask_shape


def _pixels_per_step(step: Any, num_pixels: int, row: int, name: str = "step") -> int:
    """``m``: ``None`` -> ``row``; an int -> itself; a float in (0, 1] -> that fraction
    of the pixels, rounded up (after rounding away float noise: 1/28 of 784 is 28)."""
    if step is None:
        return row
    if isinstance(step, bool):
        raise ValueError(f"{name} must be an int >= 1 or a fraction in (0, 1], got {step!r}")
    try:
        return as_count(operator.index(step), name)
    except TypeError:
        pass
    try:
        fraction = float(step)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an int >= 1 or a fraction in (0, 1], got {step!r}"
        ) from None
    if not 0 < fraction <= 1:
        raise ValueError(f"a fractional {name} must be in (0, 1], got {step!r}")
    return max(1, math.ceil(round(fraction * num_pixels, 9)))


def _rise_kernel(sigma: float = 5.0) -> np.ndarray:
    """The 1-D factor ``k1`` of RISE's ``gkern(11, sigma)`` (module docstring), float64,
    length 11: a centred delta filtered by the Gaussian with half-sample symmetric
    borders, as ``scipy.ndimage.gaussian_filter1d``; the 2-D kernel is its outer product.
    The smoothing matrix is symmetric, so the filtered delta is its middle row."""
    return reflected_gaussian_matrix(_RISE_WINDOW, sigma, _BLUR_TRUNCATE)[_RISE_WINDOW // 2]


def _zero_padded(size: int, taps: np.ndarray) -> np.ndarray:
    """The ``(size, size)`` matrix of the centred, symmetric ``taps`` with zeros beyond
    the borders: ``(M v)_i = sum_d taps[r + d] v[i + d]`` over the ``i + d`` inside."""
    radius = len(taps) // 2
    return sum(taps[radius + d] * np.eye(size, k=d) for d in range(-radius, radius + 1))


def _substrate(substrate: Substrate, x: Array, blur_sigma: float) -> Array:
    if isinstance(substrate, str):
        if substrate == "zero":
            return jnp.zeros_like(x)
        if substrate in ("gaussian", "rise_blur"):
            if x.ndim != 4:
                raise ValueError(
                    f"substrate={substrate!r} needs images (N, H, W, C), got input shape {x.shape}"
                )
            if not (math.isfinite(blur_sigma) and blur_sigma >= 0):
                raise ValueError(f"blur_sigma must be a finite number >= 0, got {blur_sigma!r}")
            height, width = x.shape[1:3]
            try:
                if substrate == "gaussian":
                    rows = reflected_gaussian_matrix(height, blur_sigma, _BLUR_TRUNCATE)
                    cols = reflected_gaussian_matrix(width, blur_sigma, _BLUR_TRUNCATE)
                else:
                    k1 = _rise_kernel(blur_sigma)
                    rows, cols = _zero_padded(height, k1), _zero_padded(width, k1)
            except ValueError as error:
                raise ValueError(f"blur_sigma: {error}") from None
            return separable_filter(x, rows, cols)
        raise ValueError(
            f"unknown substrate {substrate!r}; choose 'zero', 'rise_blur' (RISE's 11 x 11 "
            "blur, zero borders), 'gaussian' (Gaussian blur, symmetric borders) or pass an "
            "array broadcastable to x"
        )
    return as_baseline(substrate, x, "substrate")


def _curve(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    insert: bool,
    most_relevant_first: bool,
    substrate: Substrate,
    step: int | float | None,
    blur_sigma: float,
    batch_size: int | None,
    probabilities: bool,
) -> Array:
    x = as_input(x)
    relevance, mask_shape = _pixel_relevance(x, attributions)
    background = _substrate(substrate, x, blur_sigma)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    num_pixels = relevance.shape[1]
    row = x.shape[2] if x.ndim == 4 else math.ceil(math.sqrt(num_pixels))
    per_step = _pixels_per_step(step, num_pixels, row)
    num_steps = -(-num_pixels // per_step)

    rank = _removal_ranks(relevance, most_relevant_first)
    counts = jnp.arange(num_steps + 1, dtype=jnp.int32) * per_step
    start, end = (background, x) if insert else (x, background)

    def perturb(example: Array, k: Array, changed: Array) -> Array:
        del k
        return jnp.where(changed, end[example], start[example])

    score = "probability" if probabilities else "logit"
    return _scores_after_change(
        fn, x, target, rank, counts, mask_shape, perturb, score, batch_size, _LOGIT_OPTION
    )


def _removal_ranks(
    relevance: Array, most_relevant_first: bool, tie_keys: Array | None = None
) -> Array:
    """``rank[i, p]``: the position of pixel ``p`` in example ``i``'s removal order. Tied
    pixels keep their index order (a stable sort), or, with one key per example, the
    order of a random permutation drawn from it."""
    n, num_pixels = relevance.shape
    key_order = -relevance if most_relevant_first else relevance
    if tie_keys is None:
        order = jnp.argsort(key_order, axis=1, stable=True)
    else:
        shuffle = jax.vmap(lambda k: jax.random.permutation(k, num_pixels))(tie_keys)
        shuffled = jnp.take_along_axis(key_order, shuffle, axis=1)
        order = jnp.take_along_axis(shuffle, jnp.argsort(shuffled, axis=1, stable=True), axis=1)
    return (
        jnp.zeros((n, num_pixels), jnp.int32)
        .at[jnp.arange(n)[:, None], order]
        .set(jnp.arange(num_pixels, dtype=jnp.int32)[None])
    )


def _scores_after_change(
    fn: ModelFn,
    x: Array,
    target: Array,
    rank: Array,
    counts: Array,
    mask_shape: tuple[int, ...],
    perturb: Any,
    score: str,
    batch_size: int | None,
    instead: str = _LOGIT_SCORE,
) -> Array:
    """``out[i, k]``: the target score of ``perturb(i, k, R)``, where ``R`` marks the pixels
    of rank below ``counts[k]``, for every example and every count; ``(N, len(counts))``."""

    def evaluate(example: Array, k: Array) -> Array:
        changed = rank[example] < counts[k][:, None]
        changed = changed.reshape((example.shape[0],) + mask_shape)
        out = fn(perturb(example, k, changed))
        if score == "correct":
            refuse_one_output(out, "whether its top class is the target", instead)
            return (jnp.argmax(out, axis=-1) == target[example]).astype(jnp.float32)
        return _target_score(out, target[example], score == "probability", instead)

    return map_over_samples(evaluate, rank.shape[0], counts.shape[0], batch_size=batch_size)


def deletion_curve(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    substrate: Substrate = "zero",
    step: int | float | None = None,
    blur_sigma: float = 5.0,
    batch_size: int | None = None,
    probabilities: bool = True,
) -> Array:
    """RISE deletion curve: the target score as pixels are replaced, most relevant first.

    Args:
      fn: model function, batch -> logits ``(N, classes)``.
      x: inputs, images ``(N, H, W, C)`` or any ``(N, ...)`` (module docstring).
      target: class per example ``(N,)``, one int for all, or ``None`` (predicted class).
      attributions: maps shaped like ``x`` (summed over channels for images) or, for
        images, per pixel ``(N, H, W)``.
      substrate: what replaces removed pixels: ``'zero'`` (default, as RISE's deletion),
        ``'rise_blur'`` (RISE's 11 x 11 blur of ``x`` with zero borders), ``'gaussian'``
        (``x`` blurred by a Gaussian, symmetric borders) or an array broadcastable to
        ``x`` (module docstring).
      step: pixels changed per step: an int count, a float fraction of the pixels in
        (0, 1] (rounded up), or ``None`` (default): one image row, ``W`` pixels, so ``H``
        steps, which is RISE's 224 pixels per step on 224x224 images (28 on 28x28);
        ``ceil(sqrt(P))`` for non-image inputs.
      blur_sigma: standard deviation of both blur substrates in pixels; 5 as RISE.
      batch_size: (example, step) pairs per forward pass; ``None`` runs all at once.
      probabilities: score the softmax probability of the target (default, RISE) or
        its logit (``False``).

    Returns:
      float32 ``(N, S + 1)``: column ``k`` is the score after ``min(k m, P)`` pixels were
      removed; column 0 is ``f_t(x)``, column ``S`` is ``f_t(substrate)``.

    Raises:
      ValueError: attributions that do not fit ``x``, an unknown substrate, a bad step.
    """
    return _curve(
        fn,
        x,
        target,
        attributions,
        insert=False,
        most_relevant_first=True,
        substrate=substrate,
        step=step,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        probabilities=probabilities,
    )


def insertion_curve(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    substrate: Substrate = "rise_blur",
    step: int | float | None = None,
    blur_sigma: float = 5.0,
    batch_size: int | None = None,
    probabilities: bool = True,
) -> Array:
    """RISE insertion curve: the target score as pixels of ``x`` are put into the substrate,
    most relevant first.

    Arguments as :func:`deletion_curve`, except that the substrate defaults to
    ``'rise_blur'``, RISE's insertion substrate (a zero start would score every insertion
    against an input the model has never seen); ``'gaussian'`` is the blur with
    mass-preserving borders (module docstring).

    Returns:
      float32 ``(N, S + 1)``: column ``k`` is the score after ``min(k m, P)`` pixels were
      inserted; column 0 is ``f_t(substrate)``, column ``S`` is ``f_t(x)``.
    """
    return _curve(
        fn,
        x,
        target,
        attributions,
        insert=True,
        most_relevant_first=True,
        substrate=substrate,
        step=step,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        probabilities=probabilities,
    )


def pixel_flipping(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    order: str = "morf",
    substrate: Substrate = "zero",
    step: int | float | None = None,
    blur_sigma: float = 5.0,
    batch_size: int | None = None,
    probabilities: bool = True,
) -> Array:
    """Pixel flipping (Samek et al. 2017): the deletion curve in MoRF or LeRF order.

    ``order='morf'`` removes the most relevant pixels first (equal to
    :func:`deletion_curve`), ``'lerf'`` the least relevant first. Other arguments and the
    result as :func:`deletion_curve`.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"unknown order {order!r}; choose 'morf' or 'lerf'")
    return _curve(
        fn,
        x,
        target,
        attributions,
        insert=False,
        most_relevant_first=order == "morf",
        substrate=substrate,
        step=step,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        probabilities=probabilities,
    )


def road(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array,
    *,
    order: str = "morf",
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = DEFAULT_IMPUTATION_NOISE,
    score: str = "probability",
    batch_size: int | None = None,
) -> Array:
    """ROAD (Rong et al. 2022): the target score after removing a fraction of the pixels
    and filling them by noisy linear imputation, for every fraction.

    Removing ``floor(f P)`` pixels, most relevant first (``order='morf'``: a faithful map
    makes the score fall fast) or least relevant first (``'lerf'``: it should stay
    high), each filled from its neighbours by
    :func:`~fmi_jax.evaluation.imputation.noisy_linear_imputation` instead of a constant,
    so that the shape of the removed set tells the model nothing (module docstring).

    Args:
      fn: model function, batch -> logits ``(N, classes)``.
      x: images ``(N, H, W, C)``.
      target: class per example ``(N,)``, one int for all, or ``None`` (predicted class).
      attributions: maps shaped like ``x`` (summed over channels) or per pixel
        ``(N, H, W)``.
      key: a PRNG key, or one key per example ``(N,)``. Example ``i``'s key
        ``fold_in(key, i)`` is split in two: the first orders its tied pixels (a random
        permutation), the second, folded with ``j``, draws the imputation noise at
        fraction ``j``.
      order: ``'morf'`` or ``'lerf'``.
      fractions: fractions of the pixels to remove, each in ``[0, 1]`` (default
        ``0.1, ..., 0.9``, the paper's).
      noise: standard deviation of the imputation noise, in the units of ``x`` (0.01).
      score: ``'probability'`` (softmax of the target, default), ``'logit'``, or
        ``'correct'`` (1 where the target is the top class, else 0: with the true labels
        as targets, the mean over a dataset is the accuracy the paper plots).
      batch_size: (example, fraction) pairs per forward pass; ``None`` runs all at once.

    Returns:
      float32 ``(N, len(fractions))``.

    Raises:
      ValueError: inputs that are not images, attributions that do not fit, an unknown
        order or score, a fraction outside ``[0, 1]``, a negative ``noise``, or no key;
        ``fractions`` and ``noise`` must be static under jit.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"unknown order {order!r}; choose 'morf' or 'lerf'")
    if score not in _SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(_SCORES)}")
    x = as_input(x)
    if x.ndim != 4:
        raise ValueError(f"road needs images (N, H, W, C), got input shape {x.shape}")
    relevance, mask_shape = _pixel_relevance(x, attributions)
    fractions = _as_fractions(fractions)
    require_key(key, "road (the order of tied pixels and the imputation noise)")
    target = resolve_target(fn, x, target, batch_size=batch_size)
    num_pixels = relevance.shape[1]
    counts = jnp.asarray([_pixel_count(f, num_pixels) for f in fractions])
    split = jax.vmap(jax.random.split)(example_keys(key, x.shape[0]))
    tie_keys, noise_keys = split[:, 0], split[:, 1]
    rank = _removal_ranks(relevance, order == "morf", tie_keys)

    def perturb(example: Array, k: Array, changed: Array) -> Array:
        return noisy_linear_imputation(
            x[example], changed, sample_keys(noise_keys, example, k), noise=noise
        )

    return _scores_after_change(fn, x, target, rank, counts, mask_shape, perturb, score, batch_size)


def faithfulness_correlation(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array,
    *,
    subset_size: int | float | None = None,
    samples: int = 100,
    substrate: Substrate = "zero",
    blur_sigma: float = 5.0,
    probabilities: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Faithfulness correlation (Bhatt et al. 2020) of every example's map, shape ``(N,)``.

    The Pearson correlation, over ``samples`` random pixel subsets ``S`` of
    ``subset_size`` pixels, between the relevance of the subset and the drop of the
    target score when the subset is replaced by the substrate (module docstring). 1 for
    a map whose subset sums predict every drop exactly (``x * w`` for a linear model and
    a zero substrate), about 0 for a map unrelated to the model; NaN when either side
    does not vary (an all-zero map, a model that ignores the pixels). It is
    :func:`sensitivity_n` at the one subset size.

    Args:
      fn: model function, batch -> logits ``(N, classes)``.
      x: inputs, images ``(N, H, W, C)`` or any ``(N, ...)`` (module docstring).
      target: class per example ``(N,)``, one int for all, or ``None`` (predicted class).
      attributions: maps shaped like ``x`` (summed over channels for images) or, for
        images, per pixel ``(N, H, W)``.
      key: a PRNG key, or one key per example ``(N,)``; subset ``s`` of example ``i`` is
        the first ``subset_size`` pixels of the permutation drawn from
        ``fold_in(fold_in(key, i), s)``.
      subset_size: pixels per subset: an int, a fraction of the pixels in (0, 1)
        (rounded up), or ``None`` (default): one image row, ``W`` pixels (Quantus' 224 on
        224 x 224 images); smaller than the number of pixels.
      samples: subsets per example (Quantus' ``nr_runs``, 100), at least 2.
      substrate, blur_sigma: what replaces a subset, as in :func:`deletion_curve`
        (``'zero'`` by default; the module docstring compares Quantus' ``'black'``).
      probabilities: score the softmax probability of the target instead of its logit
        (the default, as Quantus' ``softmax=False``).
      batch_size: (example, subset) pairs per forward pass; ``None`` runs all at once.

    Returns:
      float32 ``(N,)`` in ``[-1, 1]`` (or NaN, above).

    Raises:
      ValueError: attributions that do not fit ``x``, a subset as large as the input, an
        unknown substrate.
    """
    return _subset_correlations(
        fn,
        x,
        target,
        attributions,
        key,
        sizes=(subset_size,),
        samples=samples,
        substrate=substrate,
        blur_sigma=blur_sigma,
        probabilities=probabilities,
        batch_size=batch_size,
        name="faithfulness_correlation",
        size_name="subset_size",
    )[:, 0]


def sensitivity_n(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array,
    *,
    sizes: Sequence[int | float] = SENSITIVITY_N_FRACTIONS,
    samples: int = 100,
    substrate: Substrate = "zero",
    blur_sigma: float = 5.0,
    probabilities: bool = False,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """Sensitivity-n (Ancona et al. 2018) of every example's map at every subset size,
    shape ``(N, len(sizes))``.

    Column ``j`` is the Pearson correlation, over ``samples`` random subsets of ``n_j``
    pixels, between the subset's relevance and the drop of the target score when the
    subset is replaced by the substrate (module docstring). A map satisfies
    sensitivity-n when the two are equal for every subset of ``n`` pixels; a method
    with completeness does at ``n = P``, and at every ``n`` only for a model that is
    linear in the pixels (Ancona et al.), so the curve over ``n`` says at which scales
    the map still predicts what removing pixels does.

    Args:
      fn, x, target, attributions: as :func:`faithfulness_correlation`.
      key: a PRNG key, or one key per example ``(N,)``; subset ``s`` of size ``n_j``
        of example ``i`` is the first ``n_j`` pixels of the permutation drawn from
        ``fold_in(fold_in(key, i), j * samples + s)`` (so the first column is
        :func:`faithfulness_correlation` with the same key and ``samples``).
      sizes: subset sizes: ints, or fractions of the pixels in (0, 1] (rounded up), each
        smaller than the number of pixels; a sequence or array, static. Default: 1, 2,
        5, 10, 20, 50 and 80% of the pixels, about evenly spaced on the log scale of the
        paper's plots, up to Quantus' ``n_max_percentage`` of 0.8 (inputs of fewer than
        5 pixels need their own sizes: 80% of 4 pixels rounds up to all of them).
      samples: subsets per example and size (the paper's 100), at least 2.
      substrate, blur_sigma, probabilities: as :func:`faithfulness_correlation` (the
        logit by default; Quantus' ``SensitivityN`` scores the softmax probability).
      batch_size: (example, subset) pairs per forward pass, 1024 by default (all
        ``N len(sizes) samples`` at once with ``None``).

    Returns:
      float32 ``(N, len(sizes))`` in ``[-1, 1]`` (NaN where either side does not vary).

    Raises:
      ValueError: as :func:`faithfulness_correlation`, and no sizes.
    """
    listed = _as_sizes(sizes)
    if not listed:
        raise ValueError("sizes must name at least one subset size (an int or a fraction)")
    return _subset_correlations(
        fn,
        x,
        target,
        attributions,
        key,
        sizes=listed,
        samples=samples,
        substrate=substrate,
        blur_sigma=blur_sigma,
        probabilities=probabilities,
        batch_size=batch_size,
        name="sensitivity_n",
        size_name="sizes",
    )


def _as_sizes(sizes: Any) -> tuple[Any, ...]:
    """``sizes`` as a tuple: one number, or the items of a sequence, range or array as
    Python numbers (each checked later by :func:`_pixels_per_step`)."""
    try:
        values = [sizes] if isinstance(sizes, str) else list(sizes)
    except TypeError:
        values = [sizes]
    if any(isinstance(v, jax.core.Tracer) for v in [sizes, *values]):
        raise ValueError("sizes must be static Python numbers (mark them static under jax.jit)")
    return tuple(v.item() if getattr(v, "shape", None) == () else v for v in values)


def _subset_correlations(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array,
    *,
    sizes: tuple[Any, ...],
    samples: int,
    substrate: Substrate,
    blur_sigma: float,
    probabilities: bool,
    batch_size: int | None,
    name: str,
    size_name: str,
) -> Array:
    """``out[i, j]``: Pearson, over ``samples`` random subsets of ``sizes[j]`` pixels of
    example ``i``, between the subsets' relevance and the drops of the target score."""
    samples = as_count(samples, "samples", minimum=2)
    require_key(key, f"{name} (its random subsets)")
    x = as_input(x)
    relevance, mask_shape = _pixel_relevance(x, attributions)
    background = _substrate(substrate, x, blur_sigma)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    n, num_pixels = relevance.shape
    row = x.shape[2] if x.ndim == 4 else math.ceil(math.sqrt(num_pixels))
    counts = []
    for size in sizes:
        count = _pixels_per_step(size, num_pixels, row, size_name)
        if count >= num_pixels:
            raise ValueError(
                f"{size_name} {size!r} gives {count} of {num_pixels} pixels; a subset "
                "must leave some pixels out (every subset would have the same relevance)"
            )
        counts.append(count)
    counts = jnp.asarray(counts, jnp.int32)
    keys = example_keys(key, n)

    # The drop is f_t(x) - f_t(perturbed); f_t(x) is the same for every subset of an
    # example, and a correlation ignores a constant shift, so only -f_t(perturbed) is
    # computed.
    def pair(example: Array, sample: Array) -> Array:
        def subset(k: Array, count: Array) -> Array:
            order = jax.random.permutation(k, num_pixels)
            return jnp.zeros(num_pixels, bool).at[order].set(jnp.arange(num_pixels) < count)

        inside = jax.vmap(subset)(sample_keys(keys, example, sample), counts[sample // samples])
        relevance_sum = jnp.sum(jnp.where(inside, relevance[example], 0.0), axis=1)
        changed = inside.reshape((example.shape[0],) + mask_shape)
        perturbed = jnp.where(changed, background[example], x[example])
        drop = -_target_score(fn(perturbed), target[example], probabilities)
        return jnp.stack([relevance_sum, drop], axis=-1)

    values = map_over_samples(pair, n, len(sizes) * samples, batch_size=batch_size)
    values = values.reshape(n * len(sizes), samples, 2)
    return pearson(values[..., 0], values[..., 1]).reshape(n, len(sizes))


def monotonicity(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    substrate: Substrate = "zero",
    step: int | float | None = 1,
    blur_sigma: float = 5.0,
    probabilities: bool = True,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """Monotonicity (Arya et al. 2019): whether the target score never falls as pixels
    of ``x`` are put into the substrate, least relevant first; shape ``(N,)``, bool.

    The insertion curve in ascending order of relevance (the reverse of
    :func:`insertion_curve`'s; ties lower index first), ``c_1, ..., c_S`` after each of
    the ``S`` steps; the map passes when ``c_{k+1} >= c_k`` for every ``k``. The score
    of the substrate alone is not part of the check, as in AIX360's
    ``monotonicity_metric``, which this follows: the relevance is signed (pass
    ``jnp.abs(maps)`` for Quantus' ``abs=True``), one pixel per step, softmax
    probability (module docstring, "Quantus' Monotonicity").

    Args:
      fn, x, target, attributions, substrate, blur_sigma, batch_size, probabilities:
        as :func:`deletion_curve` (the substrate defaults to ``'zero'``, AIX360's and
        Quantus' black baseline for inputs whose minimum is 0).
      step: pixels inserted per step, as :func:`deletion_curve`'s ``step``; 1 by
        default (AIX360 and Quantus), so ``P + 1`` model evaluations per example; at
        least 2 steps, so that two are compared.
      batch_size: (example, step) pairs per forward pass, 1024 by default (all at
        once with ``None``).

    Returns:
      bool ``(N,)``: True where the curve never falls. The comparison is exact: a
      curve that is flat up to rounding can fall by the last bit.

    Raises:
      ValueError: as :func:`deletion_curve`, and a step that inserts every pixel at once.
    """
    curve = _curve(
        fn,
        x,
        target,
        attributions,
        insert=True,
        most_relevant_first=False,
        substrate=substrate,
        step=step,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        probabilities=probabilities,
    )
    if curve.shape[1] < 3:
        raise ValueError(
            f"step={step!r} inserts every pixel in one step, which leaves nothing to "
            "compare after it; use a smaller step (at least 2 steps)"
        )
    return jnp.all(jnp.diff(curve[:, 1:], axis=1) >= 0, axis=1)


def monotonicity_correlation(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array | None = None,
    *,
    substrate: Substrate = "uniform",
    uniform_range: tuple[float, float] = (0.0, 1.0),
    step: int | float | None = 1,
    samples: int | None = None,
    absolute: bool = True,
    blur_sigma: float = 5.0,
    probabilities: bool = True,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """Monotonicity correlation (Nguyen & Martínez 2020) of every example's map, shape
    ``(N,)``: the Spearman correlation between the relevance of groups of pixels and how
    much replacing each group moves the target score.

    The pixels are sorted by ``|relevance|`` (signed relevance with ``absolute=False``),
    ascending, ties lower index first, and cut into ``G = ceil(P / m)`` groups of ``m``
    consecutive pixels. For group ``g`` with relevance ``a_g`` (the sum of its pixels')
    and ``samples`` replacements of its pixels by the substrate,

        ``v_g = mean_s (f_t(x with group g replaced, sample s) - f_t(x))^2``,

    and the score is ``spearman(a, v)`` over the groups (average ranks for ties). A
    faithful map gives the pixels that move the score most the largest relevance: 1.
    Nguyen & Martínez and Quantus divide ``v`` by ``f_t(x)^2``, one factor per example,
    which a rank correlation ignores; it is left out.

    Args:
      fn, x, target, attributions: as :func:`deletion_curve`.
      key: a PRNG key, or one key per example ``(N,)``, for the ``'uniform'`` substrate:
        replacement ``s`` of group ``g`` of example ``i`` draws from
        ``fold_in(fold_in(key, i), g * samples + s)``; ``None`` for a fixed substrate.
      substrate: ``'uniform'`` (default): every replaced value (each channel of each
        pixel) drawn from ``U(uniform_range)`` independently; or any fixed substrate
        of :func:`deletion_curve` (``'zero'``, a blur, an array), replaced once.
        Quantus' ``'uniform'`` draws one value per draw and example and writes it into
        every feature of the group, and its features are single channel values where
        here a group is of whole pixels (and ``|relevance|`` is of the map summed over
        channels, Quantus' the sum of absolute values): the two agree for one pixel
        per group on single-channel inputs.
      uniform_range: ``(low, high)`` of the uniform substrate; Quantus' ``(0, 1)``.
      step: pixels per group, as :func:`deletion_curve`'s ``step``; 1 by default
        (Quantus' ``features_in_step``); at least 3 groups.
      samples: replacements per group: 100 for the uniform substrate by default
        (Quantus' ``nr_samples``), 1 for a fixed one (more would repeat it).
      absolute: order and sum ``|relevance|`` (default, Quantus' ``abs=True``) or the
        signed relevance.
      blur_sigma, probabilities: as :func:`deletion_curve` (softmax probability by
        default, as Quantus).
      batch_size: (example, group, sample) evaluations per forward pass, 1024 by
        default; ``None`` holds all ``N (G samples + 1)`` perturbed inputs at once.

    Returns:
      float32 ``(N,)`` in ``[-1, 1]``; NaN where every group has the same relevance or
      moves the score alike.

    Raises:
      ValueError: attributions that do not fit ``x``, an unknown substrate, a bad step
        or range, fewer than 3 groups, more than one sample of a fixed substrate, no
        key for the uniform one.
    """
    x = as_input(x)
    relevance, mask_shape = _pixel_relevance(x, attributions)
    if absolute:
        relevance = jnp.abs(relevance)
    n, num_pixels = relevance.shape
    per_group, groups = _group_count(step, x, num_pixels, 3, "a rank correlation")
    uniform = isinstance(substrate, str) and substrate == "uniform"
    if uniform:
        samples = as_count(100 if samples is None else samples, "samples")
        low, high = _as_range(uniform_range)
        require_key(key, "monotonicity_correlation (its uniform substrate)")
        keys = example_keys(key, n)
    else:
        samples = as_count(1 if samples is None else samples, "samples")
        if samples != 1:
            raise ValueError(
                f"samples={samples} repeats the same replacement: a fixed substrate is "
                "replaced once; use substrate='uniform' for random replacements"
            )
        background = _substrate(substrate, x, blur_sigma)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    group = _removal_ranks(relevance, most_relevant_first=False) // per_group
    group_relevance = jnp.zeros((n, groups)).at[jnp.arange(n)[:, None], group].add(relevance)

    def replacement(example: Array, k: Array) -> Array:
        if not uniform:
            return background[example]
        draw = functools.partial(jax.random.uniform, shape=x.shape[1:], minval=low, maxval=high)
        return jax.vmap(draw)(sample_keys(keys, example, k))

    scores, clean = _group_scores(
        fn, x, target, group, groups, samples, mask_shape, replacement, probabilities, batch_size
    )
    moved = (scores - clean[:, None, None]) ** 2
    return spearman(group_relevance, moved.mean(-1))


def _group_scores(
    fn: ModelFn,
    x: Array,
    target: Array,
    group: Array,
    groups: int,
    samples: int,
    mask_shape: tuple[int, ...],
    replacement: Any,
    probabilities: bool,
    batch_size: int | None,
) -> tuple[Array, Array]:
    """Target scores of ``x`` with one group of pixels replaced, ``(N, groups,
    samples)``, and of ``x`` itself, ``(N,)``. ``group[i, p]`` is pixel ``p``'s group;
    evaluation ``k = g * samples + s`` of an example takes the pixels of group ``g`` from
    ``replacement(examples, k)``. The clean input is evaluation ``groups * samples`` of
    every example, in the same equally shaped chunks as the perturbed ones, so a group
    whose replacement leaves the input as it was moves the score by exactly 0."""
    n = x.shape[0]
    perturbations = groups * samples

    def evaluate(example: Array, k: Array) -> Array:
        changed = (group[example] == (k // samples)[:, None]) & (k < perturbations)[:, None]
        changed = changed.reshape((example.shape[0],) + mask_shape)
        perturbed = jnp.where(changed, replacement(example, k), x[example])
        return _target_score(fn(perturbed), target[example], probabilities)

    scores = map_over_samples(evaluate, n, perturbations + 1, batch_size=batch_size)
    return scores[:, :perturbations].reshape(n, groups, samples), scores[:, perturbations]


def _fixed_group_scores(
    fn: ModelFn,
    x: Array,
    target: Target,
    group: Array,
    groups: int,
    mask_shape: tuple[int, ...],
    substrate: Substrate,
    blur_sigma: float,
    probabilities: bool,
    batch_size: int | None,
) -> Array:
    """``f_t(x) - f_t(x with group g replaced by the substrate)`` for every group,
    ``(N, groups)``: each group replaced once, alone."""
    background = _substrate(substrate, x, blur_sigma)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    scores, clean = _group_scores(
        fn,
        x,
        target,
        group,
        groups,
        1,
        mask_shape,
        lambda example, k: background[example],
        probabilities,
        batch_size,
    )
    return clean[:, None] - scores[..., 0]


def _group_count(step: Any, x: Array, num_pixels: int, minimum: int, what: str) -> tuple[int, int]:
    """``(m, G)``: pixels per group and ``G = ceil(P / m)`` groups, at least ``minimum``."""
    row = x.shape[2] if x.ndim == 4 else math.ceil(math.sqrt(num_pixels))
    per_group = _pixels_per_step(step, num_pixels, row)
    groups = -(-num_pixels // per_group)
    if groups < minimum:
        raise ValueError(
            f"step={step!r} cuts the {num_pixels} pixels into {groups} group(s); {what} "
            f"needs at least {minimum} (use a smaller step)"
        )
    return per_group, groups


def faithfulness_estimate(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    substrate: Substrate = "zero",
    step: int | float | None = 1,
    blur_sigma: float = 5.0,
    probabilities: bool = False,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola 2018) of every example's map,
    shape ``(N,)``: the Pearson correlation between the relevance of groups of pixels
    and the drop of the target score when each group alone is replaced.

    The pixels are sorted by signed relevance, highest first (ties lower index first),
    and cut into ``G = ceil(P / m)`` groups of ``m`` consecutive pixels; group ``g`` has
    relevance ``a_g`` (the sum of its pixels') and drop
    ``d_g = f_t(x) - f_t(x with group g replaced by b)``, and the score is
    ``pearson(a, d)`` over the groups. A map whose groups add up to the model's drops,
    ``x * w`` for a linear model with a zero substrate, gives exactly 1. Quantus'
    ``FaithfulnessEstimate`` computes the same (logits, signed map, black baseline) on
    single-channel inputs; on colour images it ranks and removes single channel
    values where here a group is of whole pixels (the map summed over channels). Its
    default rescaling of the maps is one positive factor, which the correlation
    ignores.

    Args:
      fn, x, target, attributions, substrate, blur_sigma: as :func:`deletion_curve`
        (the substrate defaults to ``'zero'``, Quantus' black baseline for inputs whose
        minimum is 0).
      step: pixels per group, as :func:`deletion_curve`'s ``step``; 1 by default
        (Quantus' ``features_in_step``); at least 3 groups.
      probabilities: the softmax probability instead of the logit (default, as Quantus).
      batch_size: (example, group) evaluations per forward pass, 1024 by default;
        ``None`` holds all ``N (G + 1)`` inputs at once.

    Returns:
      float32 ``(N,)`` in ``[-1, 1]``; NaN where every group has the same relevance or
      the same drop.

    Raises:
      ValueError: attributions that do not fit ``x``, an unknown substrate, a bad step,
        fewer than 3 groups.
    """
    x = as_input(x)
    relevance, mask_shape = _pixel_relevance(x, attributions)
    n, num_pixels = relevance.shape
    per_group, groups = _group_count(step, x, num_pixels, 3, "a correlation")
    group = _removal_ranks(relevance, most_relevant_first=True) // per_group
    group_relevance = jnp.zeros((n, groups)).at[jnp.arange(n)[:, None], group].add(relevance)
    drops = _fixed_group_scores(
        fn, x, target, group, groups, mask_shape, substrate, blur_sigma, probabilities, batch_size
    )
    return pearson(group_relevance, drops)


def non_sensitivity(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    eps: float = 1e-5,
    substrate: Substrate = "zero",
    step: int | float | None = 1,
    blur_sigma: float = 5.0,
    probabilities: bool = True,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """Non-sensitivity (Nguyen & Martínez 2020) of every example's map, shape ``(N,)``:
    how many groups of pixels the map calls irrelevant while the model depends on them,
    or relevant while it does not.

    The pixels, in index order, are cut into ``G = ceil(P / m)`` groups of ``m``
    consecutive pixels (one pixel each by default). Group ``g`` has zero relevance when
    every one of its pixels has ``|a_p| <= eps max_q |a_q|`` (``|a_p|`` summed over the
    pixel's channels; relative to the map's own largest value, so that the threshold
    does not depend on the map's scale), and the model is insensitive to it when
    ``|f_t(x) - f_t(x with group g replaced by b)| <= eps``. The score counts the groups
    where exactly one of the two holds (the symmetric difference of the paper's two
    sets): 0 is best. Replacing a pixel by a substrate that equals it never moves the
    score, so such a pixel should get zero relevance: ``x * grad`` passes on black
    pixels with a zero substrate where the gradient does not.

    Quantus' ``NonSensitivity`` (0.6) takes single channel values as features,
    compares with a strict ``<``, and by default divides the whole batch of maps by
    its one largest value before thresholding (so its threshold is relative to the
    batch's peak, not each map's); with ``features_in_step > 1`` it sets its
    ``P``-feature mask against ``G`` groups' score changes and fails with a shape
    mismatch (docs/captum.md, item 18).

    Args:
      fn, x, target, attributions, substrate, blur_sigma: as :func:`deletion_curve`
        (the substrate defaults to ``'zero'``, Quantus' black baseline).
      eps: the threshold for both sets: of the relevance relative to the map's
        largest, and of the score change (1e-5, Quantus'); >= 0.
      step: pixels per group, as :func:`deletion_curve`'s ``step``; 1 by default.
      probabilities: the softmax probability (default, as Quantus) or the logit.
      batch_size: (example, group) evaluations per forward pass, 1024 by default;
        ``None`` holds all ``N (G + 1)`` inputs at once.

    Returns:
      int32 ``(N,)`` in ``[0, G]``.

    Raises:
      ValueError: attributions that do not fit ``x``, an unknown substrate, a bad step,
        a negative or non-finite ``eps``.
    """
    eps = _as_eps(eps)
    x = as_input(x)
    relevance, mask_shape = _pixel_relevance(x, jnp.abs(jnp.asarray(attributions, jnp.float32)))
    n, num_pixels = relevance.shape
    per_group, groups = _group_count(step, x, num_pixels, 1, "non-sensitivity")
    group = jnp.broadcast_to(jnp.arange(num_pixels, dtype=jnp.int32) // per_group, (n, num_pixels))
    zero = relevance <= eps * relevance.max(1, keepdims=True)
    padded = jnp.pad(zero, ((0, 0), (0, groups * per_group - num_pixels)), constant_values=True)
    zero_group = padded.reshape(n, groups, per_group).all(-1)
    drops = _fixed_group_scores(
        fn, x, target, group, groups, mask_shape, substrate, blur_sigma, probabilities, batch_size
    )
    return jnp.sum(zero_group != (jnp.abs(drops) <= eps), axis=1, dtype=jnp.int32)


def selectivity(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    patch_size: int = 8,
    substrate: Substrate = "zero",
    blur_sigma: float = 5.0,
    probabilities: bool = True,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """Selectivity (Montavon, Samek & Müller 2018): the target score as square patches
    are removed, most relevant patch first; shape ``(N, L + 1)`` for ``L`` patches.

    The image is cut into a grid of ``patch_size x patch_size`` patches (those on the
    right and bottom edges smaller when ``patch_size`` does not divide the image), a
    patch's relevance is the sum of its pixels', and column ``k`` is the score after
    the ``k`` most relevant patches were replaced by the substrate (ties: the patch
    earlier in row-major order first; ties are between the float32 sums, so patches
    tied only in exact arithmetic go in the order rounding gives them). Summarise it
    with :func:`auc` (low is good). Quantus 0.6's ``Selectivity`` also removes a grid of
    patches, but of the image padded evenly on both sides (on 28 pixels with
    ``patch_size`` 8 its patch edges fall at 6, 14 and 22, here at 8, 16 and 24),
    leaves the clean score out of its curve and sums it with ``np.trapz(dx=1)``, an
    area that grows with the number of patches; earlier Quantus versions ranked every
    overlapping window and kept, greedily, those that did not overlap one kept before.

    Args:
      fn, x, target, attributions, substrate, blur_sigma, probabilities: as
        :func:`deletion_curve`; ``x`` images ``(N, H, W, C)``.
      patch_size: the side of a patch in pixels (Quantus' default 8); smaller than
        the image, so that there are at least 2 patches.
      batch_size: (example, step) pairs per forward pass, 1024 by default (all at
        once with ``None``).

    Returns:
      float32 ``(N, L + 1)``, ``L = ceil(H / patch_size) ceil(W / patch_size)``: column 0
      is ``f_t(x)``, column ``L`` is ``f_t(substrate)``.
    """
    x = as_input(x)
    if x.ndim != 4:
        raise ValueError(f"selectivity needs images (N, H, W, C), got input shape {x.shape}")
    size = as_count(patch_size, "patch_size")
    height, width = x.shape[1:3]
    columns = -(-width // size)
    grid = (np.arange(height)[:, None] // size) * columns + np.arange(width)[None] // size
    if grid.max() < 1:
        raise ValueError(
            f"patch_size {size} covers the whole {height} x {width} image in one patch; "
            "use a smaller patch_size (at least 2 patches)"
        )
    segments = jnp.broadcast_to(jnp.asarray(grid, jnp.int32), x.shape[:3])
    curve, _ = _region_curves(
        fn,
        x,
        target,
        attributions,
        segments,
        int(grid.max()) + 1,
        "sum",
        _substrate(substrate, x, blur_sigma),
        probabilities,
        batch_size,
    )
    return curve


def irof(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    segments: Array,
    *,
    substrate: Substrate = "mean",
    blur_sigma: float = 5.0,
    probabilities: bool = True,
    batch_size: int | None = DEFAULT_METRIC_BATCH,
) -> Array:
    """IROF, iterative removal of features (Rieger & Hansen 2020): the area over the
    normalised score curve as superpixels are removed, most relevant first; ``(N,)``.

    Segment ``l`` of example ``i`` has the relevance of its pixels' mean (so a large
    segment is not favoured for its size); segments are replaced by the substrate in
    descending order of that mean (ties: lower label first), and after ``k`` of the
    ``L_i`` segments of example ``i`` the score is ``q_k = f_t(x_k) / f_t(x)``. IROF is
    ``1 - AUC`` of ``q_0 = 1, q_1, ..., q_{L_i}`` by the trapezoid rule on ``[0, 1]``
    (:func:`auc`): high when removing the map's first segments destroys the score.
    Examples may have different numbers of segments; each gets its own abscissa. The
    ratio needs ``f_t(x) > 0``: an example whose clean score is not positive (a
    negative logit with ``probabilities=False``) is NaN, and a small clean probability
    makes ``q`` large (IROF far below 0), so explain classes the model assigns some
    probability, such as the predicted one.

    Quantus' ``IROF`` reports the unnormalised ``L - trapz(q_1, ..., q_L)`` over the
    steps after the first removal, which grows with the number of segments, and its
    ``'mean'`` baseline is the mean of the partly replaced image over all channels,
    recomputed at every step. Here ``'mean'`` is each channel's mean over the clean
    image, so every removed segment takes the same values.

    Args:
      fn, x, target, attributions, blur_sigma, probabilities: as
        :func:`deletion_curve`; ``x`` images ``(N, H, W, C)``.
      segments: int labels ``(N, H, W)`` (or ``(H, W)`` for every image), each
        example's labels ``0 .. L_i - 1`` (a label without pixels is an error): e.g.
        ``np.stack([fmi_jax.attribution.felzenszwalb(im, scale=s) for im in x])``, or
        scikit-image's ``slic(im, start_label=0)`` as Quantus' default. Concrete (not
        traced).
      substrate: ``'mean'`` (default, the paper's and Quantus'), or any substrate of
        :func:`deletion_curve`.
      batch_size: (example, step) pairs per forward pass, 1024 by default (all at
        once with ``None``).

    Returns:
      float32 ``(N,)``: at most 1 with probabilities (``q >= 0``), at least 0 when no
      removal raises the score above ``f_t(x)``; NaN where ``f_t(x) <= 0``.

    Raises:
      ValueError: as :func:`deletion_curve`, segments that do not fit ``x`` or skip a
        label, fewer than 2 segments in an example.
    """
    x = as_input(x)
    if x.ndim != 4:
        raise ValueError(f"irof needs images (N, H, W, C), got input shape {x.shape}")
    segments, counts = _as_segments(segments, x.shape)
    if isinstance(substrate, str) and substrate == "mean":
        background = jnp.broadcast_to(x.mean((1, 2), keepdims=True), x.shape)
    else:
        background = _substrate(substrate, x, blur_sigma)
    curve, _ = _region_curves(
        fn,
        x,
        target,
        attributions,
        jnp.asarray(segments),
        int(counts.max()),
        "mean",
        background,
        probabilities,
        batch_size,
    )
    # Per example: the trapezoid over its own L_i + 1 points, x spacing 1 / L_i.
    clean = curve[:, :1]
    q = jnp.where(clean > 0, curve / jnp.where(clean > 0, clean, 1.0), jnp.nan)
    steps = jnp.asarray(counts, jnp.float32)
    inside = jnp.arange(curve.shape[1])[None] <= steps[:, None]
    last = jnp.take_along_axis(q, jnp.asarray(counts)[:, None], axis=1)[:, 0]
    area = (jnp.sum(jnp.where(inside, q, 0.0), 1) - 0.5 * (q[:, 0] + last)) / steps
    return 1.0 - area


def _as_segments(segments: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Segments as int32 ``(N, H, W)`` on the host, and each example's number of labels."""
    if isinstance(segments, jax.core.Tracer):
        raise ValueError("segments must be concrete arrays (compute them outside jax.jit)")
    labels = np.asarray(segments)
    if labels.shape == shape[1:3]:
        labels = np.broadcast_to(labels, shape[:3])
    if labels.shape != shape[:3] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"segments must be integer labels {shape[:3]} (or {shape[1:3]} for every "
            f"image), got {labels.dtype} {labels.shape}"
        )
    flat = labels.reshape(shape[0], -1)
    counts = flat.max(1) + 1
    if labels.min() < 0:
        raise ValueError(f"segments must be labels >= 0, got a minimum of {labels.min()}")
    for i, row in enumerate(flat):
        if len(np.unique(row)) != counts[i]:
            raise ValueError(
                f"the segments of example {i} must use every label 0 .. {counts[i] - 1} "
                "(relabel them, e.g. np.unique(s, return_inverse=True)[1])"
            )
        if counts[i] < 2:
            raise ValueError(f"example {i} has one segment; removing it leaves no curve")
    return labels.astype(np.int32), counts.astype(np.int32)


def _region_curves(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    segments: Array,
    num_regions: int,
    aggregate: str,
    background: Array,
    probabilities: bool,
    batch_size: int | None,
) -> tuple[Array, Array]:
    """Scores after removing the ``k`` most relevant regions, ``k = 0 .. num_regions``,
    ``(N, num_regions + 1)``, and the region relevances ``(N, num_regions)``. A
    region's relevance is the ``'sum'`` or ``'mean'`` of its pixels'; regions an example
    lacks rank last (removing them changes nothing)."""
    relevance, mask_shape = _pixel_relevance(x, attributions)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    n = relevance.shape[0]
    labels = segments.reshape(n, -1)
    rows = jnp.arange(n)[:, None]
    total = jnp.zeros((n, num_regions)).at[rows, labels].add(relevance)
    size = jnp.zeros((n, num_regions)).at[rows, labels].add(1.0)
    region = total if aggregate == "sum" else total / jnp.maximum(size, 1.0)
    region = jnp.where(size > 0, region, -jnp.inf)
    rank = jnp.take_along_axis(_removal_ranks(region, most_relevant_first=True), labels, 1)
    counts = jnp.arange(num_regions + 1, dtype=jnp.int32)

    def perturb(example: Array, k: Array, changed: Array) -> Array:
        del k
        return jnp.where(changed, background[example], x[example])

    score = "probability" if probabilities else "logit"
    curve = _scores_after_change(
        fn, x, target, rank, counts, mask_shape, perturb, score, batch_size, _LOGIT_OPTION
    )
    return curve, region


def _as_range(value: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"uniform_range must be two numbers (low, high), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"uniform_range must be finite with low < high, got {value!r}")
    return low, high


def _target_score(
    logits: Array, target: Array, probabilities: bool, instead: str | None = _LOGIT_OPTION
) -> Array:
    if probabilities:
        return target_probability(logits, target, instead=instead)
    return select_target(logits, target)


def _as_fractions(fractions: Any) -> tuple[float, ...]:
    listed = fractions if isinstance(fractions, (list, tuple)) else [fractions]
    if any(isinstance(f, jax.core.Tracer) for f in listed):
        raise ValueError("fractions must be static Python numbers (mark them static under jax.jit)")
    try:
        values = tuple(float(f) for f in np.asarray(fractions, np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be numbers in [0, 1], got {fractions!r}") from None
    if not values or not all(0.0 <= f <= 1.0 for f in values):
        raise ValueError(f"fractions must be one or more numbers in [0, 1], got {fractions!r}")
    return values


def _pixel_count(fraction: float, num_pixels: int) -> int:
    """``floor(fraction P)`` after rounding away float noise (0.7 of 10 is 7, not 6)."""
    return math.floor(round(fraction * num_pixels, 9))


def _check_curve(curve: Any) -> Array:
    curve = jnp.asarray(curve, jnp.float32)
    if curve.ndim < 1 or curve.shape[-1] < 2:
        raise ValueError(
            f"a curve needs at least 2 points along its last axis, got shape {curve.shape}"
        )
    return curve


def auc(curve: Array) -> Array:
    """Trapezoid area under curves ``(..., S + 1)`` with x equally spaced in [0, 1] (RISE);
    shape ``(...)``."""
    curve = _check_curve(curve)
    steps = curve.shape[-1] - 1
    return (curve.sum(-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / steps


_MASK_SCALES = ("minmax", "none")


def _masked_confidence(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    scale: str,
    batch_size: int | None,
    name: str,
) -> tuple[Array, Array]:
    """``(Y, O)``, ``(N,)`` each: the target's softmax probability on ``x`` and on
    ``x * E`` (module docstring), computed in the same chunks."""
    if scale not in _MASK_SCALES:
        raise ValueError(f"{name}: scale must be one of {_MASK_SCALES}; got {scale!r}")
    x = as_input(x)
    _, mask_shape = _pixel_relevance(x, attributions)
    _, relevance = _scaled_pixels(x, attributions, scale, name)
    mask = relevance.reshape((x.shape[0],) + mask_shape)
    target = resolve_target(fn, x, target, batch_size=batch_size)

    def evaluate(example: Array, k: Array) -> Array:
        masked = (k == 1).reshape((-1,) + (1,) * len(mask_shape))
        inputs = jnp.where(masked, x[example] * mask[example], x[example])
        return _target_score(fn(inputs), target[example], True, None)

    scores = map_over_samples(evaluate, x.shape[0], 2, batch_size=batch_size)
    return scores[:, 0], scores[:, 1]


def _confidence_metric(kind: str, title: str, formula: str, good: str):
    def metric(
        fn: ModelFn,
        x: Array,
        target: Target,
        attributions: Array,
        *,
        scale: str = "minmax",
        batch_size: int | None = None,
    ) -> Array:
        before, after = _masked_confidence(fn, x, target, attributions, scale, batch_size, kind)
        if kind == "increase_in_confidence":
            return (after > before).astype(jnp.float32)
        if kind == "average_drop":
            change, room = jax.nn.relu(before - after), before
        else:
            change, room = jax.nn.relu(after - before), 1.0 - before
        return jnp.where(room > 0, change / jnp.where(room > 0, room, 1.0), 0.0)

    metric.__name__ = metric.__qualname__ = kind
    metric.__doc__ = f"""{title} of every example's map, shape ``(N,)``: {formula} (module
    docstring); average it over the examples ({good}).

    Args:
      fn: model function, batch -> logits ``(N, classes)``.
      x: inputs, images ``(N, H, W, C)`` or any ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` (predicted class).
      attributions: maps shaped like ``x`` (summed over channels for images) or, for
        images, per pixel ``(N, H, W)`` (a CAM).
      scale: ``'minmax'`` scales each map to ``[0, 1]`` (a constant map becomes 0);
        ``'none'`` multiplies by the map as it is.
      batch_size: inputs per forward pass (the ``2 N`` of the original and the masked
        inputs); ``None`` runs all at once.

    Returns:
      float32 ``(N,)``.

    Raises:
      ValueError: attributions that do not fit ``x``, an unknown ``scale``.
    """
    return metric


average_drop = _confidence_metric(
    "average_drop",
    "Average Drop",
    "``max(0, Y - O) / Y``",
    "x 100 for the percentage the papers report; low is good",
)
increase_in_confidence = _confidence_metric(
    "increase_in_confidence",
    "Increase in Confidence",
    "1 where ``O > Y``, else 0",
    "x 100 for the percentage the papers report; high is good",
)
average_gain = _confidence_metric(
    "average_gain",
    "Average Gain",
    "``max(0, O - Y) / (1 - Y)``",
    "x 100 for the percentage the papers report; high is good",
)


class Adcc(NamedTuple):
    """ADCC and its three parts, ``(N,)`` float32 each (module docstring); its
    ``complexity`` is the mean of the scaled map, not :func:`complexity`'s entropy."""

    adcc: Array
    average_drop: Array
    coherency: Array
    complexity: Array


def _scaled_pixels(x: Array, maps: Any, scale: str, name: str) -> tuple[Array, Array]:
    """``(relevance, E)``: each example's pixel relevance ``(N, P)``, and ``E``, that
    relevance min-max scaled with ``scale='minmax'`` or, with ``'none'``, as it is (a
    concrete map outside ``[0, 1]`` is refused: it would not be a mask)."""
    relevance, _ = _pixel_relevance(x, maps)
    if scale == "minmax":
        return relevance, minmax_scale(relevance, 1)
    concrete = not isinstance(relevance, jax.core.Tracer)
    if concrete and not bool(jnp.all((relevance >= 0) & (relevance <= 1))):
        raise ValueError(
            f"{name}: with scale='none' the maps must lie in [0, 1] (they are the masks); "
            "got values outside it: use scale='minmax'"
        )
    return relevance, relevance


def _coherency_parts(
    explain: Callable[[Array, Array, Array], Array],
    x: Array,
    target: Target,
    key: Array,
    attributions: Any,
    fn: ModelFn | None,
    scale: str,
    batch_size: int | None,
    name: str,
) -> tuple[Array, Array, Array]:
    """``(target, E, coherency)`` for :func:`coherency`, :func:`adcc` and :func:`arcc`,
    with every argument checked before ``explain`` runs."""
    if scale not in _MASK_SCALES:
        raise ValueError(f"{name}: scale must be one of {_MASK_SCALES}; got {scale!r}")
    x = as_input(x)
    num_examples = x.shape[0]
    if target is None and fn is None:
        raise ValueError(
            f"{name} needs explicit targets or fn= to resolve target=None to the predicted class"
        )
    if fn is not None:  # the predicted class, or the given ones checked against fn's
        target = resolve_target(fn, x, target, batch_size=batch_size)
    else:
        target = as_target(target, num_examples)
    keys = example_keys(require_key(key, name), num_examples)

    def explained(inputs: Array) -> Array:
        def chunk(example: Array, _: Array) -> Array:
            maps = explain(inputs[example], target[example], keys[example])
            return as_rows(maps, inputs[example], "explain must return maps")

        return map_over_samples(chunk, num_examples, 1, batch_size=batch_size)[:, 0]

    if attributions is None:
        attributions = explained(x)
    relevance, scaled = _scaled_pixels(x, attributions, scale, name)
    mask_shape = x.shape[1:-1] + (1,) if x.ndim == 4 else x.shape[1:]
    masked = x * scaled.reshape((num_examples,) + mask_shape)
    again, _ = _pixel_relevance(x, explained(masked))
    r = pearson(relevance, again)
    return target, scaled, jnp.where(jnp.isnan(r), 0.0, (r + 1.0) / 2.0)


def coherency(
    explain: Callable[[Array, Array, Array], Array],
    x: Array,
    target: Target,
    key: Array,
    *,
    attributions: Array | None = None,
    fn: ModelFn | None = None,
    scale: str = "minmax",
    batch_size: int | None = None,
) -> Array:
    """ADCC's coherency of every example's map, ``(r + 1) / 2`` with ``r`` the Pearson
    correlation of the map of ``x`` and the map of ``x * E`` (module docstring), shape
    ``(N,)``; high is good.

    Args:
      explain: ``explain(x, target, key) -> maps`` on a batch, the signature of
        :func:`fmi_jax.attribution.explainer` (maps shaped like ``x``, per pixel, or
        ``(N, H, W, 1)``); it receives one key per example.
      x: inputs, images ``(N, H, W, C)`` or any ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` (the predicted
        class, which needs ``fn``); both maps explain this class.
      key: a PRNG key, or one per example; ``x * E`` is explained with the same keys.
      attributions: the maps of ``x`` when already computed; ``None`` runs ``explain``.
      fn: the model, only needed for ``target=None``.
      scale: ``'minmax'`` scales each map to ``[0, 1]`` before masking; ``'none'``
        multiplies by the map as it is, which must then lie in ``[0, 1]``.
      batch_size: examples per call of ``explain``; ``None`` explains all at once.

    Returns:
      float32 ``(N,)`` in ``[0, 1]``; 0 where a map is constant.
    """
    check_explain(explain, "coherency")
    return _coherency_parts(
        explain, x, target, key, attributions, fn, scale, batch_size, "coherency"
    )[2]


def adcc(
    explain: Callable[[Array, Array, Array], Array],
    x: Array,
    target: Target,
    key: Array,
    *,
    fn: ModelFn,
    attributions: Array | None = None,
    scale: str = "minmax",
    batch_size: int | None = None,
) -> Adcc:
    """ADCC of every example's map, the harmonic mean of its coherency, ``1 -`` its
    complexity and ``1 -`` its Average Drop (module docstring); high is good.

    The arguments are ordered as every metric of an explainer's (:func:`coherency`,
    the robustness metrics); ``fn``, which those take for optional checks, is required.

    Args:
      explain, x, target, key, attributions, scale: as in :func:`coherency`.
      fn: model function, batch -> logits ``(N, classes)``.
      batch_size: examples per call of ``explain``, and inputs per forward pass.

    Returns:
      :class:`Adcc` of float32 ``(N,)`` arrays: ``adcc`` and its three parts.
    """
    check_explain(explain, "adcc")
    target, scaled, coherent = _coherency_parts(
        explain, x, target, key, attributions, fn, scale, batch_size, "adcc"
    )
    x = as_input(x)
    per_pixel = x.shape[:-1] if x.ndim == 4 else x.shape
    drop = average_drop(
        fn, x, target, scaled.reshape(per_pixel), scale="none", batch_size=batch_size
    )
    kept = scaled.mean(axis=1)
    return Adcc(_harmonic_mean([coherent, 1.0 - kept, 1.0 - drop]), drop, coherent, kept)


#: The fractions of the pixels :func:`arcc` removes, by ROAD, in each order.
ARCC_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


class Arcc(NamedTuple):
    """ARCC and its three parts, ``(N,)`` float32 each (module docstring); its
    ``complexity`` is the mean of the scaled map, as ADCC's."""

    arcc: Array
    road: Array
    coherency: Array
    complexity: Array


def _harmonic_mean(parts: Sequence[Array]) -> Array:
    """The harmonic mean of per-example scores in ``[0, 1]``, 0 where any is 0 or below."""
    stacked = jnp.stack(parts)
    positive = jnp.all(stacked > 0, axis=0)
    mean = len(parts) / jnp.sum(1.0 / jnp.where(positive, stacked, 1.0), axis=0)
    return jnp.where(positive, mean, 0.0)


def arcc(
    explain: Callable[[Array, Array, Array], Array],
    x: Array,
    target: Target,
    key: Array,
    *,
    fn: ModelFn,
    attributions: Array | None = None,
    fractions: Sequence[float] = ARCC_FRACTIONS,
    noise: float = DEFAULT_IMPUTATION_NOISE,
    scale: str = "minmax",
    batch_size: int | None = None,
) -> Arcc:
    """ARCC of every example's map, the harmonic mean of its coherency, ``1 -`` its
    complexity and its ROAD gap between least- and most-relevant-first removal (module
    docstring); high is good.

    Args:
      explain, x, target, attributions, scale: as in :func:`coherency`; ``x`` images.
      key: a PRNG key, or one per example: the explainer gets it as in
        :func:`coherency`, ROAD ``fold_in(key_i, 1)`` (its tied pixels' order and its
        imputation noise).
      fractions: the fractions of the pixels removed in each order.
      fn: model function, batch -> logits ``(N, classes)``, as in :func:`adcc`.
      noise: the imputation noise, as in :func:`road`.
      batch_size: examples per call of ``explain``, and (example, fraction) pairs per
        forward pass.

    Returns:
      :class:`Arcc` of float32 ``(N,)`` arrays: ``arcc`` and its three parts.
    """
    check_explain(explain, "arcc")
    x = as_input(x)
    if x.ndim != 4:
        raise ValueError(f"arcc needs images (N, H, W, C), got input shape {x.shape}")
    fractions = _as_fractions(fractions)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < np.inf:
        raise ValueError(f"arcc: noise must be a finite number >= 0, got {noise!r}")
    target, scaled, coherent = _coherency_parts(
        explain, x, target, key, attributions, fn, scale, batch_size, "arcc"
    )
    road_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(example_keys(key, x.shape[0]))
    maps = scaled.reshape(x.shape[:-1])
    curves = {
        order: road(
            fn,
            x,
            target,
            maps,
            road_keys,
            order=order,
            fractions=fractions,
            noise=noise,
            batch_size=batch_size,
        )
        for order in ("lerf", "morf")
    }
    gap = jnp.clip(jnp.mean(curves["lerf"] - curves["morf"], axis=1), 0.0, 1.0)
    kept = scaled.mean(axis=1)
    return Arcc(_harmonic_mean([coherent, 1.0 - kept, gap]), gap, coherent, kept)


def aopc(curve: Array) -> Array:
    """Area over the perturbation curve (Samek et al. 2017),
    ``mean_k (c_0 - c_k)`` over the ``S + 1`` points of ``(..., S + 1)``; shape ``(...)``."""
    curve = _check_curve(curve)
    return (curve[..., :1] - curve).mean(-1)


def sparseness(attributions: Array) -> Array:
    """Gini index of each example's absolute attributions, shape ``(N,)`` (module docstring):
    0 for uniform or all-zero maps, ``(n - 1) / n`` for a one-hot map of ``n`` features."""
    a = jnp.sort(_absolute_rows(attributions), axis=1)
    n = a.shape[1]
    weights = 2.0 * jnp.arange(1, n + 1, dtype=jnp.float32) - n - 1
    total = a.sum(1)
    gini = (a * weights).sum(1) / (n * jnp.where(total > 0, total, 1.0))
    return jnp.where(total > 0, gini, 0.0)


def _absolute_rows(attributions: Any) -> Array:
    a = flat_rows(jnp.asarray(attributions, jnp.float32), "attributions")
    check_finite(a, "attributions")
    return jnp.abs(a)


def complexity(attributions: Array) -> Array:
    """Entropy of each example's fractional contributions ``|a_i| / sum |a|``, shape
    ``(N,)`` (module docstring): 0 for a one-hot map, ``ln n`` for a uniform or all-zero
    map of ``n`` features."""
    a = _absolute_rows(attributions)
    total = a.sum(1, keepdims=True)
    p = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 1.0 / a.shape[1])
    plogp = jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=1)
    return 0.0 - plogp  # 0.0, not -0.0, for a one-hot map


def _as_eps(eps: Any) -> float:
    try:
        threshold = float(eps)
    except (TypeError, ValueError):
        threshold = float("nan")
    if isinstance(eps, bool) or not 0 <= threshold < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return threshold


def effective_complexity(attributions: Array, *, eps: float = 1e-5) -> Array:
    """How many features of each example have ``|a_i| > eps``, shape ``(N,)``, int32.

    ``eps`` is in the map's own units, so the count depends on its scale (a trained
    model's small gradients may all fall below 1e-5). Quantus' ``EffectiveComplexity``
    normalises the maps first (its default ``normalise=True``, by the batch's largest
    ``|a|``): ``effective_complexity(a / abs(a).max())`` is that count, and dividing
    each map by its own peak makes the threshold relative per example (docs/captum.md).
    """
    threshold = _as_eps(eps)
    return jnp.sum(_absolute_rows(attributions) > threshold, axis=1, dtype=jnp.int32)


def discrete_entropy(attributions: Array, *, bins: int = 100) -> Array:
    """Entropy of the histogram of each example's attribution values, shape ``(N,)``.

    The ``F`` values of a map (signed, every feature and channel) go into ``bins``
    equal bins spanning ``[min, max]`` of that map, the last bin closed, as
    ``numpy.histogram(a, bins)``; with counts ``c_b``, ``H = -sum_b (c_b / F) ln(c_b /
    F)`` (natural log, empty bins left out), ``scipy.stats.entropy`` of the counts.
    ``H = 0`` for a constant map (NumPy puts it in one bin), ``ln bins`` when every
    bin holds as many values; an affine rescaling ``c a + d`` (``c != 0``) leaves it
    unchanged up to values on a bin edge. This is the complexity measure of the
    efficient MPRT (Hedström et al. 2023; Quantus' ``discrete_entropy``), which
    expects the map of a randomised model to spread its values over more bins.

    Values are binned in float32 as ``floor((a - min) / (max - min) bins)``: a value
    within rounding of a bin edge may land in the neighbouring bin where NumPy's
    float64 edges put it in the other.
    """
    bins = as_count(bins, "bins")
    a = flat_rows(jnp.asarray(attributions, jnp.float32), "attributions")
    check_finite(a, "attributions")
    low = a.min(1, keepdims=True)
    span = a.max(1, keepdims=True) - low
    scaled = (a - low) / jnp.where(span > 0, span, 1.0) * bins
    index = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, bins - 1)
    rows = jnp.arange(a.shape[0])[:, None]
    p = jnp.zeros((a.shape[0], bins)).at[rows, index].add(1.0) / a.shape[1]
    return 0.0 - jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=1)
