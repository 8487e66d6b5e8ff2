"""The entropy-coding layer: push/pop identities, table guarantees, bits-back
rate, underflow, serialization and cross-process determinism."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import amdcompress.codecs as C

SETTINGS = settings(max_examples=40, deadline=None)


def roundtrip(codec, x, message=None):
    """Push then pop; assert the data and the message are both restored."""
    m0 = message if message is not None else C.Message.empty()
    before = m0.copy()
    m1 = codec.push(m0, x)
    m2 = C.Message.from_bytes(m1.to_bytes())  # through the byte form too
    m3, y = codec.pop(m2)
    assert m3 == before
    return y


# ---------------------------------------------------------------- tables
@SETTINGS
@given(k=st.integers(1, 70000), n=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_quantize_rows_sum_and_floor(k, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.exponential(size=(n, k)) ** 8
    if k > C.distributions.MAX_ALPHABET:
        with pytest.raises(ValueError):
            C.quantize_weights(w)
        return
    c = C.quantize_weights(w)
    assert (c.sum(axis=1) == C.TOTAL).all() and c.min() >= 1


def test_quantize_degenerate_rows_are_uniform():
    c = C.quantize_weights(np.array([[0.0, 0.0, 0.0], [np.nan, np.inf, -1.0]]))
    assert (c.max(axis=1) - c.min(axis=1) <= 1).all()


def test_det_exp_accurate_and_total():
    x = np.linspace(-745, 720, 100001)
    y = C.det_exp(x)
    ref = np.exp(np.clip(x, -740, 705))
    ok = ref > 1e-300
    assert np.allclose(y[ok], ref[ok], rtol=1e-11, atol=0)
    assert np.isfinite(y).all()


def test_logistic_mixture_matches_continuous_mass():
    # one component, far from the ends: table ~ sigmoid differences
    mu, ls = np.array([100.3]), np.array([np.log(3.0)])
    c = C.logistic_mixture_counts(0, 255, mu, ls)
    x = np.arange(256)
    sig = lambda t: 1 / (1 + np.exp(-t))
    p = sig((x + 0.5 - 100.3) / 3) - sig((x - 0.5 - 100.3) / 3)
    p[0], p[-1] = sig((0.5 - 100.3) / 3), 1 - sig((254.5 - 100.3) / 3)
    assert np.abs(c[0] / C.TOTAL - p).max() < 1e-5


# ---------------------------------------------------------------- round trips
@SETTINGS
@given(k=st.integers(2, 65536), n=st.integers(0, 50), seed=st.integers(0, 2**32 - 1), prefill=st.booleans())
def test_categorical_roundtrip(k, n, seed, prefill):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4, size=(n, k))
    counts = C.categorical_from_logits(logits) if n else np.zeros((0, k), dtype=np.int64)
    x = rng.integers(0, k, n)
    msg = C.Message.seeded(3) if prefill else None
    assert np.array_equal(roundtrip(C.Categorical(counts), x, msg), x)


@SETTINGS
@given(n=st.integers(1, 40), m=st.integers(1, 5), lo=st.integers(-300, 0), width=st.integers(1, 600),
       seed=st.integers(0, 2**32 - 1))
def test_logistic_mixture_roundtrip(n, m, lo, width, seed):
    rng = np.random.default_rng(seed)
    hi = lo + width
    mu = rng.uniform(lo - 20, hi + 20, (n, m)).astype(np.float32)
    ls = rng.normal(0, 2, (n, m)).astype(np.float32)
    lw = rng.normal(0, 2, (n, m)).astype(np.float32)
    counts = C.logistic_mixture_counts(lo, hi, mu, ls, lw)
    x = rng.integers(lo, hi + 1, n)
    assert np.array_equal(roundtrip(C.Categorical(counts), x - lo) + lo, x)


@SETTINGS
@given(n=st.integers(1, 40), hw=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
def test_windowed_roundtrip_with_escapes(n, hw, seed):
    rng = np.random.default_rng(seed)
    lo, hi = -(2**15), 2**15 - 1
    mu = rng.uniform(-1000, 1000, n)
    centers = np.rint(mu).astype(np.int64)
    x = np.clip(centers + rng.integers(-3 * hw - 5, 3 * hw + 6, n), lo, hi)
    x[: n // 4] = rng.integers(lo, hi + 1, n // 4)  # far escapes
    counts = C.windowed_logistic_mixture_counts(centers, hw, mu, np.full(n, 1.0))
    assert np.array_equal(roundtrip(C.Windowed(counts, centers, hw, lo, hi), x), x)


@SETTINGS
@given(sizes=st.lists(st.integers(1, 2**24 - 1), min_size=0, max_size=30), seed=st.integers(0, 2**32 - 1))
def test_uniform_roundtrip(sizes, seed):
    rng = np.random.default_rng(seed)
    x = np.array([rng.integers(0, s) for s in sizes], dtype=np.int64)
    assert np.array_equal(roundtrip(C.Uniform(sizes), x), x)


def test_serial_and_chained_roundtrip():
    rng = np.random.default_rng(1)
    a_counts = C.uniform_counts(5, 10)
    codec = C.chained(C.Categorical(a_counts), lambda a: C.Uniform(np.asarray(a) + 2))
    a = rng.integers(0, 10, 5)
    b = np.array([rng.integers(0, v + 2) for v in a])
    y = roundtrip(C.serial([codec, C.Uniform([7])]), ((a, b), np.array([3])))
    assert np.array_equal(y[0][0], a) and np.array_equal(y[0][1], b) and y[1][0] == 3


def test_symbols_outside_the_table_are_refused():
    with pytest.raises(ValueError):
        C.Categorical(C.uniform_counts(2, 4)).push(C.Message.empty(), np.array([0, 4]))
    with pytest.raises(ValueError):
        C.Uniform([3]).push(C.Message.empty(), np.array([3]))


# ---------------------------------------------------------------- bits-back
def _toy_bits_back(n, rng):
    """z in 0..7, x in 0..15; p(z), p(x|z), q(z|x) random tables."""
    pz = C.categorical_from_logits(rng.normal(size=(n, 8)))
    px_z = {z: C.categorical_from_logits(np.tile(rng.normal(scale=2, size=16), (n, 1))) for z in range(8)}
    qz_x = {x: C.categorical_from_logits(np.tile(rng.normal(size=8), (n, 1))) for x in range(16)}

    def rows(tables, keys):
        return np.stack([tables[int(k)][i] for i, k in enumerate(keys)])

    codec = C.bits_back(
        C.Categorical(pz),
        lambda z: C.Categorical(rows(px_z, z)),
        lambda x: C.Categorical(rows(qz_x, x)),
    )
    return codec, pz, px_z, qz_x, rows


def test_bits_back_roundtrip_and_rate():
    rng = np.random.default_rng(7)
    n = 4000
    codec, pz, px_z, qz_x, rows = _toy_bits_back(n, rng)
    x = rng.integers(0, 16, n)
    m = C.Message.seeded(1000)  # enough initial bits for the first pop of n z's
    start = m.num_bits()
    enc = codec.push(m.copy(), x)
    # recover z the decoder will see, to compute the exact ideal rate
    dec, z = C.Categorical(pz).pop(enc.copy())
    ideal = (C.information_bits(pz, z) + C.information_bits(rows(px_z, z), x)
             - C.information_bits(rows(qz_x, x), z))
    growth = enc.num_bits() - start
    assert abs(growth - ideal) < 0.01 * ideal + 64
    back, y = codec.pop(C.Message.from_bytes(enc.to_bytes()))
    assert np.array_equal(y, x)
    assert back.is_seed_remainder(1000)


def test_seeded_message_stores_only_consumed_initial_bits():
    m = C.Message.seeded(1000)
    assert len(m.to_bytes()) <= 6  # untouched seed: the varint and the seal word
    m, _ = C.Categorical(C.uniform_counts(10, 256)).pop(m)
    assert len(m.to_bytes()) <= 3 + 4 * 5  # the pop consumed 80 bits; the rest of the seed is not stored


def _toy_chain(rng, n_slots, n_links, size):
    """Random links over slots of ``size`` symbols in 0..5: (slot, likelihood, posterior)
    with tables chosen by the conditioning symbols (so every link depends on its input)."""
    links = []
    for _ in range(n_links):
        lik = C.categorical_from_logits(rng.normal(scale=2, size=(6, 6)))   # row z: p(x | z)
        post = C.categorical_from_logits(rng.normal(scale=2, size=(6, 6)))  # row x: q(z | x)
        links.append((int(rng.integers(0, n_slots)),
                      lambda z, t=lik: C.Categorical(t[np.asarray(z)]),
                      lambda x, t=post: C.Categorical(t[np.asarray(x)])))
    prior = C.serial([C.Uniform(np.full(size, 6)) for _ in range(n_slots)])
    return links, prior


def _nested_chain(prior, links):
    """The same chain as nested bits_back over whole slot lists (the definition)."""
    codec = prior
    for s, lik, post in reversed(links):
        def at(f, s=s):  # a codec of the whole list that codes only slot s given the other list's slot s
            def make(other):
                c = f(other[s])

                def push(m, xs):
                    return c.push(m, xs[s])

                def pop(m):
                    m, v = c.pop(m)
                    out = list(other)
                    out[s] = v
                    return m, out

                return C.Codec(push, pop)

            return make

        codec = C.bits_back(codec, at(lik), at(post))
    return codec


@pytest.mark.parametrize("n_slots,n_links", [(1, 1), (1, 7), (3, 12), (4, 1)])
def test_bits_back_chain_is_nested_bits_back(n_slots, n_links):
    rng = np.random.default_rng(n_slots * 100 + n_links)
    size = 20
    links, prior = _toy_chain(rng, n_slots, n_links, size)
    x = [rng.integers(0, 6, size) for _ in range(n_slots)]
    flat = C.bits_back_chain(prior, links).push(C.Message.seeded(200), x)
    nested = _nested_chain(prior, links).push(C.Message.seeded(200), x)
    assert flat == nested and flat.to_bytes() == nested.to_bytes()
    back, y = C.bits_back_chain(prior, links).pop(C.Message.from_bytes(flat.to_bytes()))
    assert all(np.array_equal(a, b) for a, b in zip(x, y)) and len(y) == n_slots
    assert back.is_seed_remainder(200)


def test_bits_back_chain_with_no_links_is_the_prior():
    prior = C.serial([C.Uniform(np.full(5, 6))])
    x = [np.arange(5)]
    assert C.bits_back_chain(prior, []).push(C.Message.empty(), x) == prior.push(C.Message.empty(), x)


def _piece_codec(rng_seed=3, watch=lambda codec: codec):
    """Bits-back pieces: each symbol in 0..7 with a latent in 0..7 (tables fixed per
    piece size); ``watch`` wraps the posterior, whose pops the encoder runs."""
    def piece(lo, g):
        r = np.random.default_rng(rng_seed + g)
        pz = C.categorical_from_logits(r.normal(size=(g, 8)))
        px_z = C.categorical_from_logits(r.normal(scale=2, size=(8, 8)))
        qz_x = C.categorical_from_logits(r.normal(scale=2, size=(8, 8)))
        return C.bits_back(C.Categorical(pz), lambda z: C.Categorical(px_z[np.asarray(z)]),
                           lambda x: watch(C.Categorical(qz_x[np.asarray(x)])))
    return piece


def test_generations_push_in_order_and_pop_in_reverse():
    rng = np.random.default_rng(4)
    piece = _piece_codec()
    x = rng.integers(0, 8, 100)
    sizes = [10, 30, 60]
    m = C.generations(piece, sizes).push(C.Message.seeded(100), x)
    by_hand = C.Message.seeded(100)
    for lo, g in [(0, 10), (10, 30), (40, 60)]:
        by_hand = piece(lo, g).push(by_hand, x[lo : lo + g])
    assert m == by_hand
    back, y = C.generations(piece, sizes).pop(C.Message.from_bytes(m.to_bytes()))
    assert np.array_equal(y, x) and back.is_seed_remainder(100)
    lazy = iter([(40, 60), (10, 30), (0, 10)])
    _, y2 = C.generations(piece, None, backwards=lazy).pop(C.Message.from_bytes(m.to_bytes()))
    assert np.array_equal(y2, x)
    with pytest.raises(ValueError):
        C.generations(piece, [10, 30]).push(C.Message.seeded(100), x)


def test_growing_plan_grows_and_its_sizes_decode():
    rng = np.random.default_rng(5)
    piece = _piece_codec()
    x = rng.integers(0, 8, 5000)
    plan = C.GrowingPlan(16, align=64)
    watched = _piece_codec(watch=lambda codec: plan.watched(codec))  # the ledger sees every encoder pop
    m = C.generations(watched, plan).push(C.Message.seeded(400), x)
    sizes = plan.sizes
    assert sizes[0] == 16 and sum(sizes) == x.size and len(sizes) < 15
    assert all(g % 64 == 0 for g in sizes[1:-1] if g >= 64)
    assert sizes[2] > sizes[1] > 0
    assert 0 < m.initial_words_used(400) <= 400
    back, y = C.generations(piece, sizes).pop(C.Message.from_bytes(m.to_bytes()))
    assert np.array_equal(y, x) and back.is_seed_remainder(400)
    with pytest.raises(TypeError):
        C.generations(piece, plan).pop(m)
    # without the ledger's watch the plan sees no debt (only the floor rate): it grows faster
    blind = C.GrowingPlan(16, align=64)
    C.generations(piece, blind).push(C.Message.seeded(400), x)
    assert blind.sizes[1] > sizes[1] and plan.worst > blind.worst == 0.0


def test_initial_words_used_counts_the_consumed_seed():
    m = C.Message.seeded(50)
    assert m.initial_words_used(50) == 0
    m, _ = C.Categorical(C.uniform_counts(10, 256)).pop(m)  # 80 bits
    used = m.initial_words_used(50)
    assert 3 <= used <= 5
    k = int.from_bytes(m.to_bytes()[:1], "little")  # the stored seed-prefix count (< 128: one varint byte)
    assert used == 50 - k


# ---------------------------------------------------------------- stream heads
@SETTINGS
@given(st.integers(0, 255), st.lists(st.integers(0, 2**40), min_size=1, max_size=4))
def test_stream_head_round_trips(version, fields):
    from amdcompress.codecs.varint import read_head, write_head

    head = write_head(version, *fields)
    assert read_head(head + b"rest", version, len(fields), "test") == (fields, len(head))


def test_stream_head_rejects_bad_heads():
    from amdcompress.codecs.varint import MAX_SYMBOLS, read_head, write_head

    head = write_head(1, 500, 7)
    for bad, kw, msg in [(b"", {}, "version"), (write_head(2, 500, 7), {}, "version"), (head[:2], {}, "truncated"),
                         (head, {"max_symbols": 499}, "exceeds"), (write_head(1, MAX_SYMBOLS + 1, 7), {}, "exceeds")]:
        with pytest.raises(C.CorruptStreamError, match=msg):
            read_head(bad, 1, 2, "test", **kw)
    assert read_head(head, 1, 2, "test", max_symbols=500)[0] == [500, 7]


# ---------------------------------------------------------------- underflow
def test_pop_from_empty_is_defined_and_invertible():
    counts = C.categorical_from_probs(np.array([[0.1, 0.6, 0.3]] * 4))
    m = C.Message.empty()
    m, y = C.Categorical(counts).pop(m)
    assert np.array_equal(y, np.zeros(4))  # zero bits -> the lowest symbol
    C.Categorical(counts).push(m, y)
    assert m.is_empty() and m.to_bytes() == b"\x00"


@SETTINGS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
@example(n=1, seed=1893)  # one free symbol: an empty message, b"\0" in either form
def test_byte_form_drops_zero_high_bytes_of_the_top_word_and_reads_whole_words(n, seed):
    x = np.random.default_rng(seed).integers(0, 256, n)
    m = C.Categorical(C.uniform_counts(n, 256)).push(C.Message.empty(), x)
    blob = m.to_bytes()
    body = m.words().astype("<u4").tobytes()
    whole = blob[:1] + body  # the whole-words form of older files
    # only the zero high bytes of the top word go (not the prefix varint: an empty
    # message, e.g. one uniform symbol 0 pushed for free, is b"\0" both ways)
    assert len(whole) - len(blob) == len(body) - len(body.rstrip(b"\0")) <= 3
    for form in (blob, whole):
        back, y = C.Categorical(C.uniform_counts(n, 256)).pop(C.Message.from_bytes(form))
        assert np.array_equal(y, x) and back.is_empty()


@SETTINGS
@given(n=st.integers(0, 400), anchor=st.integers(0, 2**32 - 1), seed=st.integers(0, 2**32 - 1))
def test_anchored_message_hands_its_value_back(n, anchor, seed):
    """An anchored stack, written without the seed prefix, pops back to exactly
    its anchor; the anchor costs 33 bits (plus the byte rounding of the top word)."""
    rng = np.random.default_rng(seed)
    counts = C.categorical_from_probs(rng.dirichlet(np.ones(40), size=max(n, 1))[:n])
    x = rng.integers(0, 40, n)
    m = C.Categorical(counts).push(C.Message.anchored(anchor), x)
    blob = m.to_bytes(seed_prefix=False)
    ideal = C.information_bits(counts, x) if n else 0.0
    assert 8 * len(blob) <= ideal + 33 + 8 + 1e-6 * ideal + 1
    back, y = C.Categorical(counts).pop(C.Message.from_bytes(blob, seed_prefix=False))
    assert np.array_equal(y, x) and back.anchor() == anchor


def test_anchor_is_none_unless_the_stack_is_exactly_an_anchor():
    assert C.Message.empty().anchor() is None
    m = C.Categorical(C.uniform_counts(3, 256)).push(C.Message.anchored(7), np.array([1, 2, 3]))
    assert m.anchor() is None
    with pytest.raises(ValueError):
        C.Message.anchored(2**32)


def test_strict_message_raises_on_underflow():
    m = C.Message.empty(strict=True)
    with pytest.raises(C.MessageUnderflowError):
        C.Categorical(C.uniform_counts(1, 4)).pop(m)


@pytest.mark.parametrize("blob", [b"", b"\x80", b"\x00\x00", b"\x00\x00\x00\x00\x00", b"\xff\xff\xff\xff\x0f"])
def test_corrupt_message_bytes_raise(blob):
    with pytest.raises(C.CorruptStreamError):
        C.Message.from_bytes(blob)


# ---------------------------------------------------------------- determinism
_SCRIPT = r"""
import sys, numpy as np, amdcompress.codecs as C
rng = np.random.default_rng(123)
n = 3000
mu = rng.uniform(0, 255, (n, 3)).astype(np.float32)
ls = rng.normal(1, 1, (n, 3)).astype(np.float32)
lw = rng.normal(0, 1, (n, 3)).astype(np.float32)
x = rng.integers(0, 256, n)
m = C.Categorical(C.logistic_mixture_counts(0, 255, mu, ls, lw)).push(C.Message.empty(), x)
m = C.Categorical(C.categorical_from_logits(rng.normal(size=(n, 27)).astype(np.float32))).push(m, x % 27)
sys.stdout.write(m.to_bytes().hex())
"""


@pytest.mark.slow
def test_two_processes_produce_identical_bytes():
    outs = [subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert outs[0] == outs[1] and len(outs[0]) > 1000
