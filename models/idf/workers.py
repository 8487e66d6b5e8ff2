"""Run independent coding jobs side by side: on forked processes where the
platform forks safely (Linux), else on threads.

Why processes: a lane spends a good part of its time in short numpy calls and
Python code that hold the GIL, so two lane *threads* on two cores reached only
~1.65x one lane's speed, where two *processes* reach ~1.95x (measured on
CIFAR-10 with idf-v4: 2 threads 73 img/s, 2 processes ~100). A forked child
inherits the loaded model, the images or messages and the coding mode of the
calling thread (deterministic algorithms, no autograd) without copying or
pickling them, and sends back only its results.

Guarantees:

* ``run_jobs(jobs, workers, tick)`` returns ``[job(tick) for job in jobs]``, in
  order: each job is a pure function of what it captured, so where it runs
  changes no result (one torch thread per job, in every mode);
* the calling thread runs its share of the jobs itself; the others run in at
  most ``workers - 1`` children (or threads), job ``i`` on worker ``i % workers``;
* ``tick(k)`` reaches the caller's progress callback from every worker, as the
  jobs advance (children send it through their pipe; calls are serialised);
* the first failing job (in job order) raises its own exception once every
  worker has ended: a child's exception is sent back pickled (an exception
  that does not pickle comes back as :class:`AmdError` with its message); a
  child that dies without a result raises AmdError naming its exit code;
* ``$AMDCOMPRESS_LANE_MODE=threads`` forces threads (``processes`` is the
  default where fork is available; elsewhere threads are used regardless).
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from amdcompress.codecs.errors import AmdError

from ..determinism import CODING_THREADS

MODE_ENV = "AMDCOMPRESS_LANE_MODE"


def lane_mode() -> str:
    """"processes" or "threads": how :func:`run_jobs` runs its workers here."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or "processes"
    if mode not in ("processes", "threads"):
        raise AmdError(f"{MODE_ENV}={mode!r} is neither 'processes' nor 'threads'")
    if mode == "processes" and not (sys.platform.startswith("linux")
                                    and "fork" in multiprocessing.get_all_start_methods()):
        mode = "threads"
    return mode


class _Serial:
    """``tick`` with its calls serialised (workers report concurrently)."""

    def __init__(self, tick: Callable[[int], None]):
        self.tick, self.lock = tick, threading.Lock()

    def __call__(self, k: int = 1) -> None:
        with self.lock:
            self.tick(k)


def _one_thread(job, tick):
    torch.set_num_threads(CODING_THREADS)
    with torch.no_grad():
        return job(tick)


def _outcome(fn) -> tuple[bool, object]:
    try:
        return True, fn()
    except BaseException as e:  # noqa: BLE001 - handed back to the caller, re-raised there
        return False, e


def _raise_first(outcomes: list[tuple[bool, object]]) -> list:
    for ok, value in outcomes:
        if not ok:
            raise value
    return [value for _, value in outcomes]


def run_jobs(jobs: list[Callable], workers: int, tick: Callable[[int], None] | None = None) -> list:
    """``[job(tick) for job in jobs]`` on ``workers`` workers (see the module docstring)."""
    tick = _Serial(tick or (lambda k=1: None))
    workers = max(1, min(int(workers), len(jobs)))
    if workers <= 1:
        return [job(tick) for job in jobs]
    shares = [list(range(w, len(jobs), workers)) for w in range(workers)]
    if lane_mode() == "threads":
        return _threads(jobs, shares, tick)
    return _processes(jobs, shares, tick)


def _threads(jobs, shares, tick) -> list:
    outcomes: list = [None] * len(jobs)

    def share(idx):
        for i in idx:
            outcomes[i] = _outcome(lambda: _one_thread(jobs[i], tick))

    with ThreadPoolExecutor(max_workers=len(shares) - 1, thread_name_prefix="amd-idf-lane") as pool:
        futures = [pool.submit(share, idx) for idx in shares[1:]]
        share(shares[0])
        for f in futures:
            f.result()
    return _raise_first(outcomes)


def _child(conn, jobs, idx) -> None:
    """A forked worker: runs its jobs, sends ("tick", k) as they advance, then
    ("done", [(ok, value) per job]); never returns into the caller's code."""
    try:
        torch.set_num_threads(CODING_THREADS)

        def tick(k: int = 1) -> None:
            conn.send(("tick", k))

        with torch.no_grad():
            out = [_outcome(lambda i=i: jobs[i](tick)) for i in idx]
        try:
            msg = pickle.dumps(("done", out), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an unpicklable result or exception: its message only
            out = [(ok, v if ok else AmdError(str(v) or type(v).__name__)) for ok, v in out]
            msg = pickle.dumps(("done", out), protocol=pickle.HIGHEST_PROTOCOL)
        conn.send_bytes(msg)
    finally:
        conn.close()


def _processes(jobs, shares, tick) -> list:
    ctx = multiprocessing.get_context("fork")
    children = []
    for idx in shares[1:]:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(send, jobs, idx), daemon=True, name="amd-idf-lane")
        p.start()
        send.close()
        children.append((p, recv, idx))
    results: dict[int, list] = {}

    def listen(w, recv):
        while True:
            try:
                kind, value = recv.recv()
            except (EOFError, OSError):
                return
            if kind == "tick":
                tick(value)
            else:
                results[w] = value
                return

    listeners = [threading.Thread(target=listen, args=(w, recv), daemon=True)
                 for w, (_, recv, _) in enumerate(children)]
    for t in listeners:
        t.start()
    outcomes: list = [None] * len(jobs)
    for i in shares[0]:
        outcomes[i] = _outcome(lambda i=i: jobs[i](tick))
    for t in listeners:
        t.join()
    for w, (p, recv, idx) in enumerate(children):
        p.join()
        recv.close()
        got = results.get(w)
        if got is None:
            got = [(False, AmdError(f"a lane worker process ended without a result (exit code {p.exitcode})"))] * len(idx)
        for i, o in zip(idx, got):
            outcomes[i] = o
    return _raise_first(outcomes)
