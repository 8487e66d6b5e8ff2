"""Multinomial diffusion: closed forms against brute force, exact bits-back
coding along the chain (all steps and subsets), cross-process determinism,
training signal, and the backend (escapes, steps setting, corrupt payloads).
Tiny models only: the whole file runs in well under a minute on one core."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import backend_for, install_backend
from amdcompress import AmdError, api, backends, formats
from amdcompress.models.diffusion import network as D
from amdcompress.models.diffusion import coding as DC

TINY = {"T": 20, "d": 32, "layers": 1, "heads": 2, "ff": 64, "conv": 3}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return D.Denoiser(TINY).eval()


def text_symbols(n: int, seed: int = 0) -> np.ndarray:
    """Symbols of a text-like stream (words from a small vocabulary)."""
    rng = np.random.default_rng(seed)
    words = [b"the", b"of", b"and", b"diffusion", b"text", b"a", b"model", b"zebra"]
    raw = b" ".join(words[i] for i in rng.integers(0, len(words), n))[:n]
    from amdcompress.codecs import textstream

    return textstream.split(np.frombuffer(raw, dtype=np.uint8))[0]


# --------------------------------------------------------------------------- closed forms
def one_step_matrices(abar: np.ndarray, k: int) -> list[np.ndarray]:
    """Q_t[i, j] = q(x_t = j | x_{t-1} = i) = (1 - beta_t) [i = j] + beta_t / k."""
    mats = [None]
    for t in range(1, len(abar)):
        beta = 1 - abar[t] / abar[t - 1]
        mats.append((1 - beta) * np.eye(k) + beta / k)
    return mats


def posterior_from_consts(abar, s, t, k, log_x0, x_t):
    c = D.step_constants(abar, np.array([s]), np.array([t]), k)
    lp = D.log_posterior(torch.as_tensor(log_x0, dtype=torch.float32)[None, None],
                         torch.tensor([[x_t]]), c)
    return lp[0, 0].double().exp().numpy()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_posterior_matches_bayes_enumeration(k):
    T = 6
    abar = D.cosine_alpha_bar(T)
    Q = one_step_matrices(abar, k)
    bar = [np.eye(k)]
    for t in range(1, T + 1):
        bar.append(bar[-1] @ Q[t])
        # marginal q(x_t | x_0) closed form
        assert np.allclose(bar[t], abar[t] * np.eye(k) + (1 - abar[t]) / k, atol=1e-12)
    for t in range(1, T + 1):
        for x0 in range(k):
            for xt in range(k):
                # brute force: q(x_{t-1}=j | x_t, x_0) = Q_t[j, x_t] bar_{t-1}[x_0, j] / bar_t[x_0, x_t]
                want = np.array([Q[t][j, xt] * bar[t - 1][x0, j] for j in range(k)]) / bar[t][x0, xt]
                got = posterior_from_consts(abar, t - 1, t, k, np.where(np.arange(k) == x0, 0.0, D.LOG_ZERO), xt)
                assert np.allclose(got, want, atol=1e-6), (t, x0, xt)


@pytest.mark.parametrize("k", [3, 4])
def test_skipping_posterior_and_model_mixture_match_matrix_products(k):
    T = 8
    abar = D.cosine_alpha_bar(T)
    Q = one_step_matrices(abar, k)
    rng = np.random.default_rng(1)
    for s, t in [(0, 3), (2, 5), (1, 8), (0, 8), (6, 7)]:
        Qst = np.eye(k)
        for u in range(s + 1, t + 1):
            Qst = Qst @ Q[u]
        bar_s = np.linalg.multi_dot([np.eye(k)] + [Q[u] for u in range(1, s + 1)]) if s else np.eye(k)
        c = D.step_constants(abar, np.array([s]), np.array([t]), k)
        # composed transition q(x_t | x_s) in closed form
        closed = np.where(np.eye(k, dtype=bool), np.exp(c["same"][0]), np.exp(c["other"][0]))
        assert np.allclose(closed, Qst, atol=1e-12)
        for xt in range(k):
            x0hat = rng.dirichlet(np.ones(k))
            # the model's p(x_s | x_t) oc q(x_t | x_s) sum_x0 x0hat(x0) q(x_s | x0)
            want = Qst[:, xt] * (x0hat @ bar_s)
            want /= want.sum()
            got = posterior_from_consts(abar, s, t, k, np.log(x0hat), xt)
            assert np.allclose(got, want, atol=1e-6)


def test_coding_tables_match_closed_forms():
    abar = D.cosine_alpha_bar(50)
    Q = one_step_matrices(abar, D.K)
    Qst = Q[11] @ Q[12] @ Q[13]
    tab = DC.StepTables(abar, 10, 13)
    assert np.allclose(tab.forward_counts / 2**24, Qst, atol=2e-6)
    # p table == normalized log-space posterior of the same rounded log x0hat
    rng = np.random.default_rng(2)
    lp = torch.log_softmax(torch.as_tensor(rng.normal(size=(7, D.K)) * 3), -1).numpy()
    lpr = DC.round_logp(lp)
    xt = rng.integers(0, D.K, 7)
    w = tab.p_weights(lpr, xt)
    c = D.step_constants(abar, np.full(7, 10), np.full(7, 13))
    ref = D.log_posterior(torch.as_tensor(lpr, dtype=torch.float64)[None].float(), torch.as_tensor(xt)[None],
                          c)[0].double().exp().numpy()
    assert np.allclose(w / w.sum(1, keepdims=True), ref, atol=1e-5)
    assert np.all(lpr * 4096 == np.round(lpr * 4096))


def test_chain_is_a_subset_ending_at_T():
    for T, S in [(1000, 100), (1000, 1000), (1000, 7), (20, 1), (20, 20)]:
        ts = D.chain(T, S)
        assert ts[0] == 0 and ts[-1] == T and len(ts) == S + 1 and np.all(np.diff(ts) > 0)
    with pytest.raises(ValueError):
        D.chain(20, 21)


# --------------------------------------------------------------------------- coding
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 3000])
@pytest.mark.parametrize("steps", [20, 6])
def test_roundtrip_all_steps_and_subsets(tiny, n, steps):
    x = text_symbols(n, seed=n) if n > 1 else np.arange(n) % D.K
    coder = DC.DiffusionCoder(tiny, block=2)
    blob = coder.encode(x, steps)
    assert DC.stream_steps(blob) == steps
    assert np.array_equal(coder.decode(blob, max_symbols=n), x)


def test_coded_size_matches_elbo_on_a_long_input(tiny):
    x = text_symbols(20000, seed=5)
    stats = {}
    blob = DC.DiffusionCoder(tiny).encode(x, 10, stats=stats)
    bits = 8 * len(blob)
    assert abs(bits - stats["elbo_bits"]) < 0.03 * stats["elbo_bits"], (bits, stats)
    assert len(stats["generations"]) < 12 and sum(stats["generations"]) == x.size


def _by_hand(coder, x, steps, gens):
    """The chain as loops (the encoder of DESIGN.md, and the coder before the
    codecs carried it): per generation, for each step, for each block in order,
    pop x_t ~ q, push x_s under p; then x_T uniformly."""
    from amdcompress.codecs import Categorical, Message, Uniform, quantize_weights
    from amdcompress.codecs.varint import write_head, write_varint

    ts = D.chain(coder.T, steps)
    m = Message.seeded(DC.seed_words_for(x.size))
    lo = 0
    for g in gens:
        y = x[lo : lo + g].copy()
        for i in range(1, len(ts)):
            tab = DC.StepTables(coder.abar, ts[i - 1], ts[i])
            for b0, nc, length in DC.blocks(g, coder.block):
                sl = slice(b0, b0 + nc * length)
                m, xt = Categorical(tab.q_counts(y[sl])).pop(m)
                w = tab.p_weights(coder._logp(xt, ts[i], nc, length), xt)
                Categorical(quantize_weights(w)).push(m, y[sl])
                y[sl] = xt
        Uniform(np.full(g, D.K)).push(m, y)
        lo += g
    head = write_head(DC.VERSION, steps, coder.block, x.size)
    return head + write_varint(len(gens)) + b"".join(write_varint(g) for g in gens) + m.to_bytes()


@pytest.mark.parametrize("n,steps,block", [(1, 20, 2), (257, 6, 2), (3000, 5, 1), (3000, 7, 64)])
def test_combinator_coder_writes_the_bytes_of_the_loops(tiny, n, steps, block):
    """Stream version 1 is unchanged by writing the chain with codecs.bits_back_chain
    and codecs.generations: same bytes as the loops, for multi-block steps and
    several generations (files made before decode: they are these bytes)."""
    x = text_symbols(n, seed=n) if n > 1 else np.arange(n) % D.K
    coder = DC.DiffusionCoder(tiny, block=block)
    stats = {}
    blob = coder.encode(x, steps, stats=stats)
    from amdcompress.models.determinism import coding_mode

    with coding_mode():
        assert blob == _by_hand(coder, x, steps, stats["generations"])
    assert np.array_equal(coder.decode(blob, max_symbols=n), x)
    assert 0 < stats["initial_words_used"] <= DC.seed_words_for(n)


def test_corrupt_streams_raise(tiny):
    coder = DC.DiffusionCoder(tiny)
    x = text_symbols(600, seed=3)
    blob = coder.encode(x, 5)
    bad = [b"", b"\x07" + blob[1:], blob[:3], blob[:-4], blob[:1] + b"\x7f" + blob[2:]]
    for b in bad:
        with pytest.raises(AmdError):
            coder.decode(b, max_symbols=600)
    with pytest.raises(AmdError):
        coder.decode(blob, max_symbols=100)  # more symbols than the container allows
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x55
    try:
        y = coder.decode(bytes(flipped), max_symbols=600)
    except AmdError:
        return
    assert not np.array_equal(y, x)


_PROC = r"""
import sys, numpy as np, torch
torch.set_num_threads(4)  # the coder must pin its own thread count
from amdcompress.models.diffusion import network as D
from amdcompress.models.diffusion import coding as DC
obj = torch.load(sys.argv[2], weights_only=True)
m = D.model_from_weights(obj)
coder = DC.DiffusionCoder(m, block=3)
x = np.load(sys.argv[3])
if sys.argv[1] == "encode":
    sys.stdout.write(coder.encode(x, 7).hex())
