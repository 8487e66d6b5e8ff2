"""Argmax Flow text model: densities, exact bits-back coding, training, backend."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import backend_for, load_file
from amdcompress.models import registry
from amdcompress.codecs import Message
from amdcompress.codecs.errors import AmdError
from amdcompress.formats import BYTES, Data
from amdcompress.models.argmax import coding as ac
from amdcompress.models.argmax.network import (
    ArgmaxConfig,
    ArgmaxFlow,
    GumbelQ,
    ThresholdQ,
    from_bits,
    logistic_mixture_logpdf,
    prior_nodes,
    q_nodes,
    to_bits,
)

torch.set_num_threads(1)
TINY = ArgmaxConfig(hidden=24, emb=8, head=16, mixtures=3)
TEXT = b"the quick brown fox jumps over the lazy dog and then some more words follow here "


def tiny_model(seed: int = 0) -> ArgmaxFlow:
    torch.manual_seed(seed)
    m = ArgmaxFlow(TINY)
    with torch.no_grad():  # a non-trivial q, different per node
        m.q.mu.add_(torch.rand(m.q.mu.shape))
        m.q.log_sigma.add_(0.3 * torch.randn(m.q.log_sigma.shape))
    return m.eval()


def save_weights(path, model) -> str:
    tables = ac.build_coding_tables(model)
    torch.save({"kind": "argmax-weights", "config": model.config.to_dict(),
                "state_dict": model.state_dict(), "coding": {k: torch.as_tensor(v) for k, v in tables.items()}}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha}))
    return sha


@pytest.fixture(scope="module")
def tiny():
    m = tiny_model()
    return m, ac.build_coding_tables(m)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("argmax") / "tiny.pt"
    save_weights(p, tiny_model())
    return p


# -- binary code and densities ---------------------------------------------------------
def test_binary_code_and_nodes():
    x = torch.arange(32)
    b = to_bits(x)
    assert torch.equal(from_bits(b), x)
    pn, qn = prior_nodes(x), q_nodes(x)
    assert pn.min() == 0 and pn.max() == 30 and qn.min() == 0 and qn.max() == 61
    for i in range(5):  # prefix nodes: same node iff same prefix
        key = x >> (5 - i)
        assert len(set(zip(pn[:, i].tolist(), key.tolist()))) == len(set(key.tolist()))


@torch.no_grad()
def test_threshold_density_integrates_to_one():
    q = ThresholdQ()
    for mu, ls in [(1.5, math.log(0.5)), (-1.0, 0.3), (4.0, math.log(0.1))]:
        v = torch.linspace(1e-6, 40.0, 400_001, dtype=torch.float64)
        dens = torch.exp(q.log_density(v, torch.tensor(mu, dtype=torch.float64), torch.tensor(ls, dtype=torch.float64)))
        assert abs(float(torch.trapezoid(dens, v)) - 1.0) < 2e-3
        # and the sampler's log q agrees with the density formula
    torch.manual_seed(1)
    x = torch.randint(0, 27, (2000,))
    v, lq = q.sample(x)
    assert torch.equal((v > 0).long(), to_bits(x))
    mu, ls = q.params(q_nodes(x))
    assert torch.allclose(lq, q.log_density(v, mu, ls), atol=1e-3)


@torch.no_grad()
def test_threshold_histogram_matches_density():
    q = ThresholdQ(mu0=0.5, sigma0=1.0)
    torch.manual_seed(2)
    x = torch.full((200_000,), 31)          # all bits 1: v > 0
    v, _ = q.sample(x)
    a = v[:, 2].double()
    hist, edges = np.histogram(a.numpy(), bins=40, range=(0.0, 4.0))
    centers = torch.from_numpy(0.5 * (edges[1:] + edges[:-1]))
    dens = torch.exp(q.log_density(centers, torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)))
    emp = hist / (len(a) * (edges[1] - edges[0]))
    assert np.max(np.abs(emp - dens.numpy())) < 0.03


@torch.no_grad()
def test_gumbel_q_argmax_and_density():
    torch.manual_seed(3)
    q = GumbelQ(k=2).double()
    x = torch.zeros(100_000, dtype=torch.long)
    v, lq = q.sample(x)
    assert bool((v.argmax(-1) == x).all())
    assert torch.isfinite(lq).all()
    assert torch.allclose(lq, q.log_density(v, x))
    # the density integrates to 1 over its region {v_0 > v_1}
    g = torch.linspace(-8.0, 16.0, 1201, dtype=torch.float64)
    v0, v1 = torch.meshgrid(g, g, indexing="ij")
    vv = torch.stack([v0, v1], -1).reshape(-1, 2)
    dens = torch.exp(q.log_density(vv, torch.zeros(len(vv), dtype=torch.long))).reshape(1201, 1201)
    h = float(g[1] - g[0])
    assert abs(float(dens.sum()) * h * h - 1.0) < 0.02
    # marginal of the truncated coordinate: histogram vs density integrated over v_0
    marg = dens.sum(0) * h
    hist, edges = np.histogram(v[:, 1].numpy(), bins=48, range=(-4.0, 8.0))
    emp = hist / (len(v) * (edges[1] - edges[0]))
    ref = np.interp(0.5 * (edges[1:] + edges[:-1]), g.numpy(), marg.numpy())
    assert np.max(np.abs(emp - ref)) < 0.02
    # K = 27: every sample has the right argmax
    q27 = GumbelQ()
    x27 = torch.randint(0, 27, (5000,))
    v27, lq27 = q27.sample(x27)
    assert bool((v27.argmax(-1) == x27).all()) and torch.isfinite(lq27).all()


def test_prior_is_normalized_and_elbo_bounds_nll():
    m = tiny_model()
    x = torch.arange(32)[:, None]                 # every 5-bit code, first position
    with torch.no_grad():
        nll, _ = m.exact_nll_bits(x)
    assert abs(float((2.0 ** -nll).sum()) - 1.0) < 1e-4
    v = torch.linspace(-30, 30, 60001)
    raw = torch.randn(3 * TINY.mixtures)
    from amdcompress.models.argmax.network import split_params

    dens = torch.exp(logistic_mixture_logpdf(v, *split_params(raw.expand(len(v), -1), TINY.mixtures)))
    assert abs(float(torch.trapezoid(dens, v)) - 1.0) < 1e-3
    torch.manual_seed(4)
    xs = torch.from_numpy(np.frombuffer(TEXT, dtype=np.uint8).copy())
    xs = torch.where(xs == 32, 0, xs.long() - 96)[None]
    with torch.no_grad():
        elbo = torch.stack([m(xs)[0].sum() for _ in range(64)]).mean()
        exact = m.exact_nll_bits(xs)[0].sum()
    assert float(elbo) >= float(exact) - 0.5


# -- coding ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 7, 61, 301])
def test_bits_back_round_trip(tiny, monkeypatch, n):
    monkeypatch.setattr(ac, "CHARS_PER_LANE", 64)     # several lanes, the last one shorter
    model, tables = tiny
    sym = np.random.default_rng(n).integers(0, 27, n)
    stats = {}
    stream = ac.encode_symbols(model, tables, sym, stats=stats)
    out = ac.decode_symbols(model, tables, stream)
    assert np.array_equal(out, sym)
    if n == 301:
        assert stats["lane_len"] * (stats["lanes"] - 1) < n < stats["lane_len"] * stats["lanes"]
        assert stats["lanes"] == math.ceil(n / stats["lane_len"]) > 1
        # the message grows by the information content (ANS is near-exact)
        assert abs(stats["message_bits"] - stats["info_bits"]) < 0.01 * stats["info_bits"] + 64
        assert len(stream) * 8 < stats["info_bits"] + 32 * (stats["initial_words_used"] + 4) + 64


@pytest.mark.slow
def test_coded_size_tracks_elbo():
    """A model trained for a moment on one phrase: coded bits close to its ELBO."""
    torch.manual_seed(5)
    m = ArgmaxFlow(TINY)
    sym = np.frombuffer(TEXT * 4, dtype=np.uint8).astype(np.int64)
    sym = np.where(sym == 32, 0, sym - 96)
    x = torch.from_numpy(sym)[None]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = m(x)[0].mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        elbo = float(torch.stack([m(x)[0].mean() for _ in range(32)]).mean())
    assert elbo < first - 1.0                       # training lowers the loss
    tables = ac.build_coding_tables(m)
    stats = {}
    stream = ac.encode_symbols(m, tables, sym, stats=stats)
    assert np.array_equal(ac.decode_symbols(m, tables, stream), sym)
    coded = stats["info_bits"] / len(sym)
    assert coded < elbo + 0.15, (coded, elbo)


def test_corrupt_streams_fail_cleanly(tiny):
    model, tables = tiny
    sym = np.random.default_rng(9).integers(0, 27, 50)
    stream = ac.encode_symbols(model, tables, sym)
    for bad in (stream[:1], b"\x07" + stream[1:], stream[:-4], stream + b"\x00\x00\x00\x00"):
        with pytest.raises((ValueError, AmdError)):
            out = ac.decode_symbols(model, tables, bad)
            assert np.array_equal(out, sym)       # only acceptable if it decodes exactly
            raise ValueError("decoded")


_CODER = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from amdcompress.models import registry
from amdcompress.models.argmax.coding import load, encode_symbols, decode_symbols
model, tables = load(registry.read_weights(sys.argv[2]))
if sys.argv[1] == "enc":
    sym = np.frombuffer(open(sys.argv[3], "rb").read(), dtype=np.uint8).astype(np.int64) % 27
    open(sys.argv[4], "wb").write(encode_symbols(model, tables, sym))
else:
    sym = decode_symbols(model, tables, open(sys.argv[3], "rb").read())
    open(sys.argv[4], "wb").write(sym.astype(np.uint8).tobytes())
"""


