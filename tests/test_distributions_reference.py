"""The fast table builders of :mod:`amdcompress.codecs.distributions` against
their definition: the first, straightforward implementation, kept here
verbatim. Tables are part of the file format, so every output must match bit
for bit (float64 bit patterns, integer counts), on ordinary and on hostile
inputs (NaN, infinities, negative and zero weights, tiny totals, one-symbol
alphabets, empty batches, rows not a multiple of the block size)."""
import numpy as np
import pytest

import amdcompress.codecs.distributions as D

# ----------------------------------------------------------------- the definition (verbatim)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_EXP_COEFFS = [1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(11)]
TOTAL = 1 << 24


def ref_det_exp(x):
    x = np.clip(np.asarray(x, dtype=np.float64), -740.0, 705.0)
    k = np.rint(x * _INV_LN2)
    r = x - k * _LN2_HI
    r -= k * _LN2_LO
    p = np.full_like(r, _EXP_COEFFS[-1])
    for c in reversed(_EXP_COEFFS[:-1]):
        p *= r
        p += c
    return np.ldexp(p, k.astype(np.int32), out=p)


def ref_det_sigmoid(x):
    e = ref_det_exp(-np.asarray(x, dtype=np.float64))
    e += 1.0
    return np.reciprocal(e, out=e)


def _as_f64(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def ref_quantize_weights(weights):
    w = np.asarray(weights, dtype=np.float64)
    n, k = w.shape
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]
    bad = ~(total > 0)
    w = np.where(bad, 1.0, w)
    total = np.where(bad, float(k), total)
    free = float(TOTAL - k)
    counts = np.floor(w * (free / total)).astype(np.int64)
    np.minimum(counts, TOTAL - k, out=counts)
    counts += 1
    deficit = TOTAL - counts.sum(axis=1)
    counts[np.arange(n), np.argmax(counts, axis=1)] += deficit
    return counts


def ref_categorical_from_logits(logits):
    z = _as_f64(logits)
    z = z - z.max(axis=1, keepdims=True)
    return ref_quantize_weights(ref_det_exp(z))


def ref_mixture_params(means, log_scales, logit_weights):
    mu = _as_f64(means)
    ls = _as_f64(log_scales)
    if mu.ndim == 1:
        mu, ls = mu[:, None], ls[:, None]
    if logit_weights is None:
        pi = np.ones_like(mu)
    else:
        lw = _as_f64(logit_weights).reshape(mu.shape)
        pi = ref_det_exp(lw - lw.max(axis=1, keepdims=True))
    norm = np.cumsum(pi, axis=1)[:, -1:]
    inv_s = ref_det_exp(-np.clip(ls, -7.0, 12.0))
    return mu, inv_s, pi, norm


def ref_mixture_mass(x, mu, inv_s, pi, lo=None, hi=None):
    consecutive = x.shape[1] > 1 and bool(np.all(x[:, 1:] - x[:, :-1] == 1.0))
    out = np.zeros(x.shape, dtype=np.float64)
    for j in range(mu.shape[1]):
        s = inv_s[:, j : j + 1]
        if consecutive:
            edges = np.concatenate([x[:, :1] - 0.5, x + 0.5], axis=1)
            cdf = ref_det_sigmoid((edges - mu[:, j : j + 1]) * s)
            upper, lower = cdf[:, 1:], cdf[:, :-1]
        else:
            c = (x - mu[:, j : j + 1]) * s
            upper = ref_det_sigmoid(c + 0.5 * s)
            lower = ref_det_sigmoid(c - 0.5 * s)
        if hi is not None:
            upper = np.where(x >= hi, 1.0, upper)
        if lo is not None:
            lower = np.where(x <= lo, 0.0, lower)
        mass = upper - lower
        np.maximum(mass, 0.0, out=mass)
        mass *= pi[:, j : j + 1]
        out += mass
    return out


def ref_logistic_mixture_weights(support, means, log_scales, logit_weights=None, lo=None, hi=None):
    mu, inv_s, pi, _ = ref_mixture_params(means, log_scales, logit_weights)
    return ref_mixture_mass(np.asarray(support, dtype=np.float64), mu, inv_s, pi, lo, hi)


def ref_logistic_mixture_counts(lo, hi, means, log_scales, logit_weights=None):
    n = np.asarray(means).shape[0]
    support = np.broadcast_to(np.arange(lo, hi + 1, dtype=np.float64), (n, hi - lo + 1))
    return ref_quantize_weights(ref_logistic_mixture_weights(support, means, log_scales, logit_weights, lo, hi))


