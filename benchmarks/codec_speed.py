"""Micro-benchmark of the entropy-coding layer (no model): symbols per second.

    python benchmarks/codec_speed.py [--n 1000000] [--out benchmarks/results/codec_speed.json]

Measures, over ``n`` random symbols, the three costs a model pays per symbol:
building the integer tables from float parameters, pushing (encode) and
popping (decode), for a categorical K=27 (text), K=256 (bytes), and a
5-component discretized logistic mixture on 0..255 (pixels). Every run is
decoded and compared. Tables are built in chunks of 2**16 rows, as the models do.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import git_commit, machine_info, now  # noqa: E402

import numpy as np

import amdcompress.codecs as C

CHUNK = 1 << 16


def _cases(n: int, rng: np.random.Generator):
    """(name, table builder per chunk, symbols) for each benchmarked model."""
    yield ("categorical K=27", lambda s: C.categorical_from_logits(rng.normal(size=(s.stop - s.start, 27)).astype(np.float32)),
           rng.integers(0, 27, n))
    yield ("categorical K=256", lambda s: C.categorical_from_logits(rng.normal(size=(s.stop - s.start, 256)).astype(np.float32)),
           rng.integers(0, 256, n))

    def mixture(s):
        k = s.stop - s.start
        return C.logistic_mixture_counts(0, 255, rng.uniform(0, 255, (k, 5)).astype(np.float32),
                                         rng.normal(2, 1, (k, 5)).astype(np.float32),
                                         rng.normal(0, 1, (k, 5)).astype(np.float32))

    yield ("logistic mixture M=5 on 0..255", mixture, rng.integers(0, 256, n))


def run_case(build, symbols: np.ndarray) -> dict:
    n = len(symbols)
    chunks = [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
    t0 = time.perf_counter()
    tables = [build(s) for s in chunks]
    t_build = time.perf_counter() - t0
    codecs = [C.Categorical(t) for t in tables]
    msg = C.Message.empty()
    t0 = time.perf_counter()
    for codec, s in zip(reversed(codecs), reversed(chunks)):
        codec.push(msg, symbols[s])
    t_enc = time.perf_counter() - t0
    bits = msg.num_bits()
    msg = C.Message.from_bytes(msg.to_bytes())
    t0 = time.perf_counter()
    out = np.concatenate([codec.pop(msg)[1] for codec in codecs])
    t_dec = time.perf_counter() - t0
    if not np.array_equal(out, symbols):
        raise SystemExit("round trip failed")
    ideal = sum(C.information_bits(t, symbols[s]) for t, s in zip(tables, chunks))
    return {"symbols": n, "table_build_sym_per_s": n / t_build, "encode_sym_per_s": n / t_enc,
            "decode_sym_per_s": n / t_dec, "bits": bits, "ideal_bits": ideal,
            "overhead_pct": 100.0 * (bits - ideal) / ideal, "verified": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "codec_speed.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for name, build, symbols in _cases(args.n, rng):
        r = {"case": name, **run_case(build, symbols)}
        rows.append(r)
        print(f"{name:32s} tables {r['table_build_sym_per_s'] / 1e6:6.2f} M/s  "
              f"encode {r['encode_sym_per_s'] / 1e6:6.2f} M/s  decode {r['decode_sym_per_s'] / 1e6:6.2f} M/s  "
              f"overhead {r['overhead_pct']:.3f}%")
    meta = {"machine": machine_info(threads=1), "numpy": np.__version__, "commit": git_commit(), "date": now()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
