"""The ``.amd`` container, format version 1.

Layout (all integers unsigned; ``varint`` = LEB128, 7 bits a byte, low first)::

    offset  size  field
    0       3     magic  b"AMD"
    3       1     format version (1)
    4       1     codec id (stable numbers in compressor/backends.py; never the
                  order of a dict)
    5       4     weights tag: first 4 bytes of the SHA-256 of the model's
                  weights file (zeros for classical codecs)
    9       1     data kind: 0 bytes, 1 PNG image, 2 PPM/PGM image, 3 .npy batch
    10      var   shape: one varint per dimension; the kind fixes how many
                  (bytes: n; images: H, W, C; batches: N, H, W, C)
    ..      var   payload length in bytes (varint); the file must end exactly
                  after the payload
    ..      4     CRC-32 (little-endian) of the original data: the bytes for
                  kind 0, the raw pixels (row-major H, W, C) otherwise
    ..      n     payload: the codec's bytes

For a 32x32 RGB image the framing is 19 bytes. Readers reject a wrong magic, an
unknown version, a shape the kind cannot have, and any length mismatch
(truncated or trailing bytes); the CRC catches a corrupt payload after decoding.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import AmdError
from .formats import KIND_NDIM, validate_shape
from .codecs.varint import read_varint, write_varint

MAGIC = b"AMD"
VERSION = 1


@dataclass(frozen=True)
class Header:
    codec_id: int
    weights_tag: bytes
    kind: int
    shape: tuple[int, ...]
    crc32: int
    payload_length: int


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


_varint = write_varint


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    return read_varint(buf, pos, lambda: AmdError("truncated file (header)"))


def pack(header: Header, payload: bytes) -> bytes:
    """Frame a payload. ``header.payload_length`` is ignored: the real length is written."""
    if len(header.weights_tag) != 4:
        raise ValueError("weights tag must be 4 bytes")
    out = bytearray(MAGIC)
    out += bytes([VERSION, header.codec_id]) + header.weights_tag + bytes([header.kind])
    for d in header.shape:
        out += _varint(int(d))
    out += _varint(len(payload))
    out += struct.pack("<I", header.crc32)
    return bytes(out) + payload


def unpack(blob: bytes) -> tuple[Header, bytes]:
    """Parse and check the framing; return the header and the payload."""
    if len(blob) < 3 or blob[:3] != MAGIC:
        raise AmdError("not an .amd file (bad magic)")
    if len(blob) < 10:
        raise AmdError("truncated file (header)")
    if blob[3] != VERSION:
        raise AmdError(f"unsupported .amd format version {blob[3]} (this amdcompress reads version {VERSION})")
    codec_id, tag, kind = blob[4], bytes(blob[5:9]), blob[9]
    if kind not in KIND_NDIM:
        raise AmdError(f"corrupt header: unknown data kind {kind}")
    pos = 10
    shape = []
    for _ in range(KIND_NDIM[kind]):
        d, pos = _read_varint(blob, pos)
        shape.append(d)
    validate_shape(kind, tuple(shape))
    length, pos = _read_varint(blob, pos)
    if pos + 4 > len(blob):
        raise AmdError("truncated file (header)")
    (crc,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    if len(blob) - pos < length:
        raise AmdError(f"truncated file: payload has {len(blob) - pos} of {length} bytes")
    if len(blob) - pos > length:
        raise AmdError(f"corrupt file: {len(blob) - pos - length} unexpected bytes after the payload")
    return Header(codec_id, tag, kind, tuple(shape), crc, length), bytes(blob[pos:])
