"""How much would more context in the IDF's priors save? A probe on frozen latents.

    python benchmarks/idf_context_probe.py [--parts top-a top-b level1 level0] [--phases 4] [--groups 2]
        [--minutes 3] [--out benchmarks/results/idf_context_probe.json]

For each coded part of the shipped IDF (``top-a``: the top latent, coded
under the constant prior or the top cascade; ``top-b``: the top ``b | a``;
``levelL``: the half factored out at level L), the flow is held fixed and a
small conv net is trained to *correct* the part's mixture parameters from
context the shipped prior does not see: the elements of the same part decoded
earlier in a (spatial phase, channel group) order — ``--phases`` 1, 2
(checkerboard) or 4 (2x2 sub-lattice), times ``--groups`` channel groups — plus
the conditioning half the shipped prior uses. The correction starts at zero,
so "after" starts at "before". Rows give each part's share of the bits per
dimension on the CIFAR-10 test subset (and on the training images with their
flips) before and after; their difference is what a decoder of that order
could gain at most with a net of this size and training time.

It answers a design question (is a context model worth its sequential
decoding?); nothing here is used by the codec.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import git_commit, machine_info, now, sha256_file  # noqa: E402

import numpy as np

from amdcompress.models.datasets import shared_data_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = shared_data_dir() / "cifar10"
PARTS = ("top-a", "top-b", "level1", "level0")


def collect(model, images, batch: int = 200):
    """Per part: latents z (N, c, h, w), conditioning tensor (or None), and the
    shipped prior's parameters (mu, log_scale, logit), all on the CPU."""
    import torch

    from amdcompress.models.idf.network import squeeze, to_input

    L = len(model.levels)
    groups = len(model.top_bounds()) - 1
    out: dict[str, dict[str, list]] = {name: {"z": [], "cond": [], "mu": [], "ls": [], "lg": []} for name in PARTS}
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = to_input(images[s : s + batch])
            parts = model.analyse(x, ste=False)
            keeps = []
            for lev in range(L):  # the kept halves, the factor-out priors' conditioning
                x = squeeze(x)
                for cpl in model.levels[lev]:
                    x = cpl(x, False)
                x = x[:, : x.shape[1] // 2]
                keeps.append(x)
            top_a = parts[:groups]
            cat = lambda ps, f: torch.cat([getattr(p, f) for p in ps], dim=1)  # noqa: E731
            by_name = {"top-a": (cat(top_a, "z"), None, cat(top_a, "mu"), cat(top_a, "log_scale"),
                                 cat(top_a, "logit"))}
            rest = iter(parts[groups:])
            for lev in reversed(range(L)):
                z, mu, ls, lg = _whole(model, lev, rest, keeps[lev].shape)
                by_name["top-b" if lev == L - 1 else f"level{lev}"] = (z, keeps[lev], mu, ls, lg)
            for name in PARTS:
                if name in by_name:
                    for key, v in zip(("z", "cond", "mu", "ls", "lg"), by_name[name]):
                        out[name][key].append(v)
    return {name: {k: (torch.cat(v) if v and v[0] is not None else None) for k, v in d.items()}
            for name, d in out.items() if d["z"]}


def _whole(model, lev: int, parts, shape):
    """The next coded part(s) of level ``lev`` as whole (N, c, h, w[, K]) tensors:
    the stages of a level with a context are put back in place."""
    import torch

    ctx = model.context(lev)
    if ctx is None:
        p = next(parts)
        return p.z, p.mu, p.log_scale, p.logit
    n, _, h, w = shape
    smap = ctx.stage_map(h, w)
    k = model.config["mixtures"]
    z = torch.zeros(n, ctx.c, h, w)
    mu, ls, lg = (torch.zeros(n, ctx.c, h, w, k) for _ in range(3))
    for st in range(ctx.stages):
        p = next(parts)
        sel = smap == st
        z[:, sel], mu[:, sel], ls[:, sel], lg[:, sel] = p.z, p.mu, p.log_scale, p.logit
    return z, mu, ls, lg


def probe(part: dict, test: dict, phases: int, groups: int, width: int, minutes: float, seed: int = 0) -> dict:
    import torch
    import torch.nn as nn

    from amdcompress.models.idf.network import ResNet, logistic_mixture_logp, stage_map

    torch.manual_seed(seed)
    z, cond = part["z"].float(), part["cond"]
    n, c, h, w = z.shape
    k = part["mu"].shape[-1]
    cc = 0 if cond is None else cond.shape[1]
    stage = stage_map(c, h, w, phases, groups)
    n_stages = phases * groups
    dims = 3 * 32 * 32

    class Correction(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ResNet(cc + 2 * c, 3 * k * c, width, 1, zero_out=True, kernels=(3, 1))

        def bits(self, d: dict, idx, st) -> "torch.Tensor":
            zz = d["z"][idx].float()
            known = (stage[None] < st[:, None, None, None]).float()
            inp = [zz * known / 64.0, known] + ([] if d["cond"] is None else [d["cond"][idx].float() / 64.0])
            o = self.net(torch.cat(inp, 1)).view(len(idx), 3, c, k, h, w).permute(1, 0, 2, 4, 5, 3)
            lp = logistic_mixture_logp(zz, d["mu"][idx] + o[0] * 32.0, d["ls"][idx] + o[1], d["lg"][idx] + o[2])
            target = (stage[None] == st[:, None, None, None]).float()
            return -(lp * target).flatten(1).sum(1) / math.log(2.0)

    def total_bpd(model, d) -> float:
        m = len(d["z"])
        tot = 0.0
        with torch.no_grad():
            for s in range(n_stages):
                for i in range(0, m, 300):
                    idx = torch.arange(i, min(m, i + 300))
                    tot += float(model.bits(d, idx, torch.full((len(idx),), s)).sum())
        return tot / m / dims

    net = Correction()
    ema = Correction()
    ema.load_state_dict(net.state_dict())
    before = {"test": total_bpd(ema, test), "train": total_bpd(ema, part)}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0, steps, budget = time.time(), 0, minutes * 60.0
    while time.time() - t0 < budget:
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, (time.time() - t0) / budget)))
        idx = torch.randint(0, n, (64,))
        loss = net.bits(part, idx, torch.randint(0, n_stages, (64,))).mean() * n_stages / dims
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 100.0)
        opt.step()
        steps += 1
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 0.005)
    after = {"test": total_bpd(ema, test), "train": total_bpd(ema, part)}
    return {"before_test_bpd": before["test"], "after_test_bpd": after["test"],
            "gain_test_bpd": before["test"] - after["test"], "before_train_bpd": before["train"],
            "after_train_bpd": after["train"], "steps": steps, "minutes": minutes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--phases", type=int, default=4, choices=(1, 2, 4))
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--minutes", type=float, default=3.0, help="training time per part")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "idf_context_probe.json"))
    a = p.parse_args(argv)

    import torch

    from amdcompress.models import registry
    from amdcompress.models.idf.network import IDF

    torch.set_num_threads(a.threads)
    name = registry.MODELS["idf"].weights[0].name
    obj = registry.load(name)
    model = IDF(obj["config"])
    model.load_state_dict({k: v.float() for k, v in obj["state_dict"].items()})
    model.eval()
    train = np.load(DATA / "train.npy")
    test = np.load(DATA / "test.npy")
    tr = collect(model, np.concatenate([train, train[:, :, ::-1]]))
    te = collect(model, test)
    rows = []
    for part in a.parts:
        r = probe(tr[part], te[part], a.phases, a.groups, a.width, a.minutes)
        r.update({"part": part, "phases": a.phases, "groups": a.groups, "width": a.width})
        print(json.dumps(r), flush=True)
        rows.append(r)
    result = {"rows": rows, "model": name, "weights_sha256": sha256_file(registry.weights_path(name)),
              "data": {"train": str(DATA / "train.npy") + " (+ horizontal flips)", "test": str(DATA / "test.npy")},
              "machine": machine_info(threads=a.threads), "commit": git_commit(), "date": now()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
