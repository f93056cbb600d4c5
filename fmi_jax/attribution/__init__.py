"""Attribution methods as pure functions of a model function ``fn(x) -> logits``.

Every method takes ``fn`` (batch ``(N, ...)`` -> logits ``(N, classes)``), inputs ``x``
and a ``target`` (int array ``(N,)``, one int, or ``None`` for the predicted class),
returns float32 attributions shaped like ``x``, takes its options as keywords, draws
randomness only from an explicit ``key`` and bounds memory with ``batch_size``.

Shared machinery (targets, checks, chunking, keys) lives in :mod:`.core`.
"""

from fmi_jax.attribution.core import resolve_target

__all__ = [
    "resolve_target",
]
