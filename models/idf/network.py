"""Integer Discrete Flows (Hoogeboom et al. 2019) for 8-bit images.

The flow is an exact bijection on integer tensors, so the likelihood of an
image is the likelihood of its latents: ``log P(x) = sum log P(z)``, and coding
needs no bits-back (see :mod:`.idf_coding`).

Structure, for ``levels`` levels (an image ``x`` of ``C`` channels, centered as
``x - 128``)::

    for level l:  squeeze 2x2 (channels x4)
                  couplings: permute channels (fixed, seeded), z_b = x_b + round(t(x_a))
                  l < levels-1: factor out half the channels, coded under a
                      discretized logistic mixture whose parameters a conv net
                      computes from the kept half; the kept half goes on.
                      For levels in ``context_levels`` the factored half is
                      coded in stages (spatial phase x channel group), each
                      stage's mixtures corrected by a conv net that also sees
                      the stages before it (:class:`FactorContext`)
                  top level: split in halves a, b: b | a under a conditional
                      mixture (conv net on a), a under learned per-channel
                      constants; with ``top_groups`` G > 1, a is coded in G
                      channel groups, group g under the constants plus a conv
                      net on groups < g (:class:`TopCascade`)

One definition of the distributions serves training (:meth:`IDF.forward`, the
negative log-likelihood in bits per dimension, float32) and coding
(:meth:`IDF.analyse` and the per-level inverse used by the decoder).
Parameters of every coded part have the shape ``(N, c, h, w, K)``, so that
``z.reshape(-1)`` and ``params.reshape(-1, K)`` line up symbol for symbol.
"""
from __future__ import annotations

import math
import random
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Bounds shared with the coder: translations are clamped to +-T_MAX, latents
# must stay inside [-2**15, 2**15 - 1] (the coder's escape range).
T_MAX = 4096.0
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 12.0  # same clamp as codecs.distributions
CENTER = 128

DEFAULT_CONFIG = {
    "arch": "idf",
    "version": 1,
    "in_channels": 3,
    "levels": 3,
    "couplings": [4, 6, 6],     # per level
    "width": [48, 96, 128],     # coupling-net width per level
    "blocks": 1,                # residual blocks per net
    "block_kernels": [3, 1],    # kernel sizes of the two convs of a residual block
    "prior_width": [80, 128, 128],  # prior-net width per level (last: top b|a net)
    "prior_blocks": 1,
    "mixtures": 5,              # logistic components of every prior
    "in_scale": 1.0 / 64,       # net input = latent * in_scale
    "t_scale": 32.0,            # translation = net output * t_scale (integer units)
    "mu_scale": 32.0,           # prior mean = net output * mu_scale
    "top_groups": 1,            # channel groups of the top 'a' latent (1: constants only)
    "top_width": 64,            # width of each top-cascade net
    "context_levels": [],       # levels whose factored-out half is coded in stages (FactorContext)
    "context_phases": 4,        # spatial phases of those stages: 1, 2 (checkerboard) or 4 (2x2 sub-lattice)
    "context_groups": 2,        # channel groups of those stages
    "context_width": 64,        # width of the context nets
    "seed": 0,                  # seeds the channel permutations
    "perms": None,              # filled in by make_config
}


