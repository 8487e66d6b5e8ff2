"""Codec backends: what turns :class:`~.formats.Data` into a payload and back.

Every backend has a stable one-byte id written into the container, never
reused or renumbered: the classical ones are assigned here,

    0 store   1 lzma   2 jxl   3 ppmd          (always available)

and the learned models' (16 and up) in their entries of
:mod:`amdcompress.models.registry` (``amdcompress models`` lists them).

Learned models are the entries of :mod:`amdcompress.models.registry`, each
served by one :class:`~.learned.LearnedBackend`; the classical ones guarantee
that every input kind round-trips even with no model installed.

Bounded decoding: a classical decoder never produces more than the declared
size (LZMA: ``max_length``; JPEG-XL: the declared shape is handed to libjxl,
which refuses a codestream of another size before decoding pixels; PPMd: the
declared size must be reachable from the payload's length at PPMd's highest
compression ratio, :attr:`Ppmd.MAX_RATIO`), and its work is proportional to
what it produces.
"""
from __future__ import annotations

import faulthandler
import lzma
import math
import os
import select
import signal
import time
from typing import Callable, Protocol

import numpy as np

from .codecs.errors import AmdError
from .formats import BYTES, Data

NO_WEIGHTS = b"\x00\x00\x00\x00"


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...


class Backend(Protocol):
    """The interface every codec backend implements.

    ``decode(encode(d), d.kind, d.array.shape)`` returns ``d.array`` exactly,
    or raises :class:`AmdError`.
    """

    name: str
    codec_id: int
    learned: bool
    description: str
    options: tuple[str, ...]      # keyword options ``encode`` takes (e.g. "steps")
    checksum_in_payload: bool     # encode takes ``checksum=`` and decode_checked hands it back;
                                  # the container then leaves its CRC field out

    def weights_tag(self) -> bytes: ...
    def check_weights(self, tag: bytes) -> None: ...   # AmdError unless a file's tag can be decoded here
    def accepts(self, data: Data) -> bool: ...
    def auto_accepts(self, data: Data) -> bool: ...    # what ``--model auto`` tries (a subset of accepts)
    def encode(self, data: Data, progress: Callable[[int], Progress] | None = None, **options) -> bytes: ...
    def decode(self, payload: bytes, kind: int, shape: tuple[int, ...],
               progress: Callable[[int], Progress] | None = None, weights_tag: bytes | None = None) -> np.ndarray: ...
    def details(self, payload: bytes, shape: tuple[int, ...]) -> dict: ...  # facts for ``info``
    # (learned backends also take ``weights_tag=``: the file's, which names the payload layout)


class Classical:
    """What the classical backends share: no weights, no options, no checksum in the payload."""

    learned = False
    options: tuple[str, ...] = ()
    checksum_in_payload = False

    def weights_tag(self) -> bytes:
        return NO_WEIGHTS

    def check_weights(self, tag: bytes) -> None:
        if any(tag):
            raise AmdError(f"corrupt header: codec {self.name!r} has no weights (tag {tag.hex()})")

    def accepts(self, data: Data) -> bool:
        return True

    def auto_accepts(self, data: Data) -> bool:
        return self.accepts(data)

    def details(self, payload: bytes, shape) -> dict:
        return {}


class Store(Classical):
    """The raw bytes: the floor that no input can exceed (plus the header)."""

    name, codec_id = "store", 0
    description = "no compression (raw bytes)"

    def encode(self, data: Data, progress=None) -> bytes:
        return np.ascontiguousarray(data.array).tobytes()

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        if len(payload) != int(np.prod(shape)):
            raise AmdError("corrupt payload: wrong length")
        return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


class Lzma(Classical):
    """Raw LZMA2 stream (xz -9e without xz's own framing: the container frames it)."""

    name, codec_id = "lzma", 1
    description = "classical fallback for any data: LZMA2 at preset 9e"
    _FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

    def encode(self, data: Data, progress=None) -> bytes:
        return lzma.compress(np.ascontiguousarray(data.array).tobytes(), format=lzma.FORMAT_RAW, filters=self._FILTERS)

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        n = math.prod(shape)
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=self._FILTERS)
            raw = d.decompress(payload, max_length=n)  # never more than the declared size
            if len(raw) == n and not d.eof:  # the end marker must follow, and nothing after it
                raw += d.decompress(b"", max_length=1)
        except lzma.LZMAError as e:
            raise AmdError(f"corrupt payload ({e})") from None
        if len(raw) != n or not d.eof or d.unused_data:
            raise AmdError("corrupt payload: wrong decoded length")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


