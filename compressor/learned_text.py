"""Backend ``argmax`` (codec id 18): the Argmax Flow text model, ``auto``'s
choice for text.

The 27-symbol text is coded by bits-back with the Argmax Flow
(:mod:`amdcompress.models.argmax.coding`: LSTM context, autoregressive
logistic-mixture prior, thresholding q); everything else is
:class:`~.text_backend.TextModelBackend`'s (checked weights, escapes, errors,
deterministic coding).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import register
from .text_backend import TextModelBackend


class ArgmaxBackend(TextModelBackend):
    """Argmax Flow (autoregressive prior, binary code, thresholding q) on text."""

    name, codec_id = "argmax", 18
    description = "learned text model: Argmax Flow (LSTM + autoregressive flow prior), bits-back ANS"
    weights_name = "argmax-v1"
    in_auto = True

    def load(self, path: Path, sha256: str):
        """(model, coding tables, sha256)."""
        from amdcompress.models.argmax.coding import load_weights

        return load_weights(path, sha256)

    def encode_symbols(self, loaded, sym: np.ndarray, progress, stats: dict) -> bytes:
        from amdcompress.models.argmax.coding import encode_symbols

        model, tables, _ = loaded
        return encode_symbols(model, tables, sym, progress=progress, stats=stats)

    def decode_symbols(self, loaded, stream: bytes, progress, max_symbols: int) -> np.ndarray:
        from amdcompress.models.argmax.coding import decode_symbols

        model, tables, _ = loaded
        return decode_symbols(model, tables, stream, progress=progress, max_symbols=max_symbols)


BACKEND = ArgmaxBackend()
register(BACKEND)
