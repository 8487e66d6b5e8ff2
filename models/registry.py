"""Shipped model weights by name, checked by full SHA-256 before use.

Each entry names a weights file in ``models/weights/`` and its JSON record
(written by the exporter, e.g. ``python -m amdcompress.models.idf.train
--export``), which holds the file's SHA-256 and how it was trained. Loading
recomputes the hash and refuses a file that does not match its record. The
container stores :func:`weights_tag` (the first 4 bytes of the hash), so a
file made with other weights is refused with a clear message.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from amdcompress.codecs.errors import AmdError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name -> architecture, weights file, record file (all in WEIGHTS_DIR).
MODELS: dict[str, dict[str, str]] = {
    "idf-v3": {"arch": "idf", "file": "idf-v3.pt", "record": "idf-v3.json"},
    "argmax-v1": {"arch": "argmax", "file": "argmax-v1.pt", "record": "argmax-v1.json"},
    "diffusion-v1": {"arch": "diffusion", "file": "diffusion-v1.pt", "record": "diffusion-v1.json"},
    "discrete-flow-v1": {"arch": "discrete-flow", "file": "discrete-flow-v1.pt", "record": "discrete-flow-v1.json"},
    "argmax-coupling-v1": {"arch": "argmax-coupling", "file": "argmax-coupling-v1.pt",
                           "record": "argmax-coupling-v1.json"},
    "absorbing-diffusion-v1": {"arch": "absorbing-diffusion", "file": "absorbing-diffusion-v1.pt",
                               "record": "absorbing-diffusion-v1.json"},
}


def _entry(name: str) -> dict[str, str]:
    try:
        return MODELS[name]
    except KeyError:
        raise AmdError(f"unknown weights {name!r} (known: {', '.join(MODELS)})") from None


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / _entry(name)["file"]


def record_path(name: str) -> Path:
    return WEIGHTS_DIR / _entry(name)["record"]


def available(name: str) -> bool:
    """True if both the weights file and its record are installed."""
    return weights_path(name).is_file() and record_path(name).is_file()


def record(name: str) -> dict:
    """The JSON record of shipped weights (training data, steps, bpd, sha256)."""
    p = record_path(name)
    try:
        rec = json.loads(p.read_text())
    except FileNotFoundError:
        raise AmdError(f"weights record {p.name} of model {name!r} is not installed") from None
    except (OSError, ValueError) as e:
        raise AmdError(f"weights record {p.name} is unreadable ({e})") from None
    sha = rec.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise AmdError(f"weights record {p.name} has no valid sha256")
    return rec


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expected_sha256(name: str) -> str:
    return record(name)["sha256"]


def weights_tag(name: str) -> bytes:
    """The 4-byte tag written into .amd files: sha256[:4] of the weights file."""
    return bytes.fromhex(expected_sha256(name))[:4]


def verified_bytes(name: str) -> bytes:
    """The weights file's bytes after checking their full SHA-256 against the record."""
    expected = expected_sha256(name)
    p = weights_path(name)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise AmdError(f"weights file {p.name} of model {name!r} is not installed") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise AmdError(f"weights file {p.name} is corrupt or replaced: sha256 {actual[:16]}... "
                       f"does not match its record {expected[:16]}...")
    return raw


def load(name: str) -> dict:
    """Load checked weights: a dict with at least ``config`` and ``state_dict``."""
    import io

    return read_weights(io.BytesIO(verified_bytes(name)), name)


def read_weights(source, name: str = "") -> dict:
    """A weights file (path or file object) whose hash the caller has checked:
    its dict with ``config`` and a float32 ``state_dict``."""
    import torch

    obj = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "config" not in obj or "state_dict" not in obj:
        raise AmdError(f"weights file of model {name or source!r} has an unexpected layout")
    # shipped files store float16 (see compact_state_dict); models compute in float32
    obj["state_dict"] = {k: v.float() if v.dtype == torch.float16 else v for k, v in obj["state_dict"].items()}
    return obj


def compact_state_dict(state_dict: dict) -> dict:
    """float32 tensors -> float16 for shipping (half the bytes). Encoder and
    decoder both load the same rounded weights, so coding stays exact; buffers
    that must keep full precision (integer tensors, float64 schedules) are kept."""
    import torch

    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state_dict.items()}
