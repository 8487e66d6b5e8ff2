"""The .amd container and the public API: framing, round trips of every input
kind, and a fuzzed decoder that never returns wrong data."""
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import amdcompress
from amdcompress import AmdError, container, formats
from amdcompress.models.datasets import shared_data_dir

DATA = shared_data_dir()


def png_bytes(a: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cifar():
    return np.load(DATA / "cifar10" / "test.npy")


@pytest.fixture(scope="module")
def text8():
    return (DATA / "text8" / "valid.txt").read_bytes()


def test_header_roundtrip_and_compact_framing():
    h = container.Header(2, b"\x01\x02\x03\x04", formats.IMAGE_PNG, (32, 32, 3), 0xDEADBEEF, 0)
    payload = b"p" * 1500  # a 32x32 image's payload: its length is a 2-byte varint
    blob = container.pack(h, payload)
    h2, p = container.unpack(blob)
    assert p == payload and h2.shape == (32, 32, 3) and h2.crc32 == 0xDEADBEEF and h2.codec_id == 2
    assert h2.weights_tag == b"\x01\x02" and not h2.checksum_in_payload
    assert len(blob) - len(payload) == 17  # magic 3, version, codec, flags, tag 2, shape 3, length, CRC 4
    lean = container.pack(container.Header(16, b"\x01\x02\x03\x04", formats.IMAGE_PNG, (32, 32, 3), None, 0), payload)
    h3, p3 = container.unpack(lean)
    assert p3 == payload and h3.checksum_in_payload and h3.crc32 is None and h3.kind == formats.IMAGE_PNG
    assert len(lean) == len(blob) - 4


def _data_crc(raw: bytes) -> int:
    return container.crc32(np.ascontiguousarray(formats.sniff(raw).array).tobytes())


def _version1(blob: bytes, raw: bytes) -> bytes:
    """The same file in format version 1 (4-byte tag, kind byte, CRC of the data always)."""
    h, payload = container.unpack(blob)
    assert h.crc32 is not None
    out = bytearray(b"AMD\x01") + bytes([h.codec_id]) + h.weights_tag.ljust(4, b"\0") + bytes([h.kind])
    for d in h.shape + (len(payload),):
        out += container.write_varint(d)
    return bytes(out) + _data_crc(raw).to_bytes(4, "little") + payload


def _version2(blob: bytes, raw: bytes) -> bytes:
    """The same file in format version 2 (version 3's layout, the CRC of the data alone)."""
    h, payload = container.unpack(blob)
    assert h.crc32 is not None
    v3 = bytearray(blob)
    v3[3] = 2
    crc_at = len(blob) - len(payload) - 4
    v3[crc_at : crc_at + 4] = _data_crc(raw).to_bytes(4, "little")
    return bytes(v3)


def test_version_1_and_2_files_still_decode(cifar):
    for raw, model in [(b"version one " * 40, "lzma"), (png_bytes(cifar[0], "RGB"), "jxl"), (b"", "store"),
                       (b"and ppmd " * 30, "ppmd")]:
        new = amdcompress.compress(raw, model=model)
        for old in (_version1(new, raw), _version2(new, raw)):
            assert amdcompress.decompress(old) == amdcompress.decompress(new)
            i = amdcompress.info(old)
            assert i.header_bytes == len(old) - len(container.unpack(old)[1])
            assert i.format_version == old[3] and not i.header_checked and amdcompress.info(new).header_checked


def test_older_versions_state_their_weaker_guarantee(tmp_path, capsys):
    from amdcompress.cli import main

    raw = b"older " * 50
    (tmp_path / "new.amd").write_bytes(amdcompress.compress(raw, model="lzma"))
    (tmp_path / "old.amd").write_bytes(_version2(amdcompress.compress(raw, model="lzma"), raw))
    assert main(["info", str(tmp_path / "old.amd")]) == 0
    assert "format:      2 (older format: the checksum covers the data only" in capsys.readouterr().out
    assert main(["info", "--json", str(tmp_path / "new.amd")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format_version"] == 3 and d["header_checked"] is True


def test_checksum_covers_the_header():
    """Version 3: the CRC is that of the data followed by the header bytes from
    the magic to the end of the shape, so kind and shape rewritten together
    (same element count) no longer decode to a different file."""
    raw = bytes(range(48)) * 2  # 96 bytes = a 4x8x3 image's worth
    blob = amdcompress.compress(raw, model="store")
    h, payload = container.unpack(blob)
    covered = blob[: 8 + 1]  # magic .. shape (one 1-byte varint)
    assert h.crc32 == container.crc32(covered, container.crc32(raw)) and h.covered == covered
    forged = bytearray(blob[:5]) + bytes([formats.IMAGE_PNM]) + blob[6:8] + bytes([4, 8, 3]) + blob[9:]
    assert container.unpack(bytes(forged))[0].shape == (4, 8, 3)
    with pytest.raises(AmdError, match="checksum"):
        amdcompress.decompress(bytes(forged))
    old = _version2(blob, raw)  # the same forgery of a version-2 file: the weaker guarantee
    forged2 = bytearray(old[:5]) + bytes([formats.IMAGE_PNM]) + old[6:8] + bytes([4, 8, 3]) + old[9:]
    assert amdcompress.decompress(bytes(forged2)).startswith(b"P6\n8 4\n255\n")


def test_non_shortest_varints_are_refused():
    blob = amdcompress.compress(b"abc" * 50, model="lzma")
    padded = blob[:8] + bytes([blob[8] | 0x80, 0x00]) + blob[9:]
    with pytest.raises(AmdError, match="shortest form"):
        amdcompress.decompress(padded)


def test_framing_of_a_32x32_image_stays_13_bytes(cifar):
    blob = amdcompress.compress(png_bytes(cifar[0], "RGB"), model="idf")
    assert amdcompress.info(blob).header_bytes == 13


def test_unknown_flags_and_misplaced_checksum_flag_are_clear():
    blob = bytearray(amdcompress.compress(b"abc" * 50, model="lzma"))
    blob[5] |= 0x40
    with pytest.raises(AmdError, match="unknown flags"):
        amdcompress.decompress(bytes(blob))
    h, payload = container.unpack(amdcompress.compress(b"abc" * 50, model="lzma"))
    moved = container.pack(container.Header(h.codec_id, h.weights_tag, h.kind, h.shape, None, 0), payload)
    with pytest.raises(AmdError, match="does not carry checksums"):
        amdcompress.decompress(moved)


@pytest.mark.parametrize("model", ["auto", "store", "lzma"])
@pytest.mark.slow
def test_text_roundtrip(text8, model):
    raw = text8[:20000]
    blob = amdcompress.compress(raw, model=model)
    assert amdcompress.decompress(blob) == raw
    if model == "auto":
        assert len(blob) < len(raw) // 2


@given(raw=st.binary(max_size=3000))
@settings(max_examples=60, deadline=None)
def test_arbitrary_bytes_roundtrip(raw):
    assert amdcompress.decompress(amdcompress.compress(raw)) == raw


def test_empty_input_roundtrip():
    assert amdcompress.decompress(amdcompress.compress(b"")) == b""


@pytest.mark.parametrize("mode,shape", [("RGB", (23, 37, 3)), ("L", (23, 37)), ("RGBA", (5, 9, 4)),
                                        ("LA", (4, 3, 2)), ("RGB", (1, 1, 3)), ("L", (200, 1))])
def test_png_roundtrip_pixels_mode_size(mode, shape):
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 64, shape) * 3).astype(np.uint8)
    out = amdcompress.decompress(amdcompress.compress(png_bytes(a, mode)))
    img = Image.open(io.BytesIO(out))
    assert img.mode == mode and img.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(img), a)


