"""Codecs: (push, pop) pairs over a :class:`~.message.Message`, and the
combinators that compose them (the craystack idea on constriction's engine).

The contract every codec here keeps, and the tests pin::

    m2 = codec.push(m.copy(), x)
    m3, y = codec.pop(m2)
    assert y == x and m3 == m          # data and message restored exactly

Both functions mutate the message in place and also return it, so they chain.
Vector codecs take 1-D integer arrays and code them in one call to the coder.
Every pop ends with :meth:`~.message.Message.check_drawn`: a decoder's message
popped below its floor (an exhausted or forged stream) raises at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import constriction
import numpy as np

from .distributions import TOTAL
from .message import Message

_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_UNIFORM = constriction.stream.model.Uniform()


@dataclass(frozen=True)
class Codec:
    """A pair of inverse functions over messages.

    ``push(message, data) -> message`` and ``pop(message) -> (message, data)``.
    """

    push: Callable[[Message, Any], Message]
    pop: Callable[[Message], tuple[Message, Any]]


def _symbols(x, n: int) -> np.ndarray:
    s = np.asarray(x)
    if s.shape != (n,):
        raise ValueError(f"expected {n} symbols, got shape {s.shape}")
    return np.ascontiguousarray(s, dtype=np.int32)


def Categorical(counts: np.ndarray) -> Codec:
    """Code symbols ``x[i]`` in ``0..K-1`` under row ``i`` of an integer count
    table (N, K) from :mod:`.distributions` (rows sum to ``2**24``)."""
    counts = np.asarray(counts)
    n, k = counts.shape
    probs = np.ascontiguousarray(counts, dtype=np.float64) / float(TOTAL)

    def push(m: Message, x) -> Message:
        s = _symbols(x, n)
        if n and (s.min() < 0 or s.max() >= k):
            raise ValueError(f"symbol outside 0..{k - 1}")
        if n:
            m.coder.encode_reverse(s, _CATEGORICAL, probs)
        return m

    def pop(m: Message):
        if not n:
            return m, np.zeros(0, dtype=np.int64)
        m.check_pop()
        x = np.asarray(m.coder.decode(_CATEGORICAL, probs), dtype=np.int64)
        m.check_drawn()
        return m, x

    return Codec(push, pop)


def Uniform(sizes) -> Codec:
    """Code ``x[i]`` uniformly in ``0..sizes[i]-1`` (sizes >= 1; size 1 costs nothing)."""
    sizes = np.atleast_1d(np.asarray(sizes, dtype=np.int64))
    if sizes.size and (sizes.min() < 1 or sizes.max() >= 1 << 24):
        raise ValueError("uniform sizes must be in 1..2**24-1")
    live = np.flatnonzero(sizes > 1)
    live_sizes = np.ascontiguousarray(sizes[live], dtype=np.int32)
    n = sizes.size

    def push(m: Message, x) -> Message:
        s = _symbols(x, n).astype(np.int64)
        if n and (s.min() < 0 or np.any(s >= sizes)):
            raise ValueError("symbol outside its uniform range")
        if live.size:
            m.coder.encode_reverse(np.ascontiguousarray(s[live], dtype=np.int32), _UNIFORM, live_sizes)
        return m

    def pop(m: Message):
        out = np.zeros(n, dtype=np.int64)
        if live.size:
            m.check_pop()
            out[live] = m.coder.decode(_UNIFORM, live_sizes)
            m.check_drawn()
        return m, out

    return Codec(push, pop)


def Windowed(counts: np.ndarray, centers, half_window: int, lo: int, hi: int) -> Codec:
    """Integers ``x[i]`` in ``[lo, hi]`` under a table over the window
    ``centers[i] - half_window .. centers[i] + half_window`` plus an escape
    symbol (the table's last column); escaped values are coded uniformly on
    ``[lo, hi]``. Use with :func:`~.distributions.windowed_logistic_mixture_counts`."""
    c = np.asarray(centers, dtype=np.int64)
    n = c.size
    width = 2 * half_window + 1
    table = Categorical(counts)
    span = hi - lo + 1

    def push(m: Message, x) -> Message:
        x = np.asarray(x, dtype=np.int64).reshape(n)
        if n and (x.min() < lo or x.max() > hi):
            raise ValueError(f"value outside [{lo}, {hi}]")
        idx = x - c + half_window
        esc = (idx < 0) | (idx >= width)
        Uniform(np.full(int(esc.sum()), span)).push(m, x[esc] - lo)
        return table.push(m, np.where(esc, width, idx))

    def pop(m: Message):
        m, idx = table.pop(m)
        esc = idx == width
        m, raw = Uniform(np.full(int(esc.sum()), span)).pop(m)
        x = idx + c - half_window
        x[esc] = raw + lo
        return m, x

    return Codec(push, pop)


def serial(codecs: Sequence[Codec]) -> Codec:
    """Code a tuple ``(x_0, ..., x_n)`` with ``codecs[i]`` for ``x_i``; pops in
    order 0..n, so pushes run in reverse."""
    codecs = list(codecs)

    def push(m: Message, xs) -> Message:
        xs = list(xs)
        if len(xs) != len(codecs):
            raise ValueError("serial: wrong number of items")
        for codec, x in zip(reversed(codecs), reversed(xs)):
            m = codec.push(m, x)
        return m

    def pop(m: Message):
        out = []
        for codec in codecs:
            m, x = codec.pop(m)
            out.append(x)
        return m, tuple(out)

    return Codec(push, pop)


def chained(first: Codec, then: Callable[[Any], Codec]) -> Codec:
    """Code ``(a, b)`` where b's codec depends on a: ``then(a)``. The decoder
    pops a first, so the encoder pushes b first."""

    def push(m: Message, ab) -> Message:
        a, b = ab
        m = then(a).push(m, b)
        return first.push(m, a)

    def pop(m: Message):
        m, a = first.pop(m)
        m, b = then(a).pop(m)
        return m, (a, b)

    return Codec(push, pop)


def bits_back_joint(joint: Codec, posterior: Callable[[Any], Codec]) -> Codec:
    """Bits-back coding of x with a latent z under any joint codec of ``(x, z)``
    (Townsend et al. 2019; the joint may factor either way, e.g.
    ``chained(p(x), lambda x: p(z|x))``).

    push: pop z ~ q(z|x), push (x, z) under the joint.
    pop:  pop (x, z) under the joint, push z back under q(z|x).
    Net growth of the message: -log2 p(x, z) + log2 q(z|x), i.e. the negative
    ELBO on average, once the message holds enough bits for the first pop
    (start from :meth:`Message.seeded`).
    """

    def push(m: Message, x) -> Message:
        m, z = posterior(x).pop(m)
        return joint.push(m, (x, z))

    def pop(m: Message):
        m, (x, z) = joint.pop(m)
        return posterior(x).push(m, z), x

    return Codec(push, pop)


def observed(codec: Codec, popped: list) -> Codec:
    """``codec``, appending what each pop returns to ``popped`` (for accounting:
    e.g. the latents a bits-back encoder drew)."""

    def pop(m: Message):
        m, x = codec.pop(m)
        popped.append(x)
        return m, x

    return Codec(codec.push, pop)


def swapped(codec: Codec) -> Codec:
    """The codec of ``(b, a)`` for a codec of ``(a, b)``: same bits, pairs reversed."""
    return Codec(lambda m, ba: codec.push(m, (ba[1], ba[0])),
                 lambda m: (lambda r: (r[0], (r[1][1], r[1][0])))(codec.pop(m)))


def bits_back(
    prior: Codec, likelihood: Callable[[Any], Codec], posterior: Callable[[Any], Codec]
) -> Codec:
    """Bits-back coding of x with a latent z under the prior p(z) and the
    likelihood p(x|z): :func:`bits_back_joint` with the joint ``p(z) p(x|z)``.

    push: pop z ~ q(z|x), push x under p(x|z), push z under p(z).
    pop:  pop z under p(z), pop x under p(x|z), push z back under q(z|x).
    """
    return bits_back_joint(swapped(chained(prior, likelihood)), posterior)


def information_bits(counts: np.ndarray, symbols) -> float:
    """Exact information content, in bits, of ``symbols`` under a count table:
    what an ideal coder spends (the ANS coder is within a fraction of a percent)."""
    counts = np.asarray(counts)
    s = np.asarray(symbols, dtype=np.int64)
    p = counts[np.arange(len(s)), s].astype(np.float64) / TOTAL
    return float(-np.log2(p).sum())
