"""Absorbing-state diffusion (OA-ARDM): the objective, orders and step plans
(against brute force, and identical in another process), exact coding in any
step budget (sizes equal the tables' information content), corrupt streams,
a training signal on real text, the trainer's run/resume/export, and the
backend. Tiny random-init models only."""
from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from amdcompress import AmdError, api
from amdcompress.codecs import CorruptStreamError
from amdcompress.codecs.textstream import split
from amdcompress.formats import BYTES, Data
from amdcompress.models import registry
from amdcompress.models.absorbing import coding as C
from amdcompress.models.absorbing import network as N
from amdcompress.models.training import TEXT8_DIR

TINY = {"length": 32, "d": 16, "ff": 32, "dilations": [1, 3]}
TEXT = (b"the quick brown fox jumps over the lazy dog while the absorbing state waits "
        b"for every masked character to be revealed in its own good time ")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_model(seed: int = 0, **over) -> N.AbsorbingDenoiser:
    torch.manual_seed(seed)
    m = N.AbsorbingDenoiser({**TINY, **over})
    with torch.no_grad():  # a model whose predictions differ between positions and contexts
        for blk in m.blocks:
            blk.fc2.weight.normal_(0, 0.3)
        m.out.weight.normal_(0, 0.3)
    return m.eval()


def tiny_costs(L: int = 32, order: str = "spread") -> np.ndarray:
    """A loss table of the right shape: falling with the revealed count, finer levels cheaper."""
    a = np.arange(L)[:, None]
    j = np.arange(N.num_classes(order, L))[None, :]
    return C.quantize_costs(4.2 - 2.5 * a / L - 0.2 * j + 0.3 * np.sin(a) ** 2)


@pytest.fixture(scope="module", params=["spread", "random", "blocked8"])
def state(request):
    return C.make_state(tiny_model(order=request.param), tiny_costs(order=request.param), default_steps=5)