@pytest.mark.slow
def test_separate_processes_agree(weights_file, tmp_path):
    raw = np.random.default_rng(11).integers(0, 256, 150, dtype=np.uint8).tobytes()
    (tmp_path / "in").write_bytes(raw)
    run = lambda *a: subprocess.run([sys.executable, "-c", _CODER, *map(str, a)], check=True, timeout=120)
    run("enc", weights_file, tmp_path / "in", tmp_path / "s1")
    run("dec", weights_file, tmp_path / "s1", tmp_path / "out")
    sym = np.frombuffer(raw, dtype=np.uint8) % 27
    assert (tmp_path / "out").read_bytes() == sym.astype(np.uint8).tobytes()
    # this process encodes to the same bytes and decodes the other process's stream
    model, tables = load_file(ac, weights_file)
    assert ac.encode_symbols(model, tables, sym.astype(np.int64)) == (tmp_path / "s1").read_bytes()
    assert np.array_equal(ac.decode_symbols(model, tables, (tmp_path / "s1").read_bytes()), sym)


def test_initial_bits_are_few(tiny):
    model, tables = tiny
    sym = np.random.default_rng(12).integers(0, 27, 40)
    stats = {}
    ac.encode_symbols(model, tables, sym, stats=stats)
    assert stats["initial_words_used"] <= 2
    # an untouched seed costs only its varint (and the coder's seal word)
    assert len(Message.seeded(8).to_bytes()) <= 5


