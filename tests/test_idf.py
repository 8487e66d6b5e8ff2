"""Integer Discrete Flow: exact invertibility, exact coding, determinism across
processes, training signal, and the public API with the shipped weights."""
from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import backend_for
from amdcompress.models.idf import coding as idf_coding
from amdcompress.models import registry
from amdcompress.models.datasets import shared_data_dir
from amdcompress.models.idf.network import IDF, Coupling, make_config, squeeze, to_input, unsqueeze

TINY = dict(levels=2, couplings=2, width=8, prior_width=8, mixtures=3, seed=3)
CIFAR_TEST = shared_data_dir() / "cifar10" / "test.npy"


def tiny_model(seed: int = 0, top_groups: int = 1, context_levels=()) -> IDF:
    """A tiny IDF with non-trivial couplings, top cascade and factor contexts
    (their zero-initialised output layers perturbed)."""
    torch.manual_seed(seed)
    m = IDF(make_config(**TINY, top_groups=top_groups, top_width=8, context_levels=list(context_levels),
                        context_width=8))
    nets = [cpl.net for lev in m.levels for cpl in lev] + list(m.top_cascade.nets if m.top_cascade else [])
    nets += [ctx.net for ctx in m.contexts.values()]
    with torch.no_grad():
        for net in nets:
            net.conv_out.weight.normal_(0.0, 0.05)
            net.conv_out.bias.normal_(0.0, 0.5)
    return m.eval()


