"""Exact ANS coding of text with the absorbing-state diffusion model (OA-ARDM,
:mod:`.network`) in a chosen number of network passes. No bits-back and no
initial bits: every symbol is pushed once under a categorical table, so a
short file costs only its information content plus a few bytes.

Generation order. The symbols are cut into chunks of L (the model's
``length``; the last chunk may be shorter, and only real positions are
coded). Chunk c's order is drawn from the model's order family
(:mod:`.network`) by sorting 64-bit keys ``splitmix64(splitmix64(ORDER_SEED
+ c) + p)`` of its positions p (for spread orders with the position's level
in the top 8 bits): integer arithmetic we control, identical on every machine
and numpy version.

Step plan. With a budget of S passes, a chunk of m symbols reveals its order
ranks ``[b_s, b_{s+1})`` at step s (b_0 = 0 < b_1 < ... < b_S' = m,
S' = min(S, m)). The boundaries come from the ARDM dynamic program: a step
that reveals ranks a..b-1 costs about ``sum_{a <= r < b} C[a, class(r)]``,
every one of them predicted from the same a revealed symbols, where C is the
model's loss table (stored with the weights, measured at export on held-out
text: the mean loss of a masked position of rank class j when a are
revealed; a single class for random orders, where this is the paper's
``(b - a) L(a + 1)``; the level for spread orders, whose masked positions are
not alike). C is quantized to int64 units of 2^-16 bits and made
non-increasing in a; the program minimizes the total over exactly S'
non-empty steps in int64 arithmetic (ties to the earliest split), so both
sides compute the same plan. A chunk of m < L symbols uses the table's rows
``floor(a L / m)`` (the same revealed fraction) and the classes of its own
ranks. All chunks step in lock step: step s of the file is step s of every
chunk's plan.

Passes. Step s runs the network once over the whole file with the symbols
revealed before step s and MASK elsewhere. The file is laid out in rows of
``seg = min(ROW, n)`` positions with ``radius`` positions of halo on each side
(the network's receptive field: a row's outputs are those of one network run
over the whole file, so context crosses chunk borders; out-of-file positions
are MASK), ``ROWS_PER_CALL`` rows per call. The logits at the positions
revealed in step s (in increasing position order) are rounded to multiples of
2^-12 and turned into 24-bit tables by the deterministic quantizer of
:mod:`amdcompress.codecs` (all inside :func:`coding_mode`: CPU, one thread).

Stack order. The decoder pops step 0 first, so the encoder (which knows every
step's input) runs the steps from the last to the first and pushes each
step's symbols with one ``encode_reverse`` call as soon as its tables exist.

Stream layout::

    1 byte   version (1)
    varint   n, the number of symbols
    varint   S', the number of steps (min(S, L); 1..L)
    varint   seg, the row width of the passes (min(ROW, n))
    varint   rows, the rows per network call (ROWS_PER_CALL)
    rest     the ANS words (:meth:`Message.to_bytes` without seed prefix); absent when n = 0

seg and rows fix the shapes of the network calls, so the decoder repeats the
encoder's float arithmetic even if a later version changes the defaults. The
decoder checks the head (S' <= L, 1 <= seg <= n, seg <= MAX_ROW, 1 <= rows
<= MAX_ROWS_PER_CALL) and that the message is consumed exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from amdcompress.codecs import Categorical, CorruptStreamError, Message, categorical_from_logits
from amdcompress.codecs.core import information_bits
from amdcompress.codecs.varint import read_head, write_head

from ..determinism import coding_mode
from .network import MASK, AbsorbingConfig, AbsorbingDenoiser, num_classes, order_classes, position_classes

VERSION = 1
ORDER_SEED = 0x5EED_A65_0A7D_2022  # the generation orders' seed (part of the format)
GRID = 4096.0                        # logits are rounded to multiples of 1/GRID
CURVE_SCALE = 1 << 16                # the stored loss table is in units of 2^-16 bits
ROW = 2048                           # positions per row of a pass (plus the halos)
ROWS_PER_CALL = 4                    # rows per network call (small calls stay in cache)
MAX_ROW = 1 << 16
MAX_ROWS_PER_CALL = 256
DEFAULT_STEPS = 16
INF = np.int64(1 << 61)

# --------------------------------------------------------------------------- orders
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def order_keys(chunks: np.ndarray, m: int, length: int, order: str) -> np.ndarray:
    """(len(chunks), m) uint64 sort keys of positions 0..m-1 of each chunk:
    ``splitmix64(splitmix64(ORDER_SEED + c) + p)``, with the position's class
    (:func:`.network.position_classes`, < 256) in the top 8 bits for every
    family but ``random`` (class-major, random within a class)."""
    c = np.asarray(chunks, dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        base = _splitmix64(c + np.uint64(ORDER_SEED))
        keys = _splitmix64(base + np.arange(m, dtype=np.uint64)[None, :])
    if order != "random":
        cls = position_classes(order, length)[:m].astype(np.uint64)
        keys = (keys >> np.uint64(8)) | (cls[None, :] << np.uint64(56))
    return keys


def generation_order(chunk: int, m: int, length: int, order: str) -> np.ndarray:
    """The positions (0..m-1) of chunk ``chunk`` (m <= length symbols) in the
    order they are revealed."""
    return np.argsort(order_keys(np.array([chunk]), m, length, order)[0], kind="stable")


def ranks(n: int, length: int, order: str) -> np.ndarray:
    """Each position's rank in its chunk's generation order (int64, shape (n,))."""
    out = np.empty(n, dtype=np.int64)
    nfull, m = divmod(n, length)
    ar = np.arange(length, dtype=np.int64)
    for c0 in range(0, nfull, 4096):  # bounded memory for huge inputs
        c1 = min(nfull, c0 + 4096)
        perm = np.argsort(order_keys(np.arange(c0, c1), length, length, order), axis=1, kind="stable")
        r = np.empty_like(perm)
        np.put_along_axis(r, perm, np.broadcast_to(ar, perm.shape), axis=1)
        out[c0 * length : c1 * length] = r.reshape(-1)
    if m:
        perm = generation_order(nfull, m, length, order)
        r = np.empty(m, dtype=np.int64)
        r[perm] = np.arange(m)
        out[nfull * length :] = r
    return out


# --------------------------------------------------------------------------- step plans
def quantize_costs(cost_bits: np.ndarray) -> np.ndarray:
    """Loss table in bits (float, (L, J): row a = symbols revealed, column j =
    rank class) -> the int64 table (units of 2^-16 bits, non-increasing down
    each column) the plans use."""
    c = np.asarray(cost_bits, dtype=np.float64)
    if c.ndim != 2 or not c.size or not np.all(np.isfinite(c)) or c.min() < 0:
        raise ValueError("loss table must be a non-empty 2-D array of finite non-negative bits")
    return np.minimum.accumulate(np.round(c * CURVE_SCALE).astype(np.int64), axis=0)


def step_costs(costs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The cost of revealing ranks a..b-1 in one pass, (m, m+1) int64 (INF
    where b <= a): ``sum_{a <= r < b} costs[a, classes[r]]``, every rank
    predicted from the a revealed before the step. ``costs``: (m, J) for a
    chunk of m; ``classes``: (m,) the class of each rank."""
    m = len(classes)
    g = np.asarray(costs, dtype=np.int64)[:, np.asarray(classes, dtype=np.int64)]   # (m, m): [a, r]
    cs = np.concatenate([np.zeros((m, 1), dtype=np.int64), np.cumsum(g, axis=1)], axis=1)
    out = cs - cs[np.arange(m), np.arange(m)][:, None]
    return np.where(np.arange(m + 1)[None, :] > np.arange(m)[:, None], out, INF)


