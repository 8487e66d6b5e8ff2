"""What every training script shares: weight averaging, the learning-rate
schedule, crash-safe checkpoint writes, the device choice and the run log.

Nothing here knows about a particular model; the ``train_*`` modules wire it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
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


def load_text_symbols(path: str | Path) -> np.ndarray:
    """Text in the text8 alphabet -> uint8 symbols 0..26 (space = 0).

    Raises ``SystemExit`` naming the file if any byte is outside the alphabet:
    training data must be clean text8, not silently filtered."""
    from amdcompress.textstream import split

    raw = np.fromfile(path, dtype=np.uint8)
    sym, _ = split(raw)
    if len(sym) != len(raw):
        raise SystemExit(f"{path}: {len(raw) - len(sym)} bytes outside the text8 alphabet")
    return sym.astype(np.uint8)


def start_from(path: str | Path) -> tuple[dict, dict, dict | None, int, float, dict]:
    """What a training run resumes from: ``(config, float32 model state,
    optimizer state or None, step, elapsed seconds, the whole checkpoint)``
    (the last is ``{}`` for a weights file), read once.

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
    step, elapsed = 0, 0.0
    rec = path.with_suffix(".json")
    if rec.is_file():
        meta = json.loads(rec.read_text())
        step, elapsed = int(meta.get("steps", 0)), float(meta.get("minutes", 0.0)) * 60.0
    return ck["config"], state, None, step, elapsed, {}
