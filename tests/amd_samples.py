"""Small real ``.amd`` files of every codec, for the fuzz and limit tests.

Each sample is tiny (a few dozen characters for the learned text models, one
32x32 image for the IDF, 4 chain steps for diffusion) so that a test can
decode thousands of damaged copies in a few minutes on 2 cores. The oracle
of a damaged copy is what the undamaged file decodes to.
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

import amdcompress
from amdcompress import backends, container
from amdcompress.models.datasets import shared_data_dir

DATA = shared_data_dir()
TEXT = "the quick brown fox jumps over the lazy dog, said Ada in 1843. "


@dataclass(frozen=True)
class Sample:
    codec: str
    raw: bytes          # what was compressed
    blob: bytes         # the .amd file (format version 3)
    decoded: bytes      # what the undamaged file decodes to (the oracle)
    header_len: int     # bytes before the payload


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


def _inputs() -> dict[str, bytes]:
    text8 = (DATA / "text8" / "valid.txt").read_bytes()
    cifar = np.load(DATA / "cifar10" / "test.npy", mmap_mode="r")
    rng = np.random.default_rng(5)
    small = (rng.integers(0, 8, (9, 13, 3)) * 30).astype(np.uint8)
    return {
        "store": TEXT[:40].encode(),
        "lzma": text8[:300],
        "jxl": png_bytes(small),
        "ppmd": (TEXT * 4).encode(),
        "idf": png_bytes(np.ascontiguousarray(cifar[0])),
        "argmax": TEXT[:40].encode(),
        "argmax-coupling": TEXT[:40].encode(),
        "discrete-flow": TEXT[:40].encode(),
        "diffusion": text8[:24],
        "absorbing-diffusion": TEXT[:40].encode(),
    }


CODECS = (
    "store", "lzma", "jxl", "ppmd", "idf", "argmax", "argmax-coupling", "discrete-flow", "diffusion",
    "absorbing-diffusion")


def available(codec: str) -> bool:
    try:
        b = backends.by_name(codec)
    except amdcompress.AmdError:
        return False
    return getattr(b, "available", lambda: True)()


@functools.lru_cache(maxsize=None)
def sample(codec: str) -> Sample:
    raw = _inputs()[codec]
    env = os.environ.get("AMDCOMPRESS_DIFFUSION_STEPS")
    os.environ["AMDCOMPRESS_DIFFUSION_STEPS"] = "4"  # recorded in the stream: decoding 4 steps is fast
    try:
        blob = amdcompress.compress(raw, model=codec)
    finally:
        if env is None:
            os.environ.pop("AMDCOMPRESS_DIFFUSION_STEPS", None)
        else:
            os.environ["AMDCOMPRESS_DIFFUSION_STEPS"] = env
    header, payload = container.unpack(blob)
    assert header.version == container.VERSION
    return Sample(codec, raw, blob, amdcompress.decompress(blob), len(blob) - len(payload))


def all_samples() -> dict[str, Sample]:
    return {c: sample(c) for c in CODECS if available(c)}
