"""The ``.amd`` container, format version 2 (version 1 files still read).

Layout (all integers unsigned; ``varint`` = LEB128, 7 bits a byte, low first)::

    offset  size  field
    0       3     magic  b"AMD"
    3       1     format version (2)
    4       1     codec id (stable numbers in compressor/backends.py; never the
                  order of a dict)
    5       1     flags: bits 0-3 data kind (0 bytes, 1 PNG image, 2 PPM/PGM
                  image, 3 .npy batch); bit 4 set: the checksum rides in the
                  payload (no CRC field); bits 5-7 zero
    6       2     weights tag: first 2 bytes of the SHA-256 of the model's
                  weights file (zeros for classical codecs)
    8       var   shape: one varint per dimension; the kind fixes how many
                  (bytes: n; images: H, W, C; batches: N, H, W, C)
    ..      var   payload length in bytes (varint); the file must end exactly
                  after the payload
    ..      4     CRC-32 (little-endian) of the original data: the bytes for
                  kind 0, the raw pixels (row-major H, W, C) otherwise; absent
                  when flag bit 4 is set
    ..      n     payload: the codec's bytes

With flag bit 4 the codec carries the same CRC-32 inside its payload (an ANS
stream anchored on it, :meth:`amdcompress.codecs.Message.anchored`) and hands
it back on decoding; the check is the same, the file ~3 bytes smaller. For a
32x32 RGB image the framing is 17 bytes, 13 with the checksum in the payload.
The tag tells a file made with other weights apart before decoding; the
checksum catches the rare tag collision (or any other mismatch) after.

Version 1 (read only) differs in bytes 5-9: a 4-byte weights tag at 5, then the
data kind at 9, and the CRC field is always there (19 bytes for 32x32 RGB).

Readers reject a wrong magic, an unknown version or flag, a shape the kind
cannot have, and any length mismatch (truncated or trailing bytes); the
checksum catches a corrupt payload after decoding.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .codecs.errors import AmdError
from .formats import KIND_NDIM, validate_shape
from .codecs.varint import read_varint, write_varint

MAGIC = b"AMD"
VERSION = 2
READS = (1, 2)
TAG_BYTES = 2
_KIND_MASK, _CHECKSUM_IN_PAYLOAD = 0x0F, 0x10


@dataclass(frozen=True)
class Header:
    codec_id: int
    weights_tag: bytes
    kind: int
    shape: tuple[int, ...]
    crc32: int | None          # None: the payload carries the checksum
    payload_length: int

    @property
    def checksum_in_payload(self) -> bool:
        return self.crc32 is None


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


_varint = write_varint


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    return read_varint(buf, pos, lambda: AmdError("truncated file (header)"))


def pack(header: Header, payload: bytes) -> bytes:
    """Frame a payload (format version 2). ``header.payload_length`` is ignored:
    the real length is written; the weights tag keeps its first
    :data:`TAG_BYTES` bytes; ``crc32=None`` sets the checksum-in-payload flag."""
    if len(header.weights_tag) < TAG_BYTES:
        raise ValueError(f"weights tag must have at least {TAG_BYTES} bytes")
    if header.kind not in KIND_NDIM:
        raise ValueError(f"unknown data kind {header.kind}")
    flags = header.kind | (_CHECKSUM_IN_PAYLOAD if header.checksum_in_payload else 0)
    out = bytearray(MAGIC)
    out += bytes([VERSION, header.codec_id, flags]) + header.weights_tag[:TAG_BYTES]
    for d in header.shape:
        out += _varint(int(d))
    out += _varint(len(payload))
    if not header.checksum_in_payload:
        out += struct.pack("<I", header.crc32)
    return bytes(out) + payload


def unpack(blob: bytes) -> tuple[Header, bytes]:
    """Parse and check the framing (versions 1 and 2); return the header and
    the payload. Raises AmdError with a one-line reason."""
    if len(blob) < 3 or blob[:3] != MAGIC:
        raise AmdError("not an .amd file (bad magic)")
    if len(blob) < 4:
        raise AmdError("truncated file (header)")
    version = blob[3]
    if version not in READS:
        raise AmdError(f"unsupported .amd format version {version} (this amdcompress reads versions "
                       f"{', '.join(map(str, READS))})")
    if version == 1:
        if len(blob) < 10:
            raise AmdError("truncated file (header)")
        codec_id, tag, kind, in_payload, pos = blob[4], bytes(blob[5:9]), blob[9], False, 10
    else:
        if len(blob) < 8:
            raise AmdError("truncated file (header)")
        codec_id, flags, tag, pos = blob[4], blob[5], bytes(blob[6:8]), 8
        if flags & ~(_KIND_MASK | _CHECKSUM_IN_PAYLOAD):
            raise AmdError(f"corrupt header: unknown flags {flags:#04x}")
        kind, in_payload = flags & _KIND_MASK, bool(flags & _CHECKSUM_IN_PAYLOAD)
    if kind not in KIND_NDIM:
        raise AmdError(f"corrupt header: unknown data kind {kind}")
    shape = []
    for _ in range(KIND_NDIM[kind]):
        d, pos = _read_varint(blob, pos)
        shape.append(d)
    validate_shape(kind, tuple(shape))
    length, pos = _read_varint(blob, pos)
    crc = None
    if not in_payload:
        if pos + 4 > len(blob):
            raise AmdError("truncated file (header)")
        (crc,) = struct.unpack_from("<I", blob, pos)
        pos += 4
    if len(blob) - pos < length:
        raise AmdError(f"truncated file: payload has {len(blob) - pos} of {length} bytes")
    if len(blob) - pos > length:
        raise AmdError(f"corrupt file: {len(blob) - pos - length} unexpected bytes after the payload")
    return Header(codec_id, tag, kind, tuple(shape), crc, length), bytes(blob[pos:])
