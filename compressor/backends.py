"""Codec backends: what turns :class:`~.formats.Data` into a payload and back.

Every backend has a stable one-byte id written into the container. Ids are
assigned here by hand and never reused:

    0 store   1 lzma   2 jxl          (classical, always available)
    16 idf   17 diffusion   18 argmax   19 discrete-flow   20 argmax-coupling
    21 absorbing-diffusion   (learned models)

Learned models are the entries of :mod:`amdcompress.models.registry`, each
served by one :class:`~.learned.LearnedBackend`; the classical ones guarantee
that every input kind round-trips even with no model installed.
"""
from __future__ import annotations

import lzma
from typing import Callable, Protocol

import numpy as np

from .codecs.errors import AmdError
from .formats import Data

NO_WEIGHTS = b"\x00\x00\x00\x00"


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...


class Backend(Protocol):
    """The interface every codec backend implements.

    ``decode(encode(d), d.kind, d.array.shape)`` returns ``d.array`` exactly,
    or raises :class:`AmdError`.
    """

    name: str
    codec_id: int
    learned: bool
    description: str
    options: tuple[str, ...]      # keyword options ``encode`` takes (e.g. "steps")
    checksum_in_payload: bool     # encode takes ``checksum=`` and decode_checked hands it back;
                                  # the container then leaves its CRC field out

    def weights_tag(self) -> bytes: ...
    def check_weights(self, tag: bytes) -> None: ...   # AmdError unless a file's tag can be decoded here
    def accepts(self, data: Data) -> bool: ...
    def auto_accepts(self, data: Data) -> bool: ...    # what ``--model auto`` tries (a subset of accepts)
    def encode(self, data: Data, progress: Callable[[int], Progress] | None = None, **options) -> bytes: ...
    def decode(self, payload: bytes, kind: int, shape: tuple[int, ...],
               progress: Callable[[int], Progress] | None = None, weights_tag: bytes | None = None) -> np.ndarray: ...
    def details(self, payload: bytes, shape: tuple[int, ...]) -> dict: ...  # facts for ``info``


class Classical:
    """What the classical backends share: no weights, no options, no checksum in the payload."""

    learned = False
    options: tuple[str, ...] = ()
    checksum_in_payload = False

    def weights_tag(self) -> bytes:
        return NO_WEIGHTS

    def check_weights(self, tag: bytes) -> None:
        if any(tag):
            raise AmdError(f"corrupt header: codec {self.name!r} has no weights (tag {tag.hex()})")

    def accepts(self, data: Data) -> bool:
        return True

    def auto_accepts(self, data: Data) -> bool:
        return self.accepts(data)

    def details(self, payload: bytes, shape) -> dict:
        return {}


class Store(Classical):
    """The raw bytes: the floor that no input can exceed (plus the header)."""

    name, codec_id = "store", 0
    description = "no compression (raw bytes)"

    def encode(self, data: Data, progress=None) -> bytes:
        return np.ascontiguousarray(data.array).tobytes()

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        if len(payload) != int(np.prod(shape)):
            raise AmdError("corrupt payload: wrong length")
        return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


class Lzma(Classical):
    """Raw LZMA2 stream (xz -9e without xz's own framing: the container frames it)."""

    name, codec_id = "lzma", 1
    description = "classical fallback for any data: LZMA2 at preset 9e"
    _FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

    def encode(self, data: Data, progress=None) -> bytes:
        return lzma.compress(np.ascontiguousarray(data.array).tobytes(), format=lzma.FORMAT_RAW, filters=self._FILTERS)

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        n = int(np.prod(shape))
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=self._FILTERS)
            raw = d.decompress(payload, max_length=n)
        except lzma.LZMAError as e:
            raise AmdError(f"corrupt payload ({e})") from None
        if len(raw) != n:
            raise AmdError("corrupt payload: wrong decoded length")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


class JpegXl(Classical):
    """JPEG-XL lossless (libjxl through imagecodecs). A batch is coded as one
    strip image (the images stacked vertically)."""

    name, codec_id = "jxl", 2
    description = "classical fallback for images: JPEG-XL lossless (effort 9; 10 for batches)"

    def accepts(self, data: Data) -> bool:
        if not data.is_image:
            return False
        try:
            import imagecodecs

            return bool(imagecodecs.JPEGXL.available)
        except ImportError:
            return False

    @staticmethod
    def _strip(a: np.ndarray, kind_is_batch: bool) -> np.ndarray:
        if kind_is_batch:
            n, h, w, c = a.shape
            a = a.reshape(n * h, w, c)
        return a[:, :, 0] if a.shape[2] == 1 else a

    def encode(self, data: Data, progress=None) -> bytes:
        import imagecodecs

        batch = data.array.ndim == 4
        img = self._strip(np.ascontiguousarray(data.array), batch)
        # measured on CIFAR-10 (benchmarks/results/report.md): effort 10 wins on
        # strips, 9 on single small images; 7 keeps huge inputs tolerable
        effort = 10 if batch and img.size <= 2_000_000 else 9 if img.size <= 4_000_000 else 7
        out = imagecodecs.jpegxl_encode(img, lossless=True, effort=effort)
        # libjxl is a third-party encoder: check it before trusting it.
        if not np.array_equal(np.asarray(imagecodecs.jpegxl_decode(out)).reshape(data.array.shape), data.array):
            raise AmdError("JPEG-XL round trip failed")
        return bytes(out)

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        import imagecodecs

        try:
            img = np.asarray(imagecodecs.jpegxl_decode(payload))
        except Exception as e:
            raise AmdError(f"corrupt payload (JPEG-XL: {e})") from None
        if img.dtype != np.uint8 or img.size != int(np.prod(shape)):
            raise AmdError("corrupt payload: decoded image has the wrong size")
        return img.reshape(shape)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add a backend; its name and id must be new."""
    for b in _REGISTRY.values():
        if b.codec_id == backend.codec_id or b.name == backend.name:
            raise ValueError(f"backend {backend.name!r} (id {backend.codec_id}) clashes with {b.name!r}")
    _REGISTRY[backend.name] = backend


for _b in (Store(), Lzma(), JpegXl()):
    register(_b)


def _load_learned() -> None:
    """One backend per registry entry (imports no torch until a model is used)."""
    from amdcompress.models import registry

    from .learned import LearnedBackend

    for entry in registry.MODELS.values():
        register(LearnedBackend(entry))


_loaded = False


def all_backends() -> list[Backend]:
    global _loaded
    if not _loaded:
        _loaded = True
        _load_learned()
    return sorted(_REGISTRY.values(), key=lambda b: b.codec_id)


def by_name(name: str) -> Backend:
    for b in all_backends():
        if b.name == name:
            return b
    names = ", ".join(b.name for b in all_backends())
    raise AmdError(f"unknown model {name!r} (available: auto, {names})")


def by_id(codec_id: int) -> Backend:
    for b in all_backends():
        if b.codec_id == codec_id:
            return b
    raise AmdError(f"file needs codec id {codec_id}, which this amdcompress does not have "
                   "(made by a newer version, or its model is not installed)")

