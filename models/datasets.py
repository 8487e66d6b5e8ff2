"""Data loading for training and benchmarks (numpy only).

* :func:`shared_data_dir`: the project's ``../shared/data`` (override with the
  ``AMDCOMPRESS_DATA`` environment variable).
* :func:`load_cifar10_npy` / :func:`load_text`: the subsets shipped there.
* :func:`load_cifar10_batches` / :func:`load_text8_zip`: the full public data
  sets in their original distribution formats (CIFAR-10 python pickles,
  ``text8.zip``), for anyone who has them.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np


def shared_data_dir() -> Path:
    env = os.environ.get("AMDCOMPRESS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_cifar10_npy(split: str = "train", root: Path | None = None) -> np.ndarray:
    """uint8 (N, 32, 32, 3) from ``cifar10/{split}.npy``."""
    a = np.load(Path(root or shared_data_dir()) / "cifar10" / f"{split}.npy")
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError("expected a uint8 (N, H, W, C) array")
    return a


def load_text(split: str = "train", root: Path | None = None) -> bytes:
    """The bytes of ``text8/{split}.txt``."""
    return (Path(root or shared_data_dir()) / "text8" / f"{split}.txt").read_bytes()


def load_cifar10_batches(directory: Path, split: str = "train") -> np.ndarray:
    """The CIFAR-10 python version (``cifar-10-batches-py``): uint8 (N, 32, 32, 3),
    train = data_batch_1..5 in order, test = test_batch."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    out = []
    for name in names:
        with open(Path(directory) / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        out.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(out))


def load_text8_zip(path: Path, split: str | None = None) -> bytes:
    """text8.zip's single member; with ``split`` the standard 90M/5M/5M split."""
    with zipfile.ZipFile(path) as z:
        data = z.read(z.namelist()[0])
    if split is None:
        return data
    bounds = {"train": (0, 90_000_000), "valid": (90_000_000, 95_000_000), "test": (95_000_000, 100_000_000)}
    lo, hi = bounds[split]
    return data[lo:hi]
