"""LEB128 varints (7 bits a byte, low group first): the one implementation every
stream header in amdcompress uses."""
from __future__ import annotations

from typing import Callable


def write_varint(n: int) -> bytes:
    """Non-negative ``n`` as a varint."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int, error: Callable[[], Exception]) -> tuple[int, int]:
    """(value, next position); raises ``error()`` on a truncated or over-long (> 63 bits) varint."""
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 56:
            raise error()
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


MAX_SYMBOLS = 1 << 40  # no stream holds more symbols than this


def write_head(version: int, *fields: int) -> bytes:
    """The head of a model stream: the version byte, then each field as a varint."""
    return bytes([version]) + b"".join(write_varint(int(f)) for f in fields)


def read_head(stream: bytes, version: int, fields: int, what: str,
              max_symbols: int | None = None, empty_is_head: bool = False) -> tuple[list[int], int]:
    """Read a :func:`write_head` head: ``(fields, position after the head)``.

    The first field is the stream's symbol count. Raises
    :class:`~.message.CorruptStreamError` naming ``what`` (e.g. "argmax") on a
    wrong version byte, a truncated head, or a symbol count above
    ``max_symbols`` (the container's data size) or :data:`MAX_SYMBOLS`; with
    ``empty_is_head``, on bytes after the head of a stream of no symbols."""
    from .message import CorruptStreamError

    if not stream or stream[0] != version:
        raise CorruptStreamError(f"unknown {what} stream version")
    out, pos = [], 1
    for _ in range(fields):
        v, pos = read_varint(stream, pos, lambda: CorruptStreamError(f"truncated {what} stream header"))
        out.append(v)
    n = out[0] if out else 0
    if n > MAX_SYMBOLS or (max_symbols is not None and n > max_symbols):
        raise CorruptStreamError(f"{what} stream: symbol count exceeds the data size")
    if empty_is_head and n == 0 and pos != len(stream):
        raise CorruptStreamError(f"{what} stream: trailing bytes after an empty stream")
    return out, pos
