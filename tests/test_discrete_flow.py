"""Discrete Flows text model: modular bijections, exact coding, training, backend."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import backend_for, install_backend, load_file
from amdcompress.models import registry
from amdcompress import api
from amdcompress.codecs.errors import AmdError
from amdcompress.formats import BYTES, Data
from amdcompress.models.discrete_flow import coding as dc
from amdcompress.models.datasets import shared_data_dir
from amdcompress.models.discrete_flow.network import (
    DiscreteFlow,
    DiscreteFlowConfig,
    mod_inverses,
    one_hot_add,
    one_hot_argmax,
    one_hot_multiply,
    units,
)

torch.set_num_threads(1)
TEXT = b"the quick brown fox jumps over the lazy dog and then some more words follow here "
VALID = shared_data_dir() / "text8" / "valid.txt"


def tiny_model(base: str = "ar", k: int = 27, chunk: int = 16, layers: int = 3, seed: int = 0,
               scramble: bool = True) -> DiscreteFlow:
    """A small random model; ``scramble`` makes every coupling far from the identity."""
    torch.manual_seed(seed)
    m = DiscreteFlow(DiscreteFlowConfig(k=k, chunk=chunk, layers=layers, net_hidden=8, net_depth=2, kernel=3,
                                        hidden=16, emb=4, base=base))
    with torch.no_grad():
        if scramble:
            for layer in m.couplings:
                torch.nn.init.normal_(layer.out.weight, std=3.0)
        for p in m.base.parameters():
            p.add_(torch.randn_like(p))
    return m.eval()


def to_sym(raw: bytes) -> np.ndarray:
    s = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    return np.where(s == 32, 0, s - 96)


def save_weights(path: Path, model: DiscreteFlow) -> str:
    from amdcompress.models.registry import compact_state_dict

    torch.save({"kind": "discrete-flow-weights", "config": model.config.to_dict(),
                "state_dict": compact_state_dict(model.state_dict())}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha}))
    return sha


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("dflow") / "tiny.pt"
    save_weights(p, tiny_model())
    return p


# -- modular arithmetic and the bijection --------------------------------------------------
def test_mod_inverses_and_units():
    for k in range(1, 64):
        inv, u = mod_inverses(k), units(k)
        assert int(u.sum()) == sum(math.gcd(s, k) == 1 for s in range(k))
        for s in range(k):
            if math.gcd(s, k) == 1:
                assert u[s] and (s * int(inv[s])) % k == 1 % k
            else:
                assert not u[s]
    assert int(units(27).sum()) == 18 and not bool(units(27)[3]) and not bool(units(27)[9])


@pytest.mark.parametrize("k", [2, 5, 27, 29])
def test_one_hot_ops_match_integer_arithmetic(k):
    x = torch.arange(k).repeat_interleave(k)
    s = torch.arange(k).repeat(k)
    ok = units(k)[s]
    x, s = x[ok], s[ok]
    xo, so = torch.nn.functional.one_hot(x, k).float(), torch.nn.functional.one_hot(s, k).float()
    assert torch.equal(one_hot_multiply(xo, so).argmax(-1), (x * s) % k)
    assert torch.equal(one_hot_add(xo, so).argmax(-1), (x + s) % k)
    assert torch.equal(one_hot_multiply(xo, so).sum(-1), torch.ones(len(x)))


def test_straight_through_gradient():
    torch.manual_seed(7)
    logits = torch.randn(5, 7, requires_grad=True)
    y = one_hot_argmax(logits, 0.5)
    assert torch.equal(y.detach(), torch.nn.functional.one_hot(logits.argmax(-1), 7).float())
    w = torch.randn(5, 7)
    (y * w).sum().backward()
    ref = torch.autograd.grad((torch.softmax(logits / 0.5, -1) * w).sum(), logits)[0]
    assert torch.allclose(logits.grad, ref, rtol=1e-5, atol=1e-6)


@given(k=st.sampled_from([2, 3, 4, 6, 9, 27, 29]), d=st.integers(1, 20), n=st.integers(1, 4),
       layers=st.integers(1, 4), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_flow_is_exactly_invertible(k, d, n, layers, seed):
    m = tiny_model("factorized", k=k, chunk=20, layers=layers, seed=seed)
    x = torch.from_numpy(np.random.default_rng(seed).integers(0, k, (n, d)))
    z = m.flow_forward(x)
    assert z.min() >= 0 and z.max() < k
    assert torch.equal(m.flow_inverse(z), x)
    bits, _, z_train = m(x)                       # the training path computes the same z and NLL
    assert torch.equal(z_train, z)
    assert torch.allclose(m.nll_bits(x)[0], bits, atol=1e-4)


def test_flow_is_a_permutation_and_likelihood_normalized():
    k, d = 3, 5
    m = tiny_model("factorized", k=k, chunk=d, layers=3, seed=3)
    xs = torch.tensor(list(itertools.product(range(k), repeat=d)))
    z = m.flow_forward(xs)
    assert len({tuple(r) for r in z.tolist()}) == k ** d         # a bijection of Z_3^5
    assert sum(1 for a, b in zip(xs.tolist(), z.tolist()) if a != b) > k ** d // 2   # and not the identity
    p = torch.exp2(-m.nll_bits(xs)[0].double().sum(-1))
    assert abs(float(p.sum()) - 1.0) < 1e-5


# -- coding --------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["ar", "factorized"])
@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 301])
def test_coding_round_trip(monkeypatch, base, n):
    monkeypatch.setattr(dc, "CHARS_PER_LANE", 64)        # several lanes, the last one shorter
    monkeypatch.setattr(dc, "FLOW_BATCH", 4)             # several flow batches
    monkeypatch.setattr(dc, "BLOCK", 50)
    monkeypatch.setattr(dc, "BLOCK_STEPS", 7)
    m = tiny_model(base)
    sym = np.random.default_rng(n).integers(0, 27, n)
    stats = {}
    stream = dc.encode_symbols(m, sym, stats=stats)
    assert np.array_equal(dc.decode_symbols(m, stream), sym)
    if n == 301 and base == "ar":
        assert stats["lanes"] == 5                       # lanes of 61, the last one of 57
        assert dc.lane_layout(301) == (5, 61, 57)


@pytest.mark.parametrize("base", ["ar", "factorized"])
def test_coded_size_matches_nll(base):
    m = tiny_model(base, chunk=32)
    sym = to_sym(TEXT * 30)[:2000]
    stats = {}
    stream = dc.encode_symbols(m, sym, stats=stats)
    nll = dc.nll_bits(m, sym)
    assert abs(stats["info_bits"] - nll) < 1e-3 * nll + 2       # 24-bit tables: almost exactly the NLL
    assert nll <= 8 * len(stream) < nll + 8 * 16                  # plus a few bytes of framing


def test_corrupt_streams_fail_cleanly():
    m = tiny_model("ar")
    sym = np.random.default_rng(9).integers(0, 27, 50)
    stream = dc.encode_symbols(m, sym)
    for bad in (b"", stream[:1], b"\x07" + stream[1:], stream[:-4], stream + b"\x00\x00\x00\x00", stream[:-1]):
        with pytest.raises(ValueError):
            dc.decode_symbols(m, bad)
    with pytest.raises(ValueError):
        dc.decode_symbols(m, stream, max_symbols=49)


_CODER = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from amdcompress.models import registry
from amdcompress.models.discrete_flow.coding import load, encode_symbols
model = load(registry.read_weights(sys.argv[2]))
sym = np.frombuffer(open(sys.argv[3], "rb").read(), dtype=np.uint8).astype(np.int64) % 27
open(sys.argv[4], "wb").write(encode_symbols(model, sym))
"""


