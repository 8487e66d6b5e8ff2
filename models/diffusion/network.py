"""Multinomial diffusion for text (Hoogeboom et al. 2021): schedule, posteriors,
denoiser and the ELBO.

Forward process over K categories (K = 27: space and a-z)::

    q(x_t | x_{t-1}) = Cat((1 - beta_t) x_{t-1} + beta_t / K)
    q(x_t | x_s)     = Cat(a_{s->t} x_s + (1 - a_{s->t}) / K),   a_{s->t} = abar_t / abar_s   (s < t)
    q(x_t | x_0)     = Cat(abar_t x_0 + (1 - abar_t) / K)

``abar`` is the cosine schedule of the paper (Nichol & Dhariwal's, with each
step's alpha clipped to >= 0.001), computed once in float64 and stored in the
model's state dict, so a decoder reads the very numbers the encoder used.

Posterior of a step of any size (the single step s = t - 1 is the case the
paper writes; a coarser chain t_0 = 0 < t_1 < ... < t_S = T uses the same
formula with the composed transition)::

    q(x_s | x_t, x_0)  oc  q(x_t | x_s) q(x_s | x_0)
    p(x_s | x_t)       oc  q(x_t | x_s) (abar_s x0hat + (1 - abar_s) / K),   x0hat = NN(x_t, t)

i.e. the paper's theta(x_t, x0hat) with the predicted x0 *distribution* in
place of the one-hot x_0. For s = 0 (abar_0 = 1) this is p(x_0 | x_t) oc
q(x_t | x_0) x0hat(x_0), as in the paper's code.

Negative ELBO of a chain (nats; the bits-back coder spends this on average)::

    L = KL(q(x_T|x_0) || uniform) + sum_i E_q KL(q(x_{t_{i-1}} | x_{t_i}, x_0) || p(x_{t_{i-1}} | x_{t_i}))

where the i = 1 term with t_0 = 0 is the reconstruction term -log p(x_0 | x_{t_1})
(the true posterior is one-hot). Training samples one step per example
(uniformly, or by importance: p(i) oc sqrt(E[L_i^2])), weighted by 1/p(i).

Everything in training and evaluation is in log space: the transition and
posterior are log-sum-exp mixtures of a log one-hot / log x0hat term with the
uniform term, never (1 - abar) arithmetic on float32 probabilities. The coding
tables (see :mod:`.diffusion_coding`) use the same formulas in float64 on
rounded log-probabilities.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

K = 27
CHUNK = 256
LOG_ZERO = -1.0e4  # stands in for log 0 (exp underflows to exactly 0 in float32)

DEFAULT_CONFIG = {
    "K": K,            # categories
    "T": 1000,         # diffusion steps the model is trained with
    "schedule": "cosine",
    "length": CHUNK,   # chunk length (max positions of the transformer)
    "d": 256,          # model width
    "layers": 4,
    "heads": 4,
    "ff": 1024,        # MLP hidden width
    "dropout": 0.0,
    "conv": 0,         # depthwise conv kernel mixing neighbours in each block (0: none)
}


def make_config(**overrides) -> dict:
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(overrides)
    if cfg["d"] % cfg["heads"]:
        raise ValueError("d must be a multiple of heads")
    if cfg["conv"] < 0 or (cfg["conv"] and cfg["conv"] % 2 == 0):
        raise ValueError("conv must be 0 or an odd kernel size")
    return cfg


# --------------------------------------------------------------------------- schedule
def cosine_alpha_bar(T: int, s: float = 0.008) -> np.ndarray:
    """abar_0..abar_T (float64, abar_0 = 1): the paper's cosine schedule with
    per-step alphas clipped to [0.001, 1]."""
    x = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((x + s) / (1 + s) * np.pi * 0.5) ** 2
    ab = f / f[0]
    alphas = np.clip(ab[1:] / ab[:-1], 0.001, 1.0)
    return np.concatenate([[1.0], np.cumprod(alphas)])


def alpha_bar_for(cfg: dict) -> np.ndarray:
    if cfg["schedule"] != "cosine":
        raise ValueError(f"unknown schedule {cfg['schedule']!r}")
    return cosine_alpha_bar(int(cfg["T"]))


def chain(T: int, steps: int) -> np.ndarray:
    """The coding/evaluation chain t_0 = 0 < t_1 < ... < t_S = T (S = steps):
    t_i = floor(i T / S), integer arithmetic, so every machine agrees."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return (np.arange(steps + 1, dtype=np.int64) * T) // steps


