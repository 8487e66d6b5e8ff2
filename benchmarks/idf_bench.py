"""Benchmark the shipped IDF model through the public API: actual .amd bytes.

    python benchmarks/idf_bench.py [--per-image 100] [--batch 600] [--stream {1,2,3}] [--workers N]
                                   [--out benchmarks/results/idf.json]

Rows (schema of benchmarks/report.py):

* ``batch``: the CIFAR-10 test subset as one ``.npy`` batch, one .amd file
  (one ANS stream), header included;
* ``per-image``: the first ``--per-image`` test images, each as its own PNG
  compressed to its own .amd file (13 bytes of framing each), with
  ``--model idf`` (codec ``amdcompress-idf``) and with the CLI's default
  ``--model auto`` (``amdcompress-auto``: per image the smallest of the IDF
  and the classical backends; the row says how often each won).

``--per-image 0`` leaves the per-image rows out.

Every file is decoded and compared exactly. ``nll_bpd`` is the model's negative
log-likelihood on the same images (what an ideal coder would spend, without
framing); ``model_bytes`` is the size of the weights file. ``--stream`` is the
IDF payload layout (default: the shipped weights' own, ``Weights.stream``);
another one codes with the shipped weights relabelled in this process only (a
weights version of that stream and the same network would write exactly these
files; nothing made here is kept). Stream 1 codes on one thread (the coder's
fixed torch thread count, 1), streams 2 and 3 code their lanes on ``--workers``
workers (``$AMDCOMPRESS_WORKERS``; default: one per lane up to the CPUs;
forked processes, or threads with ``--lane-mode threads``);
rows give images per wall second and per second of CPU time, this process's
threads and its lane processes together (on a shared, busy machine the second stays comparable
between runs, and CPU seconds per image times images per second projects the
cores a quiet machine needs).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import git_commit, machine_info, now, sha256_file  # noqa: E402

import numpy as np

from amdcompress.models.datasets import shared_data_dir

ROOT = Path(__file__).resolve().parent.parent
TEST = shared_data_dir() / "cifar10" / "test.npy"



def _cpu() -> float:
    """CPU seconds of this process and of its ended children (forked lane
    workers, :mod:`amdcompress.models.idf.workers`)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system

def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _per_image(amdcompress, images: np.ndarray, model: str) -> dict:
    """Each image as its own PNG, compressed to its own .amd with ``model``,
    decoded and compared: total bytes, seconds, and which backends won."""
    from collections import Counter

    from PIL import Image

    enc_s = dec_s = enc_cpu = dec_cpu = 0.0
    total, ok, chosen = 0, True, Counter()
    for img in images:
        png = _png(img)
        c0, t0 = _cpu(), time.perf_counter()
        blob = amdcompress.compress(png, model=model)
        c1, t1 = _cpu(), time.perf_counter()
        out = amdcompress.decompress(blob)
        c2, t2 = _cpu(), time.perf_counter()
        ok &= bool(np.array_equal(np.asarray(Image.open(io.BytesIO(out))), img))
        enc_s += t1 - t0
        dec_s += t2 - t1
        enc_cpu += c1 - c0
        dec_cpu += c2 - c1
        total += len(blob)
        chosen[amdcompress.info(blob).model] += 1
    return {"bytes": total, "encode_s": enc_s, "decode_s": dec_s, "encode_cpu_s": enc_cpu, "decode_cpu_s": dec_cpu,
            "verified": ok, "chosen": ", ".join(f"{m} {n}" for m, n in chosen.most_common())}


