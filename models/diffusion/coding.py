"""Exact bits-back coding of text along the multinomial diffusion chain.

For a chain t_0 = 0 < t_1 < ... < t_S = T (S = ``steps``, any subset of the
model's T training steps; :func:`amdcompress.models.diffusion.network.chain`), with the
composed forward transitions q(x_{t_i} | x_{t_{i-1}}) and the model's reverse
steps p(x_{t_{i-1}} | x_{t_i}) (:mod:`.diffusion`)::

    encode: for i = 1..S:  pop  x_{t_i}     ~ q(x_{t_i} | x_{t_{i-1}})
                           push x_{t_{i-1}} under p(x_{t_{i-1}} | x_{t_i})
            push x_T under the uniform prior
    decode: pop x_T uniformly
            for i = S..1:  pop  x_{t_{i-1}} ~ p(x_{t_{i-1}} | x_{t_i})
                           push x_{t_i}     under q(x_{t_i} | x_{t_{i-1}})

In codecs: one generation is :func:`amdcompress.codecs.bits_back_chain` (the
nested :func:`~amdcompress.codecs.bits_back` of the chain, flat) with the uniform
prior, and the generations are :func:`amdcompress.codecs.generations` with a
:class:`amdcompress.codecs.GrowingPlan` (the initial-bits ledger) choosing their
sizes. Written that way, the coder writes the same bytes as the loops it
replaced (stream version 1 is unchanged).

The message is a stack: the decoder's first pop undoes the encoder's last push,
and each decoder step (pop x_{t_{i-1}}, push x_{t_i}) undoes the encoder's step i
in reverse, restoring the message to what it was before that step. Net growth:
sum_i [-log p(x_{t_{i-1}}|x_{t_i}) + log q(x_{t_i}|x_{t_{i-1}})] - log p(x_T),
the negative ELBO of the chain on average. The first pop needs bits that are
not there yet: the message starts as :meth:`Message.seeded`, and only the
initial bits actually consumed are stored.

Initial bits and generations. Along one chain the message first *shrinks*:
after step i it is short of about H(x_{t_i} | x_0) - sum_{j<=i} KL_j bits per
symbol (up to H(x_T | x_0) ~ log2 27), and only the final prior push pays that
back, leaving -ELBO. Coding all chunks of a file in one vectorized chain would
therefore draw nearly log2 27 bits per symbol of initial bits. Instead the
symbols are cut into *generations*, coded one after another, each one's debt
paid by the bits the earlier ones left on the stack: the first generation is
short (``first`` = 64 symbols, paid by the initial-bits stream), each later one
as long as the surplus so far covers at its worst debt per symbol seen so far
(times 1.1), rounded down to whole 256-symbol chunks. Generations grow
geometrically, so a file needs O(log n) of them; only the first one's debt is
overhead. The encoder chooses the plan and records it, the decoder undoes the
generations in reverse order.

Vectorized: within a generation the symbols are cut into chunks of 256 (the
last one shorter, coded as a chunk of its own length, so every position is
real); each step processes the chunks in blocks of ``block`` chunks (one
network call, one coder call each). Within step i the encoder goes through the
blocks in order, the decoder in reverse order, so the stack discipline holds
per block.

Determinism: the network runs in float32 on CPU with one thread; its
log-probabilities are rounded to multiples of 2^-12, exponentiated with
:func:`amdcompress.codecs.det_exp`, mixed with the schedule's float64 constants
using only +, *, / (no cancellation: all terms are positive), and quantized
with :func:`amdcompress.codecs.quantize_weights`. The decoder checks that it
ends exactly on the untouched initial-bits stream.

Stream layout (``encode`` output)::

    1 byte   version (1)
    varint   steps S
    varint   block (chunks per network call)
    varint   number of symbols n
    varint   number of generations G, then G varints: their sizes (sum n)
    rest     the ANS message (:meth:`Message.to_bytes`); absent when n = 0
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from amdcompress.codecs import (Categorical, Codec, GrowingPlan, Message, Uniform, bits_back_chain, det_exp, generations,
                               quantize_weights)
from amdcompress.codecs.core import information_bits
from amdcompress.codecs.errors import AmdError

from ..determinism import coding_mode
from .network import CHUNK, K, Denoiser, chain
from amdcompress.codecs.varint import read_varint, write_head, write_varint

VERSION = 1
GRID_BITS = 12           # log-probabilities are rounded to multiples of 2^-GRID_BITS
DEFAULT_BLOCK = 64       # chunks per network call (recorded in the stream)
FIRST_GENERATION = 64    # symbols in the first generation (paid by initial bits)
MAX_BLOCK = 4096


# --------------------------------------------------------------------------- helpers


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    return read_varint(buf, pos, lambda: AmdError("corrupt payload: truncated diffusion stream header"))


def seed_words_for(n: int) -> int:
    """Initial-bits words to start from: more than any single pop of all n
    symbols can take (log2 27 < 5 bits each); only the consumed part is stored."""
    return 64 + (5 * n + 31) // 32


def blocks(n: int, block: int, length: int = CHUNK) -> list[tuple[int, int, int]]:
    """(start, chunks, chunk length) of each network call: full chunks in groups
    of ``block``, then the last partial chunk alone."""
    out = []
    nfull = n // length
    for c in range(0, nfull, block):
        nc = min(block, nfull - c)
        out.append((c * length, nc, length))
    if n % length:
        out.append((nfull * length, 1, n % length))
    return out


def round_logp(lp: np.ndarray) -> np.ndarray:
    """float32 log-probabilities -> float64 multiples of 2^-GRID_BITS (exact ops)."""
    scale = float(1 << GRID_BITS)
    return np.round(np.asarray(lp, dtype=np.float64) * scale) / scale


class _Ticker:
    """Progress in chunk-steps (a chunk = 256 symbols coded through one step):
    ``progress(total)`` once, then integer ``update(k)`` calls after each step."""

    def __init__(self, progress, steps: int, n: int):
        self.total = steps * -(-n // CHUNK)
        self.bar = progress(self.total)
        self.scale = self.total / max(1, steps * n)
        self.syms = 0
        self.done = 0

    def add(self, syms: int) -> None:
        self.syms += syms
        now = min(self.total, int(self.syms * self.scale + 1e-9))
        if now > self.done and self.bar is not None:
            self.bar.update(now - self.done)
        self.done = max(self.done, now)

    def close(self) -> None:
        if self.bar is not None and self.done < self.total:
            self.bar.update(self.total - self.done)
        self.done = self.total


class StepTables:
    """The coding distributions of one chain step s -> t (s < t)."""

    def __init__(self, abar: np.ndarray, s: int, t: int):
        self.s, self.t = int(s), int(t)
        a = float(abar[t]) / float(abar[s])
        self.off = (1.0 - a) / K            # q(x_t = j | x_s != j)
        self.on = a + self.off              # q(x_t = x_s | x_s)
        self.abar_s = float(abar[s])
        self.uni_s = (1.0 - self.abar_s) / K
        trans = np.full((K, K), self.off)
        trans[np.arange(K), np.arange(K)] = self.on
        self.forward_counts = quantize_weights(trans)  # row x_s: q(x_t | x_s)

    def q_counts(self, x_s: np.ndarray) -> np.ndarray:
        return self.forward_counts[x_s]

    def p_weights(self, logp_rounded: np.ndarray, x_t: np.ndarray) -> np.ndarray:
        """Unnormalized p(x_s | x_t) oc q(x_t | x_s) (abar_s x0hat + (1 - abar_s)/K), (N, K) float64."""
        z = logp_rounded - logp_rounded.max(axis=1, keepdims=True)
        e = det_exp(z)
        x0p = e / np.cumsum(e, axis=1)[:, -1:]
        w = x0p * self.abar_s + self.uni_s
        trans = np.full(w.shape, self.off)
        trans[np.arange(len(x_t)), x_t] = self.on
        return w * trans

    def kl_bits(self, w: np.ndarray, x_t: np.ndarray, x0: np.ndarray) -> float:
        """Statistics only (not a coding path): sum over rows of
        KL(q(x_s|x_t,x_0) || p(x_s|x_t)) in bits, p given by weights ``w``."""
        n = len(x_t)
        r = np.arange(n)
        qm = np.full((n, K), self.uni_s)
        qm[r, x0] += self.abar_s
        trans = np.full((n, K), self.off)
        trans[r, x_t] = self.on
        q = qm * trans
        q /= q.sum(axis=1, keepdims=True)
        p = w / w.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(q > 0, q * (np.log2(q) - np.log2(p)), 0.0)
        return float(terms.sum())


class _Links(Sequence):
    """The links of one generation's chain, made on demand (step i's links,
    one per slot, for i = 1..S): the tables of one step at a time, no closure
    kept for links not in use."""

    def __init__(self, coder: "DiffusionCoder", ts: np.ndarray, bounds: list, bar, enc: "_Encoding | None"):
        self.coder, self.ts, self.bounds, self.bar, self.enc = coder, ts, bounds, bar, enc
        self._tab: StepTables | None = None

    def __len__(self) -> int:
        return (len(self.ts) - 1) * len(self.bounds)

    def __getitem__(self, k: int):
        if not 0 <= k < len(self):
            raise IndexError(k)
        i, j = divmod(k, len(self.bounds))
        i += 1
        if self._tab is None or (self._tab.s, self._tab.t) != (int(self.ts[i - 1]), int(self.ts[i])):
            self._tab = StepTables(self.coder.abar, self.ts[i - 1], self.ts[i])
        tab, bd = self._tab, self.bounds[j]
        return (j, self.coder._likelihood(tab, self.ts[i], bd, self.bar, self.enc),
                self.coder._posterior(tab, bd, self.bar, self.enc))


class _Encoding:
    """What only the encoder's side of a generation has: its symbols ``x``, the
    statistics dict (or None) and the growing plan."""

    def __init__(self, x: np.ndarray, stats: dict | None, plan: GrowingPlan):
        self.x, self.stats, self.plan = x, stats, plan

    def add(self, **bits: float) -> None:
        for k, v in bits.items():
            self.stats[k] = self.stats.get(k, 0.0) + v


class DiffusionCoder:
    """Bits-back coder of symbol sequences (0..26) with a :class:`Denoiser`."""

    def __init__(self, model: Denoiser, block: int = DEFAULT_BLOCK, first: int = FIRST_GENERATION,
                 safety: float = 1.1):
        self.model = model.eval()
        self.block = int(block)
        self.first = int(first)
        self.safety = float(safety)
        self.abar = model.abar()
        self.T = model.T

    # -- network -----------------------------------------------------------
    @torch.no_grad()
    def _logp(self, x_t: np.ndarray, t: int, nc: int, length: int) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x_t, dtype=np.int64).reshape(nc, length))
        tt = torch.full((nc,), int(t), dtype=torch.int64)
        lp = self.model(xt, tt).reshape(nc * length, -1).numpy()
        return round_logp(lp)

    def noise_entropy_bits(self) -> float:
        """H(x_T | x_0) per symbol: the most a chain can owe before its prior push."""
        ab = float(self.abar[-1])
        on, off = ab + (1 - ab) / K, (1 - ab) / K
        return -(on * math.log2(on) + ((K - 1) * off * math.log2(off) if off > 0 else 0.0))

    # -- one generation: a bits-back chain (codecs.bits_back_chain) ---------
    def _generation(self, g: int, ts: np.ndarray, block: int, bar, enc: "_Encoding | None" = None) -> Codec:
        """The codec of one generation of ``g`` symbols: the chain's steps as
        links of :func:`~amdcompress.codecs.bits_back_chain` over the slots (one
        per network call) of :func:`blocks`, step 1's links first
        (:class:`_Links`, made on demand), then the uniform prior on x_T. Link
        (i, slot): latent x_{t_i} ~ q(x_{t_i} | x_{t_{i-1}}) (posterior),
        likelihood p(x_{t_{i-1}} | x_{t_i}) from the network. The decoder checks
        that the stream can hold x_T before it lays out anything. ``enc``
        (encoder only): the growing plan that watches every q pop (initial-bits
        ledger), and the statistics."""
        def bounds() -> list:
            return [(b0, b0 + nc * length, nc, length) for b0, nc, length in blocks(g, block)]

        def chain_codec(bds: list) -> Codec:
            def prior_push(m: Message, slots) -> Message:
                return Uniform(np.full(g, K)).push(m, np.concatenate(slots))

            def prior_pop(m: Message):
                m, x = Uniform(np.full(g, K)).pop(m)
                return m, [x[lo:hi] for lo, hi, _, _ in bds]

            return bits_back_chain(Codec(prior_push, prior_pop), _Links(self, ts, bds, bar, enc))

        def push(m: Message, x: np.ndarray) -> Message:
            bds = bounds()
            return chain_codec(bds).push(m, [x[lo:hi] for lo, hi, _, _ in bds])

        def pop(m: Message):
            m.require_bits(g * math.log2(K))  # before allocating: the stream must hold x_T of the whole generation
            m, slots = chain_codec(bounds()).pop(m)
            return m, np.concatenate(slots)

        return Codec(push, pop)

    @staticmethod
    def _posterior(tab: StepTables, bd, bar, enc: "_Encoding | None"):
        """q(x_t | x_s) of one slot. Encoder: its pops are watched by the plan;
        decoder: its push ends the step on that slot (progress)."""

        def posterior(xs: np.ndarray) -> Codec:
            q = Categorical(tab.q_counts(xs))
            if enc is not None:
                return enc.plan.watched(q)
            if bar is None:
                return q
            return Codec(lambda m, xt: (bar.add(bd[1] - bd[0]), q.push(m, xt))[1], q.pop)

        return posterior

    def _likelihood(self, tab: StepTables, t: int, bd, bar, enc: "_Encoding | None"):
        """p(x_s | x_t) of one slot, from the network. Encoder: its push ends the
        step on that slot (statistics, progress)."""
        lo, hi, nc, length = bd

        def likelihood(xt: np.ndarray) -> Codec:
            w = tab.p_weights(self._logp(xt, t, nc, length), xt)
            counts = quantize_weights(w)
            p = Categorical(counts)
            if enc is None or (enc.stats is None and bar is None):
                return p

            def push(m: Message, xs) -> Message:
                if enc.stats is not None:
                    enc.add(elbo_bits=tab.kl_bits(w, xt, enc.x[lo:hi]),
                            ideal_bits=information_bits(counts, xs) - information_bits(tab.q_counts(xs), xt))
                if bar is not None:
                    bar.add(hi - lo)
                return p.push(m, xs)

            return Codec(push, p.pop)

        return likelihood

    # -- coding --------------------------------------------------------------
    def encode(self, symbols: np.ndarray, steps: int, progress=None, stats: dict | None = None) -> bytes:
        """Symbols (0..26) -> stream bytes. ``stats`` (a dict) receives the
        chain's ELBO estimate (KL form, with the encoder's own x_t samples),
        the ideal information content of the coded symbols, and the plan."""
        x = np.ascontiguousarray(symbols, dtype=np.int64).reshape(-1)
        n = x.size
        if n and (x.min() < 0 or x.max() >= K):
            raise ValueError("symbols outside 0..26")
        if not 1 <= steps <= self.T:
            raise AmdError(f"diffusion steps must be in 1..{self.T}, got {steps}")
        head = write_head(VERSION, steps, self.block, n)
        if n == 0:
            return head + write_varint(0)
        ts = chain(self.T, steps)
        bar = _Ticker(progress, steps, n) if progress is not None else None
        m = Message.seeded(seed_words_for(n))
        plan = GrowingPlan(self.first, safety=self.safety, align=CHUNK)
        with coding_mode():
            piece = lambda lo, g: self._generation(g, ts, self.block, bar, _Encoding(x[lo : lo + g], stats, plan))  # noqa: E731
            m = generations(piece, plan).push(m, x)
        gens = plan.sizes
        if bar is not None:
            bar.close()
        if stats is not None:
            from .network import prior_kl_bits

            stats["elbo_bits"] = stats.get("elbo_bits", 0.0) + n * prior_kl_bits(float(self.abar[-1]))
            stats["ideal_bits"] = stats.get("ideal_bits", 0.0) + n * math.log2(K)
            stats.update(symbols=n, steps=steps, generations=gens,
                         initial_words_used=m.initial_words_used(seed_words_for(n)))
        plan = write_varint(len(gens)) + b"".join(write_varint(g) for g in gens)
        return head + plan + m.to_bytes()

    def decode(self, data: bytes, max_symbols: int | None = None, progress=None) -> np.ndarray:
        """Stream bytes -> symbols; AmdError on anything that is not a stream
        this model made."""
        data = bytes(data)
        if not data or data[0] != VERSION:
            raise AmdError("corrupt payload: unknown diffusion stream version")
        steps, pos = _read_varint(data, 1)
        block, pos = _read_varint(data, pos)
        n, pos = _read_varint(data, pos)
        if not 1 <= steps <= self.T or not 1 <= block <= MAX_BLOCK:
            raise AmdError("corrupt payload: bad diffusion stream header")
        if max_symbols is not None and n > max_symbols:
            raise AmdError("corrupt payload: symbol count exceeds the data size")
        ngens, pos = _read_varint(data, pos)
        if ngens > n:
            raise AmdError("corrupt payload: bad diffusion generation plan")
        gens = []
        for _ in range(ngens):
            g, pos = _read_varint(data, pos)
            gens.append(g)
        if sum(gens) != n or any(g < 1 for g in gens):
            raise AmdError("corrupt payload: bad diffusion generation plan")
        if n == 0:
            if pos != len(data):
                raise AmdError("corrupt payload: trailing bytes after an empty diffusion stream")
            return np.zeros(0, dtype=np.int64)
        from amdcompress.codecs import CorruptStreamError

        try:
            m = Message.from_bytes(data[pos:], seeded=True)  # pops below the seed prefix raise at once
        except CorruptStreamError as e:
            raise AmdError(f"corrupt payload ({e})") from None
        bar = _Ticker(progress, steps, n) if progress is not None else None
        ts = chain(self.T, steps)
        with coding_mode():
            m, x = generations(lambda lo, g: self._generation(g, ts, block, bar), gens).pop(m)
        if bar is not None:
            bar.close()
        if not m.is_seed_remainder(seed_words_for(n)):
            raise AmdError("corrupt payload: the diffusion chain did not return to its initial bits")
        return x


def stream_steps(data: bytes) -> int:
    """The step count recorded in an encoded stream."""
    if not data or data[0] != VERSION:
        raise AmdError("corrupt payload: unknown diffusion stream version")
    return _read_varint(bytes(data), 1)[0]


# -- the coding face the generic backend calls (models/registry.py) -----------------
DEFAULT_STEPS = 100
ENV_STEPS = "AMDCOMPRESS_DIFFUSION_STEPS"


def default_steps() -> tuple[int, str]:
    """The chain length new files are coded with when the caller names none, and
    where it came from: ``$AMDCOMPRESS_DIFFUSION_STEPS``, else :data:`DEFAULT_STEPS`."""
    import os

    env = os.environ.get(ENV_STEPS, "").strip()
    if env:
        try:
            return int(env), ENV_STEPS
        except ValueError:
            raise AmdError(f"{ENV_STEPS}={env!r} is not an integer") from None
    return DEFAULT_STEPS, "the default"


def load(weights: dict) -> DiffusionCoder:
    from .network import model_from_weights

    return DiffusionCoder(model_from_weights(weights))


def compress(coder: DiffusionCoder, sym: np.ndarray, *, progress=None, stats: dict | None = None,
             steps: int | None = None) -> bytes:
    """Symbols -> stream coded with ``steps`` chain steps (recorded in the stream,
    so decoding needs no setting); None: :func:`default_steps`."""
    steps, source = (int(steps), "--steps") if steps is not None else default_steps()
    if not 1 <= steps <= coder.T:
        raise AmdError(f"diffusion steps must be in 1..{coder.T} (got {steps} from {source})")
    return coder.encode(sym, steps, progress=progress, stats=stats)


def decompress(coder: DiffusionCoder, stream: bytes, n: int, *, progress=None) -> np.ndarray:
    return coder.decode(stream, max_symbols=n, progress=progress)


def details(stream: bytes) -> dict:
    """The chain length the file was coded with."""
    return {"chain_steps": stream_steps(stream)} if stream else {}
