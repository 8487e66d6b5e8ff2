"""What every learned text backend shares: checked weights, escapes, errors.

A text model codes the 27-symbol text8 alphabet; :mod:`.textstream` takes every
other byte out as an escape, so any byte string round-trips. The payload is
``textstream.pack(model_stream, escapes)``. Subclasses say how to load their
weights and how to code a symbol array; this class guarantees the rest:

* weights are found in ``models/weights/`` under :attr:`weights_name` (or at an
  explicit path), and their full SHA-256 must match the JSON record beside
  them before they are used; the container's tag is its first 4 bytes;
* coding runs inside :func:`amdcompress.models.determinism.coding_mode` (CPU,
  one thread, deterministic), whatever the caller's torch settings;
* a corrupt payload or stream becomes :class:`AmdError` with a one-line
  message, never another exception (constriction's ``PanicException`` derives
  from ``BaseException`` and is caught too).
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .codecs import textstream
from .backends import NO_WEIGHTS
from .codecs.errors import AmdError
from .formats import BYTES, Data

MAX_ESCAPE_FRACTION = 0.5


def weights_dir() -> Path:
    from amdcompress.models import registry

    return registry.WEIGHTS_DIR


class TextModelBackend:
    """Base of the learned text backends (see the module docstring)."""

    name: str
    codec_id: int
    description: str
    learned = True
    weights_name: str  # entry of amdcompress.models.registry: <weights_name>.pt and .json in models/weights
    in_auto = False    # whether ``--model auto`` tries it on text-like input

    def __init__(self, weights: str | Path | None = None):
        self._path = Path(weights) if weights is not None else None
        self._loaded = None
        self._sha: str | None = None
        self._lock = threading.Lock()
        self.last_stats: dict = {}  # of the last encode (what the model reports)

    # -- hooks --------------------------------------------------------------------
    def load(self, path: Path, sha256: str):
        """The coding state (model, tables, ...) from a weights file whose hash
        has been checked. Raise ``ValueError`` for a file of the wrong shape."""
        raise NotImplementedError

    def encode_symbols(self, loaded, sym: np.ndarray, progress, stats: dict) -> bytes:
        raise NotImplementedError

    def decode_symbols(self, loaded, stream: bytes, progress, max_symbols: int) -> np.ndarray:
        raise NotImplementedError

    def stream_details(self, stream: bytes) -> dict:
        """Facts about a model stream worth showing in ``info`` (read from its head)."""
        return {}

    # -- weights ------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path if self._path is not None else weights_dir() / f"{self.weights_name}.pt"

    def available(self) -> bool:
        return self.path.is_file()

    def _expected_sha(self) -> str | None:
        """The record's hash; None only for an explicit weights file without a record."""
        meta = self.path.with_suffix(".json")
        if not meta.is_file():
            if self._path is None:
                raise AmdError(f"{self.name} weights record {meta.name} is missing")
            return None
        try:
            sha = json.loads(meta.read_text())["sha256"]
        except (ValueError, KeyError, OSError, TypeError):
            raise AmdError(f"{self.name} weights record {meta} is unreadable") from None
        if not isinstance(sha, str) or len(sha) != 64:
            raise AmdError(f"{self.name} weights record {meta} has no valid sha256")
        return sha

    def loaded(self):
        """The checked, loaded coding state (cached)."""
        with self._lock:
            if self._loaded is None:
                if not self.available():
                    raise AmdError(f"{self.name} model weights not installed ({self.path})")
                sha = hashlib.sha256(self.path.read_bytes()).hexdigest()
                expected = self._expected_sha()
                if expected is not None and sha != expected:
                    raise AmdError(f"{self.name} weights check failed: {self.path.name} has sha256 "
                                   f"{sha[:16]}..., its record says {expected[:16]}...")
                from amdcompress.models.determinism import coding_mode

                try:
                    with coding_mode():
                        self._loaded = self.load(self.path, sha)
                except AmdError:
                    raise
                except Exception as e:  # torch.load and load_state_dict fail in many ways
                    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise AmdError(f"{self.name} weights {self.path.name} do not load: {reason}") from None
                self._sha = sha
            return self._loaded

    def weights_tag(self) -> bytes:
        if not self.available():
            return NO_WEIGHTS
        if self._sha is not None:
            return bytes.fromhex(self._sha[:8])
        return hashlib.sha256(self.path.read_bytes()).digest()[:4]

    # -- backend interface --------------------------------------------------------
    def accepts(self, data: Data) -> bool:
        """Any bytes (out-of-alphabet bytes become escapes), once weights are installed."""
        return data.kind == BYTES and self.available()

    def auto_accepts(self, data: Data) -> bool:
        """``auto`` tries the model only if :attr:`in_auto`, and only on text-like
        bytes (at most half escapes)."""
        return (self.in_auto and self.accepts(data)
                and textstream.escape_fraction(np.asarray(data.array)) <= MAX_ESCAPE_FRACTION)

    def details(self, payload: bytes, shape) -> dict:
        """What ``info`` shows about a payload without decoding it: bytes of the
        model stream and of the escapes, and how many input bytes were escapes
        (bytes outside the model's alphabet, stored with LZMA2)."""
        stream, esc = textstream.unpack(payload)
        n = int(shape[0]) if len(shape) == 1 else 0
        return {"model_stream_bytes": len(stream), "escape_bytes": len(esc),
                "escaped_input_bytes": textstream.escape_count(esc, n), **self.stream_details(stream)}

    def encode(self, data: Data, progress=None) -> bytes:
        if data.kind != BYTES:
            raise AmdError(f"the {self.name} model codes text (bytes) only")
        from amdcompress.models.determinism import coding_mode

        loaded = self.loaded()
        sym, esc = textstream.split(np.asarray(data.array, dtype=np.uint8))
        self.last_stats = {}
        with coding_mode():
            stream = self.encode_symbols(loaded, sym, progress, self.last_stats)
        return textstream.pack(stream, esc)

    def decode(self, payload: bytes, kind: int, shape, progress=None) -> np.ndarray:
        if kind != BYTES or len(shape) != 1:
            raise AmdError(f"corrupt header: the {self.name} model codes bytes only")
        from amdcompress.codecs import CorruptStreamError
        from amdcompress.models.determinism import coding_mode

        loaded = self.loaded()
        stream, esc = textstream.unpack(payload)
        try:
            with coding_mode():
                sym = self.decode_symbols(loaded, stream, progress, int(shape[0]))
        except AmdError:
            raise
        except (CorruptStreamError, ValueError, IndexError, OverflowError) as e:
            raise AmdError(f"corrupt payload ({e})") from None
        except BaseException as e:  # constriction's PanicException derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise AmdError(f"corrupt payload ({type(e).__name__})") from None
        if sym.size > shape[0]:
            raise AmdError("corrupt payload: text length mismatch")
        return textstream.join(sym, esc, int(shape[0]))
