"""The ``.amd`` container, format version 3 (versions 1 and 2 still read).

Layout (all integers unsigned; ``varint`` = LEB128, 7 bits a byte, low first,
shortest form only)::

    offset  size  field
    0       3     magic  b"AMD"
    3       1     format version (3)
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
    ..      4     CRC-32 (little-endian), see below; absent when flag bit 4 is set
    ..      n     payload: the codec's bytes

The checksum is the CRC-32 of the original data (the bytes for kind 0, the raw
pixels, row-major H, W, C, otherwise) *followed by the header bytes from the
magic to the end of the shape* (offsets 0 .. before the payload length)::

    crc = zlib.crc32(header[0 : end of shape], zlib.crc32(data))

So every byte that decides the output is checked before any output is
written: the data, and the version, codec id, flags (data kind, where the
checksum is), weights tag and shape that say how to decode it and how to
write it out. A file whose kind and shape are rewritten together (same
element count) decodes to the same array but fails the checksum. The payload
length is not covered and needs not be: with shortest-form varints, the
length is the only one that makes the file end exactly after the payload, and
a payload that changes changes what it decodes to (the data part of the CRC)
or fails to decode. The CRC field itself, if forged, fails the comparison.

With flag bit 4 the codec carries the same CRC-32 inside its payload (an ANS
stream anchored on it, :meth:`amdcompress.codecs.Message.anchored`; the IDF's
stream 2 anchors each of its lanes on it) and hands it back on decoding; the check is the same, the file ~3 bytes smaller. For a
32x32 RGB image the framing is 17 bytes, 13 with the checksum in the payload.
The tag tells a file made with other weights apart before decoding; the
checksum catches the rare tag collision (or any other mismatch) after.

Versions 1 and 2 (read only) have the same fields but a checksum of the data
alone, so a forged header that stays self-consistent is not caught
(:attr:`Header.header_checked` is False and ``amdcompress info`` says so).
Version 2 is laid out as version 3. Version 1 differs in bytes 5-9: a 4-byte
weights tag at 5, then the data kind at 9, and the CRC field is always there
(19 bytes for 32x32 RGB).

Readers reject a wrong magic, an unknown version or flag, a shape the kind
cannot have, a varint that is not in its shortest form, and any length
mismatch (truncated or trailing bytes); the checksum catches the rest after
decoding, before anything is written.
"""
from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass

from .codecs.errors import AmdError
from .formats import KIND_NDIM, validate_shape
from .codecs.message import CANONICAL
from .codecs.varint import read_varint, write_varint

MAGIC = b"AMD"
VERSION = 3
READS = (1, 2, 3)
HEADER_CHECKED_FROM = 3  # the first version whose checksum covers the header
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
    version: int = VERSION
    covered: bytes = b""       # (read files) the header bytes the checksum covers; empty before version 3

    @property
    def checksum_in_payload(self) -> bool:
        return self.crc32 is None

    @property
    def header_checked(self) -> bool:
        """Whether the checksum covers the header fields (format version 3 on)."""
        return self.version >= HEADER_CHECKED_FROM


def crc32(data: bytes, start: int = 0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def covered_bytes(codec_id: int, weights_tag: bytes, kind: int, shape, checksum_in_payload: bool) -> bytes:
    """The header bytes a version-3 checksum covers: magic to the end of the shape."""
    if len(weights_tag) < TAG_BYTES:
        raise ValueError(f"weights tag must have at least {TAG_BYTES} bytes")
    if kind not in KIND_NDIM:
        raise ValueError(f"unknown data kind {kind}")
    if not 0 <= codec_id <= 255:
        raise ValueError(f"codec id {codec_id} is not a byte")
    flags = kind | (_CHECKSUM_IN_PAYLOAD if checksum_in_payload else 0)
    out = bytearray(MAGIC)
    out += bytes([VERSION, codec_id, flags]) + bytes(weights_tag[:TAG_BYTES])
    for d in shape:
        out += write_varint(int(d))
    return bytes(out)


def checksum(data_crc: int, covered: bytes) -> int:
    """The file's checksum from the CRC-32 of the data and the covered header
    bytes (``b""`` for versions 1 and 2: the data alone)."""
    return crc32(covered, data_crc)


_varint = write_varint


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, end = read_varint(buf, pos, lambda: AmdError("truncated file (header)"))
    if end - pos > 1 and buf[end - 1] == 0:
        raise AmdError("corrupt header: a number is not in its shortest form")
    return value, end


def pack(header: Header, payload: bytes) -> bytes:
    """Frame a payload (format version 3). ``header.payload_length``,
    ``version`` and ``covered`` are ignored: the real length is written; the
    weights tag keeps its first :data:`TAG_BYTES` bytes; ``crc32=None`` sets
    the checksum-in-payload flag. ``header.crc32`` must be the version-3
    checksum (:func:`checksum` of the data's CRC and :func:`covered_bytes`)."""
    out = bytearray(covered_bytes(header.codec_id, header.weights_tag, header.kind, header.shape,
                                  header.checksum_in_payload))
    out += _varint(len(payload))
    if not header.checksum_in_payload:
        out += struct.pack("<I", header.crc32)
    return bytes(out) + payload


def unpack(blob: bytes) -> tuple[Header, bytes]:
    """Parse and check the framing (versions 1 to 3); return the header and
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
    covered = bytes(blob[:pos]) if version >= HEADER_CHECKED_FROM else b""
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
    return Header(codec_id, tag, kind, tuple(shape), crc, length, version, covered), bytes(blob[pos:])


# -- what decoders may accept -----------------------------------------------------
@contextlib.contextmanager
def reading(version: int):
    """Decode inside this to tell the codecs which format version the file has
    (:func:`amdcompress.codecs.message.strict_streams`)."""
    token = CANONICAL.set(version >= HEADER_CHECKED_FROM)
    try:
        yield
    finally:
        CANONICAL.reset(token)
