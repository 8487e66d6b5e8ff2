"""What every training script shares: weight averaging, the learning-rate
schedules, crash-safe checkpoints, the device choice, the run log, resuming,
and the wall-clock-budgeted loop of the text trainers.

Nothing here knows about a particular model; the ``train_*`` modules wire it.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


class EMA:
    """Exponential moving average of a model's floating-point state.

    ``shadow`` has the same keys as ``model.state_dict()``. Entries that are not
    floating point, and buffers named in ``frozen`` (e.g. precomputed
    schedules), are copied rather than averaged. The decay ramps up as
    ``(1 + step) / (10 + step)`` so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float, frozen: tuple[str, ...] = ()):
        self.decay = decay
        self.frozen = frozenset(frozen)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point and k not in self.frozen:
                self.shadow[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)


def lr_at(step: int, lr: float, warmup: int, half_life: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then exponential decay with the given
    half-life (in steps), never below ``min_lr`` after the warm-up."""
    value = lr * min(1.0, (step + 1) / max(1, warmup)) * 0.5 ** (step / half_life)
    return max(value, min_lr) if step >= warmup else value


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; any other name is taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def write_record(record: dict, path: Path) -> None:
    """Write a weights record as indented JSON, atomically."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


class RunLog:
    """Timestamped lines to stdout and ``out/log.txt``; metric dicts appended
    to ``out/metrics.jsonl``. Both files are appended to, so a resumed run
    continues the same log."""

    def __init__(self, out: Path):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self._log = open(out / "log.txt", "a")
        self._metrics = open(out / "metrics.jsonl", "a")

    def __call__(self, msg: str) -> None:
        line = f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def metrics(self, row: dict) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        self._log.close()
        self._metrics.close()


def load_text_symbols(path: str | Path, limit: int | None = None, dtype=np.uint8) -> np.ndarray:
    """The first ``limit`` bytes (all if None) of a text8-alphabet file as
    symbols 0..26 (space = 0).

    Raises ``SystemExit`` naming the file if any byte is outside the alphabet:
    training data must be clean text8, not silently filtered."""
    from amdcompress.codecs.textstream import split

    raw = np.fromfile(path, dtype=np.uint8, count=limit if limit else -1)
    sym, _ = split(raw)
    if len(sym) != len(raw):
        raise SystemExit(f"{path}: {len(raw) - len(sym)} bytes outside the text8 alphabet")
    return sym.astype(dtype)


def start_from(path: str | Path) -> tuple[dict, dict, dict | None, int, float, dict]:
    """What a training run resumes from: ``(config, float32 model state,
    optimizer state or None, step, elapsed seconds, the whole checkpoint)``,
    read once (for a weights file the last is ``{"runs": ...}``, the training
    history from its record).

    ``path`` is a full checkpoint (``model`` + ``opt``: everything continues) or
    a shipped weights file (``state_dict``, possibly float16: the weights
    continue with a fresh optimizer, and the step count and minutes come from
    the JSON record beside it, so the total training time stays right)."""
    path = Path(path)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "model" in ck and "opt" in ck:
        return ck["config"], ck["model"], ck["opt"], int(ck["step"]), float(ck["elapsed"]), ck
    if "state_dict" not in ck:
        raise SystemExit(f"{path}: neither a checkpoint nor a weights file")
    state = {k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    step, elapsed, runs = 0, 0.0, []
    rec = path.with_suffix(".json")
    if rec.is_file():
        meta = json.loads(rec.read_text())
        step, elapsed = int(meta.get("steps", 0)), float(meta.get("minutes", 0.0)) * 60.0
        runs = list(meta.get("training_runs", []))
    return ck["config"], state, None, step, elapsed, {"runs": runs}


def cosine_lr(step: int, frac: float, lr: float, warmup: int, final_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to
    ``final_frac * lr`` as ``frac`` (the share of the time budget used) goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac))))
    return lr * warm * (final_frac + (1 - final_frac) * cos)


def save_checkpoint(path: Path, kind: str, model: torch.nn.Module, opt, state: dict) -> None:
    """A full training checkpoint, written atomically: ``kind``, the model's
    ``config.to_dict()``, weights, optimizer, and ``state`` (step, elapsed, ...),
    in the layout :func:`start_from` resumes."""
    atomic_save({"kind": kind, "config": model.config.to_dict(), "model": model.state_dict(),
                 "opt": opt.state_dict(), **state}, Path(path))


