"""Train the Integer Discrete Flow on CIFAR-style uint8 batches.

    python -m amdcompress.models.idf.train --threads 1 --minutes 110
    python -m amdcompress.models.idf.train --resume runs/idf/last.pt --minutes 60
    python -m amdcompress.models.idf.train --resume runs/idf/last.pt --export
    python -m amdcompress.models.idf.train --resume MODEL_WITHOUT_CASCADE.pt --top-groups 4 \
        --train-only top_cascade. --lr 5e-4 --half-life 1e12 --minutes 14
    python -m amdcompress.models.idf.train --resume MODEL.pt --context-level 0 \
        --train-only contexts. --minutes 50

The last two forms grow a trained model by a top cascade
(:class:`.idf.TopCascade`) or by a stage-wise context prior for the half
factored out at level L (:class:`.idf.FactorContext`), zero-initialised, so
the model starts at the same likelihood, and train only the new part, the rest
fixed at its averaged weights: how the top cascade and the level-0 context of
idf-v3 were grown from idf-v1 (in the git history; the record lists the
commands) before all of it was trained together.

Loss: negative log-likelihood in bits per dimension (exact: the flow is an
integer bijection). Adamax with linear warmup (again after a resume whose
optimizer state cannot be restored) and exponential decay, an EMA of the
weights for evaluation and shipping, horizontal-flip augmentation.
Every ``--ckpt-minutes`` a full checkpoint (model, optimizer, EMA, step,
elapsed training seconds) goes to ``OUT/last.pt``; every ``--eval-minutes``
the EMA model's held-out bpd goes to ``OUT/log.txt`` and ``OUT/metrics.jsonl``.
``--resume`` takes a full checkpoint or a shipped weights file alone.
``--export`` writes ``models/weights/idf-v3.pt`` (EMA weights + config) and
its JSON record from the checkpoint given by ``--resume``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..datasets import shared_data_dir
from .network import IDF, count_params, make_config, to_input
from ..training import EMA, RunLog, atomic_save, pick_device, write_record
from ..training import lr_at as schedule

DATA = str(shared_data_dir() / "cifar10" / "train.npy")
TEST = str(shared_data_dir() / "cifar10" / "test.npy")
WEIGHTS_NAME = "idf-v3"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m amdcompress.models.idf.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="training batch (N, H, W, 3) uint8 .npy")
    p.add_argument("--test-data", default=TEST, help="held-out batch for evaluation")
    p.add_argument("--out", default="runs/idf", help="checkpoint and log folder")
    p.add_argument("--minutes", type=float, default=60.0, help="training time budget (this run)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many total steps (0: no limit)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=300, help="linear warmup steps")
    p.add_argument("--half-life", type=float, default=15000.0, help="lr halves every this many steps")
    p.add_argument("--min-lr", type=float, default=5e-5)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    p.add_argument("--clip", type=float, default=200.0, help="gradient-norm clip")
    p.add_argument("--config", default="{}", help="JSON overrides of the model config (new runs only)")
    p.add_argument("--top-groups", type=int, default=0,
                   help="give a resumed model a top cascade of this many channel groups (its new nets start at "
                        "zero, so the model's likelihood is unchanged at the start)")
    p.add_argument("--context-level", type=int, action="append", default=[],
                   help="give a resumed model a stage-wise context prior (FactorContext, starting at zero) for "
                        "the half factored out at this level; repeatable")
    p.add_argument("--train-only", default="",
                   help="train only parameters whose names start with this prefix (e.g. top_cascade.); "
                        "the rest stays fixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="full checkpoint or shipped weights file to start from")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--eval-minutes", type=float, default=10.0)
    p.add_argument("--eval-images", type=int, default=0, help="held-out images to evaluate (0: all)")
    p.add_argument("--export", action="store_true", help="export --resume's EMA weights to models/weights and exit")
    p.add_argument("--export-at-end", action="store_true",
                   help="after training, export if the held-out bpd beats the shipped record")
    p.add_argument("--weights-dir", default=None, help="where --export writes (default: models/weights)")
    p.add_argument("--channels-last", type=int, default=1, help="channels_last memory format (faster on CPU)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------


def lr_at(step: int, a, rewarm_from: int | None = None) -> float:
    """The schedule at global ``step``; scaled down linearly over ``a.warmup`` steps
    after ``rewarm_from`` (a resumed run whose optimizer starts fresh)."""
    lr = schedule(step, a.lr, a.warmup, a.half_life, a.min_lr)
    if rewarm_from is not None:
        lr *= min(1.0, (step - rewarm_from + 1) / max(1, a.warmup))
    return lr


@torch.no_grad()
def evaluate(model: IDF, images: np.ndarray, batch: int = 100, device="cpu", channels_last=False) -> float:
    model.eval()
    bits, dims = 0.0, 0
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, b = model(x)
        bits += float(b.double().sum())
        dims += x.numel()
    model.train()
    return bits / dims


def load_start(path: str, device):
    """(config, model state, ema state or None, optimizer state or None, step, elapsed, extra)."""
    obj = torch.load(path, map_location=device, weights_only=True)
    if "ema" in obj:  # full checkpoint
        return obj["config"], obj["model"], obj["ema"], obj.get("optimizer"), obj["step"], obj["elapsed"], obj
    if "state_dict" in obj:  # shipped weights (possibly stored as float16): train in float32
        meta = obj.get("meta", {})
        sd = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
        return obj["config"], sd, sd, None, int(meta.get("steps", 0)), float(meta.get("minutes", 0.0)) * 60.0, obj
    raise SystemExit(f"{path}: neither a checkpoint nor a weights file")


def load_grown(model: IDF, state: dict) -> None:
    """Load a state dict that may lack the parameters of parts added since
    (a top cascade, factor contexts); those keep their function-preserving
    initialisation."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing if not k.startswith(("top_cascade.", "contexts."))]
    if new or unexpected:
        raise SystemExit(f"checkpoint does not fit the model (missing {new[:3]}, unexpected {unexpected[:3]})")


