"""Train the multinomial text diffusion model on text8 (27 symbols).

    python -m amdcompress.models.diffusion.train --minutes 60                       # new run, CPU, 1 thread
    python -m amdcompress.models.diffusion.train --resume runs/diffusion/last.pt --minutes 60
    python -m amdcompress.models.diffusion.train --resume models/weights/diffusion-v1.pt --minutes 60
    python -m amdcompress.models.diffusion.train --device cuda --threads 4 --batch 64 --minutes 120
    python -m amdcompress.models.diffusion.train --resume runs/diffusion/last.pt --export

Loss: the negative ELBO in bits per char (KL terms, reconstruction term and the
prior KL at T), one chain step per example, sampled uniformly or by importance
(p(i) oc sqrt(E[L_i^2]), the default), weighted by 1/p(i): an unbiased estimate
of the full T-step bound. AdamW with linear warmup and a half-life decay, an
EMA of the weights for evaluation and shipping, gradient clipping.

Every ``--ckpt-minutes`` a full checkpoint (model, EMA, optimizer, step
sampler, step, elapsed seconds, chars seen) goes to ``OUT/last.pt``; every
``--eval-minutes`` the EMA model's held-out ELBO (a prefix of valid.txt,
``--eval-chars``) goes to ``OUT/log.txt`` and ``OUT/metrics.jsonl``.
``--resume`` takes a full checkpoint or a shipped weights file
(``models/weights/diffusion-v1.pt``: weights and EMA restart from it, the
optimizer starts fresh). ``--export`` writes ``models/weights/diffusion-v1.pt``
(config + float32 EMA weights + the float64 schedule) and its JSON record, with
the held-out ELBO on ``--export-eval-chars`` of valid.txt (default: all of it).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .network import (
    CHUNK,
    WEIGHTS_NAME,
    Denoiser,
    StepSampler,
    count_params,
    elbo_bpc,
    make_config,
    training_loss,
)
from ..training import EMA, RunLog, atomic_save, pick_device, write_record
from ..training import load_text_symbols as load_symbols
from ..training import lr_at as schedule

DATA_DIR = Path(os.environ.get("AMDCOMPRESS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TRAIN = str(DATA_DIR / "text8" / "train.txt")
VALID = str(DATA_DIR / "text8" / "valid.txt")
CODING_STEPS = (25, 50, 100)  # chain lengths whose held-out ELBO the export records


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m amdcompress.models.diffusion.train",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=TRAIN, help="training text (text8 alphabet)")
    p.add_argument("--valid", default=VALID, help="held-out text for the ELBO")
    p.add_argument("--out", default="runs/diffusion", help="checkpoint and log folder")
    p.add_argument("--minutes", type=float, default=60.0, help="training time budget of this run")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many total steps (0: no limit)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--batch", type=int, default=32, help="chunks of 256 chars per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500, help="linear warmup steps")
    p.add_argument("--half-life", type=float, default=50000.0, help="lr halves every this many steps")
    p.add_argument("--min-lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--step-sampling", choices=("uniform", "importance"), default="importance")
    p.add_argument("--loss-steps", type=int, default=0,
                   help="train the bound of a coarser chain of this many steps (0: all T)")
    p.add_argument("--aux-ce", type=float, default=0.0,
                   help="weight of an auxiliary cross-entropy on x0hat (0: the pure ELBO of the paper)")
    p.add_argument("--config", default="{}", help="JSON overrides of the model config (new runs only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="full checkpoint or shipped weights file to start from")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--eval-minutes", type=float, default=10.0)
    p.add_argument("--eval-chars", type=int, default=65536, help="valid.txt prefix evaluated during training")
    p.add_argument("--eval-steps", type=int, default=100, help="also evaluate this coarser chain (0: skip)")
    p.add_argument("--export", action="store_true", help="export --resume's EMA weights and exit")
    p.add_argument("--export-at-end", action="store_true", help="export after training")
    p.add_argument("--export-eval-chars", type=int, default=0, help="valid.txt chars evaluated at export (0: all)")
    p.add_argument("--weights-dir", default=None, help="where the export goes (default: models/weights)")
    p.add_argument("--note", default="", help="free text stored in the export record")
    p.add_argument("--no-tqdm", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------
def chunks_of(symbols: np.ndarray, limit: int = 0) -> torch.Tensor:
    """Whole 256-char chunks of the first ``limit`` symbols (0: all)."""
    s = symbols[:limit] if limit else symbols
    n = (len(s) // CHUNK) * CHUNK
    return torch.from_numpy(s[:n].astype(np.int64).reshape(-1, CHUNK))


def lr_at(step: int, a) -> float:
    return schedule(step, a.lr, a.warmup, a.half_life, a.min_lr)


def load_start(path: str):
    """(config, model state, ema state, optimizer state or None, sampler state or None, history)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if "ema" in obj:  # full checkpoint
        return obj["config"], obj["model"], obj["ema"], obj.get("optimizer"), obj.get("sampler"), obj.get("history", {})
    if "state_dict" in obj:  # shipped weights
        meta = obj.get("meta", {})
        hist = {"step": int(meta.get("steps", 0)), "elapsed": float(meta.get("minutes", 0.0)) * 60.0,
                "train_chars": int(meta.get("train_chars", 0)), "commands": list(meta.get("commands", []))}
        return obj["config"], obj["state_dict"], obj["state_dict"], None, None, hist
    raise SystemExit(f"{path}: neither a checkpoint nor a weights file")


