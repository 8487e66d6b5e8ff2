"""Backend ``absorbing-diffusion`` (codec id 21): text through absorbing-state
(mask) diffusion, the order-agnostic ARDM, coded exactly in a chosen number of
network passes (:mod:`amdcompress.models.absorbing.coding`: no bits-back, no
initial bits).

Step budget: the weights carry a default (their record's ``default_steps``).
Until the API has a ``steps`` argument, set :data:`STEPS` in this module or the
environment variable ``AMDCOMPRESS_ABSORBING_STEPS`` to choose another (>= 1;
more than the chunk length L means L, the full order). The budget is recorded
in the stream, so decoding needs no setting; ``amdcompress info`` shows it.

Weights checks, escapes, the coding mode (CPU, one thread, deterministic) and
one-line errors are :class:`~.text_backend.TextModelBackend`'s.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backends import register
from .codecs.errors import AmdError
from .text_backend import TextModelBackend

STEPS: int | None = None  # module-level override of the step budget (None: env var, else the weights' default)
ENV_STEPS = "AMDCOMPRESS_ABSORBING_STEPS"


def coding_steps() -> int | None:
    """The step budget new files use: STEPS, else the environment variable,
    else None (the weights' default)."""
    if STEPS is not None:
        return int(STEPS)
    env = os.environ.get(ENV_STEPS, "").strip()
    if not env:
        return None
    try:
        steps = int(env)
    except ValueError:
        raise AmdError(f"{ENV_STEPS}={env!r} is not an integer") from None
    if steps < 1:
        raise AmdError(f"{ENV_STEPS} must be >= 1 (got {steps})")
    return steps


class AbsorbingBackend(TextModelBackend):
    """Absorbing-state diffusion / OA-ARDM on text, exact ANS per step."""

    name, codec_id = "absorbing-diffusion", 21
    description = "learned text model: absorbing-state diffusion (order-agnostic ARDM), exact ANS in S passes"
    weights_name = "absorbing-diffusion-v1"

    def load(self, path: Path, sha256: str):
        from amdcompress.models import registry
        from amdcompress.models.absorbing import coding

        return coding.load(registry.read_weights(path, self.weights_name))

    def encode_symbols(self, state, sym: np.ndarray, progress, stats: dict) -> bytes:
        from amdcompress.models.absorbing import coding

        return coding.compress(state, sym, steps=coding_steps(), progress=progress, stats=stats)

    def decode_symbols(self, state, stream: bytes, progress, max_symbols: int) -> np.ndarray:
        from amdcompress.models.absorbing import coding

        return coding.decompress(state, stream, max_symbols, progress=progress)

    def stream_details(self, stream: bytes) -> dict:
        from amdcompress.models.absorbing import coding

        return coding.details(stream) if stream else {}


BACKEND = AbsorbingBackend()
register(BACKEND)
