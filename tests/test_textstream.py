"""The shared out-of-alphabet mechanism of the text models."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amdcompress import AmdError
from amdcompress.codecs import textstream


@given(raw=st.binary(max_size=2000) | st.text(max_size=500).map(lambda s: s.encode("utf-8")))
@settings(max_examples=80, deadline=None)
@pytest.mark.slow
def test_split_join_roundtrip(raw):
    a = np.frombuffer(raw, dtype=np.uint8)
    symbols, esc = textstream.split(a)
    assert symbols.size == sum(b in textstream.ALPHABET for b in raw)
    assert textstream.join(symbols, esc, len(raw)).tobytes() == raw
    stream, esc2 = textstream.unpack(textstream.pack(b"model", esc))
    assert stream == b"model" and esc2 == esc


def test_pure_text8_has_no_escapes():
    symbols, esc = textstream.split(np.frombuffer(b"hello world", dtype=np.uint8))
    assert esc == b"" and symbols.tolist()[:5] == [8, 5, 12, 12, 15]


@given(junk=st.binary(min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
@pytest.mark.slow
def test_corrupt_escapes_raise_or_stay_in_bounds(junk):
    """Raw LZMA2 has no checksum (the container's CRC does that job): a damaged
    escape table must raise AmdError or yield a well-formed array, nothing else."""
    symbols, esc = textstream.split(np.frombuffer(b"Hello, World!", dtype=np.uint8))
    try:
        out = textstream.join(symbols, esc[: len(esc) // 2] + junk, 13)
    except AmdError:
        return
    assert out.shape == (13,)


def test_length_mismatch_raises():
    symbols, esc = textstream.split(np.frombuffer(b"Hello, World!", dtype=np.uint8))
    with pytest.raises(AmdError):
        textstream.join(symbols[:-1], esc, 13)
