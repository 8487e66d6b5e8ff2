"""Bounded decoding: a hostile file costs at most a few seconds and a few
hundred MB before a one-line error; no exception but AmdError reaches a user;
--max-size; Ctrl-C leaves nothing behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import amdcompress
from amdcompress import AmdError, api, backends, container, formats
from amdcompress.cli import main, parse_size
from amdcompress.codecs import Categorical, Message, MessageUnderflowError, uniform_counts
from amdcompress.codecs.message import CANONICAL

import amd_samples
import limits_probe

HERE = Path(__file__).parent


# ---------------------------------------------------------------- huge claims
def test_crafted_huge_claims_fail_fast_and_small():
    """Every codec, claims of 2**30 and 2**40 symbols (or subpixels), 10- and
    200-byte payloads, default limit and none: a one-line AmdError in well
    under a second each, the process's peak RSS up by under 200 MB
    (measured in a fresh process, after the models are loaded)."""
    out = subprocess.run([sys.executable, str(HERE / "limits_probe.py")], capture_output=True, text=True,
                         timeout=900, check=True).stdout
    rep = json.loads(out)
    path = os.environ.get("AMDCOMPRESS_LIMITS_REPORT")
    if path:
        Path(path).write_text(json.dumps(rep, indent=1))
    assert len({c["codec"] for c in rep["cases"]}) >= 3
    for c in rep["cases"]:
        assert c["error"] and not c["error"].startswith("FOREIGN") and "\n" not in c["error"], c
        assert c["seconds"] < 1.0, c
    assert rep["rss_growth_mb"] < 200, rep


def test_2_40_claim_from_the_command_line_is_refused_in_a_fresh_process(tmp_path):
    """The issue's case: a header claiming 2**40 symbols around a 10-byte
    payload, decoded by the CLI in a new process: one line, under a second
    from the call (imports aside), well under 200 MB for the whole process."""
    f = tmp_path / "huge.amd"
    f.write_bytes(limits_probe.crafted("store", 1 << 40, 10))
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import rss; from amdcompress.cli import main; "
            f"t = time.perf_counter(); rc = main(['decode', {str(f)!r}, '-o', {str(tmp_path / 'out')!r}]); "
            "print(rc, time.perf_counter() - t, rss.peak_mb())")  # the peak of this process since exec
    res = subprocess.run([sys.executable, "-c", code, str(HERE)], capture_output=True, text=True, timeout=120)
    rc, seconds, rss_mb = res.stdout.split()
    assert rc == "1" and "over the limit" in res.stderr and res.stderr.count("\n") == 1
    assert float(seconds) < 1.0 and float(rss_mb) < 200
    assert not (tmp_path / "out").exists()


def test_max_size_is_checked_before_decoding():
    raw = b"limit " * 100
    blob = amdcompress.compress(raw, model="lzma")
    assert amdcompress.decompress(blob, max_size=len(raw)) == raw
    assert amdcompress.decompress(blob, max_size=None) == raw
    with pytest.raises(AmdError, match="over the limit of 599"):
        amdcompress.decompress(blob, max_size=len(raw) - 1)
    assert api.DEFAULT_MAX_SIZE == 4 << 30


@pytest.mark.parametrize("text,value", [("4G", 4 << 30), ("4GiB", 4 << 30), ("512m", 512 << 20), ("1.5K", 1536),
                                        ("100000", 100000), ("2 TB", 2 << 40), ("none", None)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_cli_max_size(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_bytes(b"twelve bytes" * 10)
    assert main(["encode", "-q", str(src)]) == 0
    src.unlink()
    assert main(["decode", "--max-size", "100", str(tmp_path / "a.txt.amd")]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 100" in err and err.count("\n") == 1 and not src.exists()
    assert main(["test", "--max-size", "119", str(tmp_path / "a.txt.amd")]) == 1
    assert main(["decode", "--max-size", "120", str(tmp_path / "a.txt.amd")]) == 0 and src.exists()
    assert main(["decode", "--max-size", "lots", str(tmp_path / "a.txt.amd")]) == 2


# ---------------------------------------------------------------- the classical decoders
def test_jpegxl_codestream_larger_than_declared_is_refused_before_decoding():
    """A real codestream of a 4096x4096 image (a few hundred bytes: constant)
    in a file declaring 9x13: libjxl is handed the declared shape and stops at
    the codestream's header."""
    import imagecodecs

    big = imagecodecs.jpegxl_encode(np.zeros((4096, 4096, 3), np.uint8), lossless=True, effort=1)
    s = amd_samples.sample("jxl")
    h = container.unpack(s.blob)[0]
    crc = container.checksum(0, container.covered_bytes(h.codec_id, h.weights_tag, h.kind, h.shape, False))
    blob = container.pack(container.Header(h.codec_id, h.weights_tag, h.kind, h.shape, crc, 0), bytes(big))
    t = time.perf_counter()
    with pytest.raises(AmdError, match="JPEG-XL"):
        amdcompress.decompress(blob)
    assert time.perf_counter() - t < 0.5


