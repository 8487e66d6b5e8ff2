"""IDF streams 2 and 3 (models/idf/lanes.py): the version byte, the lane head,
lanes coded on worker threads with bytes that never depend on the workers,
stream 1 unchanged, stream 3's lanes coded with the binned part coder, one-line
errors on damaged heads, the backend and ``info`` with a stream-2 weights
version, and the frozen tiny-model payloads of tests/golden/idf_stream2/
(streams 2 and 3)."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import install_backend
from test_idf import images, tiny_model

from amdcompress.codecs.errors import AmdError
from amdcompress.codecs.varint import write_varint
from amdcompress.models import registry
from amdcompress.models.idf import coding as C
from amdcompress.models.idf import lanes

GOLDEN = Path(__file__).resolve().parent / "golden" / "idf_stream2"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def model():
    return tiny_model(3, top_groups=2, context_levels=(0,))


def batch(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return images(n, h, w, seed=seed) if n else np.zeros((0, h, w, 3), np.uint8)


def enc(x, crc=None, workers=None, stream=2) -> bytes:
    return C.compress(model(), x, checksum=crc, stream=stream, workers=workers)


def dec(p, shape, crc=None, workers=None, stream=2):
    """Decode as the container would: checked when a checksum was written."""
    if crc is None:
        return C.decompress(model(), p, shape, stream=stream, workers=workers), None
    return C.decompress_checked(model(), p, shape, stream=stream, workers=workers)


def lane_payload(x, crc, stream) -> bytes:
    """One lane of ``stream``: the stream-1 message of ``x`` with that stream's part coder."""
    with C._coding():
        return C.encode_message(model(), x, crc, None, stream)


