"""Learned-model backends. Importing this module registers them (see
:func:`amdcompress.compressor.backends._load_learned`).

* ``idf`` (codec id 16): Integer Discrete Flow for RGB images and ``.npy``
  batches of RGB images; a batch is one ANS stream. Other channel counts are
  left to the classical backends (``accepts`` says no; ``auto`` picks among
  the rest). Weights: ``models/weights/idf-v3.pt``, checked by full SHA-256.
"""
from __future__ import annotations

import threading

import numpy as np

from .backends import NO_WEIGHTS, register
from .errors import AmdError
from .formats import NPY_BATCH, Data

MAX_PIXELS = 1 << 24  # per image: the flow runs on whole images (memory)


class IdfBackend:
    name, codec_id, learned = "idf", 16, True
    description = "Integer Discrete Flow (3 levels, logistic-mixture priors): RGB images and batches"
    weights_name = "idf-v3"

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()

    # -- weights --------------------------------------------------------------
    def available(self) -> bool:
        from amdcompress.models import registry

        return registry.available(self.weights_name)

    def weights_tag(self) -> bytes:
        from amdcompress.models import registry

        if not registry.available(self.weights_name):
            return NO_WEIGHTS
        return registry.weights_tag(self.weights_name)

    def model(self):
        """The checked, loaded model (cached)."""
        with self._lock:
            if self._model is None:
                from amdcompress.models import registry
                from amdcompress.models.idf import IDF

                if not registry.available(self.weights_name):
                    raise AmdError(f"model 'idf' is not installed (weights {self.weights_name} missing)")
                obj = registry.load(self.weights_name)
                model = IDF(obj["config"])
                try:
                    model.load_state_dict(obj["state_dict"])
                except RuntimeError as e:
                    raise AmdError(f"weights {self.weights_name} do not fit the IDF architecture ({e})") from None
                model.eval()
                for p in model.parameters():
                    p.requires_grad_(False)
                self._model = model
            return self._model

    # -- backend interface ----------------------------------------------------
    def accepts(self, data: Data) -> bool:
        if not data.is_image:
            return False
        a = data.images()
        return a.shape[3] == 3 and a.shape[1] * a.shape[2] <= MAX_PIXELS and self.available()

    def encode(self, data: Data, progress=None, checksum: int | None = None) -> bytes:
        from amdcompress.models import idf_coding

        if not self.accepts(data):
            raise AmdError("idf codes RGB images only")
        return idf_coding.encode(self.model(), data.images(), progress, checksum=checksum)

    def encode_checked(self, data: Data, crc: int, progress=None) -> bytes:
        """Like :meth:`encode`, with ``crc`` carried inside the ANS stream
        (:func:`~amdcompress.models.idf_coding.encode` with a checksum)."""
        return self.encode(data, progress, checksum=crc)

    @staticmethod
    def _batch_shape(kind: int, shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = tuple(int(d) for d in shape)
        batch = shape if kind == NPY_BATCH else (1,) + shape
        if len(batch) != 4 or batch[3] != 3 or batch[1] * batch[2] > MAX_PIXELS:
            raise AmdError(f"corrupt header: idf cannot have coded shape {shape}")
        return shape, batch

    def decode(self, payload: bytes, kind: int, shape, progress=None) -> np.ndarray:
        from amdcompress.models import idf_coding

        shape, batch = self._batch_shape(kind, shape)
        return idf_coding.decode(self.model(), payload, batch, progress).reshape(shape)

    def decode_checked(self, payload: bytes, kind: int, shape, progress=None) -> tuple[np.ndarray, int]:
        """Inverse of :meth:`encode_checked`: the array and the CRC the stream carried."""
        from amdcompress.models import idf_coding

        shape, batch = self._batch_shape(kind, shape)
        out, crc = idf_coding.decode_checked(self.model(), payload, batch, progress)
        return out.reshape(shape), crc


register(IdfBackend())