@pytest.mark.slow
def test_separate_processes_agree(weights_file, tmp_path):
    raw = np.random.default_rng(11).integers(0, 256, 333, dtype=np.uint8).tobytes()
    (tmp_path / "in").write_bytes(raw)
    run = lambda *a: subprocess.run([sys.executable, "-c", _CODER, *map(str, a)], check=True, timeout=120)
    run("enc", weights_file, tmp_path / "in", tmp_path / "s1")
    sym = np.frombuffer(raw, dtype=np.uint8) % 27
    # this process (another one) encodes to the same bytes and decodes the child's stream
    model = load_file(dc, weights_file)
    assert dc.encode_symbols(model, sym.astype(np.int64)) == (tmp_path / "s1").read_bytes()
    assert np.array_equal(dc.decode_symbols(model, (tmp_path / "s1").read_bytes()), sym)


# -- backend -------------------------------------------------------------------------------
CASES = [b"", b"a", b"Hello, World!\n", TEXT * 5 + "Ünïcode\tand CAPS 1234\n".encode(),
         bytes(range(256)) + TEXT]


def test_backend_round_trip_with_escapes(weights_file):
    b = backend_for("discrete-flow", weights_file)
    assert (b.name, b.codec_id, b.learned) == ("discrete-flow", 19, True)
    assert b.weights_tag() == bytes.fromhex(hashlib.sha256(weights_file.read_bytes()).hexdigest()[:8])
    for raw in CASES:
        arr = np.frombuffer(raw, dtype=np.uint8)
        payload = b.encode(Data(BYTES, arr))
        assert b.decode(payload, BYTES, arr.shape).tobytes() == raw
    assert b.accepts(Data(BYTES, np.frombuffer(TEXT, dtype=np.uint8)))
    assert not b.auto_accepts(Data(BYTES, np.frombuffer(TEXT, dtype=np.uint8)))
    assert not b.accepts(Data(1, np.zeros((4, 4, 3), dtype=np.uint8)))
    arr = np.frombuffer(TEXT * 3, dtype=np.uint8)
    payload = b.encode(Data(BYTES, arr))
    for bad in (payload[: len(payload) // 2], payload[:3] + bytes([payload[3] ^ 0xFF]) + payload[4:]):
        try:
            out = b.decode(bad, BYTES, arr.shape)
        except AmdError as e:
            assert "\n" not in str(e)
        else:
            assert out.tobytes() != TEXT * 3 or bad == payload   # wrong output is left to the container's checksum
    with pytest.raises(AmdError):
        b.decode(payload, 1, arr.shape)


def test_api_and_cli_round_trip(weights_file, monkeypatch, tmp_path):
    from amdcompress import cli

    install_backend(monkeypatch, "discrete-flow", weights_file)
    for raw in CASES:
        blob = api.compress(raw, model="discrete-flow")
        assert api.info(blob).as_dict()["model"] == "discrete-flow"
        assert api.decompress(blob) == raw
    src = tmp_path / "t.txt"
    src.write_bytes(CASES[3])
    assert cli.main(["encode", "-m", "discrete-flow", "-q", str(src), "-o", str(tmp_path / "t.amd")]) == 0
    assert cli.main(["decode", "-q", str(tmp_path / "t.amd"), "-o", str(tmp_path / "back.txt")]) == 0
    assert (tmp_path / "back.txt").read_bytes() == CASES[3]
    blob = (tmp_path / "t.amd").read_bytes()
    with pytest.raises(AmdError):
        api.decompress(blob[:-5])


def test_backend_registered_and_listed():
    from amdcompress import backends, cli

    assert backends.by_name("discrete-flow").codec_id == 19
    assert backends.by_id(19).name == "discrete-flow"
    from click.testing import CliRunner

    out = CliRunner().invoke(cli.cli, ["models", "--json"]).output
    assert any(r["name"] == "discrete-flow" and r["codec_id"] == 19 for r in json.loads(out))


def test_shipped_weights_on_real_text():
    from amdcompress import backends

    b = backends.by_name("discrete-flow")
    if not b.available() or not VALID.is_file():
        pytest.skip("shipped discrete-flow weights or text8 valid.txt not installed")
    rec = registry.record(b.newest.name)
    assert rec["sha256"] == b.newest.sha256 == registry.sha256_file(registry.weights_path(b.newest.name))
    assert b.weights_tag() == bytes.fromhex(rec["sha256"][:8])
    raw = VALID.read_bytes()[:2000]
    blob = api.compress(raw, model="discrete-flow")
    assert api.decompress(blob) == raw
    assert 8 * len(blob) / len(raw) < 2.6          # far below the 4.75 bits of a uniform 27-symbol code
    assert rec["valid_bpc"] < 2.193                 # held-out bpc of the shipped weights beats bzip2 -9


# -- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["ar", "factorized"])
def test_tiny_model_trains(base):
    torch.manual_seed(0)
    m = DiscreteFlow(DiscreteFlowConfig(chunk=32, layers=2, net_hidden=16, net_depth=2, kernel=3,
                                        hidden=32, emb=8, base=base, temperature=0.5))
    x = torch.from_numpy(to_sym(TEXT * 4)[: 4 * 32].reshape(4, 32))
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    losses = []
    for _ in range(12):
        loss = m(x)[0].mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(p.grad is not None for p in m.couplings[0].parameters())   # gradients reach the flow


def test_coupling_learns_what_a_factorized_base_cannot():
    """Odd symbols = 2 * previous even symbol + 1 (mod 5): one coupling can map
    them to a constant, halving the bits; a factorized base alone cannot."""
    torch.manual_seed(0)
    k, d = 5, 8
    m = DiscreteFlow(DiscreteFlowConfig(k=k, chunk=d, layers=1, net_hidden=16, net_depth=2, kernel=3,
                                        base="factorized", temperature=0.1))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(200):
        xe = torch.randint(0, k, (64, d // 2))
        x = torch.stack([xe, (xe * 2 + 1) % k], -1).reshape(64, d)
        loss = m(x)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    nll = float(m.nll_bits(x)[0].mean())
    assert nll < 0.5 * math.log2(k) + 0.25, nll       # a factorized model is stuck at log2(5) = 2.32
    loc, scale = m.couplings[0].params(x)
    assert bool((loc[:, 1::2] != 0).any() or (scale[:, 1::2] != 1).any())   # the flow left the identity


@pytest.mark.slow
def test_training_script_runs_resumes_and_exports(tmp_path):
    from amdcompress.models.discrete_flow import train as tdf

    data = tmp_path / "train.txt"
    data.write_bytes(TEXT * 200)
    valid = tmp_path / "valid.txt"
    valid.write_bytes(TEXT * 20)
    common = ["--data", str(data), "--valid", str(valid), "--out", str(tmp_path / "run"), "--hidden", "16",
              "--emb", "8", "--net-hidden", "8", "--layers", "1", "--chunk", "32", "--batch", "4",
              "--eval-chars", "1000", "--eval-minutes", "0.02", "--ckpt-minutes", "0.02", "--log-every", "1000"]
    assert tdf.main(common + ["--minutes", "5", "--max-steps", "150"]) == 0  # a step count, not a time: load-proof
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] > 0 and last["valid_bpc"] < math.log2(27) and last["chars_seen"] == last["step"] * 4 * 32
    step = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"]
    assert tdf.main(common + ["--minutes", "5", "--max-steps", "160", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] > step
    out = tmp_path / "w.pt"
    assert tdf.main(common + ["--export", str(tmp_path / "run" / "best.pt"), "--weights-dir", str(tmp_path),
                              "--weights-name", "w"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and meta["config"]["layers"] == 1
    assert registry.sha256_file(out) == meta["sha256"]
    model = load_file(dc, out)
    sym = to_sym(TEXT)
    assert np.array_equal(dc.decode_symbols(model, dc.encode_symbols(model, sym)), sym)
    # training continues from the shipped file alone, counting its steps
    assert tdf.main(common + ["--max-steps", str(meta["steps"] + 2), "--resume", str(out),
                              "--out", str(tmp_path / "run2")]) == 0
    assert torch.load(tmp_path / "run2" / "last.pt", weights_only=False)["step"] == meta["steps"] + 2
