"""Sans-IO framing shared by all services: newline-delimited and length-prefixed frames.

Both framers follow h11's shape: bytes go in with :meth:`receive_data`, events
come out of :meth:`next_event` (a :class:`Frame`, an :class:`Oversized`
notice, :data:`NEED_DATA` or :data:`EOF`). Neither touches a socket, so every
edge case (a frame split across reads, a line longer than the limit, a
length prefix with no body) is tested without I/O.

:class:`LineServerProtocol` and :class:`LineClientProtocol` are the two sides of a
line protocol built on :class:`LineFramer`: a service gives them its own
line parser and gets requests or replies out.

Every framer is bounded: it never buffers more than ``max_frame`` bytes of one
frame plus one read. A frame that is too long is skipped, and an
:class:`Oversized` event says so once, so the connection stays usable.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

E = TypeVar("E")

__all__ = [
    "EOF",
    "NEED_DATA",
    "Frame",
    "FramingError",
    "LengthPrefixFramer",
    "LineClientProtocol",
    "LineFramer",
    "LineServerProtocol",
    "Oversized",
    "TruncatedFrame",
    "encode_length_prefixed",
    "next_line",
]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""Returned by ``next_event`` when more bytes are needed for the next frame."""

EOF = _Sentinel("EOF")
"""Returned by ``next_event`` once the peer has closed and every frame was read."""


class FramingError(ValueError):
    """A frame cannot be built (for example, a payload longer than the prefix allows)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame; ``payload`` excludes the delimiter or length prefix."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame longer than ``limit`` bytes arrived; it is being skipped."""

    limit: int


@dataclass(frozen=True, slots=True)
class TruncatedFrame:
    """The peer closed in the middle of a frame; ``received`` bytes of it were lost."""

    received: int


class _StreamFramer:
    """What both framers do with a close: ``b""`` marks the end, and nothing may come after it."""

    _eof: bool

    def _closed_by(self, data: bytes) -> bool:
        """True when ``data`` is the peer's close (``b""``).

        Raises:
            FramingError: bytes arrived after the close.
        """
        if not data:
            self._eof = True
            return True
        if self._eof:
            raise FramingError("data received after EOF")
        return False


class LineFramer(_StreamFramer):
    """Split a byte stream into lines ended by ``\\n`` (a ``\\r`` before it is dropped).

    Args:
        max_line: the longest line accepted, in bytes, without its line ending.
            A longer line produces one :class:`Oversized` event and is
            discarded up to its newline; the lines after it are read normally.
    """

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._buf = bytearray()
        self._start = 0  # offset of the first unread byte in _buf
        self._scanned = 0  # offset up to which _buf has no newline
        self._discarding = False
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not self._closed_by(data):
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._start

    def next_event(self) -> Frame | Oversized | TruncatedFrame | object:
        """Return the next event: a Frame, Oversized, TruncatedFrame, NEED_DATA or EOF."""
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._scanned)
            if nl < 0:
                pending = len(buf) - self._start
                if self._discarding:
                    self._reset()
                    if self._eof:
                        return EOF
                    return NEED_DATA
                if pending > self.max_line + 1:  # +1: a final '\r' may still come off
                    self._discarding = True
                    self._reset()
                    return Oversized(self.max_line)
                self._scanned = len(buf)
                if self._eof:
                    if pending:
                        self._reset()
                        return TruncatedFrame(pending)
                    return EOF
                return NEED_DATA
            line_end = nl
            if line_end > self._start and buf[line_end - 1] == 0x0D:
                line_end -= 1
            start = self._start
            self._start = self._scanned = nl + 1
            if self._discarding:
                self._discarding = False
                event = None
            elif line_end - start > self.max_line:
                event = Oversized(self.max_line)
            else:
                event = Frame(bytes(buf[start:line_end]))
            if self._start > 65536 and self._start * 2 > len(buf):
                del buf[: self._start]  # compact now and then, not on every line
                self._start = self._scanned = 0
            if event is not None:
                return event

    def _reset(self) -> None:
        self._buf.clear()
        self._start = self._scanned = 0


