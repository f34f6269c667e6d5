"""The sans-IO core of the PostgreSQL front: bytes in, frontend messages out, backend messages to bytes.

:class:`PgServerProtocol` has h11's shape: :meth:`~PgServerProtocol.receive_data`
takes what the socket gave (``b""`` at end of stream),
:meth:`~PgServerProtocol.next_event` returns the next message (a dataclass of
:mod:`trionet.sql.pg.messages`), :data:`~trionet.framing.NEED_DATA`,
:data:`~trionet.framing.EOF` or a :class:`ProtocolViolation`, and
:meth:`~PgServerProtocol.send` turns a backend message into bytes.

Everything that changes the connection's protocol state lives here:

- the *startup* phase reads untyped packets (an SSLRequest is answered
  ``S`` when the server has TLS, then the phase goes on inside TLS; it and a
  GSSENCRequest are otherwise refused with ``N``; a StartupMessage ends it;
  a CancelRequest is the connection's only message);
- sending an AuthenticationSASL starts the *auth* phase, where only
  password ('p') messages are valid; sending AuthenticationOk ends it;
- after an error in the extended query protocol every message up to the
  next Sync is skipped, as PostgreSQL does (the rule is triggered by
  sending the ErrorResponse);
- every message is bounded: a length field under 4 (8 at startup) or over
  ``max_message_bytes`` is a fatal :class:`ProtocolViolation`, announced
  before the body is buffered, so the buffer never holds more than one
  message plus one read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from trionet.framing import EOF, NEED_DATA
from trionet.sql.pg import messages as m

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_STARTUP_BYTES",
    "EncryptionAccepted",
    "EncryptionRefused",
    "PgServerProtocol",
    "PortalRun",
    "ProtocolViolation",
]

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""The largest frontend message accepted (``--pg-max-message-bytes``); PostgreSQL's own limit is 1 GB."""
MAX_STARTUP_BYTES = 10_000
"""The largest startup packet, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH."""