def ref_windowed(centers, half_window, means, log_scales, logit_weights=None, exclude=-1):
    mu, inv_s, pi, norm = ref_mixture_params(means, log_scales, logit_weights)
    c = np.asarray(centers, dtype=np.int64)
    offs = np.arange(-half_window, half_window + 1, dtype=np.int64)
    support = (c[:, None] + offs[None, :]).astype(np.float64)
    w = ref_mixture_mass(support, mu, inv_s, pi)
    tail = np.maximum(norm - np.cumsum(w, axis=1)[:, -1:], 0.0)
    keep = np.abs(offs) > exclude
    return ref_quantize_weights(np.concatenate([w[:, keep], tail], axis=1))


# ----------------------------------------------------------------- helpers
def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype.kind == "f":
        # bit patterns, except that any NaN equals any NaN (payloads are not data)
        both_nan = np.isnan(a) & np.isnan(b)
        assert np.array_equal(np.where(both_nan, 0, a.view(np.int64)), np.where(both_nan, 0, b.view(np.int64)))
    else:
        assert np.array_equal(a, b)


def hostile(rng, shape, scale=4.0):
    x = rng.normal(scale=scale, size=shape)
    flat = x.reshape(-1)
    m = flat.size
    if m:
        for v in (np.nan, np.inf, -np.inf, 0.0, -0.0, 800.0, -800.0, 1e300, -1e300, 5e-324):
            flat[rng.integers(0, m, max(1, m // 500))] = v
    return x


# ----------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(4))
def test_det_exp_and_sigmoid_bits(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([hostile(rng, 70000, 50.0), np.linspace(-760, 720, 30001), rng.normal(size=5) * 1e-300])[:99999]
    with np.errstate(all="ignore"):
        same(D.det_exp(x), ref_det_exp(x))
        same(D.det_sigmoid(x), ref_det_sigmoid(x))
        same(D.det_exp(x.reshape(-1, 3)[:, ::2]), ref_det_exp(x.reshape(-1, 3)[:, ::2]))
        same(D.det_exp(np.float32(1.5)), ref_det_exp(np.float32(1.5)))
        same(D.det_sigmoid(2.0), ref_det_sigmoid(2.0))
        same(D.det_exp([]), ref_det_exp([]))


@pytest.mark.parametrize("k", [1, 2, 3, 27, 256, 1500, 40000])
def test_categorical_from_logits_bits(k):
    rng = np.random.default_rng(k)
    for n, scale in ((0, 1.0), (1, 1.0), (3, 30.0), (max(1, 70000 // k), 3.0), (2 * max(1, 33000 // k) + 7, 0.01)):
        x = rng.normal(scale=scale, size=(n, k)).astype(np.float32)
        same(D.categorical_from_logits(x), ref_categorical_from_logits(x))
        g = np.round(x * 4096) / 4096  # grid inputs, as the coders hand them in
        same(D.categorical_from_logits(g), ref_categorical_from_logits(g))
        x64 = rng.normal(scale=scale, size=(n, k))  # float64: rounded to float32 first
        same(D.categorical_from_logits(x64), ref_categorical_from_logits(x64))
    x = np.zeros((5, k))
    x[1, 0] = 1e30
    x[2, -1] = -np.inf
    x[3, 0] = np.nan
    x[4, :] = np.inf
    with np.errstate(all="ignore"):
        same(D.categorical_from_logits(x), ref_categorical_from_logits(x))


@pytest.mark.parametrize("k", [1, 2, 5, 27, 256, 3000])
def test_quantize_weights_bits(k):
    rng = np.random.default_rng(100 + k)
    n = max(4, 90000 // k)
    w = rng.exponential(size=(n, k)) ** 6
    same(D.quantize_weights(w), ref_quantize_weights(w))
    same(D.categorical_from_probs(w), ref_quantize_weights(_as_f64(w)))
    # hostile rows: in blocks of their own and mixed with ordinary ones
    h = np.abs(hostile(rng, (n, k), 3.0))
    h[::7] *= -1
    h[1] = 0.0
    h[2] = -0.0
    h[3] = 1e-310
    h[-1, :] = 1e308
    with np.errstate(all="ignore"):
        same(D.quantize_weights(h), ref_quantize_weights(h))
    same(D.quantize_weights(np.ones((3, k))), ref_quantize_weights(np.ones((3, k))))
    same(D.quantize_weights(np.zeros((0, k))), ref_quantize_weights(np.zeros((0, k))))
    ties = np.ones((n, k))
    ties[:, k // 2] = 1.0 + 1e-9
    same(D.quantize_weights(ties), ref_quantize_weights(ties))


@pytest.mark.parametrize("m", [1, 3, 5])
def test_logistic_mixture_bits(m):
    rng = np.random.default_rng(m)
    for lo, hi, n in ((0, 255, 300), (-5, 5, 3000), (0, 1, 50), (7, 7, 20), (-300, 300, 120)):
        mu = rng.uniform(lo - 20, hi + 20, (n, m)).astype(np.float32)
        ls = rng.normal(0, 2, (n, m)).astype(np.float32)
        lw = rng.normal(0, 2, (n, m)).astype(np.float32)
        same(D.logistic_mixture_counts(lo, hi, mu, ls, lw), ref_logistic_mixture_counts(lo, hi, mu, ls, lw))
        same(D.logistic_mixture_counts(lo, hi, mu, ls), ref_logistic_mixture_counts(lo, hi, mu, ls))
        sup = rng.integers(-400, 400, (n, 9)).astype(np.float64)  # scattered bins
        same(D.logistic_mixture_weights(sup, mu, ls, lw), ref_logistic_mixture_weights(sup, mu, ls, lw))
        sup = np.sort(sup, axis=1)
        same(D.logistic_mixture_weights(sup, mu, ls, lw, -50, 50),
             ref_logistic_mixture_weights(sup, mu, ls, lw, -50, 50))
    if m == 1:
        mu = rng.uniform(0, 255, 40)
        same(D.logistic_mixture_counts(0, 255, mu, np.full(40, 1.0)),
             ref_logistic_mixture_counts(0, 255, mu, np.full(40, 1.0)))


@pytest.mark.parametrize("hw", [0, 1, 2, 3, 8, 24, 96, 1024, 20000])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_windowed_and_ring_bits(hw):
    rng = np.random.default_rng(hw)
    n = max(3, min(5000, 200000 // (2 * hw + 2)))
    for m in (1, 5):
        mu = rng.uniform(-1000, 1000, (n, m)).astype(np.float32)
        mu[: n // 3] = np.round(mu[: n // 3] * 1024) / 1024
        ls = np.clip(rng.normal(1, 3, (n, m)), -7, 12).astype(np.float32)
        lw = rng.normal(0, 3, (n, m)).astype(np.float32)
        centers = np.rint(mu[:, 0]).astype(np.int64) + rng.integers(-3, 4, n)
        same(D.windowed_logistic_mixture_counts(centers, hw, mu, ls, lw), ref_windowed(centers, hw, mu, ls, lw))
        if m == 1:
            same(D.windowed_logistic_mixture_counts(centers, hw, mu[:, 0], ls[:, 0]),
                 ref_windowed(centers, hw, mu[:, 0], ls[:, 0]))
        p = D._mixture_params(mu, ls, lw)
        for ex in sorted({0, hw // 3, hw - 1, hw}):
            if ex < 0:
                continue
            same(D.windowed_mixture_table(centers, hw, *p, exclude=ex), ref_windowed(centers, hw, mu, ls, lw, ex))
    with np.errstate(all="ignore"):
        bad = np.full((7, 2), np.nan, dtype=np.float32)
        c = np.array([0, 5, -(2**62), 2**62, -(2**63), 2**52 - hw - 1, 2**52 - hw])
        same(D.windowed_logistic_mixture_counts(c, hw, bad, bad, bad), ref_windowed(c, hw, bad, bad, bad))
        same(D.windowed_logistic_mixture_counts(c, hw, np.zeros((7, 2)), np.zeros((7, 2))),
             ref_windowed(c, hw, np.zeros((7, 2)), np.zeros((7, 2))))
        same(D.windowed_logistic_mixture_counts(c[-2:], hw, np.full((2, 2), 2.0**52), np.zeros((2, 2))),
             ref_windowed(c[-2:], hw, np.full((2, 2), 2.0**52), np.zeros((2, 2))))
    same(D.windowed_logistic_mixture_counts(np.zeros(0, np.int64), hw, np.zeros((0, 2)), np.zeros((0, 2))),
         ref_windowed(np.zeros(0, np.int64), hw, np.zeros((0, 2)), np.zeros((0, 2))))


def ref_binned(starts, step, bins, escape, means, log_scales, logit_weights):
    """The definition of MixtureRows.binned_table: bin i's mass from the CDF at
    its outer edges start + i*step - 1/2, start + (i+1)*step - 1/2 (components
    added in order onto 0.0), the escape max(norm - the bins' sum left to
    right, 0), then the quantizer."""
    mu, inv_s, pi, norm = ref_mixture_params(means, log_scales, logit_weights)
    edges = (np.asarray(starts, dtype=np.int64)[:, None] + step * np.arange(bins + 1)[None, :]).astype(np.float64) - 0.5
    w = np.zeros((len(edges), bins), dtype=np.float64)
    for j in range(mu.shape[1]):
        cdf = ref_det_sigmoid((edges - mu[:, j : j + 1]) * inv_s[:, j : j + 1])
        mass = np.maximum(cdf[:, 1:] - cdf[:, :-1], 0.0) * pi[:, j : j + 1]
        w = w + mass
    if escape:
        w = np.concatenate([w, np.maximum(norm - np.cumsum(w, axis=1)[:, -1:], 0.0)], axis=1)
    return ref_quantize_weights(w)


@pytest.mark.parametrize("step,bins", [(1, 1), (1, 5), (3, 7), (25, 4), (64, 8), (1, 97), (441, 19)])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_binned_tables_bits(step, bins):
    """MixtureRows.binned_table (stream 3's tables) is its definition, bit for
    bit, on row subsets, with and without the escape; with step 1 and the
    escape it is the windowed table."""
    rng = np.random.default_rng(step * 100 + bins)
    n = max(3, min(3000, 300000 // (bins + 1)))
    for m in (1, 5):
        mu = (np.round(rng.uniform(-500, 500, (n, m)) * 1024) / 1024).astype(np.float32)
        ls = np.clip(rng.normal(1, 3, (n, m)), -7, 12).astype(np.float32)
        lw = rng.normal(0, 3, (n, m)).astype(np.float32)
        centers = np.rint(mu[:, 0]).astype(np.int64)
        starts = centers - rng.integers(0, step * bins + 2, n)
        mix = D.MixtureRows(centers, *D._mixture_params(mu, ls, lw))
        rows = np.sort(rng.permutation(n)[: max(1, n // 3)])
        for escape in (True, False):
            same(mix.binned_table(starts, step, bins, escape), ref_binned(starts, step, bins, escape, mu, ls, lw))
            same(mix.binned_table(starts[rows], step, bins, escape, rows),
                 ref_binned(starts[rows], step, bins, escape, mu[rows], ls[rows], lw[rows]))
        if step == 1 and bins % 2:
            hw = bins // 2
            same(mix.binned_table(centers - hw, 1, bins, True), mix.table(hw))
    with np.errstate(all="ignore"):
        bad = np.full((4, 2), np.nan, dtype=np.float32)
        c = np.array([0, 5, -7, 2**40])
        mix = D.MixtureRows(c, *D._mixture_params(bad, bad, bad))
        same(mix.binned_table(c, step, bins, True), ref_binned(c, step, bins, True, bad, bad, bad))
    empty = D.MixtureRows(np.zeros(0, np.int64), *D._mixture_params(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2))))
    assert empty.binned_table(np.zeros(0, np.int64), step, bins, True).shape == (0, bins + 1)
    with pytest.raises(ValueError):
        empty.binned_table(np.zeros(1, np.int64), step, bins, True)  # one start per row


@pytest.mark.parametrize("k", [2, 3, 27, 64, 65, 300])
def test_ties_for_the_largest_count(k):
    """The deficit goes to the first of equal largest counts, in every layout."""
    rng = np.random.default_rng(k)
    for n in (5, 300, 500, 40000 // k + 3):  # row order; transposed with argmax on rows; column passes
        w = rng.integers(1, 4, (n, k)).astype(np.float64)  # many exact ties
        w[::3, 0] = w[::3].max(axis=1)
        same(D.quantize_weights(w), ref_quantize_weights(w))
        z = rng.integers(-3, 1, (n, k)).astype(np.float32) / 4  # tied logits
        same(D.categorical_from_logits(z), ref_categorical_from_logits(z))
