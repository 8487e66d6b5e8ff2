#!/usr/bin/env python3
"""Golden .amd streams: the format, frozen as files.

For every codec of the build there are small original inputs here and the
``.amd`` files ``amdcompress.compress(raw, model=NAME)`` wrote for them with
the shipped weights; ``manifest.json`` says which input, model, codec id,
weights (name, full SHA-256, the container's 2-byte tag), environment and
commit made each file. ``tests/test_golden.py`` checks that every file still
decodes to its input and that compressing the input again gives exactly the
committed bytes. (The IDF's stream-2 layout is also pinned with a tiny model,
independent of the shipped weights: ``idf_stream2/make.py``.)

Usage (from the repository root, with amdcompress installed)::

    python tests/golden/make_golden.py            # check only: re-encode, report differences, write nothing
    python tests/golden/make_golden.py --write    # rewrite the files (and manifest entries) that differ
    python tests/golden/make_golden.py --write --only idf_cifar.amd

Golden files are rewritten only with ``--write``, and only where the new bytes
differ; an unchanged file keeps its manifest entry (the commit that first made
it). A model whose weights changed (another name or SHA-256 than the manifest
records) is refused even with ``--write`` unless ``--allow-new-weights`` is
given too: its golden files are then the only proof that files made with the
old weights still decode, so replacing them should be a decision.

Inputs are tiny excerpts of the shared data (``$AMDCOMPRESS_DATA`` or
``../shared/data``), or literals below. They are written only when missing
(``--write``); an existing input is never rewritten.

Legacy entries (``"legacy": true``) were made by an older build with weights
this build does not ship (``idf-v2_cifar.amd``: commit a4e18a3, weights
idf-v2). This script makes or checks them only when run by a build whose model
uses those weights, e.g. a checkout of that commit::

    git worktree add /tmp/old a4e18a3
    python3 -m venv --system-site-packages /tmp/venv-old && /tmp/venv-old/bin/pip install -q --no-deps -e /tmp/old
    /tmp/venv-old/bin/python tests/golden/make_golden.py --only idf-v2_cifar.amd [--write]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
DIFFUSION_ENV = "AMDCOMPRESS_DIFFUSION_STEPS"


# --- inputs -------------------------------------------------------------------------------
def _data_dir() -> Path:
    from amdcompress.models.datasets import shared_data_dir

    return Path(shared_data_dir())


def _text8(start: int, length: int) -> bytes:
    return (_data_dir() / "text8" / "valid.txt").read_bytes()[start : start + length]


def _cifar(lo: int, hi: int):
    import numpy as np

    return np.array(np.load(_data_dir() / "cifar10" / "test.npy", mmap_mode="r")[lo:hi])


def _png(a) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode="RGB").save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _npy(a) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


# name -> (how it was made, maker). valid.txt starts mid-word ("inal one nine ..."): the
# excerpts start at character 5, the first whole word.
INPUTS = {
    "bytes.bin": ("bytes 0..255, then b'golden stream ' x 16 (480 bytes)",
                  lambda: bytes(range(256)) + b"golden stream " * 16),
    "text8_400.txt": ("text8 valid.txt characters 5..404 (400 chars)", lambda: _text8(5, 400)),
    "text8_128.txt": ("text8 valid.txt characters 5..132 (128 chars; the diffusion input)",
                      lambda: _text8(5, 128)),
    "escapes.txt": ("a literal: capitals, digits, punctuation, tab, newlines, UTF-8 (e-acute, "
                    "a-tilde, i-diaeresis, em dash)",
                    lambda: ("Hello, World! The caf\u00e9 in S\u00e3o Paulo opened in 1984 \u2014 "
                             "it's \"na\u00efve\" to think so.\nnew line\tand a tab\n").encode("utf-8")),
    "cifar_test0.png": ("cifar10/test.npy image 0 as RGB PNG (Pillow, compress_level 9)",
                        lambda: _png(_cifar(0, 1)[0])),
    "cifar_test1-2.npy": ("cifar10/test.npy images 1 and 2, uint8 (2, 32, 32, 3), np.save",
                          lambda: _npy(_cifar(1, 3))),
    "cifar_test3_20x28.png": ("cifar10/test.npy image 3, rows 0..19 and columns 0..27: a 20x28 "
                              "(H x W) RGB PNG, for the IDF's padding", lambda: _png(_cifar(3, 4)[0, :20, :28])),
}


# --- entries ------------------------------------------------------------------------------
@dataclass
class Spec:
    file: str
    input: str
    model: str
    env: dict = field(default_factory=dict)   # variable -> value, None = unset
    weights: str | None = None                # pinned weights name (legacy entries); else the build's
    legacy: bool = False
    note: str = ""


_TEXT_MODELS = ("argmax", "argmax-coupling", "discrete-flow", "absorbing-diffusion")
SPECS: list[Spec] = [
    Spec("store_bytes.amd", "bytes.bin", "store"),
    Spec("lzma_bytes.amd", "bytes.bin", "lzma"),
    Spec("ppmd_text8.amd", "text8_400.txt", "ppmd"),
    Spec("ppmd_escapes.amd", "escapes.txt", "ppmd"),
    Spec("jxl_cifar.amd", "cifar_test0.png", "jxl",
         note="libjxl's encoder output is not ours: the re-encode check runs only with the libjxl version recorded"),
    Spec("idf_cifar.amd", "cifar_test0.png", "idf"),
    Spec("idf_batch2.amd", "cifar_test1-2.npy", "idf", note="a .npy batch in stream 2: two lanes, one image each"),
    Spec("idf_20x28.amd", "cifar_test3_20x28.png", "idf", note="not a multiple of the IDF's 2^levels: padding"),
]
for _m in _TEXT_MODELS:
    SPECS += [Spec(f"{_m}_text8.amd", "text8_400.txt", _m),
              Spec(f"{_m}_escapes.amd", "escapes.txt", _m, note="out-of-alphabet bytes: the escape path")]
SPECS += [
    Spec("diffusion_text8.amd", "text8_128.txt", "diffusion", env={DIFFUSION_ENV: None},
         note="chain length: the default (AMDCOMPRESS_DIFFUSION_STEPS unset); see settings.diffusion_steps"),
    Spec("diffusion_escapes.amd", "escapes.txt", "diffusion", env={DIFFUSION_ENV: None},
         note="chain length: the default (AMDCOMPRESS_DIFFUSION_STEPS unset); out-of-alphabet bytes"),
    Spec("idf-v2_cifar.amd", "cifar_test0.png", "idf", weights="idf-v2", legacy=True,
         note="made by commit a4e18a3 with weights idf-v2 (codec 16's older weights, installed again "
              "as a weights version chosen by the file's tag)"),
]


# --- the build ----------------------------------------------------------------------------
def build_commit() -> str:
    """``git rev-parse HEAD`` of the checkout the imported amdcompress comes from,
    with ``+dirty`` if its code (not tests) has uncommitted changes."""
    import amdcompress

    root = Path(amdcompress.__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "compressor", "codecs", "models",
                            "pyproject.toml"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def versions() -> dict:
    import numpy
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    for dist in ("constriction", "Pillow", "imagecodecs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import imagecodecs

        out["libjxl"] = imagecodecs.jpegxl_version()
    except Exception:
        out["libjxl"] = None
    return out


def backend_weights(model: str) -> dict | None:
    """The weights this build codes ``model`` with: name, full SHA-256 from its
    record, the 2-byte tag the container stores and the payload layout its
    files use (``Weights.stream``; entries without it are stream 1). None for
    classical codecs."""
    from amdcompress import backends
    from amdcompress.models import registry

    b = backends.by_name(model)
    if not b.learned:
        return None
    w = b.newest
    return {"name": w.name, "sha256": registry.sha256_file(registry.weights_path(w.name)),
            "tag": b.weights_tag()[:2].hex(), "stream": w.stream}


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Env:
    """Set (value) or unset (None) environment variables for a block."""

    def __init__(self, env: dict):
        self.env, self.old = env, {}

    def __enter__(self):
        for k, v in self.env.items():
            self.old[k] = os.environ.get(k)
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def settings_of(spec: Spec, blob: bytes) -> dict:
    """Model settings worth freezing, read back from the file itself."""
    import amdcompress

    if spec.model == "diffusion":
        from amdcompress.models.diffusion import coding as diffusion_coding

        with Env(spec.env):
            steps, source = diffusion_coding.default_steps()
        return {"diffusion_steps": amdcompress.info(blob).details["chain_steps"],
                "diffusion_steps_source": source, "diffusion_default_steps": diffusion_coding.DEFAULT_STEPS}
    return {}


def make_entry(spec: Spec, raw: bytes, blob: bytes, weights: dict | None, commit: str) -> dict:
    import amdcompress

    inf = amdcompress.info(blob)
    kind_equal = "pixels, mode and size" if inf.kind == "png" else "bytes"
    return {
        "file": spec.file, "bytes": len(blob), "sha256": sha256(blob),
        "input": spec.input, "input_bytes": len(raw), "input_sha256": sha256(raw),
        "model": spec.model, "codec_id": inf.codec_id, "kind": inf.kind, "shape": list(inf.shape),
        "weights": weights, "env": spec.env, "settings": settings_of(spec, blob),
        "decoded_equals_input": kind_equal, "legacy": spec.legacy,
        "commit": commit, "versions": versions(), "note": spec.note,
    }


def same_content(original: bytes, decoded: bytes) -> bool:
    """What the API guarantees: byte-identical, except PNG (identical pixels, mode and size)."""
    from amdcompress import formats

    a, b = formats.sniff(original), formats.sniff(decoded)
    if a.kind != formats.IMAGE_PNG:
        return decoded == original
    from PIL import Image

    ia, ib = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(decoded))
    return (b.kind == a.kind and ia.mode == ib.mode and ia.size == ib.size
            and a.array.shape == b.array.shape and bool((a.array == b.array).all()))


# --- main ---------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite golden files that differ (default: report only)")
    ap.add_argument("--allow-new-weights", action="store_true",
                    help="with --write: also replace files of a model whose weights changed")
    ap.add_argument("--allow-dirty", action="store_true", help="with --write: allow uncommitted code changes")
    ap.add_argument("--only", nargs="+", metavar="FILE", help="only these golden files")
    args = ap.parse_args(argv)

    import amdcompress

    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"entries": []}
    old = {e["file"]: e for e in manifest["entries"]}
    commit = build_commit()
    if args.write and commit.endswith("+dirty") and not args.allow_dirty:
        print(f"refusing to write: the code has uncommitted changes ({commit}); commit first or --allow-dirty")
        return 2
    print(f"amdcompress from {Path(amdcompress.__file__).parent} at {commit}")

    specs = [s for s in SPECS if not args.only or s.file in args.only]
    if args.only and len(specs) != len(set(args.only)):
        print(f"unknown golden files: {sorted(set(args.only) - {s.file for s in SPECS})}")
        return 2
    problems, changed = 0, False
    new_entries = dict(old)
    for name in sorted({s.input for s in specs}):
        path = HERE / name
        how, maker = INPUTS[name]
        if path.exists():
            try:
                if maker() != path.read_bytes():
                    print(f"  note   {name}: the maker now gives other bytes (kept: inputs are never rewritten)")
            except OSError as e:
                print(f"  note   {name}: cannot remake from the shared data ({e}); kept")
        elif args.write:
            path.write_bytes(maker())
            print(f"  wrote  {name} ({how})")
        else:
            print(f"  MISSING input {name} (--write makes it)")
            problems += 1

    for spec in specs:
        rec = old.get(spec.file)
        tag = f"{spec.file:28s}"
        try:
            weights = backend_weights(spec.model)
        except amdcompress.AmdError as e:
            print(f"  skip   {tag} model {spec.model!r} not in this build ({e})")
            continue
        if spec.weights and (weights is None or weights["name"] != spec.weights):
            print(f"  skip   {tag} needs weights {spec.weights}; this build's {spec.model} uses "
                  f"{weights['name'] if weights else 'none'}"
                  + (f" (kept: made at {rec['commit'][:10]})" if rec else ""))
            continue
        if not (HERE / spec.input).exists():
            print(f"  skip   {tag} input {spec.input} missing")
            problems += 1
            continue
        raw = (HERE / spec.input).read_bytes()
        with Env(spec.env):
            blob = amdcompress.compress(raw, model=spec.model)
        golden = HERE / spec.file
        committed = golden.read_bytes() if golden.exists() else None
        if committed == blob and rec:
            print(f"  ok     {tag} {len(blob)} bytes, identical")
            continue
        old_w = rec.get("weights") if rec else None
        if committed is not None and old_w and weights and (old_w["name"], old_w["sha256"]) != (
                weights["name"], weights["sha256"]):
            print(f"  WEIGHTS CHANGED {tag} {old_w['name']} ({old_w['sha256'][:12]}) -> "
                  f"{weights['name']} ({weights['sha256'][:12]})")
            if not (args.write and args.allow_new_weights):
                print(f"         not rewritten: this file proves that files made with {old_w['name']} still "
                      "decode; --write --allow-new-weights replaces it")
                problems += 1
                continue
        elif committed is None:
            print(f"  MISSING {tag}" + ("" if args.write else " (--write makes it)"))
        elif committed != blob:
            print(f"  DIFFER {tag} committed {len(committed)} bytes, now {len(blob)} bytes"
                  + ("" if args.write else " (--write rewrites it)"))
        else:
            print(f"  NO ENTRY {tag} identical bytes, but no manifest entry")
        if not args.write:
            problems += 1
            continue
        if not same_content(raw, amdcompress.decompress(blob)):
            print(f"  FAILED {tag} the new file does not decode to its input; not written")
            problems += 1
            continue
        golden.write_bytes(blob)
        new_entries[spec.file] = make_entry(spec, raw, blob, weights, commit)
        changed = True
        print(f"  wrote  {tag} {len(blob)} bytes")

    if changed:
        order = {s.file: i for i, s in enumerate(SPECS)}
        entries = sorted(new_entries.values(), key=lambda e: order.get(e["file"], len(order)))
        MANIFEST.write_text(json.dumps({
            "about": "Golden .amd streams: each file is what amdcompress.compress(input, model=model) wrote "
                     "with the environment 'env' (None: unset) at 'commit'; tests/test_golden.py checks "
                     "that they decode to their inputs and that encoding again gives the same bytes.",
            "regenerate": "python tests/golden/make_golden.py --write  (see its docstring)",
            "inputs": {k: INPUTS[k][0] for k in sorted(INPUTS)},
            "entries": entries,
        }, indent=1, ensure_ascii=False) + "\n")
        print(f"  wrote  {MANIFEST.name} ({len(entries)} entries)")
    print("all checked golden files match" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
