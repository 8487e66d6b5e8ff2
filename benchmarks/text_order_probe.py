"""What is an order family worth before any network is trained? A count-model probe.

    python benchmarks/text_order_probe.py [--train-chars 5000000] [--valid-chars 1000000]
        [--orders spread,blocked16,blocked32,blocked64] [--context 4]
        [--out benchmarks/results/text_order_probe.json]

The absorbing-diffusion coder reveals a chunk's positions class by class
(:func:`amdcompress.models.absorbing.network.position_classes`; every chunk
in lock step), so when position p is coded, the characters it can see are the
positions of earlier classes, in its own chunk and in the neighbouring ones.
For each order family and each position of a chunk, this probe takes the
``--context`` nearest such positions (nearest first, left before right on a
tie: an offset pattern), fits an interpolated count model (absolute
discounting, D = 0.75, over the nested patterns of 1..context offsets, down
to the unigram) on the
first ``--train-chars`` of text8's train.txt for that pattern, and scores
every position of the first ``--valid-chars`` of valid.txt with the pattern
of its place in the chunk, using for each class the number of those
characters (0..context) that scores it best (a count model cannot tell
useless far context from noise; picking 1 of context + 1 depths on the
scored text biases the numbers down by a negligible amount). Rows: per
family, the mean bits per char and the mean of each class. Same-class positions revealed earlier in a step
(the coder's random order within a class) are ignored, so the numbers are
for coding each class in one pass.

A count model of 4 characters is far weaker than a network that reads the
whole chunk, but it measures what the *shape* of the revealed context is
worth: a class whose nearest revealed characters are far away costs close to
the unigram whatever the model. Nothing here is used by the codec.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import run_meta, sha256_file, write_results  # noqa: E402

import numpy as np

from amdcompress.codecs.textstream import split
from amdcompress.models.absorbing.network import position_classes
from amdcompress.models.datasets import shared_data_dir

K = 27


def nearest_revealed(classes: np.ndarray, p: int, n: int) -> tuple[int, ...]:
    """The offsets of the n positions nearest to p (chunks repeat ``classes``
    on both sides) whose class is below p's, nearest first, left first on a tie."""
    L = len(classes)
    out: list[int] = []
    d = 1
    while len(out) < n and d <= 4 * L:
        for o in (-d, d):
            if classes[(p + o) % L] < classes[p] and len(out) < n:
                out.append(o)
        d += 1
    return tuple(out)


