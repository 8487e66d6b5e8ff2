"""Where one IDF lane's coding time goes: network, table building, ANS.

    python benchmarks/idf_profile.py [--images 300] [--streams 2 3] [--repeat 2]
                                     [--out benchmarks/results/profiles/idf_profile.json]

One lane is what each worker of a stream-2/3 batch codes (``models/idf/lanes.py``:
a 600-image batch is two lanes of 300, one per core), on one torch thread, so
the batch's images per second on a quiet 2-core machine is about
``2 * images / lane seconds``. For each stream this codes the first
``--images`` CIFAR-10 test images as one lane with the shipped weights
(relabelled to the stream in this process, as ``idf_bench.py --stream`` does),
encode then decode, checks the round trip, and splits the wall time into:

* ``network_s``: the flow and priors (``IDF.analyse`` on encode, the
  generative steps on decode);
* ``tables_s``: building the integer frequency tables (the mixture masses
  and the quantizer of ``MixtureRows``, and ``Categorical``'s setup);
* ``ans_s``: pushing / popping symbols on the ANS stack (constriction);
* ``other_s``: the rest (grid rounding, windows, Python).

Each figure is the best of ``--repeat`` runs. The results go to a folder of
their own (not a row of ``report.py``'s comparison tables: a lane is not a file). The split instruments the
coder's ``Categorical`` and ``Uniform`` calls, which adds a little time of
its own (in ``other_s``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import run_meta, write_results  # noqa: E402

import numpy as np

from amdcompress.models.datasets import shared_data_dir

ROOT = Path(__file__).resolve().parent.parent
TEST = shared_data_dir() / "cifar10" / "test.npy"


class _Clock:
    """Seconds spent in the instrumented calls, by kind."""

    def __init__(self):
        self.s = {"network": 0.0, "tables": 0.0, "ans": 0.0}

    def timed(self, kind, fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[kind] += time.perf_counter() - t
        return run


def _instrument(coding, network_cls, clock: _Clock):
    """Patch the coding module's codecs, the mixture tables and the network's
    passes to report to ``clock``; returns the undo."""
    from amdcompress.codecs import core
    from amdcompress.codecs.distributions import MixtureRows

    saved = {"Categorical": coding.Categorical, "Uniform": coding.Uniform,
             "analyse": network_cls.analyse, "generate": network_cls.generate,
             "table": MixtureRows.table, "binned_table": MixtureRows.binned_table}
    MixtureRows.table = clock.timed("tables", saved["table"])
    MixtureRows.binned_table = clock.timed("tables", saved["binned_table"])

    def codec(make, table_kind):
        def build(*a, **k):
            c = clock.timed(table_kind, make)(*a, **k) if table_kind else make(*a, **k)
            return core.Codec(clock.timed("ans", c.push), clock.timed("ans", c.pop))
        return build

    coding.Categorical = codec(saved["Categorical"], "tables")
    coding.Uniform = codec(saved["Uniform"], None)
    network_cls.analyse = clock.timed("network", saved["analyse"])

    def generate(self, *a, **k):  # a generator: time each step it runs
        gen = saved["generate"](self, *a, **k)
        value = None
        while True:
            t = time.perf_counter()
            try:
                part = gen.send(value)
            except StopIteration as done:
                clock.s["network"] += time.perf_counter() - t
                return done.value
            clock.s["network"] += time.perf_counter() - t
            value = yield part

    network_cls.generate = generate

    def undo():
        coding.Categorical, coding.Uniform = saved["Categorical"], saved["Uniform"]
        network_cls.analyse, network_cls.generate = saved["analyse"], saved["generate"]
        MixtureRows.table, MixtureRows.binned_table = saved["table"], saved["binned_table"]
    return undo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(TEST))
    p.add_argument("--images", type=int, default=300, help="images in the lane")
    p.add_argument("--streams", type=int, nargs="+", default=[2, 3], choices=(1, 2, 3))
    p.add_argument("--repeat", type=int, default=2, help="runs per stream; the best is kept")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profiles" / "idf_profile.json"))
    a = p.parse_args(argv)

    import torch

    from amdcompress import backends
    from amdcompress.models import registry
    from amdcompress.models.idf import coding
    from amdcompress.models.idf.network import IDF

    backend = backends.by_name("idf")
    if not backend.available():
        print("IDF weights not installed", file=sys.stderr)
        return 1
    model = backend.state()
    rec = registry.record(backend.newest.name)
    x = np.ascontiguousarray(np.load(a.data)[: a.images])
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _profile(a, model, x, coding, IDF)
    finally:
        torch.set_num_threads(threads)  # run in-process (the tests), the caller's setting comes back
    if rows is None:
        return 1
    _write(a, rows, rec, x)
    return 0


def _profile(a, model, x, coding, IDF):
    """The rows of :func:`main`, or None if a lane did not round-trip."""
    import torch

    rows = []
    for stream in a.streams:
        best = None
        for _ in range(a.repeat):
            r = {}
            for side in ("encode", "decode"):
                clock = _Clock()
                undo = _instrument(coding, IDF, clock)
                try:
                    with coding._coding(), torch.no_grad():
                        t = time.perf_counter()
                        if side == "encode":
                            payload = coding.encode_message(model, x, 1234, None, stream)
                        else:
                            out, m = coding.decode_message(model, coding.open_message(payload, True), x.shape,
                                                           None, stream)
                        wall = time.perf_counter() - t
                finally:
                    undo()
                if side == "decode" and not (np.array_equal(out, x) and coding.close_message(m, True) == 1234):
                    print(f"stream {stream}: the lane did not round-trip", file=sys.stderr)
                    return None
                r[side] = {"wall_s": wall, "network_s": clock.s["network"], "tables_s": clock.s["tables"],
                           "ans_s": clock.s["ans"],
                           "other_s": wall - sum(clock.s.values()), "images_per_s": len(x) / wall}
            r["bytes"] = len(payload)
            if best is None or r["encode"]["wall_s"] + r["decode"]["wall_s"] < \
                    best["encode"]["wall_s"] + best["decode"]["wall_s"]:
                best = r
        row = {"domain": "image", "codec": "amdcompress-idf", "setting": f"one lane, stream {stream}",
               "stream": stream, "items": len(x), "bytes": best["bytes"], "dims": int(x.size),
               "bits_per_dim": 8 * best["bytes"] / x.size, "verified": True,
               "encode": best["encode"], "decode": best["decode"],
               "projected_batch_images_per_s_2_lanes": {
                   side: 2 * len(x) / best[side]["wall_s"] for side in ("encode", "decode")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _write(a, rows, rec, x) -> None:
    meta = run_meta({"image": {"file": str(a.data), "split": f"CIFAR-10 test, first {len(x)} images, one lane"}},
                    torch_threads=1, benchmark="benchmarks/idf_profile.py",
                    model={"weights": rec["file"], "sha256": rec["sha256"]},
                    notes={"image": ["one lane on one torch thread, best of "
                                     f"{a.repeat} runs; streams other than the weights' own are the same "
                                     "weights relabelled in this process"]})
    write_results(Path(a.out), meta, rows)


if __name__ == "__main__":
    sys.exit(main())
