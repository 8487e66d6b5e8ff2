"""The one training harness every model's ``train.py`` runs on.

A model's script describes itself as a :class:`Trainer` (its options, config,
network, optimizer, batches, held-out evaluation and shipped-weights payload)
and calls :func:`main`; everything else is here, once:

* :func:`start_from` reads what a run starts from: a checkpoint of any layout
  written so far (this harness's; the older IDF/diffusion one with ``ema``,
  ``optimizer`` and ``history``; the older text one with ``opt`` and ``runs``)
  or a shipped weights file (float16 ``state_dict`` + ``meta``), whose JSON
  record beside it supplies steps, minutes and the training history;
* :class:`BudgetedTraining` is the loop: learning rate (exponential decay with
  a floor, or cosine over the run; linear warm-up, again after a resume whose
  optimizer state cannot be restored), gradient clipping, an EMA of the weights
  (evaluated and shipped), ``--train-only PREFIX``, ``--max-steps``, a held-out
  evaluation every ``--eval-minutes`` (``OUT/log.txt``, ``OUT/metrics.jsonl``,
  ``OUT/best.pt``), a checkpoint every ``--ckpt-minutes`` (``OUT/last.pt``),
  and a wall-clock budget (``--minutes``, this run) so a run ends on time;
* :func:`export` writes ``WEIGHTS_DIR/NAME.pt`` and its record ``NAME.json``
  (``--weights-name``; held-out numbers of exactly the shipped weights, the full
  history of commands and evaluations), and never replaces an existing weights
  file unless told to (``--replace``): ``.amd`` files need the exact weights
  they were made with.

Checkpoint layout (``LAYOUT``): ``layout, kind, config, model, ema (or None),
optimizer, trainable (names of the trained parameters), step, elapsed
(training seconds, evaluations excluded), seen (training images or chars,
cumulative), best, train_metric, runs, args, extra`` (the script's own state,
e.g. data pointers). ``runs`` lists every run that led to the weights: its
command, start (step, minutes, seen), device, data, and its evaluations.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .datasets import shared_data_dir

LAYOUT = "amdcompress-checkpoint-2"
TEXT8_DIR = shared_data_dir() / "text8"


# --------------------------------------------------------------------------- small parts
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

    @torch.no_grad()
    def load(self, state: dict) -> None:
        """Take the averages in ``state`` for the keys both have (parts grown
        since keep the model's values)."""
        for k, v in state.items():
            if k in self.shadow:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the averaged weights inside the ``with`` block."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(saved)


def lr_at(step: int, lr: float, warmup: int, half_life: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then exponential decay with the given
    half-life (in steps), never below ``min_lr`` after the warm-up."""
    value = lr * min(1.0, (step + 1) / max(1, warmup)) * 0.5 ** (step / half_life)
    return max(value, min_lr) if step >= warmup else value


def cosine_lr(step: int, frac: float, lr: float, warmup: int, final_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to
    ``final_frac * lr`` as ``frac`` (the share of the time budget used) goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac))))
    return lr * warm * (final_frac + (1 - final_frac) * cos)


def schedule_lr(args, step: int, frac: float = 0.0, rewarm_from: int | None = None) -> float:
    """The learning rate of ``args`` (``--schedule exp``: :func:`lr_at`; ``cosine``:
    :func:`cosine_lr` at ``frac`` of the time budget; ``anneal``: the same cosine
    over this run's budget alone, a cool-down for a resumed run) at global ``step``, scaled
    down linearly over ``--warmup`` steps after ``rewarm_from`` (a resumed run
    whose optimizer starts fresh: a fresh Adam(ax)'s first step moves every
    weight by lr * sign(grad), which costs a trained model more than it gains)."""
    if getattr(args, "schedule", "cosine") == "exp":
        value = lr_at(step, args.lr, args.warmup, args.half_life, args.min_lr)
    elif args.schedule == "anneal":  # ``frac`` is the share of this run's budget alone
        value = cosine_lr(step, frac, args.lr, 0, getattr(args, "final_lr_frac", 0.05))
    else:
        value = cosine_lr(step, frac, args.lr, args.warmup, getattr(args, "final_lr_frac", 0.05))
    if rewarm_from is not None:
        value *= min(1.0, (step - rewarm_from + 1) / max(1, args.warmup))
    return value


def schedule_frac(args, before: float, ran: float, budget: float) -> float:
    """The share of the time budget a cosine schedule has used after ``ran``
    seconds of this run: ``cosine`` counts the ``before`` seconds of earlier
    runs in both, ``anneal`` this run's ``budget`` alone."""
    if getattr(args, "schedule", "cosine") == "anneal":
        before = 0.0
    return (before + ran) / max(1e-9, before + budget)


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_weights(path: Path, payload: dict) -> str:
    """Write a weights file atomically (creating its folder); its sha256 hex."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(payload, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_record(record: dict, path: Path) -> None:
    """Write a weights record as indented JSON, atomically."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; any other name is taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()})"


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


# --------------------------------------------------------------------------- what a run starts from
class Start(NamedTuple):
    """What a run resumes from (:func:`start_from`). The first six fields keep
    the order of the tuple the text trainers used to unpack."""

    config: dict
    model: dict                        # float32 state (float16 of a weights file converted)
    optimizer: dict | None = None      # None: the optimizer starts fresh (and the lr warms up again)
    step: int = 0
    elapsed: float = 0.0               # training seconds so far
    checkpoint: dict | None = None     # the file as read
    ema: dict | None = None            # averaged weights (a weights file's own weights)
    seen: int | None = None            # training images/chars so far; None: not recorded
    best: float = math.inf             # best held-out metric so far
    runs: list | tuple = ()            # the training history (see the module docstring)
    extra: dict | None = None          # the script's own state (data pointers, step sampler)
    args: dict | None = None           # the options of the run that wrote it
    train_metric: float | None = None  # its running training loss
    trainable: list | None = None      # names of the parameters its optimizer trained


_SEEN_KEYS = ("images_seen", "chars_seen", "train_chars")
_HELDOUT_PREFIXES = ("valid_", "test_", "final_", "train_100k")


def _seen_of(d: dict) -> int | None:
    for k in _SEEN_KEYS:
        if d.get(k) is not None:
            return int(d[k])
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def start_from(path: str | Path) -> Start:
    """Read a checkpoint (any layout so far) or a shipped weights file once.

    A checkpoint continues everything (weights, EMA, optimizer, step, minutes,
    images/chars seen, best, history, the script's state). A weights file
    continues its weights (as weights and EMA) with a fresh optimizer; steps,
    minutes and seen come from its ``meta`` or the JSON record beside it, and
    the record's history (``training_runs``, ``commands``, or ``command`` +
    ``earlier_commands``) becomes the runs, the last one marked with the
    export and its held-out numbers."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "config" not in ck:
        raise SystemExit(f"{path}: neither a training checkpoint nor a weights file")
    if ck.get("layout") == LAYOUT:
        return Start(ck["config"], ck["model"], ck.get("optimizer"), int(ck["step"]), float(ck["elapsed"]), ck,
                     ck.get("ema"), ck.get("seen"), float(ck.get("best", math.inf)), list(ck.get("runs") or []),
                     dict(ck.get("extra") or {}), dict(ck.get("args") or {}), ck.get("train_metric"),
                     ck.get("trainable"))
    if "state_dict" in ck:
        return _from_weights(path, ck)
    if "model" in ck and ("optimizer" in ck or "opt" in ck):
        return _from_old_checkpoint(path, ck)
    raise SystemExit(f"{path}: neither a training checkpoint nor a weights file")


def _from_weights(path: Path, ck: dict) -> Start:
    meta = ck.get("meta") or {}
    rec = _read_json(path.with_suffix(".json"))
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in ck["state_dict"].items()}
    step = int(meta.get("steps", rec.get("steps")) or 0)
    elapsed = float(meta.get("minutes", rec.get("minutes")) or 0.0) * 60.0
    runs = _runs_of_record(rec, meta, path)
    seen = _seen_of(meta)
    return Start(ck["config"], state, None, step, elapsed, {"runs": runs}, state,
                 seen if seen is not None else _seen_of(rec), math.inf, runs, {}, {})


def _runs_of_record(rec: dict, meta: dict, path: Path) -> list[dict]:
    """The history in a weights record of any layout so far, its last run marked
    with that export (name, hash, held-out numbers)."""
    if isinstance(rec.get("training_runs"), list) and rec["training_runs"]:
        runs = [dict(r) for r in rec["training_runs"]]
    else:
        cmds = rec.get("commands") or meta.get("commands") or [*(rec.get("earlier_commands") or []), rec.get("command")]
        runs = [{"command": c} for c in cmds if c]
    if runs and rec:
        runs[-1]["export"] = {"name": rec.get("name", path.stem), "sha256": rec.get("sha256"),
                              "steps": rec.get("steps"), "minutes": rec.get("minutes"),
                              **{k: v for k, v in rec.items() if k.startswith(_HELDOUT_PREFIXES)}}
    return runs


def _from_old_checkpoint(path: Path, ck: dict) -> Start:
    """The layouts before this harness: the text trainers' (``opt``, ``runs``,
    data pointers at the top) and the IDF/diffusion one (``ema``,
    ``optimizer``, ``history`` with the commands; the diffusion step sampler
    at the top, its step/elapsed/chars in ``history``)."""
    hist = ck["history"] if isinstance(ck.get("history"), dict) else {}
    args = dict(ck.get("args") or {})
    step = int(ck.get("step", hist.get("step", 0)))
    elapsed = float(ck.get("elapsed", hist.get("elapsed", 0.0)))
    known = {"kind", "config", "model", "opt", "optimizer", "ema", "step", "elapsed", "best", "runs", "args",
             "history", "valid"}
    extra = {k: v for k, v in ck.items() if k not in known and not k.startswith("train_")}
    if "runs" in ck:
        runs = [dict(r) for r in ck["runs"]]
        train_metric = next((v for k, v in ck.items() if k.startswith("train_")), None)
    else:
        runs = _runs_of_history(path, hist, step, args)
        train_metric = hist.get("train_bpd", hist.get("train_bpc"))
    best = ck.get("best", hist.get("best_test_bpd"))
    seen = _seen_of(hist)
    if seen is None and "train_images" in hist and args.get("batch") and runs:  # the IDF's: one image per batch row
        seen = step * int(args["batch"])
        runs[-1]["images_seen_is"] = "estimated as steps x batch (not counted then)"
    return Start(ck["config"], ck["model"], ck.get("optimizer", ck.get("opt")), step, elapsed, ck, ck.get("ema"),
                 seen, math.inf if best is None else float(best), runs, extra, args, train_metric)


def _runs_of_history(path: Path, hist: dict, step: int, args: dict) -> list[dict]:
    """Runs from an old ``history`` (``command`` + ``earlier_commands``, or
    ``commands``). Where the first of them resumed from a weights file whose
    record lists exactly the earlier commands, that record's history (with its
    held-out numbers) stands for them, and the evaluations of the last run are
    read back from ``metrics.jsonl`` beside the checkpoint."""
    cmds = [c for c in (hist.get("commands") or [*(hist.get("earlier_commands") or []), hist.get("command")]) if c]
    if not cmds:
        return []
    runs = [{"command": c} for c in cmds[:-1]]
    current = {"command": cmds[-1]}
    rec, rec_path = _record_of(args.get("resume"))
    if rec and [r.get("command") for r in _runs_of_record(rec, {}, rec_path)] == cmds[:-1]:
        runs = _runs_of_record(rec, {}, rec_path)
        current.update(from_step=int(rec.get("steps") or 0), from_minutes=rec.get("minutes"))
        evals = _old_evals(path.parent / "metrics.jsonl", current["from_step"], step)
        if evals:
            current["evals"] = evals
    for k in ("device", "threads", "batch"):
        if hist.get(k, args.get(k)) is not None:
            current[k] = hist.get(k, args.get(k))
    if "train_images" in hist:
        current["data"] = {"train": args.get("data"), "train_images": hist["train_images"],
                           "test": args.get("test_data"), "augmentation": "horizontal flip"}
    last = {k: hist[k] for k in ("test_bpd", "best_test_bpd", "best_step", "valid_elbo_bpc") if k in hist}
    if current.get("evals") or last:
        current["last_eval"] = current["evals"][-1] if current.get("evals") else last
    return runs + [current]


def _record_of(resume) -> tuple[dict, Path | None]:
    """The JSON record of the weights file an old run resumed from, if found."""
    if not resume or not str(resume).endswith(".pt"):
        return {}, None
    from . import registry

    for p in (Path(resume), registry.WEIGHTS_DIR / Path(resume).name):
        rec = _read_json(p.with_suffix(".json"))
        if rec:
            return rec, p
    return {}, None


def _eval_entry(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if k in ("step", "minutes") or k.endswith("_seen")
            or (k.startswith(("valid_", "test_")) and isinstance(v, (int, float)))}


def _old_evals(metrics: Path, after_step: int, to_step: int) -> list[dict]:
    rows = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and after_step < int(row.get("step", -1)) <= to_step:
                    rows.append(_eval_entry(row))
    return rows


# --------------------------------------------------------------------------- the loop
def _load_strict(model: torch.nn.Module, state: dict) -> None:
    model.load_state_dict(state)


def _config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


class BudgetedTraining:
    """The training loop of every model (see the module docstring).

    ``opt`` is an optimizer, or a function of the trained parameters that
    makes one (so ``--train-only`` leaves the rest out of it). ``resumed`` is
    what :func:`start_from` returned (or its first six fields as a tuple): the
    weights are loaded here with ``load`` (default: strict), the optimizer
    state when its parameters still match, the EMA, step, minutes, seen,
    best, history, and the script's saved state (``self.saved``).
    ``metric``: the key of ``evaluate()``'s dict to minimize; it is logged as
    ``{heldout}_{metric}`` (``train_{metric}`` for the training average);
    ``unit``: what ``seen`` counts (``images`` or ``chars``).

    ``args`` needs: out, command, minutes, lr, warmup, clip, eval_minutes,
    ckpt_minutes, log_every, and the schedule's options (``schedule`` exp:
    half_life, min_lr; cosine: final_lr_frac); optional: max_steps, ema,
    train_only, no_tqdm, resume, threads, batch.
    """

    def __init__(self, args, model: torch.nn.Module, opt, *, kind: str, metric: str, resumed=None,
                 heldout: str = "valid", unit: str = "chars", load: Callable | None = None,
                 ema_frozen: tuple[str, ...] = (), config=None):
        self.args, self.model, self.kind, self.metric = args, model, kind, metric
        self.heldout, self.unit = heldout, unit
        self.config = _config_dict(config if config is not None else model.config)
        self.device = next(model.parameters()).device
        self.out = Path(args.out)
        self.log = RunLog(self.out)
        self.log(f"command: {args.command}")
        start = resumed if resumed is None or isinstance(resumed, Start) else Start(*resumed)
        self.step, self.elapsed0, self.seen, self.best = 0, 0.0, 0, math.inf
        self.runs: list[dict] = []
        self.saved: dict = {}
        self.train_avg: float | None = None
        self.lr_now = 0.0
        train_only = getattr(args, "train_only", "") or ""
        if start is not None:
            state = dict(start.model)
            if train_only and start.ema is not None:  # the fixed rest takes the averaged weights
                state.update({k: v for k, v in start.ema.items() if not k.startswith(train_only)})
            (load or _load_strict)(model, state)
            self.step, self.elapsed0, self.seen = int(start.step), float(start.elapsed), start.seen
            self.best, self.saved, self.train_avg = float(start.best), dict(start.extra or {}), start.train_metric
            self.runs = [dict(r) for r in start.runs]
            self.log(f"resumed from {getattr(args, 'resume', None)} at step {self.step}, "
                     f"{self.elapsed0 / 60:.1f} min" + (f", {self.seen:,} {unit} seen" if self.seen else ""))
        self.elapsed = self.elapsed0
        named = list(model.named_parameters())
        if train_only:
            for name, prm in named:
                prm.requires_grad_(name.startswith(train_only))
            if not any(prm.requires_grad for _, prm in named):
                raise SystemExit(f"--train-only {train_only!r} matches no parameter")
        self.trainable = [name for name, prm in named if prm.requires_grad]
        self.params = [prm for _, prm in named if prm.requires_grad]
        self.opt = opt if isinstance(opt, torch.optim.Optimizer) else opt(self.params)
        restored = False
        if start is not None and start.optimizer is not None:
            if start.trainable is not None and list(start.trainable) != self.trainable:
                self.log("optimizer state not restored (other parameters are trained now)")
            else:
                try:
                    self.opt.load_state_dict(start.optimizer)
                    restored = True
                except ValueError as e:
                    self.log(f"optimizer state not restored ({e})")
        self.rewarm_from = self.step if start is not None and not restored else None
        if self.rewarm_from is not None:
            self.log(f"fresh optimizer state: lr warms up again over {args.warmup} steps")
        decay = getattr(args, "ema", 0.0) or 0.0
        self.ema = EMA(model, decay, ema_frozen) if decay > 0 else None
        if self.ema is not None and start is not None and start.ema is not None:
            self.ema.load(start.ema)
        self.runs.append({"started": _dt.datetime.now().isoformat(timespec="seconds"), "command": args.command,
                          "from_step": self.step, "from_minutes": round(self.elapsed0 / 60, 2),
                          f"from_{unit}_seen": self.seen, "device": describe_device(self.device),
                          "threads": getattr(args, "threads", None), "batch": getattr(args, "batch", None)})

    # -- pieces of the loop --------------------------------------------------------
    def describe_data(self, **fields) -> None:
        """What this run trains and evaluates on (kept in its history and the export record)."""
        self.runs[-1]["data"] = fields

    def lr(self, frac: float) -> float:
        return schedule_lr(self.args, self.step, frac, self.rewarm_from)

    def save(self, name: str, extra: Callable[[], dict]) -> None:
        atomic_save({"layout": LAYOUT, "kind": self.kind, "config": self.config, "model": self.model.state_dict(),
                     "ema": self.ema.shadow if self.ema is not None else None, "optimizer": self.opt.state_dict(),
                     "trainable": self.trainable, "step": self.step, "elapsed": self.elapsed, "seen": self.seen,
                     "best": self.best, "train_metric": self.train_avg, "runs": self.runs, "args": vars(self.args),
                     "extra": extra()}, self.out / name)

    def _evaluate(self, evaluate, extra, final: bool = False) -> dict:
        t0 = time.time()
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            ev = evaluate()
        self.model.train()
        vals = {f"{self.heldout}_{k}": float(v) for k, v in ev.items() if k not in ("chars", "images")}
        run_s = self.elapsed - self.elapsed0
        row = {"step": self.step, "minutes": round(self.elapsed / 60, 3), f"{self.unit}_seen": self.seen, **vals,
               f"train_{self.metric}": self.train_avg, "lr": self.lr_now,
               f"{self.heldout}_{self.unit}": ev.get("chars", ev.get("images")),
               f"{self.unit}_per_s": round((self.seen - self._seen_run0) / run_s, 1) if run_s > 0 else None,
               "eval_s": round(time.time() - t0, 1), "time": _dt.datetime.now().isoformat(timespec="seconds")}
        self.log.metrics(row)
        entry = _eval_entry(row)
        self.runs[-1].setdefault("evals", []).append(entry)
        self.runs[-1]["last_eval"] = entry
        avg = float("nan") if self.train_avg is None else self.train_avg
        self.log(f"EVAL {'final ' if final else ''}step {self.step} min {self.elapsed / 60:.1f} "
                 + " ".join(f"{k} {v:.4f}" for k, v in vals.items()) + f" train_{self.metric} {avg:.4f}"
                 + (" (EMA weights)" if self.ema is not None else ""))
        value = float(ev[self.metric])
        if value < self.best or (final and value <= self.best):
            self.best = value
            self.save("best.pt", extra)
        return ev

    def run(self, step_loss: Callable, evaluate: Callable[[], dict], extra: Callable[[], dict] = dict) -> dict:
        """``step_loss()``: one batch's loss to minimize, or ``(loss, items)`` or
        ``(loss, items, training metric)`` (items: images/chars in the batch);
        ``evaluate()``: held-out metrics, a dict with ``metric`` (and the count
        ``chars`` or ``images``), run on the EMA weights when there are any;
        ``extra()``: script state to store in checkpoints. Returns the final
        evaluation with ``steps``, ``minutes`` and ``seen``."""
        a, model, opt = self.args, self.model, self.opt
        budget = a.minutes * 60.0
        max_steps = getattr(a, "max_steps", 0) or 0
        t0 = last_ck = last_ev = time.time()
        self._seen_run0 = self.seen or 0

        def frac() -> float:
            return schedule_frac(a, self.elapsed0, time.time() - t0, budget)

        from tqdm import tqdm

        bar = tqdm(total=int(budget), unit="s", mininterval=1.0 if sys.stderr.isatty() else 60.0,
                   disable=getattr(a, "no_tqdm", False), file=sys.stderr,
                   bar_format="{l_bar}{bar}| {n}/{total}s {postfix}")
        if self.step == 0:  # the starting point of the held-out curve
            self._evaluate(evaluate, extra)
        model.train()
        try:
            while time.time() - t0 < budget and not (max_steps and self.step >= max_steps):
                ts = time.time()
                self.lr_now = self.lr(frac())
                for group in opt.param_groups:
                    group["lr"] = self.lr_now
                out = step_loss()
                loss, items, value = (*out, None, None)[:3] if isinstance(out, tuple) else (out, None, None)
                items = int(items or 0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(self.params, a.clip)
                if torch.isfinite(gn):
                    opt.step()
                    if self.ema is not None:
                        self.ema.update(model, self.step)
                else:
                    self.log(f"step {self.step}: gradient norm {float(gn)}, update skipped")
                if self.seen is None:  # a start that did not count: estimated from this batch
                    self.seen = self._seen_run0 = self.step * int(items)
                    self.runs[-1][f"from_{self.unit}_seen"] = self.seen
                    self.runs[-1][f"from_{self.unit}_seen_is"] = "estimated: steps x this run's batch"
                self.step += 1
                self.seen += int(items)
                self.elapsed += time.time() - ts
                v = float(loss.detach()) if value is None else float(value)
                if math.isfinite(v):
                    self.train_avg = v if self.train_avg is None else 0.98 * self.train_avg + 0.02 * v
                bar.n = int(min(budget, time.time() - t0))
                bar.set_postfix_str(f"step {self.step} {self.metric} {self.train_avg or float('nan'):.3f} "
                                    f"lr {self.lr_now:.2e}", refresh=False)
                bar.update(0)
                if self.step % a.log_every == 0:
                    self.log(f"step {self.step} min {self.elapsed / 60:.1f} lr {self.lr_now:.2e} "
                             f"train_{self.metric} {self.train_avg or float('nan'):.4f} gnorm {float(gn):.2f}")
                if time.time() - last_ev >= a.eval_minutes * 60:
                    self._evaluate(evaluate, extra)
                    last_ev = time.time()
                if time.time() - last_ck >= a.ckpt_minutes * 60:
                    self.save("last.pt", extra)
                    last_ck = time.time()
        except KeyboardInterrupt:
            self.log("interrupted: checkpoint and final evaluation follow")
        except BaseException:
            self.save("last.pt", extra)
            self.log(f"stopped by an error at step {self.step}; checkpoint {self.out / 'last.pt'}")
            raise
        finally:
            bar.close()
        self.save("last.pt", extra)  # before the final evaluation, which may take a while
        ev = self._evaluate(evaluate, extra, final=True)
        self.save("last.pt", extra)
        self.log(f"done: step {self.step}, {self.elapsed / 60:.1f} min trained in total, "
                 f"{self.seen} {self.unit} seen; checkpoint {self.out / 'last.pt'}")
        self.log.close()
        return {**ev, "steps": self.step, "minutes": round(self.elapsed / 60, 2), "seen": self.seen}


# --------------------------------------------------------------------------- a model's trainer
class Trainer:
    """What a model's ``train.py`` supplies; :func:`main` does the rest.

    Class attributes: ``prog`` (the command), ``description``, ``kind`` (the
    model, in checkpoints and records), ``weights_name`` (the default
    ``--weights-name``: the shipped one), ``weights_format``, ``metric`` (the
    key of ``evaluate()`` to minimize), ``heldout`` (its prefix), ``unit``,
    ``record_metric`` (the record's held-out number that ``--export-at-end``
    must improve), ``heldout_flag`` / ``heldout_data`` (the held-out data
    option and default), ``ema_frozen``, ``defaults`` for the common options
    and ``options`` (with ``helps``) for the model's own (:func:`parser`;
    both merged along the class hierarchy). ``prog`` and ``description`` come
    from the defining ``train`` module, the default ``--out`` is
    ``runs/<model package>``."""

    prog = description = kind = weights_name = weights_format = metric = record_metric = ""
    heldout, unit, heldout_flag, heldout_data = "valid", "chars", "--valid", ""
    ema_frozen: tuple[str, ...] = ()
    defaults: dict = {}
    options: dict = {}  # the model's own simple options: {name: default} (a tuple: the choices, first the default)
    helps: dict = {}

    def __init_subclass__(cls, **kwargs):
        """``prog`` and ``description`` from the ``train`` module that defines the class."""
        super().__init_subclass__(**kwargs)
        module = sys.modules[cls.__module__]
        name = cls.__module__ if cls.__module__ != "__main__" else getattr(module.__spec__, "name", "__main__")
        if name.endswith(".train"):
            cls.prog, cls.description = f"python -m {name}", module.__doc__

    def main(self, argv=None) -> int:
        """The script's entry point (:func:`main`)."""
        return main(self, argv)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """The model's options beyond ``options``."""

    def new_config(self, args) -> dict:
        raise NotImplementedError

    def config(self, args, start: Start | None) -> dict:
        """The config to train: a resumed one (which the script may grow), or a new one."""
        return dict(start.config) if start is not None else self.new_config(args)

    def build(self, config: dict, args=None) -> torch.nn.Module:
        raise NotImplementedError

    def load(self, model: torch.nn.Module, state: dict) -> None:
        model.load_state_dict(state)

    def optimizer(self, params: list, args) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99))

    def prepare(self, args, model: torch.nn.Module, loop: BudgetedTraining):
        """Data and closures: ``(step_loss, evaluate, extra)`` for :meth:`BudgetedTraining.run`."""
        raise NotImplementedError

    def weights(self, state: dict, model: torch.nn.Module, args) -> dict:
        """The weights file's payload besides format, config and meta: by default
        the state as float16 (schedules and integers kept)."""
        from .registry import compact_state_dict

        return {"state_dict": compact_state_dict(state)}

    def export_fields(self, model: torch.nn.Module, args, start: Start, payload: dict) -> dict:
        """Record fields: the held-out numbers of ``model`` (exactly the shipped
        weights), including ``record_metric``."""
        raise NotImplementedError


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written; option defaults shown."""


def parser(trainer: Trainer) -> argparse.ArgumentParser:
    """The options every trainer shares (defaults from ``trainer.defaults``) and the model's own."""
    p = argparse.ArgumentParser(prog=trainer.prog, description=trainer.description, formatter_class=_Help)
    g = p.add_argument_group("run")
    g.add_argument("--data", help="training data")
    g.add_argument(trainer.heldout_flag, dest="valid", default=None, metavar="PATH",
                   help=f"held-out data (default {trainer.heldout_data}; --export: the checkpoint's)")
    g.add_argument("--out", help="checkpoint and log folder")
    g.add_argument("--resume", help="checkpoint (any layout so far) or shipped weights file to start from")
    g.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this run")
    g.add_argument("--max-steps", type=int, default=0, help="stop at this many steps in total (0: no limit)")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    g.add_argument("--device", default="cpu", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("optimization")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--schedule", choices=("exp", "cosine", "anneal"), default="exp",
                   help="exp: halves every --half-life steps, floor --min-lr; cosine: to --final-lr-frac x lr "
                        "at the end of this run (counting the time trained before); anneal: cosine from --lr "
                        "to --final-lr-frac x lr over this run's --minutes alone (a cool-down after a resume)")
    g.add_argument("--warmup", type=int, default=300,
                   help="linear warm-up steps (again after a resume without optimizer state)")
    g.add_argument("--half-life", type=float, default=15000.0)
    g.add_argument("--min-lr", type=float, default=5e-5)
    g.add_argument("--final-lr-frac", type=float, default=0.05)
    g.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: none); evaluated and shipped")
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    g.add_argument("--train-only", default="", metavar="PREFIX",
                   help="train only the parameters whose names start with PREFIX (the rest stays fixed, at its "
                        "averaged weights when resuming)")
    g = p.add_argument_group("checkpoints and evaluation")
    g.add_argument("--ckpt-minutes", type=float, default=5.0)
    g.add_argument("--eval-minutes", type=float, default=10.0)
    g.add_argument("--log-every", type=int, default=100, help="log a line every this many steps")
    g.add_argument("--no-tqdm", action="store_true")
    g = p.add_argument_group("export (weights + JSON record)")
    g.add_argument("--export", nargs="?", const="", default=None, metavar="CKPT",
                   help="export CKPT (or --resume's) and exit")
    g.add_argument("--export-at-end", action="store_true",
                   help="after training, export OUT/best.pt if its held-out number beats --weights-name's record")
    g.add_argument("--weights-name", default=trainer.weights_name, help=f"default {trainer.weights_name}")
    g.add_argument("--weights-dir", default=None, help="default models/weights")
    g.add_argument("--replace", action="store_true",
                   help="allow replacing an existing weights file (.amd files made with it then fail to decode)")
    g.add_argument("--note", default="", help="free text for the record")
    g = p.add_argument_group("model")
    for cls in reversed(type(trainer).__mro__):
        for name, default in vars(cls).get("options", {}).items():
            flag, helps = "--" + name.replace("_", "-"), vars(cls).get("helps", {}).get(name, "(default: %(default)s)")
            if isinstance(default, tuple):
                g.add_argument(flag, choices=default, default=default[0], help=helps)
            else:
                g.add_argument(flag, type=type(default), default=default, help=helps)
    trainer.add_arguments(g)
    p.set_defaults(out=f"runs/{trainer.prog.rsplit('.', 2)[-2] if trainer.prog else trainer.kind}")
    for cls in reversed(type(trainer).__mro__):
        p.set_defaults(**vars(cls).get("defaults", {}))
    return p