def images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Real CIFAR test images where available (cropped), else smooth synthetic ones."""
    if CIFAR_TEST.exists() and h <= 32 and w <= 32:
        return np.ascontiguousarray(np.load(CIFAR_TEST, mmap_mode="r")[seed : seed + n, :h, :w])
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    yy, xx = np.mgrid[:h, :w]
    ramp = (yy[None, :, :, None] * 3 + xx[None, :, :, None] * 2) % 64
    return np.clip(base + ramp + rng.integers(-8, 9, (n, h, w, 3)), 0, 255).astype(np.uint8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- exact invertibility --------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), hw=st.sampled_from([2, 4, 6]),
       c=st.sampled_from([2, 3, 4]), mag=st.sampled_from([1, 255, 20000]))
def test_squeeze_and_coupling_invertible(seed, n, hw, c, mag):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-mag, mag + 1, (n, c, hw, hw), generator=g).float()
    assert torch.equal(unsqueeze(squeeze(x)), x)
    xs = squeeze(x)
    ch = xs.shape[1]
    perm = torch.randperm(ch, generator=g).tolist()
    torch.manual_seed(seed)
    cpl = Coupling(ch, perm, 8, 1, 1 / 64, 32.0)
    with torch.no_grad():
        cpl.net.conv_out.weight.normal_(0.0, 1.0)
        z = cpl(xs, ste=False)
        assert torch.equal(z, torch.round(z))  # integers stay integers
        assert not torch.equal(z, xs[:, cpl.perm]) or mag == 1  # the coupling did something
        assert torch.equal(cpl.inverse(z), xs)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.sampled_from([4, 8, 12]),
       w=st.sampled_from([4, 8]), groups=st.sampled_from([1, 3]), contexts=st.sampled_from([(), (0,), (0, 1)]))
def test_whole_flow_invertible(seed, n, h, w, groups, contexts):
    m = tiny_model(seed % 7, top_groups=groups, context_levels=contexts)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (n, 3, h, w), generator=g).float()
    with torch.no_grad():
        parts = iter(m.analyse(x, ste=False))
        # parts: the groups of top a, top b|a, then factor-outs from the deepest level down;
        # a level with a context comes as its stages, (N, M) each
        rec = torch.cat([next(parts).z for _ in range(groups)], dim=1)
        for lev in reversed(range(len(m.levels))):
            ctx = m.context(lev)
            if ctx is not None:
                z = torch.zeros(n, ctx.c, *rec.shape[2:])
                smap = ctx.stage_map(*rec.shape[2:])
                for s in range(ctx.stages):
                    z[:, smap == s] = next(parts).z
            else:
                z = next(parts).z
            rec = m.invert_level(lev, rec, z)
        assert next(parts, None) is None
    assert torch.equal(rec, x)
    assert sum(p.z.numel() for p in m.analyse(x, ste=False)) == x.numel()  # one latent per pixel


# -- exact coding ------------------------------------------------------------------


@functools.cache
def checked_model() -> IDF:
    return tiny_model(3, top_groups=2, context_levels=(0,))


@pytest.mark.parametrize("groups,contexts", [(1, ()), (3, ()), (2, (0,)), (1, (0, 1))])
def test_coding_round_trip_batch(groups, contexts):
    m = tiny_model(top_groups=groups, context_levels=contexts)
    x = images(6, 16, 16)
    payload = idf_coding.encode(m, x)
    assert np.array_equal(idf_coding.decode(m, payload, x.shape), x)


@settings(max_examples=8, deadline=None)
@given(crc=st.integers(0, 2**32 - 1), n=st.integers(1, 3), seed=st.integers(0, 1000))
@example(crc=0, n=3, seed=57)  # a flipped uniform-escape bit: the anchor survives, the images differ
def test_checksum_rides_in_the_stream(crc, n, seed):
    """encode(..., checksum=c) -> decode_checked hands back the images and c;
    damage never yields a silent pass of the container's check."""
    import zlib

    from amdcompress.codecs.errors import AmdError

    m = checked_model()
    x = images(n, 8, 8, seed=seed)
    payload = idf_coding.encode(m, x, checksum=crc)
    out, carried = idf_coding.decode_checked(m, payload, x.shape)
    assert np.array_equal(out, x) and carried == crc
    # The anchor is 33 bits: at most two more 32-bit words than the plain stream, which spends a
    # varint byte and may trim up to 3 zero bytes (on average it costs ~4.6 bytes, less than the
    # 4-byte CRC field and varint it replaces: benchmarks/idf_bench.py measures the files).
    assert len(payload) <= len(idf_coding.encode(m, x)) + 2 * 4 + 3 - 1
    # Damage, with the images' CRC as the anchor (as the container writes it). The anchor alone
    # does not catch everything: a flipped bit among those the escapes code uniformly changes a
    # value without disturbing the ANS state, so the stream still ends on its anchor
    # (crc=0, n=3, seed=57). What holds: an error, or decoded images whose CRC differs from the
    # one carried (the container's check fails), or the very images.
    crc = zlib.crc32(x.tobytes())
    payload = idf_coding.encode(m, x, checksum=crc)
    bad = bytearray(payload)
    bad[seed % len(bad)] ^= 1 << (seed % 8)
    try:
        out, carried = idf_coding.decode_checked(m, bytes(bad), x.shape)
    except AmdError:
        return
    assert np.array_equal(out, x) or carried != zlib.crc32(out.tobytes())


def test_growth_keeps_the_likelihood():
    """Growing a trained model by a top cascade and factor contexts
    (train_idf --top-groups, --context-level) keeps its likelihood: the new
    nets start at zero."""
    from amdcompress.models.idf.train import load_grown

    plain = tiny_model(4)
    grown = IDF(dict(plain.config, top_groups=3, top_width=8, context_levels=[0, 1], context_width=8)).eval()
    load_grown(grown, plain.state_dict())
    x = to_input(images(3, 16, 16))
    with torch.no_grad():
        assert torch.equal(plain(x)[1], grown(x)[1])


def test_coding_round_trip_odd_size_single_image():
    m = tiny_model(1)
    x = images(1, 37, 23, seed=5)
    payload = idf_coding.encode(m, x)
    out = idf_coding.decode(m, payload, x.shape)
    assert out.shape == (1, 37, 23, 3) and np.array_equal(out, x)


