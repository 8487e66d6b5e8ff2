"""The PPMd text fallback: codec ``ppmd`` (id 3), PPMd variant I order 16
through pyppmd, tried by ``auto`` on byte input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import amdcompress
from amdcompress import AmdError, backends, container, formats

LICENCES = Path("/usr/share/common-licenses")


def licence_text(limit: int = 100_000) -> bytes:
    """The issue's "100 KB of software licences" (benchmarks/ppmd_bench.py)."""
    files = sorted(p for p in LICENCES.iterdir() if p.is_file() and not p.is_symlink())
    return b"".join(p.read_bytes() for p in files)[:limit]


def test_registered_with_a_stable_id():
    b = backends.by_name("ppmd")
    assert b.codec_id == 3 and backends.by_id(3) is b and not b.learned
    assert "3 ppmd" in backends.__doc__


@pytest.mark.parametrize("raw", [b"", b"x", b"ab", bytes(5000), b"\x01\x00" * 300,
                                 bytes(range(256)) * 40, "naïve café — ünïcödé ".encode() * 50])
def test_round_trips(raw):
    blob = amdcompress.compress(raw, model="ppmd")
    assert amdcompress.decompress(blob) == raw and amdcompress.info(blob).model == "ppmd"


@pytest.mark.parametrize("seed", range(4))
def test_incompressible_input_larger_than_pyppmds_output_buffer(seed):
    """pyppmd 1.3.1 loses data when one encode call outputs more than 32 KiB
    (about 1 in 5 random inputs of 256 KiB); the backend feeds 8 KiB pieces."""
    raw = np.random.default_rng(seed).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    assert amdcompress.decompress(amdcompress.compress(raw, model="ppmd")) == raw


def test_images_are_not_for_ppmd():
    b = backends.by_name("ppmd")
    img = formats.Data(formats.IMAGE_PNM, np.zeros((2, 2, 3), np.uint8))
    assert not b.accepts(img)
    with pytest.raises(AmdError, match="bytes only"):
        b.decode(b"\0" * 10, formats.IMAGE_PNM, (2, 2, 3))


def test_memory_follows_the_input_size():
    m = backends.Ppmd.mem_size
    assert m(0) == m(1000) == 16 << 20 and m(200_000) == 16 << 20 and m(1_000_000) == 64 << 20
    assert m(10**9) == 256 << 20


def test_auto_skips_incompressible_input():
    b = backends.by_name("ppmd")
    noise = formats.Data(formats.BYTES, np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8))
    text = formats.Data(formats.BYTES, np.frombuffer(b"plain text " * 100, np.uint8))
    assert not b.auto_accepts(noise) and b.auto_accepts(text)


def test_damaged_payload_is_an_error_not_wrong_output():
    raw = b"the same sentence, over and over. " * 60
    blob = amdcompress.compress(raw, model="ppmd")
    h, payload = container.unpack(blob)
    for i in range(len(blob) - len(payload), len(blob)):
        b = bytearray(blob)
        b[i] ^= 0x10
        try:
            assert amdcompress.decompress(bytes(b)) == raw
        except AmdError as e:
            assert "\n" not in str(e)


@pytest.mark.skipif(not LICENCES.is_dir(), reason="no /usr/share/common-licenses here")
def test_ppmd_file_is_no_larger_than_raw_ppmd_order_8_plus_the_header():
    """The done-when of the text fallback: on 100 KB of licences the ppmd file
    is at most PPMd order 8 (pyppmd.compress) plus the container header, and
    so is auto (it keeps the smallest file, ppmd among those it tries)."""
    import pyppmd

    raw = licence_text()
    ref = len(pyppmd.compress(raw, max_order=8, mem_size=256 << 20))
    blob = amdcompress.compress(raw, model="ppmd")
    header = amdcompress.info(blob).header_bytes
    assert len(blob) <= ref + header and 8 * len(blob) / len(raw) < 1.45  # order 16: 1.442
    assert len(blob) < len(amdcompress.compress(raw, model="lzma"))
    assert backends.by_name("ppmd").auto_accepts(formats.sniff(raw))


@pytest.mark.slow
@pytest.mark.skipif(not LICENCES.is_dir(), reason="no /usr/share/common-licenses here")
def test_auto_on_the_licence_text():
    """auto itself (it also tries the argmax model on text: about a minute)."""
    import pyppmd

    raw = licence_text()
    blob = amdcompress.compress(raw)
    assert len(blob) <= len(pyppmd.compress(raw, max_order=8, mem_size=256 << 20)) + amdcompress.info(blob).header_bytes
    assert amdcompress.decompress(blob) == raw


def test_pyppmd_is_pinned():
    import re

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert re.search(r'"pyppmd==\d+\.\d+\.\d+"', deps)
    assert os.environ.get("AMDCOMPRESS_SKIP_PIN_CHECK") or __import__("pyppmd").__version__ in deps
