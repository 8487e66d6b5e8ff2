"""Quick run of the classical-codec benchmark and the report on a small slice of the real data."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

pytest.importorskip("imagecodecs")
pytest.importorskip("pyppmd")
pytest.importorskip("brotli")
pytest.importorskip("zstandard")
pytest.importorskip("matplotlib")

from benchmarks import classical, report  # noqa: E402


@pytest.mark.slow
def test_classical_benchmark_and_report(tmp_path):
    data_dir = classical.resolve_data_dir(None)
    if not (data_dir / classical.IMAGE_FILE).is_file() or not (data_dir / classical.TEXT_FILE).is_file():
        pytest.skip(f"benchmark data not found under {data_dir}")

    rc = classical.main(["--data", str(data_dir), "--out", str(tmp_path), "--limit", "8", "--text-limit", "20000"])
    assert rc == 0
    result = json.loads((tmp_path / "classical.json").read_text())
    rows = result["rows"]
    assert rows and all(r["verified"] is True for r in rows)
    assert all(r["bits_per_dim"] > 0 for r in rows)
    assert {r["domain"] for r in rows} == {"image", "text"}
    assert all(k in r for r in rows for k in report.REQUIRED)

    by = {(r["codec"], r["setting"]): r for r in rows}
    assert by[("PNG", "per-image")]["dims"] == 8 * 32 * 32 * 3
    assert by[("PNG", "per-image")]["bits_per_dim"] > by[("JPEG-XL e9", "per-image")]["bits_per_dim"]
    assert {("PPMd-8", "file"), ("gzip", "file")} <= set(by)
    assert result["meta"]["data"]["image"]["sha256"] and result["meta"]["date"]

    assert report.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Images" in md and "## Text" in md and "JPEG-XL e9" in md and "Provenance" in md
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_strip_folding_round_trips():
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    strip, layout = classical.strip_image(images, max_side=12)  # 3 images per column -> 3 columns
    assert strip.shape == (12, 12, 3) and "3 columns" in layout
    cols = strip.reshape(12, 3, 4, 3).transpose(1, 0, 2, 3).reshape(9, 4, 4, 3)
    assert np.array_equal(cols[:7], images) and not cols[7:].any()
    flat, _ = classical.strip_image(images, max_side=None)
    assert np.array_equal(flat, images.reshape(28, 4, 3))