class BudgetedTraining:
    """The loop the text trainers share: Adam steps until ``args.minutes`` of
    wall clock (resumed time included) are spent, so a run ends on time.

    Guarantees:

    * the learning rate follows :func:`cosine_lr` over the budget;
    * gradients are clipped to ``args.clip``;
    * a fresh run evaluates the untrained model first; every
      ``args.eval_minutes`` the held-out metric is evaluated and logged,
      and ``OUT/best.pt`` is written when it improves;
    * every ``args.ckpt_minutes`` ``OUT/last.pt`` is written;
    * at the end one more evaluation, ``last.pt``, and ``best.pt`` if it is the best.

    The run's history (command, start step and minutes, last evaluation of
    every run so far) travels inside each checkpoint as ``runs``, so an export
    records how the weights were made without parsing logs. ``resumed`` is what
    :func:`start_from` returned (weights are loaded here; a full checkpoint also
    restores the optimizer, best metric and history).

    ``args`` needs: out, command, minutes, lr, warmup, final_lr_frac, clip,
    eval_minutes, ckpt_minutes, log_every, resume; ``no_tqdm`` is optional.
    """

    def __init__(self, args, model: torch.nn.Module, opt, *, kind: str, metric: str, resumed=None):
        self.args, self.model, self.opt = args, model, opt
        self.kind, self.metric = kind, metric
        self.out = Path(args.out)
        self.log = RunLog(self.out)
        self.step, self.elapsed0, self.best = 0, 0.0, float("inf")
        self.runs: list[dict] = []
        self.saved: dict = {}  # the resumed checkpoint's extra state (e.g. data pointers)
        self.train_avg: float | None = None
        self.log(f"command: {args.command}")
        if resumed is not None:
            _, state, opt_state, step, elapsed, ck = resumed
            model.load_state_dict(state)
            if opt_state is not None:
                opt.load_state_dict(opt_state)
                self.best = float(ck.get("best", self.best))
                self.saved = ck
            self.runs = list(ck.get("runs", []))
            self.step, self.elapsed0 = step, elapsed
            self.log(f"resumed from {args.resume} at step {step}, {elapsed / 60:.1f} min")
        self.runs.append({"started": _dt.datetime.now().isoformat(timespec="seconds"), "command": args.command,
                          "from_step": self.step, "from_minutes": round(self.elapsed0 / 60, 2)})

    def _state(self, elapsed: float, extra: dict) -> dict:
        return {"step": self.step, "elapsed": elapsed, "best": self.best, "runs": self.runs,
                f"train_{self.metric}": self.train_avg, "args": vars(self.args), **extra}

    def _evaluate(self, evaluate, elapsed: float, final: bool = False) -> dict:
        ev = evaluate()
        self.model.train()
        vals = {f"valid_{k}": float(v) for k, v in ev.items() if k != "chars"}
        self.runs[-1]["last_eval"] = {"step": self.step, "minutes": round(elapsed / 60, 2), **vals}
        avg = float("nan") if self.train_avg is None else self.train_avg
        self.log(f"EVAL {'final ' if final else ''}step {self.step} min {elapsed / 60:.1f} "
                 + " ".join(f"{k} {v:.4f}" for k, v in vals.items()) + f" train_{self.metric} {avg:.4f}")
        self.log.metrics({"step": self.step, "minutes": round(elapsed / 60, 2), **vals,
                          f"train_{self.metric}": self.train_avg, "chars": ev.get("chars")})
        return ev

    def run(self, step_loss, evaluate, extra=dict) -> dict:
        """``step_loss()``: the loss of one batch (a scalar tensor to minimize);
        ``evaluate()``: held-out metrics, a dict with ``metric`` and ``chars``;
        ``extra()``: script state to store in checkpoints. Returns the final
        evaluation with ``steps`` and ``minutes``."""
        a, model, opt = self.args, self.model, self.opt
        budget = a.minutes * 60.0
        t0 = last_ck = last_ev = time.time()

        def elapsed() -> float:
            return self.elapsed0 + time.time() - t0

        from tqdm import tqdm

        bar = tqdm(total=int(budget), initial=int(min(budget, self.elapsed0)), unit="s", mininterval=30,
                   disable=getattr(a, "no_tqdm", False), file=sys.stderr)
        if self.step == 0:  # the starting point of the held-out curve
            self._evaluate(evaluate, 0.0)
        model.train()
        while elapsed() < budget:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(self.step, elapsed() / budget, a.lr, a.warmup, a.final_lr_frac)
            loss = step_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            self.step += 1
            lv = float(loss.detach())
            self.train_avg = lv if self.train_avg is None else 0.98 * self.train_avg + 0.02 * lv
            bar.n = int(min(budget, elapsed()))
            bar.set_postfix(step=self.step, **{self.metric: f"{self.train_avg:.3f}"}, refresh=False)
            bar.update(0)
            if self.step % a.log_every == 0:
                self.log(f"step {self.step} min {elapsed() / 60:.1f} lr {opt.param_groups[0]['lr']:.2e} "
                         f"train_{self.metric} {self.train_avg:.4f} gnorm {float(gn):.2f}")
            if time.time() - last_ev >= a.eval_minutes * 60:
                ev = self._evaluate(evaluate, elapsed())
                last_ev = time.time()
                if ev[self.metric] < self.best:
                    self.best = ev[self.metric]
                    save_checkpoint(self.out / "best.pt", self.kind, model, opt,
                                    self._state(elapsed(), {**extra(), "valid": ev}))
            if time.time() - last_ck >= a.ckpt_minutes * 60:
                save_checkpoint(self.out / "last.pt", self.kind, model, opt, self._state(elapsed(), extra()))
                last_ck = time.time()
        bar.close()
        ev = self._evaluate(evaluate, elapsed(), final=True)
        improved = ev[self.metric] <= self.best
        self.best = min(self.best, ev[self.metric])
        st = self._state(elapsed(), {**extra(), "valid": ev})
        save_checkpoint(self.out / "last.pt", self.kind, model, opt, st)
        if improved:
            save_checkpoint(self.out / "best.pt", self.kind, model, opt, st)
        self.log("done")
        self.log.close()
        return {**ev, "steps": self.step, "minutes": round(elapsed() / 60, 2)}


