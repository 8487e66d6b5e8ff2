"""Merge every benchmark result file into one markdown report and one bar chart.

    python benchmarks/report.py [--results DIR]

Reads every ``DIR/*.json`` (default ``benchmarks/results``) that holds rows in the
schema below, and writes ``DIR/report.md`` (one table per domain, sorted by bits
per dimension, with each source file's provenance under the table) and
``DIR/report.png`` (one horizontal bar chart per domain). Files in another shape
are skipped with a warning, so any benchmark can add its own file next to
``classical.json`` and appear in the same report.

Result file schema
------------------
A JSON object ``{"meta": {...}, "rows": [row, ...]}`` (a bare list of rows is
accepted too, without provenance).

Each row, required keys:

=============  ===============================================================
domain         "image" or "text"
codec          name shown in the report, e.g. "JPEG-XL", "amdcompress-idf"
setting        "per-image" (one file per image), "strip" (whole set in one
               file), "file" (text: the whole file), or any short label
bytes          total compressed size in bytes (int)
dims           number of dimensions coded: subpixels for images, characters
               for text (int)
bits_per_dim   8 * bytes / dims (bpd for images, bpc for text)
encode_s       wall time to encode everything, seconds
decode_s       wall time to decode everything, seconds
verified       true only if every encoding was decoded and compared exactly (null: not decoded, e.g. a timing-only row)
=============  ===============================================================

Optional row keys: ``encode_MBps``/``decode_MBps`` (raw input MB per second),
``params`` (exact settings and library versions), ``layout``, ``items``, ``note``.

Optional ``meta`` keys used here: ``data`` — either ``{domain: {"file", "sha256",
"split"}}`` or top-level ``{"file", "sha256", "split"}``; ``machine`` (dict or
str), ``commit``, ``date``, ``notes`` (``{domain: [str, ...]}``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
REQUIRED = ("domain", "codec", "setting", "bytes", "dims", "bits_per_dim", "encode_s", "decode_s", "verified")
DOMAINS = {"image": ("Images", "bits/dim"), "text": ("Text", "bits/char")}


def load_results(results_dir: Path) -> list[tuple[str, dict, list[dict]]]:
    """(file name, meta, rows) for every JSON file in the row schema, sorted by name."""
    found = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"warning: skipping {path.name}: {e}", file=sys.stderr)
            continue
        meta, rows = ({}, obj) if isinstance(obj, list) else (obj.get("meta") or {}, obj.get("rows"))
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, dict) and all(k in r for k in REQUIRED) for r in rows):
            print(f"warning: skipping {path.name}: not in the benchmark row schema", file=sys.stderr)
            continue
        found.append((path.name, meta, rows))
    return found


def _fmt(x, digits=2) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _data_info(meta: dict, domain: str) -> dict:
    data = meta.get("data") or {}
    return data.get(domain, data) if isinstance(data, dict) else {"file": str(data)}


def provenance(name: str, meta: dict, domain: str) -> str:
    """One line: where the rows of ``name`` for ``domain`` came from."""
    d = _data_info(meta, domain)
    m = meta.get("machine")
    if isinstance(m, dict):
        cpu = m.get("cpu") or m.get("processor") or m.get("machine", "?")
        m = f"{cpu}, {m.get('cpu_count') or m.get('cpus', '?')} CPUs, {m.get('system') or m.get('platform', '')} {m.get('release', '')}".strip()
    sha = d.get("sha256")
    parts = [
        f"data `{d.get('file', '?')}`" + (f" (sha256 `{sha[:16]}…`)" if sha else ""),
        f"split: {d.get('split', '?')}",
        f"machine: {m or '?'}",
        f"python {meta['python']}" if meta.get("python") else None,
        f"commit: `{meta.get('commit') or 'unknown'}`",
        f"date: {meta.get('date', '?')}",
    ]
    return f"`{name}` — " + "; ".join(p for p in parts if p)


def _params(p) -> str:
    """A row's params: a string as is, a dict as k=v pairs."""
    if isinstance(p, dict):
        return ", ".join(f"{k}={v}" for k, v in p.items())
    return str(p or "")


