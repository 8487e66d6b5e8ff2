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