def step_plan(step_cost: np.ndarray, steps: int) -> np.ndarray:
    """Boundaries b_0 = 0 < ... < b_S' = m (S' = min(steps, m)) minimizing
    sum_s step_cost[b_s, b_{s+1}] over exactly S' non-empty steps: the ARDM
    dynamic program, in int64 (exact, ties to the earliest split, so every
    machine gets the same plan)."""
    C = np.asarray(step_cost, dtype=np.int64)
    m = C.shape[0]
    if steps < 1:
        raise ValueError("steps must be >= 1")
    S = min(int(steps), m)
    if S == m:
        return np.arange(m + 1, dtype=np.int64)
    if S == 1:
        return np.array([0, m], dtype=np.int64)
    D = np.full(m + 1, INF, dtype=np.int64)
    D[0] = 0
    back = np.zeros((S + 1, m + 1), dtype=np.int64)
    for s in range(1, S + 1):
        tot = np.minimum(D[:m, None] + C, INF)                      # both terms <= 2^61: no overflow
        back[s] = np.argmin(tot, axis=0)
        D = tot.min(axis=0)
    bounds = [m]
    for s in range(S, 0, -1):
        bounds.append(int(back[s][bounds[-1]]))
    out = np.array(bounds[::-1], dtype=np.int64)
    assert out[0] == 0 and np.all(np.diff(out) > 0)
    return out