# --------------------------------------------------------------------------- text trainers: options and export
TEXT8_DIR = Path(os.environ.get("AMDCOMPRESS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "text8"
TEXT8_SPLIT = {"train": "text8 train.txt (first 10M chars of text8)", "valid": "text8 valid.txt (chars 10M-11M of text8)"}


def text_trainer_parser(description: str, *, out: str, weights: str, minutes: float, ckpt_minutes: float,
                        log_every: int):
    """The options of every :class:`BudgetedTraining` text trainer (data,
    budget, schedule, checkpoints, export); the script adds its model's own."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(TEXT8_DIR / "train.txt"))
    p.add_argument("--valid", default=str(TEXT8_DIR / "valid.txt"))
    p.add_argument("--out", default=out)
    p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget (includes resumed time)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", default=None, help="checkpoint (model, optimizer, schedule) or shipped weights file")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--final-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-chars", type=int, default=100_000)
    p.add_argument("--eval-minutes", type=float, default=5.0)
    p.add_argument("--ckpt-minutes", type=float, default=ckpt_minutes)
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--no-tqdm", action="store_true")
    p.add_argument("--export", default=None, help="export this checkpoint to --weights-out and exit")
    p.add_argument("--weights-out", default=str(Path(__file__).resolve().parent / "weights" / weights))
    p.add_argument("--export-valid-chars", type=int, default=0, help="0 = all of valid.txt")
    return p


def save_weights(path: Path, payload: dict) -> str:
    """Write a weights file atomically (creating its folder); its sha256 hex."""
    import hashlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(payload, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def text_weights_record(name: str, path: Path, sha: str, model: torch.nn.Module, ck: dict, args, **fields) -> dict:
    """The JSON record of an exported text model: what every text model's
    record holds (file, hash, config, size, data, steps, minutes, device, the
    commands and the run history from the checkpoint ``ck``) plus ``fields``."""
    import platform

    cargs = ck.get("args", {})
    return {
        "model": name, "file": Path(path).name, "sha256": sha, "weights_tag": sha[:8],
        "config": model.config.to_dict(), "params": sum(p.numel() for p in model.parameters()),
        "data": dict(TEXT8_SPLIT),
        "steps": ck.get("step"), "minutes": round(ck.get("elapsed", 0.0) / 60, 1),
        "device": "cpu (" + (platform.processor() or platform.machine()) + ")",
        "threads": cargs.get("threads"), "batch": cargs.get("batch"),
        **fields,
        "command": cargs.get("command"),
        "export_command": args.command,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "training_runs": ck.get("runs", []),
    }
