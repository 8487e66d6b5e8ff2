"""What every learned-text benchmark row holds: one timed round trip of the
input through the public API (``api.compress`` / ``api.decompress``), its
actual ``.amd`` size, speed, and how the file splits into header, model stream
and escapes. The ``*_bench.py`` scripts add their model's own measurements."""
from __future__ import annotations

import time
from pathlib import Path

TEXT_FILE = "text8/valid.txt"
VALID_SPLIT = "text8 valid.txt (chars 10M-11M of text8)"


def data_dir(arg: str | None = None) -> Path:
    """The data directory: ``arg``, else ``$AMDCOMPRESS_DATA``, else ../shared/data
    (:func:`amdcompress.models.datasets.shared_data_dir`)."""
    from amdcompress.models.datasets import shared_data_dir

    return Path(arg) if arg else shared_data_dir()


DEFAULT_VALID = data_dir() / TEXT_FILE


def add_data_args(p) -> None:
    """``--data`` (the data directory) and ``--out`` (the results directory) of a text benchmark."""
    from benchmarks.provenance import RESULTS_DIR

    p.add_argument("--data", help="data directory (default: $AMDCOMPRESS_DATA or ../shared/data)")
    p.add_argument("--out", default=str(RESULTS_DIR))


def read_valid(arg: str | None = None) -> tuple[Path, bytes, dict]:
    """``(path, text, data record)`` of text8's valid.txt in the data directory
    ``arg`` (see :func:`data_dir`); the record names the file and its SHA-256
    (the ``data`` of a result file's meta; callers add what prefix they use)."""
    import hashlib

    path = data_dir(arg) / TEXT_FILE
    text = path.read_bytes()
    return path, text, {"file": TEXT_FILE, "path": str(path), "sha256": hashlib.sha256(text).hexdigest()}


def classical_same_prefix(raw: bytes) -> dict:
    """bzip2 -9 and xz -9e bits per char of the same bytes, for rows that test a prefix."""
    import bz2
    import lzma

    n = max(1, len(raw))
    return {"bzip2_same_prefix_bpc": round(8.0 * len(bz2.compress(raw, 9)) / n, 4),
            "lzma_same_prefix_bpc": round(8.0 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / n, 4)}


def size_label(size: int, total: int, whole: str = "file") -> str:
    """The setting name of a prefix of ``size`` bytes of a ``total``-byte file (0: all of it)."""
    if size == 0 or size >= total:
        return whole
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def round_trip_row(raw: bytes, model: str, setting: str, digits: int = 5, **options) -> tuple[dict, dict, object]:
    """``(row, stats, backend)``: the shared row fields for coding ``raw`` with
    ``model`` (and its ``options``, e.g. ``steps``), the backend's ``last_stats``
    of that encode, and the backend. ``verified`` is whether decoding gave ``raw`` back."""
    from amdcompress import api, backends
    from amdcompress.models import registry

    backend = backends.by_name(model)
    t0 = time.perf_counter()
    blob = api.compress(raw, model=model, **options)
    enc = time.perf_counter() - t0
    stats = dict(backend.last_stats)
    t0 = time.perf_counter()
    back = api.decompress(blob)
    dec = time.perf_counter() - t0
    info = api.info(blob)
    n = len(raw)
    row = {
        "domain": "text", "codec": f"amdcompress-{model}", "setting": setting,
        "bytes": len(blob), "dims": n, "bits_per_dim": 8 * len(blob) / n,
        "encode_s": round(enc, 3), "decode_s": round(dec, 3), "verified": back == raw,
        "encode_chars_per_s": round(n / enc, 1), "decode_chars_per_s": round(n / dec, 1),
        "encode_MBps": round(n / enc / 1e6, digits), "decode_MBps": round(n / dec / 1e6, digits),
        "container_header_bytes": info.header_bytes,
        "model_stream_bytes": info.details["model_stream_bytes"], "escape_bytes": info.details["escape_bytes"],
        "model_bytes": registry.weights_path(backend.newest.name).stat().st_size,
    }
    return row, stats, backend
