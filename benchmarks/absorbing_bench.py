"""Benchmark the absorbing-diffusion text backend: bits per char against the
step budget, as real .amd files through the public API.

    python benchmarks/absorbing_bench.py                         # all of valid.txt: hours at 128/256 steps
    python benchmarks/absorbing_bench.py --chars 20000            # a quick check on a prefix
    python benchmarks/absorbing_bench.py --steps 16,32 --decode default
    python benchmarks/absorbing_bench.py --chars 0 --steps 8,12 --decode default --short-sizes '' --name absorbing_file

Writes ``benchmarks/results/<--name>.json`` (default ``absorbing``) in the row schema of
``benchmarks/report.py``. Rows:

* one per step budget (``--steps``; ``full`` = the chunk length L, one
  position per pass) on the first ``--chars`` characters of text8 valid.txt
  (default: all of it): bytes of the whole .amd file (headers included), bits
  per char from those bytes, the information content of the coder's tables
  (``tables_bpc``: what an ideal entropy coder would spend with the same
  tables, no header), encode and decode wall time and chars/s through the
  public API (coding always runs on one torch thread), and a byte-exact check
  of the decoded file. ``--decode default`` decodes only the default budget's
  file (the others are then ``verified: null``): decoding costs as much as
  encoding;
* short-file rows (``--short-sizes``, default 1 KB and 20 KB, at the default
  budget): the file against the model's bound for that very file
  (``overhead_vs_bound = bytes / (tables bits / 8 + container and stream
  headers) - 1``).

The step budget goes through ``amdcompress.compress(raw, model=..., steps=S)``
(``--steps S`` on the command line); the file records it, so decoding needs no
setting.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import run_meta, sha256_bytes, write_results  # noqa: E402
from benchmarks.text_rows import add_data_args, classical_same_prefix, read_valid  # noqa: E402

MODEL = "absorbing-diffusion"


def bench_one(raw: bytes, steps: int | None, setting: str, decode: bool) -> dict:
    """One timed round trip of ``raw`` at ``steps`` (None: the weights' default)."""
    from amdcompress import api, backends
    from amdcompress.models import registry

    backend = backends.by_name(MODEL)
    n = len(raw)
    t0 = time.perf_counter()
    blob = api.compress(raw, model=MODEL, steps=steps)
    enc = time.perf_counter() - t0
    stats = dict(backend.last_stats)
    info = api.info(blob)
    row = {
        "domain": "text", "codec": f"amdcompress-{MODEL}", "setting": setting,
        "bytes": len(blob), "dims": n, "bits_per_dim": 8 * len(blob) / n,
        "steps": info.details.get("steps"), "passes": stats.get("passes"),
        "tables_bpc": round(stats.get("info_bits", 0.0) / n, 5),
        "encode_s": round(enc, 3), "encode_chars_per_s": round(n / enc, 1),
        "container_header_bytes": info.header_bytes,
        "model_stream_bytes": info.details["model_stream_bytes"], "escape_bytes": info.details["escape_bytes"],
        "model_bytes": registry.weights_path(backend.newest.name).stat().st_size, "items": 1,
    }
    from amdcompress.models.absorbing import coding

    # what is not the ANS message: container header, escape packing, the stream's own head
    stream_head = len(coding.write_head(coding.VERSION, stats.get("symbols", 0), stats.get("steps", 1),
                                        stats.get("seg", 0), stats.get("rows_per_call", 0)))
    head = len(blob) - info.details["model_stream_bytes"] + stream_head
    row["header_bytes"] = head
    bound_bytes = stats.get("info_bits", 0.0) / 8 + head
    row["overhead_vs_bound"] = round(len(blob) / bound_bytes - 1.0, 5) if bound_bytes else None
    if decode:
        t0 = time.perf_counter()
        back = api.decompress(blob)
        dec = time.perf_counter() - t0
        row.update(decode_s=round(dec, 3), decode_chars_per_s=round(n / dec, 1), verified=back == raw)
    else:
        row.update(decode_s=None, decode_chars_per_s=None, verified=None)
    row.update(classical_same_prefix(raw))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--chars", type=int, default=0, help="prefix of valid.txt for the per-budget rows (0: all)")
    p.add_argument("--steps", default="8,16,32,64,128,full", help="step budgets, comma-separated ('full' = L)")
    p.add_argument("--decode", choices=("all", "default"), default="all",
                   help="decode every budget's file, or only the default budget's")
    p.add_argument("--short-sizes", default="1024,20480", help="short-file sizes at the default budget ('' to skip)")
    p.add_argument("--name", default="absorbing",
                   help="results file name (without .json): separate runs (a prefix curve, the whole file) keep "
                        "separate files, all of which the report reads")
    a = p.parse_args(argv)

    import torch

    from amdcompress import backends
    from amdcompress.models import registry

    path, text, data = read_valid(a.data)
    prefix = text[: a.chars] if a.chars else text
    newest = backends.by_name(MODEL).newest
    name = newest.name if newest is not None else f"{MODEL}-v1"
    if not registry.available(name):
        print(f"error: the {MODEL} weights are not installed (models/weights/{name}.*)", file=sys.stderr)
        return 2
    rec = registry.record(name)
    default = int(rec.get("default_steps") or 0) or None
    length = int(rec["config"]["length"])
    torch.set_num_threads(1)

    jobs = []
    for s in a.steps.split(","):
        s = s.strip()
        if not s:
            continue
        S = length if s == "full" else int(s)
        tag = f"{S} steps (full order)" if S >= length else f"{S} steps"
        jobs.append((S, prefix, f"{tag}, {'all' if not a.chars else f'first {len(prefix):,} chars'} of valid.txt",
                     a.decode == "all" or S == default))
    jobs += [(default, text[: int(n)], f"default budget ({default} steps), {int(n) // 1024} KB file", True)
             for n in a.short_sizes.split(",") if n.strip()]
    rows = []
    start = time.perf_counter()
    for steps, raw, setting, decode in jobs:
        r = bench_one(raw, steps, setting, decode)
        r["default_budget"] = steps == default
        rows.append(r)
        dec = (f"dec {r['decode_s']:.1f}s ({r['decode_chars_per_s']:.0f} chars/s)" if decode else "dec -")
        print(f"{setting:48s} {r['bytes']:8d} B {r['bits_per_dim']:.4f} bpc (tables {r['tables_bpc']:.4f}, "
              f"+{100 * r['overhead_vs_bound']:.2f}% vs bound+header)  enc {r['encode_s']:.1f}s "
              f"({r['encode_chars_per_s']:.0f} chars/s)  {dec}  verified={r['verified']}", flush=True)
    total = time.perf_counter() - start
    data.update(prefix_chars=len(prefix), prefix_sha256=sha256_bytes(prefix),
                split="text8 valid (characters 10,000,000.. of text8)")
    meta = {
        "benchmark": "absorbing",
        **run_meta(data, torch_threads=1, total_s=round(total, 1)),
        "weights": {k: rec.get(k) for k in ("file", "sha256", "params", "steps", "minutes", "device", "threads",
                                             "default_steps", "valid_full_order_bpc", "valid_bpc_by_steps",
                                             "valid_bpc_by_steps_chars")},
        "steps_setting": "amdcompress.compress(..., steps=S)",
        "notes": {"text": [
            "bits_per_dim counts every byte of the .amd file (container header, stream head, escapes). tables_bpc: "
            "the information content of the coder's own 24-bit tables (sum of -log2 p of every coded symbol), what "
            "the file would be with an ideal entropy coder and no headers. No bits-back, no initial bits: the ANS "
            "stack adds a few bytes in all, so short files stay at their bound.",
            "encode/decode times: wall clock through api.compress/api.decompress, one torch thread; the machine's "
            "load average at the start is in meta.machine (a busy machine makes them slower).",
        ]},
    }
    write_results(Path(a.out) / f"{a.name}.json", meta, rows)
    return 0 if all(r["verified"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
