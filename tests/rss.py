"""Peak resident memory of this process, resettable (Linux: /proc/self).

``ru_maxrss`` is a poor measure here: it survives exec (a process started by
a big pytest reports pytest's size) and never goes down. ``VmHWM`` in
``/proc/self/status`` belongs to the current address space, and writing 5 to
``/proc/self/clear_refs`` resets it to the current size, so the peak of one
stretch of work can be measured. Elsewhere, falls back to ``ru_maxrss``.
"""
from __future__ import annotations

import resource
from pathlib import Path


def _status(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_mb() -> float:
    v = _status("VmRSS")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    v = _status("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> float:
    """Start measuring a new peak from here; returns the current RSS (MB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return current_mb()