def ema_model(cfg: dict, ema_sd: dict) -> Denoiser:
    m = Denoiser(cfg)
    m.load_state_dict(ema_sd)
    return m


def evaluate(model: Denoiser, valid: torch.Tensor, steps_list=(None,), samples: int = 1) -> dict:
    """Held-out negative ELBO (bits/char) for each chain length (None: all T);
    lengths the model cannot run (more than its T steps) are left out."""
    out = {}
    for s in steps_list:
        if s is not None and s > model.T:
            continue
        key = "T" if s is None else str(s)
        out[key] = elbo_bpc(model, valid, steps=s, samples=samples, seed=1234)
    return out


# ---------------------------------------------------------------------------
def export(ckpt_path: str, weights_dir: str | None = None, eval_chars: int = 0, valid_path: str = VALID,
           threads: int = 1, note: str = "", command: str | None = None) -> dict:
    """Write the EMA weights of a checkpoint (or a weights file) as the shipped model, and its record."""
    from .. import registry

    cfg, _, ema_sd, _, _, hist = load_start(ckpt_path)
    ema_sd = registry.compact_state_dict(ema_sd)  # shipped as float16; the evaluation below is of exactly these
    torch.set_num_threads(threads)
    model = ema_model(cfg, ema_sd).eval()
    valid = chunks_of(load_symbols(valid_path), eval_chars)
    t0 = time.time()
    bpc = evaluate(model, valid, (None,) + CODING_STEPS)
    eval_s = time.time() - t0
    wdir = Path(weights_dir) if weights_dir else registry.WEIGHTS_DIR
    wdir.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in ema_sd.items():
        v = v.detach().cpu()
        state[k] = v.to(torch.float64).contiguous() if k == "alpha_bar" else v.contiguous()
    meta = {"steps": int(hist.get("step", 0)), "minutes": round(float(hist.get("elapsed", 0.0)) / 60.0, 2),
            "train_chars": int(hist.get("train_chars", 0)), "commands": list(hist.get("commands", []))}
    weights = {"format": "amdcompress-diffusion", "config": cfg, "state_dict": state, "meta": meta}
    wpath = wdir / f"{WEIGHTS_NAME}.pt"
    atomic_save(weights, wpath)
    sha = registry.sha256_file(wpath)
    bzip2 = 2.193
    auto_note = (f"valid ELBO {bpc['T']:.3f} bpc after {meta['minutes']} min of training"
                 + (" (far from converged: bzip2 gets 2.193 bpc on this text; the paper's model 1.72 after full training)"
                    if bpc["T"] > bzip2 else ""))
    rec = {
        "name": WEIGHTS_NAME,
        "arch": "multinomial-diffusion",
        "file": wpath.name,
        "sha256": sha,
        "bytes": wpath.stat().st_size,
        "params": int(sum(v.numel() for k, v in state.items() if v.is_floating_point() and k != "alpha_bar")),
        "config": cfg,
        "data": {"train": hist.get("data", TRAIN), "valid": valid_path,
                 "split": "text8 first 10M chars (train) / next 1M (valid); not the paper's 90M/5M/5M"},
        "steps": meta["steps"],
        "train_chars": meta["train_chars"],
        "minutes": meta["minutes"],
        "device": hist.get("device"),
        "threads": hist.get("threads"),
        "batch": hist.get("batch"),
        "train_chars_per_s": hist.get("chars_per_s"),
        "valid_chars": int(valid.numel()),
        "valid_elbo_bpc": round(bpc["T"], 4),
        "valid_elbo_bpc_is": (f"negative ELBO of the full T={cfg['T']}-step chain, bits/char, EMA weights, one "
                              "stratified step sample per 256-char chunk of valid.txt (unbiased estimate)"),
        "valid_elbo_bpc_by_coding_steps": {k: round(v, 4) for k, v in bpc.items() if k != "T"},
        "eval_seconds": round(eval_s, 1),
        "note": (note + " " if note else "") + auto_note,
        "commands": hist.get("commands", []),
        "export_command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(rec, wdir / f"{WEIGHTS_NAME}.json")
    return rec


def main(argv=None) -> int:
    a = parse_args(argv)
    command = "python -m amdcompress.models.diffusion.train " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    if a.export:
        if not a.resume:
            raise SystemExit("--export needs --resume CHECKPOINT")
        rec = export(a.resume, a.weights_dir, a.export_eval_chars, a.valid, a.threads, a.note, command)
        print(json.dumps({k: rec[k] for k in ("file", "sha256", "steps", "minutes", "valid_elbo_bpc",
                                              "valid_elbo_bpc_by_coding_steps")}))
        return 0

    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    if device.type == "cuda":  # training only: coding always runs float32 on CPU
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed + int(time.time()))
    out = Path(a.out)
    log = RunLog(out)

    opt_state = sampler_state = None
    history: dict = {}
    if a.resume:
        cfg, model_sd, ema_sd, opt_state, sampler_state, history = load_start(a.resume)
        history = dict(history) if isinstance(history, dict) else {}
    else:
        cfg = make_config(**json.loads(a.config))
        model_sd = ema_sd = None
    model = Denoiser(cfg)
    if model_sd is not None:
        model.load_state_dict(model_sd)
    model.to(device)
    ema = EMA(model, a.ema, frozen=("alpha_bar",))
    if ema_sd is not None:
        for k, v in ema_sd.items():
            ema.shadow[k].copy_(v.to(ema.shadow[k].dtype))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=a.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    S = a.loss_steps or model.T
    sampler = StepSampler(S, a.step_sampling)
    if sampler_state is not None:
        sampler.load_state_dict(sampler_state)
    step = int(history.get("step", 0))
    elapsed = float(history.get("elapsed", 0.0))
    seen = int(history.get("train_chars", 0))

    train = load_symbols(a.data)
    valid = chunks_of(load_symbols(a.valid), a.eval_chars).to(device)
    log(f"start: step {step}, {elapsed / 60:.1f} min trained so far, params {count_params(model):,}, "
        f"device {device}, threads {a.threads}, batch {a.batch}x{CHUNK}, config {json.dumps(cfg)}")
    log(f"command: {command}")
    history.update(data=a.data, device=str(device), threads=a.threads, batch=a.batch)
    history["commands"] = list(history.get("commands", [])) + [command]
    seen0, run_time = seen, 0.0

    def checkpoint() -> None:
        history.update(step=step, elapsed=elapsed, train_chars=seen)
        atomic_save({"config": cfg, "model": model.state_dict(), "ema": ema.shadow, "optimizer": opt.state_dict(),
                      "sampler": sampler.state_dict(), "history": history, "args": vars(a)}, out / "last.pt")

    def run_eval() -> dict:
        m = ema_model(cfg, ema.shadow).to(device)
        res = evaluate(m, valid, (None, a.eval_steps) if a.eval_steps else (None,))
        rec = {"step": step, "minutes": round(elapsed / 60, 2), "train_chars": seen,
               "valid_elbo_bpc": res["T"], **{f"valid_elbo_bpc_{k}": v for k, v in res.items() if k != "T"},
               "train_bpc": history.get("train_bpc"), "chars_per_s": history.get("chars_per_s")}
        log.metrics(rec)
        log("eval: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        return rec

    budget = a.minutes * 60.0
    t_start = time.time()
    last_ckpt = last_eval = time.time()
    bar = None
    if not a.no_tqdm:
        from tqdm import tqdm

        bar = tqdm(total=int(budget), unit="s", desc="train", file=sys.stderr, mininterval=2.0)
    n_train = len(train) - CHUNK
    run_bpc, run_n = 0.0, 0
    t_window, c_window = time.time(), 0
    model.train()
    try:
        while True:
            now = time.time()
            if now - t_start >= budget or (a.max_steps and step >= a.max_steps):
                break
            off = rng.integers(0, n_train, a.batch)
            x0 = torch.from_numpy(train[off[:, None] + np.arange(CHUNK)[None, :]].astype(np.int64)).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, a)
            loss, bpc = training_loss(model, x0, sampler, rng, a.loss_steps or None, a.aux_ce)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            ema.update(model, step)
            step += 1
            seen += x0.numel()
            c_window += x0.numel()
            run_bpc += float(bpc.mean())
            run_n += 1
            t1 = time.time()
            elapsed += t1 - now
            run_time += t1 - now
            if bar is not None:
                bar.n = min(int(t1 - t_start), int(budget))
                bar.set_postfix_str(f"step {step} bpc~{run_bpc / run_n:.3f}", refresh=False)
                bar.refresh() if step % 20 == 0 else None
            if t1 - t_window >= 60.0:
                history["chars_per_s"] = round(c_window / (t1 - t_window), 1)
                history["train_bpc"] = round(run_bpc / run_n, 4)
                log(f"step {step} train_bpc(ELBO est) {run_bpc / run_n:.4f} lr {lr_at(step, a):.2e} "
                    f"{history['chars_per_s']:.0f} chars/s")
                run_bpc, run_n, t_window, c_window = 0.0, 0, t1, 0
            if t1 - last_ckpt >= a.ckpt_minutes * 60.0:
                checkpoint()
                last_ckpt = t1
            if t1 - last_eval >= a.eval_minutes * 60.0:
                run_eval()
                last_eval = time.time()
    except KeyboardInterrupt:
        log("interrupted: saving a checkpoint")
    finally:
        if bar is not None:
            bar.close()
    if run_n:
        history["train_bpc"] = round(run_bpc / run_n, 4)
    if run_time > 0:
        history["chars_per_s"] = round((seen - seen0) / run_time, 1)
        log(f"this run: {seen - seen0:,} chars in {run_time:.0f} s of training steps: "
            f"{history['chars_per_s']:.0f} chars/s")
    checkpoint()
    rec = run_eval()
    history["valid_elbo_bpc"] = rec["valid_elbo_bpc"]
    checkpoint()
    log(f"done: step {step}, {elapsed / 60:.1f} min trained in total; checkpoint {out / 'last.pt'}")
    if a.export_at_end:
        r = export(str(out / "last.pt"), a.weights_dir, a.export_eval_chars, a.valid, a.threads, a.note, command)
        log(f"exported {r['file']} sha256 {r['sha256'][:16]}... valid ELBO {r['valid_elbo_bpc']} bpc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
