"""Held-out learning curve of a model's shipped weights, from their records.

    python benchmarks/learning_curve.py [--model idf]

For every weights version of ``--model`` in ``models/registry.py`` (oldest
first), reads its JSON record in ``models/weights/`` and collects the held-out
evaluations of every training run that led to it (``training_runs[*].evals``,
written by the training harness), plus each version's exported number at its
final training minutes. Writes ``benchmarks/results/learning_curve_<model>.json``
(the points, with provenance) and ``learning_curve_<model>.png`` (held-out
metric against training minutes and against images/characters seen), which
``benchmarks/report.py`` links from the report. Nothing here trains or
evaluates: every point is a number a training run or an export measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import git_commit, now  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the held-out number a record or an evaluation holds, by model kind
METRICS = {"image": ("test_bpd", "final_test_bpd", "bits/dim on cifar10/test.npy (600 images)"),
           "text": ("valid_bpc", "valid_bpc", "bits/char on text8 valid.txt")}
# models whose record names its held-out number differently
RECORD_KEYS = {"absorbing-diffusion": "valid_full_order_bpc"}


def points(model: str) -> tuple[list[dict], str]:
    """(points oldest first, the metric's description) of every shipped version's history."""
    from amdcompress.models import registry

    entry = registry.model(model)
    key, final_key, what = METRICS[entry.data]
    final_key = RECORD_KEYS.get(model, final_key)
    seen_key = "images_seen" if entry.data == "image" else "chars_seen"
    out: list[dict] = []
    exact_from = None  # evals and exports up to this step used an earlier estimator (the newest record says)
    for w in entry.weights:
        try:
            exact_from = registry.record(w.name).get("heldout_estimator_from_step")
            break
        except Exception:  # noqa: BLE001
            continue
    for w in reversed(entry.weights):
        try:
            rec = registry.record(w.name)
        except Exception:  # noqa: BLE001 - a version without its record has no curve
            continue
        for run in rec.get("training_runs", []):
            for ev in run.get("evals", []):
                value = ev.get(key)
                if isinstance(value, (int, float)):
                    older = exact_from is not None and (ev.get("step") or 0) <= exact_from
                    out.append({"weights": w.name, "kind": "eval (earlier estimator)" if older else "eval",
                                "minutes": ev.get("minutes"),
                                "step": ev.get("step"), "seen": ev.get(seen_key), key: value,
                                "run": run.get("command")})
        final = rec.get(final_key)
        if isinstance(final, (int, float)):
            seen, estimated = rec.get(seen_key), False
            if seen is None and rec.get("steps") is not None and entry.data == "image":
                # records written before images were counted: every IDF run so far used batches of 64
                seen, estimated = int(rec["steps"]) * int(rec.get("batch") or 64), True
            older = exact_from is not None and (rec.get("steps") or 0) <= exact_from
            out.append({"weights": w.name, "kind": "export (earlier estimator)" if older else "export",
                        "minutes": rec.get("minutes"), "step": rec.get("steps"),
                        "seen": seen, "seen_is_estimate": estimated, key: final})
    seen: set = set()
    uniq = []
    for p in sorted(out, key=lambda p: (p["minutes"] or 0.0, p["kind"] == "export")):
        k = (p["step"], p["kind"], p[key])
        if k not in seen:
            seen.add(k)
            uniq.append(p)
    return uniq, what


def plot(pts: list[dict], key: str, what: str, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((axes[0], "minutes", "training minutes (all runs, cumulative)"),
                         (axes[1], "seen", "training items seen (cumulative)")):
        for kind, style in (("eval", "o-"), ("eval (earlier estimator)", "x:"), ("export", "s"),
                            ("export (earlier estimator)", "D")):
            sel = [p for p in pts if p["kind"] == kind and p[x] is not None]
            if sel:
                ax.plot([p[x] for p in sel], [p[key] for p in sel], style, label=kind, markersize=4)
        for p in pts:
            if p["kind"].startswith("export") and p[x] is not None:
                ax.annotate(p["weights"], (p[x], p[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{model}: held-out learning curve of the shipped weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="idf")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from amdcompress.models import registry

    pts, what = points(a.model)
    key = METRICS[registry.model(a.model).data][0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"learning_curve_{a.model}.json").write_text(json.dumps(
        {"meta": {"model": a.model, "metric": what, "source": "models/weights/*.json training_runs and exports",
                  "commit": git_commit(), "date": now()}, "points": pts}, indent=1))
    if pts:
        plot(pts, key, what, a.model, out / f"learning_curve_{a.model}.png")
    print(f"{len(pts)} points -> {out / f'learning_curve_{a.model}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