def _with_stream(backends, registry, stream: int):
    """The idf backend, its newest weights relabelled as payload layout ``stream``
    if they use another (registered in this process only)."""
    import dataclasses

    from amdcompress.learned import LearnedBackend

    b = backends.by_name("idf")
    if b.newest is None or b.newest.stream == stream:
        return b
    entry = registry.MODELS["idf"]
    w = dataclasses.replace(b.newest, stream=stream)
    relabelled = LearnedBackend(dataclasses.replace(entry, weights=(w,) + entry.weights[1:]))
    backends._REGISTRY["idf"] = relabelled
    return relabelled


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(TEST))
    p.add_argument("--batch", type=int, default=600, help="images in the batch row")
    p.add_argument("--per-image", type=int, default=100, help="images in the per-image rows (0: none)")
    p.add_argument("--stream", type=int, choices=(1, 2, 3), default=None,
                   help="IDF payload layout (default: the shipped weights' own)")
    p.add_argument("--workers", type=int, default=None,
                   help="lane workers for streams 2 and 3 (sets $AMDCOMPRESS_WORKERS; default: one per lane up to the CPUs)")
    p.add_argument("--lane-mode", choices=("processes", "threads"), default=None,
                   help="how stream-2/3 lane workers run (sets $AMDCOMPRESS_LANE_MODE; default: processes where fork is safe)")
    p.add_argument("--no-auto", action="store_true", help="skip the per-image --model auto row")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "idf.json"))
    a = p.parse_args(argv)

    import torch

    import amdcompress
    from amdcompress import backends
    from amdcompress.models.idf import coding as idf_coding
    from amdcompress.models.idf import lanes, workers
    from amdcompress.models import registry

    backend = backends.by_name("idf")
    if not backend.available():
        print("IDF weights not installed", file=sys.stderr)
        return 1
    if a.workers is not None:
        if a.workers < 1:
            p.error("--workers must be at least 1")
        os.environ[lanes.WORKERS_ENV] = str(a.workers)
    if a.lane_mode is not None:
        os.environ[workers.MODE_ENV] = a.lane_mode
    shipped_stream = backend.newest.stream
    stream = a.stream or shipped_stream
    backend = _with_stream(backends, registry, stream)
    model = backend.state()
    rec = registry.record(backend.newest.name)
    wpath = registry.weights_path(backend.newest.name)
    data = np.load(a.data)
    rows = []
    params = {"weights": rec["file"], "sha256": rec["sha256"], "steps": rec.get("steps"),
              "coding_threads": idf_coding.CODING_THREADS, "stream": stream,
              "stream_relabelled": stream != shipped_stream,
              "workers": lanes.workers_for(lanes.LANES) if stream >= 2 else 1,
              "lane_mode": workers.lane_mode() if stream >= 2 else None}

    # -- batch: one .npy file, one stream
    x = np.ascontiguousarray(data[: a.batch])
    buf = io.BytesIO()
    np.save(buf, x)
    raw = buf.getvalue()
    c0, t0 = _cpu(), time.perf_counter()
    blob = amdcompress.compress(raw, model="idf")
    c1, t1 = _cpu(), time.perf_counter()
    back = amdcompress.decompress(blob)
    c2, t2 = _cpu(), time.perf_counter()
    nll = idf_coding.model_bits(model, x)
    dims = int(x.size)
    rows.append({
        "domain": "image", "codec": "amdcompress-idf", "setting": "batch", "bytes": len(blob), "dims": dims,
        "bits_per_dim": 8 * len(blob) / dims, "encode_s": t1 - t0, "decode_s": t2 - t1,
        "verified": back == raw, "items": len(x), "nll_bpd": nll / dims, "model_bytes": wpath.stat().st_size,
        "encode_images_per_s": len(x) / (t1 - t0), "decode_images_per_s": len(x) / (t2 - t1),
        "encode_images_per_cpu_s": len(x) / (c1 - c0), "decode_images_per_cpu_s": len(x) / (c2 - c1),
        "encode_cpu_s": c1 - c0, "decode_cpu_s": c2 - c1,
        "layout": f"one .npy batch {x.shape}, one .amd file"
                  + (f", stream {stream}: lanes of {amdcompress.info(blob).details['lane_bytes']} bytes" if stream >= 2
                     else ", stream 1: one ANS stream"),
        "params": params,
    })
    print(json.dumps(rows[-1]), flush=True)

    # -- per image: PNG files, one .amd each; with the IDF, then as `amdcompress encode` does (auto)
    k = min(a.per_image, len(data))
    dims = int(data[:k].size)
    nll = idf_coding.model_bits(model, data[:k]) if k else 0.0
    for name in () if k == 0 else ("idf",) if a.no_auto else ("idf", "auto"):
        r = _per_image(amdcompress, data[:k], name)
        rows.append({
            "domain": "image", "codec": f"amdcompress-{name}", "setting": "per-image", "bytes": r["bytes"],
            "dims": dims, "bits_per_dim": 8 * r["bytes"] / dims, "encode_s": r["encode_s"],
            "decode_s": r["decode_s"], "verified": r["verified"], "items": k, "nll_bpd": nll / dims,
            "model_bytes": wpath.stat().st_size,
            "encode_images_per_s": k / r["encode_s"], "decode_images_per_s": k / r["decode_s"],
            "encode_images_per_cpu_s": k / r["encode_cpu_s"], "decode_images_per_cpu_s": k / r["decode_cpu_s"],
            "encode_cpu_s": r["encode_cpu_s"], "decode_cpu_s": r["decode_cpu_s"],
            "layout": f"first {k} images, each a 32x32 PNG -> its own .amd (header included)"
                      + ("" if name == "idf" else "; --model auto: the smallest of every backend that "
                         f"accepts the image ({r['chosen']})"),
            "params": rows[0]["params"],
        })
        print(json.dumps(rows[-1]), flush=True)

    meta = {
        "benchmark": "benchmarks/idf_bench.py",
        "data": {"image": {"file": str(a.data), "sha256": sha256_file(Path(a.data)),
                           "split": f"CIFAR-10 test, first {len(data)} images (batch: first {a.batch}, "
                                    + (f"per-image: first {k})" if k else "no per-image rows)")}},
        "machine": machine_info(torch=torch.__version__, coding_threads=idf_coding.CODING_THREADS,
                                workers=params["workers"]),
        "commit": git_commit(),
        "date": now(),
        "model": {"weights": rec["file"], "sha256": rec["sha256"], "steps": rec.get("steps"),
                  "minutes": rec.get("minutes"), "test_bpd_nll": rec.get("final_test_bpd")},
        "notes": {"image": [
            f"amdcompress-idf: weights {rec['file']} ({rec.get('steps')} steps, {rec.get('minutes')} min of "
            f"training), sha256 {rec['sha256'][:12]}; nll_bpd is the model's likelihood, bits_per_dim the "
            "actual .amd bytes"] + ([
            f"stream {stream}: the shipped weights (stream {shipped_stream}) relabelled in this process, as a "
            f"stream-{stream} weights version of the same network would code"] if stream != shipped_stream else [])},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