class JpegXl(Classical):
    """JPEG-XL lossless (libjxl through imagecodecs). A batch is coded as one
    strip image (the images stacked vertically)."""

    name, codec_id = "jxl", 2
    description = "classical fallback for images: JPEG-XL lossless (effort 9; 10 for batches)"

    def accepts(self, data: Data) -> bool:
        if not data.is_image:
            return False
        try:
            import imagecodecs

            return bool(imagecodecs.JPEGXL.available)
        except ImportError:
            return False

    @staticmethod
    def _strip(a: np.ndarray, kind_is_batch: bool) -> np.ndarray:
        if kind_is_batch:
            n, h, w, c = a.shape
            a = a.reshape(n * h, w, c)
        return a[:, :, 0] if a.shape[2] == 1 else a

    def encode(self, data: Data, progress=None) -> bytes:
        import imagecodecs

        batch = data.array.ndim == 4
        img = self._strip(np.ascontiguousarray(data.array), batch)
        # measured on CIFAR-10 (benchmarks/results/report.md): effort 10 wins on
        # strips, 9 on single small images; 7 keeps huge inputs tolerable
        effort = 10 if batch and img.size <= 2_000_000 else 9 if img.size <= 4_000_000 else 7
        out = imagecodecs.jpegxl_encode(img, lossless=True, effort=effort)
        # libjxl is a third-party encoder: check it before trusting it.
        if not np.array_equal(np.asarray(imagecodecs.jpegxl_decode(out)).reshape(data.array.shape), data.array):
            raise AmdError("JPEG-XL round trip failed")
        return bytes(out)

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        import imagecodecs

        shape = tuple(int(d) for d in shape)
        strip = (shape[0] * shape[1], shape[2], shape[3]) if len(shape) == 4 else shape
        if strip[2] == 1:
            strip = strip[:2]
        # libjxl reads the codestream's size first and refuses one that does not fit ``out``
        # (before decoding any pixel), so a forged codestream cannot make it allocate more
        out = np.empty(strip, dtype=np.uint8)
        try:
            img = np.asarray(imagecodecs.jpegxl_decode(payload, out=out))
        except Exception as e:
            raise AmdError(f"corrupt payload (JPEG-XL: {str(e).strip()[:200]})") from None
        if img.dtype != np.uint8 or img.size != math.prod(shape):
            raise AmdError("corrupt payload: decoded image has the wrong size")
        return img.reshape(shape)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def run_isolated(fn: Callable[..., bytes], *args, timeout: float, what: str) -> bytes:
    """``fn(*args)`` (returning bytes) in a forked child process, so that a
    library that crashes, corrupts memory or hangs on hostile input costs an
    :class:`AmdError`, not the caller's process. Where ``os.fork`` does not
    exist, runs in-process. ``timeout`` in seconds; the child is killed after it."""
    if not hasattr(os, "fork"):
        return fn(*args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, exit without running the parent's exit handlers
        try:
            os.close(r)
            # nothing the library (or glibc's heap checks, or faulthandler) prints may reach the
            # user's terminal or stdout: the parent reports one line
            faulthandler.disable()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                out = b"\x00" + fn(*args)
            except BaseException as e:
                out = b"\x01" + _one_line(e).encode("utf-8", "replace")
            view = memoryview(out)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(0)
    os.close(w)
    chunks, status = [], None
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise AmdError(f"{what}: gave up after {timeout:.0f} s")
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        status = os.waitpid(pid, 0)[1]
    finally:
        os.close(r)
        if status is None:  # interrupted or timed out: the child must not outlive us
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AmdError(f"{what}: the library crashed (signal {os.WTERMSIG(status)})")
    data = b"".join(chunks)
    if not data or data[0] != 0:
        raise AmdError(f"{what} ({data[1:].decode('utf-8', 'replace') if data else 'no result'})")
    return data[1:]


class Ppmd(Classical):
    """PPMd variant I (rev. 2, as in 7-Zip and ZIP), order 16, through ``pyppmd``.

    The payload is the raw range-coded stream (no end mark: the container
    holds the length); PPMd has no check of its own, the container's checksum
    is the check. Model memory is a function of the length,
    :meth:`mem_size`. Order and memory were measured (``sweep_bpc`` in
    benchmarks/results/licences.json and ppmd.json): given enough model
    memory, order 16 is never worse than order 8 and often better: 1.441 vs
    1.538 bpc on 100 KB of licences, 1.354 vs 1.425 on 3 MB of Python source,
    1.7088 vs 1.7165 on 10 MB of text8, 1.9055 vs 1.9059 on text8's
    valid.txt; it runs 1.1-1.5x longer. Order 16 needs up to ~80 bytes of
    model memory per input byte on short texts (order 8: ~16) before more
    memory stops helping, hence 64 per byte, at least 16 MiB (allocated
    lazily: untouched memory costs nothing).

    pyppmd 1.3.1's encoder loses data when one call produces more output than
    its first 32 KiB buffer, so input goes in 8 KiB pieces, and every encoding
    is decoded and compared before it is trusted. Its decoder can crash the
    process (segfault, heap corruption) on some damaged streams, so both run
    in a child process (:func:`run_isolated`). Decoding effort is bounded by
    the payload: PPMd codes no byte in less than ~0.003 bits (constant input
    reaches 2,720:1), so a file declaring more than :attr:`MAX_RATIO` bytes
    per payload byte (plus :attr:`SLACK`) is refused before decoding, and the
    encoder refuses to write one.
    """

    name, codec_id = "ppmd", 3
    description = "classical fallback for text: PPMd var. I, order 16 (pyppmd)"
    ORDER = 16
    PIECE = 8 << 10
    MAX_RATIO = 1 << 14
    SLACK = 1 << 16

    def accepts(self, data: Data) -> bool:
        if data.kind != BYTES:
            return False
        try:
            import pyppmd  # noqa: F401
        except ImportError:
            return False
        return True

    def auto_accepts(self, data: Data) -> bool:
        """``auto`` skips input that looks incompressible (order-0 entropy above
        7.5 bits a byte: random or already compressed data), where PPMd is ~10x
        slower than on text and cannot win."""
        if not self.accepts(data) or data.array.size == 0:
            return self.accepts(data)
        p = np.bincount(np.asarray(data.array, dtype=np.uint8), minlength=256) / data.array.size
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum()) <= 7.5

    @staticmethod
    def mem_size(n: int) -> int:
        """Model memory for ``n`` input bytes: 64 bytes each, a power of two in 16..256 MiB."""
        return 1 << min(28, max(24, math.ceil(math.log2(max(1, 64 * n)))))

    @classmethod
    def _encode(cls, raw: bytes) -> bytes:
        import pyppmd

        enc = pyppmd.Ppmd8Encoder(cls.ORDER, cls.mem_size(len(raw)))
        out = [enc.encode(raw[i : i + cls.PIECE]) for i in range(0, len(raw), cls.PIECE)]
        out.append(enc.flush(endmark=False))
        payload = b"".join(out)
        if cls._decode(payload, len(raw)) != raw:
            raise AmdError("PPMd round trip failed")
        return payload

    @classmethod
    def _decode(cls, payload: bytes, n: int) -> bytes:
        import pyppmd

        if n == 0:
            return b""
        dec = pyppmd.Ppmd8Decoder(cls.ORDER, cls.mem_size(n))
        # at most PIECE bytes a call: pyppmd's output buffer never has to grow; the zeros are
        # what the range decoder reads past the end anyway (it wants 5 bytes to start, a
        # 1-byte input codes to 4)
        out = [dec.decode(payload + bytes(8), min(n, cls.PIECE))]
        got = len(out[0])
        while got < n and out[-1]:
            out.append(dec.decode(b"", min(n - got, cls.PIECE)))
            got += len(out[-1])
        return b"".join(out)

    @classmethod
    def _timeout(cls, n: int) -> float:
        return 60.0 + n / 1e6  # PPMd runs at several MB/s; this only stops a hang

    def encode(self, data: Data, progress=None) -> bytes:
        raw = np.ascontiguousarray(data.array).tobytes()
        payload = run_isolated(self._encode, raw, timeout=2 * self._timeout(len(raw)), what="PPMd encoder")
        if len(raw) > self.MAX_RATIO * len(payload) + self.SLACK:
            raise AmdError("input too compressible for ppmd (use lzma)")
        return payload

    def decode(self, payload: bytes, kind: int, shape, progress=None, weights_tag=None) -> np.ndarray:
        if kind != BYTES or len(shape) != 1:
            raise AmdError("corrupt header: ppmd codes bytes only")
        n = int(shape[0])
        if n > self.MAX_RATIO * len(payload) + self.SLACK:
            raise AmdError("corrupt payload: ppmd stream too short for the declared size")
        raw = run_isolated(self._decode, payload, n, timeout=self._timeout(n), what="corrupt payload (PPMd)")
        if len(raw) != n:
            raise AmdError("corrupt payload: wrong decoded length")
        return np.frombuffer(raw, dtype=np.uint8)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add a backend; its name and id must be new."""
    for b in _REGISTRY.values():
        if b.codec_id == backend.codec_id or b.name == backend.name:
            raise ValueError(f"backend {backend.name!r} (id {backend.codec_id}) clashes with {b.name!r}")
    _REGISTRY[backend.name] = backend


for _b in (Store(), Lzma(), JpegXl(), Ppmd()):
    register(_b)


def _load_learned() -> None:
    """One backend per registry entry (imports no torch until a model is used)."""
    from amdcompress.models import registry

    from .learned import LearnedBackend

    for entry in registry.MODELS.values():
        register(LearnedBackend(entry))


_loaded = False


def all_backends() -> list[Backend]:
    global _loaded
    if not _loaded:
        _loaded = True
        _load_learned()
    return sorted(_REGISTRY.values(), key=lambda b: b.codec_id)


def by_name(name: str) -> Backend:
    for b in all_backends():
        if b.name == name:
            return b
    names = ", ".join(b.name for b in all_backends())
    raise AmdError(f"unknown model {name!r} (available: auto, {names})")


def by_id(codec_id: int) -> Backend:
    for b in all_backends():
        if b.codec_id == codec_id:
            return b
    raise AmdError(f"file needs codec id {codec_id}, which this amdcompress does not have "
                   "(made by a newer version, or its model is not installed)")

