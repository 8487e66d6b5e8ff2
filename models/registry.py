"""What this installation has: every learned model, its codec id, what it
codes, the module that codes it, and every weights version that ever shipped.

This table is the single source: the backends in ``compressor/`` are built
from it, ``amdcompress models`` lists it, and the container's weights tag is
resolved against it. Guarantees:

* a codec id is never reused or renumbered (``.amd`` files store it);
* a weights version, once shipped, keeps its file name and SHA-256 here
  forever, so files made with it stay decodable wherever its file is
  installed (``models/weights/<name>.pt``, checked by full SHA-256 before
  use); a file whose version is missing gets a one-line error naming it;
* the first version of a model is the one new files are written with.

Adding a model: its folder ``models/<name>/`` (``network.py``, ``coding.py``,
``train.py``) and one :class:`Model` entry below. A coding module offers the
face the generic backend (:mod:`amdcompress.learned`) calls::

    load(weights: dict) -> state                      # weights: read_weights()
    compress(state, x, *, progress=None, stats=None, **options) -> bytes
    decompress(state, payload, shape, *, progress=None) -> x
    details(payload) -> dict                          # if the entry says details=True (text models)
    details(payload, shape) -> dict                   # likewise, image models (shape: the batch (N, H, W, C))

``x`` is a uint8 (N, H, W, C) batch for ``data="image"`` models and the
int array of text symbols (0..26, :mod:`amdcompress.codecs.textstream`) for
``data="text"`` ones, whose escapes the backend handles. A model that carries
the container's checksum in its stream (``checksum_in_payload``) takes
``checksum=`` in ``compress`` and offers ``decompress_checked`` returning
``(x, checksum)``.

A model whose payload layout changed keeps every old one: its entry lists the
layouts its coding module reads and writes (``streams``, e.g. ``(1, 2)``) and
each weights version names the one its files use (``Weights.stream``, 1 unless
given). Where ``streams`` is more than ``(1,)`` the backend passes
``stream=<the weights' stream>`` to ``compress``, ``decompress``,
``decompress_checked`` and ``details``: the stream of the weights new files
are written with on encode, of the weights the container's tag names on
decode and in ``info``. A shipped version's stream never changes.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from amdcompress.codecs.errors import AmdError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Weights:
    """One shipped weights version: ``WEIGHTS_DIR/<name>.pt`` and its record ``<name>.json``."""

    name: str
    sha256: str
    stream: int = 1   # the payload layout its files use (one of its Model's ``streams``); fixed once shipped

    @property
    def file(self) -> str:
        return f"{self.name}.pt"

    @property
    def record(self) -> str:
        return f"{self.name}.json"

    def matches(self, tag: bytes) -> bool:
        """True if a container's weights tag (a prefix of the SHA-256) names these weights."""
        return len(tag) > 0 and bytes.fromhex(self.sha256).startswith(tag)


@dataclass(frozen=True)
class Model:
    """A learned model as the backends see it (see the module docstring)."""

    name: str
    codec_id: int
    data: str                       # "image" or "text"
    coding: str                     # module with load/compress/decompress
    weights: tuple[Weights, ...]    # newest first: weights[0] writes new files
    description: str
    auto: bool = False              # whether ``--model auto`` tries it
    checksum_in_payload: bool = False
    details: bool = False           # whether the coding module has details(payload) for ``info``
    options: dict = field(default_factory=dict)  # name -> help, e.g. {"steps": "..."}
    streams: tuple[int, ...] = (1,)  # payload layouts the coding module has; more than (1,): it takes stream=


