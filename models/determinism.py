"""The one way model code computes coding distributions.

Encoder and decoder must hand the entropy coder bit-identical tables, so every
network call whose output feeds a table runs inside :func:`coding_mode`: on
the CPU, with a fixed number of torch threads (reductions split differently
across threads round differently), torch's deterministic algorithms, and no
autograd. Outputs are then quantized by :mod:`amdcompress.codecs.distributions`
from float32, so the remaining risk is a different CPU or library build; the
container's checksum turns that into a clear error.
"""
from __future__ import annotations

import contextlib

import torch

CODING_THREADS = 1


def _set_deterministic(mode: bool) -> None:
    # torch.use_deterministic_algorithms also sets a flag for torch.compile'd
    # graphs, and importing that config costs ~2 s per process; we never compile.
    torch._C._set_deterministic_algorithms(mode)


@contextlib.contextmanager
def coding_mode(threads: int = CODING_THREADS):
    """Run the block with ``threads`` torch threads, deterministic algorithms and
    no autograd; restores the caller's settings afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    _set_deterministic(True)
    try:
        with torch.no_grad():
            yield
    finally:
        _set_deterministic(old_det)
        torch.set_num_threads(old_threads)
