"""Exact lossless coding of image batches with an :class:`~.idf.IDF`.

The flow is an integer bijection, so the code length is ``-log2 P(z)`` of the
latents, with no bits-back. The encoder runs the flow forward and pushes the
latent parts in the reverse of the order the decoder pops them; the decoder
pops the top latent, computes the next level's prior from what it has, pops
the factored-out half, inverts that level's couplings exactly, and so on down
to the pixels. In stream 1 (:data:`STREAMS`) a batch ``(N, H, W, C)`` is one
ANS message (the payload is :meth:`Message.to_bytes`, no version byte); a
single image is the batch of one. Stream 2 (:mod:`.lanes`) writes a version
byte and codes the batch as independent lanes, each a stream-1 payload of its
images, on worker threads; the weights version in the registry says which
stream its files use (``Weights.stream``). The container
calls :func:`encode` with the CRC-32 of the images: the stack then starts on
that value (:meth:`Message.anchored`) instead of empty, which costs about what
the bottom of an empty ANS stack wastes, and :func:`decode_checked` hands it
back for the check, so the file needs no separate CRC field.

Exactness rests on the decoder computing bit-identical network outputs:

* the couplings add ``round(t(x_a))``, where ``t`` is evaluated on the same
  integer-valued float32 tensor, of the same shape, on both sides;
* coding runs on the CPU with :data:`CODING_THREADS` torch threads and
  deterministic algorithms (:func:`.determinism.coding_mode`);
* prior parameters are rounded to multiples of :data:`GRID` before the integer
  frequency tables are built (by :mod:`amdcompress.codecs`, deterministic in
  numpy), which makes a mismatch between machines rarer; the container's CRC
  turns any remaining mismatch into an error, never into wrong output.

Latents must lie in ``[LO, HI]``. Each one is coded under its mixture in up
to three exact stages (:class:`PartCoder`): a narrow window around the mean of
the dominant component plus an escape, a wide ring around it plus an escape,
and a uniform code on ``[LO, HI]``; window widths come from the component
scales, so tables stay small and the cost stays -log2 of the model's mass.

Images of any size are edge-padded to a multiple of ``2**levels``; the padded
pixels are coded too (the container records the true size, the caller crops).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
import torch

from amdcompress.codecs import Categorical, Message, Uniform, det_exp
from amdcompress.codecs.distributions import MixtureRows, mixture_params
from amdcompress.codecs.message import CorruptStreamError
from amdcompress.codecs.errors import AmdError

from ..determinism import CODING_THREADS, coding_mode
from .network import CENTER, IDF, LOG_SCALE_MAX, LOG_SCALE_MIN, Part, logistic_mixture_logp, to_input

LO, HI = -(1 << 15), (1 << 15) - 1
GRID_BITS = 10
GRID = 2.0 ** -GRID_BITS
HALF_WINDOWS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
INNER_TAIL_BITS = 0      # inner window: the core of the mixture (measured fastest; the cost is exact either way)
OUTER_TAIL_BITS = 14     # the outer window leaves at most ~2**-14 to the uniform escape
MAX_TABLE = 1 << 21      # table entries built at once (memory bound)
PIXELS_PER_CHUNK = 1 << 17  # padded pixels per network batch (images are never split)


@contextlib.contextmanager
def _coding(threads: int = CODING_THREADS):
    """:func:`coding_mode`, without torch's filling of new tensors: under
    deterministic algorithms torch fills every uninitialized tensor with NaN
    (so that code reading memory it never wrote is reproducible). Every tensor
    here is written before it is read (convolution outputs, concatenations),
    so the fill changes no number and only costs time (~10% of a pass)."""
    det = torch.utils.deterministic
    old = det.fill_uninitialized_memory
    with coding_mode(threads):
        det.fill_uninitialized_memory = False
        try:
            yield
        finally:
            det.fill_uninitialized_memory = old


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def pad_images(images: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-pad (N, H, W, C) to sides that are multiples of ``multiple``."""
    n, h, w, c = images.shape
    hp, wp = padded_size(h, w, multiple)
    if (hp, wp) == (h, w):
        return images
    return np.pad(images, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")


def image_chunks(n: int, hp: int, wp: int) -> list[tuple[int, int]]:
    """Batches of whole images that the network processes together (both sides alike)."""
    per = max(1, PIXELS_PER_CHUNK // (hp * wp))
    return [(s, min(n, s + per)) for s in range(0, n, per)]


# ---------------------------------------------------------------------------
# one latent part: parameters -> a plan of windowed codecs


def _grid(t: torch.Tensor, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Parameters (..., K) -> float32 (rows, K) on the grid: in float64,
    round(a * 2**GRID_BITS) / 2**GRID_BITS, clipped to [lo, hi]. Read straight
    from the (permuted, strided) tensor into one float64 buffer; dividing by a
    power of two is multiplying by its inverse, bit for bit."""
    src = t.detach()
    if src.device.type != "cpu":
        src = src.cpu()
    a = np.empty(tuple(src.shape), dtype=np.float64)
    np.multiply(src.numpy(), float(1 << GRID_BITS), out=a, dtype=np.float64)
    np.round(a, out=a)
    np.multiply(a, 1.0 / (1 << GRID_BITS), out=a)
    if lo is not None:
        np.clip(a, lo, hi, out=a)
    return a.reshape(-1, src.shape[-1]).astype(np.float32)


def _rowmax(a: np.ndarray) -> np.ndarray:
    """a.max(axis=1) for a few columns, as column-wise maxima (a maximum is
    order-free)."""
    m = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        np.maximum(m, a[:, j], out=m)
    return m


def _tail_log(bits: int) -> float:
    """ln(2 K / eps) for eps = 2**-bits and K <= 16 components: a constant, so
    no transcendental function of the data is evaluated outside det_exp."""
    return (bits + 5) * 0.6931471805599453


def _half_window_needed(mu, ls, rel_logit, centers, tail_log: float) -> np.ndarray:
    """Half-width that leaves at most ~eps of the mixture outside the window:
    component k (weight w_k <= exp(rel_logit_k), scale s_k, offset d_k from the
    center) has mass < 2 w_k exp(-(h + 1/2 - d_k) / s_k) beyond h, so
    h_k = d_k + s_k (ln(2K/eps) + ln w_k) suffices. Only +, -, * and det_exp:
    bit-identical on every machine."""
    return _half_windows_needed(mu, ls, rel_logit, centers, (tail_log,))[0]


def _half_windows_needed(mu, ls, rel_logit, centers, tail_logs) -> list[np.ndarray]:
    """:func:`_half_window_needed` for several tail bounds, sharing d and s."""
    d = np.abs(mu.astype(np.float64) - centers[:, None])
    s = det_exp(ls.astype(np.float64))
    rel = rel_logit.astype(np.float64)
    out = []
    for tail_log in tail_logs:
        margin = tail_log + rel
        need = np.where(margin > 0.0, d + s * margin, 0.0)
        out.append(_rowmax(need))
    return out


def _ladder(need: np.ndarray) -> np.ndarray:
    b = np.searchsorted(np.asarray(HALF_WINDOWS, dtype=np.float64), need)
    return np.minimum(b, len(HALF_WINDOWS) - 1)


_RAW = HI - LO + 1


def _on_grid(mu: torch.Tensor, log_scale: torch.Tensor, logit: torch.Tensor):
    """A part's parameters as both part coders take them: (mu, log-scales,
    logits) float32 (rows, K) on the grid and clipped; each row's center (the
    rounded mean of its first most probable component, in [LO, HI]); and the
    logits relative to the row's largest (float32, as the formats have it)."""
    mu = _grid(mu, LO, HI)
    ls = _grid(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX)
    lg = _grid(logit, -1e4, 1e4)
    rel = lg - _rowmax(lg)[:, None]
    dom = np.argmax(lg, axis=1)
    centers = np.clip(np.round(mu[np.arange(mu.shape[0]), dom].astype(np.float64)), LO, HI).astype(np.int64)
    return mu, ls, lg, centers, rel


class PartCoder:
    """Codes one latent part: integers z[i] under mixture i, in three stages.

    1. an *inner* window ``center +- h1`` plus an escape symbol carrying the
       rest of the mass (h1 small: most of the mass of the dominant components);
    2. escaped values: an *outer* table over ``center +- h2`` without the
       inner window, plus an escape carrying what lies beyond h2;
    3. values beyond h2: uniform on ``[LO, HI]``.

    Each stage is exact (its table is the mixture's mass renormalised on what
    the earlier stages left), so the cost is -log2 of the quantized mixture
    mass; only the rare stage 3 pays more than the model. Half-widths come from
    :func:`_half_window_needed` on a fixed ladder. Symbols are grouped by h1
    (one table per group, in slices of at most MAX_TABLE entries), escaped ones
    by h2; the decoder pops groups in ascending order, the encoder pushes in
    reverse.
    """

    def __init__(self, mu: torch.Tensor, log_scale: torch.Tensor, logit: torch.Tensor):
        self.mu, self.ls, self.lg, self.centers, rel = _on_grid(mu, log_scale, logit)
        n = self.mu.shape[0]
        need_in, need_out = _half_windows_needed(self.mu, self.ls, rel, self.centers,
                                                 (_tail_log(INNER_TAIL_BITS), _tail_log(OUTER_TAIL_BITS)))
        self.inner = np.minimum(_ladder(need_in), len(HALF_WINDOWS) - 2)  # an outer ring always exists
        self.outer = np.maximum(_ladder(need_out), self.inner + 1)
        self.slices: list[tuple[int, np.ndarray]] = []
        for b, hw in enumerate(HALF_WINDOWS):
            idx = np.flatnonzero(self.inner == b)
            step = max(1, MAX_TABLE // (2 * hw + 2))
            for s in range(0, len(idx), step):
                self.slices.append((hw, idx[s : s + step]))
        self.n = n
        # the mixtures in table form (row-wise, so computing them once for all
        # rows gives every slice the very floats it got when built per slice)
        self.mix = MixtureRows(self.centers, *mixture_params(self.mu, self.ls, self.lg))

    def _table(self, rows: np.ndarray, hw: int, exclude: int = -1):
        return Categorical(self.mix.table(hw, exclude, rows))

    # -- stage tables ---------------------------------------------------------
    def _inner_codec(self, hw: int, idx: np.ndarray):
        """The inner window and its escape: ``windowed_logistic_mixture_counts``."""
        return self._table(idx, hw)

    def _outer_groups(self, h1: int, idx: np.ndarray):
        """(offsets, codec, member indices) per outer half-width, ascending."""
        out = []
        hb = self.outer[idx]
        for b in np.unique(hb):
            sel = idx[hb == b]
            h2 = HALF_WINDOWS[b]
            step = max(1, MAX_TABLE // (2 * h2 + 2))
            offs = np.arange(-h2, h2 + 1, dtype=np.int64)
            keep = offs[np.abs(offs) > h1]
            for s in range(0, len(sel), step):
                part = sel[s : s + step]
                # the mixture's mass on the ring h1 < |offset| <= h2, and an escape
                # with what the whole window c +- h2 leaves of the mixture's norm
                out.append((keep, self._table(part, h2, exclude=h1), part))
        return out

    # -- push / pop -------------------------------------------------------------
    def push(self, m: Message, z: np.ndarray) -> Message:
        z = np.asarray(z, dtype=np.int64).reshape(self.n)
        if self.n and (z.min() < LO or z.max() > HI):
            raise ValueError(f"latent outside [{LO}, {HI}]")
        for hw, idx in reversed(self.slices):
            off = z[idx] - self.centers[idx]
            esc = np.abs(off) > hw
            if esc.any():
                for offs, codec, part in reversed(self._outer_groups(hw, idx[esc])):
                    o = z[part] - self.centers[part]
                    far = np.abs(o) > offs[-1]
                    Uniform(np.full(int(far.sum()), _RAW)).push(m, z[part][far] - LO)
                    j = np.searchsorted(offs, o)
                    codec.push(m, np.where(far, len(offs), j))
            self._inner_codec(hw, idx).push(m, np.where(esc, 2 * hw + 1, off + hw))
        return m

    def pop(self, m: Message) -> tuple[Message, np.ndarray]:
        z = np.zeros(self.n, dtype=np.int64)
        for hw, idx in self.slices:
            m, sym = self._inner_codec(hw, idx).pop(m)
            esc = sym == 2 * hw + 1
            z[idx] = self.centers[idx] + sym - hw
            if esc.any():
                for offs, codec, part in self._outer_groups(hw, idx[esc]):
                    m, j = codec.pop(m)
                    far = j == len(offs)
                    m, raw = Uniform(np.full(int(far.sum()), _RAW)).pop(m)
                    v = self.centers[part] + offs[np.minimum(j, len(offs) - 1)]
                    v[far] = raw + LO
                    z[part] = v
        return m, z

    def histogram(self) -> dict[str, dict[int, int]]:
        """Symbols per inner / outer half-width (diagnostics)."""
        return {name: {hw: int((a == b).sum()) for b, hw in enumerate(HALF_WINDOWS) if (a == b).any()}
                for name, a in (("inner", self.inner), ("outer", self.outer))}


THREE_LEVELS_FROM = 48  # stream 3: windows of at least this half-width take three levels, narrower two


def _digits(hw: int) -> tuple[int, tuple[int, ...]]:
    """Stream 3's levels for a window of half-width ``hw``: (bins of the first
    level, the bin widths of each level, the last 1). With ``L`` levels (3 from
    :data:`THREE_LEVELS_FROM` on, else 2) and ``r`` the least integer with
    ``r**L >= 2 hw + 1``, the widths are ``r**(L-1), ..., r, 1`` and the first
    level has ``ceil((2 hw + 1) / r**(L-1))`` bins: a value costs about
    ``L (r + 1)`` CDF evaluations per component instead of ``2 hw + 2``."""
    w = 2 * hw + 1
    levels = 3 if hw >= THREE_LEVELS_FROM else 2
    r = 2
    while r ** levels < w:
        r += 1
    widths = tuple(r ** (levels - 1 - i) for i in range(levels))
    return -(-w // widths[0]), widths


DIGITS = tuple(_digits(hw) for hw in HALF_WINDOWS)  # stream 3's levels per half-width: part of its format


class BinnedPartCoder:
    """Stream 3's code for one latent part: each integer z[i] under mixture i
    as a few digits, each under a small table, instead of one wide table.

    A row's window starts at ``center - h`` (``h`` on the :data:`HALF_WINDOWS`
    ladder, wide enough to leave at most ~2**-14 of the mixture outside, as
    :class:`PartCoder`'s outer window) and is cut into the bins of
    :data:`DIGITS` (``nb`` bins of ``r**(L-1)`` values, each cut into ``r``
    bins of ``r**(L-2)``, ... down to single values):

    1. the first digit: the mixture's mass on each of the ``nb`` bins, plus
       an escape symbol carrying the rest of the line;
    2. each further digit: the mixture's mass on the ``r`` sub-bins of the bin
       chosen so far, renormalised (no escape);
    3. escaped values: uniform on ``[LO, HI]``.

    Every stage is exact, so the cost is -log2 of the quantized masses (one
    quantization per level: millionths of a bit more than one table), and a
    row costs about ``nb + (L-1)(r+1)`` CDF evaluations per component where
    a one-level table costs ``2 h + 2``. Rows are grouped by ``h`` (slices of
    at most MAX_TABLE entries); the decoder pops slices in ascending order,
    each slice's digits level by level, then its escapes; the encoder pushes
    in reverse."""

    def __init__(self, mu: torch.Tensor, log_scale: torch.Tensor, logit: torch.Tensor):
        self.mu, self.ls, self.lg, self.centers, rel = _on_grid(mu, log_scale, logit)
        n = self.mu.shape[0]
        need = _half_window_needed(self.mu, self.ls, rel, self.centers, _tail_log(OUTER_TAIL_BITS))
        self.window = _ladder(need)
        self.slices: list[tuple[int, np.ndarray]] = []
        for b in range(len(HALF_WINDOWS)):
            idx = np.flatnonzero(self.window == b)
            nb, widths = DIGITS[b]
            step = max(1, MAX_TABLE // max(nb + 1, widths[0] // widths[1]))  # the widest table's entries
            for s in range(0, len(idx), step):
                self.slices.append((b, idx[s : s + step]))
        self.n = n
        self.mix = MixtureRows(self.centers, *mixture_params(self.mu, self.ls, self.lg))

    def _table(self, starts, width: int, bins: int, escape: bool, rows):
        return Categorical(self.mix.binned_table(starts, width, bins, escape, rows))

    def push(self, m: Message, z: np.ndarray) -> Message:
        z = np.asarray(z, dtype=np.int64).reshape(self.n)
        if self.n and (z.min() < LO or z.max() > HI):
            raise ValueError(f"latent outside [{LO}, {HI}]")
        for b, idx in reversed(self.slices):
            nb, widths = DIGITS[b]
            lo = self.centers[idx] - HALF_WINDOWS[b]
            off = z[idx] - lo
            esc = (off < 0) | (off >= nb * widths[0])
            first = np.where(esc, nb, off // widths[0])
            inside = ~esc
            rows, start, rest = idx[inside], lo[inside] + first[inside] * widths[0], off[inside] - first[inside] * widths[0]
            stages = [(lo, widths[0], nb, True, idx, first)]
            for wide, narrow in zip(widths, widths[1:]):
                d = rest // narrow
                stages.append((start, narrow, wide // narrow, False, rows, d))
                start, rest = start + d * narrow, rest - d * narrow
            Uniform(np.full(int(esc.sum()), _RAW)).push(m, z[idx][esc] - LO)
            for starts, width, bins, escape, r, sym in reversed(stages):
                if len(r):
                    self._table(starts, width, bins, escape, r).push(m, sym)
        return m

    def pop(self, m: Message) -> tuple[Message, np.ndarray]:
        z = np.zeros(self.n, dtype=np.int64)
        for b, idx in self.slices:
            nb, widths = DIGITS[b]
            lo = self.centers[idx] - HALF_WINDOWS[b]
            m, first = self._table(lo, widths[0], nb, True, idx).pop(m)
            esc = first == nb
            inside = ~esc
            rows, start = idx[inside], lo[inside] + first[inside] * widths[0]
            for wide, narrow in zip(widths, widths[1:]):
                if len(rows):
                    m, d = self._table(start, narrow, wide // narrow, False, rows).pop(m)
                    start = start + d * narrow
            z[rows] = start
            m, raw = Uniform(np.full(int(esc.sum()), _RAW)).pop(m)
            z[idx[esc]] = raw + LO
        return m, z

    def histogram(self) -> dict[str, dict[int, int]]:
        """Symbols per window half-width (diagnostics)."""
        return {"window": {hw: int((self.window == b).sum()) for b, hw in enumerate(HALF_WINDOWS)
                           if (self.window == b).any()}}


PART_CODERS = {1: PartCoder, 2: PartCoder, 3: BinnedPartCoder}
"""The part coder of each stream: 1 and 2 one-level windows, 3 two-level bins."""


def _coder(part: Part, stream: int = 1):
    return PART_CODERS[stream](part.mu, part.log_scale, part.logit)


def _latent_ints(part: Part) -> np.ndarray:
    z = part.z.detach().to("cpu", torch.float64).reshape(-1).numpy()
    if z.size and (z.min() < LO or z.max() > HI):
        raise AmdError(f"this image drives the flow's latents outside [{LO}, {HI}]; use another model")
    return z.astype(np.int64)


# ---------------------------------------------------------------------------
# batch encode / decode


def check_images(model: IDF, images: np.ndarray) -> np.ndarray:
    """``images`` as contiguous uint8 (N, H, W, C) with the model's C; AmdError if they are not."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[3] != model.config["in_channels"]:
        raise AmdError(f"IDF codes (N, H, W, {model.config['in_channels']}) images, got {images.shape}")
    return images


def encode(model: IDF, images: np.ndarray, progress: Callable | None = None,
           checksum: int | None = None) -> bytes:
    """uint8 (N, H, W, C) -> payload bytes (one ANS message): the stream-1 payload.

    With ``checksum`` (32 bits, e.g. the container's CRC-32 of the images) the
    message starts on :meth:`Message.anchored` and is written without a seed
    prefix; :func:`decode_checked` reads it and returns the value, so the check
    costs ~3 bytes less than a separate field. Without it the payload is the
    plain :meth:`Message.to_bytes` form that :func:`decode` reads."""
    images = check_images(model, images)
    bar = progress(len(encode_chunks(model, images))) if progress else None
    model.eval()
    with _coding(CODING_THREADS):
        out = encode_message(model, images, checksum, bar.update if bar is not None else None)
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    return out


def encode_chunks(model: IDF, images: np.ndarray) -> list[tuple[int, int]]:
    """The network batches :func:`encode_message` codes ``images`` in."""
    n, h, w, _ = images.shape
    return image_chunks(n, *padded_size(h, w, model.multiple))


def encode_message(model: IDF, images: np.ndarray, checksum: int | None,
                   tick: Callable[[int], object] | None = None, stream: int = 1) -> bytes:
    """The stream-1 payload of checked uint8 images (:func:`encode` without its
    progress bar and without entering the coding mode: the caller holds
    :func:`_coding`, or is a lane worker of :mod:`.lanes`). ``tick(1)`` after
    each network batch. ``stream``: the part coder (:data:`PART_CODERS`; 3:
    :class:`BinnedPartCoder`, else :class:`PartCoder`)."""
    padded = pad_images(images, model.multiple)
    m = Message.empty() if checksum is None else Message.anchored(checksum)
    for s, e in reversed(image_chunks(len(images), padded.shape[1], padded.shape[2])):
        parts = model.analyse(to_input(padded[s:e]), ste=False)
        for part in reversed(parts):
            m = _coder(part, stream).push(m, _latent_ints(part))
        if tick is not None:
            tick(1)
    return m.to_bytes(seed_prefix=checksum is None)


def open_message(payload: bytes, checked: bool) -> Message:
    """A stream-1 payload as the message its decoder pops from: plain
    (:func:`decode`) or anchored on a checksum (``checked``,
    :func:`decode_checked`: a pop below the anchor raises at once). AmdError
    if the bytes are not a message."""
    try:
        if checked:
            return Message.from_bytes(payload, seed_prefix=False, anchored=True)
        return Message.from_bytes(payload)
    except CorruptStreamError as e:
        raise AmdError(f"corrupt payload ({e})") from None


def close_message(m: Message, checked: bool) -> int | None:
    """What a fully decoded stream-1 message must leave: nothing (plain), or
    exactly its anchor, whose value is returned (``checked``); AmdError if not."""
    if not checked:
        if not m.is_empty():
            raise AmdError("corrupt payload (data left over after decoding)")
        return None
    carried = m.anchor()
    if carried is None:
        raise AmdError("corrupt payload (the stream does not end on its checksum)")
    return carried


def decode(model: IDF, payload: bytes, shape: tuple[int, int, int, int], progress: Callable | None = None) -> np.ndarray:
    """Payload bytes + (N, H, W, C) -> uint8 images; AmdError if the payload is corrupt."""
    return _decode_payload(model, payload, shape, progress, checked=False)[0]


def decode_checked(model: IDF, payload: bytes, shape: tuple[int, int, int, int],
                   progress: Callable | None = None) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode` with a ``checksum``: the images and the value
    the stream carried. The caller compares it with the checksum of the images;
    AmdError if the payload is corrupt or does not end on an anchor."""
    return _decode_payload(model, payload, shape, progress, checked=True)


def _decode_payload(model: IDF, payload: bytes, shape, progress: Callable | None, checked: bool):
    m = open_message(payload, checked)
    n, h, w, c = check_shape(model, shape)
    bar = progress(len(image_chunks(n, *padded_size(h, w, model.multiple)))) if progress else None
    model.eval()
    try:
        with _coding(CODING_THREADS):
            out, m = decode_message(model, m, shape, bar.update if bar is not None else None)
    except CorruptStreamError as e:  # e.g. popped below the anchor: the stream ran out before the images did
        raise AmdError(f"corrupt payload ({e})") from None
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    return out, close_message(m, checked)


def check_shape(model: IDF, shape) -> tuple[int, int, int, int]:
    n, h, w, c = (int(d) for d in shape)
    if c != model.config["in_channels"]:
        raise AmdError(f"IDF model codes {model.config['in_channels']} channels, file has {c}")
    return n, h, w, c


def decode_message(model: IDF, m: Message, shape: tuple[int, int, int, int],
                   tick: Callable[[int], object] | None = None, stream: int = 1) -> tuple[np.ndarray, Message]:
    """Pop ``shape[0]`` images from ``m`` (the inverse of :func:`encode_message`,
    without entering the coding mode, like it): (images, the rest of ``m``).
    Raises CorruptStreamError or AmdError on a corrupt stream."""
    n, h, w, c = check_shape(model, shape)
    hp, wp = padded_size(h, w, model.multiple)
    pieces = []  # decoded chunks of images: memory grows with the stream, not with the claimed n
    for s, e in image_chunks(n, hp, wp):
        steps = model.generate(e - s, hp, wp)
        part = next(steps)
        while True:  # pop each part in the model's generative order
            m, z = _coder(part, stream).pop(m)
            try:
                part = steps.send(torch.from_numpy(z.astype(np.float32)))
            except StopIteration as done:
                x = done.value
                break
        px = (x + CENTER).permute(0, 2, 3, 1).numpy()
        if not np.all(np.isfinite(px)) or px.min() < 0 or px.max() > 255:
            raise AmdError("corrupt payload (decoded pixels out of range)")
        pieces.append(px[:, :h, :w].astype(np.uint8))
        if tick is not None:
            tick(1)
    return (np.concatenate(pieces) if pieces else np.zeros((0, h, w, c), np.uint8)), m


# ---------------------------------------------------------------------------
# diagnostics


def model_bits(model: IDF, images: np.ndarray, batch: int = 100) -> float:
    """The model's NLL in bits of a batch, padded as the coder pads it (float32 nets,
    the likelihood in float64): what the coded size should be close to."""
    padded = pad_images(np.ascontiguousarray(images, dtype=np.uint8), model.multiple)
    total = 0.0
    model.eval()
    with _coding(CODING_THREADS):
        for s in range(0, len(padded), batch):
            for p in model.analyse(to_input(padded[s : s + batch]), ste=False):
                lp = logistic_mixture_logp(p.z.double(), p.mu.double(), p.log_scale.double(), p.logit.double())
                total += float(-lp.sum()) / math.log(2.0)
    return total


# ---------------------------------------------------------------------------
# the coding face the generic backend calls (models/registry.py)


def load(weights: dict) -> IDF:
    """The eval-mode IDF of checked weights; ValueError if they do not fit."""
    from ..registry import load_into

    return load_into(IDF(weights["config"]), weights, "IDF")


STREAMS = (1, 2, 3)
"""The payload layouts this module writes and reads (the registry entry declares
them; a weights version names the one its files use):

* 1: one ANS message for the whole batch (:func:`encode`), no version byte;
  every file made before stream 2 existed, byte for byte, forever;
* 2: a version byte, then the batch in independent lanes coded on worker
  threads (:mod:`.lanes`), each lane a stream-1 payload of its images;
* 3: stream 2's layout (version byte 3), each lane coded with
  :class:`BinnedPartCoder` (each latent as two or three digits under small
  tables) instead of :class:`PartCoder`: the same model, about a third less
  table work."""


def _stream(stream: int) -> int:
    if stream not in STREAMS:
        raise AmdError(f"IDF stream version {stream} is not one this amdcompress codes (it has {STREAMS})")
    return stream


def compress(model: IDF, images: np.ndarray, *, progress: Callable | None = None, stats: dict | None = None,
             checksum: int | None = None, stream: int = 1, workers: int | None = None) -> bytes:
    """uint8 (N, H, W, C) -> payload of stream version ``stream`` (1: :func:`encode`;
    2 and 3: :func:`.lanes.encode`, on ``workers`` workers, default ``$AMDCOMPRESS_WORKERS``
    or the CPUs; the bytes never depend on it)."""
    if _stream(stream) == 1:
        return encode(model, images, progress, checksum=checksum)
    from . import lanes

    out = lanes.encode(model, images, progress, checksum=checksum, workers=workers, stream=stream)
    if stats is not None:
        stats.update(lanes.details(out, len(images), stream))
    return out


def decompress(model: IDF, payload: bytes, shape, *, progress: Callable | None = None, stream: int = 1,
               workers: int | None = None) -> np.ndarray:
    """Inverse of :func:`compress` without a checksum."""
    if _stream(stream) == 1:
        return decode(model, payload, tuple(shape), progress)
    from . import lanes

    return lanes.decode(model, payload, tuple(shape), progress, checked=False, workers=workers, stream=stream)[0]


def decompress_checked(model: IDF, payload: bytes, shape, *, progress: Callable | None = None, stream: int = 1,
                       workers: int | None = None):
    """(images, the checksum the stream carried) (:func:`decode_checked`; streams 2
    and 3: every lane carries it, AmdError if they differ)."""
    if _stream(stream) == 1:
        return decode_checked(model, payload, tuple(shape), progress)
    from . import lanes

    return lanes.decode(model, payload, tuple(shape), progress, checked=True, workers=workers, stream=stream)


def details(payload: bytes, shape, *, stream: int = 1) -> dict:
    """What ``amdcompress info`` shows without decoding: the stream version; for
    streams 2 and 3 the lane count and each lane's bytes (``shape``: the batch
    shape (N, H, W, C), whose N the lane head is read against). AmdError if the
    head is corrupt."""
    if _stream(stream) == 1:
        return {"idf_stream": 1}
    from . import lanes

    return lanes.details(payload, int(shape[0]), stream)
