"""Classical lossless-codec baselines on the shared CIFAR-10 and text8 subsets.

    python benchmarks/classical.py [--data DIR] [--out DIR] [--limit N] [--text-limit N]

Images (``cifar10/test.npy``, uint8 (N, 32, 32, 3)): PNG, WebP lossless, JPEG-XL
lossless (effort 9 and 10) and JPEG 2000 lossless, each measured two ways:

* ``per-image``: one file per image; ``bytes`` is the sum over all images;
* ``strip``: the whole set as one image, all images stacked vertically into one
  (N*32, 32, 3) array (a codec with a maximum side, WebP's 16383 px, gets the
  strip folded into side-by-side columns; the row's ``layout`` says so).

Text (``text8/valid.txt``): gzip, bzip2, xz, zstd, brotli and PPMd, each on the
whole file at its strongest standard setting. All general-purpose compressors
are the Python modules (stdlib ``gzip``/``bz2``/``lzma``, ``zstandard``,
``brotli``, ``pyppmd``), never the command-line tools.

Every encoding is decoded and compared with the input (``numpy.array_equal``
for images, byte equality for text); a mismatch gives a row with
``"verified": false`` and exit status 1. Results go to ``OUT/classical.json`` in
the row schema documented in ``benchmarks/report.py``.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import git_commit, machine_info, now, sha256_file  # noqa: E402
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
IMAGE_FILE = "cifar10/test.npy"
TEXT_FILE = "text8/valid.txt"

FLIF_NOTE = (
    "FLIF: no encoder installable here (no FLIF package on PyPI or in Debian bookworm, "
    "no FLIF codec in imagecodecs); JPEG-XL, whose modular mode descends from FLIF, is its successor."
)


@dataclass
class Codec:
    """A lossless codec: ``encode(x) -> bytes`` and ``decode(bytes) -> x``.

    ``params`` states the exact settings and library version; ``max_side`` is the
    largest image side the format allows (None: no limit that matters here).
    """

    name: str
    params: str
    encode: Callable
    decode: Callable
    max_side: int | None = None


# --------------------------------------------------------------------------- image codecs

def png_codec() -> Codec:
    """PNG through Pillow with ``optimize=True`` (zlib level 9 plus filter search).

    Lossless for any uint8 RGB array; decodes to the same (H, W, 3) array.
    """
    from PIL import Image, __version__ as pil_version

    def encode(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    def decode(b: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

    return Codec("PNG", f"Pillow {pil_version} save(format='PNG', optimize=True)", encode, decode)


def _imagecodecs(fmt: str, name: str, params: str, max_side: int | None = None, **options) -> Codec | None:
    """Codec ``name`` through imagecodecs' ``{fmt}_encode(a, **options)`` and
    ``{fmt}_decode``, or None when imagecodecs lacks the format. ``params``: the
    settings, written as the call states them (the library version is appended)."""
    import imagecodecs as ic

    if not getattr(ic, fmt.upper()).available:
        return None
    encode = getattr(ic, f"{fmt}_encode")
    version = getattr(ic, f"{fmt}_version")()
    return Codec(name, f"imagecodecs {params}, {version}", lambda a: encode(a, **options),
                 getattr(ic, f"{fmt}_decode"), max_side=max_side)


def webp_codec() -> Codec | None:
    """WebP lossless at maximum effort (imagecodecs: lossless=True, level=100, method=6,
    i.e. ``cwebp -lossless -z 9``). Lossless for uint8 RGB; sides at most 16383 px.
    None when imagecodecs lacks WebP."""
    return _imagecodecs("webp", "WebP", "webp_encode(lossless=True, level=100, method=6)", max_side=16383,
                        level=100, lossless=True, method=6)


def jpegxl_codec(effort: int = 9) -> Codec | None:
    """JPEG-XL lossless (modular, distance 0) at the given effort through imagecodecs/libjxl.

    Exactly lossless for uint8 RGB; bare codestream (no container). Effort 9 is the
    usual "max" setting (cjxl -e 9); libjxl 0.11 also has effort 10, much slower.
    None when imagecodecs lacks JPEG-XL.
    """
    return _imagecodecs("jpegxl", f"JPEG-XL e{effort}",
                        f"jpegxl_encode(lossless=True, effort={effort}, numthreads=1)",
                        lossless=True, effort=effort, numthreads=1)


def jpeg2k_codec() -> Codec | None:
    """JPEG 2000 lossless through imagecodecs/OpenJPEG: reversible 5/3 wavelet with the
    reversible colour transform (level=0, reversible=True), written as a JP2 file
    (imagecodecs' default; resolution levels chosen by imagecodecs for the image size).
    None when imagecodecs lacks JPEG 2000."""
    return _imagecodecs("jpeg2k", "JPEG 2000", "jpeg2k_encode(level=0, reversible=True, numthreads=1) -> JP2",
                        level=0, reversible=True, numthreads=1)


def image_codecs() -> list[Codec]:
    """The image codecs available here, in report order."""
    return [c for c in (png_codec(), jpeg2k_codec(), webp_codec(), jpegxl_codec(9), jpegxl_codec(10)) if c is not None]


# --------------------------------------------------------------------------- text codecs

def gzip_codec() -> Codec:
    """gzip -9 via the stdlib ``gzip`` module (zlib deflate, mtime=0: deterministic)."""
    import zlib

    return Codec("gzip", f"gzip.compress(level=9, mtime=0), zlib {zlib.ZLIB_RUNTIME_VERSION}",
                 lambda d: gzip.compress(d, compresslevel=9, mtime=0), gzip.decompress)


def bzip2_codec() -> Codec:
    """bzip2 -9 via the stdlib ``bz2`` module (900k blocks)."""
    return Codec("bzip2", "bz2.compress(compresslevel=9)", lambda d: bz2.compress(d, 9), bz2.decompress)


def xz_codec() -> Codec:
    """xz -9e via the stdlib ``lzma`` module (preset 9 | PRESET_EXTREME, .xz container)."""
    return Codec("xz", "lzma.compress(preset=9|PRESET_EXTREME), FORMAT_XZ",
                 lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress)


def zstd_codec() -> Codec | None:
    """zstd --ultra -22 via ``zstandard`` (frame with content size). None if not installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return Codec(
        "zstd",
        f"zstandard {zstandard.__version__} ZstdCompressor(level=22), libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}",
        lambda d: zstandard.ZstdCompressor(level=22).compress(d),
        lambda b: zstandard.ZstdDecompressor().decompress(b),
    )


def brotli_codec() -> Codec | None:
    """brotli quality 11 with a 16 MiB window (lgwin=24). None if not installed."""
    try:
        import brotli
    except ImportError:
        return None
    return Codec("brotli", f"brotli {brotli.__version__} compress(quality=11, lgwin=24)",
                 lambda d: brotli.compress(d, quality=11, lgwin=24), brotli.decompress)


PPMD_ORDER, PPMD_MEM, PPMD_VARIANT = 8, 256 << 20, "I"


def ppmd_codec() -> Codec | None:
    """PPMd variant I (rev. 2, as in 7-Zip/ZIP), order 8, 256 MiB model memory, via ``pyppmd``.

    Variant I beats H here at every order tried (order 8: 1.906 vs 1.909 bpc on
    valid.txt). Decoding needs the same order, memory and variant. None if not installed.
    """
    try:
        import pyppmd
    except ImportError:
        return None
    kw = dict(max_order=PPMD_ORDER, mem_size=PPMD_MEM, variant=PPMD_VARIANT)
    return Codec(
        f"PPMd-{PPMD_ORDER}",
        f"pyppmd {pyppmd.__version__} compress(max_order={PPMD_ORDER}, mem_size=256 MiB, variant='{PPMD_VARIANT}')",
        lambda d: pyppmd.compress(d, **kw),
        lambda b: pyppmd.decompress(b, **kw),
    )


def text_codecs() -> list[Codec]:
    """The text codecs available here, in report order."""
    found = (gzip_codec(), bzip2_codec(), xz_codec(), zstd_codec(), brotli_codec(), ppmd_codec())
    return [c for c in found if c is not None]


# --------------------------------------------------------------------------- measurement

def make_row(domain: str, codec: Codec, setting: str, nbytes: int, dims: int, raw_bytes: int,
             encode_s: float, decode_s: float, verified: bool, **extra) -> dict:
    """One result row in the schema of ``benchmarks/report.py``."""
    row = {
        "domain": domain,
        "codec": codec.name,
        "setting": setting,
        "bytes": int(nbytes),
        "dims": int(dims),
        "bits_per_dim": round(8.0 * nbytes / dims, 5),
        "encode_s": round(encode_s, 4),
        "decode_s": round(decode_s, 4),
        "encode_MBps": round(raw_bytes / 1e6 / encode_s, 3) if encode_s > 0 else None,
        "decode_MBps": round(raw_bytes / 1e6 / decode_s, 3) if decode_s > 0 else None,
        "verified": bool(verified),
        "params": codec.params,
    }
    row.update(extra)
    return row


def strip_image(images: np.ndarray, max_side: int | None) -> tuple[np.ndarray, str]:
    """All images stacked vertically into one (N*H, W, C) image.

    If N*H exceeds ``max_side`` the stack is folded into the fewest equal columns
    that fit, placed side by side (zero images pad the last column). Returns the
    array and a layout description.
    """
    n, h, w, c = images.shape
    if max_side is None or n * h <= max_side:
        return images.reshape(n * h, w, c), f"{n * h}x{w}"
    cols = math.ceil(n / (max_side // h))
    per_col = math.ceil(n / cols)
    pad = cols * per_col - n
    if pad:
        images = np.concatenate([images, np.zeros((pad, h, w, c), images.dtype)])
    strip = images.reshape(cols, per_col * h, w, c).transpose(1, 0, 2, 3).reshape(per_col * h, cols * w, c)
    note = f"{per_col * h}x{cols * w}: folded into {cols} columns of {per_col} images (max side {max_side})"
    return np.ascontiguousarray(strip), note + (f", {pad} zero images padding" if pad else "")


def bench_image_codec(codec: Codec, images: np.ndarray) -> list[dict]:
    """Per-image and strip rows for one codec; every encoding is decoded and compared."""
    dims = images.size
    t0 = time.perf_counter()
    blobs = [codec.encode(im) for im in images]
    t1 = time.perf_counter()
    decoded = [codec.decode(b) for b in blobs]
    t2 = time.perf_counter()
    ok = all(np.array_equal(d, im) for d, im in zip(decoded, images))
    per_image = make_row("image", codec, "per-image", sum(map(len, blobs)), dims, images.nbytes,
                         t1 - t0, t2 - t1, ok, items=len(images), layout="one file per 32x32 image")

    strip, layout = strip_image(images, codec.max_side)
    t0 = time.perf_counter()
    blob = codec.encode(strip)
    t1 = time.perf_counter()
    back = codec.decode(blob)
    t2 = time.perf_counter()
    ok = np.array_equal(back, strip)
    strip_row = make_row("image", codec, "strip", len(blob), dims, images.nbytes, t1 - t0, t2 - t1, ok,
                         items=len(images), layout=layout)
    return [per_image, strip_row]


def bench_text_codec(codec: Codec, data: bytes) -> dict:
    """One row for the whole text, round trip checked byte for byte."""
    t0 = time.perf_counter()
    blob = codec.encode(data)
    t1 = time.perf_counter()
    back = codec.decode(blob)
    t2 = time.perf_counter()
    return make_row("text", codec, "file", len(blob), len(data), len(data), t1 - t0, t2 - t1,
                    bytes(back) == data, items=1)


# --------------------------------------------------------------------------- provenance

def library_versions() -> dict:
    import zlib

    import PIL

    v = {"numpy": np.__version__, "Pillow": PIL.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION}
    try:
        import imagecodecs as ic

        v["imagecodecs"] = ic.__version__
        for name in ("jpegxl", "webp", "jpeg2k", "png"):
            fn = getattr(ic, f"{name}_version", None)
            if fn is not None:
                v[f"imagecodecs.{name}"] = fn()
    except ImportError:
        pass
    for mod in ("zstandard", "brotli", "pyppmd"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    return v


def resolve_data_dir(arg: str | None) -> Path:
    """--data, else $AMDCOMPRESS_DATA, else ../shared/data beside the repo."""
    return Path(arg or os.environ.get("AMDCOMPRESS_DATA") or DEFAULT_DATA).resolve()


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="data directory (default: $AMDCOMPRESS_DATA or ../shared/data)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: benchmarks/results)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--text-limit", type=int, default=None, help="use only the first N characters of the text")
    args = p.parse_args(argv)

    data_dir = resolve_data_dir(args.data)
    image_path, text_path = data_dir / IMAGE_FILE, data_dir / TEXT_FILE
    for path in (image_path, text_path):
        if not path.is_file():
            print(f"error: data file not found: {path}", file=sys.stderr)
            return 2

    images = np.load(image_path)[: args.limit]
    if images.dtype != np.uint8 or images.ndim != 4:
        print(f"error: expected uint8 (N, H, W, C) images, got {images.dtype} {images.shape}", file=sys.stderr)
        return 2
    images = np.ascontiguousarray(images)
    text = text_path.read_bytes()[: args.text_limit]

    rows: list[dict] = []
    start = time.perf_counter()
    for codec in image_codecs():
        for r in bench_image_codec(codec, images):
            rows.append(r)
            print(f"image {r['codec']:10s} {r['setting']:9s} {r['bits_per_dim']:.3f} bpd  "
                  f"enc {r['encode_s']:.2f}s dec {r['decode_s']:.2f}s  verified={r['verified']}", flush=True)
    for codec in text_codecs():
        r = bench_text_codec(codec, text)
        rows.append(r)
        print(f"text  {r['codec']:10s} {r['setting']:9s} {r['bits_per_dim']:.3f} bpc  "
              f"enc {r['encode_s']:.2f}s dec {r['decode_s']:.2f}s  verified={r['verified']}", flush=True)
    total_s = time.perf_counter() - start

    n, n_chars = len(images), len(text)
    meta = {
        "benchmark": "classical",
        "data": {
            "image": {"file": IMAGE_FILE, "path": str(image_path), "sha256": sha256_file(image_path),
                      "split": f"CIFAR-10 test batch, first {n} images"
                               + ("" if args.limit is None else f" (--limit {args.limit})"),
                      "shape": list(images.shape)},
            "text": {"file": TEXT_FILE, "path": str(text_path), "sha256": sha256_file(text_path),
                     "split": f"text8 valid: characters 10,000,000..{10_000_000 + n_chars - 1:,} of text8 ({n_chars:,} chars)"
                              + ("" if args.text_limit is None else f" (--text-limit {args.text_limit})"),
                     "chars": n_chars},
        },
        "machine": machine_info(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "commit": git_commit(),
        "date": now(),
        "total_s": round(total_s, 2),
        "notes": {
            "image": [
                FLIF_NOTE,
                "JPEG 2000 rows are .jp2 files as imagecodecs writes them (about 85 bytes of JP2 boxes per "
                "file); wrappers pick different OpenJPEG defaults (Pillow, raw codestream, 6 resolutions, "
                "mct=1: 5.151 bpd per-image on the full test.npy, measured once).",
                "JPEG-XL sizes depend on the libjxl build and wrapper: effort 9 via pillow-jxl-plugin 1.3.8 "
                "gave 4.061 bpd per-image and 3.997 strip on the full test.npy (measured once).",
            ],
            "text": ["General-purpose compressors run through their Python modules, not the CLI tools "
                     "(GNU gzip -9 is ~0.04% smaller than zlib level 9 on valid.txt)."],
        },
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "classical.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, out_dir / "classical.json")
    print(f"wrote {out_dir / 'classical.json'} ({len(rows)} rows, {total_s:.1f} s)")

    bad = [f"{r['domain']}/{r['codec']}/{r['setting']}" for r in rows if not r["verified"]]
    if bad:
        print("error: round trip failed for " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
