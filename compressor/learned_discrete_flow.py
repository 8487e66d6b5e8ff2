"""Backend ``discrete-flow`` (codec id 19): a Discrete Flow on text.

The 27-symbol text is coded exactly with the flow
(:mod:`amdcompress.models.discrete_flow.coding`: ``z = f(x)`` pushed under the
base, no bits-back); weights checks, escapes, the coding mode (CPU, one thread,
deterministic) and one-line errors come from :class:`.text_backend.TextModelBackend`.
Weights: ``models/weights/discrete-flow-v1.pt`` and its JSON record.

``auto`` never picks it: measured on text8 valid.txt
(``benchmarks/results/discrete_flow.json``) its files are larger than those of
``argmax`` and PPMd, so trying it would only cost time; ask for it with
``--model discrete-flow``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import register
from .text_backend import TextModelBackend


class DiscreteFlowBackend(TextModelBackend):
    """Bipartite Discrete Flow (modular location-scale couplings) over a base
    (LSTM or factorized), exact ANS coding, on text."""

    name, codec_id = "discrete-flow", 19
    description = "learned text model: Discrete Flow (bipartite modular couplings + base), exact ANS"
    weights_name = "discrete-flow-v1"

    def load(self, path: Path, sha256: str):
        """(model, sha256); ValueError if the file does not fit the architecture."""
        from amdcompress.models.discrete_flow.coding import load_weights

        return load_weights(path, sha256)

    def model(self):
        """The checked, loaded model (cached)."""
        return self.loaded()[0]

    def encode_symbols(self, loaded, sym: np.ndarray, progress, stats: dict) -> bytes:
        from amdcompress.models.discrete_flow.coding import encode_symbols

        return encode_symbols(loaded[0], sym, progress=progress, stats=stats)

    def decode_symbols(self, loaded, stream: bytes, progress, max_symbols: int) -> np.ndarray:
        from amdcompress.models.discrete_flow.coding import decode_symbols

        return decode_symbols(loaded[0], stream, progress=progress, max_symbols=max_symbols)


BACKEND = DiscreteFlowBackend()
register(BACKEND)
