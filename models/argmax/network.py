"""Argmax Flow for text (Hoogeboom et al. 2021), autoregressive prior, binary encoding.

Symbols ``x`` in ``0..26`` (the alphabet of :mod:`amdcompress.codecs.textstream`) are
written with ``B = 5`` bits (MSB first). Each character owns a continuous vector
``v`` in R^5 and ``x = decode(sign(v))``: bit ``i`` is ``[v_i > 0]``, the argmax
of the binary encoding. Codes 27..31 are never produced by ``q``; the prior
learns to put (almost) no mass on them.

* Context: one LSTM layer over the previous characters (start token first):
  ``h_d = LSTM(x_<d)``.
* Prior ``p(v_d | x_<d) = prod_i p(v_{d,i} | b_{d,<i}, h_d)``: each 1-D
  conditional is a mixture of ``M`` logistics on the real line whose parameters
  come from a small MLP on ``h_d`` plus an embedding of the bit prefix node
  ``(i, b_<i)`` (31 nodes of a binary tree). An autoregressive flow made of 1-D
  CDF transforms, so its density is exactly a product of 1-D conditionals, which
  is what the coder (:mod:`.argmax_coding`) needs.
* ``q(v | x)``, thresholding (Algorithm 3, :class:`ThresholdQ`, the shipped
  variant): per bit ``u ~ N(mu, sigma)``, ``v_i = s_i * softplus(u)`` with
  ``s_i = +1`` for a 1 bit and ``-1`` for a 0 bit; ``mu, sigma`` are learned per
  *q node* ``(i, b_<=i)`` (62 nodes; a function of ``(x, i)`` that leaves out the
  later bits, so that the prior, which does not know them, can match ``q``
  exactly). ``log q`` includes the log-Jacobian of softplus.
* ``q(v | x)``, Gumbel (Algorithm 4, :class:`GumbelQ`): for the K-dimensional
  one-hot representation (``v`` in R^27, ``x = argmax v``). Implemented with
  its density and tested; not used by the shipped model.

Loss: the negative ELBO ``E_q[log q(v|x) - log p(v)]`` in bits per character,
one reparameterized sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config

K = 27          # alphabet (textstream symbols)
BITS = 5        # ceil(log2 K)
START = K       # start token of the LSTM input (one extra embedding row)
N_PRIOR_NODES = (1 << BITS) - 1         # prefix nodes (i, b_<i): 31
N_Q_NODES = (1 << (BITS + 1)) - 2       # q nodes (i, b_<=i): 62
LOG_SCALE_MIN, LOG_SCALE_MAX = -6.0, 6.0   # inside the codec's own clip [-7, 12]
LN2 = math.log(2.0)


@dataclass
class ArgmaxConfig(Config):
    arch: str = "argmax-ar-binary"
    version: int = 1
    hidden: int = 512      # LSTM width
    emb: int = 64          # character embedding
    head: int = 384        # prior MLP width
    mixtures: int = 4      # logistic components per 1-D conditional
    q: str = "threshold"



# -- binary encoding -------------------------------------------------------------
def to_bits(x: torch.Tensor) -> torch.Tensor:
    """(...,) integers -> (..., 5) bits in {0, 1}, MSB first."""
    shifts = torch.arange(BITS - 1, -1, -1, device=x.device)
    return (x.unsqueeze(-1) >> shifts) & 1


def from_bits(b: torch.Tensor) -> torch.Tensor:
    w = 1 << torch.arange(BITS - 1, -1, -1, device=b.device)
    return (b.long() * w).sum(-1)


def prior_nodes(x: torch.Tensor) -> torch.Tensor:
    """(...,) -> (..., 5): node of the prefix b_<i, ``2**i - 1 + prefix``."""
    i = torch.arange(BITS, device=x.device)
    return (1 << i) - 1 + (x.unsqueeze(-1) >> (BITS - i))


def q_nodes(x: torch.Tensor) -> torch.Tensor:
    """(...,) -> (..., 5): node of b_<=i, ``2**(i+1) - 2 + prefix_incl``."""
    i = torch.arange(BITS, device=x.device)
    return (2 << i) - 2 + (x.unsqueeze(-1) >> (BITS - 1 - i))


# -- densities -------------------------------------------------------------------
def logistic_mixture_logpdf(v, means, log_scales, logits):
    """log density of a mixture of logistics at v (...,), params (..., M)."""
    ls = log_scales
    z = (v.unsqueeze(-1) - means) * torch.exp(-ls)
    log_pdf = -z - ls - 2.0 * F.softplus(-z)
    return torch.logsumexp(log_pdf + torch.log_softmax(logits, -1), -1)


def logistic_mixture_logcdf(v, means, log_scales, logits):
    """log P(V <= v) of the mixture."""
    z = (v.unsqueeze(-1) - means) * torch.exp(-log_scales)
    return torch.logsumexp(F.logsigmoid(z) + torch.log_softmax(logits, -1), -1)


def split_params(raw: torch.Tensor, m: int):
    """Head output (..., 3M) -> means, log_scales (clamped), logits."""
    means, ls, logits = raw[..., :m], raw[..., m : 2 * m], raw[..., 2 * m :]
    return means, ls.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX), logits


class ThresholdQ(nn.Module):
    """q(v | x) by softplus thresholding, per bit (Algorithm 3 for a binary code)."""

    def __init__(self, mu0: float = 1.5, sigma0: float = 0.5):
        super().__init__()
        self.mu = nn.Parameter(torch.full((N_Q_NODES,), mu0))
        self.log_sigma = nn.Parameter(torch.full((N_Q_NODES,), math.log(sigma0)))

    def params(self, nodes: torch.Tensor):
        return self.mu[nodes], self.log_sigma[nodes].clamp(-5.0, 3.0)

    def sample(self, x: torch.Tensor):
        """x (...,) -> v (..., 5), log q(v|x) (..., 5) in nats (reparameterized)."""
        mu, ls = self.params(q_nodes(x))
        eps = torch.randn_like(mu)
        u = mu + torch.exp(ls) * eps
        sign = to_bits(x).to(u.dtype) * 2.0 - 1.0
        v = sign * F.softplus(u)
        log_q = -0.5 * eps * eps - ls - 0.5 * math.log(2 * math.pi) - F.logsigmoid(u)
        return v, log_q

    @staticmethod
    def log_density(v, mu, log_sigma):
        """log q of |v| = softplus(u), u ~ N(mu, sigma), on the half-line (v != 0)."""
        a = v.abs()
        u = torch.where(a > 20, a, torch.log(torch.expm1(a.clamp_min(1e-30))))
        z = (u - mu) * torch.exp(-log_sigma)
        return -0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi) - F.logsigmoid(u)


class GumbelQ(nn.Module):
    """q(v | x) for the K-dim one-hot code, Gumbel based (Algorithm 4).

    ``phi = NN(x)`` (here an embedding); ``v_x ~ Gumbel(logsumexp phi)`` and
    ``v_k ~ TruncGumbel(phi_k, below v_x)`` for ``k != x``, so ``argmax v = x``.
    """

    def __init__(self, k: int = K):
        super().__init__()
        self.k = k
        self.phi = nn.Embedding(k, k)
        nn.init.normal_(self.phi.weight, std=0.5)

    @staticmethod
    def _log_gumbel(v, loc):
        z = v - loc
        return -z - torch.exp(-z)

    def sample(self, x: torch.Tensor, generator=None):
        phi = self.phi(x)                                   # (..., K)
        phimax = torch.logsumexp(phi, -1)
        u0 = torch.rand(phimax.shape, generator=generator, dtype=phi.dtype).clamp(1e-12, 1 - 1e-12)
        uk = torch.rand(phi.shape, generator=generator, dtype=phi.dtype).clamp(1e-12, 1 - 1e-12)
        t = phimax - torch.log(-torch.log(u0))               # Gumbel(phimax)
        # truncated Gumbel below t by the inverse CDF: v = phi - log(exp(-(t - phi)) - log u)
        vk = phi - torch.log(torch.exp(-(t.unsqueeze(-1) - phi)) - torch.log(uk))
        v = torch.where(F.one_hot(x, self.k).bool(), t.unsqueeze(-1), vk)
        return v, self.log_density(v, x)

    def log_density(self, v, x):
        """log q(v|x) (nats); -inf where argmax v != x."""
        phi = self.phi(x)
        phimax = torch.logsumexp(phi, -1)
        t = v.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        onehot = F.one_hot(x, self.k).bool()
        # truncated Gumbel: gumbel(v; phi) / F(t; phi), F(t; phi) = exp(-exp(-(t - phi)))
        lt = self._log_gumbel(v, phi) + torch.exp(-(t.unsqueeze(-1) - phi))
        lt = torch.where(onehot, torch.zeros_like(lt), lt)
        out = self._log_gumbel(t, phimax) + lt.sum(-1)
        ok = (v < t.unsqueeze(-1)) | onehot
        return torch.where(ok.all(-1), out, torch.full_like(out, -math.inf))


class ArgmaxFlow(nn.Module):
    """The text model: LSTM context, autoregressive logistic-mixture prior over
    the 5 binary-code dimensions, thresholding q."""

    def __init__(self, config: ArgmaxConfig | None = None):
        super().__init__()
        c = self.config = config or ArgmaxConfig()
        m = c.mixtures
        self.embed = nn.Embedding(K + 1, c.emb)
        self.lstm = nn.LSTM(c.emb, c.hidden, batch_first=True)
        self.h_proj = nn.Linear(c.hidden, c.head)
        self.node_emb = nn.Embedding(N_PRIOR_NODES, c.head)
        self.out = nn.Linear(c.head, 3 * m)
        self.q = ThresholdQ()
        with torch.no_grad():
            nn.init.normal_(self.node_emb.weight, std=0.1)
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[:m] = torch.linspace(-2.0, 2.0, m)   # means
            self.out.bias[m : 2 * m] = math.log(0.5)           # log scales

    # -- shared pieces ---------------------------------------------------------
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Symbols (N, T) -> LSTM input tokens (previous char, START first)."""
        start = torch.full_like(x[:, :1], START)
        return torch.cat([start, x[:, :-1]], 1)

    def head(self, hp: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Projected context ``hp = h_proj(h)`` (..., head) and prior nodes
        (..., ) -> raw mixture parameters (..., 3M)."""
        return self.out(F.relu(hp + self.node_emb(nodes)))

    # -- training ----------------------------------------------------------------
    def forward(self, x: torch.Tensor, state=None, tokens=None):
        """Negative ELBO of x (N, T) in bits, per character (N, T); returns
        (nelbo_bits, new_state). ``tokens`` overrides the LSTM input (for carried
        state: the previous chunk's last char instead of START)."""
        if tokens is None:
            tokens = self.inputs(x)
        h, state = self.lstm(self.embed(tokens), state)
        hp = self.h_proj(h).unsqueeze(-2)                    # (N, T, 1, head)
        raw = self.head(hp, prior_nodes(x))                  # (N, T, 5, 3M)
        means, ls, logits = split_params(raw, self.config.mixtures)
        v, log_q = self.q.sample(x)
        log_p = logistic_mixture_logpdf(v, means, ls, logits)
        return (log_q - log_p).sum(-1) / LN2, state

    @torch.no_grad()
    def exact_nll_bits(self, x: torch.Tensor, state=None, tokens=None):
        """-log2 P(x) of the argmax model itself (P(sign pattern) under the
        prior, from the 1-D CDFs at 0): the bound the ELBO approaches."""
        if tokens is None:
            tokens = self.inputs(x)
        h, state = self.lstm(self.embed(tokens), state)
        raw = self.head(self.h_proj(h).unsqueeze(-2), prior_nodes(x))
        means, ls, logits = split_params(raw, self.config.mixtures)
        b = to_bits(x).to(means.dtype)
        zero = torch.zeros_like(b)
        lcdf0 = logistic_mixture_logcdf(zero, means, ls, logits)          # log P(v<=0)
        lsf0 = logistic_mixture_logcdf(zero, -means, ls, logits)          # log P(v>0)
        lp = torch.where(b > 0, lsf0, lcdf0)
        return -lp.sum(-1) / LN2, state

    # -- coding (step by step, batch = lanes) --------------------------------------
    def lstm_step(self, tokens: torch.Tensor, state):
        """One LSTM step for a batch of lanes: tokens (L,), state (h, c) each
        (L, hidden) -> (hp (L, head), new state). The encoder and the decoder
        both call exactly this, with the same batch layout."""
        w_ih, w_hh, b_ih, b_hh = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.bias_ih_l0, self.lstm.bias_hh_l0
        h, c = state
        gates = F.linear(self.embed(tokens), w_ih, b_ih) + F.linear(h, w_hh, b_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.h_proj(h), (h, c)

    def zero_state(self, n: int):
        z = torch.zeros(n, self.config.hidden)
        return (z, z.clone())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