def make_config(**overrides) -> dict:
    """A complete config: defaults, overrides, and the seeded permutations."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(overrides)
    L = cfg["levels"]
    for key in ("couplings", "width", "prior_width"):
        v = cfg[key]
        if isinstance(v, int):
            cfg[key] = [v] * L
        if len(cfg[key]) != L:
            raise ValueError(f"config {key!r} needs {L} entries")
    if cfg.get("perms") is None:
        rng = random.Random(cfg["seed"])
        perms = []
        c = cfg["in_channels"]
        for lev in range(L):
            c *= 4
            level_perms = []
            for _ in range(cfg["couplings"][lev]):
                p = list(range(c))
                rng.shuffle(p)
                level_perms.append(p)
            perms.append(level_perms)
            c //= 2
        cfg["perms"] = perms
    return cfg


def level_channels(cfg: dict) -> list[int]:
    """Channels after the squeeze of each level."""
    out, c = [], cfg["in_channels"]
    for _ in range(cfg["levels"]):
        c *= 4
        out.append(c)
        c //= 2
    return out


# ---------------------------------------------------------------------------
# building blocks


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2); channel index = c*4 + 2*dy + dx."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.reshape(n, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * 2, w * 2)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer (ties to even) with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()


# ---------------------------------------------------------------------------
# inference without layout round trips
#
# torch runs a float32 CPU convolution through oneDNN ("Mkldnn" backend) when
# its heuristics say so: it reorders the NCHW input into oneDNN's blocked
# layout, reorders the weights, runs the convolution primitive, and reorders
# the output back to NCHW, for every call. A ResNet pass below keeps the
# activations in the blocked layout between convolutions and packs each
# weight once: the same oneDNN convolution primitive (implementation, memory
# formats and problem, as oneDNN's verbose log shows) runs on the same
# numbers, and ReLU and the residual sum are exact elementwise operations, so
# the outputs are bit-identical while about a third of the time (the
# reorders) goes away. Every convolution asks torch which backend it would
# pick for that input; one torch would not hand to oneDNN (single images:
# im2col + GEMM, "Slow2d") runs exactly as before on a dense tensor. Used only
# without autograd (coding, evaluation); training takes the plain path.

_MKLDNN = torch._C._ConvBackend.Mkldnn if hasattr(torch._C, "_ConvBackend") else None
_backend_cache: dict = {}
_packed_weights: "weakref.WeakKeyDictionary[nn.Conv2d, tuple]" = weakref.WeakKeyDictionary()


def _blocked_ok(x: torch.Tensor) -> bool:
    return (_MKLDNN is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 4 and x.numel() > 0
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _uses_mkldnn(conv: nn.Conv2d, shape: torch.Size) -> bool:
    """Would torch run ``conv`` on a dense float32 input of this shape through oneDNN?"""
    key = (tuple(shape), tuple(conv.weight.shape), conv.bias is not None, tuple(conv.stride),
           tuple(conv.padding), tuple(conv.dilation), conv.groups, torch.get_num_threads(),
           torch.backends.mkldnn.enabled, torch.are_deterministic_algorithms_enabled())
    hit = _backend_cache.get(key)
    if hit is None:
        probe = torch.zeros(shape, dtype=torch.float32)
        try:
            hit = torch._C._select_conv_backend(probe, conv.weight.detach(), conv.bias, list(conv.stride),
                                                list(conv.padding), list(conv.dilation), False, [0, 0],
                                                conv.groups) == _MKLDNN
        except (RuntimeError, TypeError):  # a torch without this probe: the plain convolution
            hit = False
        _backend_cache[key] = hit
    return hit


def _packed(conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight
    stamp = (w._version, w.data_ptr(), tuple(w.shape))
    hit = _packed_weights.get(conv)
    if hit is None or hit[0] != stamp:
        wp = torch._C._nn.mkldnn_reorder_conv2d_weight(w.detach().contiguous().to_mkldnn(), list(conv.padding),
                                                       list(conv.stride), list(conv.dilation), conv.groups)
        hit = (stamp, wp)
        _packed_weights[conv] = hit
    return hit[1]


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; the result stays in oneDNN's layout when torch would use oneDNN."""
    if conv.padding_mode == "zeros" and _uses_mkldnn(conv, x.shape):
        xm = x if x.is_mkldnn else x.contiguous().to_mkldnn()
        bias = conv.bias.detach() if conv.bias is not None else None
        return torch.mkldnn_convolution(xm, _packed(conv), bias, list(conv.padding), list(conv.stride),
                                        list(conv.dilation), conv.groups)
    return conv(x.to_dense() if x.is_mkldnn else x)


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x.to_dense() if x.is_mkldnn else x


