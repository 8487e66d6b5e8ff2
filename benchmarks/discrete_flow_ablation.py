"""Depth and temperature ablation of the Discrete Flow with a factorized base.

    python benchmarks/discrete_flow_ablation.py [--minutes 4] [--depths 0,1,2,4] [--temperatures 0.1,1.0]

Runs one short training per (coupling layers, straight-through temperature)
with :mod:`amdcompress.models.discrete_flow.train` (factorized base, 1 thread,
same seed, data and budget; depth 0 has no flow, so it runs once) one after
the other, and writes the held-out bits per character of each (exact -log2
P(x), first ``--eval-chars`` of valid.txt) to
``benchmarks/results/discrete_flow_ablation.json``. Not in the row schema of
report.py (it is a training ablation, not coded files): report.py skips it.
Each run's checkpoints stay in ``--runs/<name>/``; ``--no-train`` rewrites the
JSON from them (e.g. after a change of what is summarized). ``flow_changed_fraction``:
the share of held-out characters whose latent differs from the input (0: the
couplings stayed at the identity).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
from amdcompress.models.training import TEXT8_DIR as DATA  # noqa: E402  ($AMDCOMPRESS_DATA or ../shared/data)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per run")
    p.add_argument("--depths", default="0,1,2,4")
    p.add_argument("--temperatures", default="0.1,1.0")
    p.add_argument("--eval-chars", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-3, help="higher than the long runs' 2e-3: short budgets")
    p.add_argument("--runs", default="runs/discrete_flow_ablation")
    p.add_argument("--out", default=str(RESULTS / "discrete_flow_ablation.json"))
    p.add_argument("--no-train", action="store_true", help="only summarize the runs already in --runs")
    args = p.parse_args(argv)
    args.command = "python benchmarks/discrete_flow_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from amdcompress.models.discrete_flow import train as tdf

    depths = [int(d) for d in args.depths.split(",")]
    temps = [float(t) for t in args.temperatures.split(",")]
    grid = [(d, t) for d in depths for t in (temps if d > 0 else temps[:1])]
    results = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for depth, temp in grid:
        name = f"factorized-d{depth}" + (f"-t{temp:g}" if depth else "")
        run_dir = Path(args.runs) / name
        cmd = ["--base", "factorized", "--layers", str(depth), "--temperature", str(temp),
               "--minutes", str(args.minutes), "--threads", "1", "--batch", str(args.batch), "--lr", str(args.lr),
               "--eval-chars", str(args.eval_chars), "--eval-minutes", str(max(1.0, args.minutes / 2)),
               "--ckpt-minutes", str(args.minutes), "--log-every", "200", "--out", str(run_dir)]
        if not args.no_train:
            for f in ("log.txt", "metrics.jsonl", "last.pt", "best.pt"):  # one run per directory
                if (run_dir / f).exists():
                    (run_dir / f).unlink()
            tdf.main(cmd)
        results.append({"name": name, "base": "factorized", "coupling_layers": depth,
                        "temperature": temp if depth else None, **summarize(run_dir, args.eval_chars),
                        "command": "python -m amdcompress.models.discrete_flow.train " + " ".join(cmd)})
        print(json.dumps(results[-1]), flush=True)
        _write(out, args, results)
    _write(out, args, results)
    print(f"wrote {out}")


def summarize(run_dir: Path, eval_chars: int) -> dict:
    """One run's numbers, from its final checkpoint and metrics: held-out bpc (the
    training's final evaluation), its curve, steps, minutes, and the share of
    held-out characters the trained couplings change (z != x)."""
    import numpy as np
    import torch

    from amdcompress.models.discrete_flow.network import DiscreteFlow, DiscreteFlowConfig
    from amdcompress.models.discrete_flow.coding import apply_flow
    from amdcompress.models.discrete_flow.train import load_symbols

    torch.set_num_threads(1)
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    model = DiscreteFlow(DiscreteFlowConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    sym = load_symbols(DATA / "valid.txt", eval_chars)
    evals = [json.loads(line)["valid_bpc"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"valid_bpc": ck["valid"]["bpc"], "valid_chars": ck["valid"]["chars"], "train_bpc": ck["train_bpc"],
            "steps": ck["step"], "minutes": round(ck["elapsed"] / 60, 2), "valid_bpc_curve": evals,
            "flow_changed_fraction": float(np.mean(apply_flow(model, sym) != sym))}


def _write(out: Path, args, results: list[dict]) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    valid = DATA / "valid.txt"
    meta = {
        "what": "held-out bpc after a short training, factorized-base discrete flow, by coupling depth and "
                "straight-through softmax temperature",
        "data": {"train": {"file": str(DATA / "train.txt"), "split": "text8 train.txt (first 10M chars of text8)"},
                 "valid": {"file": str(valid), "sha256": hashlib.sha256(valid.read_bytes()).hexdigest(),
                           "split": f"first {args.eval_chars} chars of text8 valid.txt (chars 10M-11M of text8)"}},
        "budget_minutes_per_run": args.minutes, "batch": args.batch, "lr": args.lr, "chunk": 128, "threads": 1,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": 1, "python": platform.python_version(),
                    "note": "shared 2-core machine (another training on the other core): steps per run vary"},
        "commit": commit + (" (+ uncommitted changes)" if commit else ""),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": args.command,
        "mode": ("summary of runs trained earlier by this script (each run's training command is in its entry; "
                 "numbers read from its final checkpoint and log)") if args.no_train else "trained and summarized",
    }
    out.write_text(json.dumps({"meta": meta, "ablation": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
