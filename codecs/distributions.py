"""Integer frequency tables built deterministically from float parameters.

Every table here is a 2-D ``int64`` array of counts, one row per symbol to code,
each row summing to exactly ``2**PRECISION`` with every entry >= 1, so every
symbol of the support is codable and the encoder and decoder agree as long as
they hand in bit-identical float parameters.

Determinism: the arithmetic uses only IEEE-754 operations that are correctly
rounded everywhere (+, -, *, /, floor, ldexp) and sums in a fixed order. The
exponential is our own (:func:`det_exp`), because ``np.exp`` may take different
SIMD paths on different CPUs. Parameters are cast to float32 first, so a model
may hand in float32 or float64 alike.

Speed without changing a bit. The tables are a file format: every function
here computes, element for element, the very operations of its first
(straightforward) version, in the same order, so files written before decode
after and vice versa (``tests/test_distributions_reference.py`` pins this
against that version, kept verbatim in the test). What changed is only how the
work is laid out:

* the exponential runs in place on blocks of ~32k elements (its ~30 passes
  stay in the L2 cache), with reused scratch buffers and no temporaries;
* large tables are built *transposed* (symbol index first, rows last), in
  super-blocks of many rows, so that per-row parameters broadcast along long
  contiguous rows and the fixed-order row sums (left to right, as ``cumsum``
  sums) are K vector additions over thousands of rows at once instead of
  K-long dependency chains (``np.sum``'s pairwise order is never used);
  small tables (few rows) are built in row order with fewer numpy calls;
* the sign flip of the sigmoid is folded into its argument:
  ``-((e - mu) * s) == (mu - e) * s`` bit for bit, because round-to-nearest
  is symmetric under negation; bin edges ``x0 - 1/2, x + 1/2`` are the exact
  half-integers ``(c + j) - 1/2``;
* mixture components of a small table are evaluated together, but added to
  the accumulator one after the other, in order;
* the quantizer skips its masking pass when a block holds only finite,
  non-negative weights with finite row totals (the masking is then the
  identity; the reference path takes any other block), and keeps counts in
  float64 (exact integers) until one casting copy.
"""
from __future__ import annotations

import functools

import numpy as np

PRECISION = 24
TOTAL = 1 << PRECISION
MAX_ALPHABET = 1 << 16

# Cody-Waite split of ln 2: LN2_HI has trailing zero bits, so k * LN2_HI is exact.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
# Taylor coefficients 1/n! for exp on |r| <= ln2/2: degree 10, relative error
# below 2e-12, far finer than the 24-bit tables built from it.
_EXP_COEFFS = [1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(11)]
_HORNER = tuple(reversed(_EXP_COEFFS[:-2]))  # c8 .. c0, after p = c10 * r + c9

# Elements per block: the exponential's working set (value, k, r, int k) stays
# in the L2 cache.
_BLOCK = 1 << 15


# ---------------------------------------------------------------------------
# exponential and sigmoid


class _Scratch:
    """Reusable scratch buffers of the in-place exponential (flat, >= n elements)."""

    __slots__ = ("k", "r", "ki", "size")

    def __init__(self, n: int):
        self.size = max(1, n)
        self.k = np.empty(self.size, dtype=np.float64)
        self.r = np.empty(self.size, dtype=np.float64)
        self.ki = np.empty(self.size, dtype=np.int32)


def _exp_inplace(x: np.ndarray, sc: _Scratch) -> None:
    """x <- det_exp(x) for a flat contiguous float64 array, len(x) <= sc.size.

    The operations of :func:`det_exp`'s definition, in its order: clip;
    k = rint(x / ln 2); r = (x - k * LN2_HI) - k * LN2_LO; Horner from the
    degree-10 coefficient (c10 * r is r * c10: IEEE products commute);
    ldexp(p, int32(k))."""
    n = x.shape[0]
    k, r, ki = sc.k[:n], sc.r[:n], sc.ki[:n]
    np.clip(x, -740.0, 705.0, out=x)
    np.multiply(x, _INV_LN2, out=k)
    np.rint(k, out=k)
    np.multiply(k, _LN2_HI, out=r)
    np.subtract(x, r, out=r)          # r = x - k * LN2_HI
    np.multiply(k, _LN2_LO, out=x)
    np.subtract(r, x, out=r)          # r -= k * LN2_LO
    np.multiply(r, _EXP_COEFFS[10], out=x)
    np.add(x, _EXP_COEFFS[9], out=x)
    for c in _HORNER:
        np.multiply(x, r, out=x)
        np.add(x, c, out=x)
    np.copyto(ki, k, casting="unsafe")  # k.astype(np.int32)
    np.ldexp(x, ki, out=x)


