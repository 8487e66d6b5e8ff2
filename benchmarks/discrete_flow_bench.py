"""Benchmark the Discrete Flow text model (``amdcompress --model discrete-flow``) on text8 valid.txt.

    python benchmarks/discrete_flow_bench.py [--data /work/shared/data/text8/valid.txt] [--sizes 20480,0]
        [--variant runs/discrete_flow_ablation/factorized-d2.pt:0 ...]

For the shipped weights and each size (bytes from the start of valid.txt; 0 =
the whole file, setting ``file``) it writes a real ``.amd`` file through the
public API (container header included), decodes it, compares, and records the
file size, bits per character, wall times, chars/s and the model's exact
-log2 P(x) (``nll_bpc``) on the same text under the coder's layout. Each
``--variant PATH:SIZE`` codes SIZE bytes (0 = whole file) with another weights
file (its JSON record beside it), through the same API. Rows (schema: top of
benchmarks/report.py) go to ``benchmarks/results/discrete_flow.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from amdcompress import backends
from amdcompress.learned import LearnedBackend
from amdcompress.models import registry
from amdcompress.models.discrete_flow import coding as dc


_setting = size_label


def bench_one(raw: bytes, setting: str) -> dict:
    """Code ``raw`` with the registered discrete-flow backend's weights; one result row."""
    row, stats, backend = round_trip_row(raw, "discrete-flow", setting)
    model, sha = backend.state(), backend.newest.sha256
    sym, _ = textstream.split(np.frombuffer(raw, dtype=np.uint8))
    torch.set_num_threads(1)
    nll = dc.nll_bits(model, sym)
    moved = float(np.mean(dc.apply_flow(model, sym) != sym)) if sym.size else 0.0
    n, bits, c = len(raw), 8 * row["bytes"], model.config
    row.update({
        "nll_bpc": nll / n, "info_bpc": stats.get("info_bits", float("nan")) / n,
        "overhead_bpc": bits / n - nll / n, "overhead_bits_vs_nll": bits - nll,
        "lanes": stats.get("lanes", 0),
        "flow_changed_fraction": moved,  # share of symbols with z != x: how far the couplings are from the identity
        "params": {"weights": backend.newest.file, "sha256": sha, "base": c.base, "coupling_layers": c.layers,
                   "chunk": c.chunk, "temperature": c.temperature, "config": c.to_dict(),
                   "torch": torch.__version__, "threads": 1,
                   "coder": "exact ANS (constriction 0.5.0), 24-bit categorical tables"},
    })
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--sizes", default="20480,0", help="bytes from the start; 0 = whole file")
    p.add_argument("--variant", action="append", default=[], help="PATH:SIZE, another weights file")
    p.add_argument("--out", default=str(RESULTS_DIR / "discrete_flow.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data).read_bytes()
    rows = []
    jobs = [(None, int(s)) for s in args.sizes.split(",") if s.strip()]
    for v in args.variant:
        path, size = v.rsplit(":", 1)
        jobs.append((Path(path), int(size)))
    shipped = backends.by_name("discrete-flow")
    for weights, size in jobs:
        backend = shipped if weights is None else LearnedBackend(
            dataclasses.replace(shipped.entry, weights=(registry.Weights(weights.stem, registry.sha256_file(weights)),)),
            weights_dir=weights.parent)
        backends._REGISTRY["discrete-flow"] = backend
        raw = data if size == 0 else data[:size]
        c = backend.state().config
        setting = _setting(size, len(data))
        if weights is not None:
            setting += f", variant {c.base} base, {c.layers} layers"
        row = bench_one(raw, setting)
        row["shipped"] = weights is None
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("setting", "bytes", "bits_per_dim", "nll_bpc", "overhead_bpc",
                                               "encode_chars_per_s", "decode_chars_per_s", "verified")}), flush=True)
    backends._REGISTRY["discrete-flow"] = shipped
    meta = {
        **run_meta({"file": str(args.data), "sha256": hashlib.sha256(data).hexdigest(), "split": VALID_SPLIT},
                   torch_threads=1),
        "command": "python benchmarks/discrete_flow_bench.py " + " ".join(argv if argv is not None else
                                                                         sys.argv[1:]),
        "notes": {"text": [
            "amdcompress-discrete-flow: bipartite discrete flow (modular location-scale couplings, even/odd masks) "
            "over a base (LSTM = discrete autoregressive flow, or factorized); exact ANS coding of z = f(x); sizes "
            "are whole .amd files.",
            "nll_bpc: the model's exact -log2 P(x) on the same text under the coder's chunk/lane layout; "
            "overhead_bpc = bits_per_dim - nll_bpc (table quantization, stream framing, container header).",
            "flow_changed_fraction: share of characters whose latent z differs from x (0 means the couplings "
            "act as the identity on this text and the base does all the modelling).",
            "Timings on a shared 2-core machine, one torch thread.",
        ]},
    }
    write_results(Path(args.out), meta, rows)


if __name__ == "__main__":
    main()
