"""Train the coupling-prior Argmax Flow (:mod:`.argmax_coupling`) on text8, and export weights.

    python -m amdcompress.models.train_argmax_coupling --minutes 45 --threads 1
    python -m amdcompress.models.train_argmax_coupling --resume runs/argmax_coupling/last.pt --minutes 60
    python -m amdcompress.models.train_argmax_coupling --export runs/argmax_coupling/best.pt
        # -> models/weights/argmax-coupling-v1.{pt,json}

Training: negative ELBO in bits per character (one reparameterized q sample),
on ``--batch`` chunks of ``--chunk`` characters taken at random offsets of the
training text, a share ``--partial`` of them cut to a random shorter length
(padded, as the coder's warm-up and last chunks are). Adam, linear warmup, cosine decay over the ``--minutes`` budget
(wall clock, including resumed time, so a run ends on time). Every
``--eval-minutes`` the held-out ELBO on the first ``--eval-chars`` of valid.txt
(cut into chunks as the coder cuts them) is logged, and ``OUT/best.pt`` kept;
every ``--ckpt-minutes`` ``OUT/last.pt`` is written (the loop is
:class:`.training.BudgetedTraining`). ``--resume`` takes a checkpoint or the
shipped weights file.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .argmax_coupling import ArgmaxCouplingFlow, CouplingConfig, chunked_nelbo_bits, count_params
from .training import BudgetedTraining, load_text_symbols, start_from

DATA = Path("/work/shared/data/text8")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODULE = "python -m amdcompress.models.train_argmax_coupling"


def evaluate(model: ArgmaxCouplingFlow, sym: np.ndarray, seed: int = 1234) -> dict:
    """Held-out negative ELBO, bits per character, under the coder's chunking."""
    return {"elbo_bpc": chunked_nelbo_bits(model, sym, seed=seed) / max(1, len(sym)), "chars": int(len(sym))}


def load_symbols(path: Path, limit: int | None = None) -> np.ndarray:
    return load_text_symbols(path, limit, np.int64)


def train(args) -> dict:
    """Run one training (see the module docstring); returns the final held-out evaluation."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_sym = torch.from_numpy(load_symbols(Path(args.data)))
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    ck = start_from(args.resume) if args.resume else None
    config = CouplingConfig.from_dict(ck[0]) if ck else CouplingConfig(
        chunk=args.chunk, layers=args.layers, hidden=args.hidden, kernel=args.kernel, mixtures=args.mixtures,
        delta_bits=args.delta_bits)
    model = ArgmaxCouplingFlow(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    loop = BudgetedTraining(args, model, opt, kind="argmax-coupling-checkpoint", metric="elbo_bpc", resumed=ck)
    loop.log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars; config {config.to_dict()} "
             f"params {count_params(model)} threads {args.threads}")
    rng = np.random.default_rng(args.seed + loop.step)
    L, B = config.chunk, args.batch

    def step_loss() -> torch.Tensor:
        offs = torch.from_numpy(rng.integers(0, len(train_sym) - L, B))
        x = train_sym[offs[:, None] + torch.arange(L)[None, :]]
        nv = np.where(rng.random(B) < args.partial, rng.integers(1, L, B), L)
        valid = torch.arange(L)[None, :] < torch.from_numpy(nv)[:, None]
        return model(x, valid).sum() / valid.sum()

    return loop.run(step_loss, lambda: evaluate(model, valid_sym))


def export(args) -> None:
    """Checkpoint -> weights file (config, float32 state dict, q coding tables)
    + JSON record (provenance, held-out ELBO, sha256)."""
    from .argmax_coupling_coding import build_tables

    torch.set_num_threads(args.threads)
    ck = torch.load(args.export, map_location="cpu", weights_only=False)
    config = CouplingConfig.from_dict(ck["config"])
    model = ArgmaxCouplingFlow(config)
    model.load_state_dict(ck["model"])
    model.eval()
    t0 = time.time()
    ev = evaluate(model, load_symbols(Path(args.valid), args.export_valid_chars or None))
    tr = evaluate(model, load_symbols(Path(args.data), 100_000))
    print(f"export: valid ({ev['chars']} chars) elbo {ev['elbo_bpc']:.4f}; train[:100k] elbo {tr['elbo_bpc']:.4f} "
        f"({time.time() - t0:.0f} s)")
    tables = build_tables(model)
    pt = Path(args.weights_out)
    pt.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    torch.save({"kind": "argmax-coupling-weights", "config": config.to_dict(), "state_dict": sd,
                "coding": {k: torch.as_tensor(v) for k, v in tables.items()}}, pt)
    sha = hashlib.sha256(pt.read_bytes()).hexdigest()
    cargs = ck.get("args", {})
    meta = {
        "model": "argmax-coupling", "file": pt.name, "sha256": sha, "weights_tag": sha[:8],
        "config": config.to_dict(), "params": count_params(model),
        "coding": {"delta_bits": int(tables["delta_bits"]), "window": int(tables["window"])},
        "data": {"train": "text8 train.txt (first 10M chars of text8)",
                 "valid": "text8 valid.txt (chars 10M-11M of text8)"},
        "steps": ck.get("step"), "minutes": round(ck.get("elapsed", 0.0) / 60, 1),
        "device": "cpu (" + (platform.processor() or platform.machine()) + ")",
        "threads": cargs.get("threads"), "batch": cargs.get("batch"), "chunk": config.chunk,
        "final_train_elbo_bpc": ck.get("train_elbo_bpc"),
        "train_100k_elbo_bpc": tr["elbo_bpc"],
        "valid_elbo_bpc": ev["elbo_bpc"], "valid_chars": ev["chars"],
        "valid_eval": f"one q sample per char, chunks of {config.chunk} as the coder cuts them",
        "command": cargs.get("command"),
        "export_command": args.command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    meta["training_runs"] = ck.get("runs", [])
    pt.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA / "train.txt"))
    p.add_argument("--valid", default=str(DATA / "valid.txt"))
    p.add_argument("--out", default="runs/argmax_coupling")
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget (includes resumed time)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", default=None, help="checkpoint (model, optimizer, schedule)")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--mixtures", type=int, default=4)
    p.add_argument("--delta-bits", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--partial", type=float, default=0.25,
                   help="share of training chunks cut short (padded), as the coder's warm-up and last chunks are")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--final-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-chars", type=int, default=100_000)
    p.add_argument("--eval-minutes", type=float, default=5.0)
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-tqdm", action="store_true")
    p.add_argument("--export", default=None, help="export this checkpoint to --weights-out and exit")
    p.add_argument("--weights-out", default=str(WEIGHTS_DIR / "argmax-coupling-v1.pt"))
    p.add_argument("--export-valid-chars", type=int, default=0, help="0 = all of valid.txt")
    args = p.parse_args(argv)
    args.command = " ".join([MODULE] + (list(argv) if argv is not None else sys.argv[1:]))
    if args.export:
        return export(args)
    return train(args)


if __name__ == "__main__":
    main()