def text_symbols(n: int) -> np.ndarray:
    raw = (TEXT * (n // len(TEXT) + 1))[:n]
    return split(np.frombuffer(raw, dtype=np.uint8))[0].astype(np.int64)


# --------------------------------------------------------------------------- objective
def test_levels_and_order_families():
    assert N.levels(8).tolist() == [0, 3, 2, 3, 1, 3, 2, 3]
    assert N.levels(6).tolist() == [0, 3, 2, 3, 1, 3]  # ceil(log2 6) = 3 levels below the first
    assert N.order_classes("spread", 8, 8).tolist() == [0, 1, 2, 2, 3, 3, 3, 3]
    assert N.order_classes("spread", 5, 8).tolist() == [0, 1, 2, 3, 3]
    assert N.order_classes("random", 5, 8).tolist() == [0] * 5
    g = torch.Generator().manual_seed(0)
    r = N.sample_ranks(50, 16, "spread", g)
    lev = torch.from_numpy(N.levels(16))
    for row in r:  # a permutation that reveals the levels one after the other
        assert sorted(row.tolist()) == list(range(16))
        assert torch.all(lev[row.argsort()].diff() >= 0)
    assert len({tuple(row.tolist()) for row in r}) > 40  # random within the levels
    r = N.sample_ranks(200, 16, "random", g)
    assert not all(torch.all(lev[row.argsort()].diff() >= 0) for row in r)
    # blocked orders: column p mod B of every block, the columns in turn
    assert N.position_classes("blocked8", 16).tolist() == list(range(8)) * 2
    assert N.order_classes("blocked8", 11, 16).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7]
    assert N.num_classes("blocked16", 256) == 16 and N.num_classes("random", 256) == 1
    col = torch.arange(32) % 8
    for row in N.sample_ranks(50, 32, "blocked8", g):
        assert sorted(row.tolist()) == list(range(32)) and torch.all(col[row.argsort()].diff() >= 0)
    with pytest.raises(ValueError):
        N.position_classes("blocked7", 16)
    with pytest.raises(ValueError):
        N.AbsorbingConfig(length=32, order="blocked64")  # a block longer than the chunk


def test_row_masks_share_t_across_a_rows_chunks():
    g = torch.Generator().manual_seed(1)
    t, masked = N.row_masks(6, 3, 16, 20, "spread", g)
    assert masked.shape == (6, 3 * 16 + 40)
    for i in range(6):
        centre = masked[i, 20 : 20 + 48].reshape(3, 16)
        assert centre.sum(1).tolist() == [16 - int(t[i]) + 1] * 3  # each chunk: L - t + 1 masked
        assert int(masked[i, :20].sum()) <= 20


def test_ardm_loss_is_the_mean_over_the_positions_step_t_may_reveal():
    m = tiny_model()
    r = m.radius()
    x = torch.from_numpy(text_symbols(3 * (2 * 32 + 2 * r)).reshape(3, -1))
    t = torch.tensor([1, 17, 32])
    g = torch.Generator().manual_seed(5)
    loss, per_row = N.ardm_loss(m, x, g, t)
    _, masked = N.row_masks(3, 2, 32, r, "spread", torch.Generator().manual_seed(5), t)
    centre = masked[:, r:-r]
    assert centre.sum(1).tolist() == [64, 32, 2]  # k (L - t + 1) masked
    # spread order, L = 32: rank 0 is level 0 (position 0), ranks 16..31 level 5 (the odd positions)
    target = N.revealed_next("spread", 32, t, centre)
    assert target.sum(1).tolist() == [2, 32, 2]
    lev = torch.from_numpy(np.tile(N.levels(32), 2))
    assert torch.all(lev[target[0]] == 0) and torch.all(lev[target[1]] == 5) and torch.all(lev[target[2]] == 5)
    full = N.masked_nll_bits(m, x, masked)  # every masked position, row-major
    pick = target[centre]
    rows = torch.arange(3).repeat_interleave(centre.sum(1))
    want = torch.stack([full[(rows == i) & pick].mean() for i in range(3)])
    assert torch.allclose(per_row, want, atol=1e-6)
    assert torch.isclose(loss, want.mean())
    # with a weight on the other masked positions the loss grows, the per-row bound does not
    loss2, per_row2 = N.ardm_loss(m, x, torch.Generator().manual_seed(5), t, others=0.5)
    others = torch.stack([full[(rows == i) & ~pick].mean() if ((rows == i) & ~pick).any() else torch.tensor(0.0)
                          for i in range(3)])
    assert torch.allclose(per_row2, want, atol=1e-6)
    assert torch.isclose(loss2, (want + 0.5 * others).mean(), atol=1e-6)
    # random orders: every masked position may come next
    assert torch.equal(N.revealed_next("random", 32, t, centre), centre)
    with pytest.raises(ValueError):
        N.ardm_loss(m, x[:, :-1], g)


def test_loss_falls_on_real_text():
    sym = np.fromfile(TEXT8_DIR / "train.txt", dtype=np.uint8, count=60_000)
    x_all = torch.from_numpy(split(sym)[0].astype(np.int64))
    torch.manual_seed(0)
    m = N.AbsorbingDenoiser({"length": 64, "d": 32, "ff": 64, "dilations": [1, 2, 4]})
    w = N.row_width(m, 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(40):
        starts = torch.from_numpy(rng.integers(0, len(x_all) - w, 16))
        loss, _ = N.ardm_loss(m, x_all[starts[:, None] + torch.arange(w)], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # from ~log2(27) to below the unigram entropy of text8 (4.1 bits): context is used
    assert np.mean(losses[:5]) > 4.3 and np.mean(losses[-5:]) < 3.95, losses


def test_rows_with_halos_equal_one_pass_over_the_whole_sequence(monkeypatch):
    monkeypatch.setattr(C, "ROW", 40)
    monkeypatch.setattr(C, "ROWS_PER_CALL", 2)
    m = tiny_model(dilations=[1, 2, 5])
    st = C.make_state(m, tiny_costs())
    n = 173
    lay = C._Layout(st, n, 4)
    assert lay.halo == m.radius() == 8 and lay.nrows == 5
    tokens = np.where(np.random.default_rng(1).random(n) < 0.5, text_symbols(n), N.MASK)
    pos = np.arange(n)
    got = lay.logits(m, tokens, pos)
    padded = np.concatenate([np.full(lay.halo, N.MASK), tokens, np.full(lay.halo, N.MASK)])
    with torch.no_grad():
        ref = m.logits(m(torch.from_numpy(padded)[None], valid=True)[0]).numpy()
        ref_pad = m.logits(m(torch.from_numpy(padded)[None])[0, lay.halo : lay.halo + n]).numpy()
    assert np.abs(ref - ref_pad).max() < 1e-4  # valid convolutions = padded ones away from the ends
    assert np.abs(got - ref).max() < 2e-3  # equal up to float rounding and the 2^-12 grid


# --------------------------------------------------------------------------- orders and plans
@pytest.mark.parametrize("order", ["spread", "random", "blocked8"])
def test_orders_are_permutations_and_differ_between_chunks(order):
    r = C.ranks(3 * 32 + 7, 32, order)
    for c in range(3):
        assert sorted(r[c * 32 : (c + 1) * 32]) == list(range(32))
        assert np.array_equal(np.argsort(r[c * 32 : (c + 1) * 32]), C.generation_order(c, 32, 32, order))
    assert sorted(r[96:]) == list(range(7))
    assert not np.array_equal(C.generation_order(0, 32, 32, order), C.generation_order(1, 32, 32, order))
    if order != "random":
        lev = N.position_classes(order, 32)
        for c in range(3):
            assert np.all(np.diff(lev[C.generation_order(c, 32, 32, order)]) >= 0)
        assert np.all(np.diff(lev[C.generation_order(3, 7, 32, order)]) >= 0)


def test_orders_are_pinned():
    # a change here is a change of the file format
    assert C.generation_order(0, 8, 8, "random").tolist() == [7, 6, 5, 4, 1, 2, 0, 3]
    assert C.generation_order(5, 12, 16, "random").tolist() == [0, 8, 5, 11, 6, 9, 2, 10, 3, 1, 4, 7]
    assert hashlib.sha256(C.ranks(1000, 256, "random").astype("<i8").tobytes()).hexdigest()[:16] == "0b646544ca283f2a"
    assert C.generation_order(0, 16, 16, "spread").tolist() == [0, 8, 4, 12, 10, 14, 6, 2, 15, 13, 7, 5, 9, 1, 11, 3]
    assert hashlib.sha256(C.ranks(1000, 256, "spread").astype("<i8").tobytes()).hexdigest()[:16] == "64299d6af40d907b"
    assert C.generation_order(0, 16, 16, "blocked8").tolist() == [8, 0, 9, 1, 10, 2, 11, 3, 4, 12, 13, 5, 14, 6, 15, 7]
    assert hashlib.sha256(C.ranks(1000, 256, "blocked16").astype("<i8").tobytes()).hexdigest()[:16] == "7c8610432d3f488f"


def brute_force_plan_cost(step_cost: np.ndarray, S: int) -> int:
    m = step_cost.shape[0]
    best = None
    for cuts in itertools.combinations(range(1, m), S - 1):
        b = (0, *cuts, m)
        cost = sum(int(step_cost[b[i], b[i + 1]]) for i in range(S))
        best = cost if best is None else min(best, cost)
    return best


def test_step_costs_are_sums_over_the_step():
    rng = np.random.default_rng(0)
    costs = rng.integers(0, 100, (6, 3))
    classes = np.array([0, 1, 1, 2, 2, 2])
    sc = C.step_costs(costs, classes)
    for a in range(6):
        for b in range(7):
            want = sum(int(costs[a, classes[r]]) for r in range(a, b)) if b > a else C.INF
            assert sc[a, b] == want


@pytest.mark.parametrize("m", [1, 2, 5, 9])
def test_step_plan_is_the_optimum(m):
    rng = np.random.default_rng(m)
    for trial in range(4):
        costs = rng.integers(0, 1000, (m, 3))
        if trial % 2:
            costs = np.minimum.accumulate(costs, axis=0)
        classes = np.sort(rng.integers(0, 3, m))
        sc = C.step_costs(costs, classes)
        for S in range(1, m + 3):
            b = C.step_plan(sc, S)
            assert b[0] == 0 and b[-1] == m and len(b) == min(S, m) + 1 and np.all(np.diff(b) > 0)
            assert sum(int(sc[b[i], b[i + 1]]) for i in range(len(b) - 1)) == brute_force_plan_cost(sc, min(S, m))


def test_plans_spend_steps_where_the_loss_falls():
    convex = C.quantize_costs(1.0 + 3.0 * np.exp(-np.arange(32) / 6.0)[:, None])  # steep first, then flat
    st = C.make_state(tiny_model(order="random"), convex)
    assert st.plan(32, 32).tolist() == list(range(33))
    b = st.plan(32, 4)
    assert np.diff(b)[0] < np.diff(b)[-1]  # early (expensive, steep) steps are short
    # a short chunk: the table's rows at the same revealed fraction
    assert C.chunk_costs(st.costs, 16).tolist() == st.costs[::2].tolist()
    assert C.chunk_costs(st.costs, 32).tolist() == st.costs.tolist()
    sp = C.make_state(tiny_model(), tiny_costs())
    assert len(sp.plan(13, 3)) == 4 and sp.plan(13, 20).tolist() == list(range(14))


_CHILD = r"""
import sys, hashlib, numpy as np, torch
from amdcompress.models import registry
from amdcompress.models.absorbing import coding as C
st = C.load(registry.read_weights(sys.argv[1]))
sym = np.frombuffer(open(sys.argv[2], "rb").read(), dtype=np.uint8).astype(np.int64) % 27
h = hashlib.sha256(C.ranks(5000, 256, st.order).astype("<i8").tobytes())
for S in (1, 3, 7, 32):
    h.update(st.plan(32, S).astype("<i8").tobytes()); h.update(st.plan(13, S).astype("<i8").tobytes())
print(h.hexdigest())
open(sys.argv[3], "wb").write(C.compress(st, sym, steps=3))
"""


def save_tiny_weights(path, model=None, costs=None, steps=5) -> str:
    model = model or tiny_model()
    torch.save({"kind": "absorbing-weights", "config": model.config.to_dict(),
                "state_dict": registry.compact_state_dict(model.state_dict()),
                "costs": torch.from_numpy(tiny_costs() if costs is None else costs), "default_steps": steps}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha}))
    return sha


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("absorbing") / "tiny.pt"
    save_tiny_weights(p)
    return p


@pytest.mark.slow  # a fresh interpreter importing torch: ~5-10 s here
def test_separate_processes_agree(weights_file, tmp_path):
    raw = np.random.default_rng(3).integers(0, 256, 333, dtype=np.uint8).tobytes()
    (tmp_path / "in").write_bytes(raw)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(weights_file), str(tmp_path / "in"), str(tmp_path / "s")],
                         check=True, timeout=120, capture_output=True, text=True).stdout.strip()
    st = C.load(registry.read_weights(weights_file))
    h = hashlib.sha256(C.ranks(5000, 256, st.order).astype("<i8").tobytes())
    for S in (1, 3, 7, 32):
        h.update(st.plan(32, S).astype("<i8").tobytes())
        h.update(st.plan(13, S).astype("<i8").tobytes())
    assert out == h.hexdigest()
    sym = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) % 27
    stream = (tmp_path / "s").read_bytes()
    assert C.compress(st, sym, steps=3) == stream
    assert np.array_equal(C.decompress(st, stream, len(sym)), sym)