def step_constants(abar: np.ndarray, s, t, k: int = K) -> dict:
    """float64 log-space constants of the steps s -> t (arrays or scalars):
    log a, log(1-a) of the composed transition a = abar_t/abar_s, and
    log abar_s, log(1 - abar_s) (LOG_ZERO for s = 0)."""
    ab = np.asarray(abar, dtype=np.float64)
    s = np.asarray(s)
    t = np.asarray(t)
    a = ab[t] / ab[s]
    log_a = np.log(a)
    with np.errstate(divide="ignore"):
        log_1ma = np.log(-np.expm1(log_a))  # 1 - a without cancellation
        log_1mabs = np.log1p(-ab[s])
    log_abs = np.log(ab[s])
    log_1mabs = np.maximum(log_1mabs, LOG_ZERO)
    log_1ma = np.maximum(log_1ma, LOG_ZERO)
    lk = math.log(k)
    # log q(x_t = x_s | x_s) and log q(x_t = j != x_s | x_s)
    same = np.logaddexp(log_a, log_1ma - lk)
    other = log_1ma - lk
    return {"same": same, "other": other, "log_abar_s": log_abs, "log_1m_abar_s": log_1mabs}


def prior_kl_bits(abar_T: float, k: int = K) -> float:
    """KL(q(x_T|x_0) || uniform) per symbol in bits (independent of x_0)."""
    on = abar_T + (1.0 - abar_T) / k
    off = (1.0 - abar_T) / k
    kl = on * math.log(on * k) + ((k - 1) * off * math.log(off * k) if off > 0 else 0.0)
    return kl / math.log(2.0)


# --------------------------------------------------------------------------- log-space posteriors (torch)
def _c(consts: dict, key: str, ref: torch.Tensor) -> torch.Tensor:
    """A per-example constant as (B, 1, 1) float32 on ref's device."""
    v = torch.as_tensor(np.asarray(consts[key], dtype=np.float64), device=ref.device)
    return v.reshape(-1, 1, 1).to(torch.float32)


def log_posterior(log_x0: torch.Tensor, x_t: torch.Tensor, consts: dict) -> torch.Tensor:
    """log q(x_s | x_t, x0 ~ exp(log_x0)), normalized over the K values of x_s.

    ``log_x0``: (B, L, K) log-probabilities of x_0 (a log one-hot with LOG_ZERO
    for the true posterior, the network's log x0hat for the model);
    ``x_t``: (B, L) integers; ``consts``: :func:`step_constants` of (B,) steps.
    """
    same, other = _c(consts, "same", log_x0), _c(consts, "other", log_x0)
    hit = F.one_hot(x_t, log_x0.shape[-1]).bool()
    log_trans = torch.where(hit, same, other)  # log q(x_t | x_s = k), as a function of k
    log_marg = torch.logaddexp(log_x0 + _c(consts, "log_abar_s", log_x0),
                               _c(consts, "log_1m_abar_s", log_x0) - math.log(log_x0.shape[-1]))
    u = log_trans + log_marg
    return u - torch.logsumexp(u, dim=-1, keepdim=True)


def log_onehot(x: torch.Tensor, k: int = K) -> torch.Tensor:
    oh = F.one_hot(x, k).to(torch.float32)
    return (1.0 - oh) * LOG_ZERO


def categorical_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """sum_k q (log q - log p) over the last axis (nats)."""
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def sample_xt(x0: torch.Tensor, abar_t: torch.Tensor, generator=None) -> torch.Tensor:
    """x_t ~ q(x_t | x_0): keep x_0 with probability abar_t, else uniform."""
    keep = torch.rand(x0.shape, device=x0.device, generator=generator) < abar_t.reshape(-1, 1)
    noise = torch.randint(0, K, x0.shape, device=x0.device, generator=generator)
    return torch.where(keep, x0, noise)


