"""Argmax Flow with a coupling-flow prior: grid bijection, bits-back coding, training, backend."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import backend_for, install_backend, load_file
from amdcompress.models import registry
from amdcompress.codecs.errors import AmdError
from amdcompress.formats import BYTES, Data
from amdcompress.models.argmax_coupling import coding as acc
from amdcompress.models.argmax_coupling.network import (
    WARMUP_FIRST,
    ArgmaxCouplingFlow,
    CouplingConfig,
    chunk_sizes,
    chunked_nelbo_bits,
    condition_mask,
    pad_k,
)

torch.set_num_threads(1)
TINY = CouplingConfig(chunk=32, layers=4, hidden=16, kernel=3, mixtures=3)
TEXT = b"the quick brown fox jumps over the lazy dog and then some more words follow here "


def to_sym(raw: bytes) -> np.ndarray:
    s = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    return np.where(s == 32, 0, s - 96)


def tiny_model(seed: int = 0) -> ArgmaxCouplingFlow:
    """A random model whose couplings shift by many grid steps (untrained nets output zero)."""
    torch.manual_seed(seed)
    m = ArgmaxCouplingFlow(TINY)
    with torch.no_grad():
        for net in m.nets:
            torch.nn.init.normal_(net.out.weight, std=0.3)
            torch.nn.init.normal_(net.out.bias, std=0.3)
        m.q.mu.add_(torch.rand(m.q.mu.shape))
        m.q.log_sigma.add_(0.3 * torch.randn(m.q.log_sigma.shape))
        m.base_means.add_(0.5 * torch.randn(m.base_means.shape))
    return m.eval()


def save_weights(path, model) -> str:
    tables = acc.build_tables(model)
    torch.save({"kind": "argmax-coupling-weights", "config": model.config.to_dict(), "state_dict": model.state_dict(),
                "coding": {k: torch.as_tensor(v) for k, v in tables.items()}}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha}))
    return sha


@pytest.fixture(scope="module")
def coder():
    m = tiny_model()
    return acc.Coder(m, acc.build_tables(m))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("argmax_coupling") / "tiny.pt"
    save_weights(p, tiny_model())
    return p


# -- the grid flow -------------------------------------------------------------------------
def test_condition_masks_alternate():
    L = 8
    masks = [condition_mask(l, L) for l in range(8)]
    for mk in masks:
        assert mk.shape == (L, 5) and 0 < int(mk.sum()) < mk.numel()
    assert torch.equal(masks[0], ~masks[1]) and torch.equal(masks[2], ~masks[3])
    assert torch.equal(masks[0][:, 0], torch.arange(L) % 2 == 0)          # even positions kept
    assert torch.equal(masks[2][0], torch.tensor([True, True, False, False, False]))
    assert not torch.equal(masks[2], masks[6])                              # the dim split alternates
    # every entry is shifted by some layer
    assert bool((~torch.stack(masks)).any(0).all())


_FLOW = tiny_model(1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, TINY.chunk), st.integers(1, 3))
def test_grid_flow_is_an_exact_bijection(seed, nv, batch):
    rng = np.random.default_rng(seed)
    k = torch.from_numpy(rng.integers(-300, 300, (batch, TINY.chunk, 5)))
    valid = None
    if nv < TINY.chunk:
        valid = (torch.arange(TINY.chunk) < nv)[None, :].expand(batch, -1)
        k[:, nv:] = pad_k(TINY.delta_bits)
    z = _FLOW.forward_int(k, valid)
    assert z.dtype == torch.int64
    assert torch.equal(_FLOW.inverse_int(z, valid), k)
    if valid is not None:                                    # padding is never shifted
        assert torch.equal(z[:, nv:], k[:, nv:])
    # the differentiable flow of training is the same map: bin centres to bin centres
    d = _FLOW.delta
    with torch.no_grad():
        zf = _FLOW.flow((k.float() + 0.5) * d, valid)
    assert torch.equal(zf, (z.float() + 0.5) * d)


def test_flow_moves_the_latents():
    """Not the identity: the test above would pass for a flow that does nothing."""
    k = torch.from_numpy(np.random.default_rng(0).integers(-30, 30, (2, TINY.chunk, 5)))
    z = _FLOW.forward_int(k)
    assert int((z != k).sum()) > k.numel() // 2


# -- coding --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 200, 1000, 12345])
def test_chunk_layout(n):
    L = 128
    sizes = chunk_sizes(n, L)
    assert sum(sizes) == n and all(1 <= s <= L for s in sizes)
    if n:
        assert sizes[0] == min(n, WARMUP_FIRST)
        body = sizes[:-1]
        assert body == sorted(body)                                  # grows, then full chunks
    if n > 2000:
        assert sizes[-2] == L and len(sizes) < n / L + 20


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 45, 301, 1000])
def test_bits_back_round_trip(coder, n):
    sym = np.random.default_rng(n).integers(0, 27, n)
    stats = {}
    stream = coder.encode(sym, stats=stats)
    assert np.array_equal(coder.decode(stream), sym)
    if n >= 17:
        assert stats["chunks"] == len(chunk_sizes(n, TINY.chunk)) > 1
        assert abs(stats["message_bits"] - stats["info_bits"]) < 0.01 * stats["info_bits"] + 64
        assert len(stream) * 8 < stats["info_bits"] + 32 * (stats["initial_words_used"] + 4) + 64
    if n == 1000:
        # the warm-up keeps the initial bits near H(Q) of the first 16 chars (<= 24 bits per dim)
        assert stats["initial_words_used"] * 32 <= WARMUP_FIRST * 5 * 24


@pytest.mark.slow
def test_coded_size_tracks_elbo():
    """A tiny model trained for a moment: coded bits close to (below) its ELBO
    on a moderately long input, far below the untrained model."""
    torch.manual_seed(5)
    m = ArgmaxCouplingFlow(TINY)
    sym = to_sym(TEXT * 40)                                         # 3240 chars, ~110 chunks
    L = TINY.chunk
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    offs = np.random.default_rng(0).integers(0, len(sym) - L, (150, 16))
    first = None
    for o in offs:
        x = torch.from_numpy(sym[o[:, None] + np.arange(L)[None, :]])
        loss = m(x).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    elbo = chunked_nelbo_bits(m, sym, samples=4) / len(sym)
    assert elbo < first - 2.0, (first, elbo)                         # training lowers the loss
    c = acc.Coder(m, acc.build_tables(m))
    stats = {}
    stream = c.encode(sym, stats=stats)
    assert np.array_equal(c.decode(stream), sym)
    coded = 8 * len(stream) / len(sym)
    info = stats["info_bits"] / len(sym)
    assert info < elbo + 0.05, (info, elbo)
    assert coded < elbo + 0.3, (coded, elbo)                         # + initial bits of one chunk
    assert coded > 0.5 * elbo


def test_corrupt_streams_fail_cleanly(coder):
    sym = np.random.default_rng(9).integers(0, 27, 50)
    stream = coder.encode(sym)
    for bad in (stream[:1], b"\x07" + stream[1:], stream[:-4], stream + b"\x00\x00\x00\x00",
                stream[:6] + bytes(b ^ 0x5A for b in stream[6:])):
        with pytest.raises((ValueError, AmdError)):
            out = coder.decode(bad)
            assert np.array_equal(out, sym)       # only acceptable if it decodes exactly
            raise ValueError("decoded")


_CODER = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from amdcompress.models import registry
from amdcompress.models.argmax_coupling.coding import load
coder = load(registry.read_weights(sys.argv[2]))
if sys.argv[1] == "enc":
    sym = np.frombuffer(open(sys.argv[3], "rb").read(), dtype=np.uint8).astype(np.int64) % 27
    open(sys.argv[4], "wb").write(coder.encode(sym))
else:
    sym = coder.decode(open(sys.argv[3], "rb").read())
    open(sys.argv[4], "wb").write(sym.astype(np.uint8).tobytes())
"""


