"""The message: an ANS stack of 32-bit words that codecs push onto and pop from.

A thin wrapper over constriction's ``AnsCoder`` that makes three things explicit
which the raw coder leaves implicit:

* **Serialization.** :meth:`Message.to_bytes` / :meth:`Message.from_bytes` give a
  self-delimiting, little-endian byte form; any byte string either parses to a
  message or raises :class:`CorruptStreamError`.
* **Initial bits for bits-back.** A bits-back codec must *pop* before it has
  pushed anything. :meth:`Message.seeded` starts the stack on a fixed
  pseudo-random word stream that every decoder can regenerate (SHAKE-256 of a
  constant). :meth:`to_bytes` leaves out the part of that stream the encoder
  never touched, so a file only pays for the initial bits it actually consumed.
* **An anchor for a checksum.** :meth:`Message.anchored` starts a stack on a
  given 32-bit value (the 33-bit state ``2**32 + value``); decoding everything
  leaves exactly that state, and :meth:`anchor` reads the value back. An empty
  stack wastes about as many bits at its bottom, so a coder with no bits-back
  carries its file's CRC this way almost for free.
* **Underflow.** Popping from a message that has run out of words is
  deterministic and exactly invertible (the coder reads zero bits: it returns the
  lowest-cumulative symbol, and pushing that symbol back restores the message
  bit for bit). Such samples are not distributed like the model, so bits-back
  gains nothing from them; with ``strict=True`` a pop from an empty message
  raises :class:`MessageUnderflowError` instead.
* **Over-drawn streams (decoders).** A decoder pops what an encoder pushed, so
  its message never holds fewer bits than the encoder's did at the same point.
  :meth:`from_bytes` gives a message a *floor*, the fewest valid bits any
  correct decode can leave on it: a message resting on the initial-bits stream
  (``seeded=True``, every bits-back decoder) keeps all but the top 2 words of
  the seed prefix it was read with, and never reaches the bottom of the stack;
  an anchored one (``anchored=True``) never pops below its anchor. Every pop of
  :mod:`.core` calls :meth:`check_drawn` afterwards, so a damaged or forged
  stream fails at the first pop that digs below the floor instead of decoding
  garbage (or free zero-bit symbols from an exhausted coder) until a length
  its header claims. :meth:`require_bits` lets a decoder check, before it
  allocates anything, that the stream can hold a pop of known size (uniform
  symbols). A message built with no floor (an exact coder's stream that starts
  empty) only raises where ``strict`` says so: its bottom legitimately decodes
  symbol 0 for free.
"""
from __future__ import annotations

import contextvars
import hashlib

import constriction
import numpy as np

from .varint import read_varint, write_varint

_AnsCoder = constriction.stream.stack.AnsCoder
_SEED_TAG = b"amdcompress/initial-bits/v1"


class CorruptStreamError(ValueError):
    """The bytes do not form a valid ANS message."""


class MessageUnderflowError(CorruptStreamError, RuntimeError):
    """A strict message was popped while empty, or a decoder's message was
    popped below its floor (the stream is exhausted or over-drawn)."""


CANONICAL = contextvars.ContextVar("amdcompress_canonical_messages", default=False)
"""While True (set by the container reader for format 3 on), :meth:`Message.from_bytes`
accepts only the exact form :meth:`Message.to_bytes` writes: a shortest-form
prefix varint and no trailing zero byte (an older whole-words stream may end in
zero bytes; the same words written two ways would make two files decode alike)."""


def strict_streams() -> bool:
    """True while a file of format version 3 or later is being decoded (see
    :data:`CANONICAL`): codecs then also refuse stream layouts that only older
    files use (ones whose decoding effort a forged header could make unbounded)."""
    return CANONICAL.get()


MAX_SEED_WORDS = 1 << 22
"""The most initial-bits words a serialized message may ask its reader to
regenerate (16 MiB; the diffusion coder's seed for ~27 M symbols). A larger
prefix count is corrupt, not a reason to allocate."""


def seed_words(n: int) -> np.ndarray:
    """The first ``n`` words of the fixed initial-bits stream (a prefix-stable sequence)."""
    if n <= 0:
        return np.zeros(0, dtype=np.uint32)
    raw = hashlib.shake_256(_SEED_TAG).digest(4 * n)
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