def test_real_cifar_png_roundtrip(cifar):
    for a in cifar[:5]:
        blob = amdcompress.compress(png_bytes(a, "RGB"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(amdcompress.decompress(blob)))), a)
        assert amdcompress.info(blob).header_bytes <= 17


def test_palette_png_roundtrips_as_bytes():
    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    blob = amdcompress.compress(buf.getvalue())
    assert amdcompress.info(blob).kind == "bytes"
    assert amdcompress.decompress(blob) == buf.getvalue()


@pytest.mark.parametrize("c", [1, 3])
def test_pnm_byte_identical(c):
    rng = np.random.default_rng(c)
    a = rng.integers(0, 256, (7, 11, c), dtype=np.uint8)
    raw = (b"P5" if c == 1 else b"P6") + b"\n11 7\n255\n" + a.tobytes()
    blob = amdcompress.compress(raw)
    assert amdcompress.info(blob).kind == "pnm"
    assert amdcompress.decompress(blob) == raw


def test_npy_batch_byte_identical(cifar):
    raw = npy_bytes(cifar[:20])
    blob = amdcompress.compress(raw)
    i = amdcompress.info(blob)
    assert i.kind == "npy" and i.shape == (20, 32, 32, 3)
    assert amdcompress.decompress(blob) == raw


