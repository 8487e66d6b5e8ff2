"""IDF streams 2 and 3: a version byte, then independent lanes coded side by side.

Layout of a stream-2 (stream-3) payload of ``N`` images::

    0x02 (0x03)                           the stream version (varint.write_head)
    varint L, varint len_0 .. len_{L-2}   only if N >= 2 (N <= 1: L = 1, nothing written)
    lane_0 lane_1 ... lane_{L-1}          the last lane takes the rest of the payload

Lane ``i`` holds images ``[i*N//L, (i+1)*N//L)`` and is exactly the stream-1
payload of those images (:func:`.coding.encode_message`: one ANS message,
images in network batches of :data:`.coding.PIXELS_PER_CHUNK` padded pixels,
anchored on the container's checksum when there is one, each lane on the same
value). In stream 3 each lane is that message with the latents coded by
:class:`.coding.BinnedPartCoder` instead of :class:`.coding.PartCoder`; the
layout is the same. The encoder writes ``L = min(LANES, N)``; the decoder
reads any ``1 <= L <= N``.

Guarantees:

* the bytes depend on the images, the model and the checksum only, never on
  the number of workers, how they run or torch threads: every lane is coded
  with one torch thread, in the coding mode the caller's thread holds, the
  same computation wherever it runs;
* lanes are coded concurrently on ``workers`` workers (:mod:`.workers`:
  forked processes on Linux, threads elsewhere or with
  ``$AMDCOMPRESS_LANE_MODE=threads``): ``workers`` argument, else
  ``$AMDCOMPRESS_WORKERS`` (a cap), else the CPUs this process may use; never
  more than ``L``;
* a stream-2 decoder refuses, with a one-line :class:`AmdError` starting
  "corrupt payload", another version byte, a lane count outside ``1..N``,
  lane lengths that do not fit the payload (an empty lane included), lanes
  that carry different checksums, and every lane that is not a whole stream-1
  message of its images in its canonical form (head varints in their
  shortest form, lanes as :meth:`Message.to_bytes` writes them: one payload
  per batch);
* a damaged lane never decodes silently to other images: it fails here, or
  the images it decodes to do not have the CRC the lanes carried, which the
  container checks (a flipped bit among those the escapes code uniformly can
  leave a lane's anchor intact; the CRC of the images catches it).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from amdcompress.codecs.errors import AmdError
from amdcompress.codecs.message import CANONICAL, CorruptStreamError
from amdcompress.codecs.varint import read_head, read_varint, write_head, write_varint

from ..determinism import CODING_THREADS
from .workers import run_jobs

STREAM_VERSION = 2
LANES = 2                      # lanes the encoder writes (at most; one per image below that)
WORKERS_ENV = "AMDCOMPRESS_WORKERS"


def lane_count(n: int) -> int:
    """The lanes the encoder writes for ``n`` images: ``min(LANES, n)``, at least 1."""
    return max(1, min(LANES, n))


def lane_bounds(n: int, lanes: int) -> list[tuple[int, int]]:
    """Images ``[i*n//L, (i+1)*n//L)`` of lane ``i``."""
    return [(i * n // lanes, (i + 1) * n // lanes) for i in range(lanes)]


def workers_for(lanes: int, workers: int | None = None) -> int:
    """Threads to code ``lanes`` lanes on: ``workers`` if given, else
    ``$AMDCOMPRESS_WORKERS`` (a cap), else the CPUs this process may run on;
    at most ``lanes``. AmdError on a value that is not a positive integer."""
    if workers is None:
        env = os.environ.get(WORKERS_ENV, "").strip()
        if env:
            try:
                workers = int(env)
            except ValueError:
                workers = 0
            if workers < 1:
                raise AmdError(f"{WORKERS_ENV}={env!r} is not a positive integer")
        else:
            try:
                workers = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                workers = os.cpu_count() or 1
    if workers < 1:
        raise AmdError(f"workers must be a positive integer, got {workers}")
    return max(1, min(workers, lanes))


# ---------------------------------------------------------------------------
# the head


def write_lanes_head(n: int, lanes: list[bytes], stream: int = STREAM_VERSION) -> bytes:
    """The head in front of ``lanes`` (the lane payloads) of ``n`` images."""
    if n <= 1:
        return write_head(stream)
    return write_head(stream, len(lanes), *(len(b) for b in lanes[:-1]))


def _read_field(payload: bytes, pos: int) -> tuple[int, int]:
    """A varint of the lane head, in its shortest form only (one payload per batch)."""
    v, end = read_varint(payload, pos, lambda: CorruptStreamError("truncated idf stream head"))
    if end - pos != len(write_varint(v)):
        raise CorruptStreamError("idf stream head not in its canonical form")
    return v, end


def split_lanes(payload: bytes, n: int, stream: int = STREAM_VERSION) -> list[bytes]:
    """A stream-2 (``stream``) payload of ``n`` images -> its lane payloads; AmdError (one
    line, "corrupt payload ...") on another version, a lane count outside
    ``1..n``, a head varint not in its shortest form, or lane lengths that do
    not fit the payload."""
    payload = bytes(payload)
    try:
        _, pos = read_head(payload, stream, 0, "idf")
        if n <= 1:
            lanes, sizes = 1, []
        else:
            lanes, pos = _read_field(payload, pos)
            if not 1 <= lanes <= n:
                raise CorruptStreamError(f"idf stream: {lanes} lanes for {n} images")
            sizes = []
            for _ in range(lanes - 1):
                size, pos = _read_field(payload, pos)
                sizes.append(size)
    except CorruptStreamError as e:
        raise AmdError(f"corrupt payload ({e})") from None
    rest = len(payload) - pos
    if sum(sizes) >= rest or min(sizes, default=1) < 1:
        raise AmdError("corrupt payload (idf stream: lane lengths do not fit the payload)")
    out = []
    for size in sizes + [rest - sum(sizes)]:
        out.append(payload[pos : pos + size])
        pos += size
    return out


def details(payload: bytes, n: int, stream: int = STREAM_VERSION) -> dict:
    """What ``amdcompress info`` shows of a stream-2 (``stream``) payload: its version, lanes and their bytes."""
    lanes = split_lanes(payload, n, stream)
    return {"idf_stream": stream, "lanes": len(lanes), "lane_bytes": [len(b) for b in lanes]}


# ---------------------------------------------------------------------------
# coding on workers (:mod:`.workers`: forked processes, or threads)


def _bar(progress: Callable | None, total: int):
    return progress(total) if progress else None


def _update(bar) -> Callable[[int], None] | None:
    return None if bar is None else (lambda k=1: bar.update(k))


def _close(bar) -> None:
    if bar is not None and hasattr(bar, "close"):
        bar.close()


def encode(model, images: np.ndarray, progress: Callable | None = None, checksum: int | None = None,
           workers: int | None = None, stream: int = STREAM_VERSION) -> bytes:
    """uint8 (N, H, W, C) -> the stream-2 (``stream``) payload (see the module docstring)."""
    from . import coding

    images = coding.check_images(model, images)
    n = len(images)
    bounds = lane_bounds(n, lane_count(n))
    bar = _bar(progress, sum(len(coding.encode_chunks(model, images[s:e])) for s, e in bounds))
    model.eval()
    try:
        with coding._coding(CODING_THREADS):
            lanes = run_jobs([lambda tick, s=s, e=e: coding.encode_message(model, images[s:e], checksum, tick, stream)
                              for s, e in bounds], workers_for(len(bounds), workers), _update(bar))
    finally:
        _close(bar)
    return write_lanes_head(n, lanes, stream) + b"".join(lanes)


def decode(model, payload: bytes, shape, progress: Callable | None = None, checked: bool = False,
           workers: int | None = None, stream: int = STREAM_VERSION) -> tuple[np.ndarray, int | None]:
    """A stream-2 (``stream``) payload -> (images, the checksum the lanes carried, or None
    unless ``checked``); AmdError if it is corrupt or its lanes disagree."""
    from . import coding

    n, h, w, c = coding.check_shape(model, shape)
    lanes = split_lanes(payload, n, stream)
    bounds = lane_bounds(n, len(lanes))
    # parsed here, in the caller's thread, in their canonical form only (as format-3 containers
    # ask of every stream; stream 2 has no older form to accept)
    token = CANONICAL.set(True)
    try:
        messages = [coding.open_message(b, checked) for b in lanes]
    finally:
        CANONICAL.reset(token)
    hp, wp = coding.padded_size(h, w, model.multiple)
    bar = _bar(progress, sum(len(coding.image_chunks(e - s, hp, wp)) for s, e in bounds))
    model.eval()

    def lane(tick, m, s, e):
        x, m = coding.decode_message(model, m, (e - s, h, w, c), tick, stream)
        return x, coding.close_message(m, checked)

    try:
        with coding._coding(CODING_THREADS):
            done = run_jobs([lambda tick, m=m, s=s, e=e: lane(tick, m, s, e)
                             for m, (s, e) in zip(messages, bounds)], workers_for(len(bounds), workers), _update(bar))
    except CorruptStreamError as e:  # e.g. a lane ran out before its images did
        raise AmdError(f"corrupt payload ({e})") from None
    finally:
        _close(bar)
    carried = {c for _, c in done}
    if len(carried) != 1:
        raise AmdError("corrupt payload (idf lanes carry different checksums)")
    out = np.concatenate([x for x, _ in done]) if done else np.zeros((0, h, w, c), np.uint8)
    return out, carried.pop()
