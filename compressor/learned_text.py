"""Learned text backends. ``argmax``: the Argmax Flow text model (codec id 18).

Payload: :func:`amdcompress.textstream.pack` of the model stream (the 27-symbol
text coded by bits-back with the Argmax Flow, :mod:`amdcompress.models.argmax_coding`)
and the escape blob (every byte outside ``' '`` + ``a-z``), so any byte string
round-trips. Coding runs on the CPU with one thread and float32, step by step
with the same batch layout on both sides.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from . import textstream
from .backends import NO_WEIGHTS, register
from .errors import AmdError
from .formats import BYTES, Data

WEIGHTS_NAME = "argmax-v1"
MAX_ESCAPE_FRACTION = 0.5


def default_weights_path() -> Path:
    env = os.environ.get("AMDCOMPRESS_ARGMAX_WEIGHTS")
    if env:
        return Path(env)
    import amdcompress.models as models

    return Path(models.__file__).resolve().parent / "weights" / f"{WEIGHTS_NAME}.pt"


class ArgmaxBackend:
    """Argmax Flow (autoregressive prior, binary code, thresholding q) on text."""

    name, codec_id, learned = "argmax", 18, True
    description = "learned text model: Argmax Flow (LSTM + autoregressive flow prior), bits-back ANS"

    def __init__(self, weights: str | Path | None = None):
        self._path = Path(weights) if weights is not None else None
        self._loaded = None  # (model, tables, sha256)
        self.last_stats: dict = {}  # of the last encode: lanes, information content, message bits

    # -- weights ----------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path if self._path is not None else default_weights_path()

    def available(self) -> bool:
        return self.path.is_file()

    def _expected_sha(self) -> str | None:
        meta = self.path.with_suffix(".json")
        if not meta.is_file():
            return None
        try:
            return json.loads(meta.read_text())["sha256"]
        except (ValueError, KeyError, OSError):
            raise AmdError(f"argmax weights metadata {meta} is unreadable") from None

    def _load(self):
        if self._loaded is None:
            if not self.available():
                raise AmdError(f"argmax model weights not installed ({self.path})")
            import torch

            torch.set_num_threads(1)
            from amdcompress.models.argmax_coding import load_weights

            try:
                self._loaded = load_weights(self.path, self._expected_sha())
            except ValueError as e:
                raise AmdError(f"argmax weights check failed: {e}") from None
        return self._loaded

    def weights_tag(self) -> bytes:
        if not self.available():
            return NO_WEIGHTS
        if self._loaded is not None:
            return bytes.fromhex(self._loaded[2][:8])
        return hashlib.sha256(self.path.read_bytes()).digest()[:4]

    # -- backend interface ----------------------------------------------------------
    def accepts(self, data: Data) -> bool:
        """Any bytes (out-of-alphabet bytes become escapes), once weights are installed."""
        return data.kind == BYTES and self.available()

    def auto_accepts(self, data: Data) -> bool:
        """``auto`` tries the model only on text-like bytes (at most half escapes)."""
        return self.accepts(data) and textstream.escape_fraction(np.asarray(data.array)) <= MAX_ESCAPE_FRACTION

    def encode(self, data: Data, progress=None) -> bytes:
        if data.kind != BYTES:
            raise AmdError("the argmax model codes text (bytes) only")
        import torch

        from amdcompress.models.argmax_coding import encode_symbols

        model, tables, _ = self._load()
        sym, esc = textstream.split(np.asarray(data.array, dtype=np.uint8))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.last_stats = {}
            stream = encode_symbols(model, tables, sym, progress=progress, stats=self.last_stats)
        finally:
            torch.set_num_threads(threads)
        return textstream.pack(stream, esc)

    def decode(self, payload: bytes, kind: int, shape, progress=None) -> np.ndarray:
        if kind != BYTES or len(shape) != 1:
            raise AmdError("corrupt header: the argmax model codes bytes only")
        import torch

        from amdcompress.codecs import CorruptStreamError
        from amdcompress.models.argmax_coding import StreamError, decode_symbols

        model, tables, _ = self._load()
        stream, esc = textstream.unpack(payload)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            sym = decode_symbols(model, tables, stream, progress=progress, max_symbols=int(shape[0]))
        except (StreamError, CorruptStreamError, ValueError, IndexError, OverflowError) as e:
            raise AmdError(f"corrupt payload ({e})") from None
        except BaseException as e:  # constriction's PanicException derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise AmdError(f"corrupt payload ({type(e).__name__})") from None
        finally:
            torch.set_num_threads(threads)
        if sym.size > shape[0]:
            raise AmdError("corrupt payload: text length mismatch")
        return textstream.join(sym, esc, int(shape[0]))


BACKEND = ArgmaxBackend()
register(BACKEND)
