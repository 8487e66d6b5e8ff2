"""Exact bits-back coding of text with the coupling-prior Argmax Flow (:mod:`.argmax_coupling`).

Everything happens on the integer grid ``k = floor(v / delta)``, ``delta = 2**-b``
(``b`` fixed at training time). Per chunk of ``L`` characters (in order; the
last chunk may be partial)::

    encode chunk c:  pop k ~ Q(k | x)            (5 dims per char, q's coding tables)
                     z = f(k)                     (integer couplings, ArgmaxCouplingFlow.forward_int)
                     push z under the base        (windowed discretized logistic mixtures + escape)
    decode chunk c:  pop z under the base;  k = f^-1(z);  x = sign pattern of k
                     push k back under Q(k | x)

Chunks are chained on one ANS stack (:func:`amdcompress.codecs.generations`:
the encoder goes 0..C-1, the decoder C-1..0): each chunk's pops are paid by what the chunks before it pushed, and
only the deficit comes from the initial bits (:meth:`Message.seeded`; the file
pays for the seed words actually consumed). The chunks grow during a warm-up
(:func:`~.argmax_coupling.chunk_sizes`: 16 characters, then at most 16 + 1/8
of the characters already coded, up to ``L``), so the deficit is about H(Q)
of 16 characters rather than of a whole chunk; the last chunk takes what is
left. The benchmark reports the overhead at 1 KB, 20 KB and 1 MB.

* ``Q``: the q side of the autoregressive model's coder, unchanged
  (:func:`.argmax_coding.build_coding_tables` on this model's ``ThresholdQ``):
  per q node a window of ``W`` magnitude bins ``q_lo .. q_lo+W-1``; a 1 bit
  has ``k = q_lo + j``, a 0 bit ``k = -(q_lo + j) - 1``. The window is the
  smallest power of two (>= 16) holding q's ``mu +- 4.5 sigma`` at step ``delta``.
* Base: for each (position in chunk, dim), the discretized logistic mixture
  on grid bins (bin ``k`` covers ``[k delta, (k+1) delta)``), from parameters
  rounded to ``2**-12``, as a table over ``centre +- hw`` plus an escape symbol
  (escaped values coded uniformly on ``[-Z_LIMIT, Z_LIMIT]``),
  :func:`amdcompress.codecs.distributions.windowed_logistic_mixture_counts`.
  Fixed per position, so built once at load.
* Couplings: run on CPU, one chunk at a time (batch 1, identical shapes on
  both sides; padding of a partial chunk is the constant :func:`~.argmax_coupling.pad_k`,
  never shifted, never coded); shifts are rounded to whole grid steps, so the
  map is an integer bijection.

Net cost of a chunk: ``sum -log2 Base(z) + sum log2 Q(k|x)``, the discretized
negative ELBO, which is at most the continuous one that training minimizes
(up to the 24-bit tables and q's window).

Stream layout: ``version (1 byte) | varint n | Message.to_bytes()``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from amdcompress.codecs import (Categorical, Codec, CorruptStreamError, Message, Windowed, bits_back_joint, generations,
                               observed)
from amdcompress.codecs.distributions import TOTAL, det_exp, windowed_logistic_mixture_counts
from amdcompress.codecs.varint import read_head, write_head

from ..argmax.network import BITS, K
from ..argmax.coding import PARAM_GRID, build_coding_tables, q_support
from .network import WARMUP_DIV, WARMUP_FIRST, ArgmaxCouplingFlow, CouplingConfig, chunk_sizes, pad_k

STREAM_VERSION = 1
Z_LIMIT = 1 << 20          # |z| in grid steps; escapes are uniform on [-Z_LIMIT, Z_LIMIT]
BASE_TAIL_SCALES = 20.0    # a base window covers every component's mean +- 20 scales ...
BASE_MIN_WEIGHT = 1e-4     # ... of the components with at least this weight
HW_MAX = 256               # ... up to this half width (beyond: escape)


def seed_words_for(chunk: int) -> int:
    """Initial-bits words: enough for the first chunk's pops at 24 bits each."""
    return math.ceil(chunk * BITS * 24 / 32) + 16


