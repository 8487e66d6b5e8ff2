"""Train the Discrete Flow text model (:mod:`.discrete_flow`) on text8, and export weights.

    python -m amdcompress.models.train_discrete_flow --minutes 40 --threads 1 --base ar --layers 2
    python -m amdcompress.models.train_discrete_flow --resume runs/discrete_flow/last.pt --minutes 50
    python -m amdcompress.models.train_discrete_flow --export runs/discrete_flow/best.pt  # -> models/weights/discrete-flow-v1.{pt,json}

Training: exact -log2 P(x) in bits per character (no bound: the flow is a
bijection), straight-through gradients for the flow. ``--batch`` contiguous
streams of the training text are read in chunks of ``--chunk`` characters (the
flow's D), chunk-aligned; the AR base carries its LSTM state from chunk to
chunk (a stream restarts from a zero state and the start token with
probability ``--reset`` per chunk, as the coder's lanes do). Adam, linear
warmup, cosine decay over the ``--minutes`` budget (wall clock, so a run ends
on time). Every ``--eval-minutes`` the held-out bpc on the first
``--eval-chars`` of valid.txt (integer path, the coder's computation) is
logged; every ``--ckpt-minutes`` ``OUT/last.pt`` is written (``OUT/best.pt``
when the held-out bpc improved). ``--resume`` continues a checkpoint.
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

from .discrete_flow import DiscreteFlow, DiscreteFlowConfig, count_params
from .train_argmax import load_symbols, log, lr_at
from .train_argmax import save_ckpt as _save_ckpt
from .training import start_from

DATA = Path("/work/shared/data/text8")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@torch.no_grad()
def evaluate(model: DiscreteFlow, sym: np.ndarray, streams: int = 4) -> dict:
    """Held-out exact -log2 P(x) in bits per character (integer path), over
    ``streams`` contiguous parts read chunk by chunk with carried base state."""
    was = model.training
    model.eval()
    d = model.config.chunk
    per = (len(sym) // streams // d) * d
    n = per * streams
    if per == 0:
        raise ValueError("held-out text shorter than streams x chunk")
    x = torch.from_numpy(sym[:n].reshape(streams, per))
    tot, state, prev = 0.0, None, None
    for s in range(0, per, d):
        xc = x[:, s : s + d]
        bits, state = model.nll_bits(xc, state, prev)
        prev = model.flow_forward(xc)[:, -1]
        tot += float(bits.sum())
    model.train(was)
    return {"bpc": tot / n, "chars": n}


def save_ckpt(path: Path, model, opt, state: dict) -> None:
    _save_ckpt(path, model, opt, state, kind="discrete-flow-checkpoint")


def train(args) -> dict:
    """Run one training; returns the final held-out evaluation."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / "train.log", "a")
    log("command: " + args.command, fh)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_sym = load_symbols(Path(args.data))
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars", fh)

    ck = start_from(args.resume) if args.resume else None
    config = DiscreteFlowConfig.from_dict(ck[0]) if ck else DiscreteFlowConfig(
        chunk=args.chunk, layers=args.layers, net_hidden=args.net_hidden, net_depth=args.net_depth,
        kernel=args.kernel, temperature=args.temperature, base=args.base, hidden=args.hidden, emb=args.emb)
    model = DiscreteFlow(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    step, elapsed_prev, best, ptr = 0, 0.0, float("inf"), None
    if ck:
        model.load_state_dict(ck[1])
        if ck[2] is not None:
            opt.load_state_dict(ck[2])
            full = ck[5]
            best = full.get("best", best)
            ptr = np.asarray(full["ptr"], dtype=np.int64) if full.get("ptr") is not None else None
        step, elapsed_prev = ck[3], ck[4]
        log(f"resumed from {args.resume} at step {step}, {elapsed_prev / 60:.1f} min", fh)
    log(f"config {config.to_dict()} params {count_params(model)} threads {args.threads}", fh)

    B, D = args.batch, config.chunk
    span = (len(train_sym) // B // D) * D
    if ptr is None or len(ptr) != B:
        ptr = np.arange(B, dtype=np.int64) * span
    data = torch.from_numpy(train_sym)
    state, prev = None, None
    budget = args.minutes * 60.0
    t_start = time.time()
    last_ck = last_ev = time.time()
    ema = None
    model.train()
    while True:
        elapsed = elapsed_prev + time.time() - t_start
        if elapsed >= budget:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, elapsed / budget, args)
        wrap = ptr + D > (np.arange(B) + 1) * span
        ptr[wrap] = np.arange(B)[wrap] * span
        x = data[torch.from_numpy(ptr)[:, None] + torch.arange(D)[None, :]]
        reset = torch.from_numpy((rng.random(B) < args.reset) | wrap)
        if config.base == "ar" and state is not None:
            keep = (~reset).float()[None, :, None]
            state = tuple(s.detach() * keep for s in state)
            prev = torch.where(reset, torch.full_like(prev, config.k), prev)
        bits, state, z = model(x, state, prev)
        loss = bits.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        prev = z[:, -1]
        ptr += D
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if step % args.log_every == 0:
            log(f"step {step} min {(elapsed_prev + time.time() - t_start) / 60:.1f} lr {opt.param_groups[0]['lr']:.2e} "
                f"train_bpc {ema:.4f} gnorm {float(gn):.2f}", fh)
        now = time.time()
        if now - last_ev >= args.eval_minutes * 60:
            ev = evaluate(model, valid_sym)
            last_ev = time.time()
            log(f"EVAL step {step} min {(elapsed_prev + last_ev - t_start) / 60:.1f} valid_bpc {ev['bpc']:.4f} "
                f"train_bpc {ema:.4f}", fh)
            if ev["bpc"] < best:
                best = ev["bpc"]
                save_ckpt(out / "best.pt", model, opt, {"step": step, "elapsed": elapsed_prev + time.time() - t_start,
                                                         "best": best, "ptr": ptr.tolist(), "train_bpc": ema,
                                                         "valid": ev, "args": vars(args)})
        if now - last_ck >= args.ckpt_minutes * 60:
            save_ckpt(out / "last.pt", model, opt, {"step": step, "elapsed": elapsed_prev + time.time() - t_start,
                                                     "best": best, "ptr": ptr.tolist(), "train_bpc": ema,
                                                     "args": vars(args)})
            last_ck = time.time()
    ev = evaluate(model, valid_sym)
    elapsed = elapsed_prev + time.time() - t_start
    log(f"EVAL final step {step} min {elapsed / 60:.1f} valid_bpc {ev['bpc']:.4f} train_bpc {ema:.4f}", fh)
    st = {"step": step, "elapsed": elapsed, "best": min(best, ev["bpc"]), "ptr": ptr.tolist(),
          "train_bpc": ema, "valid": ev, "args": vars(args)}
    save_ckpt(out / "last.pt", model, opt, st)
    if ev["bpc"] <= best:
        save_ckpt(out / "best.pt", model, opt, st)
    log("done", fh)
    fh.close()
    return {"valid_bpc": ev["bpc"], "valid_chars": ev["chars"], "train_bpc": ema, "steps": step,
            "minutes": round(elapsed / 60, 2)}


def training_history(log_path: Path) -> list[dict]:
    """Runs recorded in a training log: command, start, last held-out evaluation."""
    runs: list[dict] = []
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return runs
    for line in lines:
        if "] command: " in line:
            runs.append({"started": line[1:9], "command": line.split("] command: ", 1)[1]})
        elif runs and "EVAL" in line:
            f = line.split()
            runs[-1]["last_eval"] = {"step": int(f[f.index("step") + 1]), "minutes": float(f[f.index("min") + 1]),
                                     "valid_bpc": float(f[f.index("valid_bpc") + 1])}
    return runs


def export(args) -> None:
    """Checkpoint -> ``--weights-out`` (config + float16 state dict) and a JSON
    record beside it (provenance, held-out bpc of the *shipped* float16 weights,
    sha256)."""
    from amdcompress.models.registry import compact_state_dict

    from .discrete_flow_coding import load_weights

    torch.set_num_threads(args.threads)
    ck = torch.load(args.export, map_location="cpu", weights_only=False)
    config = DiscreteFlowConfig.from_dict(ck["config"])
    model = DiscreteFlow(config)
    model.load_state_dict(ck["model"])
    pt = Path(args.weights_out)
    pt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "discrete-flow-weights", "config": config.to_dict(),
                "state_dict": compact_state_dict(model.state_dict())}, pt)
    sha = hashlib.sha256(pt.read_bytes()).hexdigest()
    shipped, _ = load_weights(pt, sha)          # what the coder will use (float16 -> float32)
    t0 = time.time()
    ev = evaluate(shipped, load_symbols(Path(args.valid), args.export_valid_chars or None))
    tr = evaluate(shipped, load_symbols(Path(args.data), 100_000))
    log(f"export: valid ({ev['chars']} chars) bpc {ev['bpc']:.4f}; train[:100k] bpc {tr['bpc']:.4f} "
        f"({time.time() - t0:.0f} s)")
    cargs = ck.get("args", {})
    meta = {
        "model": "discrete-flow", "file": pt.name, "sha256": sha, "weights_tag": sha[:8],
        "config": config.to_dict(), "params": count_params(model),
        "variant": ("discrete autoregressive flow: bipartite layers over an LSTM base" if config.base == "ar"
                    else "bipartite discrete flow over a factorized base"),
        "data": {"train": "text8 train.txt (first 10M chars of text8)",
                 "valid": "text8 valid.txt (chars 10M-11M of text8)"},
        "steps": ck.get("step"), "minutes": round(ck.get("elapsed", 0.0) / 60, 1),
        "device": "cpu (" + (platform.processor() or platform.machine()) + ")",
        "threads": cargs.get("threads"), "batch": cargs.get("batch"),
        "final_train_bpc": ck.get("train_bpc"), "train_100k_bpc": tr["bpc"],
        "valid_bpc": ev["bpc"], "valid_chars": ev["chars"],
        "valid_eval": "exact -log2 P(x) of the float16-rounded shipped weights, 4 streams with carried state",
        "command": cargs.get("command"),
        "export_command": args.command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "training_runs": training_history(Path(args.export).parent / "train.log"),
    }
    pt.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA / "train.txt"))
    p.add_argument("--valid", default=str(DATA / "valid.txt"))
    p.add_argument("--out", default="runs/discrete_flow")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget (includes resumed time)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", default=None)
    p.add_argument("--base", choices=("ar", "factorized"), default="ar")
    p.add_argument("--layers", type=int, default=2, help="coupling layers")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--net-hidden", type=int, default=96)
    p.add_argument("--net-depth", type=int, default=3)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--final-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--reset", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-chars", type=int, default=100_000)
    p.add_argument("--eval-minutes", type=float, default=5.0)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--export", default=None, help="export this checkpoint to --weights-out and exit")
    p.add_argument("--weights-out", default=str(WEIGHTS_DIR / "discrete-flow-v1.pt"))
    p.add_argument("--export-valid-chars", type=int, default=0, help="0 = all of valid.txt")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.command = " ".join(["python -m amdcompress.models.train_discrete_flow"]
                            + (list(argv) if argv is not None else sys.argv[1:]))
    if args.export:
        return export(args)
    return train(args)


if __name__ == "__main__":
    main()
