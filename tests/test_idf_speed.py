"""The IDF coder's speed paths give the very numbers of the plain ones: the
ResNet pass that keeps oneDNN's blocked layout between convolutions, the grid
rounding read straight from strided tensors, the tables built per row subset,
and the coding context (no NaN fill of new tensors; settings restored)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import amdcompress.codecs.distributions as D
from amdcompress.models.determinism import coding_mode
from amdcompress.models.idf import coding as idf_coding
from amdcompress.models.idf import network as N
from amdcompress.models.idf.network import IDF, ResNet, make_config

from test_distributions_reference import ref_windowed, same


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    out = []
    for c_in, c_out, width, kernels in ((6, 6, 48, (3, 1)), (12, 90, 64, (3, 1)), (24, 24, 16, (3, 3))):
        net = ResNet(c_in, c_out, width, 1, zero_out=False, kernels=kernels).eval()
        with torch.no_grad():
            net.conv_out.weight.normal_(0.0, 0.1)
        out.append(net)
    return out


@pytest.mark.parametrize("n,hw", [(1, 16), (2, 8), (3, 16), (16, 8), (17, 4), (40, 16)])
def test_resnet_blocked_pass_is_bit_identical(n, hw, monkeypatch):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    blocked_ok = N._blocked_ok
    for threads in (1, 2):
        with coding_mode(threads):
            for net in _nets(n):
                x = torch.round(torch.randn(n, net.conv_in.in_channels, hw, hw) * 40) / 64
                assert blocked_ok(x)
                fast = net(x)
                monkeypatch.setattr(N, "_blocked_ok", lambda t: False)  # the plain path
                plain = net(x)
                monkeypatch.setattr(N, "_blocked_ok", blocked_ok)
                assert not fast.is_mkldnn and fast.shape == plain.shape and torch.equal(fast, plain)


def test_blocked_pass_only_without_autograd():
    net = _nets()[0]
    x = torch.zeros(2, 6, 8, 8)
    assert not N._blocked_ok(x)  # grad mode on: training takes the plain path
    with torch.no_grad():
        assert N._blocked_ok(x)
        assert not N._blocked_ok(x.double())
    x.requires_grad_(True)
    y = net(x)
    assert y.requires_grad


def test_whole_flow_same_parts_with_and_without_blocked_path(monkeypatch):
    torch.manual_seed(1)
    m = IDF(make_config(levels=2, couplings=2, width=16, prior_width=16, mixtures=3, seed=1, top_groups=2,
                        top_width=8, context_levels=[0], context_width=8)).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, ResNet):
                mod.conv_out.weight.normal_(0.0, 0.05)
    x = N.to_input(np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    with idf_coding._coding():
        fast = m.analyse(x, ste=False)
        monkeypatch.setattr(N, "_blocked_ok", lambda t: False)
        plain = m.analyse(x, ste=False)
    for a, b in zip(fast, plain):
        for u, v in zip((a.z, a.mu, a.log_scale, a.logit), (b.z, b.mu, b.log_scale, b.logit)):
            assert torch.equal(u, v)


def test_grid_matches_its_definition():
    rng = np.random.default_rng(0)
    t = torch.from_numpy((rng.normal(size=(3, 4, 5, 6, 5)) * 300).astype(np.float32)).permute(0, 2, 1, 3, 4)
    t[0, 0, 0, 0, 0] = 1e30
    for lo, hi in ((None, None), (-7.0, 12.0), (-(2.0**15), 2.0**15 - 1)):
        a = t.detach().to("cpu", torch.float64).reshape(-1, t.shape[-1]).numpy()
        a = np.round(a * 1024) / 1024
        if lo is not None:
            a = np.clip(a, lo, hi)
        ref = np.ascontiguousarray(a.astype(np.float32))
        got = idf_coding._grid(t, lo, hi)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.array_equal(got.view(np.int32), ref.view(np.int32))


def test_row_subset_tables_match_the_definition():
    rng = np.random.default_rng(2)
    n = 3000
    mu = (np.round(rng.uniform(-50, 50, (n, 5)) * 1024) / 1024).astype(np.float32)
    ls = (np.round(rng.normal(1, 2, (n, 5)) * 1024) / 1024).astype(np.float32)
    lg = (np.round(rng.normal(0, 2, (n, 5)) * 1024) / 1024).astype(np.float32)
    c = np.rint(mu[:, 0]).astype(np.int64)
    mix = D.MixtureRows(c, *D.mixture_params(mu, ls, lg))
    for rows in (rng.permutation(n)[:1700], np.arange(5, 6), np.sort(rng.permutation(n)[:300])):
        for hw, ex in ((3, -1), (24, -1), (48, 8), (96, 95)):
            same(mix.table(hw, ex, rows), ref_windowed(c[rows], hw, mu[rows], ls[rows], lg[rows], ex))


def test_coding_context_restores_settings():
    det = torch.utils.deterministic
    before = (det.fill_uninitialized_memory, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with idf_coding._coding():
        assert det.fill_uninitialized_memory is False
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert (det.fill_uninitialized_memory, torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled()) == before