# --------------------------------------------------------------------------- denoiser
def timestep_embedding(t: torch.Tensor, dim: int, T: int) -> torch.Tensor:
    """Sinusoidal embedding of t (scaled to a 0..1000 range whatever T is)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = (t.to(torch.float32) * (1000.0 / T))[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (bidirectional) with an additive
    per-layer timestep projection."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, conv: int = 0):
        super().__init__()
        self.heads = heads
        if conv:  # local mixing: neighbours are visible from the first step of training
            self.ln0 = nn.LayerNorm(d)
            self.dw = nn.Conv1d(d, d, conv, padding=conv // 2, groups=d)
        self.temb = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout

    def forward(self, h: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        h = h + self.temb(te)[:, None, :]
        if hasattr(self, "dw"):
            h = h + self.dw(self.ln0(h).transpose(1, 2)).transpose(1, 2)
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.proj(o.transpose(1, 2).reshape(b, n, d)))
        return h + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(h)))))


class Denoiser(nn.Module):
    """NN(x_t, t) -> log x0hat: a small transformer over chunks of up to
    ``length`` symbols. The schedule ``alpha_bar`` (float64) is a buffer, so
    it travels with the weights."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = make_config(**(config or {}))
        self.config = cfg
        d = cfg["d"]
        self.tok = nn.Embedding(cfg["K"], d)
        self.pos = nn.Parameter(torch.randn(cfg["length"], d) * 0.02)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU())
        self.blocks = nn.ModuleList(Block(d, cfg["heads"], cfg["ff"], cfg["dropout"], cfg["conv"]) for _ in range(cfg["layers"]))
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg["K"])
        self.register_buffer("alpha_bar", torch.from_numpy(alpha_bar_for(cfg)))
        for blk in self.blocks:  # residual branches start small
            nn.init.zeros_(blk.proj.weight)
            nn.init.zeros_(blk.fc2.weight)

    @property
    def T(self) -> int:
        return int(self.config["T"])

    def abar(self) -> np.ndarray:
        """The schedule as float64 numpy (exactly the stored numbers)."""
        return self.alpha_bar.detach().cpu().numpy().astype(np.float64)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t: (B, L) integers in 0..K-1, t: (B,) integers in 1..T -> (B, L, K) log x0hat."""
        n = x_t.shape[1]
        if n > self.config["length"]:
            raise ValueError(f"chunk longer than {self.config['length']}")
        te = self.time(timestep_embedding(t, self.config["d"], self.T))
        h = self.tok(x_t) + self.pos[:n][None]
        for blk in self.blocks:
            h = blk(h, te)
        return F.log_softmax(self.out(self.ln(h)).float(), dim=-1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- ELBO
def step_kl(model: Denoiser, x0: torch.Tensor, s: np.ndarray, t: np.ndarray, generator=None,
            return_x0_logp: bool = False):
    """Per-example KL(q(x_s|x_t,x_0) || p(x_s|x_t)) summed over positions (nats),
    with x_t ~ q(x_t|x_0) sampled here; s, t: (B,) int arrays, s < t."""
    abar = model.abar()
    consts = step_constants(abar, s, t)
    abar_t = torch.as_tensor(abar[t], device=x0.device, dtype=torch.float32)
    x_t = sample_xt(x0, abar_t, generator)
    log_x0hat = model(x_t, torch.as_tensor(t, device=x0.device))
    log_p = log_posterior(log_x0hat, x_t, consts)
    log_q = log_posterior(log_onehot(x0), x_t, consts)
    kl = categorical_kl(log_q, log_p).sum(-1)
    if return_x0_logp:
        return kl, log_x0hat
    return kl


class StepSampler:
    """Which chain step each training example uses: uniform, or importance
    sampling p(i) oc sqrt(E[L_i^2]) once every step has ``warm`` samples
    (as in the paper's code). Returns indices 1..S and weights 1/p(i)."""

    def __init__(self, S: int, mode: str = "uniform", warm: int = 10, decay: float = 0.9):
        if mode not in ("uniform", "importance"):
            raise ValueError(f"unknown step sampling {mode!r}")
        self.S, self.mode, self.warm, self.decay = S, mode, warm, decay
        self.sq = np.zeros(S + 1)
        self.count = np.zeros(S + 1, dtype=np.int64)

    def probs(self) -> np.ndarray | None:
        if self.mode == "uniform" or self.count[1:].min() < self.warm:
            return None
        p = np.sqrt(self.sq[1:] + 1e-10)
        p = p / p.sum()
        return 0.999 * p + 0.001 / self.S

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.probs()
        if p is None:
            i = rng.integers(1, self.S + 1, n)
            return i, np.full(n, float(self.S))
        i = rng.choice(self.S, size=n, p=p) + 1
        return i, 1.0 / p[i - 1]

    def update(self, i: np.ndarray, loss: np.ndarray) -> None:
        for ii, li in zip(i.tolist(), np.asarray(loss, dtype=np.float64).tolist()):
            if self.count[ii] == 0:
                self.sq[ii] = li * li
            else:
                self.sq[ii] = self.decay * self.sq[ii] + (1 - self.decay) * li * li
            self.count[ii] += 1

    def state_dict(self) -> dict:
        return {"S": self.S, "mode": self.mode, "sq": self.sq.tolist(), "count": self.count.tolist()}

    def load_state_dict(self, st: dict) -> None:
        if st.get("S") == self.S:
            self.sq = np.asarray(st["sq"], dtype=np.float64)
            self.count = np.asarray(st["count"], dtype=np.int64)


def training_loss(model: Denoiser, x0: torch.Tensor, sampler: StepSampler, rng: np.random.Generator,
                  loss_steps: int | None = None, aux_ce: float = 0.0):
    """Unbiased one-step estimate of the negative ELBO in bits per char of the
    ``loss_steps`` chain (default: all T steps), averaged over the batch.
    Returns (loss for backward, per-example bpc estimate as numpy)."""
    S = loss_steps or model.T
    ts = chain(model.T, S)
    i, w = sampler.sample(x0.shape[0], rng)
    kl, log_x0hat = step_kl(model, x0, ts[i - 1], ts[i], return_x0_logp=True)
    n = x0.shape[1]
    per_char = kl / (n * math.log(2.0))  # bits per char of this step
    sampler.update(i, per_char.detach().cpu().numpy())
    wt = torch.as_tensor(w, device=x0.device, dtype=torch.float32)
    prior = prior_kl_bits(float(model.abar()[-1]))
    bpc = per_char * wt + prior
    loss = bpc.mean()
    if aux_ce > 0:
        loss = loss + aux_ce * F.nll_loss(log_x0hat.reshape(-1, log_x0hat.shape[-1]), x0.reshape(-1)) / math.log(2.0)
    return loss, bpc.detach().cpu().numpy()


@torch.no_grad()
def elbo_bpc(model: Denoiser, x0: torch.Tensor, steps: int | None = None, samples: int = 1, seed: int = 0,
             batch: int = 64) -> float:
    """Unbiased estimate of the negative ELBO (bits per char) of the ``steps``
    chain (default: all T) over chunks ``x0`` (B, L): each chunk is evaluated at
    ``samples`` steps, stratified over the whole set (so the steps cover 1..S
    evenly), weighted by S."""
    was = model.training
    model.eval()
    S = steps or model.T
    ts = chain(model.T, S)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    nc = x0.shape[0]
    total = 0.0
    for _ in range(samples):
        u = (rng.permutation(nc) + rng.random(nc)) / nc
        idx = np.minimum((u * S).astype(np.int64), S - 1) + 1
        for b in range(0, nc, batch):
            i = idx[b : b + batch]
            kl = step_kl(model, x0[b : b + batch], ts[i - 1], ts[i], generator=gen)
            total += float(kl.double().sum()) * S
    model.train(was)
    n = x0.numel()
    return total / (samples * n * math.log(2.0)) + prior_kl_bits(float(model.abar()[-1]))


@torch.no_grad()
def chain_elbo_bits(model: Denoiser, symbols: np.ndarray, steps: int, seed: int = 0, length: int = CHUNK) -> float:
    """Negative ELBO in bits of a whole symbol sequence under the ``steps``
    chain, with every step evaluated (one x_t sample per step): what the
    bits-back coder spends on average (chunks of ``length``, last one shorter)."""
    was = model.training
    model.eval()
    x = np.asarray(symbols, dtype=np.int64)
    n = x.size
    ts = chain(model.T, steps)
    gen = torch.Generator().manual_seed(seed)
    nfull = n // length
    parts = []
    if nfull:
        parts.append(torch.from_numpy(x[: nfull * length].reshape(nfull, length)))
    if n % length:
        parts.append(torch.from_numpy(x[nfull * length :].reshape(1, -1)))
    total = 0.0
    for i in range(1, steps + 1):
        for p in parts:
            for b in range(0, p.shape[0], 64):
                xb = p[b : b + 64]
                s = np.full(xb.shape[0], ts[i - 1])
                t = np.full(xb.shape[0], ts[i])
                total += float(step_kl(model, xb, s, t, generator=gen).double().sum())
    model.train(was)
    return total / math.log(2.0) + n * prior_kl_bits(float(model.abar()[-1]))


# --------------------------------------------------------------------------- shipped weights
WEIGHTS_NAME = "diffusion-v1"


def model_from_weights(obj: dict, error=ValueError) -> Denoiser:
    try:
        model = Denoiser(obj["config"])
        model.load_state_dict(obj["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise error(f"diffusion weights do not fit the model ({e})") from None
    return _cast(model)


def _cast(model: Denoiser) -> Denoiser:
    """float32 parameters, float64 schedule, eval mode."""
    ab = model.alpha_bar.detach().clone()
    model.float()
    model.alpha_bar = ab.to(torch.float64)
    return model.eval()
