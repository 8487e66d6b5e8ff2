"""Absorbing-state (mask) diffusion for text, in its continuous-time form: the
order-agnostic autoregressive diffusion model (OA-ARDM, Hoogeboom et al. 2022;
D3PM-absorbing, Austin et al. 2021, is its discrete-time relative).

Objective. For a chunk x of L symbols, an order sigma drawn from the model's
order family and a uniform t in 1..L, the positions sigma(t..L) are replaced
by MASK and the denoiser predicts the masked positions from the revealed ones
in one pass. The position revealed at step t, sigma(t), is uniformly
distributed over the masked positions of its class (the level being revealed
for ``spread`` orders, every masked position for ``random`` ones), so::

    loss(x) = mean over masked k of sigma(t)'s class of -log2 p(x_k | x_revealed)

is an unbiased estimate (over sigma and t) of the bits per char of coding the
chunk one position at a time in the order sigma: exactly what the coder pays
in L steps (:func:`revealed_next`). Averaging over *every* masked position
instead, as for random orders, would also train (and score) predictions of
finer levels from contexts the coder never shows them. Everything is in log
space (log_softmax).

Order families (``config.order``):

* ``random``: uniformly random permutations, the OA-ARDM of the paper.
* ``spread`` (default): level-major, random within a level. Position p of a
  chunk has level 0 if p = 0, else ``ceil(log2 L) - trailing_zeros(p)``
  (bit-reversal levels: level 1 is the middle, level 2 the quarters, ...,
  the last level the odd positions); an order reveals the levels one after
  the other, each in a uniformly random order. Every prefix of such an order
  is spread over the chunk, so positions revealed in the same parallel step
  are never neighbours while coarser levels are missing, which is what makes
  few steps cheap: measured on the same small model after the same 300
  training steps (valid.txt, 8k chars, coded exactly), random orders cost
  2.997 bpc in 256 steps / 3.029 in 32 / 3.128 in 8, spread orders 2.939 /
  2.950 / 2.974. The model is trained on exactly this family, so its
  conditionals are the ones the coder uses.
* ``blockedB`` (B = 8, 16, 32, 64): column-major over blocks of B
  characters, random within a column: the chunk's L/B blocks are coded left
  to right in lock step, so all positions but a block's first have their
  left neighbours (and, late in the block, the next block's first
  characters) revealed. It trades the spread family's quarter of positions
  coded from sparse context for L/B positions per chunk coded from none,
  and needs at least B passes to code each column from the ones before it.

Rows. Training, evaluation and coding see the same thing: rows of k whole
chunks plus ``radius()`` positions of their neighbours on each side (the
receptive field, valid convolutions: no padding reaches an output), all
chunks of a row at the same t with their own orders, loss on the k central
chunks. At coding time a file is one long sequence whose chunks step in
lock step (:mod:`.coding`), so context crosses chunk borders as it does here.

Denoiser. Sized for a CPU: coding runs the network once per step over every
character of the file, so a pass must cost little per position. A stack of
ConvNeXt-like residual blocks, channels-last::

    h = embed(token)                              (27 symbols + MASK -> d)
    block:  h = h + W2 act(W1 LN(dwconv_dil(h)))  (depthwise dilated conv, kernel k)
    logits = W_out LN(h)                          (d -> 27, only where needed)

Depthwise convolutions are written as k shifted multiply-adds (PyTorch's
depthwise Conv1d is ~10x slower on one CPU thread here). No attention and no
time input: the mask pattern is visible in the input itself.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

K = 27          # symbols: space, a-z
MASK = K        # the absorbing state's token
LN2 = math.log(2.0)
ORDERS = ("spread", "random", "blocked8", "blocked16", "blocked32", "blocked64")  # blockedB: see position_classes


@dataclass
class AbsorbingConfig:
    arch: str = "absorbing-ardm-conv"
    version: int = 1
    K: int = K
    length: int = 256          # chunk length L: the unit of a generation order and of a step plan
    d: int = 128               # channels
    ff: int = 256              # hidden width of each block's pointwise MLP
    kernel: int = 3            # depthwise kernel size (odd)
    dilations: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 1, 2])  # one block each
    act: str = "relu"          # relu or gelu (tanh form; ~20% slower passes on a CPU)
    order: str = "spread"      # order family: spread (level-major, random within a level) or random

    def __post_init__(self):
        if self.K != K:
            raise ValueError(f"K must be {K}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("kernel must be odd")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError("dilations must be positive")
        if self.act not in ("gelu", "relu"):
            raise ValueError(f"unknown activation {self.act!r}")
        if self.order not in ORDERS:
            raise ValueError(f"unknown order family {self.order!r}")
        if block_of(self.order) > min(self.length, 256):
            raise ValueError("a blocked order's block must be at most the chunk length (and 256)")
        if not 1 <= self.length <= 1 << 16:
            raise ValueError("length must be in 1..65536")
        self.dilations = [int(v) for v in self.dilations]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AbsorbingConfig":
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)


class Block(nn.Module):
    """h + W2 act(W1 LN(depthwise dilated conv(h))), on (B, W, d) tensors."""

    def __init__(self, d: int, ff: int, kernel: int, dilation: int, act: str):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.dw = nn.Parameter(torch.zeros(kernel, d))
        self.dw_bias = nn.Parameter(torch.zeros(d))
        with torch.no_grad():
            self.dw.normal_(0.0, 1.0 / math.sqrt(kernel))
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)
        nn.init.zeros_(self.fc2.weight)  # residual branches start at zero
        nn.init.zeros_(self.fc2.bias)
        self.act = (lambda u: F.gelu(u, approximate="tanh")) if act == "gelu" else F.relu

    def radius(self) -> int:
        return self.dilation * (self.kernel // 2)

    def forward(self, h: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """``valid``: no padding, the output is 2 * radius() narrower (the
        positions whose whole window lies inside ``h``); else zero padding."""
        r = self.radius()
        if not valid and r:
            h_in = F.pad(h, (0, 0, r, r))
        else:
            h_in = h
        w = h_in.shape[1] - 2 * r
        u = torch.addcmul(self.dw_bias, h_in[:, 0:w], self.dw[0])
        for j in range(1, self.kernel):
            o = j * self.dilation
            u = torch.addcmul(u, h_in[:, o : o + w], self.dw[j])
        u = self.fc2(self.act(self.fc1(self.ln(u))))
        return (h[:, r : r + w] if valid else h) + u


class AbsorbingDenoiser(nn.Module):
    """Tokens (B, W) in 0..27 (27 = MASK) -> hidden (B, W, d); :meth:`logits`
    turns hidden rows into (N, 27) logits. Any width W works (zero padding at
    the edges of each row)."""

    def __init__(self, config: AbsorbingConfig | dict | None = None):
        super().__init__()
        if config is None:
            config = AbsorbingConfig()
        elif isinstance(config, dict):
            config = AbsorbingConfig.from_dict(config)
        self.config = config
        c = config
        self.embed = nn.Embedding(K + 1, c.d)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)
        self.blocks = nn.ModuleList(Block(c.d, c.ff, c.kernel, dil, c.act) for dil in c.dilations)
        self.ln_out = nn.LayerNorm(c.d)
        self.out = nn.Linear(c.d, K)

    @property
    def length(self) -> int:
        return int(self.config.length)

    def radius(self) -> int:
        """Positions each side that can influence an output (the receptive field's half width)."""
        return sum(b.radius() for b in self.blocks)

    def forward(self, tokens: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """``valid``: valid convolutions, (B, W) -> (B, W - 2 radius(), d): the
        outputs of the positions at least radius() from both ends, which no
        padding reaches (the coder's rows carry halos of that width); else
        (B, W, d) with zero padding at each block."""
        h = self.embed(tokens)
        for blk in self.blocks:
            h = blk(h, valid)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln_out(hidden))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- order families
def levels(length: int) -> np.ndarray:
    """The level of each position 0..length-1 of a chunk (int64): 0 for
    p = 0, else ceil(log2 length) - trailing_zeros(p)."""
    p = np.arange(length, dtype=np.int64)
    nb = max(1, int(length - 1).bit_length())
    tz = np.zeros(length, dtype=np.int64)
    q = p.copy()
    for _ in range(nb):
        z = (q > 0) & (q % 2 == 0)
        tz += z
        q = np.where(z, q // 2, q)
    return np.where(p > 0, nb - tz, 0)


def block_of(order: str) -> int:
    """B of a ``blockedB`` order family, 0 for the others."""
    return int(order[len("blocked"):]) if order.startswith("blocked") else 0


def position_classes(order: str, length: int) -> np.ndarray:
    """The rank class of each position 0..length-1 of a chunk (int64): an
    order of the family reveals the classes one after the other, each in a
    uniformly random order. ``spread``: the position's level (:func:`levels`);
    ``random``: 0 everywhere; ``blockedB``: ``p mod B``, so the chunk is
    coded as L/B blocks of B characters, all blocks left to right in lock
    step (column j of every block is revealed after columns 0..j-1), and
    every position but a block's first sees its left neighbours."""
    if order == "random":
        return np.zeros(length, dtype=np.int64)
    if order == "spread":
        return levels(length)
    b = block_of(order)
    if order not in ORDERS or b < 1:
        raise ValueError(f"unknown order family {order!r}")
    return np.arange(length, dtype=np.int64) % b


def order_classes(order: str, m: int, length: int) -> np.ndarray:
    """The class of each rank 0..m-1 of a chunk of m <= length positions
    (:func:`position_classes` of its positions, sorted: the classes are
    revealed in turn; all 0 for ``random`` orders)."""
    return np.sort(position_classes(order, length)[:m], kind="stable")


def num_classes(order: str, length: int) -> int:
    return int(position_classes(order, length).max()) + 1


def sample_ranks(n: int, length: int, order: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, length) ranks: for each of n chunks, each position's place in an
    order drawn from the family (0-based)."""
    u = torch.rand(n, length, generator=generator, dtype=torch.float64)
    if order != "random":
        u = u + torch.from_numpy(position_classes(order, length)).to(torch.float64)[None, :]  # class-major, u breaks ties
    return u.argsort(1).argsort(1)


def row_masks(b: int, chunks: int, length: int, halo: int, order: str, generator: torch.Generator | None = None,
              t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of ``b`` rows of ``chunks`` whole chunks plus ``halo`` positions
    of the neighbouring chunks on each side (width chunks * length + 2 halo):
    t uniform in 1..length per row (unless given), shared by the row's chunks,
    each chunk with its own order. Returns (t, masked): masked (b, width) is
    True where the chunk's rank >= t - 1."""
    if t is None:
        t = torch.randint(1, length + 1, (b,), generator=generator)
    side = -(-halo // length)  # neighbouring chunks the halos reach into
    nch = chunks + 2 * side
    rank = sample_ranks(b * nch, length, order, generator).reshape(b, nch * length)
    lo = side * length - halo
    rank = rank[:, lo : lo + chunks * length + 2 * halo]
    return t, rank >= (t - 1)[:, None]


# --------------------------------------------------------------------------- the ARDM objective
def masked_nll_bits(model: AbsorbingDenoiser, x: torch.Tensor, masked: torch.Tensor,
                    target: torch.Tensor | None = None) -> torch.Tensor:
    """-log2 p(x_k | revealed) at every ``target`` position (default: every
    masked one) of the rows' central part (the row minus ``radius()`` on each
    side, what valid convolutions output), a 1-D tensor in row-major order;
    ``target`` has the central part's shape. Positions of ``x`` that hold
    MASK (beyond the ends of a text) stay MASK."""
    r = model.radius()
    tokens = torch.where(masked, torch.full_like(x, MASK), x)
    h = model(tokens, valid=True)
    centre = masked[:, r : masked.shape[1] - r] if target is None else target
    logp = F.log_softmax(model.logits(h[centre]).float(), dim=-1)
    return -logp.gather(1, x[:, r : x.shape[1] - r][centre][:, None])[:, 0] / LN2


def revealed_next(order: str, length: int, t: torch.Tensor, masked_centre: torch.Tensor) -> torch.Tensor:
    """The masked positions of each row's central part (whole chunks) that can
    be the one revealed at step t: those of the class (:func:`order_classes`)
    of rank t - 1. Orders are uniform within a class, so the mean of -log2 p
    over them is the expected cost of step t of the coder's order, and its
    mean over uniform t is the bound of coding the chunk in that order."""
    b, width = masked_centre.shape
    cls = torch.from_numpy(np.tile(position_classes(order, length), width // length))
    cur = torch.from_numpy(order_classes(order, length, length))[t - 1]
    return masked_centre & (cls[None, :] == cur[:, None])


def ardm_loss(model: AbsorbingDenoiser, x: torch.Tensor, generator: torch.Generator | None = None,
              t: torch.Tensor | None = None, others: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound per row in bits per char, (mean over rows for backward,
    per-row values). ``x``: (b, k L + 2 radius()) symbols, rows of k chunks
    with their context (:func:`row_masks`); each row's value is the mean of
    -log2 p over the positions of its k chunks that step t may reveal
    (:func:`revealed_next`): for ``random`` orders every masked position, for
    ``spread`` ones the masked positions of the level being revealed, an
    unbiased estimate (over t and the orders) of the bits of coding the chunk
    one position at a time in the coder's order.

    ``others`` > 0 adds that weight times the mean over the other masked
    positions (predictions the coder never uses at this t: a regulariser,
    not part of the bound; the per-row values never include it)."""
    b, width = x.shape
    L, r = model.length, model.radius()
    chunks, rest = divmod(width - 2 * r, L)
    if rest or chunks < 1:
        raise ValueError(f"rows must be k * {L} + 2 * {r} wide, got {width}")
    t, masked = row_masks(b, chunks, L, r, model.config.order, generator, t)
    centre = masked[:, r : width - r]
    target = revealed_next(model.config.order, L, t, centre) if others <= 0.0 else centre
    nll = masked_nll_bits(model, x, masked, target)
    if others > 0.0:
        nxt = revealed_next(model.config.order, L, t, centre)[centre]
        main = _row_means(nll, nxt, centre, b)
        rest_rows = _row_means(nll, ~nxt, centre, b)
        return (main + others * rest_rows).mean(), main.detach()
    per_row = _row_means(nll, torch.ones_like(nll, dtype=torch.bool), target, b)
    return per_row.mean(), per_row.detach()


def _row_means(nll: torch.Tensor, keep: torch.Tensor, where: torch.Tensor, b: int) -> torch.Tensor:
    """Per row, the mean of ``nll[keep]``; ``nll`` lists the True places of
    ``where`` (b, W) row-major; rows with none of them give 0."""
    rows = torch.arange(b).repeat_interleave(where.sum(1))[keep]
    sums = torch.zeros(b, dtype=nll.dtype).index_add_(0, rows, nll[keep])
    counts = torch.zeros(b, dtype=nll.dtype).index_add_(0, rows, torch.ones_like(nll[keep]))
    return sums / counts.clamp_min(1)


def row_width(model: AbsorbingDenoiser, chunks: int) -> int:
    return chunks * model.length + 2 * model.radius()


@torch.no_grad()
def window_bpc(model: AbsorbingDenoiser, sym: np.ndarray, chunks: int = 4, seed: int = 1234,
               batch: int = 16) -> dict:
    """Held-out estimate of the full-order bound in bits per char (the
    estimator of :func:`ardm_loss`): ``sym`` cut into rows of ``chunks`` chunks (with their neighbours as context, MASK
    beyond the ends of ``sym``), each row at one t, the t stratified over the
    rows (so they cover 1..L evenly), fixed seed."""
    was = model.training
    model.eval()
    L, r = model.length, model.radius()
    span = chunks * L
    n = (len(sym) // span) * span
    nr = n // span
    if nr == 0:
        raise ValueError(f"need at least {span} symbols")
    pad = np.concatenate([np.full(r, MASK), np.asarray(sym[:n], dtype=np.int64), np.full(r, MASK)])
    idx = np.arange(nr)[:, None] * span + np.arange(span + 2 * r)[None, :]
    x = torch.from_numpy(pad[idx])
    rng = np.random.default_rng(seed)
    u = (rng.permutation(nr) + rng.random(nr)) / nr
    t_all = torch.from_numpy(np.minimum((u * L).astype(np.int64), L - 1) + 1)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for b in range(0, nr, batch):
        xb = x[b : b + batch]
        t, masked = row_masks(xb.shape[0], chunks, L, r, model.config.order, gen, t_all[b : b + batch])
        target = revealed_next(model.config.order, L, t, masked[:, r : xb.shape[1] - r])
        nll = masked_nll_bits(model, xb, masked, target)  # MASK beyond the ends of sym: halo only, never in the loss
        per_row = _row_means(nll.double(), torch.ones_like(nll, dtype=torch.bool), target, xb.shape[0])
        total += float(per_row.sum())
    model.train(was)
    return {"bpc": total / nr, "chars": n}
