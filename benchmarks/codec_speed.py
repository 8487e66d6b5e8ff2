"""Micro-benchmark of the entropy-coding layer (no model): symbols per second.

    python benchmarks/codec_speed.py [--n 1000000] [--repeat 3] [--out benchmarks/results/codec_speed.json]

Measures, over ``n`` random symbols, the three costs a model pays per symbol:
building the integer tables from float parameters, pushing (encode) and
popping (decode), for a categorical K=27 (text) from float32 logits (random,
and rounded to multiples of 2^-12 as the text coders hand them in), K=256
(bytes), a 5-component discretized logistic mixture on 0..255 (pixels), and
the IDF coder's windowed 5-component mixture (a window of +-8 around the
dominant mean, plus an escape). Tables are built in chunks of 2**16 rows, as
the models do, from parameters drawn before the clock starts (a model hands
them in; drawing random numbers is not table building). Each phase runs
``repeat`` times and the fastest run counts, in wall seconds and in seconds of
this process's CPU time (on a shared, busy machine the second stays
comparable between runs; the first is what a user waits); every run is
decoded and compared.
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


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def _cases(n: int, rng: np.random.Generator):
    """(name, build(params) -> counts, params per chunk, symbols) for each benchmarked model."""
    chunks = _chunks(n)

    def logits(k, grid=False):
        out = []
        for s in chunks:
            x = rng.normal(size=(s.stop - s.start, k)).astype(np.float32)
            out.append(np.round(x * 4096) / 4096 if grid else x)
        return out

    yield "categorical K=27", C.categorical_from_logits, logits(27), rng.integers(0, 27, n)
    yield ("categorical K=27, logits on the 2^-12 grid", C.categorical_from_logits, logits(27, grid=True),
           rng.integers(0, 27, n))
    yield "categorical K=256", C.categorical_from_logits, logits(256), rng.integers(0, 256, n)

    def mixture_params(k):
        return (rng.uniform(0, 255, (k, 5)).astype(np.float32), rng.normal(2, 1, (k, 5)).astype(np.float32),
                rng.normal(0, 1, (k, 5)).astype(np.float32))

    yield ("logistic mixture M=5 on 0..255", lambda p: C.logistic_mixture_counts(0, 255, *p),
           [mixture_params(s.stop - s.start) for s in chunks], rng.integers(0, 256, n))

    hw = 8

    def windowed_params(k):
        mu = np.round(rng.uniform(-200, 200, (k, 5)) * 1024).astype(np.float32) / 1024
        ls = np.round(rng.normal(0.5, 0.7, (k, 5)) * 1024).astype(np.float32) / 1024
        lg = np.round(rng.normal(0, 2, (k, 5)) * 1024).astype(np.float32) / 1024
        mu[:, 1:] = mu[:, :1] + rng.normal(0, 2, (k, 4)).astype(np.float32)
        centers = np.round(mu[np.arange(k), np.argmax(lg, axis=1)]).astype(np.int64)
        return centers, mu, ls, lg

    yield (f"windowed mixture M=5, half window {hw} + escape (IDF)",
           lambda p: C.windowed_logistic_mixture_counts(p[0], hw, *p[1:]),
           [windowed_params(s.stop - s.start) for s in chunks], rng.integers(0, 2 * hw + 2, n))


def _best(f, repeat: int):
    """(fastest wall seconds, fastest CPU seconds of this process, result) over ``repeat`` runs."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def run_case(build, params, symbols: np.ndarray, repeat: int = 1) -> dict:
    n = len(symbols)
    chunks = _chunks(n)
    t_build, c_build, tables = _best(lambda: [build(p) for p in params], repeat)
    codecs = [C.Categorical(t) for t in tables]

    def encode():
        msg = C.Message.empty()
        for codec, s in zip(reversed(codecs), reversed(chunks)):
            codec.push(msg, symbols[s])
        return msg

    t_enc, c_enc, msg = _best(encode, repeat)
    bits = msg.num_bits()
    blob = msg.to_bytes()

    def decode():
        m = C.Message.from_bytes(blob)
        return np.concatenate([codec.pop(m)[1] for codec in codecs])

    t_dec, c_dec, out = _best(decode, repeat)
    if not np.array_equal(out, symbols):
        raise SystemExit("round trip failed")
    ideal = sum(C.information_bits(t, symbols[s]) for t, s in zip(tables, chunks))
    return {"symbols": n, "repeat": repeat, "table_build_sym_per_s": n / t_build, "encode_sym_per_s": n / t_enc,
            "decode_sym_per_s": n / t_dec,
            # per second of this process's CPU time: what a shared, busy machine leaves comparable
            "table_build_sym_per_cpu_s": n / c_build, "encode_sym_per_cpu_s": n / c_enc,
            "decode_sym_per_cpu_s": n / c_dec, "bits": bits, "ideal_bits": ideal,
            "overhead_pct": 100.0 * (bits - ideal) / ideal, "verified": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per phase; the fastest counts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "codec_speed.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    meta = {"machine": machine_info(threads=1), "numpy": np.__version__, "commit": git_commit(), "date": now()}
    for name, build, params, symbols in _cases(args.n, rng):
        r = {"case": name, **run_case(build, params, symbols, args.repeat)}
        rows.append(r)
        print(f"{name:52s} tables {r['table_build_sym_per_s'] / 1e6:6.2f} M/s ({r['table_build_sym_per_cpu_s'] / 1e6:.2f}"
              f" per CPU s)  encode {r['encode_sym_per_s'] / 1e6:6.2f} M/s ({r['encode_sym_per_cpu_s'] / 1e6:.2f})  "
              f"decode {r['decode_sym_per_s'] / 1e6:6.2f} M/s ({r['decode_sym_per_cpu_s'] / 1e6:.2f})  "
              f"overhead {r['overhead_pct']:.3f}%", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
