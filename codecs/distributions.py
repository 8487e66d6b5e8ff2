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
"""
from __future__ import annotations

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


def det_exp(x: np.ndarray) -> np.ndarray:
    """exp(x) in float64 from correctly rounded operations only: bit-identical on
    every IEEE-754 machine. Relative error below 2e-12; clamps to [-740, 705]."""
    x = np.clip(np.asarray(x, dtype=np.float64), -740.0, 705.0)
    k = np.rint(x * _INV_LN2)
    r = x - k * _LN2_HI
    r -= k * _LN2_LO
    p = np.full_like(r, _EXP_COEFFS[-1])
    for c in reversed(_EXP_COEFFS[:-1]):
        p *= r
        p += c
    return np.ldexp(p, k.astype(np.int32), out=p)


def det_sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) with :func:`det_exp`."""
    e = det_exp(-np.asarray(x, dtype=np.float64))
    e += 1.0
    return np.reciprocal(e, out=e)


def _as_f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def quantize_weights(weights: np.ndarray) -> np.ndarray:
    """Non-negative weights (N, K) -> integer counts (N, K): each row sums to
    ``TOTAL``, every entry >= 1, and the map is monotone in each weight.

    Rows whose weights are all zero (or not finite) become uniform.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError("weights must be 2-D (symbols, alphabet)")
    n, k = w.shape
    if not 1 <= k <= MAX_ALPHABET:
        raise ValueError(f"alphabet size {k} outside 1..{MAX_ALPHABET}")
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


def categorical_from_probs(probs: np.ndarray) -> np.ndarray:
    """Counts from (N, K) probabilities or unnormalized non-negative weights."""
    return quantize_weights(_as_f64(probs))


def categorical_from_logits(logits: np.ndarray) -> np.ndarray:
    """Counts from (N, K) logits (softmax, max-subtracted)."""
    z = _as_f64(logits)
    z = z - z.max(axis=1, keepdims=True)
    return quantize_weights(det_exp(z))


def uniform_counts(n: int, k: int) -> np.ndarray:
    """Counts of ``n`` uniform distributions over ``k`` symbols."""
    return quantize_weights(np.ones((n, k)))


def _mixture_params(means, log_scales, logit_weights):
    """(mu, inverse scales, unnormalized weights pi, sum of pi), each (N, M)/(N, 1)."""
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


def _mixture_mass(x, mu, inv_s, pi, lo=None, hi=None):
    """Mass of each bin of ``x`` (N, K); when the bins of a row are consecutive
    integers, each CDF edge is evaluated once."""
    consecutive = x.shape[1] > 1 and bool(np.all(x[:, 1:] - x[:, :-1] == 1.0))
    out = np.zeros(x.shape, dtype=np.float64)
    for j in range(mu.shape[1]):  # fixed summation order over components
        s = inv_s[:, j : j + 1]
        if consecutive:
            edges = np.concatenate([x[:, :1] - 0.5, x + 0.5], axis=1)
            cdf = det_sigmoid((edges - mu[:, j : j + 1]) * s)
            upper, lower = cdf[:, 1:], cdf[:, :-1]
        else:
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
    offs = np.arange(-half_window, half_window + 1, dtype=np.int64)
    support = (c[:, None] + offs[None, :]).astype(np.float64)
    w = _mixture_mass(support, mu, inv_s, pi)
    tail = np.maximum(norm - np.cumsum(w, axis=1)[:, -1:], 0.0)
    return quantize_weights(np.concatenate([w, tail], axis=1))
