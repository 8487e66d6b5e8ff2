"""Shared test helpers."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


def backend_for(model: str, weights_file: Path, stream: int = 1):
    """The learned backend of registry model ``model`` whose only weights
    version is ``weights_file`` (a file made in the test), writing payload
    layout ``stream`` (``Weights.stream``)."""
    from amdcompress.learned import LearnedBackend
    from amdcompress.models import registry

    weights_file = Path(weights_file)
    w = registry.Weights(weights_file.stem, registry.sha256_file(weights_file), stream)
    return LearnedBackend(dataclasses.replace(registry.MODELS[model], weights=(w,)), weights_dir=weights_file.parent)


def load_file(coding, path):
    """A coding module's state from an (unchecked) weights file."""
    from amdcompress.models import registry

    return coding.load(registry.read_weights(path))


def install_backend(monkeypatch, model: str, weights_file: Path, stream: int = 1):
    """Make :func:`backend_for` the registered backend of ``model`` for one test."""
    from amdcompress import backends

    backends.all_backends()  # the learned backends are registered on first use
    b = backend_for(model, weights_file, stream)
    monkeypatch.setitem(backends._REGISTRY, model, b)
    return b


@pytest.fixture
def one_torch_thread():
    """Small tensors: threads only add overhead (and the coder fixes its own count)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
