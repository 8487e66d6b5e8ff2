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


def bits_back_chain(prior: Codec, links: Sequence[tuple[int, Callable[[Any], Codec], Callable[[Any], Codec]]]) -> Codec:
    """Bits-back along a Markov chain of latents, one slot at a time.

    The data is a sequence of slots ``y_0 = x``. Link ``j = (s, likelihood,
    posterior)`` turns ``y_j`` into ``y_{j+1}`` by replacing slot ``s`` with a
    latent ``z ~ posterior(y_j[s])``; ``likelihood(z)`` codes ``y_j[s]`` given it,
    and ``prior`` codes the last ``y_L`` (a list of slots)::

        push: for j = 1..L: pop z ~ posterior_j(y[s]); push y[s] under likelihood_j(z); y[s] = z
              push y under the prior
        pop:  pop y under the prior
              for j = L..1: pop x ~ likelihood_j(y[s]); push y[s] under posterior_j(x); y[s] = x

    Bit for bit the nested ``bits_back(bits_back(... bits_back(prior, lik_L,
    post_L) ...), lik_1, post_1)`` over whole slot lists (a test pins it), but
    flat: a chain of thousands of links needs no recursion, and replacing one
    slot copies no other. Net growth: the sum over links of
    ``-log2 p(y_j[s] | z) + log2 q(z | y_j[s])`` plus the prior's cost.

    ``links`` is any sequence (``len``, indexing, ``reversed``), read in order
    by the encoder and in reverse by the decoder; it may make its items on
    demand, so a long chain holds no table or closure it is not using.
    """

    def push(m: Message, xs) -> Message:
        y = list(xs)
        for s, likelihood, posterior in links:
            m, z = posterior(y[s]).pop(m)
            m = likelihood(z).push(m, y[s])
            y[s] = z
        return prior.push(m, y)

    def pop(m: Message):
        m, y = prior.pop(m)
        y = list(y)
        for s, likelihood, posterior in reversed(links):
            m, x = likelihood(y[s]).pop(m)
            m = posterior(x).push(m, y[s])
            y[s] = x
        return m, y

    return Codec(push, pop)


def generations(piece: Callable[[int, int], Codec], sizes, backwards=None) -> Codec:
    """Code a 1-D array as consecutive pieces ("generations") on one stack:
    piece ``(start, size)`` under ``piece(start, size)``; the encoder pushes
    them first to last, the decoder pops them last to first, so every piece's
    pops (bits-back) are paid by what the pieces before it pushed, and only
    the first ones draw on the initial bits.

    ``sizes``: a sequence of piece sizes (decoder: the plan the stream records),
    or a :class:`GrowingPlan` (encoder only), which picks each size as the
    message grows and records it in ``plan.sizes``. ``backwards`` (decoder,
    optional): the pieces as ``(start, size)`` pairs, last first, in place of
    ``sizes``; an iterator may produce them lazily, so a forged length costs
    nothing before the stream runs out. The decoder holds no more than the
    pieces it has popped (memory grows with the stream)."""

    def push(m: Message, x) -> Message:
        x = np.asarray(x)
        if isinstance(sizes, GrowingPlan):
            sizes.start(m, x.size)
            while (g := sizes.next_size(m)) > 0:
                lo = sizes.done
                m = piece(lo, g).push(m, x[lo : lo + g])
                sizes.piece_done(g)
            return m
        lo = 0
        for g in sizes:
            m = piece(lo, g).push(m, x[lo : lo + g])
            lo += g
        if lo != x.size:
            raise ValueError("generations: the sizes do not add up to the data")
        return m

    def pop(m: Message):
        if isinstance(sizes, GrowingPlan):
            raise TypeError("a GrowingPlan is for the encoder; decode with the recorded sizes")
        order = backwards
        if order is None:
            sz = [int(g) for g in sizes]
            starts = np.concatenate([[0], np.cumsum(sz, dtype=np.int64)[:-1]]).tolist() if sz else []
            order = zip(reversed(starts), reversed(sz))
        out = []
        for lo, g in order:
            m, x = piece(int(lo), int(g)).pop(m)
            out.append(np.asarray(x))
        return m, (np.concatenate(out[::-1]) if out else np.zeros(0, dtype=np.int64))

    return Codec(push, pop)


class GrowingPlan:
    """The encoder's plan of growing generations, with its initial-bits ledger.

    A bits-back piece first *draws* on the message (its pops run ahead of its
    pushes) and pays back later. The ledger keeps the deepest the message went
    below its size when a piece started (:meth:`watched` pops note it) and the
    lowest the message has been overall (:attr:`floor`): the bits above that
    floor are the surplus the next piece may draw on. The first piece has
    ``first`` symbols (paid by the initial bits); each later one as many as the
    surplus covers at the worst debt per symbol seen so far times ``safety``
    (at least ``min_rate`` bits a symbol), rounded down to a multiple of
    ``align`` once it reaches ``align``, and at least ``first``. Pieces grow
    geometrically: a stream needs O(log n) of them, and only the first one's
    debt is overhead.
    """

    def __init__(self, first: int, *, safety: float = 1.1, align: int = 1, min_rate: float = 0.05):
        self.first, self.safety, self.align, self.min_rate = int(first), float(safety), int(align), float(min_rate)
        self.sizes: list[int] = []
        self.n = self.done = 0
        self.floor = self.before = self.peak = 0
        self.worst = 0.0

    def start(self, m: Message, n: int) -> None:
        self.sizes, self.n, self.done = [], int(n), 0
        self.floor = m.num_bits()
        self.worst = 0.0

    def next_size(self, m: Message) -> int:
        """The size of the next piece (0: all done); starts its ledger."""
        left = self.n - self.done
        if left <= 0:
            return 0
        if not self.sizes:
            g = self.first
        else:
            rate = max(self.worst * self.safety, self.min_rate)
            g = max(self.first, int((m.num_bits() - self.floor) / rate))
            if g >= self.align:
                g -= g % self.align
        self.before, self.peak = m.num_bits(), 0
        return min(g, left)

    def note(self, m: Message) -> None:
        """After a pop inside the current piece: how deep the message went."""
        self.peak = max(self.peak, self.before - m.num_bits())

    def watched(self, codec: Codec) -> Codec:
        """``codec``, noting the message's depth after each pop: wrap the
        codecs whose pops the encoder runs (a bits-back posterior), so that
        the ledger sees every draw on the message."""

        def pop(m: Message):
            m, x = codec.pop(m)
            self.note(m)
            return m, x

        return Codec(codec.push, pop)

    def piece_done(self, g: int) -> None:
        self.floor = min(self.floor, self.before - self.peak)
        self.worst = max(self.worst, self.peak / g)
        self.sizes.append(int(g))
        self.done += int(g)


def information_bits(counts: np.ndarray, symbols) -> float:
    """Exact information content, in bits, of ``symbols`` under a count table:
    what an ideal coder spends (the ANS coder is within a fraction of a percent)."""
    counts = np.asarray(counts)
    s = np.asarray(symbols, dtype=np.int64)
    p = counts[np.arange(len(s)), s].astype(np.float64) / TOTAL
    return float(-np.log2(p).sum())