def export(ckpt_path: str, weights_dir: Path | None = None, command: str | None = None) -> dict:
    """Write the EMA weights + config of a checkpoint as the shipped model, and its record."""
    from .. import registry

    obj = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "ema" not in obj:
        raise SystemExit(f"{ckpt_path}: not a full training checkpoint")
    wdir = Path(weights_dir) if weights_dir else registry.WEIGHTS_DIR
    wdir.mkdir(parents=True, exist_ok=True)
    entry = {"file": f"{WEIGHTS_NAME}.pt", "record": f"{WEIGHTS_NAME}.json"}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() if v.is_floating_point() else v.cpu().contiguous()
             for k, v in obj["ema"].items()}
    state = registry.compact_state_dict(state)  # shipped as float16; held-out bpd below is of exactly these
    meta = {"steps": int(obj["step"]), "minutes": round(obj["elapsed"] / 60.0, 2)}
    hist = dict(obj.get("history", {}))
    test_path = obj.get("args", {}).get("test_data", TEST)
    if Path(test_path).exists():  # the held-out bpd of exactly these weights
        model = IDF(obj["config"])
        model.load_state_dict(state)
        hist["test_bpd"] = evaluate(model, np.load(test_path))
    weights = {"format": "amdcompress-idf", "config": obj["config"], "state_dict": state, "meta": meta}
    wpath = wdir / entry["file"]
    atomic_save(weights, wpath)
    sha = registry.sha256_file(wpath)
    rec = {
        "name": WEIGHTS_NAME,
        "arch": "idf",
        "file": entry["file"],
        "sha256": sha,
        "bytes": wpath.stat().st_size,
        "params": int(sum(v.numel() for k, v in state.items() if v.is_floating_point())),
        "config": obj["config"],
        "data": {"train": obj.get("args", {}).get("data", DATA), "train_images": hist.get("train_images"),
                 "test": obj.get("args", {}).get("test_data", TEST), "augmentation": "horizontal flip"},
        "steps": meta["steps"],
        "minutes": meta["minutes"],
        "device": hist.get("device"),
        "threads": hist.get("threads"),
        "final_train_bpd": hist.get("train_bpd"),
        "final_test_bpd": hist.get("test_bpd"),
        "test_bpd_is": "EMA weights, model NLL on the held-out batch (not coded size)",
        "command": hist.get("command"),
        "earlier_commands": hist.get("earlier_commands", []),
        "export_command": command or " ".join(["python -m amdcompress.models.idf.train"] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(rec, wdir / entry["record"])
    return rec


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.export:
        if not a.resume:
            raise SystemExit("--export needs --resume CHECKPOINT")
        torch.set_num_threads(a.threads)
        rec = export(a.resume, a.weights_dir)
        print(json.dumps({k: rec[k] for k in ("file", "sha256", "steps", "minutes", "final_test_bpd")}))
        return 0

    torch.set_num_threads(a.threads)
    device = pick_device()
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed + int(time.time()))
    out = Path(a.out)
    log = RunLog(out)

    step, elapsed, opt_state, history = 0, 0.0, None, {}
    if a.resume:
        cfg, model_sd, ema_sd, opt_state, step, elapsed, obj = load_start(a.resume, device)
        history = obj.get("history", {}) if isinstance(obj.get("history"), dict) else {}
        if "state_dict" in obj:  # a shipped file: carry the commands of its record into this run's history
            rec_path = Path(a.resume).with_suffix(".json")
            if rec_path.exists():
                rec = json.loads(rec_path.read_text())
                history["earlier_commands"] = list(rec.get("earlier_commands", [])) + [rec.get("command")]
        elif history.get("command"):  # a checkpoint: the run that wrote it becomes an earlier command
            history["earlier_commands"] = list(history.get("earlier_commands", [])) + [history["command"]]
    else:
        cfg = make_config(**json.loads(a.config))
    if a.top_groups and a.top_groups != cfg.get("top_groups", 1):
        if not a.resume:
            raise SystemExit("--top-groups extends a resumed model; for a new run use --config")
        if cfg.get("top_groups", 1) > 1:
            raise SystemExit(f"{a.resume} already has a top cascade of {cfg['top_groups']} groups")
        cfg = dict(cfg, top_groups=a.top_groups, top_width=cfg.get("top_width", 64))
        opt_state = None  # the parameter list changed
    grow = [lev for lev in a.context_level if lev not in cfg.get("context_levels", [])]
    if grow:
        if not a.resume:
            raise SystemExit("--context-level extends a resumed model; for a new run use --config")
        if any(not 0 <= lev < cfg["levels"] for lev in grow):
            raise SystemExit(f"--context-level must lie in [0, {cfg['levels'] - 1}]")
        cfg = dict(cfg, context_levels=sorted(cfg.get("context_levels", []) + grow))
        opt_state = None  # the parameter list changed
    model = IDF(cfg).to(device)
    if a.resume:  # training only a part: the fixed rest takes the averaged (shipped) weights
        fixed = {k: v for k, v in ema_sd.items() if a.train_only and not k.startswith(a.train_only)}
        load_grown(model, {**model_sd, **fixed})
    ema = EMA(model, a.ema)
    if a.resume:
        ema.shadow.update({k: v.to(device).clone() for k, v in ema_sd.items() if k in ema.shadow})
    if a.train_only:
        for name, prm in model.named_parameters():
            prm.requires_grad_(name.startswith(a.train_only))
        if not any(prm.requires_grad for prm in model.parameters()):
            raise SystemExit(f"--train-only {a.train_only!r} matches no parameter")
    eval_model = IDF(cfg).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        eval_model = eval_model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adamax([prm for prm in model.parameters() if prm.requires_grad], lr=a.lr)
    restored = False
    if opt_state is not None:
        try:
            opt.load_state_dict(opt_state)
            restored = True
        except ValueError as e:
            log(f"optimizer state not restored ({e})")
    # A fresh Adamax makes its first step lr * sign(grad) on every weight: on a trained model that
    # kick costs more than it gains, so a resumed run without its optimizer state warms up again.
    rewarm_from = step if a.resume and not restored else None
    if rewarm_from is not None:
        log(f"fresh optimizer state: lr warms up again over {a.warmup} steps")

    train = np.load(a.data)
    test = np.load(a.test_data)
    if a.eval_images:
        test = test[: a.eval_images]
    history.update({
        "device": f"{device.type}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                                      f" ({platform.processor() or platform.machine()})"),
        "threads": a.threads, "train_images": int(len(train)),
        "command": "python -m amdcompress.models.idf.train " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    log(f"start: step {step}, {elapsed / 60:.1f} min trained, params {count_params(model)}, "
        f"device {device}, threads {a.threads}, batch {a.batch}, train {train.shape}, test {test.shape}")
    log("config " + json.dumps({k: v for k, v in cfg.items() if k != "perms"}))
    log("command " + history["command"])

    def checkpoint(path: Path) -> None:
        atomic_save({"config": cfg, "model": model.state_dict(), "ema": ema.shadow, "optimizer": opt.state_dict(),
                      "step": step, "elapsed": elapsed, "args": vars(a), "history": history}, path)

    def run_eval() -> float:
        eval_model.load_state_dict(ema.shadow)
        t0 = time.time()
        bpd = evaluate(eval_model, test, device=device, channels_last=bool(a.channels_last))
        history["test_bpd"] = bpd
        best = history.get("best_test_bpd")
        if best is None or bpd < best:
            history["best_test_bpd"] = bpd
            history["best_step"] = step
        rec = {"step": step, "minutes": round(elapsed / 60, 2), "train_bpd": history.get("train_bpd"),
               "test_bpd": bpd, "lr": lr_at(step, a, rewarm_from), "images_per_s": history.get("images_per_s"),
               "eval_s": round(time.time() - t0, 1), "time": _dt.datetime.now().isoformat(timespec="seconds")}
        log.metrics(rec)
        log(f"eval step {step} ({elapsed / 60:.1f} min): test bpd {bpd:.4f} (EMA), train bpd "
            f"{history.get('train_bpd', float('nan')):.4f}, {history.get('images_per_s', 0):.1f} img/s")
        return bpd

    from tqdm import tqdm

    budget = a.minutes * 60.0
    start_wall = time.time()
    last_ckpt = last_eval = time.time()
    run_avg, seen_t, seen_n = None, time.time(), 0
    bar = tqdm(total=int(budget), unit="s", mininterval=1.0 if sys.stderr.isatty() else 60.0,
               bar_format="{l_bar}{bar}| {n}/{total}s {postfix}", file=sys.stderr)
    model.train()
    n = len(train)
    perm, pos = rng.permutation(n), 0
    try:
        while time.time() - start_wall < budget and not (a.max_steps and step >= a.max_steps):
            t_step = time.time()
            if pos + a.batch > n:
                perm, pos = rng.permutation(n), 0
            idx = perm[pos : pos + a.batch]
            pos += a.batch
            xb = train[idx]
            flip = rng.random(len(idx)) < 0.5
            xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
            x = to_input(xb).to(device)
            if a.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = lr_at(step, a, rewarm_from)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, _ = model(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_([prm for prm in model.parameters() if prm.requires_grad], a.clip)
            if torch.isfinite(gn):
                opt.step()
                ema.update(model, step)
            step += 1
            dt = time.time() - t_step
            elapsed += dt
            lv = loss.item()
            run_avg = lv if run_avg is None else 0.99 * run_avg + 0.01 * lv
            history["train_bpd"] = run_avg
            seen_n += len(idx)
            if time.time() - seen_t > 30:
                history["images_per_s"] = seen_n / (time.time() - seen_t)
                seen_t, seen_n = time.time(), 0
            bar.n = int(time.time() - start_wall)
            bar.set_postfix_str(f"step {step} bpd {run_avg:.3f} lr {lr:.2e}", refresh=False)
            bar.update(0)
            if time.time() - last_ckpt > a.ckpt_minutes * 60:
                checkpoint(out / "last.pt")
                last_ckpt = time.time()
            if time.time() - last_eval > a.eval_minutes * 60:
                run_eval()
                last_eval = time.time()
    finally:
        bar.close()
        checkpoint(out / "last.pt")
    bpd = run_eval()
    checkpoint(out / "last.pt")
    log(f"done: step {step}, {elapsed / 60:.1f} min trained in total, test bpd {bpd:.4f}")
    if a.export_at_end:
        from .. import registry

        shipped = None
        if registry.available(WEIGHTS_NAME):
            try:
                shipped = registry.record(WEIGHTS_NAME).get("final_test_bpd")
            except Exception:
                shipped = None
        if shipped is None or bpd < shipped:
            rec = export(str(out / "last.pt"), a.weights_dir,
                         command=f"(--export-at-end of) {history.get('command')}")
            log(f"exported {rec['file']} sha256 {rec['sha256'][:16]} test bpd {bpd:.4f} (was {shipped})")
        else:
            log(f"not exported: test bpd {bpd:.4f} does not beat the shipped {shipped:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
