#!/usr/bin/env python3
"""Golden IDF stream-2 and stream-3 payloads: the lane formats, frozen by a
tiny model (stream 2 before real stream-2 weights shipped; stream 3, the binned
part coder, before real stream-3 weights ship).

A tiny IDF (``tiny.pt``: random weights of ``tests/test_idf.py``'s
``tiny_model(3, top_groups=2, context_levels=(0,))``, float16 as shipped
weights are stored) codes small batches (``*.npy``, uint8 (N, H, W, 3)) with
``coding.compress(..., stream=S)``; ``manifest.json`` records, per payload,
its stream, images, shape, checksum (the CRC-32 of the images' bytes, or none), lane
count and lane bytes, and the SHA-256 of every file.
``tests/test_idf_lanes.py`` checks that each payload decodes to exactly its
images and that encoding them again gives exactly the committed bytes.

Usage (from the repository root, with amdcompress installed)::

    python tests/golden/idf_stream2/make.py            # check: re-encode, report differences, write nothing
    python tests/golden/idf_stream2/make.py --write    # write what is missing or differs

The weights and the images are written only when missing, never rewritten:
a payload that no longer re-encodes is a change of the format, to be made on
purpose (delete the payload, then ``--write``; say so in the commit).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
WEIGHTS = HERE / "tiny.pt"

_MADE = {
    "n3_20x28.npy": "cifar10/test.npy images 0..2, rows 0..19, columns 0..27",
    "n1_33x31.npy": "synthetic: a colour ramp plus noise, numpy default_rng(5) (CIFAR is 32x32)",
    "n7_8x8.npy": "cifar10/test.npy images 10..16, rows 8..15, columns 4..11",
}
# payload -> (stream, images file, with a checksum)
CASES = {
    "n3_20x28_crc.bin": (2, "n3_20x28.npy", True),
    "n1_33x31.bin": (2, "n1_33x31.npy", False),
    "n7_8x8_crc.bin": (2, "n7_8x8.npy", True),
    "s3_n3_20x28_crc.bin": (3, "n3_20x28.npy", True),
    "s3_n1_33x31.bin": (3, "n1_33x31.npy", False),
    "s3_n7_8x8_crc.bin": (3, "n7_8x8.npy", True),
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _make_images(name: str):
    import numpy as np

    from amdcompress.models.datasets import shared_data_dir

    test = shared_data_dir() / "cifar10" / "test.npy"
    if name == "n3_20x28.npy":
        return np.array(np.load(test, mmap_mode="r")[0:3, :20, :28])
    if name == "n7_8x8.npy":
        return np.array(np.load(test, mmap_mode="r")[10:17, 8:16, 4:12])
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (1, 1, 1, 3))
    yy, xx = np.mgrid[:33, :31]
    ramp = (yy[None, :, :, None] * 3 + xx[None, :, :, None] * 2) % 64
    return np.clip(base + ramp + rng.integers(-8, 9, (1, 33, 31, 3)), 0, 255).astype(np.uint8)


def load_model():
    """The tiny model of ``tiny.pt`` (its hash checked against the manifest by the test)."""
    from amdcompress.models import registry
    from amdcompress.models.idf import coding

    return coding.load(registry.read_weights(WEIGHTS))


def checksum_of(images) -> int:
    return zlib.crc32(images.tobytes())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write missing or differing files")
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from amdcompress.models import registry
    from amdcompress.models.idf import coding, lanes

    if not WEIGHTS.exists():
        if not a.write:
            print(f"MISSING {WEIGHTS.name} (--write makes it)")
            return 1
        sys.path.insert(0, str(HERE.parents[1]))
        from test_idf import tiny_model

        m = tiny_model(3, top_groups=2, context_levels=(0,))
        torch.save({"config": m.config, "state_dict": registry.compact_state_dict(m.state_dict())}, WEIGHTS)
        print(f"wrote {WEIGHTS.name}")
    model = load_model()
    entries, problems = [], 0
    for payload_name, (stream, images_name, with_crc) in CASES.items():
        how = _MADE[images_name]
        ipath = HERE / images_name
        if not ipath.exists():
            if not a.write:
                print(f"MISSING {images_name}")
                problems += 1
                continue
            np.save(ipath, _make_images(images_name), allow_pickle=False)
            print(f"wrote {images_name}")
        x = np.load(ipath)
        crc = checksum_of(x) if with_crc else None
        blob = coding.compress(model, x, checksum=crc, stream=stream)
        ppath = HERE / payload_name
        if ppath.exists() and ppath.read_bytes() == blob:
            print(f"ok     {payload_name} {len(blob)} bytes")
        elif a.write:
            decoded = (coding.decompress_checked(model, blob, x.shape, stream=stream)[0] if with_crc
                       else coding.decompress(model, blob, x.shape, stream=stream))
            assert np.array_equal(decoded, x), "does not decode to its images"
            ppath.write_bytes(blob)
            print(f"wrote  {payload_name} {len(blob)} bytes")
        else:
            print(f"{'DIFFER' if ppath.exists() else 'MISSING'} {payload_name}")
            problems += 1
            continue
        det = lanes.details(blob, len(x), stream)
        entries.append({"payload": payload_name, "stream": stream, "sha256": _sha(blob), "bytes": len(blob),
                        "images": images_name, "images_sha256": _sha(ipath.read_bytes()), "images_made": how,
                        "shape": list(x.shape), "checksum": crc, "lanes": det["lanes"],
                        "lane_bytes": det["lane_bytes"]})
    if a.write and not problems:
        MANIFEST.write_text(json.dumps({
            "about": "IDF stream-2 and stream-3 payloads of a tiny model (coding.compress(model, images, "
                     "checksum=, stream=S)); "
                     "tests/test_idf_lanes.py decodes them and re-encodes them to the same bytes",
            "regenerate": "python tests/golden/idf_stream2/make.py --write  (see its docstring)",
            "weights": {"file": WEIGHTS.name, "sha256": registry.sha256_file(WEIGHTS)},
            "checksum": "zlib.crc32 of the images' bytes (C order), or null: no checksum in the payload",
            "entries": entries,
        }, indent=1) + "\n")
        print(f"wrote  {MANIFEST.name}")
    print("all match" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
