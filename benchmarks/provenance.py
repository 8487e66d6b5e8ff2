"""Where a benchmark number came from: data hash, commit, machine, date.

Every result file's ``meta`` is built from these, so a reader can tell which
data, split, machine and commit produced a figure.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
from pathlib import Path

from amdcompress.models.registry import sha256_file  # noqa: F401  (re-exported)

__all__ = ["RESULTS_DIR", "git_commit", "machine_info", "now", "run_meta", "sha256_bytes", "sha256_file"]

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def git_commit(repo: Path = REPO) -> str | None:
    """Short HEAD commit, with ``+dirty`` when tracked files other than the
    benchmark results themselves have uncommitted changes (another benchmark
    writing its results file does not change the code measured); None outside
    a git checkout."""
    try:
        def run(*a: str) -> str:
            return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        commit = run("rev-parse", "--short", "HEAD")
        changed = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
        return commit + ("+dirty" if changed else "")
    except Exception:
        return None


def machine_info(**extra) -> dict:
    """CPU model and count, OS, the load average when the benchmark started
    (a busy machine makes timings slower), Python; plus ``extra`` keys (e.g.
    torch threads)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    u = platform.uname()
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "system": u.system, "release": u.release,
            "machine": u.machine, "python": platform.python_version()}
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    info.update(extra)
    return info


def now() -> str:
    """UTC time, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_meta(data: dict, torch_threads: int | None = None, **extra) -> dict:
    """The provenance part of a learned-model benchmark's ``meta``: the data
    record, the machine (with the torch thread count, when given), Python, the
    numeric libraries, commit and date; then ``extra`` (totals, notes ...)."""
    import importlib.metadata

    import numpy
    import torch

    return {
        "data": data,
        "machine": machine_info(torch_threads=torch_threads) if torch_threads is not None else machine_info(),
        "python": platform.python_version(),
        "libraries": {"torch": torch.__version__, "numpy": numpy.__version__,
                      "constriction": importlib.metadata.version("constriction")},
        "commit": git_commit(),
        "date": now(),
        **extra,
    }


def write_results(path: Path, meta: dict, rows: list) -> Path:
    """Write ``{"meta", "rows"}`` (the schema of benchmarks/report.py) to ``path``
    atomically: a crash leaves the previous results, never half a file."""
    import json
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path} ({len(rows)} rows)")
    return path
