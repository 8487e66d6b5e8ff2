"""Argmax Flow for text with a *coupling-flow* prior that is an exact bijection
on the coding grid (the non-autoregressive variant of issue 5).

Characters ``x`` in ``0..26`` use the same binary code and the same
thresholding ``q(v|x)`` as the shipped autoregressive model
(:class:`~.argmax.ThresholdQ`, ``v`` in R^5 per character, bit ``i`` = ``[v_i > 0]``).
Text is cut into chunks of ``L`` characters; ``v`` of a chunk has shape ``(L, 5)``.

Prior ``p(v) = base(f(v))``, ``f`` a stack of volume-preserving additive
couplings with rounding (as in IDF), so ``log|det| = 0``:

* grid: step ``delta = 2**-b``; ``floor(v / delta)`` is ``v``'s grid bin and
  ``(floor(v / delta) + 1/2) * delta`` its bin centre.
* coupling ``l`` with a fixed mask ``A_l`` over the ``(L, 5)`` entries
  (alternating even/odd character positions and two splits of the 5 bit
  dimensions): ``v_B <- v_B + delta * round(t_l(centre(v_A)) / delta)``, the
  entries of ``A_l`` unchanged. ``t_l`` is a small dilated 1-D convolution
  net over the chunk, bounded by ``shift_max * tanh``. Rounding uses the
  straight-through gradient in training.
* base: a factorized mixture of ``M`` logistics per (position in chunk, bit
  dimension), learned parameters.

Because the shifts are whole grid steps computed from *bin centres*, ``f``
maps every grid bin onto a grid bin: in grid units ``k = floor(v / delta)``
it is the integer bijection :meth:`ArgmaxCouplingFlow.forward_int` (inverse
:meth:`~ArgmaxCouplingFlow.inverse_int`), and the continuous density used in
training is exactly the one whose bin masses the coder uses
(:mod:`.argmax_coupling_coding`). Partial chunks (:func:`chunk_sizes`) are
padded at the end with the constant grid value :func:`pad_k` (the bin of a
typical space) at positions that are never shifted and never coded; training
sees a share of such partial chunks too.

Loss: negative ELBO ``E_q[log q(v|x) - log base(f(v))]`` in bits per
character, one reparameterized sample of ``q``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argmax.network import BITS, K, LN2, ThresholdQ, logistic_mixture_logpdf

from ..config import Config

LOG_SCALE_MIN, LOG_SCALE_MAX = -6.0, 4.0
DIM_SPLITS = ((0, 1), (0, 2, 4))     # conditioning dims of the two bit-dimension splits


@dataclass
class CouplingConfig(Config):
    arch: str = "argmax-coupling-binary"
    version: int = 1
    chunk: int = 128        # characters per chunk (L)
    layers: int = 8         # additive couplings
    hidden: int = 96        # channels of each coupling net
    kernel: int = 5
    mixtures: int = 4       # logistic components of the factorized base
    delta_bits: int = 3     # coding grid step 2**-b (fixed at training time)
    shift_max: float = 8.0  # |shift| bound (units of v)
    q: str = "threshold"



def pad_k(delta_bits: int) -> int:
    """Grid bin of padding entries: ``v = -1.5`` (all bits 0, a space)."""
    return -int(round(1.5 * (1 << delta_bits)))


def condition_mask(layer: int, chunk: int) -> torch.Tensor:
    """Boolean (L, 5) mask of the entries coupling ``layer`` conditions on (kept);
    the others are shifted. Layers cycle through: even positions kept, odd
    positions kept, dims split kept, its complement kept; the dims split
    alternates between :data:`DIM_SPLITS` from one cycle of four to the next."""
    kind, cycle = layer % 4, layer // 4
    pos = torch.arange(chunk)[:, None].expand(chunk, BITS)
    dim = torch.arange(BITS)[None, :].expand(chunk, BITS)
    if kind == 0:
        return pos % 2 == 0
    if kind == 1:
        return pos % 2 == 1
    split = torch.zeros(BITS, dtype=torch.bool)
    split[list(DIM_SPLITS[cycle % len(DIM_SPLITS)])] = True
    keep = split[dim]
    return keep if kind == 2 else ~keep


class CouplingNet(nn.Module):
    """t(v_A): (N, 10, L) [masked bin centres, mask] -> (N, 5, L) shifts (units of v)."""

    def __init__(self, hidden: int, kernel: int):
        super().__init__()
        p = kernel // 2
        self.inp = nn.Conv1d(2 * BITS, hidden, kernel, padding=p)
        self.mid1 = nn.Conv1d(hidden, hidden, kernel, padding=2 * p, dilation=2)
        self.mid2 = nn.Conv1d(hidden, hidden, kernel, padding=4 * p, dilation=4)
        self.out = nn.Conv1d(hidden, BITS, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(h))
        h = h + F.relu(self.mid1(h))
        h = h + F.relu(self.mid2(h))
        return self.out(h)


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    return t + (torch.round(t) - t).detach()


class ArgmaxCouplingFlow(nn.Module):
    """Thresholding q(v|x) and a grid-exact coupling-flow prior over chunks."""

    def __init__(self, config: CouplingConfig | None = None):
        super().__init__()
        c = self.config = config or CouplingConfig()
        self.delta = 2.0 ** -c.delta_bits
        self.q = ThresholdQ()
        self.nets = nn.ModuleList(CouplingNet(c.hidden, c.kernel) for _ in range(c.layers))
        masks = torch.stack([condition_mask(l, c.chunk) for l in range(c.layers)])
        self.register_buffer("cond", masks, persistent=False)           # (layers, L, 5) bool
        m = c.mixtures
        self.base_means = nn.Parameter(torch.linspace(-2.0, 2.0, m).repeat(c.chunk, BITS, 1))
        self.base_log_scales = nn.Parameter(torch.full((c.chunk, BITS, m), math.log(0.5)))
        self.base_logits = nn.Parameter(torch.zeros(c.chunk, BITS, m))

    # -- the flow --------------------------------------------------------------------
    def base_params(self):
        """Means, clamped log scales and logits of the base, each (L, 5, M)."""
        return self.base_means, self.base_log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX), self.base_logits

    def shift_units(self, layer: int, centres: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Unrounded shift, in grid steps, of coupling ``layer`` for bin centres
        (N, L, 5): zero on the kept entries and on padding (``valid`` (N, L) False)."""
        cm = self.cond[layer]
        inp = torch.cat([torch.where(cm, centres, torch.zeros_like(centres)),
                         cm.to(centres.dtype).expand_as(centres)], -1)          # (N, L, 10)
        t = self.nets[layer](inp.transpose(1, 2)).transpose(1, 2)              # (N, L, 5)
        s = self.config.shift_max
        t = s * torch.tanh(t / s) / self.delta
        keep = cm.expand_as(t)
        if valid is not None:
            keep = keep | ~valid[:, :, None]
        return torch.where(keep, torch.zeros_like(t), t)

    def flow(self, v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """z = f(v) for continuous v (N, L, 5), differentiable (straight-through
        through the bin quantization and the rounding of the shifts)."""
        d = self.delta
        for layer in range(self.config.layers):
            centres = (torch.floor(v / d) + 0.5) * d
            centres = v + (centres - v).detach()
            v = v + d * _round_ste(self.shift_units(layer, centres, valid))
        return v

    @torch.no_grad()
    def forward_int(self, k: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Grid bins (N, L, 5) int64 -> grid bins of z = f(v): exact integers."""
        for layer in range(self.config.layers):
            k = k + self._int_shift(layer, k, valid)
        return k

    @torch.no_grad()
    def inverse_int(self, k: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of :meth:`forward_int` (the couplings undone in reverse order);
        exact because each layer's shift depends only on entries it keeps."""
        for layer in reversed(range(self.config.layers)):
            k = k - self._int_shift(layer, k, valid)
        return k

    def _int_shift(self, layer: int, k: torch.Tensor, valid) -> torch.Tensor:
        centres = (k.to(torch.float32) + 0.5) * self.delta
        return torch.round(self.shift_units(layer, centres, valid)).to(torch.int64)

    # -- training --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Negative ELBO in bits per character (N, L) for chunks x (N, L); with
        ``valid`` (N, L) bool, invalid positions are padding (v fixed to the
        centre of :func:`pad_k`, never shifted) and get 0."""
        v, log_q = self.q.sample(x)
        if valid is not None:
            pad = (pad_k(self.config.delta_bits) + 0.5) * self.delta
            v = torch.where(valid[:, :, None], v, torch.full_like(v, pad))
        z = self.flow(v, valid)
        means, ls, logits = self.base_params()
        log_p = logistic_mixture_logpdf(z, means, ls, logits)
        out = (log_q - log_p).sum(-1) / LN2
        return out if valid is None else torch.where(valid, out, torch.zeros_like(out))


WARMUP_FIRST = 16   # characters of the first chunk
WARMUP_DIV = 8      # a chunk has at most WARMUP_FIRST + (characters before it) // WARMUP_DIV


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Sizes of the consecutive chunks that n >= 0 characters are cut into:
    a warm-up of growing partial chunks (``WARMUP_FIRST`` characters, then at
    most ``WARMUP_FIRST + done // WARMUP_DIV``), then full chunks of ``chunk``;
    the last chunk takes what is left. The warm-up keeps the initial bits of
    bits-back small: a chunk's pops are paid by what the chunks before it
    pushed, about ``ELBO * done`` bits, instead of by the initial-bits seed."""
    sizes, done = [], 0
    while done < n:
        size = min(chunk, WARMUP_FIRST + done // WARMUP_DIV, n - done)
        sizes.append(size)
        done += size
    return sizes


@torch.no_grad()
def chunked_nelbo_bits(model: ArgmaxCouplingFlow, sym, samples: int = 1, seed: int = 0, batch: int = 64) -> float:
    """Negative ELBO in bits (one q sample per character, averaged over
    ``samples``, fixed seed) of the symbols ``sym`` cut into chunks exactly as
    the coder cuts them (:func:`chunk_sizes`, partial chunks padded): what the
    coded size is compared with."""
    x = torch.as_tensor(sym, dtype=torch.int64).reshape(-1)
    n = int(x.numel())
    if n == 0:
        return 0.0
    L = model.config.chunk
    sizes = torch.tensor(chunk_sizes(n, L))
    c = len(sizes)
    valid = torch.arange(L)[None, :] < sizes[:, None]
    X = torch.zeros(c, L, dtype=torch.int64)
    X[valid] = x
    was = model.training
    model.eval()
    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        for i in range(0, c, batch):
            total += float(model(X[i : i + batch], valid[i : i + batch]).sum())
    torch.random.set_rng_state(g)
    model.train(was)
    return total / samples


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ArgmaxCouplingFlow", "CouplingConfig", "chunk_sizes", "chunked_nelbo_bits", "condition_mask",
           "count_params", "pad_k", "K", "BITS"]
