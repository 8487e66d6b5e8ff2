"""Discrete Flows (Tran et al. 2019) for text: bipartite modular flows on Z_K^D.

A sequence ``x`` of ``D`` symbols in ``Z_K`` (``K = 27``: the text8 alphabet of
:mod:`amdcompress.codecs.textstream`) goes through ``layers`` coupling layers. Layer
``l`` splits the positions by parity: the *conditioning* half ``a`` (positions
``p`` with ``p % 2 == l % 2``) is kept, the other half ``b`` becomes::

    y_b = (mu(x_a) + sigma(x_a) * x_b) mod K

``mu`` and ``sigma`` are argmaxes of logits from a small non-causal 1-D conv net
that sees only the ``a`` half (the ``b`` positions are zeroed and flagged by a
mask channel). ``sigma`` must be a unit of ``Z_K`` (coprime to ``K``): the
logits of non-units are masked out (for ``K = 27 = 3^3`` the 18 scales not
divisible by 3 remain), so the layer is a bijection with inverse
``x_b = sigma^-1 (y_b - mu) mod K`` (:func:`mod_inverses`). Since the flow is a
bijection of a finite set, ``P(x) = P_base(f(x))`` exactly: no Jacobian.

Bases, over ``z = f(x)``:

* ``factorized``: one learned categorical per position of the chunk.
* ``ar``: a 1-layer char LSTM over ``z`` (the paper's *discrete autoregressive
  flow* with bipartite layers below it); its state may carry across chunks.

Training: forward values are exact one-hots (argmax); gradients flow through
``softmax(logits / temperature)`` (straight-through, as in the paper's code),
and the modular affine map acts on one-hot vectors by permutation
(:func:`one_hot_multiply`, :func:`one_hot_add`) so gradients reach ``mu``,
``sigma`` and the earlier layers. Coding uses the integer path
(:meth:`DiscreteFlow.flow_forward` / :meth:`DiscreteFlow.flow_inverse`) which,
by construction, computes the same ``z`` (tested).

Chunks shorter than ``chunk`` (the tail of a file) are valid inputs: the conv
nets work at any length and the factorized base uses its first positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config

LN2 = math.log(2.0)


@dataclass
class DiscreteFlowConfig(Config):
    arch: str = "discrete-flow-bipartite"
    version: int = 1
    k: int = 27              # alphabet size
    chunk: int = 128         # symbols per flow chunk (D)
    layers: int = 2          # coupling layers (0: the base alone)
    net_hidden: int = 96     # conv channels of a coupling net
    net_depth: int = 3       # conv layers of a coupling net
    kernel: int = 5
    temperature: float = 0.1 # softmax temperature of the straight-through gradient
    base: str = "ar"         # "ar" (LSTM over z) or "factorized"
    hidden: int = 512        # LSTM width (ar base)
    emb: int = 64            # z embedding (ar base)



# -- modular arithmetic ----------------------------------------------------------
def units(k: int) -> torch.Tensor:
    """(k,) bool: True for the scales coprime to k (the invertible ones)."""
    return torch.tensor([math.gcd(s, k) == 1 for s in range(k)], dtype=torch.bool)


def mod_inverses(k: int) -> torch.Tensor:
    """(k,) long: ``inv[s] * s == 1 (mod k)`` for every unit s; 0 elsewhere."""
    return torch.tensor([pow(s, -1, k) if math.gcd(s, k) == 1 else 0 for s in range(k)], dtype=torch.long)


class _StraightThroughArgmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, temperature):
        soft = torch.softmax(logits / temperature, -1)
        ctx.save_for_backward(soft)
        ctx.temperature = temperature
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

    @staticmethod
    def backward(ctx, g):
        (soft,) = ctx.saved_tensors
        return soft * (g - (g * soft).sum(-1, keepdim=True)) / ctx.temperature, None


def one_hot_argmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Forward: the exact one-hot of the argmax (bit-exact 0/1 values).
    Backward: the gradient of ``softmax(logits / temperature)`` (straight-through)."""
    return _StraightThroughArgmax.apply(logits, temperature)