def test_coding_rejects_corrupt_payload():
    from amdcompress.codecs.errors import AmdError

    m = tiny_model()
    x = images(2, 8, 8)
    payload = bytearray(idf_coding.encode(m, x))
    for bad in (bytes(payload[:-4]), bytes(payload[:3]), bytes(payload) + b"\x01\x02\x03\x04"):
        try:
            out = idf_coding.decode(m, bad, x.shape)
        except (AmdError, ValueError):
            continue
        except BaseException as e:  # constriction's PanicException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            continue
        assert not np.array_equal(out, x)


_CHILD = textwrap.dedent("""
    import sys, numpy as np, torch
    from amdcompress.models.idf.network import IDF
    from amdcompress.models.idf import coding as idf_coding
    weights, images, payload_out, payload_in, decoded_out = sys.argv[1:]
    obj = torch.load(weights, weights_only=True)
    m = IDF(obj["config"]); m.load_state_dict(obj["state_dict"]); m.eval()
    x = np.load(images)
    open(payload_out, "wb").write(idf_coding.encode(m, x))
    np.save(decoded_out, idf_coding.decode(m, open(payload_in, "rb").read(), x.shape))
""")


@pytest.mark.slow
def test_separate_processes_agree(tmp_path):
    """Encode here and in a child process (another thread setting in its
    environment): identical payloads; the child decodes this process's payload."""
    m = tiny_model(2, top_groups=2, context_levels=(0,))
    wpath = tmp_path / "w.pt"
    torch.save({"config": m.config, "state_dict": m.state_dict()}, wpath)
    x = images(3, 24, 20, seed=7)
    np.save(tmp_path / "x.npy", x)
    here = idf_coding.encode(m, x)
    (tmp_path / "here.bin").write_bytes(here)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, "-c", _CHILD, str(wpath), str(tmp_path / "x.npy"), str(tmp_path / "child.bin"),
                    str(tmp_path / "here.bin"), str(tmp_path / "y.npy")], check=True, env=env, timeout=300)
    assert (tmp_path / "child.bin").read_bytes() == here  # bit-identical payloads from two processes
    assert np.array_equal(np.load(tmp_path / "y.npy"), x)


# -- training -------------------------------------------------------------------------


