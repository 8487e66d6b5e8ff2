"""Train the Argmax Flow text model (:mod:`.argmax`) on text8, and export weights.

    python -m amdcompress.models.train_argmax --minutes 100 --threads 1
    python -m amdcompress.models.train_argmax --resume runs/argmax/last.pt --minutes 160
    python -m amdcompress.models.train_argmax --export runs/argmax/best.pt   # -> models/weights/argmax-v1.{pt,json}

Training: negative ELBO in bits per character, one reparameterized sample of
``q``; ``--batch`` contiguous streams of the training text read in BPTT chunks
of ``--bptt`` characters with the LSTM state carried from chunk to chunk (each
stream restarts from a zero state and the start token with probability
``--reset`` per chunk, as the coder's lanes do). Adam, linear warmup, cosine
decay over the ``--minutes`` budget (wall clock, so a run ends on time).
Every ``--eval-minutes`` the held-out ELBO on the first ``--eval-chars`` of
valid.txt is logged; every ``--ckpt-minutes`` ``OUT/last.pt`` is written (and
``OUT/best.pt`` when the held-out ELBO improved). ``--resume`` takes a
checkpoint (model, optimizer, schedule, data position) or a shipped weights
file (model only, fresh schedule).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .argmax import ArgmaxConfig, ArgmaxFlow, START, count_params

DATA = Path("/work/shared/data/text8")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_symbols(path: Path, limit: int | None = None) -> np.ndarray:
    from amdcompress.textstream import split

    raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    if limit:
        raw = raw[:limit]
    sym, esc = split(raw)
    return sym.astype(np.int64)


def log(msg: str, fh=None) -> None:
    line = f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


@torch.no_grad()
def evaluate(model: ArgmaxFlow, sym: np.ndarray, streams: int = 4, chunk: int = 512, exact: bool = True,
             seed: int = 1234) -> dict:
    """Held-out negative ELBO (one q sample, fixed seed) and exact -log2 P(x),
    bits per character, over ``streams`` contiguous parts with carried state."""
    model.eval()
    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    n = (len(sym) // streams) * streams
    x = torch.from_numpy(sym[:n].reshape(streams, -1))
    tot_e = tot_x = 0.0
    st_e = st_x = None
    prev = torch.full((streams, 1), START, dtype=torch.long)
    for s in range(0, x.shape[1], chunk):
        xc = x[:, s : s + chunk]
        tok = torch.cat([prev, xc[:, :-1]], 1)
        e, st_e = model(xc, st_e, tokens=tok)
        tot_e += float(e.sum())
        if exact:
            nll, st_x = model.exact_nll_bits(xc, st_x, tokens=tok)
            tot_x += float(nll.sum())
        prev = xc[:, -1:]
    torch.random.set_rng_state(g)
    model.train()
    out = {"elbo_bpc": tot_e / n, "chars": n}
    if exact:
        out["nll_bpc"] = tot_x / n
    return out


def lr_at(step: int, frac: float, args) -> float:
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return args.lr * warm * (args.final_lr_frac + (1 - args.final_lr_frac) * cos)


def save_ckpt(path: Path, model, opt, state: dict, kind: str = "argmax-checkpoint") -> None:
    """A full training checkpoint (config, weights, optimizer, ``state``), written atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save({"kind": kind, "config": model.config.to_dict(), "model": model.state_dict(),
                "opt": opt.state_dict(), **state}, tmp)
    os.replace(tmp, path)