def test_other_npy_is_bytes():
    raw = npy_bytes(np.arange(10, dtype=np.float32))
    blob = amdcompress.compress(raw)
    assert amdcompress.info(blob).kind == "bytes" and amdcompress.decompress(blob) == raw


def test_auto_never_worse_than_fallbacks(cifar):
    raw = png_bytes(cifar[0], "RGB")
    auto = len(amdcompress.compress(raw))
    for name in ("store", "lzma", "jxl"):
        assert auto <= len(amdcompress.compress(raw, model=name))


def test_model_refusing_input_is_an_error():
    with pytest.raises(AmdError, match="does not accept"):
        amdcompress.compress(b"hello", model="jxl")
    with pytest.raises(AmdError, match="unknown model"):
        amdcompress.compress(b"hello", model="nope")


@pytest.mark.parametrize("blob,msg", [
    (b"", "bad magic"), (b"PK\x03\x04 zip file", "bad magic"), (b"AMD", "truncated"),
    (b"AMD\x09" + bytes(20), "version"), (b"AMD\x01\x01\x00\x00\x00\x00\x07" + bytes(10), "kind"),
    (b"AMD\x02\x01\x07\x00\x00" + bytes(10), "kind"), (b"AMD\x02\x01\x00", "truncated"),
    (b"AMD\x03\x01\x07\x00\x00" + bytes(10), "kind"), (b"AMD\x03\x01\x00", "truncated"),
])
def test_foreign_and_broken_headers(blob, msg):
    with pytest.raises(AmdError, match=msg):
        amdcompress.decompress(blob)


def test_unknown_codec_id_is_clear():
    blob = bytearray(amdcompress.compress(b"abc" * 50, model="lzma"))
    blob[4] = 200
    with pytest.raises(AmdError, match="codec id 200"):
        amdcompress.decompress(bytes(blob))


def _fuzz_sources():
    rng = np.random.default_rng(5)
    img = (rng.integers(0, 8, (9, 13, 3)) * 30).astype(np.uint8)
    text = (DATA / "text8" / "valid.txt").read_bytes()[:3000]
    return {
        "lzma": (text, amdcompress.compress(text, model="lzma")),
        "store": (text[:200], amdcompress.compress(text[:200], model="store")),
        "jxl": (png_bytes(img, "RGB"), amdcompress.compress(png_bytes(img, "RGB"), model="jxl")),
    }


_FUZZ = _fuzz_sources()


def _decoded_or_error(blob: bytes, original: bytes, kind: str):
    """A damaged file must raise AmdError or decode to exactly the original."""
    try:
        out = amdcompress.decompress(blob)
    except AmdError:
        return
    if kind == "jxl":
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(Image.open(io.BytesIO(original))))
    else:
        assert out == original


@given(which=st.sampled_from(sorted(_FUZZ)), data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_bit_flips(which, data):
    original, blob = _FUZZ[which]
    flips = data.draw(st.lists(st.integers(0, 8 * len(blob) - 1), min_size=1, max_size=4))
    b = bytearray(blob)
    for f in flips:
        b[f // 8] ^= 1 << (f % 8)
    _decoded_or_error(bytes(b), original, which)


@given(which=st.sampled_from(sorted(_FUZZ)), data=st.data())
@settings(max_examples=80, deadline=None)
def test_fuzz_truncation_and_extension(which, data):
    original, blob = _FUZZ[which]
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(AmdError):
        amdcompress.decompress(blob[:cut])
    with pytest.raises(AmdError):
        amdcompress.decompress(blob + data.draw(st.binary(min_size=1, max_size=8)))


def test_version_2_idf_file_with_the_checksum_in_its_stream_still_decodes(cifar):
    """A format-2 idf file: the anchor carries the CRC of the data alone."""
    from amdcompress import backends

    b = backends.by_name("idf")
    if not b.available():
        pytest.skip("idf weights not installed")
    raw = png_bytes(cifar[1], "RGB")
    data = formats.sniff(raw)
    payload = b.encode(data, checksum=_data_crc(raw))
    new = amdcompress.compress(raw, model="idf")
    h = container.unpack(new)[0]
    old = (b"AMD\x02" + new[4:8] + b"".join(container.write_varint(d) for d in h.shape)
           + container.write_varint(len(payload)) + payload)
    assert amdcompress.decompress(old) == amdcompress.decompress(new)
    assert not amdcompress.info(old).header_checked