# --------------------------------------------------------------------------- coding
@pytest.mark.parametrize("n", [0, 1, 2, 31, 32, 45, 200])
@pytest.mark.parametrize("steps", [1, 2, 5, 32, 100, None])
def test_round_trip_every_budget(state, n, steps):
    x = text_symbols(n)
    stats = {}
    s = C.compress(state, x, steps=steps, stats=stats)
    assert np.array_equal(C.decompress(state, s, n), x)
    S = min(steps or 5, 32)
    assert C.details(s) == {"steps": S, "symbols": n}
    if n:
        assert stats["passes"] == min(S, 32 if n >= 32 else n)


def test_coded_size_is_the_information_content(state, monkeypatch):
    monkeypatch.setattr(C, "ROW", 64)  # several rows
    monkeypatch.setattr(C, "ROWS_PER_CALL", 3)  # and several network calls per pass
    for n, steps in [(1, 1), (40, 3), (700, 7), (700, 32)]:
        x = text_symbols(n)
        stats = {}
        s = C.compress(state, x, steps=steps, stats=stats)
        body = len(s) - len(C.write_head(C.VERSION, n, min(steps, 32), min(64, n), 3))
        assert stats["stream_bytes"] == len(s)
        ideal = stats["info_bits"] / 8  # constriction requantizes our 24-bit tables: within a hair of them
        assert ideal * 0.999 - 1 <= body <= ideal * 1.001 + 6, (n, steps, body, ideal)
        assert abs(C.plan_bits(state, x, steps) - stats["info_bits"]) < 1e-6
        assert np.array_equal(C.decompress(state, s, n), x)