# -- tables ----------------------------------------------------------------------------
def build_tables(model: ArgmaxCouplingFlow, window: int = 0) -> dict:
    """q's coding tables on the model's grid (stored with the weights): the
    argmax coder's tables at ``delta_bits = config.delta_bits`` and the
    smallest power-of-two window (>= 16) that holds q's mass."""
    db = model.config.delta_bits
    if not window:
        _, _, lo_v, hi_v = q_support(model.q)
        need = max(h - l for h, l in zip(hi_v, lo_v)) * (1 << db) + 2
        window = max(16, 1 << math.ceil(math.log2(need)))
    return build_coding_tables(model, delta_bits=db, window=window)


def _q_np(tables: dict) -> tuple[int, int, np.ndarray, np.ndarray]:
    t = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in tables.items()}
    return int(t["delta_bits"]), int(t["window"]), np.asarray(t["q_lo"], np.int64), np.asarray(t["q_counts"], np.int64)


class BaseTables:
    """Count tables of the factorized base, one row per (position, dim) of a
    chunk, in grid units. Built once from the rounded base parameters with
    the deterministic table builder, so every process gets the same integers."""

    def __init__(self, model: ArgmaxCouplingFlow):
        db = model.config.delta_bits
        with torch.no_grad():
            means, ls, logits = (torch.round(p.double() * PARAM_GRID) / PARAM_GRID for p in model.base_params())
        m = means.shape[-1]
        means = means.reshape(-1, m).numpy()
        ls = ls.reshape(-1, m).numpy()
        logits = logits.reshape(-1, m).numpy()
        scale = float(1 << db)
        mu_u = means * scale - 0.5                     # bin k <-> [k - 1/2, k + 1/2] around the centre
        ls_u = ls + db * math.log(2.0)
        w = det_exp(logits - logits.max(axis=1, keepdims=True))
        w = w / w.sum(axis=1, keepdims=True)
        live = w >= BASE_MIN_WEIGHT
        reach = BASE_TAIL_SCALES * det_exp(ls_u)
        lo = np.where(live, mu_u - reach, np.inf).min(axis=1)
        hi = np.where(live, mu_u + reach, -np.inf).max(axis=1)
        self.centers = np.floor(0.5 * (lo + hi)).astype(np.int64)
        self.half_window = int(min(HW_MAX, max(4, math.ceil(float(np.max(0.5 * (hi - lo)))) + 1)))
        self.counts = windowed_logistic_mixture_counts(self.centers, self.half_window, mu_u, ls_u, logits)
        self._full = None

    def codec(self, nv: int):
        """Windowed codec of the first ``nv`` positions (all dims) of a chunk."""
        rows = nv * BITS
        if rows == self.counts.shape[0]:
            if self._full is None:
                self._full = Windowed(self.counts, self.centers, self.half_window, -Z_LIMIT, Z_LIMIT)
            return self._full
        return Windowed(self.counts[:rows], self.centers[:rows], self.half_window, -Z_LIMIT, Z_LIMIT)

    def info_bits(self, nv: int, z: np.ndarray) -> float:
        """Exact information content of z under :meth:`codec` (escapes included)."""
        rows = nv * BITS
        idx = z - self.centers[:rows] + self.half_window
        width = 2 * self.half_window + 1
        esc = (idx < 0) | (idx >= width)
        col = np.where(esc, width, idx)
        p = self.counts[np.arange(rows), col].astype(np.float64) / TOTAL
        return float(-np.log2(p).sum() + esc.sum() * math.log2(2 * Z_LIMIT + 1))


