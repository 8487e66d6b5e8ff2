"""The public API: whole files in, whole files out.

``compress(raw)`` returns the bytes of an ``.amd`` file; ``decompress(blob)``
returns the original file bytes (images: identical pixels, mode and size; see
:mod:`.formats`), or raises: a damaged file never decodes to a different file.
Every failure is an :class:`~.errors.AmdError` with a one-line message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import backends, container, formats
from .codecs.errors import AmdError

AUTO = "auto"
DEFAULT_MAX_SIZE = 4 << 30  # bytes of decoded data a file may declare (the CLI's --max-size default)


@dataclass(frozen=True)
class Info:
    """What ``amdcompress info`` reports about a file."""

    model: str
    codec_id: int
    kind: str
    shape: tuple[int, ...]
    dims: int
    file_bytes: int
    payload_bytes: int
    header_bytes: int
    bits_per_dim: float
    crc32: str
    details: dict = field(default_factory=dict)  # the model's own facts (escapes, chain steps, ...)
    format_version: int = container.VERSION
    header_checked: bool = True  # False before format version 3: the checksum covers the data, not the header

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        return d


def _encode(backend, data: formats.Data, data_crc: int, progress: Callable | None, options: dict) -> bytes:
    """Encode and frame; ``data_crc`` is the CRC-32 of ``data.array``, extended
    here over the header bytes this backend's file will have (the version-3
    checksum, :mod:`.container`). A backend that declares ``checksum_in_payload``
    carries it in its payload (the container then leaves its CRC field out).
    ``options``: those the backend declares."""
    opts = {k: v for k, v in options.items() if k in backend.options}
    checked = backend.checksum_in_payload
    tag = backend.weights_tag()
    crc = container.checksum(data_crc, container.covered_bytes(backend.codec_id, tag, data.kind,
                                                               data.array.shape, checked))
    if checked:  # the checksum goes in first: the header it covers is known before encoding
        payload, crc_field = backend.encode(data, progress, checksum=crc, **opts), None
    else:
        payload, crc_field = backend.encode(data, progress, **opts), crc
    header = container.Header(backend.codec_id, tag, data.kind, data.array.shape, crc_field, len(payload))
    return container.pack(header, payload)


def compress(raw: bytes, model: str = AUTO, progress: Callable | None = None, *, steps: int | None = None) -> bytes:
    """Compress file bytes with ``model`` (a backend name, or ``auto``: every
    available backend that accepts the input for auto is tried and the smallest
    file kept, so auto is never worse than the classical fallbacks).

    Model options (``None``: the model's default; recorded in the file, so
    decoding needs none): ``steps``, the chain steps of a diffusion model."""
    options = {k: v for k, v in {"steps": steps}.items() if v is not None}
    data = formats.sniff(bytes(raw))
    crc = container.crc32(np.ascontiguousarray(data.array).tobytes())
    if model != AUTO:
        backend = backends.by_name(model)
        unknown = set(options) - set(backend.options)
        if unknown:
            raise AmdError(f"model {model!r} has no option {', '.join(sorted(unknown))}")
        if not backend.accepts(data):
            raise AmdError(f"model {model!r} does not accept {formats.KIND_NAMES[data.kind]} input "
                           f"of shape {data.array.shape}")
        return _encode(backend, data, crc, progress, options)
    best = None
    for backend in backends.all_backends():
        if not backend.auto_accepts(data):
            continue
        try:
            blob = _encode(backend, data, crc, progress, options)
        except AmdError:
            continue  # e.g. a model that cannot code this particular input
        if best is None or len(blob) < len(best):
            best = blob
    assert best is not None  # store accepts everything
    return best


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def decompress(blob: bytes, progress: Callable | None = None, max_size: int | None = DEFAULT_MAX_SIZE) -> bytes:
    """Decode an ``.amd`` file back to the original file bytes, checking the
    container, the model's weights and the checksum (from the header, or
    handed back by the codec when its payload carries it) before anything is
    returned. ``max_size`` (bytes of decoded data; None: no limit) is checked
    against the declared shape before anything is allocated.

    Every failure is an :class:`AmdError`: corrupt data, an exhausted stream,
    running out of memory, and whatever a codec library raises (numpy, torch,
    lzma, imagecodecs, constriction's ``PanicException``) while decoding."""
    try:
        return _decompress(blob, progress, max_size)
    except AmdError:
        raise
    except MemoryError:
        raise AmdError("out of memory while decoding (a corrupt file, or one too large for this machine)") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # constriction's PanicException is a BaseException
        raise AmdError(f"corrupt payload ({_one_line(e)})") from None


def _decompress(blob: bytes, progress: Callable | None, max_size: int | None) -> bytes:
    header, payload = container.unpack(bytes(blob))
    dims = math.prod(header.shape)
    if max_size is not None and dims > max_size:
        raise AmdError(f"file declares {dims:,} bytes of data, over the limit of {max_size:,} "
                       "(raise it with --max-size / max_size if the file is trusted)")
    backend = backends.by_id(header.codec_id)
    backend.check_weights(header.weights_tag)
    if header.checksum_in_payload and not backend.checksum_in_payload:
        raise AmdError(f"corrupt header: model {backend.name!r} does not carry checksums in its payload")
    if header.header_checked and not header.checksum_in_payload and backend.checksum_in_payload:
        raise AmdError(f"corrupt header: model {backend.name!r} carries its checksum in the payload")
    with container.reading(header.version):
        if header.checksum_in_payload:
            array, crc = backend.decode_checked(payload, header.kind, header.shape, progress, header.weights_tag)
        else:
            array, crc = backend.decode(payload, header.kind, header.shape, progress, header.weights_tag), header.crc32
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.shape != header.shape or container.checksum(container.crc32(array.tobytes()), header.covered) != crc:
        raise AmdError("checksum mismatch: the file is corrupt (or was made on an incompatible setup)")
    return formats.to_file_bytes(formats.Data(header.kind, array))


def info(blob: bytes) -> Info:
    """Describe an ``.amd`` file without decoding its payload."""
    header, payload = container.unpack(bytes(blob))
    details: dict = {}
    try:
        backend = backends.by_id(header.codec_id)
        name = backend.name
    except AmdError:
        backend, name = None, f"unknown (id {header.codec_id})"
    if backend is not None:
        try:
            details = (backend.details(payload, header.shape, weights_tag=header.weights_tag) if backend.learned
                       else backend.details(payload, header.shape))
        except AmdError as e:
            details = {"unreadable": str(e)}
        except Exception as e:  # a damaged payload: info still describes the header
            details = {"unreadable": f"corrupt payload ({_one_line(e)})"}
    dims = math.prod(header.shape)
    return Info(
        model=name,
        codec_id=header.codec_id,
        kind=formats.KIND_NAMES[header.kind],
        shape=header.shape,
        dims=dims,
        file_bytes=len(blob),
        payload_bytes=len(payload),
        header_bytes=len(blob) - len(payload),
        bits_per_dim=8.0 * len(blob) / dims if dims else float("nan"),
        crc32="in payload" if header.checksum_in_payload else f"{header.crc32:08x}",
        details=details,
        format_version=header.version,
        header_checked=header.header_checked,
    )
