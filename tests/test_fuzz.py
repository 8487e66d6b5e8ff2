"""Fuzzed decoding: a damaged .amd file decodes to exactly what the undamaged
file decodes to, or raises AmdError; never another exception, never a hang.

Real files of every codec (:mod:`amd_samples`: store, lzma, jxl, ppmd, idf,
argmax, argmax-coupling, discrete-flow, diffusion, absorbing-diffusion; the learned ones on tiny
inputs) are damaged by a seeded mutation loop (bit flips in every header
byte, every codec id, flags value and version byte, truncation at every header
length and sampled payload lengths, appended junk, payload bit flips, byte
edits with the framing refitted, crafted shapes) and by hypothesis.

``test_fuzz_ci`` (marked slow) decodes at least 10,000 mutated files and
prints its counts (``-s``; or set ``AMDCOMPRESS_FUZZ_REPORT=path.json``);
``AMDCOMPRESS_FUZZ_N`` scales it. ``test_fuzz_quick`` runs a sample of the
same loop in the default suite. The per-field tests check that a new file
with a header field rewritten (alone, or with others so that the header stays
self-consistent) is refused.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amdcompress
from amdcompress import AmdError, container, formats
from amdcompress.codecs.varint import write_varint

import amd_samples
import rss

HANG_S = 5.0          # a decode attempt slower than this counts as a hang
HARD_STOP_S = 30.0    # and is interrupted here
SAMPLES = amd_samples.all_samples()
CODECS = sorted(SAMPLES)

# payload mutations per codec in the CI run, weighted by decode cost (tiny learned
# inputs still run a network per step; the classical decoders take microseconds)
PAYLOAD_WEIGHT = {"store": 8, "lzma": 8, "jxl": 8, "ppmd": 4, "discrete-flow": 3, "argmax-coupling": 3,
                  "diffusion": 3, "argmax": 2, "idf": 1.2}


class _Hang(KeyboardInterrupt):
    """Raised by the watchdog (a KeyboardInterrupt, so no layer turns it into AmdError)."""


# ---------------------------------------------------------------- helpers
def parse(blob: bytes):
    """(prefix up to the shape, shape varints, length varint, crc field, payload) of a v3 file."""
    h, payload = container.unpack(blob)
    prefix = blob[:8]
    shape = b"".join(write_varint(d) for d in h.shape)
    length = write_varint(len(payload))
    crc = b"" if h.checksum_in_payload else h.crc32.to_bytes(4, "little")
    assert prefix + shape + length + crc + payload == blob
    return h, prefix, shape, length, crc, payload


def reframe(blob: bytes, *, codec=None, flags=None, tag=None, shape=None, payload=None, crc=...) -> bytes:
    """The file with fields rewritten and the framing kept consistent (lengths
    refitted; the CRC field kept as it was unless given: None removes it)."""
    h, prefix, sh, _, crc_field, pl = parse(blob)
    pre = bytearray(prefix)
    if codec is not None:
        pre[4] = codec
    if flags is not None:
        pre[5] = flags
    if tag is not None:
        pre[6:8] = tag
    if shape is not None:
        sh = b"".join(write_varint(d) for d in shape)
    if payload is not None:
        pl = payload
    if crc is not ...:
        crc_field = b"" if crc is None else crc
    return bytes(pre) + sh + write_varint(len(pl)) + crc_field + pl


class Tally:
    def __init__(self):
        self.files = self.ok = self.refused = 0
        self.wrong, self.foreign, self.hangs = [], [], []
        self.slowest = 0.0
        self.by_codec: dict[str, int] = {}
        self.seconds_by_codec: dict[str, float] = {}

    def as_dict(self) -> dict:
        return {"files": self.files, "exact": self.ok, "refused": self.refused, "wrong": len(self.wrong),
                "foreign": len(self.foreign), "hangs": len(self.hangs), "slowest_s": round(self.slowest, 3),
                "by_codec": self.by_codec,
                "seconds_by_codec": {k: round(v, 1) for k, v in self.seconds_by_codec.items()},
                "examples": (self.wrong + self.foreign + self.hangs)[:10]}


def _alarm(signum, frame):
    raise _Hang()


def attempt(tally: Tally, codec: str, what: str, blob: bytes) -> None:
    """Decode one mutated file and count what happened."""
    expected = SAMPLES[codec].decoded
    tally.files += 1
    tally.by_codec[codec] = tally.by_codec.get(codec, 0) + 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HARD_STOP_S)
    t = time.perf_counter()
    try:
        out = amdcompress.decompress(blob)
    except _Hang:
        out = _Hang
    except AmdError as e:
        out = e
    except BaseException as e:  # noqa: BLE001 - the point: nothing else may escape
        out = None
        tally.foreign.append(f"{codec} {what}: {type(e).__name__}: {str(e)[:100]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    dt = time.perf_counter() - t
    tally.slowest = max(tally.slowest, dt)
    tally.seconds_by_codec[codec] = tally.seconds_by_codec.get(codec, 0.0) + dt
    if out is _Hang or dt > HANG_S:
        tally.hangs.append(f"{codec} {what}: {dt:.1f} s")
    elif isinstance(out, AmdError):
        tally.refused += 1
        assert "\n" not in str(out)
    elif isinstance(out, bytes):
        if out == expected:
            tally.ok += 1
        else:
            tally.wrong.append(f"{codec} {what}: {len(out)} bytes")


def mutations(codec: str, rng: random.Random, payload_n: int):
    """(description, mutated file) pairs for one codec's sample."""
    s = SAMPLES[codec]
    blob, hl = s.blob, s.header_len
    h, prefix, shape, length, crc, payload = parse(blob)
    # every bit of every header byte
    for i in range(hl):
        for bit in range(8):
            b = bytearray(blob)
            b[i] ^= 1 << bit
            yield f"header bit {i}.{bit}", bytes(b)
    # truncated inside the header, at every length
    for cut in range(hl + 1):
        yield f"cut {cut}", blob[:cut]
    # every codec id, flags value and version
    for v in range(256):
        if v != blob[4]:
            yield f"codec id {v}", blob[:4] + bytes([v]) + blob[5:]
        if v != blob[5]:
            yield f"flags {v:#04x}", blob[:5] + bytes([v]) + blob[6:]
        if v != blob[3]:
            yield f"version {v}", blob[:3] + bytes([v]) + blob[4:]
    # the checksum flag toggled with the CRC field moved in or out (layout consistent)
    yield "checksum flag", reframe(blob, flags=blob[5] ^ 0x10, crc=None if crc else (h.crc32 or 0).to_bytes(4, "little"))
    # crafted shapes: huge, zero, over-long varints
    nd = len(h.shape)
    for dims in [(2**31,), (2**32,), (2**40,), (2**62,), (0,), (1,), (h.shape[0] + 1,), (h.shape[0] * 1000,)]:
        sh = tuple(dims) + tuple(h.shape[1:]) if nd > 1 else tuple(dims)
        yield f"shape {sh}", reframe(blob, shape=sh)
    ten = bytes([0xFF] * 9 + [0x01])
    yield "10-byte varint", prefix + ten + shape[1:] + length + crc + payload
    yield "non-shortest varint", prefix + bytes([shape[0] | 0x80, 0x00]) + shape[1:] + length + crc + payload
    # the payload: truncated, extended, flipped, edited with the framing refitted
    for _ in range(payload_n):
        r = rng.random()
        if r < 0.15 and payload:
            cut = rng.randrange(hl, len(blob))
            yield f"cut {cut}", blob[:cut]
        elif r < 0.25:
            yield "junk", blob + rng.randbytes(rng.randint(1, 16))
        elif r < 0.65 and payload:
            b = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(hl, len(b))] ^= 1 << rng.randrange(8)
            yield "payload flips", bytes(b)
        else:
            p = bytearray(payload)
            op = rng.choice(["set", "insert", "delete", "zero-run", "truncate"])
            at = rng.randrange(len(p) + 1)
            if op == "set" and p:
                p[min(at, len(p) - 1)] = rng.randrange(256)
            elif op == "insert":
                p[at:at] = rng.randbytes(rng.randint(1, 8))
            elif op == "delete" and p:
                del p[at : at + rng.randint(1, 8)]
            elif op == "zero-run":
                p[at : at + 8] = bytes(len(p[at : at + 8]))
            else:
                p = p[:at]
            yield f"refit {op}", reframe(blob, payload=bytes(p))


