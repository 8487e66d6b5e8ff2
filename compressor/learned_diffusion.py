"""Backend "diffusion" (codec id 17): text through multinomial diffusion with
bits-back coding along the chain (:mod:`amdcompress.models.diffusion.coding`).

Input: any bytes. Symbols of the text8 alphabet (space, a-z) go through the
model; every other byte is an escape stored by :mod:`.textstream` (LZMA2), so
anything round-trips. ``auto`` skips inputs that are mostly escapes.

Chain length: the model is trained with T = 1000 steps and codes with a subset
of them (fewer steps: faster, a few more bits). The default is
:data:`DEFAULT_STEPS`; set :data:`STEPS` in this module or the environment
variable ``AMDCOMPRESS_DIFFUSION_STEPS`` to choose another (1..T). The steps
used are recorded in the payload, so decoding needs no setting.

Payload: ``textstream.pack(stream, escapes)`` with the stream of
:meth:`DiffusionCoder.encode` (version, steps, block, symbol count,
generation plan, ANS message). Weights checks, escapes, deterministic coding
and one-line errors are :class:`~.text_backend.TextModelBackend`'s.
"""
from __future__ import annotations

import os

from pathlib import Path

import numpy as np

from .backends import register
from .codecs.errors import AmdError
from .text_backend import TextModelBackend

DEFAULT_STEPS = 100
STEPS: int | None = None  # module-level override of the chain length (None: env var or default)
ENV_STEPS = "AMDCOMPRESS_DIFFUSION_STEPS"


def coding_steps() -> tuple[int, str]:
    """The chain length new files are coded with, and where it came from:
    STEPS, else the environment variable, else DEFAULT_STEPS (checked against
    the model's T at encode)."""
    if STEPS is not None:
        return int(STEPS), "learned_diffusion.STEPS"
    env = os.environ.get(ENV_STEPS, "").strip()
    if env:
        try:
            return int(env), ENV_STEPS
        except ValueError:
            raise AmdError(f"{ENV_STEPS}={env!r} is not an integer") from None
    return DEFAULT_STEPS, "the default"


class DiffusionBackend(TextModelBackend):
    """Multinomial diffusion on text; the chain length comes from :func:`coding_steps`."""

    name, codec_id = "diffusion", 17
    description = "text: multinomial diffusion (Hoogeboom et al. 2021), bits-back along the chain"
    weights_name = "diffusion-v1"
    # Not tried by ``auto``: coding runs the network once per chain step over every
    # character (~50-200 chars/s at 100 steps on one core), and the shipped weights
    # (models/weights/diffusion-v1.json) do not beat the classical fallback yet.
    in_auto = False

    def load(self, path: Path, sha256: str):
        """A :class:`DiffusionCoder` around the (float32, eval-mode) denoiser."""
        from amdcompress.models.diffusion import network as diffusion
        from amdcompress.models.diffusion import coding as diffusion_coding
        from amdcompress.models import registry

        return diffusion_coding.DiffusionCoder(diffusion.model_from_weights(registry.read_weights(path)))

    def encode_symbols(self, coder, sym: np.ndarray, progress, stats: dict) -> bytes:
        steps, source = coding_steps()
        if not 1 <= steps <= coder.T:
            raise AmdError(f"diffusion steps must be in 1..{coder.T} (got {steps} from {source})")
        return coder.encode(sym, steps, progress=progress, stats=stats)

    def decode_symbols(self, coder, stream: bytes, progress, max_symbols: int) -> np.ndarray:
        return coder.decode(stream, max_symbols=max_symbols, progress=progress)

    def stream_details(self, stream: bytes) -> dict:
        """The chain length the file was coded with (``--steps`` of the encoder)."""
        from amdcompress.models.diffusion.coding import stream_steps

        return {"chain_steps": stream_steps(stream)} if stream else {}


BACKEND = DiffusionBackend()
register(BACKEND)
