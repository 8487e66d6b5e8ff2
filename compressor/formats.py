"""Readers and writers: file bytes <-> :class:`Data` (a kind and a uint8 array).

Guarantee: ``to_file_bytes(sniff(raw))`` is

* byte-identical to ``raw`` for bytes/text, PPM/PGM and ``.npy`` batches
  (sniffing checks that our writer reproduces the input exactly and otherwise
  treats the file as plain bytes, which are always byte-identical);
* for PNG, an image with identical pixels, mode and size (PNG metadata such as
  text chunks, gamma or ICC profiles is not kept; palette, 16-bit and animated
  PNGs are treated as plain bytes, so they round-trip byte for byte).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from .codecs.errors import AmdError

BYTES = 0
IMAGE_PNG = 1
IMAGE_PNM = 2
NPY_BATCH = 3

KIND_NAMES = {BYTES: "bytes", IMAGE_PNG: "png", IMAGE_PNM: "pnm", NPY_BATCH: "npy"}
KIND_NDIM = {BYTES: 1, IMAGE_PNG: 3, IMAGE_PNM: 3, NPY_BATCH: 4}

_PNG_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_MODE_OF_CHANNELS = {c: m for m, c in _PNG_MODES.items()}
_PNM_RE = re.compile(rb"\A(P[56])\s+(\d+)\s+(\d+)\s+(\d+)\s")
_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Data:
    """What a model codes: ``array`` is uint8 with the shape the kind implies
    (bytes: (n,); images: (H, W, C); npy batches: (N, H, W, C))."""

    kind: int
    array: np.ndarray

    @property
    def is_image(self) -> bool:
        return self.kind in (IMAGE_PNG, IMAGE_PNM, NPY_BATCH)

    @property
    def dims(self) -> int:
        return int(self.array.size)

    def images(self) -> np.ndarray:
        """The data as a (N, H, W, C) batch (images only)."""
        return self.array if self.kind == NPY_BATCH else self.array[None]


def sniff(raw: bytes) -> Data:
    """Recognise a supported image or batch; anything else is plain bytes."""
    for reader in (_read_png, _read_pnm, _read_npy):
        data = reader(raw)
        if data is not None:
            return data
    return Data(BYTES, np.frombuffer(raw, dtype=np.uint8))


def to_file_bytes(data: Data) -> bytes:
    """Serialize :class:`Data` back to file bytes (see the module guarantee)."""
    a = np.ascontiguousarray(data.array, dtype=np.uint8)
    if data.kind == BYTES:
        return a.tobytes()
    if data.kind == IMAGE_PNG:
        from PIL import Image

        mode = _MODE_OF_CHANNELS[a.shape[2]]
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a, mode=mode)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=9)
        return buf.getvalue()
    if data.kind == IMAGE_PNM:
        h, w, c = a.shape
        magic = b"P5" if c == 1 else b"P6"
        return b"%s\n%d %d\n255\n" % (magic, w, h) + a.tobytes()
    if data.kind == NPY_BATCH:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()
    raise AmdError(f"unknown data kind {data.kind}")


def validate_shape(kind: int, shape: tuple[int, ...]) -> None:
    """Raise :class:`AmdError` unless ``shape`` is a possible shape of ``kind``."""
    if kind not in KIND_NDIM or len(shape) != KIND_NDIM[kind]:
        raise AmdError("corrupt header: bad data kind or shape")
    if kind in (IMAGE_PNG, IMAGE_PNM) and shape[2] not in (_PNG_MODES.values() if kind == IMAGE_PNG else (1, 3)):
        raise AmdError("corrupt header: bad channel count")
    if kind == NPY_BATCH and shape[3] not in (1, 3):
        raise AmdError("corrupt header: bad channel count")
    if kind != BYTES and min(shape) < 1:
        raise AmdError("corrupt header: empty image")
    if int(np.prod(shape, dtype=np.float64)) > 1 << 40:
        raise AmdError("corrupt header: implausible size")


def _read_png(raw: bytes) -> Data | None:
    if not raw.startswith(_PNG_MAGIC):
        return None
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(raw))
        if getattr(img, "n_frames", 1) != 1 or img.mode not in _PNG_MODES:
            return None
        img.load()
        a = np.asarray(img, dtype=np.uint8)
    except Exception:  # not a PNG Pillow can read: keep it as bytes
        return None
    if a.ndim == 2:
        a = a[:, :, None]
    return Data(IMAGE_PNG, np.ascontiguousarray(a))


def _read_pnm(raw: bytes) -> Data | None:
    m = _PNM_RE.match(raw[:64])
    if not m or int(m.group(4)) != 255:
        return None
    w, h = int(m.group(2)), int(m.group(3))
    c = 1 if m.group(1) == b"P5" else 3
    body = raw[m.end() :]
    if w < 1 or h < 1 or len(body) != w * h * c:
        return None
    data = Data(IMAGE_PNM, np.frombuffer(body, dtype=np.uint8).reshape(h, w, c))
    return data if to_file_bytes(data) == raw else None


def _read_npy(raw: bytes) -> Data | None:
    if not raw.startswith(_NPY_MAGIC):
        return None
    try:
        a = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception:
        return None
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] not in (1, 3) or 0 in a.shape:
        return None
    data = Data(NPY_BATCH, np.ascontiguousarray(a))
    return data if to_file_bytes(data) == raw else None
