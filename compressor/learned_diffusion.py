"""Backend "diffusion" (codec id 17): text through multinomial diffusion with
bits-back coding along the chain (:mod:`amdcompress.models.diffusion_coding`).

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
generation plan, ANS message).
"""
from __future__ import annotations

import os

import numpy as np

from . import textstream
from .backends import register
from .errors import AmdError
from .formats import BYTES, Data

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


class DiffusionBackend:
    name, codec_id, learned = "diffusion", 17, True
    description = "text: multinomial diffusion (Hoogeboom et al. 2021), bits-back along the chain"

    def __init__(self):
        self._coder = None

    # -- model ---------------------------------------------------------------
    def _installed(self) -> bool:
        try:
            from amdcompress.models import diffusion

            return diffusion.weights_available()
        except ImportError:
            return False

    def coder(self):
        if self._coder is None:
            try:
                import torch  # noqa: F401

                from amdcompress.models import diffusion, diffusion_coding
            except ImportError as e:
                raise AmdError(f"model 'diffusion' needs torch ({e})") from None
            self._coder = diffusion_coding.DiffusionCoder(diffusion.load_shipped())
        return self._coder

    def weights_tag(self) -> bytes:
        from amdcompress.models import diffusion

        return diffusion.weights_tag()

    # -- backend interface ---------------------------------------------------
    def accepts(self, data: Data) -> bool:
        """Any bytes (out-of-alphabet bytes become escapes), once weights are installed."""
        return data.kind == BYTES and self._installed()

    def auto_accepts(self, data: Data) -> bool:
        """Not tried by ``auto``: coding runs the network once per chain step over
        every character (~50-200 chars/s at 100 steps on one core), and the
        shipped weights (see models/weights/diffusion-v1.json) do not beat the
        classical fallback yet. ``--model diffusion`` always works."""
        return False

    def encode(self, data: Data, progress=None, stats: dict | None = None) -> bytes:
        if data.kind != BYTES:
            raise AmdError("model 'diffusion' codes bytes (text) only")
        symbols, escapes = textstream.split(np.asarray(data.array, dtype=np.uint8))
        coder = self.coder()
        steps, source = coding_steps()
        if not 1 <= steps <= coder.T:
            raise AmdError(f"diffusion steps must be in 1..{coder.T} (got {steps} from {source})")
        stream = coder.encode(symbols, steps, progress=progress, stats=stats)
        return textstream.pack(stream, escapes)

    def decode(self, payload: bytes, kind: int, shape, progress=None) -> np.ndarray:
        if kind != BYTES or len(shape) != 1:
            raise AmdError("corrupt header: model 'diffusion' codes bytes only")
        n = int(shape[0])
        stream, escapes = textstream.unpack(bytes(payload))
        try:
            symbols = self.coder().decode(stream, max_symbols=n, progress=progress)
        except AmdError:
            raise
        except (ValueError, IndexError, OverflowError) as e:
            raise AmdError(f"corrupt payload ({e})") from None
        except BaseException as e:  # constriction's PanicException derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise AmdError(f"corrupt payload ({type(e).__name__})") from None
        return textstream.join(symbols, escapes, n)


register(DiffusionBackend())