class Coder:
    """The coupling-prior coder for one set of weights: model, q tables, base tables."""

    def __init__(self, model: ArgmaxCouplingFlow, tables: dict):
        self.model = model.eval()
        self.db, self.W, self.q_lo, self.q_counts = _q_np(tables)
        if self.db != model.config.delta_bits:
            raise ValueError("coding tables do not match the model's grid")
        self.base = BaseTables(model)
        c = model.config
        bound = int(self.q_lo.max()) + self.W + c.layers * math.ceil(c.shift_max * (1 << self.db)) + 1
        if bound >= Z_LIMIT:
            raise ValueError("latent range exceeds the coder's limit")
        self.L = c.chunk
        self.pad = pad_k(self.db)

    # -- pieces shared by both directions ------------------------------------------------
    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """(start, size) of every chunk, in the encoder's order."""
        sizes = chunk_sizes(n, self.L)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        return list(zip(starts, sizes))

    def _chunks_reversed(self, n: int):
        """:meth:`_chunks` in reverse (the decoder's order), lazily: only the
        warm-up is listed, so a forged symbol count costs no memory or time."""
        warm, done = [], 0
        while done < n:
            size = min(self.L, WARMUP_FIRST + done // WARMUP_DIV, n - done)
            if size == self.L:  # warm-up over: every later chunk is min(L, what is left)
                break
            warm.append((done, size))
            done += size
        nfull, tail = divmod(n - done, self.L)
        if tail:
            yield done + nfull * self.L, tail
        for i in range(nfull - 1, -1, -1):
            yield done + i * self.L, self.L
        yield from reversed(warm)

    def _flow(self, k: np.ndarray, nv: int, inverse: bool) -> np.ndarray:
        """Integer couplings of one chunk: k (nv, 5) -> (nv, 5); batch 1, the
        rest of the chunk padded; the valid mask only for a partial chunk."""
        full = np.full((1, self.L, BITS), self.pad, dtype=np.int64)
        full[0, :nv] = k
        t = torch.from_numpy(full)
        valid = None
        if nv < self.L:
            valid = (torch.arange(self.L) < nv)[None, :]
        f = self.model.inverse_int if inverse else self.model.forward_int
        return f(t, valid)[0, :nv].numpy()

    def _q_nodes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bits, q nodes), each (nv, 5), of symbols x (nv,)."""
        i = np.arange(BITS)
        bits = (x[:, None] >> (BITS - 1 - i)) & 1
        nodes = (2 << i) - 2 + (x[:, None] >> (BITS - 1 - i))
        return bits, nodes

    def _q(self, x: np.ndarray) -> Codec:
        """q(j|x): the magnitude offsets of the chunk's binary codes given its symbols."""
        return Categorical(self.q_counts[self._q_nodes(x)[1].reshape(-1)])

    def _joint(self, nv: int, latents: list | None = None) -> Codec:
        """p(x, j) of one chunk of ``nv`` symbols: ``(x, j)`` <-> the latent
        ``z = flow(k(x, j))`` under the base, a bijection on the grid, so its cost
        is the base's. ``latents`` collects each pushed z (for accounting)."""
        base = self.base.codec(nv)

        def push(m: Message, xj) -> Message:
            x, j = xj
            bits, nodes = self._q_nodes(x)
            mag = self.q_lo[nodes.reshape(-1)] + j
            k = np.where(bits.reshape(-1) > 0, mag, -mag - 1).reshape(nv, BITS)
            z = self._flow(k, nv, inverse=False).reshape(-1)
            if latents is not None:
                latents.append(z)
            return base.push(m, z)

        def pop(m: Message):
            m, z = base.pop(m)
            k = self._flow(z.reshape(nv, BITS), nv, inverse=True)
            bits = (k >= 0).astype(np.int64)
            x = (bits << (BITS - 1 - np.arange(BITS))).sum(1)
            if x.max() >= K:
                raise CorruptStreamError("decoded an impossible symbol")
            _, nodes = self._q_nodes(x)
            j = np.where(bits > 0, k, -k - 1).reshape(-1) - self.q_lo[nodes.reshape(-1)]
            if j.min() < 0 or j.max() >= self.W:
                raise CorruptStreamError("latent outside q's window")
            return m, (x, j)

        return Codec(push, pop)

    # -- encoder -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, sym: np.ndarray, progress=None, stats: dict | None = None) -> bytes:
        """Symbols in 0..26 -> model stream bytes."""
        sym = np.asarray(sym, dtype=np.int64).reshape(-1)
        n = int(sym.size)
        if n == 0:
            return write_head(STREAM_VERSION, 0)
        if sym.min() < 0 or sym.max() >= K:
            raise ValueError("symbol outside 0..26")
        chunks = self._chunks(n)
        seed = seed_words_for(self.L)
        m = Message.seeded(seed)
        start_bits = m.num_bits()
        bar = progress(n) if progress is not None else None
        info = [0.0]

        def chunk(s: int, nv: int) -> Codec:
            drawn: list = []
            latents: list = []
            codec = bits_back_joint(self._joint(nv, latents), lambda x: observed(self._q(x), drawn))

            def push(m: Message, x) -> Message:
                m = codec.push(m, x)
                if stats is not None:
                    qc = self.q_counts[self._q_nodes(x)[1].reshape(-1)]
                    info[0] += self.base.info_bits(nv, latents[0]) + float(
                        np.log2(qc[np.arange(qc.shape[0]), drawn[0]] / TOTAL).sum())
                if bar is not None:
                    bar.update(nv)
                return m

            return Codec(push, codec.pop)

        m = generations(chunk, [nv for _, nv in chunks]).push(m, sym)
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        info = info[0]
        out = write_head(STREAM_VERSION, n) + m.to_bytes()
        if stats is not None:
            stats.update({"chunks": len(chunks), "chunk": self.L, "info_bits": info,
                          "message_bits": m.num_bits() - start_bits,
                          "initial_words_used": m.initial_words_used(seed), "stream_bytes": len(out)})
        return out

    # -- decoder -----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, stream: bytes, progress=None,
               max_symbols: int | None = None) -> np.ndarray:
        """Model stream bytes -> symbols; raises CorruptStreamError (or another codec error)
        on anything that is not a stream this coder wrote with these weights."""
        stream = bytes(stream)
        (n,), pos = read_head(stream, STREAM_VERSION, 1, "argmax-coupling", max_symbols, empty_is_head=True)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        m = Message.from_bytes(stream[pos:], seeded=True)  # pops below the seed prefix raise at once
        bar = progress(n) if progress is not None else None

        def chunk(s: int, nv: int) -> Codec:
            codec = bits_back_joint(self._joint(nv), self._q)
            if bar is None:
                return codec

            def pop(m: Message):
                m, x = codec.pop(m)
                bar.update(nv)
                return m, x

            return Codec(codec.push, pop)

        # chunks last first, lazily: memory grows with the stream, not with the claimed n
        m, sym = generations(chunk, None, backwards=self._chunks_reversed(n)).pop(m)
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        if not m.is_seed_remainder(seed_words_for(self.L)):
            raise CorruptStreamError("stream not consumed exactly")
        return sym


# -- weights -----------------------------------------------------------------------------
def load(weights: dict) -> Coder:
    """The coder of checked weights (the face in models/registry.py); the model
    is in eval mode, float32, CPU."""
    if "coding" not in weights:
        raise ValueError("argmax-coupling weights have no coding tables")
    model = ArgmaxCouplingFlow(CouplingConfig.from_dict(weights["config"]))
    model.load_state_dict({k: v.float() for k, v in weights["state_dict"].items()})
    return Coder(model.eval(), weights["coding"])


def compress(coder: Coder, sym: np.ndarray, *, progress=None, stats: dict | None = None) -> bytes:
    return coder.encode(sym, progress=progress, stats=stats)


def decompress(coder: Coder, stream: bytes, n: int, *, progress=None) -> np.ndarray:
    return coder.decode(stream, progress=progress, max_symbols=n)