_write_varint = write_varint


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    return read_varint(data, pos, lambda: CorruptStreamError("truncated or over-long varint in ANS stream"))


class Message:
    """An ANS stack. Codecs mutate it in place through :attr:`coder`."""

    __slots__ = ("coder", "strict", "floor")

    def __init__(self, coder=None, *, strict: bool = False, floor: int = 0):
        self.coder = coder if coder is not None else _AnsCoder()
        self.strict = strict
        self.floor = int(floor)  # fewest valid bits a correct decode leaves (see check_drawn)

    # -- construction -----------------------------------------------------
    @classmethod
    def empty(cls, *, strict: bool = False) -> "Message":
        """A message with no words: pushes only, or pops of zero information."""
        return cls(_AnsCoder(), strict=strict)

    @classmethod
    def seeded(cls, n_words: int = 64) -> "Message":
        """A message resting on ``n_words`` of the fixed initial-bits stream.

        Use it to start a bits-back encoder; the decoder needs nothing extra,
        because :meth:`to_bytes` records how much of the stream survived.
        """
        return cls(_AnsCoder(seed_words(n_words), seal=True))

    @classmethod
    def anchored(cls, value: int) -> "Message":
        """A message whose stack starts on the 33-bit state ``2**32 + value``
        (``0 <= value < 2**32``), for coders with no bits-back.

        Popping everything that was pushed leaves exactly this state again, so
        the value rides through the stream as a check: :meth:`anchor` reads it
        back. It costs 33 bits, about what ANS spends anyway on the bottom of an
        empty stack, so a 32-bit checksum stored this way is almost free.
        """
        if not 0 <= value < (1 << 32):
            raise ValueError("anchor must fit in 32 bits")
        return cls(_AnsCoder(np.array([value, 1], dtype=np.uint32)))

    def anchor(self) -> int | None:
        """The value of :meth:`anchored` if the message holds exactly that start
        state and nothing else, else None."""
        w = self.words()
        return int(w[0]) if len(w) == 2 and w[1] == 1 else None

    # -- inspection -------------------------------------------------------
    def num_bits(self) -> int:
        """Bits the message would occupy if serialized now (before seed stripping)."""
        return int(self.coder.num_bits())

    def is_empty(self) -> bool:
        return bool(self.coder.is_empty())

    def words(self) -> np.ndarray:
        """The compressed words, bottom of the stack first (a copy)."""
        return np.asarray(self.coder.get_compressed(), dtype=np.uint32).copy()

    def copy(self) -> "Message":
        return Message(self.coder.clone(), strict=self.strict, floor=self.floor)

    def __eq__(self, other) -> bool:
        return isinstance(other, Message) and np.array_equal(self.words(), other.words())

    __hash__ = None  # mutable

    def check_pop(self) -> None:
        """Raise if a strict message is asked to pop while empty."""
        if self.strict and self.coder.is_empty():
            raise MessageUnderflowError("pop from an empty message")

    def valid_bits(self) -> int:
        """Bits of information on the stack (constriction's ``num_valid_bits``)."""
        return int(self.coder.num_valid_bits())

    def check_drawn(self) -> None:
        """Raise :class:`MessageUnderflowError` if the message holds fewer valid
        bits than its floor: the stream is exhausted or over-drawn, so it is not
        one an encoder wrote. Cheap (one call into the coder); :mod:`.core`
        calls it after every pop."""
        if self.floor and self.coder.num_valid_bits() < self.floor:
            raise MessageUnderflowError("ANS stream exhausted: the data claims more symbols than the stream holds")

    def require_bits(self, bits: float) -> None:
        """Raise :class:`MessageUnderflowError` unless ``bits`` more bits can be
        popped before the floor (with 64 bits of slack for the coder's
        rounding): call it before allocating for a pop whose cost is known,
        e.g. ``n`` uniform symbols cost ``n * log2(K)`` bits."""
        if self.coder.num_valid_bits() - self.floor + 64 < bits:
            raise MessageUnderflowError("ANS stream too short for the symbols its header claims")

    # -- initial bits -----------------------------------------------------
    @staticmethod
    def _seed_prefix(w: np.ndarray) -> int:
        """Length of the longest prefix of ``w`` shared with the initial-bits stream."""
        if not len(w):
            return 0
        diff = np.flatnonzero(w != seed_words(len(w)))
        return int(diff[0]) if len(diff) else len(w)

    def initial_words_used(self, n_words: int) -> int:
        """Initial-bits words an encoder's message that started as
        :meth:`seeded` (``n_words``) has consumed so far: the seed words no
        longer intact at the bottom of the stack, what the file pays for
        (the initial-bits accounting every bits-back model reports)."""
        k = self._seed_prefix(self.words())
        return n_words - k if k <= n_words else 0

    # -- serialization ----------------------------------------------------
    def to_bytes(self, *, seed_prefix: bool = True) -> bytes:
        """Serialize: varint(k) + words[k:] little-endian, where words[:k] is the
        longest prefix shared with the initial-bits stream (dropped: the decoder
        regenerates it), and up to 3 zero high bytes of the last (top) word are
        dropped too: the ANS head ends the stream and is often small, so this
        saves about a byte a file. The length mod 4 tells the reader how many
        to put back; a whole-words stream (older files) reads the same.

        ``seed_prefix=False`` writes the words alone (no varint): for messages
        that never rest on the initial-bits stream, read back with the same flag.
        """
        w = self.words()
        k = self._seed_prefix(w) if seed_prefix else 0
        body = w[k:].astype("<u4").tobytes()
        trim = 0
        while body and trim < 3 and body[len(body) - 1 - trim] == 0:
            trim += 1
        return (_write_varint(k) if seed_prefix else b"") + body[: len(body) - trim]

    @classmethod
    def from_bytes(cls, data: bytes, *, strict: bool = False, seed_prefix: bool = True,
                   seeded: bool = False, anchored: bool = False) -> "Message":
        """Inverse of :meth:`to_bytes` (with the same ``seed_prefix``); raises
        :class:`CorruptStreamError` on anything that is not a serialized message.

        The floor (:meth:`check_drawn`): ``seeded=True`` for a message that rests
        on the initial-bits stream (bits-back decoders): all but the top 2
        words of its seed prefix, and at least 32 bits (it never reaches the
        bottom of the stack); ``anchored=True`` for one written on
        :meth:`anchored` (32 bits: the anchor's state). Otherwise a message
        whose seed prefix has 3 or more words gets the seeded floor (an exact
        coder's stream that starts empty shares 3 words with the seed with
        probability 2**-96), any other none."""
        data = bytes(data)
        k, pos = _read_varint(data[:10], 0) if seed_prefix else (0, 0)
        if k > MAX_SEED_WORDS:
            raise CorruptStreamError("implausible initial-bits prefix length")
        body = data[pos:]
        if CANONICAL.get() and ((pos > 1 and data[pos - 1] == 0) or body[-1:] == b"\0"):
            raise CorruptStreamError("ANS stream not in its canonical form")
        if len(body) % 4:  # the top word's dropped zero high bytes
            body += b"\0" * (4 - len(body) % 4)
        if k:
            seed = hashlib.shake_256(_SEED_TAG).digest(4 * k)  # seed_words(k), without extra copies
            words = np.frombuffer(seed + body, dtype="<u4")
        else:
            words = np.frombuffer(body, dtype="<u4")
        words = words.astype(np.uint32, copy=False)
        try:
            coder = _AnsCoder(words) if len(words) else _AnsCoder()
        except ValueError as e:
            raise CorruptStreamError(str(e)) from None
        floor = 0
        if seeded or k >= 3:
            floor = 32 * max(k - 2, 1)
        elif anchored:
            floor = 32
        return cls(coder, strict=strict, floor=floor)

    def is_seed_remainder(self, n_words: int = 64) -> bool:
        """True if the message is exactly the untouched ``seeded(n_words)`` start:
        what a bits-back decoder must be left with."""
        try:
            rest = self.coder.get_compressed(unseal=True)
        except BaseException as e:  # constriction's PanicException derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            return False
        return np.array_equal(np.asarray(rest, dtype=np.uint32), seed_words(n_words))