class LengthPrefixFramer(_StreamFramer):
    """Split a byte stream into frames each preceded by a big-endian length.

    Args:
        prefix_bytes: size of the length prefix: 2 for DNS over TCP (RFC 1035
            4.2.2), 4 for the ring's frames.
        max_frame: the largest payload accepted. A larger one produces one
            :class:`Oversized` event and its payload is skipped, so the
            stream stays in sync.
    """

    def __init__(self, prefix_bytes: int, max_frame: int) -> None:
        if prefix_bytes not in (1, 2, 4, 8):
            raise ValueError("prefix_bytes must be 1, 2, 4 or 8")
        self.prefix_bytes = prefix_bytes
        self.max_frame = max_frame
        self._unpack_length = struct.Struct(">" + " BH I   Q"[prefix_bytes]).unpack_from
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized payload still to drop
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if self._closed_by(data):
            return
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf += data

    def next_event(self) -> Frame | Oversized | TruncatedFrame | object:
        """Return the next event: a Frame, Oversized, TruncatedFrame, NEED_DATA or EOF."""
        event = self.next_payload()
        return Frame(event) if type(event) is bytes else event

    def next_payload(self) -> bytes | Oversized | TruncatedFrame | object:
        """As :meth:`next_event`, but a complete frame is returned as its bare payload (``bytes``).

        For decoders on a per-frame hot path (the ring's links): no
        :class:`Frame` wrapper is built only to be taken apart.
        """
        buf = self._buf
        n = self.prefix_bytes
        if self._skip:
            return self._end_or(NEED_DATA, self._skip)
        if len(buf) < n:
            return self._end_or(NEED_DATA, len(buf))
        length = self._unpack_length(buf)[0]
        if length > self.max_frame:
            available = len(buf) - n
            dropped = min(length, available)
            del buf[: n + dropped]
            self._skip = length - dropped
            return Oversized(self.max_frame)
        if len(buf) < n + length:
            return self._end_or(NEED_DATA, len(buf))
        payload = bytes(buf[n : n + length])
        del buf[: n + length]
        return payload

    def _end_or(self, event: object, pending: int) -> object:
        if not self._eof:
            return event
        if pending:
            self._buf.clear()
            self._skip = 0
            return TruncatedFrame(pending)
        return EOF


def encode_length_prefixed(payload: bytes, prefix_bytes: int) -> bytes:
    """Return ``payload`` preceded by its big-endian length in ``prefix_bytes`` bytes.

    Raises:
        FramingError: the payload is too long for the prefix.
    """
    if len(payload) >= 1 << (8 * prefix_bytes):
        raise FramingError(f"payload of {len(payload)} bytes does not fit a {prefix_bytes}-byte length")
    return len(payload).to_bytes(prefix_bytes, "big") + payload


class LineServerProtocol(Generic[E]):
    """A server's side of a line protocol, sans-IO: bytes in, parsed requests out.

    The SQL and names servers differ only in how a line parses and in what an
    over-long line becomes; this class is the rest, written once.

    Args:
        parse: turns one line (without its newline) into a request, or None
            to skip it (a blank line).
        oversized: builds the event for a line longer than ``max_line``
            (the server answers it with an error; the connection goes on).
        max_line: the longest line, in bytes.

    Error handling:
        A last line without its newline from a client that closed is dropped
        (:data:`EOF`): a client that left mid-request gets no answer.
    """

    def __init__(self, parse: Callable[[bytes], E | None], oversized: Callable[[int], E], max_line: int) -> None:
        self._framer = LineFramer(max_line)
        self._parse = parse
        self._oversized = oversized
        self.max_line = max_line

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` when it closed its side."""
        self._framer.receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed into requests."""
        return self._framer.buffered

    def next_event(self) -> E | object:
        """Return the next request (or the ``oversized`` event), NEED_DATA or EOF."""
        while True:
            event = self._framer.next_event()
            kind = type(event)  # one type test per line, not an isinstance chain (the per-request path)
            if kind is Frame:
                parsed = self._parse(event.payload)
                if parsed is None:
                    continue
                return parsed
            if kind is Oversized:
                return self._oversized(event.limit)
            if kind is TruncatedFrame:
                return EOF
            return event


class LineClientProtocol(Generic[E]):
    """A client's side of a line protocol, sans-IO: bytes in, parsed replies out.

    Args:
        parse: turns one reply line into an event; raises ``error`` when the
            line is not a reply.
        error: the protocol's "the server broke the protocol" exception.
        max_line: the longest reply line, in bytes.

    Error handling:
        An over-long line, or a server that closes in the middle of a line,
        raises ``error``: a client cannot skip part of an answer.
    """

    def __init__(self, parse: Callable[[bytes], E], error: type[Exception], max_line: int) -> None:
        self._framer = LineFramer(max_line)
        self._parse = parse
        self._error = error

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` when it closed."""
        self._framer.receive_data(data)

    def next_event(self) -> E | object:
        """Return the next reply, NEED_DATA or EOF."""
        line = next_line(self._framer, self._error)
        return line if line is NEED_DATA or line is EOF else self._parse(line)


def next_line(framer: LineFramer, error: type[Exception] = FramingError) -> bytes | object:
    """For a client reading a server's lines: the next non-blank line, NEED_DATA or EOF.

    Raises:
        error: a line was longer than the framer's limit, or the server
            closed in the middle of one (a client cannot skip part of an answer).
    """
    while True:
        event = framer.next_event()
        if isinstance(event, Frame):
            if event.payload.strip():
                return event.payload
            continue
        if isinstance(event, Oversized):
            raise error(f"reply line longer than {event.limit} bytes")
        if isinstance(event, TruncatedFrame):
            raise error("connection closed in the middle of a reply")
        return event


