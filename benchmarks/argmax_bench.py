"""Benchmark the Argmax Flow text models (``amdcompress --model argmax`` / ``argmax-coupling``) on text8 valid.txt.

    python benchmarks/argmax_bench.py [--model argmax] [--data /work/shared/data/text8/valid.txt] [--sizes 1024,20480,0]
    python benchmarks/argmax_bench.py --model argmax-coupling      # sizes 1000,20000,0 -> results/argmax_coupling.json

For each size (bytes from the start of valid.txt; 0 = the whole file) it writes
a real ``.amd`` file through the public API (container header included), decodes
it, compares, and records the file size, bits per character, wall times, the
model's negative ELBO and exact -log2 P(x) on the same text under the coder's
lane layout, the overhead of the coded size over the ELBO and the initial bits
consumed. Rows (schema: top of benchmarks/report.py) go to
``benchmarks/results/argmax.json`` (``argmax_coupling.json`` for ``--model argmax-coupling``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import RESULTS_DIR, run_meta, write_results  # noqa: E402
from benchmarks.text_rows import DEFAULT_VALID as DEFAULT_DATA, VALID_SPLIT, round_trip_row, size_label  # noqa: E402

import numpy as np
import torch

from amdcompress.codecs import textstream
from amdcompress.models.argmax import coding as ac


def _label(size: int, total: int) -> str:
    return size_label(size, total, f"file ({total / 1e6:.0f} MB)" if total >= 1e6 else "file")


def bench_one(raw: bytes, setting: str, samples: int) -> dict:
    row, stats, backend = round_trip_row(raw, "argmax", setting)
    model, tables = backend.state()
    sha = backend.newest.sha256
    sym, _ = textstream.split(np.frombuffer(raw, dtype=np.uint8))
    torch.set_num_threads(1)
    ref = ac.lane_elbo(model, sym, samples=samples)
    n, bits = len(raw), 8 * row["bytes"]
    row.update({
        "elbo_bpc": ref["elbo_bits"] / n, "nll_bpc": ref["nll_bits"] / n,
        "info_bpc": stats.get("info_bits", float("nan")) / n,
        "overhead_bpc": bits / n - ref["elbo_bits"] / n,
        "overhead_bits_vs_elbo": bits - ref["elbo_bits"],
        "overhead_bits_vs_info": bits - stats.get("info_bits", float("nan")),
        "initial_seed_words_touched": stats.get("initial_words_used", 0),
        "lanes": stats.get("lanes", 0),
        "params": {"weights": backend.newest.file, "sha256": sha, "elbo_samples": samples,
                   "torch": torch.__version__, "threads": 1,
                   "coder": "bits-back ANS (constriction 0.5.0), grid 2^-%d, window %d" % (
                       int(tables["delta_bits"]), int(tables["window"]))},
    })
    return row


def bench_one_coupling(raw: bytes, setting: str, samples: int) -> dict:
    """One row for ``argmax-coupling``: the same measurements as :func:`bench_one`
    (no exact -log2 P(x): the coupling prior has no tractable marginal of x)."""
    from amdcompress.models.argmax_coupling.network import chunked_nelbo_bits, count_params

    row, stats, backend = round_trip_row(raw, "argmax-coupling", setting)
    coder, sha = backend.state(), backend.newest.sha256
    sym, _ = textstream.split(np.frombuffer(raw, dtype=np.uint8))
    torch.set_num_threads(1)
    elbo_bits = chunked_nelbo_bits(coder.model, sym, samples=samples)
    n, bits = len(raw), 8 * row["bytes"]
    cfg = coder.model.config
    row.update({
        "elbo_bpc": elbo_bits / n, "nll_bpc": None,
        "info_bpc": stats.get("info_bits", float("nan")) / n,
        "overhead_bpc": bits / n - elbo_bits / n,
        "overhead_bits_vs_elbo": bits - elbo_bits,
        "overhead_bits_vs_info": bits - stats.get("info_bits", float("nan")),
        "initial_seed_words_touched": stats.get("initial_words_used", 0),
        "chunks": stats.get("chunks", 0),
        "model_params": count_params(coder.model),
        "params": {"weights": backend.newest.file, "sha256": sha, "elbo_samples": samples,
                   "torch": torch.__version__, "threads": 1,
                   "coder": "bits-back ANS (constriction 0.5.0), grid 2^-%d, q window %d, chunks of %d chars, "
                            "%d couplings, base window +-%d" % (coder.db, coder.W, cfg.chunk, cfg.layers,
                                                               coder.base.half_window)},
    })
    return row


MODELS = {  # --model -> (row function, default sizes, default output, notes)
    "argmax": (bench_one, "1024,20480,0", "argmax.json", [
        "amdcompress-argmax: Argmax Flow (LSTM 1x512 context, autoregressive logistic-mixture prior over the "
        "5-bit binary code, thresholding q), bits-back ANS on a fixed-point grid; sizes are whole .amd files.",
        "elbo_bpc / nll_bpc: the model's negative ELBO (one q sample per char for the 1 MB file) and exact "
        "-log2 P(x) on the same text and lane layout; overhead_bpc = bits_per_dim - elbo_bpc.",
        "Timings on a shared 2-core machine, one torch thread."]),
    "argmax-coupling": (bench_one_coupling, "1000,20000,0", "argmax_coupling.json", [
        "amdcompress-argmax-coupling: Argmax Flow with a coupling-flow prior (additive couplings rounded to the "
        "coding grid, 1-D conv nets, factorized logistic-mixture base per position) on chunks of characters, "
        "the same thresholding q as amdcompress-argmax; bits-back ANS on the integer grid; sizes are whole "
        ".amd files.",
        "elbo_bpc: the model's negative ELBO on the same text and chunking (one q sample per char for the 1 MB "
        "file, 8 otherwise); overhead_bpc = bits_per_dim - elbo_bpc (container header, initial bits of the "
        "first chunk, ANS); info_bpc: exact information content of the coded symbols.",
        "Timings on a shared 2-core machine (another training running), one torch thread."]),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="argmax", choices=sorted(MODELS))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--sizes", default=None, help="bytes from the start; 0 = whole file (default per model)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/<model>.json")
    args = p.parse_args(argv)
    row_fn, default_sizes, default_out, notes = MODELS[args.model]
    args.sizes = args.sizes or default_sizes
    args.out = args.out or str(RESULTS_DIR / default_out)
    torch.set_num_threads(1)
    data = Path(args.data).read_bytes()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        raw = data if size == 0 else data[:size]
        setting = _label(size, len(data))
        row = row_fn(raw, setting, samples=1 if len(raw) > 100_000 else 8)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("setting", "bytes", "bits_per_dim", "elbo_bpc", "nll_bpc",
                                               "overhead_bpc", "encode_s", "decode_s", "verified")}), flush=True)
    meta = {
        **run_meta({"file": str(args.data), "sha256": hashlib.sha256(data).hexdigest(), "split": VALID_SPLIT},
                   torch_threads=1),
        "notes": {"text": notes},
    }
    write_results(Path(args.out), meta, rows)


if __name__ == "__main__":
    main()