def main(trainer: Trainer, argv=None) -> int:
    """Parse ``argv``, then export (``--export``) or train (and ``--export-at-end``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(trainer).parse_args(argv)
    args.command = " ".join([trainer.prog, *(shlex.quote(x) for x in argv)])
    torch.set_num_threads(args.threads)
    if args.export is not None:
        path = args.export or args.resume
        if not path:
            raise SystemExit("--export needs a checkpoint: --export CKPT, or --resume CKPT --export")
        export(trainer, args, path)
        return 0
    train(trainer, args)
    return 0


def train(trainer: Trainer, args) -> dict:
    torch.manual_seed(args.seed)
    if args.valid is None:
        args.valid = trainer.heldout_data
    device = pick_device(args.device)
    start = start_from(args.resume) if args.resume else None
    config = trainer.config(args, start)
    model = trainer.build(config, args).to(device)
    loop = BudgetedTraining(args, model, lambda params: trainer.optimizer(params, args), kind=trainer.kind,
                            metric=trainer.metric, resumed=start, heldout=trainer.heldout, unit=trainer.unit,
                            load=trainer.load, ema_frozen=trainer.ema_frozen, config=config)
    loop.log(f"config {json.dumps({k: v for k, v in loop.config.items() if k != 'perms'})}; "
             f"params {sum(p.numel() for p in model.parameters()):,}; device {device}; threads {args.threads}; "
             f"batch {args.batch}")
    result = loop.run(*trainer.prepare(args, model, loop))
    if args.export_at_end:
        best = loop.out / "best.pt"
        export(trainer, args, best if best.is_file() else loop.out / "last.pt", at_end=True)
    return result


# --------------------------------------------------------------------------- export
def export(trainer: Trainer, args, path, at_end: bool = False) -> dict | None:
    """Write the checkpoint's (EMA) weights as ``WEIGHTS_DIR/NAME.pt`` and its
    record ``NAME.json``, with the held-out numbers of exactly the written
    weights. An existing weights file is replaced only with ``--replace``
    (and, at the end of a run, only if the held-out number improves on its
    record); otherwise nothing is written. Returns the record, or None."""
    from . import registry

    log = RunLog(args.out) if at_end else print
    start = start_from(path)
    if args.valid is None:
        args.valid = (start.args or {}).get("valid") or (start.args or {}).get("test_data") or trainer.heldout_data
    model = trainer.build(start.config, args)
    model.load_state_dict(start.ema if start.ema is not None else start.model)
    model.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": trainer.weights_format, "config": start.config, **trainer.weights(state, model, args),
               "meta": {"steps": start.step, "minutes": round(start.elapsed / 60, 2),
                        f"{trainer.unit}_seen": start.seen}}
    shipped = trainer.build(start.config, args)
    shipped.load_state_dict(payload["state_dict"])  # float16 -> float32, as the coder loads it
    shipped.eval()
    t0 = time.time()
    fields = trainer.export_fields(shipped, args, start, payload)
    value = fields.get(trainer.record_metric)
    log(f"export of {path}: {trainer.record_metric} {value} ({time.time() - t0:.0f} s)")
    wdir = Path(args.weights_dir) if args.weights_dir else registry.WEIGHTS_DIR
    target = wdir / f"{args.weights_name}.pt"
    if target.exists():
        old = _read_json(target.with_suffix(".json")).get(trainer.record_metric)
        refusal = None
        if at_end and isinstance(old, (int, float)) and not value < old:
            refusal = f"not exported: {trainer.record_metric} {value:.4f} does not beat {target.name}'s {old:.4f}"
        elif not args.replace:
            refusal = (f"not exported: {target} exists, and .amd files made with it need exactly those weights; "
                       "choose a new --weights-name (or pass --replace)")
        if refusal:
            log(refusal)
            if at_end:
                log.close()
                return None
            raise SystemExit(refusal)
    sha = save_weights(target, payload)
    rec = weights_record(trainer, args, start, shipped, target, sha, fields)
    write_record(rec, target.with_suffix(".json"))
    log(f"exported {target} ({target.stat().st_size:,} bytes, sha256 {sha[:16]}...) and its record")
    if at_end:
        log.close()
    return rec


def weights_record(trainer: Trainer, args, start: Start, model: torch.nn.Module, path: Path, sha: str,
                   fields: dict) -> dict:
    """The JSON record of exported weights: what they are, how they were made
    (every run: commands, starts, evaluations) and ``fields`` (held-out numbers)."""
    runs = [dict(r) for r in start.runs]
    last = runs[-1] if runs else {}
    cargs = start.args or {}
    return {
        "name": args.weights_name, "model": trainer.kind, "file": path.name, "sha256": sha, "weights_tag": sha[:8],
        "bytes": path.stat().st_size, "params": sum(p.numel() for p in model.parameters()),
        "config": start.config,
        "data": last.get("data") or {"train": cargs.get("data"), "heldout": args.valid},
        "steps": start.step, "minutes": round(start.elapsed / 60, 2), f"{trainer.unit}_seen": start.seen,
        "device": last.get("device", cargs.get("device")), "threads": last.get("threads", cargs.get("threads")),
        "batch": last.get("batch", cargs.get("batch")),
        "final_train_" + trainer.metric: start.train_metric,
        f"{trainer.heldout}_data": args.valid,
        **({"note": args.note} if args.note else {}),
        **fields,
        "command": last.get("command"),
        "earlier_commands": [r.get("command") for r in runs[:-1]],
        "training_runs": runs,
        "export_command": args.command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------- text8 trainers
class TextTrainer(Trainer):
    """Options and data shared by the text8 trainers; ``config_class`` (a
    dataclass with ``to_dict``/``from_dict``, its fields set from the options of
    the same names) and ``model_class`` make the model."""

    unit, heldout, heldout_flag = "chars", "valid", "--valid"
    heldout_data = str(TEXT8_DIR / "valid.txt")
    symbol_dtype = np.int64
    config_class = model_class = None
    defaults = dict(data=str(TEXT8_DIR / "train.txt"), schedule="cosine", lr=2e-3, warmup=100, clip=1.0,
                    eval_minutes=5.0)
    options = dict(eval_chars=100_000, export_eval_chars=0)
    helps = dict(eval_chars="held-out prefix evaluated during training",
                 export_eval_chars="held-out chars evaluated at export (0: all)")

    def new_config(self, args) -> dict:
        names = self.config_class.__dataclass_fields__
        return self.config_class(**{k: v for k, v in vars(args).items() if k in names}).to_dict()

    def build(self, config, args=None) -> torch.nn.Module:
        return self.model_class(self.config_class.from_dict(config))

    def symbols(self, path, limit: int | None = None) -> np.ndarray:
        return load_text_symbols(path, limit or None, self.symbol_dtype)

    def text_data(self, args, loop: BudgetedTraining) -> tuple[np.ndarray, np.ndarray]:
        """(training symbols, held-out prefix), described in the run's history."""
        train, valid = self.symbols(args.data), self.symbols(args.valid, args.eval_chars)
        loop.describe_data(train=args.data, train_chars=len(train), valid=args.valid, eval_chars=len(valid))
        return train, valid

    def export_evals(self, model, args, evaluate: Callable, **valid_kw) -> tuple[dict, dict]:
        """``evaluate`` on the export's held-out chars and on the first 100k training chars."""
        return (evaluate(model, self.symbols(args.valid, args.export_eval_chars), **valid_kw),
                evaluate(model, self.symbols(args.data, 100_000)))


