"""Text for categorical models: bytes <-> symbols of the text8 alphabet plus escapes.

The learned text models see only the 27 symbols ``' '`` (0) and ``a``-``z``
(1-26). Every other byte (capitals, digits, punctuation, newlines, UTF-8) is
an *escape*: it is removed from the model's stream and stored separately as
(gap, byte) pairs compressed with LZMA2, so any byte string round-trips through
any text model and the model never has to fail. Shared by every text model.
"""
from __future__ import annotations

import lzma

import numpy as np

from .errors import AmdError
from .varint import read_varint, write_varint

ALPHABET = b" abcdefghijklmnopqrstuvwxyz"
K = len(ALPHABET)
_LUT = np.full(256, -1, dtype=np.int16)
_LUT[np.frombuffer(ALPHABET, dtype=np.uint8)] = np.arange(K)
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]




def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    return read_varint(buf, pos, lambda: AmdError("corrupt payload: bad escape table"))


def _read_varints(buf: bytes, pos: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` varints from ``buf[pos:]`` at once (int64), and the position after them."""
    if not count:
        return np.zeros(0, dtype=np.int64), pos
    b = np.frombuffer(buf, dtype=np.uint8, offset=pos)
    ends = np.flatnonzero(b < 0x80)[:count]
    if len(ends) < count:
        raise AmdError("corrupt payload: bad escape table")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 6:  # a gap is below 2**42
        raise AmdError("corrupt payload: bad escape table")
    out = np.zeros(count, dtype=np.int64)
    for j in range(int(lengths.max())):
        live = np.flatnonzero(lengths > j)
        out[live] |= (b[starts[live] + j].astype(np.int64) & 0x7F) << (7 * j)
    return out, pos + int(ends[-1]) + 1


def escape_fraction(raw: np.ndarray) -> float:
    """Share of bytes outside the alphabet (0.0 for pure text8)."""
    return float((_LUT[raw] < 0).mean()) if raw.size else 0.0


def split(raw: np.ndarray) -> tuple[np.ndarray, bytes]:
    """uint8 bytes -> (symbols in 0..26, escape blob). ``join`` inverts it."""
    codes = _LUT[np.asarray(raw, dtype=np.uint8)]
    esc = np.flatnonzero(codes < 0)
    symbols = codes[codes >= 0].astype(np.int64)
    if esc.size == 0:
        return symbols, b""
    gaps = np.diff(esc, prepend=-1) - 1
    table = bytearray(write_varint(len(esc)))
    for g in gaps.tolist():
        table += write_varint(g)
    table += raw[esc].tobytes()
    return symbols, lzma.compress(bytes(table), format=lzma.FORMAT_RAW, filters=_FILTERS)


def join(symbols: np.ndarray, escapes: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`split` for an original of ``n`` bytes. The counts are
    checked against ``n`` before anything of size ``n`` is allocated."""
    symbols = np.asarray(symbols, dtype=np.int64)
    count, where, values = 0, None, b""
    if escapes:
        try:
            table = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS).decompress(escapes, max_length=12 * n + 16)
        except lzma.LZMAError:
            raise AmdError("corrupt payload: bad escape table") from None
        count, pos = _read_varint(table, 0)
        if count > n or count + symbols.size != n:
            raise AmdError("corrupt payload: bad escape table")
        gaps, pos = _read_varints(table, pos, count)
        values = table[pos : pos + count]
        where = np.cumsum(gaps + 1) - 1
        if len(values) != count or (count and where[-1] >= n):
            raise AmdError("corrupt payload: bad escape table")
    if symbols.size + count != n or (symbols.size and (symbols.min() < 0 or symbols.max() >= K)):
        raise AmdError("corrupt payload: text length mismatch")
    out = np.empty(n, dtype=np.uint8)
    mask = np.ones(n, dtype=bool)
    if count:
        out[where] = np.frombuffer(values, dtype=np.uint8)
        mask[where] = False
    if symbols.size != int(mask.sum()):
        raise AmdError("corrupt payload: text length mismatch")
    out[mask] = np.frombuffer(ALPHABET, dtype=np.uint8)[symbols]
    return out


def escape_count(escapes: bytes, n: int) -> int:
    """How many bytes of an ``n``-byte original an escape blob holds."""
    if not escapes:
        return 0
    try:
        table = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS).decompress(escapes, max_length=16)
    except lzma.LZMAError:
        raise AmdError("corrupt payload: bad escape table") from None
    count = _read_varint(table, 0)[0]
    if count > n:
        raise AmdError("corrupt payload: bad escape table")
    return count


def pack(model_stream: bytes, escapes: bytes) -> bytes:
    """A text model's payload: varint(len(model_stream)) + model_stream + escapes."""
    return write_varint(len(model_stream)) + model_stream + escapes


def unpack(payload: bytes) -> tuple[bytes, bytes]:
    n, pos = _read_varint(payload, 0)
    if pos + n > len(payload):
        raise AmdError("corrupt payload: truncated model stream")
    return payload[pos : pos + n], payload[pos + n :]