class CountModel:
    """Interpolated absolute-discounting counts (discount D) of y given the
    characters at nested offset sets (the first 1..n offsets of a pattern),
    over a training text."""

    D = 0.75

    def __init__(self, x: np.ndarray, offsets: tuple[int, ...]):
        self.offsets = offsets
        uni = np.bincount(x, minlength=K).astype(np.float64) + 1.0
        self.unigram = uni / uni.sum()
        self.levels = []
        lo, hi = max([0, *(-o for o in offsets)]), len(x) - max([0, *offsets])
        code = np.zeros(hi - lo, dtype=np.int64)
        y = x[lo:hi]
        for o in offsets:
            code = code * K + x[lo + o : hi + o]
            keys, counts = np.unique(code * K + y, return_counts=True)
            ctx, first = np.unique(keys // K, return_index=True)
            totals = np.add.reduceat(counts, first)
            distinct = np.diff(np.append(first, len(keys)))
            self.levels.append((keys, counts, ctx, totals, distinct))

    def bits(self, x: np.ndarray, where: np.ndarray, depth: int | None = None) -> np.ndarray:
        """-log2 p(x[i] | its context) for every index i in ``where``, with
        the first ``depth`` offsets of the pattern (default all)."""
        y = x[where]
        p = self.unigram[y]
        code = np.zeros(len(where), dtype=np.int64)
        depth = len(self.offsets) if depth is None else depth
        for o, (keys, counts, ctx, totals, distinct) in zip(self.offsets[:depth], self.levels[:depth]):
            code = code * K + x[where + o]
            j = np.minimum(np.searchsorted(ctx, code), len(ctx) - 1)
            seen = ctx[j] == code
            tot = np.where(seen, totals[j], 0).astype(np.float64)
            t = np.where(seen, distinct[j], 0).astype(np.float64)
            kk = code * K + y
            i = np.minimum(np.searchsorted(keys, kk), len(keys) - 1)
            c = np.where(keys[i] == kk, counts[i], 0).astype(np.float64)
            tot1 = np.maximum(tot, 1.0)
            p = np.where(seen, np.maximum(c - self.D, 0.0) / tot1 + self.D * t / tot1 * p, p)
        return -np.log2(p)


def probe(order: str, length: int, train: np.ndarray, valid: np.ndarray, n: int) -> dict:
    classes = position_classes(order, length)
    reach = 4 * length
    where_all = np.arange(reach, len(valid) - reach)
    pattern_of = [nearest_revealed(classes, p, n) for p in range(length)]
    bits = np.zeros((n + 1, len(valid)))    # [depth, position]
    models: dict[tuple[int, ...], CountModel] = {}
    for pat in sorted(set(pattern_of)):
        models[pat] = CountModel(train, pat)
        ps = [p for p in range(length) if pattern_of[p] == pat]
        where = where_all[np.isin(where_all % length, ps)]
        for depth in range(n + 1):
            bits[depth, where] = models[pat].bits(valid, where, min(depth, len(pat)))
    b = bits[:, where_all]
    cls = classes[where_all % length]
    by_class, total = [], 0.0
    for j in range(int(classes.max()) + 1):
        per_depth = b[:, cls == j].mean(1)
        best = int(per_depth.argmin())
        total += float(b[best, cls == j].sum())
        by_class.append({"class": int(j), "positions_per_chunk": int((classes == j).sum()),
                         "bits_per_char": round(float(per_depth[best]), 4), "context_chars_used": best,
                         "nearest_offsets": list(pattern_of[int(np.flatnonzero(classes == j)[-1])])})
    return {"order": order, "length": length, "context": n, "bits_per_char": round(total / len(where_all), 4),
            "patterns": len(models), "by_class": by_class}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-chars", type=int, default=5_000_000)
    ap.add_argument("--valid-chars", type=int, default=1_000_000)
    ap.add_argument("--orders", default="spread,blocked16,blocked32,blocked64")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--context", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "text_order_probe.json"))
    a = ap.parse_args(argv)
    d = shared_data_dir() / "text8"
    train = split(np.fromfile(d / "train.txt", dtype=np.uint8, count=a.train_chars))[0].astype(np.int64)
    valid = split(np.fromfile(d / "valid.txt", dtype=np.uint8, count=a.valid_chars))[0].astype(np.int64)
    rows = []
    for order in a.orders.split(","):
        r = probe(order, a.length, train, valid, a.context)
        print(f"{order:10s} {r['bits_per_char']:.4f} bpc  by class: "
              + " ".join(f"{c['bits_per_char']:.2f}" for c in r["by_class"]), flush=True)
        rows.append(r)
    ar = CountModel(train, tuple(range(-1, -a.context - 1, -1)))
    w = np.arange(a.context, len(valid))
    rows.append({"order": f"left to right ({a.context} chars)", "length": None, "context": a.context,
                 "bits_per_char": round(float(ar.bits(valid, w).mean()), 4)})
    print(f"left to right ({a.context} chars): {rows[-1]['bits_per_char']:.4f} bpc")
    meta = run_meta({"train": {"file": str(d / "train.txt"), "sha256": sha256_file(d / "train.txt"),
                               "chars": int(len(train))},
                     "valid": {"file": str(d / "valid.txt"), "sha256": sha256_file(d / "valid.txt"),
                               "chars": int(len(valid))}},
                    benchmark="benchmarks/text_order_probe.py",
                    notes=["count-model probe of the order families' context shapes (absolute discounting over the "
                           f"{a.context} nearest revealed characters); not a coder, not a bound"])
    write_results(Path(a.out), meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