def det_exp(x: np.ndarray) -> np.ndarray:
    """exp(x) in float64 from correctly rounded operations only: bit-identical on
    every IEEE-754 machine. Relative error below 2e-12; clamps to [-740, 705]."""
    return _blockwise(np.array(x, dtype=np.float64, order="C", copy=True), _exp_inplace)


def _blockwise(out: np.ndarray, inplace) -> np.ndarray:
    """``inplace(block, scratch)`` over ``out`` (contiguous float64) in blocks of
    :data:`_BLOCK` elements, sharing one scratch; returns ``out``."""
    flat = out.reshape(-1)
    n = flat.shape[0]
    sc = _Scratch(min(n, _BLOCK))
    for s in range(0, n, _BLOCK):
        inplace(flat[s : s + _BLOCK], sc)
    return out


def _sigmoid_of_neg_inplace(u: np.ndarray, sc: _Scratch) -> None:
    """u <- 1 / (1 + det_exp(u)) = det_sigmoid(-u), flat contiguous."""
    _exp_inplace(u, sc)
    np.add(u, 1.0, out=u)
    np.reciprocal(u, out=u)


def det_sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) with :func:`det_exp`."""
    out = np.array(x, dtype=np.float64, order="C", copy=True)
    np.negative(out, out=out)
    return _blockwise(out, _sigmoid_of_neg_inplace)


def _as_f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _as_f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# ---------------------------------------------------------------------------
# quantization


def _quantize_reference(w: np.ndarray) -> np.ndarray:
    """The quantizer's definition (float64 (n, k) weights -> counts): the path
    for blocks that hold non-finite or negative weights or degenerate rows."""
    n, k = w.shape
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # sequential: order-fixed
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


# Blocks are laid out (sub-blocks, k, columns): each sub-block (k, bs) holds
# the table of bs rows transposed, at most _BLOCK elements, for the cache; a
# super-block stacks up to _SUPER elements of them, so that the per-column
# work (fixed-order sums over k, the quantizer) costs one call per column
# index for many rows at once. A last, partial super-block is padded with
# copies of its last row (rows are independent; the copies are dropped).
_SUPER = 1 << 19


def _plan(k: int, n: int) -> tuple[int, int]:
    """(columns per sub-block, sub-blocks per super-block) for n rows of k entries."""
    bs = max(1, min(n, _BLOCK // k))
    return bs, max(1, min(-(-n // bs), _SUPER // (k * bs)))


def _rows_index(s0: int, m: int, count: int) -> np.ndarray:
    """Rows s0 .. s0+m-1, then the last one repeated up to ``count`` entries."""
    return np.minimum(np.arange(s0, s0 + count), s0 + m - 1)


_NARROW = 384  # fewer columns than this: a sequential cumsum beats k vector additions


def _col_sums(q: np.ndarray) -> np.ndarray:
    """Sums over axis 1 of a (sub-blocks, k, bs) block, each summed j = 0, 1, ...
    in order: the order of ``np.cumsum(w, axis=1)[:, -1]`` on the rows of w."""
    if q.shape[0] * q.shape[2] < _NARROW:
        return np.cumsum(q.transpose(0, 2, 1), axis=2)[:, :, -1]
    total = q[:, 0].copy()
    for j in range(1, q.shape[1]):
        np.add(total, q[:, j], out=total)
    return total


_FREE_TOTAL_MIN = 1e-290  # row totals below this could make free / total overflow


def _quantize_blocks(q: np.ndarray, out: np.ndarray, total: np.ndarray | None = None,
                     nonneg: bool = False) -> None:
    """Quantize the weights of a super-block ``q`` (sub-blocks, k, bs) (overwritten)
    into ``out`` (m, k) int64, its first m rows (the rest are padding).
    ``total``: the rows' sums in :func:`_col_sums` order, if the caller has them.
    ``nonneg``: the caller guarantees every weight is >= 0 or NaN, and that a
    NaN anywhere in a row makes that row's total NaN.

    Fast path, when every weight is finite and >= 0 and every row total is in
    [1e-290, inf): the reference's masking is then the identity (a -0.0 weight
    quantizes like +0.0), floor equals truncation, and each count is at most
    TOTAL - k (w <= total for sums of non-negative numbers, and
    w * RN(free / total) < free + 1), so the clamp is the identity too.
    Counts stay in float64 until one casting copy: they are integers below
    2**24 and their row sums stay below 2**53, so all of it is exact. The
    first largest count of a row gets the deficit, as ``np.argmax`` picks it.
    Otherwise the block takes :func:`_quantize_reference`."""
    ns, k, bs = q.shape
    m = out.shape[0]
    if not (nonneg or q.min() >= 0.0):  # also NaN
        out[...] = _quantize_reference(q.transpose(0, 2, 1).reshape(ns * bs, k)[:m])
        return
    if total is None:
        total = _col_sums(q)
    if not (total.min() >= _FREE_TOTAL_MIN and total.max() < np.inf):  # also NaN
        out[...] = _quantize_reference(q.transpose(0, 2, 1).reshape(ns * bs, k)[:m])
        return
    scale = np.divide(float(TOTAL - k), total)
    np.multiply(q, scale[:, None, :], out=q)
    np.trunc(q, out=q)                   # floor: the values are >= 0
    np.add(q, 1.0, out=q)
    deficit = np.add.reduce(q, axis=1)   # integers: exact in any order
    np.subtract(float(TOTAL), deficit, out=deficit)
    if k <= _FIRST_MAX_LOOP and ns * bs >= _FIRST_MAX_ROWS and q.flags.c_contiguous:
        # the first largest count of each row, found column by column from the
        # last (k vector passes over all rows), gets the deficit in place
        top = np.maximum.reduce(q, axis=1)
        first = np.empty((ns, bs), dtype=np.intp)
        eq = np.empty((ns, bs), dtype=bool)
        for j in range(k - 1, -1, -1):  # the last write is the first maximum
            np.equal(q[:, j], top, out=eq)
            np.copyto(first, j, where=eq)
        np.multiply(first, bs, out=first)
        np.add(first, _block_offsets(ns, k, bs), out=first)
        flat = q.reshape(-1)
        flat[first] += deficit
        deficit = None
    nf = m // bs  # whole sub-blocks, then the rows of a partial one
    np.copyto(out[: nf * bs].reshape(nf, bs, k).transpose(0, 2, 1), q[:nf], casting="unsafe")
    if m > nf * bs:
        np.copyto(out[nf * bs :], q[nf, :, : m - nf * bs].T, casting="unsafe")
    if deficit is not None:
        out[np.arange(m), np.argmax(out, axis=1)] += deficit.reshape(-1)[:m].astype(np.int64)


_FIRST_MAX_LOOP = 64  # up to this alphabet, and from this many rows on, the first maximum
_FIRST_MAX_ROWS = 1024  # by column passes beats argmax on rows


@functools.lru_cache(maxsize=64)
def _block_offsets(ns: int, k: int, bs: int) -> np.ndarray:
    """(ns, bs) intp: the flat index of entry (s, 0, c) of a (ns, k, bs) block."""
    a = np.arange(ns, dtype=np.intp)[:, None] * (k * bs) + np.arange(bs, dtype=np.intp)[None, :]
    a.flags.writeable = False
    return a


def _quantize_rows(w: np.ndarray, nonneg: bool = False) -> np.ndarray:
    """:func:`_quantize_blocks` for a small (n, k) block in row order (w is
    overwritten): fewer numpy calls, which is what small tables cost."""
    n, k = w.shape
    if not (nonneg or w.min() >= 0.0):
        return _quantize_reference(w)
    total = np.cumsum(w, axis=1)[:, -1]  # sequential: order-fixed
    if not (total.min() >= _FREE_TOTAL_MIN and total.max() < np.inf):
        return _quantize_reference(w)
    np.multiply(w, np.divide(float(TOTAL - k), total)[:, None], out=w)
    counts = w.astype(np.int64)  # floor: the values are >= 0
    counts += 1
    counts[np.arange(n), np.argmax(counts, axis=1)] += TOTAL - counts.sum(axis=1)
    return counts


_SMALL = 1 << 13  # tables of at most this many entries, or of few rows, are built in row order
_FEW_ROWS = 256


def _small(n: int, k: int) -> bool:
    return n > 0 and (n * k <= _SMALL or n < _FEW_ROWS)


def _rowmax(a: np.ndarray) -> np.ndarray:
    """a.max(axis=1) as column-wise maxima (a maximum is order-free; NaN propagates)."""
    m = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        np.maximum(m, a[:, j], out=m)
    return m


def _check_alphabet(k: int) -> None:
    if not 1 <= k <= MAX_ALPHABET:
        raise ValueError(f"alphabet size {k} outside 1..{MAX_ALPHABET}")


def _gather_t(x: np.ndarray, s0: int, m: int, ns: int, bs: int) -> np.ndarray:
    """(ns, k, bs) float64: rows s0 .. s0+m-1 of x (N, k), then copies of the
    last, transposed per sub-block."""
    k = x.shape[1]
    out = np.empty((ns, k, bs), dtype=np.float64)
    rows = x[s0 : s0 + m] if m == ns * bs else x[_rows_index(s0, m, ns * bs)]
    np.copyto(out, rows.reshape(ns, bs, k).transpose(0, 2, 1))
    return out


def quantize_weights(weights: np.ndarray) -> np.ndarray:
    """Non-negative weights (N, K) -> integer counts (N, K): each row sums to
    ``TOTAL``, every entry >= 1, and the map is monotone in each weight.

    Rows whose weights are all zero (or not finite) become uniform.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError("weights must be 2-D (symbols, alphabet)")
    n, k = w.shape
    _check_alphabet(k)
    if _small(n, k):
        return _quantize_rows(w.copy())
    out = np.empty((n, k), dtype=np.int64)
    if n == 0:
        return out
    bs, ns = _plan(k, n)
    for s0 in range(0, n, ns * bs):
        m = min(n - s0, ns * bs)
        nsb = -(-m // bs)
        _quantize_blocks(_gather_t(w, s0, m, nsb, bs), out[s0 : s0 + m])
    return out


def categorical_from_probs(probs: np.ndarray) -> np.ndarray:
    """Counts from (N, K) probabilities or unnormalized non-negative weights."""
    return quantize_weights(_as_f64(probs))


def categorical_from_logits(logits: np.ndarray) -> np.ndarray:
    """Counts from (N, K) logits (softmax, max-subtracted)."""
    x = _as_f32(logits)
    if x.ndim != 2:
        raise ValueError("weights must be 2-D (symbols, alphabet)")
    n, k = x.shape
    _check_alphabet(k)
    if _small(n, k):
        z = x.astype(np.float64)
        np.subtract(z, _rowmax(z)[:, None] if k <= 8 else z.max(axis=1, keepdims=True), out=z)
        flat = z.reshape(-1)
        sc = _Scratch(min(_BLOCK, n * k))
        for e0 in range(0, flat.shape[0], _BLOCK):
            _exp_inplace(flat[e0 : e0 + _BLOCK], sc)
        return _quantize_rows(z, nonneg=True)
    out = np.empty((n, k), dtype=np.int64)
    if n == 0:
        return out
    bs, ns = _plan(k, n)
    sc = _Scratch(min(_BLOCK, -(-n // bs) * bs * k))
    for s0 in range(0, n, ns * bs):
        m = min(n - s0, ns * bs)
        nsb = -(-m // bs)
        z = _gather_t(x, s0, m, nsb, bs)  # float32 -> float64, exact
        np.subtract(z, np.maximum.reduce(z, axis=1)[:, None, :], out=z)  # a max is order-free
        flat = z.reshape(-1)
        for e0 in range(0, flat.shape[0], _BLOCK):
            _exp_inplace(flat[e0 : e0 + _BLOCK], sc)
        _quantize_blocks(z, out[s0 : s0 + m], nonneg=True)  # det_exp: > 0 or NaN
    return out


def uniform_counts(n: int, k: int) -> np.ndarray:
    """Counts of ``n`` uniform distributions over ``k`` symbols."""
    return quantize_weights(np.ones((n, k)))


# ---------------------------------------------------------------------------
# discretized logistic mixtures


def mixture_params(means, log_scales, logit_weights=None):
    """(mu, inverse scales, unnormalized weights pi, sum of pi), each (N, M)/(N, 1):
    the form :func:`windowed_mixture_table` takes. Row-wise, so the rows of a
    subset get the same floats as when computed for all rows at once."""
    mu = _as_f64(means)
    ls = _as_f64(log_scales)
    if mu.ndim == 1:
        mu, ls = mu[:, None], ls[:, None]
    if logit_weights is None:
        pi = np.ones_like(mu)
    else:
        lw = _as_f64(logit_weights).reshape(mu.shape)
        pi = det_exp(lw - lw.max(axis=1, keepdims=True))
    norm = np.cumsum(pi, axis=1)[:, -1:]
    inv_s = det_exp(-np.clip(ls, -7.0, 12.0))
    return mu, inv_s, pi, norm


_mixture_params = mixture_params


def logistic_mixture_weights(
    support: np.ndarray, means, log_scales, logit_weights=None, lo=None, hi=None
) -> np.ndarray:
    """Unnormalized probability mass of a mixture of discretized logistics on
    integer bins (divide by the sum of the mixture weights to normalize).

    ``support``: (N, K) integers (the bins of each row). ``means``,
    ``log_scales``, ``logit_weights``: (N, M) for M components (or (N,) for one).
    Bin x covers [x - 0.5, x + 0.5]; the bins at ``lo`` and ``hi`` (if given)
    extend to -inf and +inf, as in PixelCNN++. Returns float64 (N, K).
    """
    mu, inv_s, pi, _ = _mixture_params(means, log_scales, logit_weights)
    return _mixture_mass(np.asarray(support, dtype=np.float64), mu, inv_s, pi, lo, hi)


def _mixture_mass_scattered(x, mu, inv_s, pi, lo=None, hi=None):
    """Mass of bins that are not consecutive integers (each bin's two CDF
    edges evaluated from its centre)."""
    out = np.zeros(x.shape, dtype=np.float64)
    for j in range(mu.shape[1]):  # fixed summation order over components
        s = inv_s[:, j : j + 1]
        c = (x - mu[:, j : j + 1]) * s
        upper = det_sigmoid(c + 0.5 * s)
        lower = det_sigmoid(c - 0.5 * s)
        if hi is not None:
            upper = np.where(x >= hi, 1.0, upper)
        if lo is not None:
            lower = np.where(x <= lo, 0.0, lower)
        mass = upper - lower
        np.maximum(mass, 0.0, out=mass)
        mass *= pi[:, j : j + 1]
        out += mass
    return out


class _MassKernel:
    """Mixture mass of consecutive bins on transposed blocks: edges (W+1, b)
    -> masses (W, b) accumulated over the components in order 0..M-1, with
    per-row parameters (M, b). Components are evaluated a group at a time
    (as many as fit in a block: all of them for small tables, where the
    number of numpy calls, not the arithmetic, is the cost); the masses are
    still added to the accumulator one component after the other, 0..M-1."""

    def __init__(self, width: int, rows: int, components: int):
        self.g = max(1, min(components, _BLOCK // ((width + 1) * rows)))
        self.cdf = np.empty((self.g, width + 1, rows), dtype=np.float64)
        self.mass = np.empty((self.g, width, rows), dtype=np.float64)
        self.sc = _Scratch(self.cdf.size)

    def run(self, edges, mu_t, inv_s_t, pi_t, acc, lo_mask=None, hi_mask=None):
        """acc (W, b) <- sum_j pi_j * max(sigma((e_{i+1} - mu_j) s_j) - sigma((e_i - mu_j) s_j), 0),
        with the reference's folding: a bin in ``hi_mask`` has upper CDF 1, one in
        ``lo_mask`` lower CDF 0 (masks (W, b) bool or None)."""
        w1, b = edges.shape
        m = mu_t.shape[0]
        full = b == self.cdf.shape[2]
        for j0 in range(0, m, self.g):
            g = min(self.g, m - j0)
            cdf = self.cdf[:g] if full else np.empty((g, w1, b))
            mass = self.mass[:g] if full else np.empty((g, w1 - 1, b))
            sl = slice(j0, j0 + g)
            np.subtract(mu_t[sl, None, :], edges, out=cdf)      # -(e - mu) exactly
            np.multiply(cdf, inv_s_t[sl, None, :], out=cdf)     # -((e - mu) * s) exactly
            _sigmoid_of_neg_inplace(cdf.reshape(-1), self.sc)   # sigma((e - mu) * s)
            if hi_mask is not None or lo_mask is not None:
                upper = cdf[:, 1:] if hi_mask is None else np.where(hi_mask, 1.0, cdf[:, 1:])
                lower = cdf[:, :-1] if lo_mask is None else np.where(lo_mask, 0.0, cdf[:, :-1])
                np.subtract(upper, lower, out=mass)
            else:
                np.subtract(cdf[:, 1:], cdf[:, :-1], out=mass)
            np.maximum(mass, 0.0, out=mass)
            np.multiply(mass, pi_t[sl, None, :], out=mass)
            for jj in range(g):                                 # components in order
                if j0 + jj == 0:
                    np.add(mass[0], 0.0, out=acc)               # 0.0 + mass, as from zeros
                else:
                    np.add(acc, mass[jj], out=acc)


def _consecutive(x: np.ndarray) -> bool:
    return x.shape[1] > 1 and bool(np.all(x[:, 1:] - x[:, :-1] == 1.0))


def _mixture_mass(x, mu, inv_s, pi, lo=None, hi=None):
    """Mass of each bin of ``x`` (N, K); when the bins of a row are consecutive
    integers, each CDF edge is evaluated once."""
    if not _consecutive(x):
        return _mixture_mass_scattered(x, mu, inv_s, pi, lo, hi)
    n, w = x.shape
    out = np.empty((n, w), dtype=np.float64)
    if n == 0:
        return out
    b, _ = _plan(w + 1, n)
    ker = _MassKernel(w, b, mu.shape[1])
    edges = np.empty((w + 1, b), dtype=np.float64)
    acc = np.empty((w, b), dtype=np.float64)
    mu_t, inv_s_t, pi_t = (np.ascontiguousarray(a.T) for a in (mu, inv_s, pi))
    for s in range(0, n, b):
        e = min(n, s + b)
        m = e - s
        ed = edges[:, :m] if m == b else np.empty((w + 1, m))
        ac = acc[:, :m] if m == b else np.empty((w, m))
        xt = x[s:e].T
        np.subtract(xt[:1], 0.5, out=ed[:1])
        np.add(xt, 0.5, out=ed[1:])
        hi_mask = None if hi is None else xt >= hi
        lo_mask = None if lo is None else xt <= lo
        ker.run(ed, mu_t[:, s:e], inv_s_t[:, s:e], pi_t[:, s:e], ac, lo_mask, hi_mask)
        np.copyto(out[s:e], ac.T)
    return out


def logistic_mixture_counts(lo: int, hi: int, means, log_scales, logit_weights=None) -> np.ndarray:
    """Counts (N, hi-lo+1) of a discretized logistic mixture on [lo, hi]; symbol
    index i stands for the integer lo + i. Tails fold into the end bins."""
    n = np.asarray(means).shape[0]
    support = np.broadcast_to(np.arange(lo, hi + 1, dtype=np.float64), (n, hi - lo + 1))
    return quantize_weights(logistic_mixture_weights(support, means, log_scales, logit_weights, lo, hi))


def windowed_logistic_mixture_counts(
    centers: np.ndarray, half_window: int, means, log_scales, logit_weights=None
) -> np.ndarray:
    """Counts (N, 2*half_window + 2) for values in [c - hw, c + hw] around each
    integer center c, plus a last *escape* symbol carrying the tail mass, for
    latents whose range is too wide for a full table."""
    mu, inv_s, pi, norm = _mixture_params(means, log_scales, logit_weights)
    c = np.asarray(centers, dtype=np.int64)
    return windowed_mixture_table(c, half_window, mu, inv_s, pi, norm)


_EXACT = 1 << 52  # integers below this in magnitude are exact in float64


def windowed_mixture_table(c, half_window: int, mu, inv_s, pi, norm, exclude: int = -1) -> np.ndarray:
    """Counts over the window ``c - hw .. c + hw`` of each row under a mixture
    in :func:`mixture_params` form, without the offsets ``|o| <= exclude``
    (a ring around an inner window coded before; -1: none), plus a last escape
    symbol with mass ``max(norm - sum of the whole window's masses, 0)`` (the
    sum left to right over all ``2 hw + 1`` bins, excluded ones included).

    ``exclude = -1`` is :func:`windowed_logistic_mixture_counts`; a ring is the
    outer table of :class:`amdcompress.models.idf.coding.PartCoder`, built
    without its masses ever leaving the transposed blocks."""
    return MixtureRows(c, mu, inv_s, pi, norm).table(half_window, exclude)


class MixtureRows:
    """Windowed tables of many mixtures (one per row), on subsets of the rows:
    the parameters (:func:`mixture_params` form, (N, M)) are transposed once,
    and each table gathers its rows' columns straight into its blocks."""

    def __init__(self, centers, mu, inv_s, pi, norm):
        self.c = np.asarray(centers, dtype=np.int64).reshape(-1)
        self.mu_t, self.inv_s_t, self.pi_t = (np.ascontiguousarray(np.asarray(a, dtype=np.float64).T)
                                              for a in (mu, inv_s, pi))
        self.norm = np.asarray(norm, dtype=np.float64).reshape(-1)

    def table(self, half_window: int, exclude: int = -1, rows: np.ndarray | None = None) -> np.ndarray:
        """:func:`windowed_mixture_table` of the rows ``rows`` (all if None)."""
        hw = int(half_window)
        rows = np.arange(self.c.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp).reshape(-1)
        c = self.c[rows]
        n = c.shape[0]
        w = 2 * hw + 1
        ex = min(int(exclude), hw)
        k = w + 1 if ex < 0 else w - 2 * ex
        exact = n > 0 and w > 1 and int(c.max()) + hw < _EXACT and int(c.min()) - hw > -_EXACT
        if not exact:  # bins not provably consecutive floats: the definition, verbatim
            offs = np.arange(-hw, hw + 1, dtype=np.int64)
            keep = np.abs(offs) > ex
            mu, inv_s, pi = (a[:, rows].T for a in (self.mu_t, self.inv_s_t, self.pi_t))
            support = (c[:, None] + offs[None, :]).astype(np.float64)
            m = _mixture_mass(support, mu, inv_s, pi)
            tail = np.maximum(self.norm[rows][:, None] - np.cumsum(m, axis=1)[:, -1:], 0.0)
            return quantize_weights(np.concatenate([m[:, keep], tail], axis=1))
        _check_alphabet(k)
        out = np.empty((n, k), dtype=np.int64)
        ring = ex >= 0
        lo_end, hi_start = hw - ex, hw + ex + 1        # ring: bins [0, lo_end) and [hi_start, w)
        # the bins of the support x = c + offs have edges (c - hw + j) - 0.5, j = 0 .. 2 hw + 1
        for s0, m, acc, norm in self._mass_blocks(rows, c - hw, 1, w):
            window = _col_sums(acc[:, :w])                      # left to right over the whole window
            tail = acc[:, w]
            np.subtract(norm, window, out=tail)
            np.maximum(tail, 0.0, out=tail)
            if ring:
                q = np.empty((acc.shape[0], k, acc.shape[2]), dtype=np.float64)
                q[:, :lo_end] = acc[:, :lo_end]
                q[:, lo_end : k - 1] = acc[:, hi_start:w]
                q[:, k - 1] = tail
                _quantize_blocks(q, out[s0 : s0 + m], nonneg=True)
            else:
                # the quantizer's row total sums the same columns in the same order: the
                # window's sum, then the escape
                _quantize_blocks(acc, out[s0 : s0 + m], np.add(window, tail, out=window), nonneg=True)
        return out

    def _mass_blocks(self, rows: np.ndarray, starts: np.ndarray, step: int, bins: int):
        """The mixture masses of ``bins`` bins of ``step`` integers from ``starts``
        (one per row of ``rows``), in transposed super-blocks: yields (first
        row, rows m, acc (sub-blocks, bins + 1, columns) whose first ``bins``
        entries are the masses and whose last is free for an escape, the rows'
        norms (sub-blocks, columns)); the rows are padded to whole sub-blocks
        with copies of the last one. Edges ``start + j*step - 1/2`` are exact
        (integers below 2**52, then an exact half), so a row's masses do not
        depend on how its bins are written down."""
        n = rows.shape[0]
        bs, ns = _plan(bins + 1, n)
        ker = _MassKernel(bins, bs, self.mu_t.shape[0])
        npad = -(-n // bs) * bs
        pick = np.arange(n) if npad == n else _rows_index(0, n, npad)
        pad = rows[pick]
        mu_t, inv_s_t, pi_t = (np.take(a, pad, axis=1) for a in (self.mu_t, self.inv_s_t, self.pi_t))
        norm, sp = self.norm[pad], starts[pick]
        offs = np.arange(0, bins * step + 1, step, dtype=np.int64).reshape(-1, 1)
        edges = np.empty((bins + 1, bs), dtype=np.float64)
        acc = None
        for s0 in range(0, n, ns * bs):
            m = min(n - s0, ns * bs)
            nsb = -(-m // bs)
            cols = slice(s0, s0 + nsb * bs)
            sg = sp[cols].reshape(nsb, bs)
            mug, isg, pig = (a[:, cols].reshape(a.shape[0], nsb, bs) for a in (mu_t, inv_s_t, pi_t))
            if acc is None or acc.shape[0] != nsb:
                acc = np.empty((nsb, bins + 1, bs), dtype=np.float64)
            for i in range(nsb):
                np.add(sg[i][None, :], offs, out=edges, casting="unsafe")
                np.subtract(edges, 0.5, out=edges)
                ker.run(edges, mug[:, i], isg[:, i], pig[:, i], acc[i, :bins])
            yield s0, m, acc, norm[cols].reshape(nsb, bs)

    def binned_table(self, starts: np.ndarray, step: int, bins: int, escape: bool,
                     rows: np.ndarray | None = None) -> np.ndarray:
        """Counts (n, bins [+ 1]) over ``bins`` consecutive bins of ``step``
        integers each, bin ``i`` of a row covering ``start + i*step .. start +
        (i+1)*step - 1`` (``starts``: one integer per row of ``rows``), its
        mass the mixture's on that range (the CDF at the range's two outer
        edges); with ``escape``, a last symbol with mass ``max(norm - sum of
        the bins' masses, 0)`` (summed left to right).

        Two-level coding builds on it: a row's window cut into bins of
        ``step`` (``escape``: the rest of the line), then the bins of one
        ``step``-wide range (``step = 1``, no escape). Each mass costs two CDF
        evaluations per component whatever ``step`` is, so a window of ``W``
        values costs about ``W/step + step`` instead of ``W``. Rows are
        independent: a row's counts do not depend on the others coded with it.
        Deterministic like every table here (IEEE +, -, *, / and
        :func:`det_exp` in a fixed order)."""
        step, bins = int(step), int(bins)
        rows = np.arange(self.c.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp).reshape(-1)
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        n = rows.shape[0]
        if starts.shape[0] != n:
            raise ValueError("one start per row")
        if step < 1 or bins < 1:
            raise ValueError("step and bins must be positive")
        k = bins + 1 if escape else bins
        _check_alphabet(k)
        out = np.empty((n, k), dtype=np.int64)
        if n == 0:
            return out
        span = bins * step
        if not (int(starts.max()) + span < _EXACT and int(starts.min()) > -_EXACT):
            raise ValueError("bin edges beyond the exact integers of float64")
        for s0, m, acc, norm in self._mass_blocks(rows, starts, step, bins):
            if escape:
                inside = _col_sums(acc[:, :bins])                   # left to right over the bins
                tail = acc[:, bins]
                np.subtract(norm, inside, out=tail)
                np.maximum(tail, 0.0, out=tail)
                # the quantizer's row total: the bins' sum, then the escape (the same order)
                _quantize_blocks(acc, out[s0 : s0 + m], np.add(inside, tail, out=inside), nonneg=True)
            else:
                _quantize_blocks(acc[:, :bins], out[s0 : s0 + m], nonneg=True)
        return out