def _one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(AmdError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("corrupt payload"), msg
    return msg


# -- the format -------------------------------------------------------------------


@pytest.mark.parametrize("n,h,w", [(1, 20, 28), (2, 32, 32), (3, 1, 1), (7, 33, 31)])
@pytest.mark.parametrize("crc", [None, 0xDEADBEEF])
@pytest.mark.parametrize("stream", [2, 3])
def test_round_trip_and_workers_do_not_change_bytes(n, h, w, crc, stream):
    x = batch(n, h, w, seed=n)
    p = enc(x, crc, workers=1, stream=stream)
    assert enc(x, crc, workers=2, stream=stream) == p  # the bytes never depend on the workers
    for workers in (1, 2):
        out, carried = dec(p, x.shape, crc, workers, stream)
        assert np.array_equal(out, x) and carried == crc


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("crc", [None, 7])
@pytest.mark.parametrize("stream", [2, 3])
def test_layout_version_byte_lane_head_and_stream1_lanes(n, crc, stream):
    """0x02 (0x03), then (N >= 2) the lane count and all but the last lane's
    length; each lane is exactly the stream-1 payload of its images (stream 2),
    that message with the binned part coder (stream 3)."""
    x = batch(n, 8, 12, seed=3)
    p = enc(x, crc, stream=stream)
    L = min(2, max(n, 1))
    parts = [lane_payload(x[i * n // L : (i + 1) * n // L], crc, stream) for i in range(L)]
    if stream == 2:
        assert parts == [C.encode(model(), x[i * n // L : (i + 1) * n // L], checksum=crc) for i in range(L)]
    head = bytes([stream]) + (write_varint(L) + b"".join(write_varint(len(b)) for b in parts[:-1]) if n >= 2 else b"")
    assert p == head + b"".join(parts)
    assert C.details(p, x.shape, stream=stream) == {"idf_stream": stream, "lanes": L,
                                                    "lane_bytes": [len(b) for b in parts]}


def test_streams_2_and_3_are_told_apart():
    """The same images in streams 2 and 3: other lanes (another part coder),
    and each stream's decoder refuses the other's version byte."""
    x = batch(3, 16, 16, seed=4)
    two, three = enc(x, 11, stream=2), enc(x, 11, stream=3)
    assert two[0] == 2 and three[0] == 3 and two[1:] != three[1:]
    _one_line_error(dec, three, x.shape, 11, stream=2)
    _one_line_error(dec, two, x.shape, 11, stream=3)


def test_stream1_is_unchanged():
    """stream=1 (the default, every shipped weights version so far) is the
    payload encode() has always written: no version byte."""
    x = batch(3, 8, 8)
    for crc in (None, 99):
        p = C.compress(model(), x, checksum=crc)
        assert p == C.compress(model(), x, checksum=crc, stream=1) == C.encode(model(), x, checksum=crc)
        assert np.array_equal(C.decompress_checked(model(), p, x.shape)[0] if crc else
                              C.decompress(model(), p, x.shape), x)
    assert C.details(p, x.shape) == {"idf_stream": 1}
    for name in ("idf-v4", "idf-v3", "idf-v2"):  # shipped stream-1 weights stay stream 1
        assert registry.weights(name).stream == 1
    assert registry.MODELS["idf"].streams == C.STREAMS == (1, 2, 3)
    with pytest.raises(AmdError, match="stream version 4"):
        C.compress(model(), x, stream=4)


def test_decoder_accepts_any_lane_count_up_to_n():
    """An encoder may split into 1..N lanes (this one writes min(2, N))."""
    x = batch(5, 8, 8, seed=9)
    for L in (1, 3, 5):
        parts = [C.encode(model(), x[i * 5 // L : (i + 1) * 5 // L], checksum=42) for i in range(L)]
        p = b"\x02" + write_varint(L) + b"".join(write_varint(len(b)) for b in parts[:-1]) + b"".join(parts)
        out, carried = dec(p, x.shape, 42, workers=2)
        assert np.array_equal(out, x) and carried == 42
        assert C.details(p, x.shape, stream=2)["lanes"] == L


def test_workers_env(monkeypatch):
    x = batch(3, 8, 8, seed=1)
    monkeypatch.setenv(lanes.WORKERS_ENV, "1")
    assert lanes.workers_for(2) == 1
    one = enc(x, 5)
    monkeypatch.setenv(lanes.WORKERS_ENV, "2")
    assert lanes.workers_for(2) == 2 and lanes.workers_for(1) == 1
    assert enc(x, 5) == one
    assert np.array_equal(dec(one, x.shape, 5)[0], x)
    monkeypatch.delenv(lanes.WORKERS_ENV)
    assert 1 <= lanes.workers_for(2) <= 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(lanes.WORKERS_ENV, bad)
        with pytest.raises(AmdError, match=lanes.WORKERS_ENV):
            enc(x, 5)


def test_progress_counts_every_batch_once():
    ticks = []

    class Bar:
        def __init__(self, total):
            ticks.append(total)

        def update(self, k=1):
            ticks.append(k)

    x = batch(3, 8, 8)
    p = C.compress(model(), x, stream=2, workers=2, progress=Bar)
    C.decompress(model(), p, x.shape, stream=2, workers=2, progress=Bar)
    assert ticks == [2, 1, 1, 2, 1, 1]  # two lanes of one network batch each, both ways


# -- damage ---------------------------------------------------------------------------


@functools.cache
def _three():
    x = batch(3, 8, 8, seed=4)
    crc = zlib.crc32(x.tobytes())
    return x, crc, enc(x, crc)


def _long(v: int) -> bytes:
    """``v`` as a varint one byte longer than its shortest form."""
    b = write_varint(v)
    return b[:-1] + bytes([b[-1] | 0x80, 0])


def _head(L, *sizes):
    return b"\x02" + write_varint(L) + b"".join(write_varint(s) for s in sizes)


def test_bad_heads_are_one_line_errors():
    from amdcompress.codecs.varint import read_varint

    x, crc, p = _three()
    assert p[:2] == b"\x02\x02"  # version 2, two lanes
    size0, pos = read_varint(p, 2, ValueError)
    body = p[pos:]
    cases = {
        "empty": b"",
        "version 1": b"\x01" + p[1:],
        "version 3": b"\x03" + p[1:],
        "version only": b"\x02",
        "L = 0": _head(0) + body,
        "L > N": _head(4, size0, 1, 1) + body,
        "over-long varint": b"\x02" + b"\xff" * 12,
        "truncated lane length": b"\x02\x02\x80",
        "lane length past the end": _head(2, len(body) + 5) + body,
        "last lane empty": _head(2, len(body)) + body,
        "first lane empty": _head(2, 0) + body,
        "lane lengths shifted": _head(2, size0 + 1) + body,
        "truncated": p[:-3],
        "trailing bytes": p + b"\x01\x02\x03",
        "trailing zero": p + b"\x00",
        # one payload per batch: varints in their shortest form, lanes as to_bytes writes them
        "lane count not shortest": b"\x02" + _long(2) + write_varint(size0) + body,
        "lane length not shortest": b"\x02\x02" + _long(size0) + body,
        "a zero byte after lane 0": _head(2, size0 + 1) + body[:size0] + b"\x00" + body[size0:],
    }
    for name, bad in cases.items():
        _one_line_error(dec, bad, x.shape, crc)
    # the plain decoder (no checksum) refuses them too
    for name in ("version 1", "L = 0", "L > N", "lane length past the end", "last lane empty"):
        _one_line_error(dec, cases[name], x.shape, None)
    # a one-image stream has no lane count: 0x02 then the lane itself
    one = batch(1, 8, 8)
    p1 = enc(one, 3)
    assert p1 == b"\x02" + C.encode(model(), one, checksum=3)
    _one_line_error(dec, b"\x02", one.shape, 3)
    _one_line_error(C.details, b"\x03" + p1[1:], one.shape, stream=2)


def test_lanes_must_carry_the_same_checksum():
    x = batch(2, 8, 8, seed=6)
    a, b = C.encode(model(), x[:1], checksum=1), C.encode(model(), x[1:], checksum=2)
    msg = _one_line_error(dec, _head(2, len(a)) + a + b, x.shape, 1)
    assert "different checksums" in msg


@settings(max_examples=12, deadline=None)
@given(where=st.integers(0, 10**6), bit=st.integers(0, 7), cut=st.integers(0, 40))
def test_damage_never_passes_the_container_check(where, bit, cut):
    """A flipped bit or a cut anywhere: a one-line error, or images whose CRC
    differs from the one the stream carried (what the container compares), or
    the very images (a bit the decoder never reads, e.g. the top word's slack)."""
    x, crc, p = _three()
    bad = bytearray(p)
    bad[where % len(bad)] ^= 1 << bit
    for damaged in (bytes(bad), p[: len(p) - 1 - cut]):
        try:
            out, carried = dec(damaged, x.shape, crc, workers=2)
        except AmdError as e:
            assert "\n" not in str(e)
            continue
        assert np.array_equal(out, x) or carried != zlib.crc32(out.tobytes())


# -- hypothesis round trip --------------------------------------------------------------


def _round_trip(n, h, w, seed, with_crc, workers, stream):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    crc = zlib.crc32(x.tobytes()) if with_crc else None
    p = enc(x, crc, workers=workers, stream=stream)
    out, carried = dec(p, x.shape, crc, workers=3 - workers, stream=stream)
    assert np.array_equal(out, x) and carried == crc
    assert p[0] == stream and C.details(p, x.shape, stream=stream)["lanes"] == min(2, n)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 2**32 - 1),
       with_crc=st.booleans(), workers=st.sampled_from([1, 2]), stream=st.sampled_from([2, 3]))
def test_random_batches_round_trip(n, h, w, seed, with_crc, workers, stream):
    _round_trip(n, h, w, seed, with_crc, workers, stream)


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 9), h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       with_crc=st.booleans(), workers=st.sampled_from([1, 2]), stream=st.sampled_from([2, 3]))
def test_random_batches_round_trip_long(n, h, w, seed, with_crc, workers, stream):
    _round_trip(n, h, w, seed, with_crc, workers, stream)


_CHILD = """
import sys, numpy as np
from amdcompress.models import registry
from amdcompress.models.idf import coding as C
weights, images, out, stream = sys.argv[1:]
m = C.load(registry.read_weights(weights))
x = np.load(images)
open(out, "wb").write(C.compress(m, x, checksum=123, stream=int(stream)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stream", [2, 3])
def test_separate_processes_agree_whatever_their_threads(tmp_path, stream):
    """Streams 2 and 3 encoded here (workers 1) and in children with other
    worker and torch thread settings in their environment: identical bytes."""
    import os
    import subprocess
    import sys

    m = model()
    w = tmp_path / "w.pt"
    torch.save({"config": m.config, "state_dict": m.state_dict()}, w)
    x = batch(5, 24, 20, seed=7)
    np.save(tmp_path / "x.npy", x)
    here = C.compress(C.load(registry.read_weights(w)), x, checksum=123, stream=stream, workers=1)
    for env in ({"AMDCOMPRESS_WORKERS": "2", "OMP_NUM_THREADS": "2"}, {"AMDCOMPRESS_WORKERS": "1"}):
        subprocess.run([sys.executable, "-c", _CHILD, str(w), str(tmp_path / "x.npy"), str(tmp_path / "c.bin"),
                        str(stream)],
                       check=True, env=dict(os.environ, **env), timeout=300)
        assert (tmp_path / "c.bin").read_bytes() == here, env


# -- the backend, the API and the CLI with a stream-2 weights version -----------------------


@pytest.fixture
def tiny_weights(tmp_path):
    path = tmp_path / "idf-tiny2.pt"
    m = model()
    torch.save({"config": m.config, "state_dict": registry.compact_state_dict(m.state_dict())}, path)
    return path


def _npy(x) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def test_backend_codes_with_the_weights_stream(tiny_weights, tmp_path, monkeypatch, capsys):
    import amdcompress
    from amdcompress.cli import main

    x = batch(3, 20, 28, seed=2)
    raw = _npy(x)
    b1 = install_backend(monkeypatch, "idf", tiny_weights, stream=1)
    blob1 = amdcompress.compress(raw, model="idf")
    assert amdcompress.info(blob1).details == {"idf_stream": 1}
    b2 = install_backend(monkeypatch, "idf", tiny_weights, stream=2)
    assert b1.weights_tag() == b2.weights_tag()
    blob = amdcompress.compress(raw, model="idf")
    assert amdcompress.decompress(blob) == raw
    head = len(blob) - len(blob1)
    assert 0 < head < 12  # version byte, lane head, one more anchor
    det = amdcompress.info(blob).details
    assert det["idf_stream"] == 2 and det["lanes"] == 2 and len(det["lane_bytes"]) == 2
    # the file's weights say stream 2: the same tag read as stream 1 is another stream
    install_backend(monkeypatch, "idf", tiny_weights, stream=1)
    with pytest.raises(AmdError):
        amdcompress.decompress(blob)
    install_backend(monkeypatch, "idf", tiny_weights, stream=2)
    # lanes swapped (each a valid lane of one image... of another place): the container's CRC catches it
    y = batch(2, 8, 8, seed=8)
    blob2 = amdcompress.compress(_npy(y), model="idf")
    from amdcompress import container

    header, payload = container.unpack(blob2)
    parts = lanes.split_lanes(payload, 2)
    swapped = _head(2, len(parts[1])) + parts[1] + parts[0]
    assert len(swapped) == len(payload)
    forged = blob2[: len(blob2) - len(payload)] + swapped
    with pytest.raises(AmdError, match="checksum mismatch"):
        amdcompress.decompress(forged)
    # a single PNG image: one lane, no lane count
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(x[0]).save(png, format="PNG")
    one = amdcompress.compress(png.getvalue(), model="idf")
    assert amdcompress.info(one).details == {"idf_stream": 2, "lanes": 1,
                                             "lane_bytes": [amdcompress.info(one).payload_bytes - 1]}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(amdcompress.decompress(one)))), x[0])
    # the CLI's info
    (tmp_path / "b.amd").write_bytes(blob)
    assert main(["info", str(tmp_path / "b.amd")]) == 0
    out = capsys.readouterr().out
    assert "idf stream:  2" in out and "lanes:       2" in out and f"lane bytes:  {det['lane_bytes']}" in out
    assert main(["info", "--json", str(tmp_path / "b.amd")]) == 0
    assert json.loads(capsys.readouterr().out)["details"] == det
    assert main(["models", "--json"]) == 0
    idf = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "idf")
    assert idf["streams"] == [1, 2, 3] and [v["stream"] for v in idf["versions"]] == [2]


def test_weights_of_an_undeclared_stream_are_refused(tiny_weights, monkeypatch):
    import amdcompress

    install_backend(monkeypatch, "idf", tiny_weights, stream=4)
    with pytest.raises(AmdError, match="stream version 4"):
        amdcompress.compress(_npy(batch(2, 8, 8)), model="idf")


# -- the frozen stream-2 payloads ------------------------------------------------------------

MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


@functools.cache
def golden_model():
    w = GOLDEN / MANIFEST["weights"]["file"]
    assert registry.sha256_file(w) == MANIFEST["weights"]["sha256"]
    return C.load(registry.read_weights(w))


@pytest.mark.parametrize("entry", MANIFEST["entries"], ids=[e["payload"] for e in MANIFEST["entries"]])
def test_golden_lane_payloads(entry):
    """Each frozen payload decodes to exactly its images (either worker count)
    and encoding them again gives exactly its bytes: the stream-2 and stream-3
    formats are pinned by a tiny model, whatever real weights ship."""
    blob = (GOLDEN / entry["payload"]).read_bytes()
    raw = (GOLDEN / entry["images"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
    assert hashlib.sha256(raw).hexdigest() == entry["images_sha256"]
    x = np.load(io.BytesIO(raw))
    assert list(x.shape) == entry["shape"]
    m, crc = golden_model(), entry["checksum"]
    assert crc is None or crc == zlib.crc32(x.tobytes())
    stream = entry["stream"]
    assert C.details(blob, x.shape, stream=stream) == {"idf_stream": stream, "lanes": entry["lanes"],
                                                       "lane_bytes": entry["lane_bytes"]}
    for workers in (1, 2):
        if crc is None:
            out = C.decompress(m, blob, x.shape, stream=stream, workers=workers)
        else:
            out, carried = C.decompress_checked(m, blob, x.shape, stream=stream, workers=workers)
            assert carried == crc
        assert np.array_equal(out, x)
        assert C.compress(m, x, checksum=crc, stream=stream, workers=workers) == blob
