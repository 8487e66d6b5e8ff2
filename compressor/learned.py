"""The one backend of every learned model, built from its registry entry
(:mod:`amdcompress.models.registry`). Guarantees, the same for each model:

* weights are chosen by the container's weights tag among every version that
  ever shipped; new files use the newest; a file whose version is not
  installed (or unknown) is a one-line error that names it;
* a weights file is read and its full SHA-256 checked once per process, then
  the loaded coding state is cached;
* coding runs inside :func:`amdcompress.models.determinism.coding_mode` (CPU,
  fixed threads, deterministic), whatever the caller's torch settings;
* text models code the 27-symbol alphabet and :mod:`amdcompress.codecs.textstream`
  takes every other byte out as an escape, so any bytes round-trip;
* a model with more than one payload layout (its entry's ``streams``) codes
  with the layout of the weights in use (``Weights.stream``): the newest
  weights' on encode, those the file's tag names on decode and in ``info``;
* a corrupt payload, or weights that do not load, is :class:`AmdError` with a
  one-line message, never another exception (constriction's
  ``PanicException`` derives from ``BaseException`` and is caught too).
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path

import numpy as np

from .backends import NO_WEIGHTS
from .codecs import textstream
from .codecs.errors import AmdError
from .formats import BYTES, NPY_BATCH, Data

MAX_PIXELS = 1 << 24          # per image: the IDF runs on whole images (memory)
MAX_ESCAPE_FRACTION = 0.5     # auto tries a text model only on text-like bytes


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class LearnedBackend:
    """A learned model as a codec backend (see the module docstring)."""

    learned = True

    def __init__(self, entry, weights_dir: Path | None = None):
        from amdcompress.models import registry

        self.entry = entry
        self.name, self.codec_id, self.description = entry.name, entry.codec_id, entry.description
        self.checksum_in_payload = entry.checksum_in_payload
        self.options = tuple(entry.options)
        self._registry = registry
        self._dir = Path(weights_dir) if weights_dir is not None else None
        self._states: dict[str, object] = {}
        self._lock = threading.Lock()
        self.last_stats: dict = {}  # what the model reported about the last encode

    # -- weights ------------------------------------------------------------------
    @property
    def newest(self):
        """The weights new files are written with (None: the model has shipped none yet)."""
        return self.entry.weights[0] if self.entry.weights else None

    def available(self) -> bool:
        """True if the weights new files are written with are installed."""
        return self.newest is not None and self._registry.available(self.newest.name, self._dir)

    def weights_tag(self) -> bytes:
        """The tag new files carry: a prefix of the newest weights' SHA-256."""
        return bytes.fromhex(self.newest.sha256)[:4] if self.available() else NO_WEIGHTS

    def weights_for(self, tag: bytes):
        """The weights version a file's tag names; AmdError naming it if it is not installed."""
        for w in self.entry.weights:
            if w.matches(tag):
                if not self._registry.available(w.name, self._dir):
                    raise AmdError(f"file needs weights {w.name} of model {self.name!r}, which are not "
                                   f"installed ({w.file} missing)")
                return w
        known = ", ".join(f"{w.name} ({w.sha256[:2 * len(tag)]})" for w in self.entry.weights)
        raise AmdError(f"file was made with weights {tag.hex()} of model {self.name!r}, which this "
                       f"amdcompress does not know (known: {known})")

    def check_weights(self, tag: bytes) -> None:
        self.weights_for(tag)

    def _stream(self, w) -> dict:
        """``{"stream": w.stream}`` for a model with several payload layouts
        (the keyword its coding module takes), else nothing; AmdError if the
        weights name a layout the entry does not declare."""
        if w.stream not in self.entry.streams:
            raise AmdError(f"weights {w.name} of model {self.name!r} use stream version {w.stream}, which this "
                           f"amdcompress does not code (it has {', '.join(map(str, self.entry.streams))})")
        return {"stream": w.stream} if self.entry.streams != (1,) else {}

    def state(self, w=None):
        """The loaded coding state of weights ``w`` (default: the newest), checked and cached."""
        w = w or self.newest
        if w is None:
            raise AmdError(f"model {self.name!r} has no weights in this amdcompress")
        with self._lock:
            if w.name not in self._states:
                import io

                from amdcompress.models.determinism import coding_mode

                if not self._registry.available(w.name, self._dir):
                    raise AmdError(f"model {self.name!r} is not installed (weights {w.file} missing)")
                raw = self._registry.verified_bytes(w, self._dir)
                coding = importlib.import_module(self.entry.coding)
                try:
                    with coding_mode():
                        self._states[w.name] = coding.load(self._registry.read_weights(io.BytesIO(raw), w.name))
                except AmdError:
                    raise
                except Exception as e:  # torch.load and load_state_dict fail in many ways
                    raise AmdError(f"weights {w.file} of model {self.name!r} do not load: {_one_line(e)}") from None
            return self._states[w.name]

    @property
    def coding(self):
        return importlib.import_module(self.entry.coding)

    # -- what it accepts ------------------------------------------------------------
    def accepts(self, data: Data) -> bool:
        if self.entry.data == "text":
            return data.kind == BYTES and self.available()
        if not data.is_image:
            return False
        a = data.images()
        return a.shape[3] == 3 and a.shape[1] * a.shape[2] <= MAX_PIXELS and self.available()

    def auto_accepts(self, data: Data) -> bool:
        """``auto`` tries the model only if its entry says so, and a text model only
        on text-like bytes (at most half escapes)."""
        if not (self.entry.auto and self.accepts(data)):
            return False
        return self.entry.data != "text" or textstream.escape_fraction(np.asarray(data.array)) <= MAX_ESCAPE_FRACTION

    # -- coding -----------------------------------------------------------------------
    def _options(self, options: dict) -> dict:
        given = {k: v for k, v in options.items() if v is not None}
        unknown = set(given) - set(self.options)
        if unknown:
            raise AmdError(f"model {self.name!r} has no option {', '.join(sorted(unknown))}"
                           + (f" (it has: {', '.join(self.options)})" if self.options else ""))
        return given

    def encode(self, data: Data, progress=None, checksum: int | None = None, **options) -> bytes:
        """The payload of ``data``; with ``checksum`` (models that declare
        ``checksum_in_payload``) the payload carries it."""
        from amdcompress.models.determinism import coding_mode

        opts = self._options(options)
        if not self.accepts(data):
            raise AmdError(f"model {self.name!r} does not accept this input"
                           + ("" if self.available() else " (its weights are not installed)"))
        state = self.state()
        self.last_stats = {}
        extra = {"checksum": checksum} if self.checksum_in_payload else {}
        extra.update(self._stream(self.newest))
        try:
            with coding_mode():
                if self.entry.data == "text":
                    sym, esc = textstream.split(np.asarray(data.array, dtype=np.uint8))
                    stream = self.coding.compress(state, sym, progress=progress, stats=self.last_stats,
                                                  **self._stream(self.newest), **opts)
                    return textstream.pack(stream, esc)
                return self.coding.compress(state, data.images(), progress=progress, stats=self.last_stats,
                                            **extra, **opts)
        except ValueError as e:  # e.g. an option out of range
            raise AmdError(f"model {self.name!r}: {_one_line(e)}") from None

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag: bytes | None = None):
        """The array of a payload made with the weights ``weights_tag`` names (default: the newest),
        without a checksum inside."""
        return self._decode(payload, kind, shape, progress, weights_tag, checked=False)[0]

    def decode_checked(self, payload: bytes, kind: int, shape, progress=None,
                       weights_tag: bytes | None = None) -> tuple[np.ndarray, int]:
        """``(array, checksum the payload carried)``, for models that declare ``checksum_in_payload``."""
        if not self.checksum_in_payload:
            raise AmdError(f"corrupt header: model {self.name!r} does not carry checksums in its payload")
        return self._decode(payload, kind, shape, progress, weights_tag, checked=True)

    def _decode(self, payload: bytes, kind: int, shape, progress, weights_tag,
                checked: bool) -> tuple[np.ndarray, int | None]:
        from amdcompress.codecs import CorruptStreamError
        from amdcompress.models.determinism import coding_mode

        shape = tuple(int(d) for d in shape)
        w = self.weights_for(weights_tag) if weights_tag is not None else self.newest
        state = self.state(w)
        layout = self._stream(w)
        try:
            with coding_mode():
                if self.entry.data == "text":
                    if kind != BYTES or len(shape) != 1:
                        raise AmdError(f"corrupt header: the {self.name} model codes bytes only")
                    stream, esc = textstream.unpack(payload)
                    sym = self.coding.decompress(state, stream, shape[0], progress=progress, **layout)
                    if sym.size > shape[0]:
                        raise AmdError("corrupt payload: text length mismatch")
                    return textstream.join(sym, esc, shape[0]), None
                batch = shape if kind == NPY_BATCH else (1,) + shape
                if len(batch) != 4 or batch[3] != 3 or batch[1] * batch[2] > MAX_PIXELS:
                    raise AmdError(f"corrupt header: {self.name} cannot have coded shape {shape}")
                if checked:
                    out, crc = self.coding.decompress_checked(state, payload, batch, progress=progress, **layout)
                    return out.reshape(shape), crc
                return self.coding.decompress(state, payload, batch, progress=progress, **layout).reshape(shape), None
        except AmdError:
            raise
        except (CorruptStreamError, ValueError, IndexError, OverflowError) as e:
            raise AmdError(f"corrupt payload ({_one_line(e)})") from None
        except BaseException as e:  # constriction's PanicException derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise AmdError(f"corrupt payload ({type(e).__name__})") from None

    def details(self, payload: bytes, shape, weights_tag: bytes | None = None) -> dict:
        """What ``info`` shows about a payload without decoding it: for text, the
        bytes of the model stream and of the escapes, and how many input bytes
        were escapes; the model's own facts (e.g. chain steps, an image
        model's stream version and lanes), read with the payload layout of the
        weights ``weights_tag`` names (known to this build; installed or not)."""
        layout = {}
        if self.entry.streams != (1,):
            w = next((w for w in self.entry.weights if weights_tag is None or w.matches(weights_tag)), None)
            if w is None:
                return {}
            layout = self._stream(w)
        if self.entry.data != "text":
            if not self.entry.details:
                return {}
            shape = tuple(int(d) for d in shape)
            return self.coding.details(payload, shape if len(shape) == 4 else (1,) + shape, **layout)
        stream, esc = textstream.unpack(payload)
        n = int(shape[0]) if len(shape) == 1 else 0
        facts = {"model_stream_bytes": len(stream), "escape_bytes": len(esc),
                 "escaped_input_bytes": textstream.escape_count(esc, n)}
        return {**facts, **(self.coding.details(stream, **layout) if self.entry.details and stream else {})}