@pytest.mark.slow
def test_separate_processes_agree(weights_file, tmp_path):
    raw = np.random.default_rng(11).integers(0, 256, 150, dtype=np.uint8).tobytes()
    (tmp_path / "in").write_bytes(raw)
    run = lambda *a: subprocess.run([sys.executable, "-c", _CODER, *map(str, a)], check=True, timeout=120)
    run("enc", weights_file, tmp_path / "in", tmp_path / "s1")
    run("enc", weights_file, tmp_path / "in", tmp_path / "s2")
    assert (tmp_path / "s1").read_bytes() == (tmp_path / "s2").read_bytes()
    run("dec", weights_file, tmp_path / "s1", tmp_path / "out")
    sym = np.frombuffer(raw, dtype=np.uint8) % 27
    assert (tmp_path / "out").read_bytes() == sym.astype(np.uint8).tobytes()
    # this process encodes to the same bytes and decodes the other process's stream
    c = load_file(acc, weights_file)
    assert c.encode(sym.astype(np.int64)) == (tmp_path / "s1").read_bytes()
    assert np.array_equal(c.decode((tmp_path / "s1").read_bytes()), sym)


# -- backend ---------------------------------------------------------------------------------
def test_backend_round_trip_with_escapes(weights_file):
    b = backend_for("argmax-coupling", weights_file)
    assert b.codec_id == 20 and b.name == "argmax-coupling" and b.learned
    assert b.weights_tag() == bytes.fromhex(hashlib.sha256(weights_file.read_bytes()).hexdigest()[:8])
    rng = np.random.default_rng(13)
    cases = [b"", b"a", b"Hello, World!\n", TEXT + "Ünïcode\tand CAPS\n".encode(),
             rng.integers(0, 256, 97, dtype=np.uint8).tobytes()]
    for raw in cases:
        arr = np.frombuffer(raw, dtype=np.uint8)
        payload = b.encode(Data(BYTES, arr))
        assert b.decode(payload, BYTES, arr.shape).tobytes() == raw
    assert b.accepts(Data(BYTES, np.frombuffer(TEXT, dtype=np.uint8)))
    assert not b.auto_accepts(Data(BYTES, np.frombuffer(TEXT, dtype=np.uint8)))   # auto keeps `argmax`
    assert not b.accepts(Data(1, np.zeros((4, 4, 3), dtype=np.uint8)))
    arr = np.frombuffer(TEXT, dtype=np.uint8)
    payload = b.encode(Data(BYTES, arr))
    for bad, shape in ((payload[: len(payload) // 2], arr.shape), (payload, (len(arr) + 5,)),
                       (payload[:4] + bytes(x ^ 0xA5 for x in payload[4:]), arr.shape)):
        with pytest.raises(AmdError) as e:
            b.decode(bad, BYTES, shape)
        assert "\n" not in str(e.value)


def test_backend_registered_and_api_round_trip(weights_file, monkeypatch):
    from amdcompress import api, backends

    b = backends.by_name("argmax-coupling")
    assert b.codec_id == 20 and backends.by_id(20) is b
    install_backend(monkeypatch, "argmax-coupling", weights_file)
    raw = TEXT * 3 + b"\nEnd."
    blob = api.compress(raw, model="argmax-coupling")
    assert api.decompress(blob) == raw


# -- training --------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_script_runs_and_exports(tmp_path):
    from amdcompress.models.argmax_coupling import train as tr

    data = tmp_path / "train.txt"
    data.write_bytes(TEXT * 300)
    valid = tmp_path / "valid.txt"
    valid.write_bytes(TEXT * 20)
    common = ["--data", str(data), "--valid", str(valid), "--out", str(tmp_path / "run"), "--chunk", "24",
              "--layers", "2", "--hidden", "8", "--kernel", "3", "--mixtures", "2", "--batch", "8",
              "--eval-chars", "800", "--eval-minutes", "0.05", "--ckpt-minutes", "0.05", "--log-every", "1000",
              "--lr", "5e-3", "--warmup", "10"]
    assert tr.main(common + ["--minutes", "0.1"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["valid_elbo_bpc"] for r in rows]
    assert len(evals) >= 2 and evals[-1] < evals[0] - 0.5, evals       # the loss drops
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck["step"] > 0
    assert tr.main(common + ["--minutes", "0.03", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    ck1 = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck1["step"] >= ck["step"] and [r["from_step"] for r in ck1["runs"]] == [0, ck["step"]]
    out = tmp_path / "w.pt"
    assert tr.main(common + ["--export", str(tmp_path / "run" / "best.pt"), "--weights-dir", str(tmp_path),
                             "--weights-name", "w"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["model"] == "argmax-coupling" and meta["valid_elbo_bpc"] > 0
    assert meta["training_runs"][0]["from_step"] == 0 and "last_eval" in meta["training_runs"][0]
    assert registry.sha256_file(out) == meta["sha256"]
    c = load_file(acc, out)
    sym = to_sym(TEXT)
    assert np.array_equal(c.decode(c.encode(sym)), sym)
    # training continues from the shipped file alone, counting its steps and minutes
    assert tr.main(common + ["--max-steps", str(meta["steps"] + 3), "--resume", str(out),
                             "--out", str(tmp_path / "run2")]) == 0
    ck2 = torch.load(tmp_path / "run2" / "last.pt", weights_only=False)
    assert ck2["step"] == meta["steps"] + 3  # the shipped record's history continues, marked with that export:
    assert [{k: v for k, v in r.items() if k != "export"} for r in ck2["runs"][:-1]] == meta["training_runs"]
    assert ck2["runs"][-2]["export"]["valid_elbo_bpc"] == meta["valid_elbo_bpc"]
    assert ck2["runs"][-1]["from_step"] == meta["steps"]
    assert "warms up again" in (tmp_path / "run2" / "log.txt").read_text()