def one_hot_add(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """One-hot of ``(x + shift) mod K`` for one-hot(-like) x, shift (..., K),
    differentiable in both: ``out[k] = sum_i shift[i] x[(k - i) mod K]``."""
    k = x.shape[-1]
    idx = (torch.arange(k)[None, :] - torch.arange(k)[:, None]) % k       # [i, k] -> k - i
    return torch.einsum("...i,...ik->...k", shift, x[..., idx])


def one_hot_multiply(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One-hot of ``(scale * x) mod K`` for a unit scale: ``out[k] = sum_j
    scale[j] x[(k * j^-1) mod K]`` (non-unit entries of ``scale`` must be 0)."""
    k = x.shape[-1]
    inv = mod_inverses(k)
    idx = (torch.arange(k)[None, :] * inv[:, None]) % k                  # [j, k] -> k * j^-1
    return torch.einsum("...j,...jk->...k", scale, x[..., idx])


# -- coupling layer ---------------------------------------------------------------
class Coupling(nn.Module):
    """One bipartite layer: positions of parity ``parity`` condition, the others
    are transformed by the modular location-scale map. Initialized near the
    identity: the output biases favour ``mu = 0`` and ``sigma = 1`` by
    ``2 * temperature`` (2 nats of the straight-through softmax), the output
    weights are small, so a fresh layer neither scrambles the text nor has a
    vanishing gradient."""

    def __init__(self, c: DiscreteFlowConfig, parity: int):
        super().__init__()
        self.k, self.parity, self.temperature = c.k, parity, c.temperature
        layers: list[nn.Module] = []
        ch = c.k + 1
        for i in range(c.net_depth - 1):
            dil = 2 ** i
            layers += [nn.Conv1d(ch, c.net_hidden, c.kernel, padding=dil * (c.kernel // 2), dilation=dil), nn.ReLU()]
            ch = c.net_hidden
        self.net = nn.Sequential(*layers)
        self.out = nn.Conv1d(ch, 2 * c.k, 1)
        self.register_buffer("unit_mask", units(c.k), persistent=False)
        self.register_buffer("inv", mod_inverses(c.k), persistent=False)
        with torch.no_grad():  # start near the identity (mu = 0, sigma = 1), 2 nats at the softmax temperature
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[0] = 2.0 * c.temperature
            if c.k > 1:
                self.out.bias[c.k + 1] = 2.0 * c.temperature

    def masks(self, d: int) -> torch.Tensor:
        """(d,) bool: True on the conditioning half ``a``."""
        return torch.arange(d) % 2 == self.parity

    def logits(self, y: torch.Tensor):
        """y (N, D, K) one-hot(-like) -> loc, scale logits (N, D, K); non-unit
        scales are -inf. Depends on y only through the ``a`` half."""
        a = self.masks(y.shape[1]).to(y.dtype)
        inp = torch.cat([y * a[None, :, None], a.expand(y.shape[0], 1, -1).transpose(1, 2)], -1)
        h = self.out(self.net(inp.transpose(1, 2))).transpose(1, 2)
        loc, scale = h[..., : self.k], h[..., self.k :]
        return loc, scale.masked_fill(~self.unit_mask, -math.inf)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Training path: one-hot (N, D, K) -> one-hot (N, D, K) with straight-through gradients."""
        loc_l, scale_l = self.logits(y)
        loc = one_hot_argmax(loc_l, self.temperature)
        scale = one_hot_argmax(scale_l, self.temperature)
        yb = one_hot_add(one_hot_multiply(y, scale), loc)
        b = ~self.masks(y.shape[1])
        return torch.where(b[None, :, None], yb, y)

    @torch.no_grad()
    def params(self, y: torch.Tensor):
        """Integer path: y (N, D) -> (loc, scale) (N, D) long, scale a unit."""
        loc_l, scale_l = self.logits(F.one_hot(y, self.k).float())
        return loc_l.argmax(-1), scale_l.argmax(-1)

    @torch.no_grad()
    def forward_int(self, y: torch.Tensor) -> torch.Tensor:
        loc, scale = self.params(y)
        b = ~self.masks(y.shape[1])
        return torch.where(b[None, :], (loc + scale * y) % self.k, y)

    @torch.no_grad()
    def inverse_int(self, y: torch.Tensor) -> torch.Tensor:
        loc, scale = self.params(y)          # y_a == x_a: the same parameters
        b = ~self.masks(y.shape[1])
        return torch.where(b[None, :], ((y - loc) * self.inv[scale]) % self.k, y)


# -- bases --------------------------------------------------------------------------
class FactorizedBase(nn.Module):
    """One categorical per chunk position."""

    def __init__(self, c: DiscreteFlowConfig):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(c.chunk, c.k))

    def log_probs(self, z: torch.Tensor, state=None, prev=None):
        """z (N, D, K) -> log-probabilities (N, D, K), state (None)."""
        d = z.shape[1]
        return torch.log_softmax(self.logits[:d], -1).expand(z.shape[0], -1, -1), None


class ARBase(nn.Module):
    """p(z) = prod_d p(z_d | z_<d): one LSTM layer, input the previous z (a start
    token first), a linear head to K logits."""

    def __init__(self, c: DiscreteFlowConfig):
        super().__init__()
        self.k, self.hidden = c.k, c.hidden
        self.embed = nn.Embedding(c.k + 1, c.emb)      # row k: start token
        self.lstm = nn.LSTM(c.emb, c.hidden, batch_first=True)
        self.head = nn.Linear(c.hidden, c.k)

    def log_probs(self, z: torch.Tensor, state=None, prev=None):
        """z (N, D, K) one-hot(-like); ``prev`` (N,) the token before z[:, 0]
        (start token if None); ``state`` the LSTM state after it."""
        n = z.shape[0]
        first = self.embed.weight[self.k if prev is None else prev]
        if first.dim() == 1:
            first = first.expand(n, -1)
        rest = z[:, :-1] @ self.embed.weight[: self.k]
        h, state = self.lstm(torch.cat([first[:, None], rest], 1), state)
        return torch.log_softmax(self.head(h), -1), state

    # -- coding: one step for a batch of lanes ----------------------------------
    def step(self, tokens: torch.Tensor, state):
        """tokens (L,), state (h, c) each (L, hidden) -> (logits (L, K), new state).
        The encoder and decoder both call exactly this with the same layout."""
        w_ih, w_hh = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0
        b_ih, b_hh = self.lstm.bias_ih_l0, self.lstm.bias_hh_l0
        h, c = state
        gates = F.linear(self.embed(tokens), w_ih, b_ih) + F.linear(h, w_hh, b_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h), (h, c)

    def zero_state(self, n: int):
        z = torch.zeros(n, self.hidden)
        return (z, z.clone())


class DiscreteFlow(nn.Module):
    """Bipartite discrete flow plus base. ``forward`` gives training NLLs;
    ``flow_forward``/``flow_inverse`` are the exact integer bijection the coder
    (:mod:`.discrete_flow_coding`) uses."""

    def __init__(self, config: DiscreteFlowConfig | None = None):
        super().__init__()
        c = self.config = config or DiscreteFlowConfig()
        if c.base not in ("ar", "factorized"):
            raise ValueError(f"unknown base {c.base!r}")
        self.k = c.k
        self.couplings = nn.ModuleList(Coupling(c, l % 2) for l in range(c.layers))
        self.base = ARBase(c) if c.base == "ar" else FactorizedBase(c)

    def forward(self, x: torch.Tensor, state=None, prev=None):
        """x (N, D) symbols -> (-log2 p per position (N, D), base state, z (N, D)).
        Training path: straight-through one-hots; the sum over positions is the
        exact -log2 P(x) of the chunk (given the base state)."""
        y = F.one_hot(x, self.k).float()
        for layer in self.couplings:
            y = layer(y)
        logp, state = self.base.log_probs(y, state, prev)
        return -(y * logp).sum(-1) / LN2, state, y.detach().argmax(-1)

    @torch.no_grad()
    def flow_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) long -> z (N, D) long: the exact bijection."""
        for layer in self.couplings:
            x = layer.forward_int(x)
        return x

    @torch.no_grad()
    def flow_inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) long -> x (N, D) long; ``flow_inverse(flow_forward(x)) == x``."""
        for layer in reversed(self.couplings):
            z = layer.inverse_int(z)
        return z

    @torch.no_grad()
    def nll_bits(self, x: torch.Tensor, state=None, prev=None):
        """Integer path: exact -log2 P per position (N, D) and the base state."""
        z = self.flow_forward(x)
        logp, state = self.base.log_probs(F.one_hot(z, self.k).float(), state, prev)
        return -logp.gather(-1, z[..., None])[..., 0] / LN2, state


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