else:
    y = coder.decode(bytes.fromhex(sys.stdin.read()))
    sys.stdout.write("OK" if np.array_equal(x, y) else "MISMATCH")
"""


@pytest.mark.slow
def test_encode_decode_in_separate_processes(tiny, tmp_path):
    wpath, xpath = tmp_path / "w.pt", tmp_path / "x.npy"
    torch.save({"config": tiny.config, "state_dict": tiny.state_dict()}, wpath)
    np.save(xpath, text_symbols(1500, seed=9))
    run = lambda *a, inp=None: subprocess.run([sys.executable, "-c", _PROC, *a, str(wpath), str(xpath)],
                                              input=inp, capture_output=True, text=True, check=True).stdout
    e1, e2 = run("encode"), run("encode")
    assert e1 == e2 and len(e1) > 100
    assert run("decode", inp=e1) == "OK"


# --------------------------------------------------------------------------- training
def test_tiny_model_loss_decreases():
    torch.manual_seed(0)
    model = D.Denoiser({"T": 50, "d": 32, "layers": 1, "heads": 2, "ff": 64})
    data = torch.as_tensor(text_symbols(16 * 64, seed=11), dtype=torch.int64).reshape(16, 64)
    before = D.elbo_bpc(model, data, samples=4, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sampler = D.StepSampler(model.T)
    rng = np.random.default_rng(0)
    for _ in range(40):
        loss, _ = D.training_loss(model, data, sampler, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = D.elbo_bpc(model, data, samples=4, seed=3)
    assert after < before - 0.3, (before, after)
    assert before < math.log2(27) + 1.5


def test_train_script_resume_and_export(tmp_path):
    import json

    from amdcompress.models import registry
    from amdcompress.models.diffusion import train as train_diffusion

    text = bytes(np.frombuffer(b" abcdefghijklmnopqrstuvwxyz", np.uint8)[text_symbols(4096, seed=5)])
    (tmp_path / "train.txt").write_bytes(text)
    (tmp_path / "valid.txt").write_bytes(text[:1024])
    common = ["--data", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
              "--out", str(tmp_path / "run"), "--batch", "2", "--threads", "1", "--warmup", "2",
              "--eval-chars", "512", "--no-tqdm"]
    assert train_diffusion.main(common + ["--max-steps", "3", "--config", json.dumps(TINY)]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"model", "ema", "optimizer"} <= set(ck) and ck["step"] == 3 and ck["seen"] == 3 * 2 * 256
    assert ck["extra"]["sampler"]["count"] != [0] * len(ck["extra"]["sampler"]["count"])
    assert train_diffusion.main(common + ["--max-steps", "5", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["step"] == 5 and [r["from_step"] for r in ck["runs"]] == [0, 3]
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["valid_elbo_bpc"] > 0 and last["chars_seen"] == 5 * 2 * 256 and "train_elbo_bpc" in last
    wdir = tmp_path / "weights"
    assert train_diffusion.main(["--export", "--resume", str(tmp_path / "run" / "last.pt"), "--weights-dir", str(wdir),
                                 "--valid", str(tmp_path / "valid.txt"), "--export-eval-chars", "512"]) == 0
    rec = json.loads((wdir / "diffusion-v1.json").read_text())
    assert rec["sha256"] == registry.sha256_file(wdir / "diffusion-v1.pt") and rec["steps"] == 5
    assert rec["chars_seen"] == 5 * 2 * 256 and len(rec["earlier_commands"]) == 1 and rec["valid_elbo_bpc"] > 0
    shipped = registry.read_weights(wdir / "diffusion-v1.pt")["state_dict"]
    assert shipped["alpha_bar"].dtype == torch.float64


def test_importance_sampler_weights_are_inverse_probabilities():
    s = D.StepSampler(4, "importance", warm=1)
    rng = np.random.default_rng(0)
    i, w = s.sample(5, rng)
    assert np.all(w == 4.0)  # uniform until every step has a sample
    s.update(np.array([1, 2, 3, 4]), np.array([1.0, 2.0, 3.0, 4.0]))
    i, w = s.sample(1000, rng)
    p = s.probs()
    assert np.allclose(w, 1.0 / p[i - 1]) and abs(p.sum() - 1) < 1e-12
    assert np.bincount(i, minlength=5)[4] > np.bincount(i, minlength=5)[1]


# --------------------------------------------------------------------------- backend
@pytest.fixture()
def tiny_weights(tiny, tmp_path):
    """The tiny model as a weights file with no record beside it (explicit paths need none)."""
    p = tmp_path / "tiny-diffusion.pt"
    torch.save({"config": tiny.config, "state_dict": tiny.state_dict()}, p)
    return p


@pytest.fixture()
def backend(tiny_weights, monkeypatch):
    """The registered backend, pointed at the tiny model."""
    monkeypatch.setenv("AMDCOMPRESS_DIFFUSION_STEPS", "5")  # the tiny model has T = 20 (the default, 100, is for T = 1000)
    return install_backend(monkeypatch, "diffusion", tiny_weights)


def test_backend_registered_with_its_id():
    b = backends.by_id(17)
    assert b.name == "diffusion" and b.learned


@pytest.mark.parametrize("raw", [b"", b"a", b"hello world " * 40, bytes(range(256)) * 3,
                                 b"Mixed CASE text, with punctuation!\n" * 20, "ünïcödé text".encode()])
def test_backend_roundtrips_any_bytes(backend, raw):
    data = formats.Data(formats.BYTES, np.frombuffer(raw, dtype=np.uint8))
    payload = backend.encode(data)
    out = backend.decode(payload, formats.BYTES, (len(raw),))
    assert out.tobytes() == raw


def test_backend_through_the_container_and_steps_setting(backend, monkeypatch):
    raw = b"the quick brown fox jumps over the lazy dog " * 30
    monkeypatch.setenv("AMDCOMPRESS_DIFFUSION_STEPS", "4")
    blob = api.compress(raw, model="diffusion")
    monkeypatch.delenv("AMDCOMPRESS_DIFFUSION_STEPS")
    from amdcompress import container
    from amdcompress.codecs import textstream

    _, payload = container.unpack(blob)
    assert DC.stream_steps(textstream.unpack(payload)[0]) == 4
    assert api.decompress(blob) == raw  # the decoder needs no setting
    monkeypatch.setenv("AMDCOMPRESS_DIFFUSION_STEPS", "100000")
    with pytest.raises(AmdError):
        api.compress(raw, model="diffusion")
    monkeypatch.delenv("AMDCOMPRESS_DIFFUSION_STEPS")
    blob = api.compress(raw, model="diffusion", steps=3)  # the option beats the environment
    assert DC.stream_steps(textstream.unpack(container.unpack(blob)[1])[0]) == 3
    assert api.decompress(blob) == raw
    with pytest.raises(AmdError, match="steps"):
        api.compress(raw, model="diffusion", steps=0)
    with pytest.raises(AmdError, match="no option steps"):
        api.compress(raw, model="argmax", steps=3)


def test_backend_accepts_any_bytes_but_stays_out_of_auto(backend):
    text = formats.Data(formats.BYTES, np.frombuffer(b"plain text here", dtype=np.uint8))
    assert backend.accepts(text)
    assert backend.accepts(formats.Data(formats.BYTES, np.frombuffer(bytes(range(256)), dtype=np.uint8)))
    assert not backend.accepts(formats.Data(formats.IMAGE_PNM, np.zeros((2, 2, 3), dtype=np.uint8)))
    assert not backend.auto_accepts(text)  # too slow to try speculatively; see its docstring


def test_explicit_model_roundtrips_binary():
    raw = bytes(range(256)) * 2
    assert api.decompress(api.compress(raw, model="diffusion")) == raw


def test_backend_corrupt_payload_raises(backend):
    raw = b"some text to code " * 20
    blob = bytearray(api.compress(raw, model="diffusion"))
    blob[-7] ^= 0xFF
    with pytest.raises(AmdError):
        api.decompress(bytes(blob))


def test_weights_hash_is_checked(tmp_path, monkeypatch):

    from amdcompress.models import registry

    torch.manual_seed(0)
    m = D.Denoiser(TINY)
    torch.save({"config": m.config, "state_dict": registry.compact_state_dict(m.state_dict())},
               tmp_path / "diffusion-tiny.pt")
    sha = registry.sha256_file(tmp_path / "diffusion-tiny.pt")
    coder = backend_for("diffusion", tmp_path / "diffusion-tiny.pt").state()
    assert coder.model.alpha_bar.dtype == torch.float64 and coder.T == TINY["T"]
    assert backend_for("diffusion", tmp_path / "diffusion-tiny.pt").weights_tag() == bytes.fromhex(sha)[:4]
    b = backend_for("diffusion", tmp_path / "diffusion-tiny.pt")
    (tmp_path / "diffusion-tiny.pt").write_bytes((tmp_path / "diffusion-tiny.pt").read_bytes() + b"x")
    with pytest.raises(AmdError, match="sha256"):
        b.state()