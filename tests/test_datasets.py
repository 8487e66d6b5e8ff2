"""Loaders of the shipped subsets and of the full public data-set formats
(on small files made here in their original layout)."""
import pickle
import zipfile

import numpy as np

from amdcompress.models import datasets


def test_shared_subsets_load():
    a = datasets.load_cifar10_npy("test")
    assert a.shape == (600, 32, 32, 3) and a.dtype == np.uint8
    t = datasets.load_text("valid")
    assert len(t) == 1_000_000 and set(t) <= set(b" abcdefghijklmnopqrstuvwxyz")


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(4, -1)  # the pickles store CHW rows
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": flat, b"labels": [0, 1, 2, 3]}, f)
    assert np.array_equal(datasets.load_cifar10_batches(tmp_path, "test"), images)


def test_text8_zip(tmp_path):
    z = tmp_path / "text8.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("text8", b"abc def")
    assert datasets.load_text8_zip(z) == b"abc def"
    assert datasets.load_text8_zip(z, "train") == b"abc def"
    assert datasets.load_text8_zip(z, "valid") == b""