def run_fuzz(total: int, seed: int = 2024) -> Tally:
    """The mutation loop over every codec; ``total`` scales the payload mutations
    so that the whole run decodes about ``total`` files."""
    rng = random.Random(seed)
    fixed = sum(sum(1 for _ in mutations(c, random.Random(0), 0)) for c in CODECS)
    per_weight = max(0, total - fixed) / sum(PAYLOAD_WEIGHT.get(c, 1) for c in CODECS)
    tally = Tally()
    for codec in CODECS:
        n = math.ceil(per_weight * PAYLOAD_WEIGHT.get(codec, 1))
        for what, blob in mutations(codec, rng, n):
            attempt(tally, codec, what, blob)
    return tally


def _report(tally: Tally, seconds: float, rss_growth_mb: float) -> dict:
    rep = {**tally.as_dict(), "seconds": round(seconds, 1), "rss_growth_mb": round(rss_growth_mb, 1)}
    print("\nfuzz:", json.dumps(rep))
    path = os.environ.get("AMDCOMPRESS_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(rep, f, indent=2)
    return rep


def _check(tally: Tally, rss_growth_mb: float) -> None:
    assert not tally.wrong, tally.wrong[:10]
    assert not tally.foreign, tally.foreign[:10]
    assert not tally.hangs, tally.hangs[:10]
    assert rss_growth_mb < 500, f"decoding damaged files grew the process by {rss_growth_mb:.0f} MB"


@pytest.mark.slow
def test_fuzz_ci():
    """At least 10,000 mutated files over all codecs: 0 wrong outputs, 0
    foreign exceptions, 0 hangs, bounded memory."""
    total = int(os.environ.get("AMDCOMPRESS_FUZZ_N", 10_000))
    rss0, t0 = rss.reset_peak(), time.perf_counter()
    tally = run_fuzz(total)
    rep = _report(tally, time.perf_counter() - t0, rss.peak_mb() - rss0)
    assert tally.files >= total and len(tally.by_codec) == len(CODECS)
    _check(tally, rep["rss_growth_mb"])


def test_fuzz_quick():
    """A sample of the same loop in the default suite (every codec, ~800 files)."""
    rng = random.Random(7)
    rss0 = rss.reset_peak()
    tally = Tally()
    for codec in CODECS:
        muts = list(mutations(codec, rng, 12))
        for what, blob in random.Random(codec).sample(muts, min(len(muts), 90)):
            attempt(tally, codec, what, blob)
    _check(tally, rss.peak_mb() - rss0)
    assert tally.refused > 0 and tally.files >= 80 * len(CODECS)


# ---------------------------------------------------------------- hypothesis
@given(codec=st.sampled_from(CODECS), data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hypothesis_damage(codec, data):
    s = SAMPLES[codec]
    b = bytearray(s.blob)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "extend"]))
        if kind == "flip" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and b:
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del b[data.draw(st.integers(0, len(b))):]
        else:
            b += data.draw(st.binary(min_size=1, max_size=8))
    tally = Tally()
    attempt(tally, codec, "hypothesis", bytes(b))
    _check(tally, 0)