MODELS: dict[str, Model] = {m.name: m for m in (
    Model("idf", 16, "image", "amdcompress.models.idf.coding",
          (Weights("idf-v7", "40248b3e4ac5f1f230a92aa6480a9eb9ea3e7bb3b117074b2e77cfeb68c900bf", stream=3),
           Weights("idf-v6", "7e1c302f2810885cc488b39bc6641bfc5f3621a2e71393824bb78a22735a8d96", stream=2),
           Weights("idf-v5", "3083d74788acaf77da965e96c4af070e7e501af1e042e368925b009080bdc333", stream=2),
           Weights("idf-v4", "c602ccee67c5133f87e573ea34968db7359be1dc1cbc4771f41c6aa247035f7a"),
           Weights("idf-v3", "57421c7a41bea4c4eec74a3558a2aa84ed86413f4d4f68495e4f5ea019c10538"),
           Weights("idf-v2", "61194378142537dcb1220976ef349d2f3f6867a34e9149ddec7cebe1c982d2af")),
          "Integer Discrete Flow (3 levels, logistic-mixture priors): RGB images and batches",
          auto=True, checksum_in_payload=True, details=True, streams=(1, 2, 3)),
    Model("diffusion", 17, "text", "amdcompress.models.diffusion.coding",
          (Weights("diffusion-v1", "6a4726ea4622268586266a2c81831ddd62a8fc83a236042c467c6d1906524eda"),),
          "text: multinomial diffusion (Hoogeboom et al. 2021), bits-back along the chain", details=True,
          # not tried by auto: ~60-200 chars/s at 100 steps, and larger files than argmax
          options={"steps": "chain steps to code with (1..T; default $AMDCOMPRESS_DIFFUSION_STEPS or 100)"}),
    Model("argmax", 18, "text", "amdcompress.models.argmax.coding",
          (Weights("argmax-v1", "4cd7125cebebb5b59d13550155c12278b1f03f2a4977cfbcf8ac4e9d9261f0cd"),),
          "learned text model: Argmax Flow (LSTM + autoregressive flow prior), bits-back ANS", auto=True),
    Model("discrete-flow", 19, "text", "amdcompress.models.discrete_flow.coding",
          (Weights("discrete-flow-v1", "25007bf663bedf4ae62fef18502e131f95275c48a5a74448b398662f17a19e0e"),),
          # not tried by auto: larger files than argmax and PPMd on text8 (benchmarks/results/discrete_flow.json)
          "learned text model: Discrete Flow (bipartite modular couplings + base), exact ANS"),
    Model("argmax-coupling", 20, "text", "amdcompress.models.argmax_coupling.coding",
          (Weights("argmax-coupling-v1", "48688fe8eff4f246616e482dda07a1364e120638b776197061a5aeccc5f3cfe1"),),
          # not tried by auto: argmax codes smaller files
          "learned text model: Argmax Flow with a grid-exact coupling-flow prior, bits-back ANS"),
    Model("absorbing-diffusion", 21, "text", "amdcompress.models.absorbing.coding",
          (Weights("absorbing-diffusion-v2", "dc1a07c2de0a9c7294f1d0ac811938cf8179dda95e22eb2872d3e3774f27b98d"),
           Weights("absorbing-diffusion-v1", "0ccabee1b6990281b61f91f3d74376b9cf275f7d3d250628c1055f6797405525")),
          "learned text model: absorbing-state diffusion (order-agnostic ARDM), exact ANS in S network passes",
          details=True,
          options={"steps": "network passes per chunk (recorded in the file; default: the weights')"}),
)}


def model(name: str) -> Model:
    try:
        return MODELS[name]
    except KeyError:
        raise AmdError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


def weights(name: str) -> Weights:
    """The shipped weights version called ``name`` (e.g. ``idf-v3``)."""
    for m in MODELS.values():
        for w in m.weights:
            if w.name == name:
                return w
    known = ", ".join(w.name for m in MODELS.values() for w in m.weights)
    raise AmdError(f"unknown weights {name!r} (known: {known})")


def weights_path(name: str, directory: Path | None = None) -> Path:
    return (directory or WEIGHTS_DIR) / f"{name}.pt"


def record_path(name: str, directory: Path | None = None) -> Path:
    return (directory or WEIGHTS_DIR) / f"{name}.json"


def available(name: str, directory: Path | None = None) -> bool:
    """True if the weights file ``name`` is installed."""
    return weights_path(name, directory).is_file()


def record(name: str, directory: Path | None = None) -> dict:
    """The JSON record of shipped weights (training data, steps, held-out numbers, sha256)."""
    p = record_path(name, directory)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise AmdError(f"weights record {p.name} is not installed") from None
    except (OSError, ValueError) as e:
        raise AmdError(f"weights record {p.name} is unreadable ({e})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_bytes(w: Weights, directory: Path | None = None) -> bytes:
    """The bytes of weights ``w`` after checking their full SHA-256 (one read, one hash)."""
    p = weights_path(w.name, directory)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise AmdError(f"weights {w.name} are not installed ({p.name} missing)") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != w.sha256:
        raise AmdError(f"weights file {p.name} is corrupt or replaced: sha256 {actual[:16]}... "
                       f"is not the shipped {w.sha256[:16]}...")
    return raw


def load(name: str, directory: Path | None = None) -> dict:
    """Checked weights ``name``: a dict with at least ``config`` and a float32 ``state_dict``."""
    return read_weights(io.BytesIO(verified_bytes(weights(name), directory)), name)


def read_weights(source, name: str = "") -> dict:
    """A weights file (path or file object) whose hash the caller has checked:
    its dict with ``config`` and a float32 ``state_dict``."""
    import torch

    obj = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "config" not in obj or "state_dict" not in obj:
        raise ValueError(f"weights file {name or source!r} has an unexpected layout")
    # shipped files store float16 (see compact_state_dict); models compute in float32
    obj["state_dict"] = {k: v.float() if v.dtype == torch.float16 else v for k, v in obj["state_dict"].items()}
    return obj


def compact_state_dict(state_dict: dict) -> dict:
    """float32 tensors -> float16 for shipping (half the bytes). Encoder and
    decoder both load the same rounded weights, so coding stays exact; buffers
    that must keep full precision (integer tensors, float64 schedules) are kept."""
    import torch

    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state_dict.items()}


def load_into(model, weights: dict, arch: str):
    """``model`` (a torch module) holding ``weights["state_dict"]``, in eval mode,
    without gradients; ValueError naming ``arch`` if the weights do not fit."""
    try:
        model.load_state_dict(weights["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"weights do not fit the {arch} architecture ({str(e).splitlines()[0]})") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
