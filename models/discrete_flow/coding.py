"""Exact ANS coding of text with a Discrete Flow (:mod:`.discrete_flow`).

No bits-back: the flow is a bijection, so the encoder computes ``z = f(x)`` and
pushes ``z`` under the base; the decoder pops ``z`` and returns
``x = f^-1(z)`` (modular inverses of the scales). The coded size is
``-log2 P_base(z) = -log2 P(x)`` up to the 24-bit table quantization and the
stream framing (:func:`nll_bits` is the reference it is tested against).

Layout, a function of the symbol count ``n`` only (so the decoder rebuilds it):

* Flow chunks: the symbols in order, cut into chunks of ``D = config.chunk``;
  the last chunk is *shorter* (``n mod D`` symbols, no padding, so no bits are
  spent on padding). Full chunks go through the flow in batches of
  ``FLOW_BATCH`` chunks, the short chunk alone: the same batch shapes in the
  encoder (forward) and the decoder (inverse), where each layer's ``(mu,
  sigma)`` are recomputed from the unchanged half with the same code path.
* Factorized base: ``z_i`` under the categorical of chunk position ``i mod D``.
* AR base: ``z`` (length ``n``) is cut into ``L`` contiguous lanes
  (``L = min(256, ceil(n / 4096))``, the last lane may be shorter), each read
  by the LSTM from a zero state and the start token. The LSTM runs step by
  step with batch ``L`` on both sides (:meth:`ARBase.step`; finished lanes are
  fed the token 0), so the decoder pops position ``t`` of every lane at once.

Determinism: every network runs on the CPU in float32 with the caller's fixed
thread count (the backend uses 1) and identical batch shapes on both sides;
base logits are rounded to multiples of ``2**-12`` and turned into integer
tables by :func:`amdcompress.codecs.categorical_from_logits` (row-independent,
so the encoder may build many rows at once and the decoder one step at a time).
The container's checksum turns any remaining mismatch into an error.

Stream layout: ``version (1 byte) | varint n | Message.to_bytes(seed_prefix=False)``
of a message anchored on :data:`ANCHOR` (stream version 2; nothing after the
head when n = 0). The anchor gives the decoder a floor: a pop below it (an
exhausted or forged stream) raises at once, where an exact stream that starts
empty decodes symbol 0 for free at its bottom, up to any length a header
claims. Version 1 (an unanchored ``Message.to_bytes()``) still decodes, except
inside a format-3 container (:func:`amdcompress.codecs.message.strict_streams`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from amdcompress.codecs import Categorical, CorruptStreamError, Message, categorical_from_logits
from amdcompress.codecs.distributions import PRECISION
from amdcompress.codecs.varint import read_head, write_head

from .network import LN2, DiscreteFlow, DiscreteFlowConfig

STREAM_VERSION = 2
ANCHOR = 0x00D15C0F        # the anchor (any constant: it costs the same 33 bits as an empty stack's bottom)
PARAM_GRID = 4096.0        # base logits are rounded to multiples of 1/4096
FLOW_BATCH = 256           # chunks per flow call
MAX_LANES = 256
CHARS_PER_LANE = 4096
BLOCK = 1 << 16            # symbols per table build / push (factorized base)
BLOCK_STEPS = 64           # lane steps per table build / push (AR base)


def lane_layout(n: int) -> tuple[int, int, int]:
    """(lanes, lane length, length of the last lane) for n >= 1 symbols."""
    lanes = max(1, min(MAX_LANES, math.ceil(n / CHARS_PER_LANE)))
    lane_len = math.ceil(n / lanes)
    lanes = math.ceil(n / lane_len)
    return lanes, lane_len, n - (lanes - 1) * lane_len


def _round(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * PARAM_GRID) / PARAM_GRID


# -- the flow over a whole text ------------------------------------------------------
@torch.no_grad()
def apply_flow(model: DiscreteFlow, sym: np.ndarray, inverse: bool = False) -> np.ndarray:
    """x -> z (or z -> x with ``inverse``) for a whole symbol sequence, in the
    chunk layout above. ``apply_flow(m, apply_flow(m, x), inverse=True) == x``."""
    sym = np.asarray(sym, dtype=np.int64)
    d = model.config.chunk
    n = sym.size
    full = n // d
    out = np.empty_like(sym)
    fn = model.flow_inverse if inverse else model.flow_forward
    if full:
        xs = torch.from_numpy(sym[: full * d].reshape(full, d))
        parts = [fn(xs[i : i + FLOW_BATCH]) for i in range(0, full, FLOW_BATCH)]
        out[: full * d] = torch.cat(parts).reshape(-1).numpy()
    if n > full * d:
        out[full * d :] = fn(torch.from_numpy(sym[full * d :])[None])[0].numpy()
    return out


# -- base tables ---------------------------------------------------------------------
def factorized_counts(model: DiscreteFlow) -> np.ndarray:
    """(D, K) count table of each chunk position of the factorized base."""
    with torch.no_grad():
        return categorical_from_logits(_round(model.base.logits.float()).numpy())


def _ar_logits(model: DiscreteFlow, tok: torch.Tensor, state):
    logits, state = model.base.step(tok, state)
    return _round(logits).numpy(), state


def _info_bits(counts: np.ndarray, z: np.ndarray) -> float:
    return float(np.sum(PRECISION - np.log2(counts[np.arange(len(z)), z].astype(np.float64))))


def _tick(bar, n):
    if bar is not None:
        bar.update(n)


# -- encoder --------------------------------------------------------------------------
@torch.no_grad()
def encode_symbols(model: DiscreteFlow, sym: np.ndarray, progress=None, stats: dict | None = None) -> bytes:
    """Symbols in 0..K-1 -> model stream bytes (decoded by :func:`decode_symbols`
    with the same weights)."""
    sym = np.asarray(sym, dtype=np.int64)
    n = int(sym.size)
    head = write_head(STREAM_VERSION, n)
    if n == 0:
        return head
    k = model.config.k
    if sym.min() < 0 or sym.max() >= k:
        raise ValueError(f"symbol outside 0..{k - 1}")
    model.eval()
    bar = progress(2 * n) if progress is not None else None
    z = apply_flow(model, sym)
    m = Message.anchored(ANCHOR)
    info = 0.0
    if model.config.base == "factorized":
        table = factorized_counts(model)
        pos = np.arange(n) % model.config.chunk
        _tick(bar, n)
        for s in range(((n - 1) // BLOCK) * BLOCK, -1, -BLOCK):       # last block first (a stack)
            counts = table[pos[s : s + BLOCK]]
            Categorical(counts).push(m, z[s : s + BLOCK])
            info += _info_bits(counts, z[s : s + BLOCK])
            _tick(bar, min(BLOCK, n - s))
        lanes = 0
    else:
        L, T, last = lane_layout(n)
        Z = np.zeros((L, T), dtype=np.int64)
        Z.reshape(-1)[:n] = z
        logits = np.zeros((T, L, k), dtype=np.float32)
        state = model.base.zero_state(L)
        tok = torch.full((L,), k, dtype=torch.long)
        Zt = torch.from_numpy(Z)
        for t in range(T):
            logits[t], state = _ar_logits(model, tok, state)
            tok = Zt[:, t]
            _tick(bar, L if t < last else L - 1)
        for t1 in range(T, 0, -BLOCK_STEPS):                          # last steps first
            t0 = max(0, t1 - BLOCK_STEPS)
            active = np.ones((t1 - t0, L), dtype=bool)
            active[max(0, last - t0):, L - 1] = False                   # the short last lane has ended
            rows = logits[t0:t1][active]                              # (t, lane) order, as the decoder pops
            zs = Z[:, t0:t1].T[active]
            counts = categorical_from_logits(rows)
            Categorical(counts).push(m, zs)
            info += _info_bits(counts, zs)
            _tick(bar, zs.size)
        lanes = L
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    out = head + m.to_bytes(seed_prefix=False)
    if stats is not None:
        stats.update({"symbols": n, "lanes": lanes, "info_bits": info, "stream_bytes": len(out)})
    return out


# -- decoder --------------------------------------------------------------------------
@torch.no_grad()
def decode_symbols(model: DiscreteFlow, stream: bytes, progress=None, max_symbols: int | None = None) -> np.ndarray:
    """Model stream bytes -> symbols. Raises the codec layer's
    :class:`CorruptStreamError` on a stream this coder did not write with
    these weights, when the damage is detectable here."""
    from amdcompress.codecs.message import strict_streams

    stream = bytes(stream)
    version = 1 if stream[:1] == b"\x01" and not strict_streams() else STREAM_VERSION
    (n,), pos = read_head(stream, version, 1, "discrete-flow", max_symbols)
    if version == 1:  # an older stream: from an empty stack, no floor
        m = Message.from_bytes(stream[pos:])
    elif n == 0:
        if pos != len(stream):
            raise CorruptStreamError("trailing data")
        return np.zeros(0, dtype=np.int64)
    else:
        m = Message.from_bytes(stream[pos:], seed_prefix=False, anchored=True)
    k = model.config.k
    model.eval()
    if n == 0:
        if not m.is_empty():
            raise CorruptStreamError("trailing data")
        return np.zeros(0, dtype=np.int64)
    bar = progress(n) if progress is not None else None
    if model.config.base == "factorized":
        table = factorized_counts(model)
        parts = []  # memory grows with the stream, not with the claimed n
        for s in range(0, n, BLOCK):
            m, zs = Categorical(table[np.arange(s, min(n, s + BLOCK)) % model.config.chunk]).pop(m)
            parts.append(zs)
            _tick(bar, min(BLOCK, n - s))
        z = np.concatenate(parts)
    else:
        L, T, last = lane_layout(n)
        cols = []  # one column per step: memory grows with the stream, not with the claimed n
        state = model.base.zero_state(L)
        tok = torch.full((L,), k, dtype=torch.long)
        for t in range(T):
            A = L if t < last else L - 1
            logits, state = _ar_logits(model, tok, state)
            col = np.zeros(L, dtype=np.int64)
            m, col[:A] = Categorical(categorical_from_logits(logits[:A])).pop(m)
            cols.append(col)
            tok = torch.from_numpy(col.copy())
            _tick(bar, A)
        z = np.stack(cols, axis=1).reshape(-1)[:n]
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    if not (m.is_empty() if version == 1 else m.anchor() == ANCHOR):
        raise CorruptStreamError("stream not consumed exactly")
    return apply_flow(model, z, inverse=True)


# -- reference: the model's own likelihood under the coder's layout ----------------------
@torch.no_grad()
def nll_bits(model: DiscreteFlow, sym: np.ndarray) -> float:
    """Exact -log2 P(x) in bits (float model, no table quantization) of ``sym``
    under the coder's chunk and lane layout: what the coded size approaches."""
    sym = np.asarray(sym, dtype=np.int64)
    n = int(sym.size)
    if n == 0:
        return 0.0
    model.eval()
    z = torch.from_numpy(apply_flow(model, sym))
    k = model.config.k
    if model.config.base == "factorized":
        logp = torch.log_softmax(model.base.logits.float(), -1)
        pos = torch.arange(n) % model.config.chunk
        return float(-logp[pos, z].double().sum() / LN2)
    L, T, last = lane_layout(n)
    Z = torch.zeros(L * T, dtype=torch.long)
    Z[:n] = z
    Z = Z.reshape(L, T)
    logp, _ = model.base.log_probs(F.one_hot(Z, k).float())
    bits = -logp.gather(-1, Z[..., None])[..., 0].double() / LN2
    return float(bits.reshape(-1)[:n].sum())


# -- weights ----------------------------------------------------------------------------
def load(weights: dict) -> DiscreteFlow:
    """The eval-mode, float32 model of checked weights (the face in
    models/registry.py); ValueError if they do not fit the architecture."""
    from ..registry import load_into

    return load_into(DiscreteFlow(DiscreteFlowConfig.from_dict(weights["config"])), weights, "discrete-flow")


def compress(model: DiscreteFlow, sym: np.ndarray, *, progress=None, stats: dict | None = None) -> bytes:
    return encode_symbols(model, sym, progress=progress, stats=stats)


def decompress(model: DiscreteFlow, stream: bytes, n: int, *, progress=None) -> np.ndarray:
    return decode_symbols(model, stream, progress=progress, max_symbols=n)