class Streams:
    """``batch`` contiguous streams through the symbols ``sym``, each in its own
    span (a multiple of ``align``), read ``length`` at a time; a stream
    restarts at its span's start when ``length + lookahead`` no longer fits,
    and, to match the coder's lanes, from a zero state with probability
    ``reset`` per read. ``ptr`` (checkpointed) is where each stream reads next."""

    def __init__(self, sym: torch.Tensor, batch: int, length: int, reset: float, rng: np.random.Generator,
                 ptr=None, align: int = 1, lookahead: int = 0):
        self.sym, self.length, self.reset, self.rng, self.lookahead = sym, length, reset, rng, lookahead
        self.span = (len(sym) // batch // align) * align
        self.lanes = np.arange(batch, dtype=np.int64)
        ok = ptr is not None and len(ptr) == batch
        self.ptr = np.asarray(ptr, dtype=np.int64) if ok else self.lanes * self.span

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(symbols (batch, length), which streams restart)."""
        wrap = self.ptr + self.length + self.lookahead > (self.lanes + 1) * self.span
        self.ptr[wrap] = self.lanes[wrap] * self.span
        x = self.sym[torch.from_numpy(self.ptr)[:, None] + torch.arange(self.length)[None, :]]
        self.ptr += self.length
        return x, torch.from_numpy((self.rng.random(len(self.lanes)) < self.reset) | wrap)


def carried(state, reset: torch.Tensor):
    """Recurrent state carried to the next read: detached, zero for streams that restart."""
    if state is None:
        return None
    keep = (~reset).float()[None, :, None]
    return tuple(s.detach() * keep for s in state)