def test_ppmd_payload_too_short_for_the_declared_size():
    b = backends.by_name("ppmd")
    payload = b.encode(formats.Data(formats.BYTES, np.zeros(1000, np.uint8)))
    n = b.MAX_RATIO * len(payload) + b.SLACK + 1
    with pytest.raises(AmdError, match="too short"):
        b.decode(payload, formats.BYTES, (n,))


def test_lzma_needs_its_end_and_nothing_after():
    raw = b"lzma end " * 40
    blob = amdcompress.compress(raw, model="lzma")
    h, payload = container.unpack(blob)
    b = backends.by_name("lzma")
    assert b.decode(payload, 0, h.shape).tobytes() == raw
    for bad in (payload + b"\0", payload[:-1]):
        with pytest.raises(AmdError):
            b.decode(bad, 0, h.shape)


def test_isolated_run_turns_a_crash_into_an_error():
    def crash() -> bytes:
        os.kill(os.getpid(), signal.SIGSEGV)
        return b""

    with pytest.raises(AmdError, match="crashed"):
        backends.run_isolated(crash, timeout=30, what="test")
    with pytest.raises(AmdError, match="gave up"):
        backends.run_isolated(time.sleep, 5, timeout=0.5, what="test")
    assert backends.run_isolated(lambda x: x * 2, b"ab", timeout=30, what="test") == b"abab"
    with pytest.raises(AmdError, match="ValueError: nope"):
        backends.run_isolated(lambda: (_ for _ in ()).throw(ValueError("nope")), timeout=30, what="test")


# ---------------------------------------------------------------- foreign exceptions
class _Panic(BaseException):
    """Stands in for constriction's PanicException (a BaseException)."""


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("torch: shape mismatch\nsecond line"),
                                 np.linalg.LinAlgError("numpy"), _Panic("panicked at 'index out of bounds'"),
                                 IndexError("index 5"), OverflowError("x"), OSError("libjxl"), AssertionError()])
