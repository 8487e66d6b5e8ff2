"""The lane workers (models/idf/workers.py): results in job order whatever
runs them (forked processes or threads), progress from every worker, the
first failure in job order re-raised with its own type, a dead child or an
unpicklable failure turned into a one-line AmdError, and IDF stream-2 bytes
identical in both modes."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from test_idf_lanes import batch, dec, enc

from amdcompress.codecs.errors import AmdError
from amdcompress.codecs.message import CorruptStreamError
from amdcompress.models.idf import workers as W

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = ["threads"] + (["processes"] if sys.platform.startswith("linux") else [])


@pytest.fixture(params=MODES)
def mode(request, monkeypatch):
    monkeypatch.setenv(W.MODE_ENV, request.param)
    assert W.lane_mode() == request.param
    return request.param


def _job(i, ticks=1, fail=None):
    def job(tick):
        for _ in range(ticks):
            tick(1)
        if fail is not None:
            raise fail
        return i, os.getpid(), np.full(3, i, dtype=np.uint8)
    return job


@pytest.mark.parametrize("n,workers", [(1, 2), (2, 2), (5, 2), (5, 3), (4, 1)])
def test_results_in_job_order_and_every_tick_arrives(mode, n, workers):
    got = []
    out = W.run_jobs([_job(i, ticks=i + 1) for i in range(n)], workers, got.append)
    assert [o[0] for o in out] == list(range(n))
    assert all(np.array_equal(o[2], np.full(3, o[0], np.uint8)) for o in out)
    assert sum(got) == sum(range(1, n + 1))
    pids = {o[1] for o in out}
    if mode == "processes" and min(n, workers) > 1:
        assert os.getpid() in pids and len(pids) == min(n, workers)  # the caller works too
    else:
        assert pids == {os.getpid()}


def test_first_failure_in_job_order_keeps_its_type(mode):
    jobs = [_job(0), _job(1, fail=CorruptStreamError("lane one ran out")), _job(2, fail=AmdError("lane two"))]
    with pytest.raises(CorruptStreamError, match="lane one ran out"):
        W.run_jobs(jobs, 2)
    with pytest.raises(AmdError, match="^lane two$"):
        W.run_jobs([_job(0), _job(1), _job(2, fail=AmdError("lane two"))], 2)


class _Unpicklable(Exception):
    def __init__(self, msg, handle):
        super().__init__(msg)
        self.handle = handle

    def __reduce__(self):
        raise TypeError("no pickling")


@pytest.mark.skipif("processes" not in MODES, reason="forked workers are Linux-only")
def test_child_failures_become_one_line_errors(monkeypatch):
    monkeypatch.setenv(W.MODE_ENV, "processes")
    with pytest.raises(AmdError, match="^cannot go home$"):
        W.run_jobs([_job(0), _job(1, fail=_Unpicklable("cannot go home", object()))], 2)

    def dies(tick):
        os._exit(3)

    with pytest.raises(AmdError, match=r"lane worker process ended without a result \(exit code 3\)"):
        W.run_jobs([_job(0), dies], 2)


def test_mode_env(monkeypatch):
    monkeypatch.setenv(W.MODE_ENV, "fibres")
    with pytest.raises(AmdError, match=W.MODE_ENV):
        W.lane_mode()
    monkeypatch.setenv(W.MODE_ENV, "Threads")
    assert W.lane_mode() == "threads"
    monkeypatch.delenv(W.MODE_ENV)
    assert W.lane_mode() == ("processes" if sys.platform.startswith("linux") else "threads")


@pytest.mark.parametrize("n,h,w", [(2, 8, 8), (5, 20, 28)])
@pytest.mark.parametrize("crc", [None, 0xC0FFEE])
def test_stream2_bytes_do_not_depend_on_the_mode(monkeypatch, n, h, w, crc):
    x = batch(n, h, w, seed=n + h)
    monkeypatch.setenv(W.MODE_ENV, "threads")
    p = enc(x, crc, workers=2)
    monkeypatch.setenv(W.MODE_ENV, "processes")
    assert enc(x, crc, workers=2) == p
    for m in MODES:
        monkeypatch.setenv(W.MODE_ENV, m)
        out, carried = dec(p, x.shape, crc, workers=2)
        assert np.array_equal(out, x) and carried == crc