# -- backend ---------------------------------------------------------------------------
def test_backend_round_trip_with_escapes(weights_file):
    b = backend_for("argmax", weights_file)
    assert b.codec_id == 18 and b.name == "argmax" and b.learned
    assert b.weights_tag() == bytes.fromhex(hashlib.sha256(weights_file.read_bytes()).hexdigest()[:8])
    rng = np.random.default_rng(13)
    cases = [b"", b"a", b"Hello, World!\n", TEXT + "Ünïcode\tand CAPS\n".encode(), rng.integers(0, 256, 97, dtype=np.uint8).tobytes()]
    for raw in cases:
        arr = np.frombuffer(raw, dtype=np.uint8)
        payload = b.encode(Data(BYTES, arr))
        assert b.decode(payload, BYTES, arr.shape).tobytes() == raw
    assert b.accepts(Data(BYTES, np.frombuffer(TEXT, dtype=np.uint8)))
    assert b.accepts(Data(BYTES, rng.integers(0, 256, 1000, dtype=np.uint8)))  # explicit --model argmax codes anything
    assert not b.auto_accepts(Data(BYTES, rng.integers(0, 256, 1000, dtype=np.uint8)))  # auto skips non-text
    assert not b.accepts(Data(1, np.zeros((4, 4, 3), dtype=np.uint8)))
    arr = np.frombuffer(TEXT, dtype=np.uint8)
    payload = b.encode(Data(BYTES, arr))
    with pytest.raises(AmdError):
        b.decode(payload[: len(payload) // 2], BYTES, arr.shape)
    with pytest.raises(AmdError):
        b.decode(payload, BYTES, (len(arr) + 5,))


def test_backend_registered():
    from amdcompress import backends

    assert backends.by_name("argmax").codec_id == 18
    assert backends.by_id(18).name == "argmax"


# -- training --------------------------------------------------------------------------
@pytest.mark.slow
def test_training_script_runs_and_exports(tmp_path):
    from amdcompress.models.argmax import train as train_argmax

    data = tmp_path / "train.txt"
    data.write_bytes(TEXT * 300)
    valid = tmp_path / "valid.txt"
    valid.write_bytes(TEXT * 20)
    common = ["--data", str(data), "--valid", str(valid), "--out", str(tmp_path / "run"), "--hidden", "16",
              "--emb", "8", "--head", "16", "--mixtures", "2", "--batch", "4", "--bptt", "32", "--no-tqdm",
              "--eval-chars", "800", "--eval-minutes", "0.05", "--ckpt-minutes", "0.05", "--log-every", "1000"]
    assert train_argmax.main(common + ["--minutes", "0.1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["valid_elbo_bpc"] for r in rows]
    assert len(evals) >= 2 and evals[-1] < evals[0] and all(r["valid_nll_bpc"] <= r["valid_elbo_bpc"] for r in rows)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck["step"] > 0
    assert rows[-1]["chars_seen"] == ck["seen"] == ck["step"] * 4 * 32
    assert train_argmax.main(common + ["--minutes", "0.03", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    ck1 = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck1["step"] >= ck["step"] and ck1["runs"][-1]["from_chars_seen"] == ck["seen"]
    out = tmp_path / "w.pt"
    assert train_argmax.main(common + ["--export", str(tmp_path / "run" / "best.pt"), "--weights-dir", str(tmp_path),
                                       "--weights-name", "w"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["name"] == "w" and meta["model"] == "argmax" and meta["valid_nll_bpc"] <= meta["valid_elbo_bpc"]
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert registry.sha256_file(out) == meta["sha256"]
    model, tables = load_file(ac, out)
    sym = np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64)
    sym = np.where(sym == 32, 0, sym - 96)
    assert np.array_equal(ac.decode_symbols(model, tables, ac.encode_symbols(model, tables, sym)), sym)