class ResNet(nn.Module):
    """conv3x3 -> [ReLU, conv3x3, ReLU, conv3x3 (+ skip)] x blocks -> ReLU -> conv3x3."""

    def __init__(self, c_in: int, c_out: int, width: int, blocks: int, zero_out: bool = True, kernels=(3, 3)):
        super().__init__()
        k1, k2 = kernels
        self.conv_in = nn.Conv2d(c_in, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, k1, padding=k1 // 2),
                          nn.ReLU(), nn.Conv2d(width, width, k2, padding=k2 // 2))
            for _ in range(blocks)
        )
        self.conv_out = nn.Conv2d(width, c_out, 3, padding=1)
        if zero_out:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)
        else:
            with torch.no_grad():
                self.conv_out.weight.mul_(0.1)
                self.conv_out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _blocked_ok(x):
            return self._forward_blocked(x)
        h = self.conv_in(x)
        for b in self.blocks:
            h = h + b(h)
        return self.conv_out(F.relu(h))

    def _forward_blocked(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without autograd, bit for bit, without layout round trips."""
        h = _conv(self.conv_in, x)
        for b in self.blocks:
            _, c1, _, c2 = b  # ReLU, conv, ReLU, conv
            r = _conv(c2, torch.relu(_conv(c1, torch.relu(h))))
            if h.is_mkldnn != r.is_mkldnn:
                h, r = _dense(h), _dense(r)
            h = h + r
        return _dense(_conv(self.conv_out, torch.relu(h)))


class Coupling(nn.Module):
    """Permute channels, then ``z_b = x_b + round(t(x_a))`` (exactly invertible)."""

    def __init__(self, channels: int, perm: list[int], width: int, blocks: int, in_scale: float, t_scale: float,
                 kernels=(3, 3)):
        super().__init__()
        p = torch.tensor(perm, dtype=torch.long)
        self.register_buffer("perm", p, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(p), persistent=False)
        self.ca = channels // 2
        self.net = ResNet(self.ca, channels - self.ca, width, blocks, zero_out=True, kernels=kernels)
        self.in_scale, self.t_scale = in_scale, t_scale

    def translation(self, a: torch.Tensor) -> torch.Tensor:
        t = self.net(a.contiguous() * self.in_scale) * self.t_scale
        return torch.clamp(t, -T_MAX, T_MAX)

    def forward(self, x: torch.Tensor, ste: bool = True) -> torch.Tensor:
        x = x[:, self.perm]
        a, b = x[:, : self.ca], x[:, self.ca :]
        t = self.translation(a)
        b = b + (round_ste(t) if ste else torch.round(t))
        return torch.cat([a, b], dim=1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        a, b = z[:, : self.ca], z[:, self.ca :]
        b = b - torch.round(self.translation(a))
        return torch.cat([a, b], dim=1)[:, self.inv_perm]


class MixturePrior(nn.Module):
    """Conditional discretized logistic mixture: a conv net on the conditioning
    tensor gives, for each of ``c_out`` channels, K means, log-scales, logits."""

    def __init__(self, c_in: int, c_out: int, k: int, width: int, blocks: int, in_scale: float, mu_scale: float,
                 kernels=(3, 3)):
        super().__init__()
        self.c_out, self.k = c_out, k
        self.net = ResNet(c_in, 3 * k * c_out, width, blocks, zero_out=False, kernels=kernels)
        self.in_scale, self.mu_scale = in_scale, mu_scale
        with torch.no_grad():  # break the symmetry between components: spread the means
            bias = self.net.conv_out.bias.view(3, c_out, k)
            bias[0] = torch.linspace(-0.5, 0.5, k) if k > 1 else 0.0
            bias[1] = 1.0

    def forward(self, cond: torch.Tensor):
        n, _, h, w = cond.shape
        out = self.net(cond.contiguous() * self.in_scale)
        out = out.view(n, 3, self.c_out, self.k, h, w).permute(1, 0, 2, 4, 5, 3)  # (3, N, c, h, w, K)
        return out[0] * self.mu_scale, out[1], out[2]


class ConstPrior(nn.Module):
    """Unconditional mixture with learned per-channel constants."""

    def __init__(self, c: int, k: int, mu_scale: float):
        super().__init__()
        self.mu = nn.Parameter(torch.linspace(-0.5, 0.5, k).repeat(c, 1) if k > 1 else torch.zeros(c, 1))
        self.log_scale = nn.Parameter(torch.full((c, k), 3.0))
        self.logit = nn.Parameter(torch.zeros(c, k))
        self.mu_scale = mu_scale

    def forward(self, n: int, h: int, w: int):
        def b(p):
            return p[None, :, None, None, :].expand(n, -1, h, w, -1)

        return b(self.mu * self.mu_scale), b(self.log_scale), b(self.logit)


class TopCascade(nn.Module):
    """Corrections to the constant top prior, one conv net per channel group
    g = 1 .. G-1 on the groups before it. The nets' last layers start at zero,
    so adding a cascade to a trained model leaves its likelihood unchanged."""

    def __init__(self, c: int, k: int, groups: int, width: int, blocks: int, in_scale: float, mu_scale: float,
                 kernels=(3, 3)):
        super().__init__()
        if not 1 <= groups <= c:
            raise ValueError(f"top_groups must lie in [1, {c}]")
        self.k, self.in_scale, self.mu_scale = k, in_scale, mu_scale
        self.bounds = [c * g // groups for g in range(groups + 1)]
        self.nets = nn.ModuleList(
            ResNet(self.bounds[g], 3 * k * (self.bounds[g + 1] - self.bounds[g]), width, blocks, zero_out=True,
                   kernels=kernels)
            for g in range(1, groups)
        )

    def correction(self, g: int, before: torch.Tensor):
        """Additive (mu, log_scale, logit) for group g >= 1, given groups < g (N, bounds[g], h, w)."""
        n, _, h, w = before.shape
        cg = self.bounds[g + 1] - self.bounds[g]
        out = self.nets[g - 1](before.contiguous() * self.in_scale)
        out = out.view(n, 3, cg, self.k, h, w).permute(1, 0, 2, 4, 5, 3)
        return out[0] * self.mu_scale, out[1], out[2]


def stage_map(c: int, h: int, w: int, phases: int, groups: int, device=None) -> torch.Tensor:
    """Stage of every element of a (c, h, w) latent: spatial phase * groups +
    channel group. Phases: 1 (all positions), 2 (checkerboard), 4 (the 2x2
    sub-lattice in the order (0,0), (1,1), (0,1), (1,0))."""
    ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    if phases == 1:
        ph = torch.zeros(h, w, dtype=torch.long, device=device)
    elif phases == 2:
        ph = (ii + jj) % 2
    elif phases == 4:
        ph = torch.zeros(h, w, dtype=torch.long, device=device)
        for k, (a, b) in enumerate([(0, 0), (1, 1), (0, 1), (1, 0)]):
            ph[(ii % 2 == a) & (jj % 2 == b)] = k
    else:
        raise ValueError("phases must be 1, 2 or 4")
    gr = torch.arange(c, device=device) * groups // c
    return ph[None] * groups + gr[:, None, None]


class FactorContext(nn.Module):
    """Stage-wise coding of a factored-out half z given the kept half: stage s
    holds the elements of :func:`stage_map` value s, coded under the level's
    prior plus a correction that a conv net computes from the kept half and
    the elements of stages < s. The net's last layer starts at zero, so adding
    a context to a trained model leaves its likelihood unchanged."""

    def __init__(self, c_cond: int, c: int, k: int, phases: int, groups: int, width: int, blocks: int,
                 in_scale: float, mu_scale: float, kernels=(3, 3)):
        super().__init__()
        if not 1 <= groups <= c:
            raise ValueError(f"context_groups must lie in [1, {c}]")
        self.c, self.k, self.phases, self.groups = c, k, phases, groups
        self.in_scale, self.mu_scale = in_scale, mu_scale
        self.net = ResNet(c_cond + 2 * c, 3 * k * c, width, blocks, zero_out=True, kernels=kernels)

    @property
    def stages(self) -> int:
        return self.phases * self.groups

    def stage_map(self, h: int, w: int, device=None) -> torch.Tensor:
        return stage_map(self.c, h, w, self.phases, self.groups, device)

    def stage_params(self, s: int, smap: torch.Tensor, cond: torch.Tensor, z: torch.Tensor, base):
        """Parameters of stage s, each (N, M_s, K): ``base`` (the level prior's
        (N, c, h, w, K) tensors) corrected from ``cond`` and the entries of z of
        stages < s (other entries of z are ignored: set to +0.0, so encoder and
        decoder feed the net identical tensors)."""
        n, _, h, w = z.shape
        known = (smap < s).expand(n, -1, -1, -1)
        zk = torch.where(known, z, torch.zeros((), dtype=z.dtype, device=z.device))
        inp = torch.cat([cond * self.in_scale, zk * self.in_scale, known.to(z.dtype)], dim=1)
        out = self.net(inp.contiguous()).view(n, 3, self.c, self.k, h, w).permute(1, 0, 2, 4, 5, 3)
        sel = smap == s
        mu, ls, lg = base
        return ((mu + out[0] * self.mu_scale)[:, sel], (ls + out[1])[:, sel], (lg + out[2])[:, sel])


def logistic_mixture_logp(z, mu, log_scale, logit) -> torch.Tensor:
    """log P(z) (nats) of a discretized logistic mixture on integer bins
    [z - 0.5, z + 0.5], no folding of end bins (latents have open support);
    the formula of codecs.distributions, written stably:
    sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(b - a)).
    z: (N, c, h, w); params: (N, c, h, w, K). Returns (N, c, h, w)."""
    ls = torch.clamp(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX)
    inv_s = torch.exp(-ls)
    c = (z.unsqueeze(-1) - mu) * inv_s
    a = c + 0.5 * inv_s
    b = c - 0.5 * inv_s
    log_bin = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-inv_s))
    return torch.logsumexp(log_bin + F.log_softmax(logit, dim=-1), dim=-1)


@dataclass
class Part:
    """One coded piece of the latent: integers ``z`` (N, c, h, w) and the
    mixture parameters it is coded with (each (N, c, h, w, K))."""

    z: torch.Tensor
    mu: torch.Tensor
    log_scale: torch.Tensor
    logit: torch.Tensor


class IDF(nn.Module):
    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = make_config(**(config or {})) if config is None or config.get("perms") is None else dict(config)
        self.config = cfg
        L, K = cfg["levels"], cfg["mixtures"]
        chans = level_channels(cfg)
        self.chans = chans
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        for lev in range(L):
            c = chans[lev]
            self.levels.append(
                nn.ModuleList(
                    Coupling(c, cfg["perms"][lev][i], cfg["width"][lev], cfg["blocks"], cfg["in_scale"], cfg["t_scale"],
                             cfg["block_kernels"])
                    for i in range(cfg["couplings"][lev])
                )
            )
            # factor-out prior (levels < L-1) or top b|a prior (last level): c/2 -> c/2
            self.priors.append(
                MixturePrior(c // 2, c - c // 2, K, cfg["prior_width"][lev], cfg["prior_blocks"], cfg["in_scale"],
                             cfg["mu_scale"], cfg["block_kernels"])
            )
        self.contexts = nn.ModuleDict({
            str(lev): FactorContext(chans[lev] // 2, chans[lev] - chans[lev] // 2, K, cfg.get("context_phases", 4),
                                    cfg.get("context_groups", 2), cfg.get("context_width", 64), cfg["prior_blocks"],
                                    cfg["in_scale"], cfg["mu_scale"], cfg["block_kernels"])
            for lev in cfg.get("context_levels", [])
        })
        self.top_prior = ConstPrior(chans[-1] // 2, K, cfg["mu_scale"])
        groups = cfg.get("top_groups", 1)
        self.top_cascade = (TopCascade(chans[-1] // 2, K, groups, cfg.get("top_width", 64), cfg["prior_blocks"],
                                       cfg["in_scale"], cfg["mu_scale"], cfg["block_kernels"])
                            if groups > 1 else None)

    def top_bounds(self) -> list[int]:
        """Channel boundaries of the top 'a' groups, in the order they are coded."""
        return self.top_cascade.bounds if self.top_cascade is not None else [0, self.chans[-1] // 2]

    def top_params(self, g: int, before: torch.Tensor | None, n: int, h: int, w: int):
        """Mixture parameters of top group g, given the groups before it ((N, bounds[g], h, w); None for g = 0)."""
        lo, hi = self.top_bounds()[g], self.top_bounds()[g + 1]
        mu, ls, lg = (p[:, lo:hi] for p in self.top_prior(n, h, w))
        if g == 0:
            return mu, ls, lg
        dm, dl, dg = self.top_cascade.correction(g, before)
        return mu + dm, ls + dl, lg + dg

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (pad first)."""
        return 2 ** self.config["levels"]

    # -- the flow, image -> parts (training and encoder) ----------------------
    def context(self, lev: int) -> FactorContext | None:
        """The stage-wise context of level ``lev``'s factored-out half, if it has one."""
        return self.contexts[str(lev)] if str(lev) in self.contexts else None

    def analyse(self, x: torch.Tensor, ste: bool = True) -> list[Part]:
        """Centered integer images (N, C, H, W) as float -> the coded parts in
        the decoder's pop order: the groups of top a, top b|a, then factor-outs
        from the deepest level down to level 0 (the stages of a level with a
        context in stage order; their parts are (N, M) latents with (N, M, K)
        parameters, the others (N, c, h, w) and (N, c, h, w, K))."""
        parts: list[Part] = []
        L = len(self.levels)
        for lev in range(L):
            x = squeeze(x)
            for cpl in self.levels[lev]:
                x = cpl(x, ste)
            half = x.shape[1] // 2
            keep, out = x[:, :half], x[:, half:]
            base = self.priors[lev](keep)
            ctx = self.context(lev)
            if ctx is None:
                parts.append(Part(out, *base))
            else:  # stages in decode order, appended reversed (the list is reversed below)
                smap = ctx.stage_map(out.shape[2], out.shape[3], out.device)
                for st in reversed(range(ctx.stages)):
                    parts.append(Part(out[:, smap == st], *ctx.stage_params(st, smap, keep, out, base)))
            if lev == L - 1:
                n, _, h, w = keep.shape
                b = self.top_bounds()
                for g in reversed(range(len(b) - 1)):
                    before = keep[:, : b[g]] if g else None
                    parts.append(Part(keep[:, b[g] : b[g + 1]], *self.top_params(g, before, n, h, w)))
            x = keep
        return parts[::-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centered images (N, C, H, W) float -> (mean bits/dim, bits per image (N,))."""
        parts = self.analyse(x, ste=True)
        nats = sum(logistic_mixture_logp(p.z, p.mu, p.log_scale, p.logit).flatten(1).sum(1) for p in parts)
        bits = -nats / math.log(2.0)
        dims = x[0].numel()
        return bits.mean() / dims, bits

    # -- the generative order ------------------------------------------------
    def generate(self, n: int, h: int, w: int):
        """The decoder's order, as a generator: it yields each coded part's
        parameters (a :class:`Part` with ``z=None``) in exactly :meth:`analyse`'s
        order, is sent that part's integer latents (a float32 tensor of the
        parameters' shape without the mixture axis), and returns the centered
        images (n, C, h, w) as float. The decoder pops each part under the
        yielded parameters; it needs nothing else of the model's structure."""
        a_shape = self.top_shape(n, h, w)
        bounds = self.top_bounds()
        x = torch.empty(n, 0, a_shape[2], a_shape[3])
        for g in range(len(bounds) - 1):
            z = yield Part(None, *self.top_params(g, x if g else None, n, a_shape[2], a_shape[3]))
            x = torch.cat([x, z.reshape(n, bounds[g + 1] - bounds[g], *a_shape[2:])], dim=1)
        for lev in reversed(range(len(self.levels))):
            base = self.priors[lev](x)
            cz = self.chans[lev] - self.chans[lev] // 2
            ctx = self.context(lev)
            if ctx is None:
                z = yield Part(None, *base)
                out = z.reshape(n, cz, x.shape[2], x.shape[3])
            else:
                out = torch.zeros(n, cz, x.shape[2], x.shape[3])
                smap = ctx.stage_map(x.shape[2], x.shape[3])
                for st in range(ctx.stages):
                    z = yield Part(None, *ctx.stage_params(st, smap, x, out, base))
                    out[:, smap == st] = z.reshape(n, -1)
            x = self.invert_level(lev, x, out)
        return x

    # -- decoder steps ------------------------------------------------------
    def top_shape(self, n: int, h: int, w: int) -> tuple[int, int, int, int]:
        """Shape of the top 'a' latent for padded images of size h x w."""
        f = 2 ** len(self.levels)
        return (n, self.chans[-1] // 2, h // f, w // f)

    def invert_level(self, lev: int, keep: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Inverse of level ``lev``: (kept, factored) halves -> the level's input."""
        x = torch.cat([keep, out], dim=1)
        for cpl in reversed(self.levels[lev]):
            x = cpl.inverse(x)
        return unsqueeze(x)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_input(images_nhwc) -> torch.Tensor:
    """uint8 (N, H, W, C) array/tensor -> centered float32 (N, C, H, W)."""
    if isinstance(images_nhwc, torch.Tensor):
        t = images_nhwc
    else:
        t = torch.from_numpy(np.array(images_nhwc, dtype=np.uint8, copy=True))
    return t.permute(0, 3, 1, 2).to(torch.float32) - CENTER