def markdown(results: list[tuple[str, dict, list[dict]]], compact: bool = False) -> str:
    """The report: a table per domain sorted by bits/dim, provenance and notes under
    it. ``compact`` drops the per-row source and params columns (for the README)."""
    out = [] if compact else ["# Lossless compression benchmarks", ""]
    for domain, (title, unit) in DOMAINS.items():
        rows = [(name, r) for name, _, rs in results for r in rs if r["domain"] == domain]
        if not rows:
            continue
        rows.sort(key=lambda nr: nr[1]["bits_per_dim"])
        ncols = 10 if compact else 12
        header = ["codec", "setting", unit, "bytes", "dims", "encode s", "decode s", "encode MB/s", "decode MB/s",
                  "verified", "source", "params"][:ncols]
        out += [f"{'###' if compact else '##'} {title}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join(["---", "---"] + ["---:"] * 7 + ["---"] * (ncols - 9)) + "|"]
        for name, r in rows:
            out.append("| " + " | ".join(_cell(c) for c in [
                r["codec"], r["setting"], f"{r['bits_per_dim']:.3f}", _fmt(r["bytes"]), _fmt(r["dims"]),
                _fmt(r["encode_s"]), _fmt(r["decode_s"]), _fmt(r.get("encode_MBps")), _fmt(r.get("decode_MBps")),
                {True: "yes", None: "not decoded"}.get(r["verified"], "**NO**"), name,
                _params(r.get("params")) + (f"; layout {r['layout']}" if r.get("layout") and r["setting"] == "strip" else ""),
            ][:ncols]) + " |")
        out.append("")
        for name, meta, rs in results:
            if any(r["domain"] == domain for r in rs):
                out.append(f"Provenance: {provenance(name, meta, domain)}  ")
                for note in (meta.get("notes") or {}).get(domain, []):
                    out.append(f"Note: {note}  ")
        out.append("")
    return "\n".join(out)


def plot(results: list[tuple[str, dict, list[dict]]], path: Path) -> None:
    """Horizontal bar chart of bits/dim, one panel per domain present (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for domain, (title, unit) in DOMAINS.items():
        rows = sorted((r for _, _, rs in results for r in rs if r["domain"] == domain),
                      key=lambda r: r["bits_per_dim"], reverse=True)
        if rows:
            panels.append((title, unit, rows))
    heights = [max(2, 0.32 * len(rows) + 1) for _, _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights) + 0.5),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, unit, rows) in zip(axes[:, 0], panels):
        labels = [f"{r['codec']} ({r['setting']})" for r in rows]
        values = [r["bits_per_dim"] for r in rows]
        colors = ["tab:orange" if not r["codec"].startswith(("amdcompress", "AMD")) else "tab:blue" for r in rows]
        bars = ax.barh(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=3, fontsize=8)
        ax.set_xlabel(unit)
        ax.set_title(title)
        ax.set_xlim(0, max(values) * 1.15)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curves(results_dir: Path, prefix: str = "") -> str:
    """Links to the held-out learning curves (``benchmarks/learning_curve.py``) and their last points."""
    out = []
    for path in sorted(results_dir.glob("learning_curve_*.json")):
        d = json.loads(path.read_text())
        pts, meta = d.get("points", []), d.get("meta", {})
        if not pts:
            continue
        key = next(k for k in pts[-1] if k.endswith(("_bpd", "_bpc")))
        exports = ", ".join(f"{p['weights']} {p[key]:.4f} at {p['minutes']:.0f} min"
                            + (" (earlier estimator)" if p["kind"] != "export" else "")
                            for p in pts if p["kind"].startswith("export"))
        out.append(f"- `{meta.get('model')}` ({meta.get('metric')}): [{prefix}{path.with_suffix('.png').name}]"
                   f"({prefix}{path.with_suffix('.png').name}), {len(pts)} points from the weights records "
                   f"(`python benchmarks/learning_curve.py --model {meta.get('model')}`, commit {meta.get('commit')}); "
                   f"exports: {exports}")
    return ("\n\n### Learning curves\n\n" + "\n".join(out) + "\n") if out else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Merge benchmarks/results/*.json into report.md and report.png")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="results directory (default: benchmarks/results)")
    p.add_argument("--readme", help="also replace the block between <!-- report:start --> and <!-- report:end --> "
                                    "in this markdown file with the compact tables")
    args = p.parse_args(argv)
    results_dir = Path(args.results)
    results = load_results(results_dir)
    if not results:
        print(f"error: no result files in the row schema under {results_dir}", file=sys.stderr)
        return 1
    md = markdown(results) + learning_curves(results_dir)
    (results_dir / "report.md").write_text(md + "\n")
    plot(results, results_dir / "report.png")
    print(md)
    print(f"wrote {results_dir / 'report.md'} and {results_dir / 'report.png'}")
    if args.readme:
        update_readme(Path(args.readme), markdown(results, compact=True) + learning_curves(results_dir, "benchmarks/results/")
                      + "\n### Shipped models\n\n" + models_table()
                      + "\n\nEach record (`models/weights/*.json`) also gives the data, the final train numbers and the export command.\n")
        print(f"updated {args.readme}")
    return 0


START, END = "<!-- report:start -->", "<!-- report:end -->"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"
HELD_OUT_KEYS = (("final_test_bpd", "test bpd (NLL)"), ("valid_elbo_bpc", "valid bpc (ELBO)"),
                 ("valid_nll_bpc", "valid bpc (NLL)"), ("valid_bpc", "valid bpc (NLL)"),
                 ("valid_full_order_bpc", "valid bpc (ARDM bound, full order)"))


def _commands(rec: dict) -> str:
    """The record's last training command, after the earlier runs it continued (if any)."""
    last = f"`{rec.get('command') or (rec.get('commands') or ['?'])[-1]}`"
    earlier = [c for c in rec.get("earlier_commands") or [] if c]
    return (" then ".join(f"`{c}`" for c in earlier) + " then " + last) if earlier else last


def models_table(weights_dir: Path = WEIGHTS_DIR) -> str:
    """A markdown table of the shipped weights, read from their JSON records
    (written by the training commands' export step)."""
    rows = ["| weights | params | file MB | trained | device | held-out | command |", "|---|---:|---:|---:|---|---|---|"]
    for rec_path in sorted(weights_dir.glob("*.json")):
        rec = json.loads(rec_path.read_text())
        f = weights_dir / rec.get("file", "")
        held = "; ".join(f"{label} {rec[k]:.3f}" for k, label in HELD_OUT_KEYS if isinstance(rec.get(k), (int, float)))
        chars = rec.get("valid_chars") or rec.get("valid_full_order_chars")
        if chars:
            held += f" on {chars:,} chars"
        rows.append("| " + " | ".join(_cell(str(c)) for c in [
            rec.get("file", rec_path.stem), f"{rec.get('params', 0):,}", f"{f.stat().st_size / 1e6:.1f}" if f.is_file() else "?",
            f"{rec.get('minutes', 0):.0f} min, {rec.get('steps', 0):,} steps", f"{rec.get('device', '?')}, {rec.get('threads', '?')} thread(s)",
            held, _commands(rec)]) + " |")
    return "\n".join(rows)


def update_readme(path: Path, tables: str) -> None:
    """Replace the generated block of ``path`` (between START and END markers)."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {path} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    block = ("\nGenerated by `python benchmarks/classical.py && python benchmarks/report.py --readme README.md` "
             "(learned-model rows: the `benchmarks/*_bench.py` scripts); full table with settings: "
             "`benchmarks/results/report.md`, chart: `benchmarks/results/report.png`.\n\n" + tables.strip() + "\n")
    path.write_text(head + START + block + END + tail)


if __name__ == "__main__":
    sys.exit(main())