def test_gradients_flow_through_rounding():
    m = tiny_model()
    m.train()
    x = to_input(images(4, 16, 16))
    loss, _ = m(x)
    loss.backward()
    for lev in m.levels:
        for cpl in lev:
            for name, p in cpl.net.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_short_training_lowers_loss():
    torch.manual_seed(0)
    m = IDF(make_config(**TINY))
    opt = torch.optim.Adamax(m.parameters(), lr=2e-3)
    x = to_input(images(8, 16, 16))
    first = None
    for _ in range(25):
        loss, _ = m(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 0.5


def idf_args(*argv):
    from amdcompress.models import training
    from amdcompress.models.idf.train import IdfTrainer

    return training.parser(IdfTrainer()).parse_args(list(argv))


def test_lr_warms_up_again_after_a_fresh_optimizer():
    from amdcompress.models.training import schedule_lr

    a = idf_args("--warmup", "100", "--lr", "1e-3", "--half-life", "1e12")
    assert a.schedule == "exp"
    assert schedule_lr(a, 5000) == pytest.approx(1e-3)
    assert schedule_lr(a, 5000, rewarm_from=5000) == pytest.approx(1e-5)
    assert schedule_lr(a, 5049, rewarm_from=5000) == pytest.approx(5e-4)
    assert schedule_lr(a, 5200, rewarm_from=5000) == pytest.approx(1e-3)


def test_train_script_resume_and_export(tmp_path):
    from amdcompress.models.idf import train as train_idf

    np.save(tmp_path / "train.npy", images(16, 16, 16))
    np.save(tmp_path / "test.npy", images(4, 16, 16, seed=20))
    common = ["--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "test.npy"),
              "--out", str(tmp_path / "run"), "--batch", "8", "--threads", "1", "--no-tqdm"]
    assert train_idf.main(common + ["--max-steps", "3", "--config", json.dumps(TINY)]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and ck["seen"] == 24 and {"model", "ema", "optimizer", "elapsed", "runs"} <= set(ck)
    assert train_idf.main(common + ["--max-steps", "5", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["step"] == 5 and ck["seen"] == 40
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 5] and [r["images_seen"] for r in rows] == [0, 24, 40]
    assert all(r["test_bpd"] > 0 and r["minutes"] >= 0 for r in rows) and rows[-1]["train_bpd"] > 0
    assert "warms up again" not in (tmp_path / "run" / "log.txt").read_text()
    wdir = tmp_path / "weights"
    export = ["--export", "--resume", str(tmp_path / "run" / "last.pt"), "--weights-dir", str(wdir),
              "--weights-name", "idf-t1"]
    assert train_idf.main(export) == 0
    rec = json.loads((wdir / "idf-t1.json").read_text())
    assert rec["name"] == "idf-t1" and rec["file"] == "idf-t1.pt" and not (wdir / f"{train_idf.WEIGHTS_NAME}.pt").exists()
    assert rec["sha256"] == registry.sha256_file(wdir / "idf-t1.pt") and rec["steps"] == 5 and rec["images_seen"] == 40
    # the record lists every run that led to the weights, with their evaluations
    assert len(rec["earlier_commands"]) == 1 and "--max-steps 3" in rec["earlier_commands"][0]
    assert "--max-steps 5" in rec["command"]
    assert [e["step"] for r in rec["training_runs"] for e in r["evals"]] == [0, 3, 5]
    # its held-out number is that of exactly the shipped (float16) weights
    shipped = IDF(rec["config"])
    shipped.load_state_dict(registry.read_weights(wdir / "idf-t1.pt")["state_dict"])
    assert rec["final_test_bpd"] == pytest.approx(train_idf.evaluate(shipped, np.load(tmp_path / "test.npy")))
    # existing weights are never replaced without --replace
    before = (wdir / "idf-t1.pt").read_bytes()
    with pytest.raises(SystemExit, match="new --weights-name"):
        train_idf.main(export)
    assert (wdir / "idf-t1.pt").read_bytes() == before
    # resuming from the shipped file alone works too; its optimizer starts fresh, so the lr warms up again
    assert train_idf.main(common + ["--max-steps", "6", "--resume", str(wdir / "idf-t1.pt"),
                                    "--out", str(tmp_path / "run2")]) == 0
    assert "warms up again" in (tmp_path / "run2" / "log.txt").read_text()
    last = json.loads((tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6 and last["lr"] < idf_args().lr / 100 and last["images_seen"] == 48
    ck2 = torch.load(tmp_path / "run2" / "last.pt", weights_only=True)
    assert [r["command"] for r in ck2["runs"][:-1]] == rec["earlier_commands"] + [rec["command"]]
    assert ck2["runs"][-2]["export"]["final_test_bpd"] == rec["final_test_bpd"]
    # growing a top cascade and training only it leaves the rest of the model as shipped
    assert train_idf.main(common + ["--max-steps", "9", "--resume", str(wdir / "idf-t1.pt"), "--top-groups", "3",
                                    "--train-only", "top_cascade.", "--lr", "0.01",
                                    "--out", str(tmp_path / "run3")]) == 0
    shipped = torch.load(wdir / "idf-t1.pt", weights_only=True)["state_dict"]
    grown = torch.load(tmp_path / "run3" / "last.pt", weights_only=True)
    assert grown["config"]["top_groups"] == 3 and grown["step"] == 9
    assert all(k.startswith("top_cascade.") for k in grown["trainable"])
    for k, v in shipped.items():
        assert torch.equal(grown["ema"][k], v.float()) and torch.equal(grown["model"][k], v.float()), k
    assert any(grown["model"][k].abs().sum() > 0 for k in grown["model"] if k.startswith("top_cascade.")
               and k.endswith("conv_out.weight"))
    # likewise a factor context, on top of the cascade
    assert train_idf.main(common + ["--max-steps", "11", "--resume", str(tmp_path / "run3" / "last.pt"),
                                    "--context-level", "0", "--train-only", "contexts.", "--lr", "0.01",
                                    "--out", str(tmp_path / "run3")]) == 0
    grown2 = torch.load(tmp_path / "run3" / "last.pt", weights_only=True)
    assert grown2["config"]["context_levels"] == [0] and grown2["config"]["top_groups"] == 3
    for k, v in grown["ema"].items():  # training only a part starts the rest from the averaged weights
        assert torch.equal(grown2["model"][k], v), k
    assert grown2["model"]["contexts.0.net.conv_out.weight"].abs().sum() > 0


def _old_layout_run(tmp_path):
    """A weights file with its record, and a checkpoint in the layout the IDF
    trainer wrote before the shared harness (keys config, model, ema,
    optimizer, step, elapsed, args, history), resumed from that file, with
    its metrics.jsonl: as the idf5 run writes them."""
    wdir = tmp_path / "weights"
    wdir.mkdir()
    torch.manual_seed(0)
    m = IDF(make_config(**TINY))
    torch.save({"format": "amdcompress-idf", "config": m.config, "meta": {"steps": 10, "minutes": 1.5},
                "state_dict": registry.compact_state_dict(m.state_dict())}, wdir / "idf-old.pt")
    (wdir / "idf-old.json").write_text(json.dumps({
        "name": "idf-old", "file": "idf-old.pt", "sha256": registry.sha256_file(wdir / "idf-old.pt"), "steps": 10,
        "minutes": 1.5, "final_test_bpd": 30.0, "command": "cmd-A", "earlier_commands": ["cmd-0"]}))
    opt = torch.optim.Adamax(m.parameters(), lr=1e-3)
    x = to_input(images(4, 16, 16))
    for _ in range(2):
        loss, _ = m(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema = {k: v.detach().clone() + 0.001 if v.is_floating_point() else v.clone() for k, v in m.state_dict().items()}
    run = tmp_path / "run"
    run.mkdir()
    old_cmd = "python -m amdcompress.models.train_idf --resume idf-old.pt --out run"
    ck = {"config": m.config, "model": m.state_dict(), "ema": ema, "optimizer": opt.state_dict(), "step": 12,
          "elapsed": 100.0, "args": {"resume": str(wdir / "idf-old.pt"), "batch": 8, "data": "train.npy"},
          "history": {"command": old_cmd, "earlier_commands": ["cmd-0", "cmd-A"], "train_bpd": 5.0,
                      "test_bpd": 6.0, "best_test_bpd": 6.0, "best_step": 12, "device": "cpu (x)", "threads": 2,
                      "train_images": 16, "images_per_s": 1.0}}
    torch.save(ck, run / "last.pt")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 5, "minutes": 0.5, "test_bpd": 9.0}, {"step": 11, "minutes": 1.6, "test_bpd": 6.5, "train_bpd": 5.1},
        {"step": 12, "minutes": 1.7, "test_bpd": 6.0, "train_bpd": 5.0})))
    return wdir, run, ck, old_cmd


def test_old_layout_checkpoint_resumes_and_exports(tmp_path):
    from amdcompress.models.idf import train as train_idf

    wdir, run, old, old_cmd = _old_layout_run(tmp_path)
    np.save(tmp_path / "train.npy", images(16, 16, 16))
    np.save(tmp_path / "test.npy", images(4, 16, 16, seed=20))
    common = ["--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "test.npy"), "--out", str(run),
              "--batch", "8", "--no-tqdm", "--resume", str(run / "last.pt")]
    # the old checkpoint exports as it is
    assert train_idf.main(["--export", "--resume", str(run / "last.pt"), "--weights-dir", str(wdir),
                           "--weights-name", "idf-a", "--test-data", str(tmp_path / "test.npy")]) == 0
    rec = json.loads((wdir / "idf-a.json").read_text())
    assert rec["steps"] == 12 and rec["minutes"] == pytest.approx(100 / 60, abs=0.01)
    assert rec["earlier_commands"] == ["cmd-0", "cmd-A"] and rec["command"] == old_cmd
    assert rec["training_runs"][1]["export"]["final_test_bpd"] == 30.0
    assert [e["step"] for e in rec["training_runs"][2]["evals"]] == [11, 12]
    # resumed without a step: model, EMA, optimizer, step, minutes continue exactly
    assert train_idf.main(common + ["--max-steps", "12"]) == 0
    ck = torch.load(run / "last.pt", weights_only=True)
    log = (run / "log.txt").read_text()
    assert "warms up again" not in log and "not restored" not in log
    assert ck["step"] == 12 and ck["elapsed"] == pytest.approx(100.0, abs=1.0) and ck["best"] == 6.0
    for k in old["model"]:
        assert torch.equal(ck["model"][k], old["model"][k]) and torch.equal(ck["ema"][k], old["ema"][k]), k
    assert ck["optimizer"]["state"][0]["step"] == old["optimizer"]["state"][0]["step"]
    assert [r["command"] for r in ck["runs"]][:3] == ["cmd-0", "cmd-A", old_cmd]
    assert ck["seen"] == 12 * 8  # not counted then: estimated as steps x batch
    # ... and it trains on from there
    assert train_idf.main(common + ["--max-steps", "14"]) == 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["step"] == 14 and ck["seen"] == 14 * 8 and ck["runs"][-1]["from_images_seen"] == 12 * 8
    assert ck["runs"][2]["images_seen_is"].startswith("estimated") and ck["runs"][2]["data"]["train_images"] == 16
    assert int(ck["optimizer"]["state"][0]["step"]) == int(old["optimizer"]["state"][0]["step"]) + 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [12, 14] and rows[-1]["images_seen"] == 14 * 8
    # --export-at-end writes only the name given, only if it beats that name's record, never over other weights
    shipped = (wdir / "idf-old.pt").read_bytes()
    assert train_idf.main(common + ["--max-steps", "15", "--export-at-end", "--weights-name", "idf-old",
                                    "--weights-dir", str(wdir)]) == 0
    assert (wdir / "idf-old.pt").read_bytes() == shipped and "new --weights-name" in (run / "log.txt").read_text()
    assert train_idf.main(common + ["--max-steps", "16", "--export-at-end", "--weights-name", "idf-b",
                                    "--weights-dir", str(wdir)]) == 0
    rec = json.loads((wdir / "idf-b.json").read_text())
    assert sorted(p.name for p in wdir.glob("*.pt")) == ["idf-a.pt", "idf-b.pt", "idf-old.pt"]
    assert rec["steps"] == 16 and rec["earlier_commands"][:3] == ["cmd-0", "cmd-A", old_cmd]
    assert len(rec["earlier_commands"]) == 6 and "--max-steps 16" in rec["command"]
    assert train_idf.main(common + ["--max-steps", "16", "--export-at-end", "--weights-name", "idf-b",
                                    "--weights-dir", str(wdir), "--replace"]) == 0  # no better: kept
    assert json.loads((wdir / "idf-b.json").read_text())["sha256"] == rec["sha256"]


# -- registry ---------------------------------------------------------------------------


def test_backend_refuses_mismatching_weights(tmp_path):
    from amdcompress.codecs.errors import AmdError

    m = tiny_model()
    torch.save({"config": m.config, "state_dict": m.state_dict()}, tmp_path / "idf-tiny.pt")
    sha = registry.sha256_file(tmp_path / "idf-tiny.pt")
    b = backend_for("idf", tmp_path / "idf-tiny.pt")
    assert b.weights_tag() == bytes.fromhex(sha)[:4]
    assert b.state().config == m.config
    raw = bytearray((tmp_path / "idf-tiny.pt").read_bytes())
    raw[len(raw) // 2] ^= 1
    (tmp_path / "idf-tiny.pt").write_bytes(bytes(raw))
    with pytest.raises(AmdError, match="sha256"):
        backend_for("idf", tmp_path / "idf-tiny.pt").state(registry.Weights("idf-tiny", sha))


# -- public API with the shipped weights --------------------------------------------------

shipped = pytest.mark.skipif(not registry.available(registry.MODELS["idf"].weights[0].name),
                             reason="shipped IDF weights not installed")


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@shipped
def test_public_api_png_round_trip():
    import amdcompress
    from PIL import Image

    x = images(1, 32, 32, seed=11)[0]
    blob = amdcompress.compress(_png(x), model="idf")
    info = amdcompress.info(blob)
    assert info.model == "idf" and info.crc32 == "in payload" and info.header_bytes == 13
    out = np.asarray(Image.open(io.BytesIO(amdcompress.decompress(blob))))
    assert np.array_equal(out, x)
    odd = images(1, 29, 31, seed=12)[0]
    out = np.asarray(Image.open(io.BytesIO(amdcompress.decompress(amdcompress.compress(_png(odd), model="idf")))))
    assert np.array_equal(out, odd)


@shipped
def test_public_api_batch_and_corruption():
    import amdcompress
    from amdcompress.codecs.errors import AmdError

    x = images(8)
    buf = io.BytesIO()
    np.save(buf, x)
    blob = amdcompress.compress(buf.getvalue(), model="idf")
    assert np.array_equal(np.load(io.BytesIO(amdcompress.decompress(blob))), x)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(AmdError):
        amdcompress.decompress(bytes(bad))


@shipped
@pytest.mark.skipif(not CIFAR_TEST.exists(), reason="CIFAR test subset not available")
def test_coded_size_matches_model_nll():
    from amdcompress import backends

    m = backends.by_name("idf").state()
    x = images(8)
    payload = idf_coding.encode(m, x)
    nll = idf_coding.model_bits(m, x)
    assert 8 * len(payload) <= nll * 1.01 + 64
    assert 8 * len(payload) >= nll * 0.99


# -- the part coders: one-level windows (streams 1, 2) and binned digits (stream 3) ------------


def _mixture_rows(n: int, seed: int, spread: float = 1.0):
    """Grid-valued mixture parameters (n, 5) and latents drawn from each row's
    mixture (plus, with ``spread`` > 1, values far outside every window)."""
    rng = np.random.default_rng(seed)
    g = lambda a: torch.from_numpy((np.round(a * 1024) / 1024).astype(np.float32))  # noqa: E731
    mu = g(rng.normal(0, 200, (n, 1)) + rng.normal(0, 5, (n, 5)))
    ls = g(rng.uniform(-1.5, 4, (n, 5)))
    lg = g(rng.normal(0, 1.5, (n, 5)))
    k = torch.multinomial(torch.softmax(lg.double(), 1), 1)[:, 0]
    u = torch.rand(n, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    z = torch.round(mu[torch.arange(n), k].double() + torch.exp(ls[torch.arange(n), k].double()) * torch.log(u / (1 - u)))
    z = z.clamp(idf_coding.LO, idf_coding.HI).numpy().astype(np.int64)
    if spread > 1:
        far = rng.random(n) < 0.05
        z[far] = rng.integers(idf_coding.LO, idf_coding.HI + 1, int(far.sum()))
        z[:2] = idf_coding.LO, idf_coding.HI
    return mu, ls, lg, z


@pytest.mark.parametrize("stream", [1, 3])
@pytest.mark.parametrize("spread", [1.0, 9.0])
def test_part_coders_round_trip_and_cost_the_model_mass(stream, spread):
    """Each part coder pops exactly what it pushed (escapes and the ends of
    [LO, HI] included), and on values drawn from the mixtures its size is the
    mixtures' -log2 mass (float64) within a few bits: windows, digits and
    escapes add no measurable cost."""
    from amdcompress.codecs import Message
    from amdcompress.models.idf.network import logistic_mixture_logp

    mu, ls, lg, z = _mixture_rows(3000, seed=int(spread) + stream, spread=spread)
    coder = idf_coding.PART_CODERS[stream](mu, ls, lg)
    m = coder.push(Message.empty(), z)
    blob = m.to_bytes()
    m2, back = idf_coding.PART_CODERS[stream](mu, ls, lg).pop(Message.from_bytes(blob))
    assert np.array_equal(back, z) and m2.is_empty()
    if spread == 1.0:
        zt = torch.from_numpy(z.astype(np.float64)).view(-1, 1, 1, 1)
        nll = -float(logistic_mixture_logp(zt, *(t.double().view(-1, 1, 1, 1, 5) for t in (mu, ls, lg))).sum()) / np.log(2)
        assert nll - 64 <= 8 * len(blob) <= nll * 1.0005 + 96


def test_stream3_digits_cover_every_window():
    """Stream 3's digits: 2 or 3 levels, each width a multiple of the next,
    the first level's bins covering the whole window, the last width 1."""
    for hw, (nb, widths) in zip(idf_coding.HALF_WINDOWS, idf_coding.DIGITS):
        assert len(widths) == (3 if hw >= idf_coding.THREE_LEVELS_FROM else 2) and widths[-1] == 1
        assert all(a % b == 0 and a > b for a, b in zip(widths, widths[1:]))
        assert nb * widths[0] >= 2 * hw + 1 > (nb - 1) * widths[0]


@shipped
@pytest.mark.skipif(not CIFAR_TEST.exists(), reason="CIFAR test subset not available")
def test_lane_profile_script_splits_the_time(tmp_path):
    """benchmarks/idf_profile.py: a verified lane per stream, the time split
    into network, tables and ANS that add up to the lane's wall time, the
    instrumentation undone afterwards."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import idf_profile
    from amdcompress.codecs.distributions import MixtureRows

    before = (idf_coding.Categorical, idf_coding.Uniform, IDF.analyse, IDF.generate, MixtureRows.binned_table)
    threads = torch.get_num_threads()
    out = tmp_path / "p.json"
    assert idf_profile.main(["--images", "2", "--repeat", "1", "--streams", "2", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["stream"] for r in rows] == [2, 3] and all(r["verified"] for r in rows)
    for r in rows:
        for side in ("encode", "decode"):
            t = r[side]
            assert min(t["network_s"], t["tables_s"], t["ans_s"]) > 0
            assert abs(t["network_s"] + t["tables_s"] + t["ans_s"] + t["other_s"] - t["wall_s"]) < 1e-6
    assert (idf_coding.Categorical, idf_coding.Uniform, IDF.analyse, IDF.generate, MixtureRows.binned_table) == before
    assert torch.get_num_threads() == threads


# -- the context probe (benchmarks/idf_context_probe.py) ---------------------------------


def test_context_probe_parts_and_zero_start():
    """The probe sees every coded part of a model with a top cascade, its
    'before' is the model's own NLL, and its correction starts at zero."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import idf_context_probe as probe

    m = tiny_model(5, top_groups=2, context_levels=(0,))
    x = images(4, 32, 32)
    parts = probe.collect(m, x)
    assert set(parts) == {"top-a", "top-b", "level0"}  # two levels: no level1
    with torch.no_grad():
        nll_bpd = float(m(to_input(x))[1].double().sum()) / (4 * 3 * 32 * 32)
    rows = [probe.probe(parts[name], parts[name], 2, 2, 4, 0.0) for name in parts]
    assert all(r["before_test_bpd"] == r["after_test_bpd"] for r in rows)
    assert sum(r["before_test_bpd"] for r in rows) == pytest.approx(nll_bpd, rel=1e-5)
    from amdcompress.models.idf.network import stage_map

    stages = stage_map(4, 4, 4, 4, 2)
    assert sorted(torch.bincount(stages.flatten()).tolist()) == [8] * 8
