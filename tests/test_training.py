"""The shared training harness (models/training.py): schedules, EMA, the
readers of every checkpoint and weights layout so far, data streams, and
every shipped weights file as a --resume source whose history carries into
the next export."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from amdcompress.models import registry, training


def test_schedules_and_rewarm():
    a = SimpleNamespace(schedule="cosine", lr=1.0, warmup=10, final_lr_frac=0.1)
    assert training.schedule_lr(a, 0, 0.0) == pytest.approx(0.1)
    assert training.schedule_lr(a, 100, 0.0) == pytest.approx(1.0)
    assert training.schedule_lr(a, 100, 1.0) == pytest.approx(0.1)
    assert training.schedule_lr(a, 100, 0.5, rewarm_from=100) == pytest.approx(0.55 * 0.1)
    c = SimpleNamespace(schedule="anneal", lr=1.0, warmup=10, final_lr_frac=0.1)  # no warm-up of its own
    assert training.schedule_lr(c, 0, 0.0) == pytest.approx(1.0)
    assert training.schedule_lr(c, 5000, 0.5) == pytest.approx(0.55)
    assert training.schedule_lr(c, 5000, 1.0, rewarm_from=4995) == pytest.approx(0.1 * 0.6)
    assert training.schedule_frac(a, 300.0, 50.0, 100.0) == pytest.approx(0.875)  # earlier runs count
    assert training.schedule_frac(c, 300.0, 50.0, 100.0) == pytest.approx(0.5)    # this run alone
    e = SimpleNamespace(schedule="exp", lr=1.0, warmup=10, half_life=100.0, min_lr=0.3)
    assert training.schedule_lr(e, 100) == pytest.approx(0.5)
    assert training.schedule_lr(e, 1000) == pytest.approx(0.3)
    assert training.schedule_lr(e, 1000, rewarm_from=1000) == pytest.approx(0.03)


def test_ema_applied_restores_the_weights():
    m = torch.nn.Linear(3, 2)
    ema = training.EMA(m, 0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m, step=100)
    trained = {k: v.clone() for k, v in m.state_dict().items()}
    with ema.applied(m):
        assert torch.allclose(m.weight, before["weight"] + 0.5)
    assert all(torch.equal(v, trained[k]) for k, v in m.state_dict().items())


def test_streams_wrap_and_restart():
    sym = torch.arange(100)
    s = training.Streams(sym, batch=2, length=10, reset=0.0, rng=np.random.default_rng(0), align=5, lookahead=1)
    assert s.span == 50
    firsts = []
    for _ in range(6):
        x, reset = s.next()
        firsts.append(int(x[0, 0]))
        assert bool(reset[0]) == (firsts[-1] == 0 and len(firsts) > 1)
    assert firsts == [0, 10, 20, 30, 0, 10]  # 40 + 10 + 1 passes the span's end
    again = training.Streams(sym, 2, 10, 0.0, np.random.default_rng(0), ptr=s.ptr.tolist(), align=5, lookahead=1)
    assert torch.equal(again.next()[0], s.next()[0])
    state = (torch.ones(1, 2, 3),)
    assert training.carried(state, torch.tensor([True, False]))[0][0, :, 0].tolist() == [0.0, 1.0]


def test_old_text_checkpoint_layout_is_read(tmp_path):
    """The text trainers' checkpoints before the harness: ``opt``, ``runs``,
    data pointers at the top."""
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(m.parameters())
    runs = [{"command": "c1", "from_step": 0, "last_eval": {"step": 7, "valid_bpc": 2.0}}]
    torch.save({"kind": "x-checkpoint", "config": {"a": 1}, "model": m.state_dict(), "opt": opt.state_dict(),
                "step": 7, "elapsed": 42.0, "best": 2.0, "runs": runs, "train_bpc": 2.1, "args": {"batch": 4},
                "ptr": [1, 2]}, tmp_path / "old.pt")
    st = training.start_from(tmp_path / "old.pt")
    assert (st.step, st.elapsed, st.best, st.train_metric, st.seen) == (7, 42.0, 2.0, 2.1, None)
    assert st.runs == runs and st.extra == {"ptr": [1, 2]} and st.optimizer is not None and st.ema is None
    assert st[0] == {"a": 1} and st[3] == 7  # still unpacks as the earlier tuple


def test_old_diffusion_checkpoint_layout_is_read(tmp_path):
    m = torch.nn.Linear(2, 2)
    hist = {"step": 5, "elapsed": 60.0, "train_chars": 1280, "commands": ["d1", "d2"], "train_bpc": 3.0}
    torch.save({"config": {}, "model": m.state_dict(), "ema": m.state_dict(), "optimizer": {"state": {}},
                "sampler": {"S": 3}, "history": hist, "args": {}}, tmp_path / "last.pt")
    st = training.start_from(tmp_path / "last.pt")
    assert (st.step, st.elapsed, st.seen, st.train_metric) == (5, 60.0, 1280, 3.0)
    assert [r["command"] for r in st.runs] == ["d1", "d2"] and st.extra == {"sampler": {"S": 3}}


TEXT = b"the quick brown fox jumps over the lazy dog and then some more words follow here "


def _tiny_data(tmp_path):
    from amdcompress.models.datasets import shared_data_dir

    (tmp_path / "train.txt").write_bytes(TEXT * 40)
    (tmp_path / "valid.txt").write_bytes(TEXT * 8)
    test = np.load(shared_data_dir() / "cifar10" / "test.npy", mmap_mode="r")
    np.save(tmp_path / "train.npy", np.ascontiguousarray(test[:4]))
    np.save(tmp_path / "test.npy", np.ascontiguousarray(test[4:6]))


def _module(name: str):
    import importlib

    return importlib.import_module(f"amdcompress.models.{name}.train")


SHIPPED = {  # weights name -> (trainer package, tiny options)
    "idf-v3": ("idf", ["--data", "{d}/train.npy", "--test-data", "{d}/test.npy", "--batch", "2"]),
    "diffusion-v1": ("diffusion", ["--batch", "1", "--eval-chars", "512", "--eval-steps", "0", "--device", "cpu"]),
    "argmax-v1": ("argmax", ["--batch", "2", "--bptt", "16", "--eval-chars", "512"]),
    "argmax-coupling-v1": ("argmax_coupling", ["--batch", "2", "--eval-chars", "512"]),
    "discrete-flow-v1": ("discrete_flow", ["--batch", "2", "--eval-chars", "600"]),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_resume_and_carry_their_history(name, tmp_path):
    """Every shipped weights file is a --resume source: its steps, minutes and
    history (whichever record layout) continue, the lr warms up again, and
    the next export's record lists the shipped runs, their held-out numbers
    and the new run."""
    if not registry.available(name):
        pytest.skip(f"{name} not installed")
    _tiny_data(tmp_path)
    package, opts = SHIPPED[name]
    mod = _module(package)
    rec = registry.record(name)
    shipped_cmds = [r["command"] for r in training.start_from(registry.weights_path(name)).runs]
    assert shipped_cmds and shipped_cmds[-1] == (rec.get("command") or rec["commands"][-1])
    opts = [o.format(d=tmp_path) for o in opts]
    text = [] if package == "idf" else ["--data", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt")]
    common = text + opts + ["--out", str(tmp_path / "run"), "--no-tqdm", "--threads", "1"]
    assert mod.main(common + ["--resume", str(registry.weights_path(name)), "--max-steps", str(rec["steps"] + 1)]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck["step"] == rec["steps"] + 1 and ck["elapsed"] >= rec["minutes"] * 60 - 1
    assert [r["command"] for r in ck["runs"][:-1]] == shipped_cmds
    assert ck["runs"][-2]["export"]["sha256"] == rec["sha256"]
    assert "warms up again" in (tmp_path / "run" / "log.txt").read_text()
    held_out = ["--test-data", str(tmp_path / "test.npy")] if package == "idf" else \
        text + ["--export-eval-chars", "600"]
    assert mod.main(["--export", str(tmp_path / "run" / "last.pt"), "--weights-dir", str(tmp_path / "w"),
                     "--weights-name", "next"] + held_out) == 0
    new = json.loads((tmp_path / "w" / "next.json").read_text())
    assert new["earlier_commands"] == shipped_cmds and new["steps"] == rec["steps"] + 1
    assert new["training_runs"][-2]["export"]["name"] == name and math.isfinite(new[mod.TRAINER.record_metric])