_UNPACK_LENGTH = struct.Struct("!i").unpack_from
_EXTENDED = frozenset((m.Parse, m.Bind, m.Describe, m.Execute, m.Close, m.Flush))


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol; answer FATAL 08P01 with ``message`` and close."""

    message: str


_ENDING = frozenset((ProtocolViolation, m.CancelRequest, m.Terminate))  # the connection is over


class PortalRun(NamedTuple):
    """An unnamed portal's whole round trip, read at once: [Parse] Bind [Describe portal] Execute Sync.

    What ``pgbench -M prepared`` (and libpq's ``PQexecPrepared``) sends for
    every transaction, and ``-M extended`` (``PQexecParams``) with the Parse
    of the unnamed statement. Returned by :meth:`PgServerProtocol.next_event`
    only when the protocol was made with ``coalesce=True``, all of it is in
    the buffer, every part decodes, the portal is the unnamed one, and so
    is the statement when the run holds its Parse; the executor may answer it
    in one step, or take it apart with :meth:`PgServerProtocol.expand`.

    The Bind is held as its parts, not as a :class:`~trionet.sql.pg.messages.Bind`
    (its portal is always ""): the fast path reads the parts, and a named
    tuple is made in a fraction of a frozen dataclass's time (two frozen
    dataclasses were a tenth of ``core-prepared``'s CPU).
    """

    parse: m.Parse | None
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]
    describe: bool
    execute: m.Execute

    @property
    def bind(self) -> m.Bind:
        """The run's Bind message."""
        return m.Bind("", self.statement, self.param_formats, self.params, self.result_formats)

    @property
    def count(self) -> int:
        """How many frontend messages it stands for."""
        return 3 + (self.parse is not None) + self.describe

    def messages(self) -> list:
        """The frontend messages, in the order they came."""
        parts = [self.parse] if self.parse is not None else []
        parts.append(self.bind)
        if self.describe:
            parts.append(m.Describe("P", ""))
        return parts + [self.execute, m.decode_message("S", b"")]


_new_run = tuple.__new__  # PortalRun(...) without NamedTuple's __new__ in Python: PortalRun's fields in order


# Message type sequences a PortalRun is made of (the type bytes, Sync last).
_RUN_SHAPES = frozenset((b"BES", b"BDES", b"PBES", b"PBDES"))
_RUN_FIRST = frozenset(b"PB")
_SYNC_TYPE = ord("S")
_PARSE_TYPE = ord("P")
_BIND_TYPE = ord("B")
# What libpq's PQexecPrepared sends after its Bind (Describe portal "", Execute "" of all rows, Sync),
# and the same without the Describe: pgbench -M prepared's every transaction ends with one of them.
_DESCRIBE_EXECUTE_SYNC = b"D\0\0\0\x06P\0" b"E\0\0\0\x09\0\0\0\0\0" b"S\0\0\0\x04"
_EXECUTE_SYNC = _DESCRIBE_EXECUTE_SYNC[7:]
_DESCRIBED_TAIL, _UNDESCRIBED_TAIL = len(_DESCRIBE_EXECUTE_SYNC), len(_EXECUTE_SYNC)
_EXECUTE_ALL = m.Execute("", 0)


@dataclass(frozen=True, slots=True)
class EncryptionRefused:
    """The one-byte ``N`` answer to an SSLRequest or GSSENCRequest."""


@dataclass(frozen=True, slots=True)
class EncryptionAccepted:
    """The one-byte ``S`` answer to an SSLRequest: the TLS handshake comes next."""


class PgServerProtocol:
    """The server side of one PostgreSQL connection, without I/O.

    Args:
        max_message_bytes: the largest typed message accepted, length field included.
    """

    def __init__(
        self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *, coalesce: bool = False, started: bool = False
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.coalesce = coalesce
        """Return a :class:`PortalRun` for a whole unnamed-portal round trip found in the buffer."""
        self._buf = bytearray()
        self._eof = False
        # startup -> [auth ->] ready -> closed; ``started``: a connection
        # another worker started up, moved here between two messages.
        self._phase = "ready" if started else "startup"
        self._encrypted = False
        self._extended = False  # the last message was part of an extended-query batch
        self._skipping = False  # an extended-query error happened: skip to Sync
        self._bind_memo: tuple | None = None  # the last one-value Bind of a libpq run, as _bind_parts made it

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._buf)

    @property
    def at_rest(self) -> bool:
        """True between two exchanges: started up, nothing buffered, no extended-query batch open before its Sync."""
        return self._phase == "ready" and not self._buf and not self._extended and not self._skipping and not self._eof

    @property
    def in_startup(self) -> bool:
        """True until the StartupMessage was read."""
        return self._phase == "startup"

    @property
    def in_auth(self) -> bool:
        """True between AuthenticationSASL and AuthenticationOk."""
        return self._phase == "auth"

    def accept_encryption(self) -> bytes | ProtocolViolation:
        """Answer the SSLRequest just read with ``S`` (the caller then does the TLS handshake).

        Returns:
            The answer's bytes, or a :class:`ProtocolViolation` (and the
            connection is over) when the client sent bytes after its
            SSLRequest without waiting for the answer: they would be read as
            if they had come through TLS (CVE-2021-23214), or when it asks a
            second time.
        """
        if self._buf or self._encrypted or self._phase != "startup":
            self._close()
            return ProtocolViolation("received unencrypted data after SSL request")
        self._encrypted = True
        return b"S"

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means it closed its side."""
        if data:
            if not self._eof and self._phase != "closed":
                self._buf += data
        else:
            self._eof = True

    def next_event(self):
        """Return the next message, ``NEED_DATA``, ``EOF`` or a :class:`ProtocolViolation`.

        After a ``ProtocolViolation``, a ``CancelRequest`` or ``Terminate``
        the connection is over: every later call returns ``EOF``.
        """
        while True:
            if not self._buf and not self._eof and self._phase != "closed":
                return NEED_DATA  # (every read ends so: the ready loop asks once more after its last message)
            phase = self._phase
            if phase == "closed":
                return EOF
            if self.coalesce and phase == "ready" and not self._skipping and self._buf and self._buf[0] in _RUN_FIRST:
                run = self._portal_run()
                if run is not None:
                    self._extended = False  # it ends with its Sync
                    return run
            event = self._startup_event() if phase == "startup" else self._typed_event()
            if event is NEED_DATA:
                return NEED_DATA
            kind = type(event)
            if kind in _ENDING:
                self._close()
                return event
            if event is EOF:
                self._close()
                return EOF
            if self._skipping:
                if kind is not m.Sync:
                    continue  # discarded, as PostgreSQL does after an extended-query error
                self._skipping = False
            if kind is m.StartupMessage:
                self._phase = "ready"
            elif phase == "auth":
                if kind is not m.PasswordMessage:
                    self._close()
                    return ProtocolViolation(f"expected a password response, got message type {_type_name(event)}")
            elif kind is m.PasswordMessage:
                event = m.UnexpectedMessage("p")
            self._extended = kind in _EXTENDED
            return event

    def expand(self, run: PortalRun):
        """Yield the messages of ``run`` as :meth:`next_event` would have returned them one by one.

        The rule after an extended-query error holds inside the run too: once
        an ErrorResponse was sent for one of its messages, the rest up to its
        Sync are skipped. The caller handles each message before taking the next.
        """
        for event in run.messages():
            kind = type(event)
            if self._skipping:
                if kind is not m.Sync:
                    continue
                self._skipping = False
            self._extended = kind in _EXTENDED
            yield event

    def send(self, msg) -> bytes:
        """Return the bytes of backend message ``msg`` (or of an :class:`EncryptionRefused`).

        Sending an :class:`~trionet.sql.pg.messages.ErrorResponse` in the
        middle of an extended-query batch makes :meth:`next_event` skip to
        the next Sync.
        """
        if isinstance(msg, EncryptionRefused):
            return b"N"
        if isinstance(msg, m.AuthenticationSasl) and self._phase == "ready":
            self._phase = "auth"
        elif isinstance(msg, m.AuthenticationOk) and self._phase == "auth":
            self._phase = "ready"
        if isinstance(msg, m.ErrorResponse) and self._extended:
            self._skipping = True
        return m.encode(msg)

    # --- framing ---------------------------------------------------------------

    def _close(self) -> None:
        self._phase = "closed"
        self._buf.clear()

    def _startup_event(self):
        buf = self._buf
        if len(buf) < 4:
            return EOF if self._eof else NEED_DATA
        (length,) = struct.unpack_from("!i", buf)
        if length < 8 or length > MAX_STARTUP_BYTES:
            return ProtocolViolation(f"invalid startup packet length {length}")
        if len(buf) < length:
            return EOF if self._eof else NEED_DATA
        body = bytes(buf[4:length])
        del buf[:length]
        try:
            return m.decode_startup(body)
        except m.MessageError as exc:
            return ProtocolViolation(str(exc))

    def _portal_run(self) -> PortalRun | None:
        # Only the framing is read first (type bytes and lengths): a buffer
        # holding anything but a whole run is left to _typed_event, which
        # reports any violation in order.
        buf = self._buf
        size = len(buf)
        memo = self._bind_memo
        if memo is not None and size >= memo[1] and buf[0] == _BIND_TYPE:
            # The same statement, formats and result formats as the last
            # such Bind (one value), then libpq's constant tail: its bytes are
            # the last Bind's but for the value (and the two lengths that
            # count it). One unpack reads the Bind's length, the bytes up to
            # the value's length and that length; one comparison the rest.
            unpack, start, head, foot_size, ends, statement, formats, results = memo
            length, seen, value_size = unpack(buf, 1)
            stop = start + value_size
            if seen == head and value_size >= 0 and length == stop + foot_size - 1 <= self.max_message_bytes:
                described, foot = ends.get(size - stop, _NO_END)
                if foot is not None and buf.endswith(foot):
                    value = bytes(buf[start:stop])
                    buf.clear()
                    return _new_run(PortalRun, (None, statement, formats, (value,), results, described, _EXECUTE_ALL))
        if buf[0] == _BIND_TYPE and size > 5:
            # The buffer is one Bind and the constant tail that libpq sends
            # after it: compared as bytes, no walk over the messages.
            (length,) = _UNPACK_LENGTH(buf, 1)
            end = 1 + length
            tail = size - end
            if 4 <= length <= self.max_message_bytes and (
                (tail == _DESCRIBED_TAIL and buf.endswith(_DESCRIBE_EXECUTE_SYNC))
                or (tail == _UNDESCRIBED_TAIL and buf.endswith(_EXECUTE_SYNC))
            ):
                described = tail == _DESCRIBED_TAIL
                body = bytes(buf[5:end])
                try:
                    bind = m.decode_message("B", body)
                except m.MessageError:
                    return None
                if bind.portal:
                    return None
                params = bind.params
                if len(params) == 1 and params[0] is not None:
                    self._bind_memo = _bind_parts(body, bind)
                buf.clear()
                return _new_run(
                    PortalRun, (None, bind.statement, bind.param_formats, params, bind.result_formats, described, _EXECUTE_ALL)
                )
        pos = 0
        spans = []
        kinds = bytearray()
        while True:
            if size - pos < 5 or len(kinds) == 5:
                return None
            kind = buf[pos]
            (length,) = _UNPACK_LENGTH(buf, pos + 1)
            end = pos + 1 + length
            if length < 4 or length > self.max_message_bytes or end > size:
                return None
            kinds.append(kind)
            spans.append((pos + 5, end))
            pos = end
            if kind == _SYNC_TYPE:
                break
        shape = bytes(kinds)
        if shape not in _RUN_SHAPES:
            return None
        # Describe, Execute and Sync of the unnamed portal have one layout
        # each: compared as bytes (anything else is left to _typed_event).
        if len(shape) - (shape[0] == _PARSE_TYPE) == 4 and buf[spans[-3][0] : spans[-3][1]] != b"P\0":
            return None
        start, end = spans[-2]
        if end - start != 5 or buf[start] != 0 or spans[-1][0] != spans[-1][1]:
            return None
        try:
            parse = m.decode_message("P", bytes(buf[slice(*spans[0])])) if shape[0] == _PARSE_TYPE else None
            bind = m.decode_message("B", bytes(buf[slice(*spans[parse is not None])]))
        except m.MessageError:
            return None
        if bind.portal or (parse is not None and (parse.name or bind.statement)):
            return None
        execute = m.Execute("", _UNPACK_LENGTH(buf, start + 1)[0])
        describe = len(shape) - (parse is not None) == 4
        del buf[:pos]
        return PortalRun(parse, bind.statement, bind.param_formats, bind.params, bind.result_formats, describe, execute)

    def _typed_event(self):
        buf = self._buf
        if len(buf) < 5:
            return EOF if self._eof else NEED_DATA
        kind = chr(buf[0])
        (length,) = _UNPACK_LENGTH(buf, 1)
        if length < 4:
            return ProtocolViolation(f"invalid message length {length}")
        if length > self.max_message_bytes:
            return ProtocolViolation(
                f"message of {length} bytes is longer than the server's limit of {self.max_message_bytes} bytes"
            )
        if len(buf) < length + 1:
            return EOF if self._eof else NEED_DATA
        body = bytes(buf[5 : length + 1])
        del buf[: length + 1]
        try:
            return m.decode_message(kind, body)
        except m.MessageError as exc:
            return ProtocolViolation(f"invalid {kind!r} message: {exc}")


def _bind_parts(body: bytes, bind: m.Bind) -> tuple:
    """What a Bind of the unnamed portal with one value (not NULL) shares with the next ones of its statement.

    Its bytes before the value's length (portal, statement, format codes,
    the count 1) and a :class:`struct.Struct` unpack that reads, from a
    buffer's second byte, the Bind's length, those bytes and the value's
    length; where the value starts (type byte and length included); the
    size of its bytes after the value (the result format codes); those
    bytes followed by each tail libpq sends (Describe, Execute, Sync or
    Execute, Sync), by the tail's size with whether it describes; and what
    they decoded to. A buffer that has the head, a value of the length its
    length field says, one of the ends and the Bind length that counts
    them decodes to the same Bind, the value aside, and that tail.
    """
    head = body.index(0, 1) + 5 + 2 * len(bind.param_formats)  # two zero bytes end portal "" and the statement
    foot_size = 2 + 2 * len(bind.result_formats)
    foot = body[len(body) - foot_size :]
    ends = {
        foot_size + _DESCRIBED_TAIL: (True, foot + _DESCRIBE_EXECUTE_SYNC),
        foot_size + _UNDESCRIBED_TAIL: (False, foot + _EXECUTE_SYNC),
    }
    unpack = struct.Struct(f"!i{head}si").unpack_from
    return (unpack, 9 + head, body[:head], foot_size, ends, bind.statement, bind.param_formats, bind.result_formats)


_NO_END = (False, None)


def _type_name(event) -> str:
    return repr(event.type) if isinstance(event, m.UnexpectedMessage) else type(event).__name__