def chunk_costs(costs: np.ndarray, m: int) -> np.ndarray:
    """The loss table of a chunk of m <= L symbols: row a is the full table's
    row ``floor(a L / m)`` (the same revealed fraction)."""
    L = costs.shape[0]
    return np.asarray(costs, dtype=np.int64)[(np.arange(m, dtype=np.int64) * L) // m]


# --------------------------------------------------------------------------- the coding state
@dataclass
class CodingState:
    """What coding needs: the eval-mode float32 network, its quantized loss
    table (int64, (L, classes)) and the default step budget."""

    model: AbsorbingDenoiser
    costs: np.ndarray
    default_steps: int
    plans: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.model.length

    @property
    def order(self) -> str:
        return self.model.config.order

    def plan(self, m: int, steps: int) -> np.ndarray:
        """The step boundaries (in ranks) of a chunk of m symbols."""
        key = (m, min(steps, m))
        if key not in self.plans:
            classes = order_classes(self.order, m, self.length)
            self.plans[key] = step_plan(step_costs(chunk_costs(self.costs, m), classes), steps)
        return self.plans[key]


def flat_costs(model: AbsorbingDenoiser) -> np.ndarray:
    """A loss table with no information (plans then reveal equal shares per step)."""
    return np.full((model.length, num_classes(model.config.order, model.length)), CURVE_SCALE, dtype=np.int64)


def make_state(model: AbsorbingDenoiser, costs: np.ndarray | None = None,
               default_steps: int = DEFAULT_STEPS) -> CodingState:
    """A coding state around a model (made eval-mode, no gradients)."""
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    costs = flat_costs(model) if costs is None else np.asarray(costs, dtype=np.int64)
    shape = (model.length, num_classes(model.config.order, model.length))
    if costs.shape != shape or costs.min() < 0 or np.any(np.diff(costs, axis=0) > 0):
        raise ValueError(f"loss table does not fit the model (shape {shape}, non-negative, non-increasing)")
    if isinstance(default_steps, bool) or not isinstance(default_steps, (int, np.integer)) or default_steps < 1:
        raise ValueError("default steps must be a positive integer")
    return CodingState(model, costs, int(default_steps))


def load(weights: dict) -> CodingState:
    """The coding state from a weights dict (``registry.read_weights``: config,
    float32 state_dict, ``costs`` (int64 loss table) and ``default_steps``);
    ValueError if it does not fit."""
    try:
        config = AbsorbingConfig.from_dict(dict(weights["config"]))
        model = AbsorbingDenoiser(config)
        model.load_state_dict({k: v.float() for k, v in weights["state_dict"].items()})
        costs = np.asarray(torch.as_tensor(weights["costs"]).numpy(), dtype=np.int64)
        steps = int(weights["default_steps"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"absorbing-diffusion weights do not fit the model ({msg})") from None
    return make_state(model, costs, steps)


# --------------------------------------------------------------------------- passes
class _Layout:
    """Rows of ``seg`` positions plus halos (see the module docstring) and
    each step's positions."""

    def __init__(self, state: CodingState, n: int, steps: int, seg: int | None = None, rows: int | None = None):
        L = state.length
        self.n, self.L = n, L
        self.seg = seg if seg is not None else min(ROW, n)
        self.per_call = rows if rows is not None else ROWS_PER_CALL
        self.halo = state.model.radius()
        self.nrows = -(-n // self.seg)
        width = self.seg + 2 * self.halo
        idx = (np.arange(self.nrows, dtype=np.int64)[:, None] * self.seg - self.halo
               + np.arange(width, dtype=np.int64)[None, :])
        self.valid = (idx >= 0) & (idx < n)
        self.idx = np.where(self.valid, idx, 0)
        self.rank = ranks(n, L, state.order)
        nfull, m = divmod(n, L)
        self.partial_from = nfull * L  # positions >= this are in the short last chunk
        self.plan_full = state.plan(L, steps) if nfull else None
        self.plan_part = state.plan(m, steps) if m else None
        self.steps = max(len(p) - 1 for p in (self.plan_full, self.plan_part) if p is not None)

    def _bound(self, plan, s: int, m: int) -> int:
        if plan is None:
            return 0
        return int(plan[s]) if s < len(plan) else m

    def window(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) per position: step s reveals the ranks in [lo, hi)."""
        m = self.n - self.partial_from
        lo_f, hi_f = self._bound(self.plan_full, s, self.L), self._bound(self.plan_full, s + 1, self.L)
        lo_p, hi_p = self._bound(self.plan_part, s, m), self._bound(self.plan_part, s + 1, m)
        lo = np.full(self.n, lo_f, dtype=np.int64)
        hi = np.full(self.n, hi_f, dtype=np.int64)
        lo[self.partial_from :] = lo_p
        hi[self.partial_from :] = hi_p
        return lo, hi

    def step_positions(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(revealed-before-step mask, positions coded at step s, increasing)."""
        lo, hi = self.window(s)
        return self.rank < lo, np.flatnonzero((self.rank >= lo) & (self.rank < hi))

    def logits(self, model: AbsorbingDenoiser, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Rounded float64 logits (len(pos), 27) of one pass over the file
        whose current tokens (0..26 or MASK) are ``tokens``."""
        rows = np.where(self.valid, tokens[self.idx], MASK)
        out = np.empty((len(pos), model.config.K), dtype=np.float64)
        row_of = pos // self.seg
        col_of = pos % self.seg
        k = self.per_call
        starts = np.searchsorted(row_of, np.arange(0, self.nrows + k, k))
        for bi, r0 in enumerate(range(0, self.nrows, k)):
            a, b = starts[bi], starts[bi + 1]
            if a == b:
                continue
            r1 = min(self.nrows, r0 + k)
            h = model(torch.from_numpy(rows[r0:r1]), valid=True)  # (rows, seg, d): the halos are used up
            sel = h[torch.from_numpy(row_of[a:b] - r0), torch.from_numpy(col_of[a:b])]
            lg = model.logits(sel).float().numpy().astype(np.float64)
            out[a:b] = np.round(lg * GRID) / GRID
        return out


def _tables(lg: np.ndarray) -> np.ndarray:
    return categorical_from_logits(lg)


class _Ticker:
    def __init__(self, progress, n: int):
        self.bar = progress(n) if progress is not None else None

    def add(self, k: int) -> None:
        if self.bar is not None and k:
            self.bar.update(int(k))

    def close(self) -> None:
        if self.bar is not None and hasattr(self.bar, "close"):
            self.bar.close()


def _check_symbols(sym) -> np.ndarray:
    x = np.ascontiguousarray(sym, dtype=np.int64).reshape(-1)
    if x.size and (x.min() < 0 or x.max() >= MASK):
        raise ValueError("symbols outside 0..26")
    return x


def _steps(state: CodingState, steps: int | None) -> int:
    s = state.default_steps if steps is None else steps
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
        raise ValueError(f"steps must be a positive integer, got {s!r}")
    return min(int(s), state.length)


# --------------------------------------------------------------------------- the coder's face
def compress(state: CodingState, sym: np.ndarray, *, steps: int | None = None, progress=None,
             stats: dict | None = None) -> bytes:
    """Symbols 0..26 -> stream bytes, in ``steps`` network passes (None: the
    weights' default budget; more than L means L). ``stats`` receives the
    information content of the coded tables (``info_bits``) and the plan."""
    x = _check_symbols(sym)
    n = x.size
    S = _steps(state, steps)
    if n == 0:
        if stats is not None:
            stats.update(symbols=0, steps=S, info_bits=0.0, passes=0)
        return write_head(VERSION, 0, S, 0, 0)
    lay = _Layout(state, n, S)
    head = write_head(VERSION, n, S, lay.seg, lay.per_call)
    m = Message.empty()
    info = 0.0
    tick = _Ticker(progress, n)
    with coding_mode():
        for s in range(lay.steps - 1, -1, -1):  # the decoder pops step 0 first
            known, pos = lay.step_positions(s)
            tokens = np.where(known, x, MASK)
            counts = _tables(lay.logits(state.model, tokens, pos))
            Categorical(counts).push(m, x[pos])
            if stats is not None:
                info += information_bits(counts, x[pos])
            tick.add(len(pos))
    tick.close()
    body = m.to_bytes(seed_prefix=False)
    if stats is not None:
        stats.update(symbols=n, steps=S, passes=lay.steps, info_bits=info, seg=lay.seg, rows_per_call=lay.per_call,
                     plan_full=None if lay.plan_full is None else lay.plan_full.tolist(),
                     stream_bytes=len(head) + len(body))
    return head + body


def _read(stream: bytes, max_symbols: int | None):
    (n, S, seg, rows), pos = read_head(bytes(stream), VERSION, 4, "absorbing-diffusion", max_symbols)
    return n, S, seg, rows, pos


def decompress(state: CodingState, stream: bytes, n: int, progress=None) -> np.ndarray:
    """Stream bytes -> symbols. ``n``: the symbol count the container allows
    (an upper bound). Raises :class:`CorruptStreamError` (a ValueError) on a
    stream these weights did not write, where that is detectable here."""
    stream = bytes(stream)
    count, S, seg, rows, pos = _read(stream, n)
    if not 1 <= S <= state.length:
        raise CorruptStreamError("absorbing-diffusion stream: bad step count")
    if count == 0:
        if seg != 0 or rows != 0 or pos != len(stream):
            raise CorruptStreamError("absorbing-diffusion stream: trailing data after an empty stream")
        return np.zeros(0, dtype=np.int64)
    if not 1 <= seg <= min(count, MAX_ROW) or not 1 <= rows <= MAX_ROWS_PER_CALL:
        raise CorruptStreamError("absorbing-diffusion stream: bad row layout")
    m = Message.from_bytes(stream[pos:], seed_prefix=False)
    lay = _Layout(state, count, S, seg, rows)
    x = np.full(count, MASK, dtype=np.int64)
    tick = _Ticker(progress, count)
    with coding_mode():
        for s in range(lay.steps):
            _, p = lay.step_positions(s)
            counts = _tables(lay.logits(state.model, x, p))
            m, x[p] = Categorical(counts).pop(m)
            tick.add(len(p))
    tick.close()
    if not m.is_empty():
        raise CorruptStreamError("absorbing-diffusion stream: not consumed exactly")
    return x


def details(stream: bytes) -> dict:
    """What ``amdcompress info`` shows: the step budget and the symbol count."""
    n, S, _, _, _ = _read(stream, None)
    return {"steps": S, "symbols": n}


# --------------------------------------------------------------------------- evaluation (no ANS)
@torch.no_grad()
def plan_bits(state: CodingState, sym: np.ndarray, steps: int, progress=None, threads: int | None = None) -> float:
    """Exactly what :func:`compress` codes, in bits (the information content
    of every table the coder uses, the ANS overhead aside), computed in the
    decoder's order without a coder. ``threads`` other than 1 computes the
    network with more threads: faster, equal to the coder's bits up to float
    rounding."""
    x = _check_symbols(sym)
    if x.size == 0:
        return 0.0
    S = _steps(state, steps)
    lay = _Layout(state, x.size, S)
    tick = _Ticker(progress, x.size)
    total = 0.0
    with coding_mode(threads or 1):
        for s in range(lay.steps):
            known, pos = lay.step_positions(s)
            counts = _tables(lay.logits(state.model, np.where(known, x, MASK), pos))
            total += information_bits(counts, x[pos])
            tick.add(len(pos))
    tick.close()
    return total


@torch.no_grad()
def loss_table(model: AbsorbingDenoiser, sym: np.ndarray, reveal=None, threads: int | None = None) -> np.ndarray:
    """The loss table the plans are computed from, in bits (float64, (L, J)):
    entry [a, j] is the mean -log2 p (float model, no tables) of the masked
    positions of rank class j (:func:`.network.order_classes`: the level for
    spread orders, a single class for random ones) when every full chunk of
    ``sym`` has revealed the first a positions of its order, in the coder's
    layout. ``reveal``: the values of a to measure (default all 0..L-1); the
    others are interpolated linearly within each class's range, and entries
    of classes already fully revealed at a are 0 (a plan never uses them)."""
    import torch.nn.functional as F

    model = model.eval()
    L, order = model.length, model.config.order
    x = _check_symbols(sym)
    x = x[: (x.size // L) * L]
    if x.size == 0:
        raise ValueError(f"need at least {L} symbols for a loss table")
    reveal = np.arange(L) if reveal is None else np.unique(np.clip(np.asarray(reveal, dtype=np.int64), 0, L - 1))
    classes = order_classes(order, L, L)              # class of each rank
    J = int(classes.max()) + 1
    end = np.searchsorted(classes, np.arange(J), side="right")  # class j is fully revealed once a >= end[j]
    lay = _Layout(make_state(model), x.size, L)
    pos_class = classes[lay.rank]
    xt = torch.from_numpy(x)
    sums = np.zeros((len(reveal), J))
    counts = np.zeros((len(reveal), J))
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for i, a in enumerate(reveal):
            known = lay.rank < a
            rows = np.where(lay.valid, np.where(known, x, MASK)[lay.idx], MASK)
            pos = np.flatnonzero(~known)
            row_of, col_of = pos // lay.seg, pos % lay.seg
            for r0 in range(0, lay.nrows, ROWS_PER_CALL):
                r1 = min(lay.nrows, r0 + ROWS_PER_CALL)
                sel = (row_of >= r0) & (row_of < r1)
                h = model(torch.from_numpy(rows[r0:r1]), valid=True)
                hh = h[torch.from_numpy(row_of[sel] - r0), torch.from_numpy(col_of[sel])]
                lp = F.log_softmax(model.logits(hh).float(), -1)
                nll = (-lp.gather(1, xt[torch.from_numpy(pos[sel])][:, None])[:, 0]).double().numpy() / np.log(2.0)
                np.add.at(sums[i], pos_class[pos[sel]], nll)
                np.add.at(counts[i], pos_class[pos[sel]], 1.0)
    finally:
        torch.set_num_threads(old)
    out = np.zeros((L, J))
    for j in range(J):
        ok = (reveal < end[j]) & (counts[:, j] > 0)
        if not ok.any():
            continue
        at = np.arange(int(end[j]))
        out[at, j] = np.interp(at, reveal[ok], sums[ok, j] / counts[ok, j])
    return out