def test_no_foreign_exception_reaches_the_user(monkeypatch, exc, tmp_path, capsys):
    b = backends.by_name("lzma")

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(b, "decode", boom)
    blob = amdcompress.compress(b"foreign " * 20, model="lzma")
    with pytest.raises(AmdError) as e:
        amdcompress.decompress(blob)
    assert "\n" not in str(e.value)
    f = tmp_path / "x.txt.amd"
    f.write_bytes(blob)
    assert main(["decode", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "x.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt.amd"]


def test_keyboard_interrupt_is_not_swallowed(monkeypatch):
    b = backends.by_name("lzma")
    monkeypatch.setattr(b, "decode", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        amdcompress.decompress(amdcompress.compress(b"x" * 50, model="lzma"))


# ---------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("command", ["encode", "decode"])
def test_ctrl_c_in_process_leaves_nothing(monkeypatch, tmp_path, capsys, command):
    src = tmp_path / "a.txt"
    src.write_bytes(b"interrupt me " * 100)
    if command == "decode":
        assert main(["encode", "-q", str(src)]) == 0
        src.unlink()
        target = api.decompress
    else:
        target = api.compress

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, target.__name__, interrupted)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([command, str(src) if command == "encode" else str(tmp_path / "a.txt.amd")]) == 130
    assert capsys.readouterr().err == "amdcompress: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ctrl_c_while_writing_removes_the_temporary_file(monkeypatch, tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_bytes(b"write me " * 100)

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    assert main(["encode", "-q", "-m", "lzma", str(src)]) == 130
    assert capsys.readouterr().err == "amdcompress: interrupted\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_ctrl_c_from_a_terminal(tmp_path):
    """SIGINT to a real process in the middle of coding (the argmax model runs
    a Python loop per character): exit 130, one line, no traceback, no file."""
    if not amd_samples.available("argmax"):
        pytest.skip("argmax weights not installed")
    src = tmp_path / "a.txt"
    src.write_bytes((amd_samples.DATA / "text8" / "valid.txt").read_bytes()[:40000])
    code = ("import sys; from amdcompress import backends; backends.by_name('argmax').state(); "
            "from amdcompress.cli import main; print('ready', flush=True); "
            f"sys.exit(main(['encode', '-q', '-m', 'argmax', {str(src)!r}]))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err == "amdcompress: interrupted\n"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


# ---------------------------------------------------------------- the ANS message's floor
def _seeded_stream(n: int = 200) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    counts = uniform_counts(n, 27)
    x = rng.integers(0, 27, n)
    m = Message.seeded(64)
    m, z = Categorical(counts).pop(m)  # bits-back style: pop first, from the initial bits
    m = Categorical(counts).push(m, x)
    return m.to_bytes(), counts, x


def test_seeded_message_raises_when_popped_below_its_seed_prefix():
    blob, counts, x = _seeded_stream()
    m, y = Categorical(counts).pop(Message.from_bytes(blob, seeded=True))
    assert np.array_equal(y, x)
    with pytest.raises(MessageUnderflowError, match="exhausted"):
        for _ in range(100):  # keep popping: the stream holds ~1 more pop's worth above its floor
            m, _ = Categorical(counts).pop(m)


def test_anchored_message_raises_when_popped_below_its_anchor():
    counts = uniform_counts(50, 256)
    m = Categorical(counts).push(Message.anchored(12345), np.arange(50))
    back = Message.from_bytes(m.to_bytes(seed_prefix=False), seed_prefix=False, anchored=True)
    back, y = Categorical(counts).pop(back)
    assert back.anchor() == 12345
    with pytest.raises(MessageUnderflowError):
        Categorical(uniform_counts(1, 256)).pop(back)


def test_require_bits():
    counts = uniform_counts(100, 256)
    m = Categorical(counts).push(Message.anchored(1), np.arange(100) % 256)
    back = Message.from_bytes(m.to_bytes(seed_prefix=False), seed_prefix=False, anchored=True)
    back.require_bits(800)
    with pytest.raises(MessageUnderflowError, match="too short"):
        back.require_bits(800 + 200)


def test_canonical_form_is_required_inside_format_3():
    m = Categorical(uniform_counts(3, 256)).push(Message.empty(), np.array([1, 2, 3]))
    blob = m.to_bytes()
    Message.from_bytes(blob + b"\0")  # older whole-words streams end in zero bytes
    token = CANONICAL.set(True)
    try:
        Message.from_bytes(blob)
        with pytest.raises(Exception, match="canonical"):
            Message.from_bytes(blob + b"\0")
    finally:
        CANONICAL.reset(token)


def test_oversized_seed_prefix_is_refused_without_allocating():
    from amdcompress.codecs.message import MAX_SEED_WORDS
    from amdcompress.codecs.varint import write_varint

    with pytest.raises(Exception, match="implausible"):
        Message.from_bytes(write_varint(MAX_SEED_WORDS + 1) + b"\1\0\0\0")