def load_any(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def train(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / "train.log", "a")
    log("command: " + " ".join(sys.argv), fh)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_sym = load_symbols(Path(args.data))
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars", fh)

    ck = load_any(Path(args.resume)) if args.resume else None
    config = ArgmaxConfig.from_dict(ck["config"]) if ck else ArgmaxConfig(
        hidden=args.hidden, emb=args.emb, head=args.head, mixtures=args.mixtures)
    model = ArgmaxFlow(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    step, elapsed_prev, best, ptr = 0, 0.0, float("inf"), None
    if ck:
        model.load_state_dict(ck["model"] if "model" in ck else ck["state_dict"])
        if ck.get("kind") == "argmax-checkpoint" and not args.fresh_schedule:
            opt.load_state_dict(ck["opt"])
            step, elapsed_prev, best = ck["step"], ck["elapsed"], ck.get("best", best)
            ptr = np.asarray(ck["ptr"], dtype=np.int64) if ck.get("ptr") is not None else None
        log(f"resumed from {args.resume} at step {step}, {elapsed_prev / 60:.1f} min", fh)
    log(f"config {config.to_dict()} params {count_params(model)} threads {args.threads}", fh)

    B, T = args.batch, args.bptt
    span = len(train_sym) // B
    if ptr is None or len(ptr) != B:
        ptr = np.arange(B, dtype=np.int64) * span
    data = torch.from_numpy(train_sym)
    state = None
    prev = torch.full((B, 1), START, dtype=torch.long)
    budget = args.minutes * 60.0
    t_start = time.time()
    last_ck = last_ev = time.time()
    ema = None
    from tqdm import tqdm

    bar = tqdm(total=int(budget), unit="s", mininterval=30, disable=args.no_tqdm, file=sys.stderr)
    model.train()
    while True:
        elapsed = elapsed_prev + time.time() - t_start
        if elapsed >= budget:
            break
        frac = elapsed / budget
        for group in opt.param_groups:
            group["lr"] = lr_at(step, frac, args)
        # wrap streams that reach the end of their span
        wrap = ptr + T + 1 > np.minimum(np.arange(1, B + 1) * span, len(train_sym))
        ptr[wrap] = np.arange(B)[wrap] * span
        idx = torch.from_numpy(ptr)[:, None] + torch.arange(T)[None, :]
        x = data[idx]
        reset = torch.from_numpy(rng.random(B) < args.reset) | torch.from_numpy(wrap)
        if state is not None:
            keep = (~reset).float()[None, :, None]
            state = tuple(s.detach() * keep for s in state)
        prev = torch.where(reset[:, None], torch.full_like(prev, START), prev)
        tok = torch.cat([prev, x[:, :-1]], 1)
        loss_c, state = model(x, state, tokens=tok)
        loss = loss_c.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        prev = x[:, -1:]
        ptr += T
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        bar.n = int(min(budget, elapsed_prev + time.time() - t_start))
        bar.set_postfix(step=step, elbo=f"{ema:.3f}", refresh=False)
        bar.update(0)
        if step % args.log_every == 0:
            log(f"step {step} min {(elapsed_prev + time.time() - t_start) / 60:.1f} lr {opt.param_groups[0]['lr']:.2e} "
                f"train_elbo_bpc {ema:.4f} gnorm {float(gn):.2f}", fh)
        now = time.time()
        if now - last_ev >= args.eval_minutes * 60:
            ev = evaluate(model, valid_sym)
            last_ev = time.time()
            log(f"EVAL step {step} min {(elapsed_prev + last_ev - t_start) / 60:.1f} valid_elbo_bpc {ev['elbo_bpc']:.4f} "
                f"valid_nll_bpc {ev['nll_bpc']:.4f} train_elbo_bpc {ema:.4f}", fh)
            if ev["elbo_bpc"] < best:
                best = ev["elbo_bpc"]
                save_ckpt(out / "best.pt", model, opt, {"step": step, "elapsed": elapsed_prev + time.time() - t_start,
                                                         "best": best, "ptr": ptr.tolist(), "train_elbo_bpc": ema,
                                                         "valid": ev, "args": vars(args)})
        if now - last_ck >= args.ckpt_minutes * 60:
            save_ckpt(out / "last.pt", model, opt, {"step": step, "elapsed": elapsed_prev + time.time() - t_start,
                                                     "best": best, "ptr": ptr.tolist(), "train_elbo_bpc": ema,
                                                     "args": vars(args)})
            last_ck = time.time()
    bar.close()
    ev = evaluate(model, valid_sym)
    elapsed = elapsed_prev + time.time() - t_start
    log(f"EVAL final step {step} min {elapsed / 60:.1f} valid_elbo_bpc {ev['elbo_bpc']:.4f} "
        f"valid_nll_bpc {ev['nll_bpc']:.4f} train_elbo_bpc {ema:.4f}", fh)
    st = {"step": step, "elapsed": elapsed, "best": min(best, ev["elbo_bpc"]), "ptr": ptr.tolist(),
          "train_elbo_bpc": ema, "valid": ev, "args": vars(args)}
    save_ckpt(out / "last.pt", model, opt, st)
    if ev["elbo_bpc"] <= best:
        save_ckpt(out / "best.pt", model, opt, st)
    log("done", fh)


def training_history(log_path: Path) -> list[dict]:
    """The runs recorded in a training log: command line, start (step, minutes)
    and the last held-out evaluation of each, so a resumed model's provenance
    is complete."""
    runs: list[dict] = []
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return runs
    for line in lines:
        if "] command: " in line:
            cmd = line.split("] command: ", 1)[1]
            cmd = "python -m amdcompress.models.train_argmax " + cmd.split(" ", 1)[1] if " " in cmd else cmd
            runs.append({"started": line[1:9], "command": cmd, "from_step": 0, "from_minutes": 0.0})
        elif runs and "] resumed from " in line:
            parts = line.split(" at step ")[1].split(", ")
            runs[-1]["from_step"] = int(parts[0])
            runs[-1]["from_minutes"] = float(parts[1].split()[0])
        elif runs and "EVAL" in line:
            f = line.split()
            runs[-1]["last_eval"] = {"step": int(f[f.index("step") + 1]), "minutes": float(f[f.index("min") + 1]),
                                     "valid_elbo_bpc": float(f[f.index("valid_elbo_bpc") + 1]),
                                     "valid_nll_bpc": float(f[f.index("valid_nll_bpc") + 1])}
    return runs


def export(args) -> None:
    """Checkpoint -> models/weights/argmax-v1.pt (config, float32 state dict,
    coding tables) + argmax-v1.json (provenance, full valid ELBO, sha256)."""
    from .argmax_coding import build_coding_tables

    torch.set_num_threads(args.threads)
    ck = load_any(Path(args.export))
    config = ArgmaxConfig.from_dict(ck["config"])
    model = ArgmaxFlow(config)
    model.load_state_dict(ck["model"] if "model" in ck else ck["state_dict"])
    model.eval()
    t0 = time.time()
    valid = load_symbols(Path(args.valid), args.export_valid_chars or None)
    ev = evaluate(model, valid, streams=8)
    tr = evaluate(model, load_symbols(Path(args.data), 100_000), streams=4)
    log(f"export: valid ({ev['chars']} chars) elbo {ev['elbo_bpc']:.4f} nll {ev['nll_bpc']:.4f}; "
        f"train[:100k] elbo {tr['elbo_bpc']:.4f} ({time.time() - t0:.0f} s)")
    tables = build_coding_tables(model, delta_bits=args.delta_bits, window=args.window)
    WEIGHTS_DIR.mkdir(exist_ok=True)
    pt = Path(args.weights_out)
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    torch.save({"kind": "argmax-weights", "config": config.to_dict(), "state_dict": state,
                "coding": {k: torch.as_tensor(v) for k, v in tables.items()}}, pt)
    sha = hashlib.sha256(pt.read_bytes()).hexdigest()
    cargs = ck.get("args", {})
    meta = {
        "model": "argmax", "file": pt.name, "sha256": sha, "weights_tag": sha[:8],
        "config": config.to_dict(), "params": count_params(model),
        "coding": {"delta_bits": int(tables["delta_bits"]), "window": int(tables["window"])},
        "data": {"train": "text8 train.txt (first 10M chars of text8)",
                 "valid": "text8 valid.txt (chars 10M-11M of text8)"},
        "steps": ck.get("step"), "minutes": round(ck.get("elapsed", 0.0) / 60, 1),
        "device": "cpu (" + (platform.processor() or platform.machine()) + ")",
        "threads": cargs.get("threads"), "batch": cargs.get("batch"), "bptt": cargs.get("bptt"),
        "final_train_elbo_bpc": ck.get("train_elbo_bpc"),
        "train_100k_elbo_bpc": tr["elbo_bpc"],
        "valid_elbo_bpc": ev["elbo_bpc"], "valid_nll_bpc": ev["nll_bpc"], "valid_chars": ev["chars"],
        "valid_eval": "one q sample per char, 8 streams with carried state",
        "command": cargs.get("command", "python -m amdcompress.models.train_argmax " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in cargs.items() if k in ("minutes", "threads", "batch", "bptt", "lr"))),
        "export_command": " ".join(["python -m amdcompress.models.train_argmax"] + sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    meta["training_runs"] = training_history(Path(args.export).parent / "train.log")
    Path(pt.with_suffix(".json")).write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA / "train.txt"))
    p.add_argument("--valid", default=str(DATA / "valid.txt"))
    p.add_argument("--out", default="runs/argmax")
    p.add_argument("--minutes", type=float, default=100.0, help="wall-clock budget (includes resumed time)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", default=None)
    p.add_argument("--fresh-schedule", action="store_true", help="with --resume: keep weights only")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--head", type=int, default=384)
    p.add_argument("--mixtures", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--final-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--reset", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-chars", type=int, default=100_000)
    p.add_argument("--eval-minutes", type=float, default=5.0)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--no-tqdm", action="store_true")
    p.add_argument("--export", default=None, help="export this checkpoint to --weights-out and exit")
    p.add_argument("--weights-out", default=str(WEIGHTS_DIR / "argmax-v1.pt"))
    p.add_argument("--export-valid-chars", type=int, default=0, help="0 = all of valid.txt")
    p.add_argument("--delta-bits", type=int, default=0, help="coding grid 2**-b (0: chosen from q)")
    p.add_argument("--window", type=int, default=32, help="grid bins per coded magnitude (the grid step 2**-b is the finest that fits q in the window)")
    args = p.parse_args(argv)
    args.command = " ".join(["python -m amdcompress.models.train_argmax"] + (argv if argv is not None else sys.argv[1:]))
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