def test_more_steps_cost_fewer_bits_on_average():
    # a model that sees its neighbours: revealing everything at once is worse than one at a time
    torch.manual_seed(0)
    m = N.AbsorbingDenoiser({"length": 32, "d": 32, "ff": 64, "dilations": [1, 2], "order": "random"})
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    w = N.row_width(m, 1)
    text = text_symbols(4000)
    x_all = torch.from_numpy(text[np.arange(0, 3000, 47)[:, None] + np.arange(w)[None, :]])
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss, _ = N.ardm_loss(m, x_all, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = text_symbols(32 * 8)
    table = C.loss_table(m, x)
    assert table.shape == (32, 1) and table[0, 0] > table[-1, 0]
    st = C.make_state(m, C.quantize_costs(table))
    bits = [C.plan_bits(st, x, S) for S in (1, 4, 32)]
    assert bits[0] > bits[1] > bits[2], bits


def test_corrupt_streams_raise(state):
    x = text_symbols(100)
    s = C.compress(state, x, steps=4)
    head = C.write_head(C.VERSION, 100, 4, 100, C.ROWS_PER_CALL)
    assert s.startswith(head)
    body = s[len(head):]
    bad = [b"", b"\x02" + s[1:], s[:2], C.write_head(C.VERSION, 100, 0, 100, 4) + body,
           C.write_head(C.VERSION, 100, 33, 100, 4) + body, C.write_head(C.VERSION, 100, 4, 101, 4) + body,
           C.write_head(C.VERSION, 100, 4, 0, 4) + body, C.write_head(C.VERSION, 100, 4, 100, 0) + body,
           C.write_head(C.VERSION, 100, 4, 100, 999) + body, C.write_head(C.VERSION, 0, 4, 0, 0) + b"x",
           s + b"\x01\x02\x03\x04", s[:-4]]
    for b in bad:
        with pytest.raises(ValueError):
            C.decompress(state, b, 100)
    with pytest.raises(ValueError):  # more symbols than the container allows
        C.decompress(state, s, 99)
    with pytest.raises(CorruptStreamError):
        C.decompress(state, C.write_head(C.VERSION, 1 << 45, 4, 2048, 4), 1 << 50)
    rng = np.random.default_rng(0)
    for _ in range(20):  # damage anywhere: an error, or (rarely) other symbols for the container's CRC
        b = bytearray(s)
        i = int(rng.integers(len(head), len(b)))
        b[i] ^= int(rng.integers(1, 256))
        try:
            y = C.decompress(state, bytes(b), 100)
        except ValueError:
            continue
        assert not np.array_equal(y, x)


def test_bad_arguments_and_weights(state):
    with pytest.raises(ValueError):
        C.compress(state, np.array([0, 27]))
    with pytest.raises(ValueError):
        C.compress(state, text_symbols(5), steps=0)
    m = tiny_model()
    good = {"config": m.config.to_dict(), "state_dict": m.state_dict(), "costs": torch.from_numpy(tiny_costs()),
            "default_steps": 5}
    C.load(good)
    for broken in ({**good, "costs": torch.arange(32 * 6).reshape(32, 6)},
                   {**good, "costs": torch.zeros(31, 6, dtype=torch.int64)},
                   {**good, "costs": torch.zeros(32, 1, dtype=torch.int64)},
                   {**good, "default_steps": 0}, {k: v for k, v in good.items() if k != "costs"},
                   {**good, "config": {**good["config"], "d": 8}}, {**good, "config": {**good["config"], "bogus": 1}}):
        with pytest.raises(ValueError):
            C.load(broken)


# --------------------------------------------------------------------------- trainer
def test_train_resume_and_export(tmp_path):
    from amdcompress.models.absorbing import train

    common = ["--threads", "1", "--no-tqdm", "--out", str(tmp_path / "run"), "--eval-chars", "4096",
              "--train-chars", "50000", "--batch", "4", "--chunks", "2", "--log-every", "5"]
    arch = ["--length", "32", "--d", "16", "--ff", "32", "--dilations", "1,2"]
    assert train.main(common + arch + ["--minutes", "0.03"]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck["step"] > 0 and "ema" in ck and ck["config"]["length"] == 32
    assert train.main(common + ["--minutes", "0.06", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    ck2 = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck2["step"] > ck["step"] and len(ck2["runs"]) == 2
    out = tmp_path / "w" / "absorbing-test.pt"
    assert train.main(["--export", str(tmp_path / "run" / "last.pt"), "--weights-dir", str(out.parent),
                       "--weights-name", "absorbing-test", "--threads", "1",
                       "--table-chars", "2048", "--table-stride", "4", "--budget-chars", "1024",
                       "--export-eval-chars", "4096", "--budgets", "2,8", "--default-steps", "6"]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert set(rec["valid_bpc_by_steps"]) == {"2", "8", "32"} and rec["default_steps"] == 6
    assert rec["valid_bpc_by_steps"]["2"] >= rec["valid_bpc_by_steps"]["32"] - 0.05
    st = C.load(registry.read_weights(out))
    assert st.default_steps == 6 and st.length == 32 and np.all(np.diff(st.costs, axis=0) <= 0)
    assert st.costs.shape == (32, 6) and st.order == "spread"
    x = text_symbols(77)
    assert np.array_equal(C.decompress(st, C.compress(st, x), 77), x)
    # the shipped file resumes too (weights only; steps and minutes from its record)
    assert train.main(common + ["--minutes", "0.12", "--resume", str(out), "--out", str(tmp_path / "run2")]) == 0
    # a resumed run can move to another order family; the network carries over
    assert train.main(common + ["--minutes", "0.03", "--resume", str(out), "--out", str(tmp_path / "run3"),
                                "--reorder", "blocked8"]) == 0
    ck3 = torch.load(tmp_path / "run3" / "last.pt", weights_only=False)
    assert ck3["config"]["order"] == "blocked8" and ck3["config"]["length"] == 32
    assert ck3["step"] > ck2["step"]  # continued from the exported weights, not a new run


# --------------------------------------------------------------------------- backend
def test_backend_round_trip_info_and_steps(weights_file, monkeypatch, tmp_path):
    from amdcompress import backends, cli
    from conftest import install_backend

    assert backends.by_name("absorbing-diffusion").codec_id == 21
    b = install_backend(monkeypatch, "absorbing-diffusion", weights_file)
    assert backends.by_id(21) is b
    cases = [b"", b"a", b"Hello, World!\n", TEXT * 3 + "\u00dcn\u00efcode 1234\n".encode(), bytes(range(256))]
    for raw in cases:
        blob = api.compress(raw, model="absorbing-diffusion")
        assert api.decompress(blob) == raw
    blob = api.compress(TEXT, model="absorbing-diffusion")
    assert api.info(blob).details["steps"] == 5  # the weights' default
    blob3 = api.compress(TEXT, model="absorbing-diffusion", steps=3)
    assert api.info(blob3).details["steps"] == 3 and api.decompress(blob3) == TEXT
    assert api.info(api.compress(TEXT, model="absorbing-diffusion", steps=1000)).details["steps"] == 32
    with pytest.raises(AmdError):
        api.compress(TEXT, model="absorbing-diffusion", steps=0)
    with pytest.raises(AmdError):
        api.decompress(blob[:-3])
    src = tmp_path / "t.txt"
    src.write_bytes(TEXT)
    assert cli.main(["encode", "-q", "-m", "absorbing-diffusion", str(src), "-o", str(tmp_path / "t.amd")]) == 0
    assert cli.main(["decode", "-q", str(tmp_path / "t.amd"), "-o", str(tmp_path / "b.txt")]) == 0
    assert (tmp_path / "b.txt").read_bytes() == TEXT
    assert cli.main(["encode", "-q", "-f", "-m", "absorbing-diffusion", "--steps", "2", str(src),
                     "-o", str(tmp_path / "t.amd")]) == 0
    assert api.info((tmp_path / "t.amd").read_bytes()).details["steps"] == 2
    payload = b.encode(Data(BYTES, np.frombuffer(TEXT, dtype=np.uint8)))
    for bad in (payload[:5], payload[:-2] + b"\0\0"):
        try:
            b.decode(bad, BYTES, (len(TEXT),))
        except AmdError as e:
            assert "\n" not in str(e)


def test_loss_by_class_splits_the_sequential_cost():
    from amdcompress.models.absorbing.train import by_class

    seq = np.random.default_rng(0).random(32) * 4
    rows = by_class("spread", 32, seq)
    assert [r["positions"] for r in rows] == [1, 1, 2, 4, 8, 16]
    assert abs(sum(r["bpc_share"] for r in rows) - seq.mean()) < 1e-3
    assert abs(rows[-1]["bits_per_position"] - seq[16:].mean()) < 1e-4  # the odd positions are the last 16 ranks
    assert by_class("random", 32, seq) == [{"class": 0, "positions": 32, "bits_per_position": round(float(seq.mean()), 4),
                                           "bpc_share": round(float(seq.mean()), 4)}]
