"""Backend ``argmax-coupling`` (codec id 20): the Argmax Flow with a
coupling-flow prior that is an exact bijection on the coding grid
(:mod:`amdcompress.models.argmax_coupling.coding`), bits-back chunk by chunk.

``auto`` never picks it (the autoregressive ``argmax`` is the default text
model and codes smaller files); ask for it with ``--model argmax-coupling``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import register
from .text_backend import TextModelBackend


class ArgmaxCouplingBackend(TextModelBackend):
    """Argmax Flow (coupling prior over chunks, binary code, thresholding q) on text."""

    name, codec_id = "argmax-coupling", 20
    description = "learned text model: Argmax Flow with a grid-exact coupling-flow prior, bits-back ANS"
    weights_name = "argmax-coupling-v1"

    def load(self, path: Path, sha256: str):
        """(coder, sha256)."""
        from amdcompress.models.argmax_coupling.coding import load_weights

        return load_weights(path, sha256)

    def encode_symbols(self, loaded, sym: np.ndarray, progress, stats: dict) -> bytes:
        return loaded[0].encode(sym, progress=progress, stats=stats)

    def decode_symbols(self, loaded, stream: bytes, progress, max_symbols: int) -> np.ndarray:
        return loaded[0].decode(stream, progress=progress, max_symbols=max_symbols)


BACKEND = ArgmaxCouplingBackend()
register(BACKEND)