@given(codec=st.sampled_from(CODECS), payload=st.binary(max_size=200), data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hypothesis_foreign_payloads(codec, payload, data):
    """A valid header (of any codec) around arbitrary payload bytes."""
    s = SAMPLES[codec]
    h = container.unpack(s.blob)[0]
    shape = h.shape if data.draw(st.booleans()) else tuple(data.draw(st.integers(1, 64)) for _ in h.shape)
    try:
        blob = reframe(s.blob, shape=shape, payload=payload)
        container.unpack(blob)
    except AmdError:
        return  # a shape this kind cannot have
    tally = Tally()
    attempt(tally, codec, "foreign payload", blob)
    assert not tally.foreign and not tally.hangs
    if tally.ok:  # only possible if the bytes are (equivalent to) the real payload
        assert shape == h.shape


# ---------------------------------------------------------------- header fields, one by one
def _refused(blob: bytes) -> None:
    with pytest.raises(AmdError) as e:
        amdcompress.decompress(blob)
    assert "\n" not in str(e.value)


def _refused_or_same(blob: bytes, expected: bytes) -> None:
    """For rewrites that touch the payload too: the one thing a damaged payload
    may do besides failing is decode to exactly the same file."""
    try:
        out = amdcompress.decompress(blob)
    except AmdError as e:
        assert "\n" not in str(e)
        return
    assert out == expected


def _same_count_shapes(kind: int, shape: tuple[int, ...]):
    """(kind, shape) pairs with the same element count that the kind can have."""
    n = math.prod(shape)
    out = [(formats.BYTES, (n,)), (formats.IMAGE_PNM, (1, n, 1)), (formats.IMAGE_PNG, (n, 1, 1)),
           (formats.NPY_BATCH, (1, 1, n, 1))]
    if len(shape) >= 3:
        h, w, c = shape[-3:]
        out += [(formats.IMAGE_PNG, (w, h, c)), (formats.IMAGE_PNM, (h, w, c)), (formats.NPY_BATCH, (1, h, w, c)),
                (formats.IMAGE_PNG, (h, w, c)), (formats.NPY_BATCH, (1, w, h, c))]
    if n % 3 == 0:
        out += [(formats.IMAGE_PNM, (1, n // 3, 3)), (formats.IMAGE_PNG, (n // 3, 1, 3))]
    return [(k, s) for k, s in out if (k, s) != (kind, tuple(shape))]


@pytest.mark.parametrize("codec", CODECS)
def test_kind_and_shape_rewritten_together_are_refused(codec):
    """The reported bug: kind and shape rewritten together (same element count,
    valid varints) used to decode, exit 0, to a different file."""
    s = SAMPLES[codec]
    h, *_ = parse(s.blob)
    tried = 0
    for kind, shape in _same_count_shapes(h.kind, h.shape):
        try:
            formats.validate_shape(kind, shape)
        except AmdError:
            continue
        flags = kind | (s.blob[5] & 0x10)
        _refused(reframe(s.blob, flags=flags, shape=shape))
        tried += 1
    assert tried >= 3


@pytest.mark.parametrize("codec", CODECS)
def test_codec_id_rewritten_is_refused(codec):
    s = SAMPLES[codec]
    for v in range(256):
        if v != s.blob[4]:
            _refused(reframe(s.blob, codec=v))


@pytest.mark.parametrize("codec", CODECS)
def test_weights_tag_rewritten_is_refused(codec):
    s = SAMPLES[codec]
    for i in range(16):
        tag = bytearray(s.blob[6:8])
        tag[i // 8] ^= 1 << (i % 8)
        _refused(reframe(s.blob, tag=bytes(tag)))


@pytest.mark.parametrize("codec", CODECS)
def test_flags_rewritten_are_refused(codec):
    """Every other flags value, with the CRC field added or removed when the
    checksum bit changes, so the layout stays consistent."""
    s = SAMPLES[codec]
    h, prefix, shape, length, crc, payload = parse(s.blob)
    for v in range(256):
        if v == s.blob[5]:
            continue
        moved = (v ^ s.blob[5]) & 0x10
        new_crc = ... if not moved else (None if crc else (0).to_bytes(4, "little"))
        _refused(reframe(s.blob, flags=v, crc=new_crc))
        if moved and not crc:  # the forger's best guess for the field: the carried checksum
            carried = container.checksum(container.crc32(formats.sniff(s.decoded).array.tobytes()),
                                         container.covered_bytes(h.codec_id, h.weights_tag, h.kind, h.shape, True))
            _refused(reframe(s.blob, flags=v, crc=carried.to_bytes(4, "little")))


@pytest.mark.parametrize("codec", CODECS)
def test_lengths_rewritten_are_refused(codec):
    """The shape's length (bytes: n) and the payload length, alone and together
    with a payload cut or extended to match."""
    s = SAMPLES[codec]
    h, prefix, shape, length, crc, payload = parse(s.blob)
    first = h.shape[0]
    for d in (first - 1, first + 1, 2 * first):
        if d >= 1 or h.kind == formats.BYTES:
            _refused(reframe(s.blob, shape=(d,) + tuple(h.shape[1:])))
    for p in (payload[:-1], payload + b"\0", payload[1:], b"\0" + payload):
        _refused_or_same(reframe(s.blob, payload=p), s.decoded)
        _refused(reframe(s.blob, payload=p, shape=(max(0, first - 1),) + tuple(h.shape[1:])))
    for n in (len(payload) - 1, len(payload) + 1):
        _refused(prefix + shape + write_varint(max(0, n)) + crc + payload)  # length alone
    _refused(prefix + shape + bytes([length[0] | 0x80, 0x00]) + length[1:] + crc + payload)


@pytest.mark.parametrize("codec", CODECS)
def test_version_rewritten_is_refused(codec):
    s = SAMPLES[codec]
    for v in range(256):
        if v != s.blob[3]:
            _refused(s.blob[:3] + bytes([v]) + s.blob[4:])


@pytest.mark.parametrize("codec", CODECS)
def test_crc_field_rewritten_is_refused(codec):
    s = SAMPLES[codec]
    h, prefix, shape, length, crc, payload = parse(s.blob)
    if not crc:
        pytest.skip("this codec carries its checksum in the payload (payload damage: the fuzz tests)")
    for i in range(32):
        c = bytearray(crc)
        c[i // 8] ^= 1 << (i % 8)
        _refused(prefix + shape + length + bytes(c) + payload)


def test_every_codec_has_a_sample():
    assert set(CODECS) >= {"store", "lzma", "ppmd"}
    missing = set(amd_samples.CODECS) - set(CODECS)
    assert not missing or os.environ.get("AMDCOMPRESS_ALLOW_MISSING_MODELS"), f"no sample for {missing}"
