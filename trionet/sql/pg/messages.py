"""PostgreSQL frontend/backend protocol v3 messages: frozen dataclasses, decoded and encoded.

Pure functions, no state: :func:`decode_startup` reads the untyped packets a
client sends first (StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest), :func:`decode_message` the typed ones after it (Query,
Parse, Bind, ...), and :func:`encode` builds any backend message. Layouts
follow the "Message Formats" section of PostgreSQL's protocol chapter.

Error handling: a body that does not match its layout raises
:class:`MessageError` (a protocol violation, SQLSTATE 08P01); nothing else
escapes the decoders, whatever the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "BIND_COMPLETE",
    "PARSE_COMPLETE",
    "READY_FOR_QUERY",
    "AuthenticationOk",
    "AuthenticationSasl",
    "AuthenticationSaslContinue",
    "AuthenticationSaslFinal",
    "BackendKeyData",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyInMessage",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "Flush",
    "FunctionCall",
    "GssEncRequest",
    "MessageError",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SslRequest",
    "StartupMessage",
    "Sync",
    "Terminate",
    "UnexpectedMessage",
    "command_complete",
    "data_row",
    "decode_message",
    "decode_sasl_initial",
    "decode_startup",
    "encode",
    "one_value_row",
]

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class MessageError(ValueError):
    """A message's body does not follow its layout (SQLSTATE 08P01)."""


# --- frontend messages -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first packet: protocol version and parameters (user, database, application_name, options...)."""

    major: int
    minor: int
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class SslRequest:
    """The client asks for TLS before its StartupMessage."""


@dataclass(frozen=True, slots=True)
class GssEncRequest:
    """The client asks for GSSAPI encryption before its StartupMessage."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a new connection: cancel what the connection with this key is running."""

    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class Query:
    """Simple query: one or more statements separated by semicolons."""

    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    """Prepare ``sql`` as statement ``name`` ('' is the unnamed one); ``param_oids`` may be 0 (unspecified)."""

    name: str
    sql: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """Make portal ``portal`` from statement ``statement`` with parameter values (None for NULL)."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe statement (``kind`` 'S') or portal ('P') ``name``."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Run portal ``portal``, returning at most ``max_rows`` rows (0: all)."""

    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close statement (``kind`` 'S') or portal ('P') ``name``."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    """End of an extended-query batch: commit an implicit transaction, answer ReadyForQuery."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Send what is pending now."""


@dataclass(frozen=True, slots=True)
class Terminate:
    """The client closes the session."""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The fast-path function call (not supported)."""


@dataclass(frozen=True, slots=True)
class CopyInMessage:
    """CopyData, CopyDone or CopyFail outside COPY mode: ignored, as PostgreSQL does."""

    type: str


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """A 'p' message: its body means what the authentication in progress asked for.

    For SASL the first one is a SASLInitialResponse (:func:`decode_sasl_initial`),
    the next ones SASLResponses (the body is the SASL data itself).
    """

    body: bytes


@dataclass(frozen=True, slots=True)
class UnexpectedMessage:
    """A message type a client may not send (or one this server does not know)."""

    type: str


# --- backend messages --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    pass


@dataclass(frozen=True, slots=True)
class AuthenticationSasl:
    """Authentication by SASL, with the mechanisms the server offers."""

    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthenticationSaslContinue:
    """A SASL challenge (SCRAM's server-first message)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationSaslFinal:
    """The SASL outcome (SCRAM's server-final message), sent before AuthenticationOk."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    minor: int
    unrecognized: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # 'I' idle, 'T' in a transaction block, 'E' in a failed one


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a RowDescription."""

    name: str
    type_oid: int
    type_size: int = -1
    format: int = 0
    table_oid: int = 0
    column: int = 0
    type_modifier: int = -1


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class DataRow:
    values: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    pass


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """An error: ``severity`` ERROR or FATAL, a SQLSTATE ``code``, a ``message``."""

    code: str
    message: str
    severity: str = "ERROR"
    detail: str | None = None
    hint: str | None = None
    position: int | None = None  # 1-based character of the statement where the error is


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    code: str
    message: str
    severity: str = "NOTICE"


@dataclass(frozen=True, slots=True)
class ParseComplete:
    pass


@dataclass(frozen=True, slots=True)
class BindComplete:
    pass


@dataclass(frozen=True, slots=True)
class CloseComplete:
    pass


@dataclass(frozen=True, slots=True)
class NoData:
    pass


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    pass


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...] = field(default_factory=tuple)


# --- decoding ----------------------------------------------------------------


class _Reader:
    """Reads a message body front to back; any overrun is a MessageError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise MessageError("message is shorter than its contents say")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def int16(self) -> int:
        return struct.unpack("!h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack("!i", self._take(4))[0]

    def byte(self) -> str:
        return chr(self._take(1)[0])

    def cstring(self) -> str:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise MessageError("a string is missing its terminating zero byte")
        raw = self._data[self._pos : end]
        self._pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError("a string is not valid UTF-8") from None

    def count(self) -> int:
        n = self.int16()
        if n < 0:
            raise MessageError("negative count")
        return n

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MessageError("message is longer than its contents")


def decode_startup(body: bytes) -> StartupMessage | SslRequest | GssEncRequest | CancelRequest:
    """Decode an untyped startup packet's body (everything after its length).

    Raises:
        MessageError: an unknown request code, an unsupported protocol
            version or a malformed parameter list.
    """
    r = _Reader(body)
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SslRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GssEncRequest()
    if code == CANCEL_REQUEST_CODE:
        pid, secret = r.int32(), r.int32()
        r.end()
        return CancelRequest(pid, secret)
    major, minor = (code >> 16) & 0xFFFF, code & 0xFFFF
    if major != 3:
        raise MessageError(f"unsupported frontend protocol {major}.{minor}: server supports 3.0")
    params: dict[str, str] = {}
    while True:
        name = r.cstring()
        if not name:
            break
        params[name] = r.cstring()
    r.end()
    return StartupMessage(major, minor, params)


_UNPACK_INT16 = struct.Struct("!h").unpack_from
_UNPACK_INT32 = struct.Struct("!i").unpack_from
_SYNC = Sync()
_FLUSH = Flush()


def _cstring_at(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise MessageError("a string is missing its terminating zero byte")
    try:
        return body[pos:end].decode("utf-8"), end + 1
    except UnicodeDecodeError:
        raise MessageError("a string is not valid UTF-8") from None


def _formats_at(body: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    (n,) = _UNPACK_INT16(body, pos)
    if n < 0:
        raise MessageError("negative count")
    codes = struct.unpack_from(f"!{n}h", body, pos + 2) if n else ()
    return codes, pos + 2 + 2 * n


_NO_CODES = ()
_TEXT_CODES = (0,)
_BINARY_CODES = (1,)


def _decode_bind(body: bytes) -> Bind:
    # Bind, Execute, Describe and Sync are a prepared statement's every
    # transaction. The shapes clients send (no format code or one, each 0
    # or 1; every length in range) are read here with few calls; anything
    # else, errors included, by _decode_bind_checked, which says what is wrong.
    try:
        end = body.index(0)
        portal = body[:end].decode("utf-8") if end else ""
        pos = end + 1
        end = body.index(0, pos)
        statement = body[pos:end].decode("utf-8")
        pos = end + 1
        (n,) = _UNPACK_INT16(body, pos)
        if n == 0:
            formats = _NO_CODES
        elif n == 1:
            code = body[pos + 3] if body[pos + 2] == 0 else -1
            formats = _TEXT_CODES if code == 0 else _BINARY_CODES if code == 1 else None
        else:
            formats = None
        if formats is None:
            return _decode_bind_checked(body)
        pos += 2 + 2 * n
        (n,) = _UNPACK_INT16(body, pos)
        pos += 2
        params = []
        size = len(body)
        for _ in range(n):
            (length,) = _UNPACK_INT32(body, pos)
            pos += 4
            if length < 0:
                if length != -1:
                    return _decode_bind_checked(body)
                params.append(None)
            else:
                end = pos + length
                if end > size:
                    return _decode_bind_checked(body)
                params.append(body[pos:end])
                pos = end
        (n,) = _UNPACK_INT16(body, pos)
        if n == 0:
            results = _NO_CODES
        elif n == 1 and body[pos + 2] == 0 and body[pos + 3] in (0, 1):
            results = _BINARY_CODES if body[pos + 3] else _TEXT_CODES
        else:
            return _decode_bind_checked(body)
        if pos + 2 + 2 * n != size:
            return _decode_bind_checked(body)
    except (ValueError, IndexError, struct.error):  # UnicodeDecodeError is a ValueError
        return _decode_bind_checked(body)
    return Bind(portal, statement, formats, tuple(params), results)


def _decode_bind_checked(body: bytes) -> Bind:
    """Bind read field by field, every count and length checked: the reference :func:`_decode_bind` follows."""
    portal, pos = _cstring_at(body, 0)
    statement, pos = _cstring_at(body, pos)
    try:
        formats, pos = _formats_at(body, pos)
        (n,) = _UNPACK_INT16(body, pos)
        if n < 0:
            raise MessageError("negative count")
        pos += 2
        params = []
        size = len(body)
        for _ in range(n):
            (length,) = _UNPACK_INT32(body, pos)
            pos += 4
            if length == -1:
                params.append(None)
                continue
            if length < 0 or pos + length > size:
                raise MessageError("message is shorter than its contents say")
            params.append(body[pos : pos + length])
            pos += length
        results, pos = _formats_at(body, pos)
    except struct.error:
        raise MessageError("message is shorter than its contents say") from None
    if pos != len(body):
        raise MessageError("message is longer than its contents")
    for f in formats:
        if f != 0 and f != 1:
            raise MessageError("a format code is neither 0 (text) nor 1 (binary)")
    for f in results:
        if f != 0 and f != 1:
            raise MessageError("a format code is neither 0 (text) nor 1 (binary)")
    return Bind(portal, statement, formats, tuple(params), results)


def _decode_execute(body: bytes) -> Execute:
    portal, pos = _cstring_at(body, 0)
    if len(body) - pos != 4:
        raise MessageError("message is shorter than its contents say" if len(body) - pos < 4 else "message is longer than its contents")
    return Execute(portal, _UNPACK_INT32(body, pos)[0])


def _decode_query(body: bytes) -> Query:
    # A simple Query is pgbench -M simple's every transaction: its one string read without a _Reader.
    sql, pos = _cstring_at(body, 0)
    if pos != len(body):
        raise MessageError("message is longer than its contents")
    return Query(sql)


def decode_message(kind: str, body: bytes):
    """Decode the body of a typed frontend message of type ``kind``.

    Raises:
        MessageError: the body does not match the layout of ``kind``.
    """
    if kind == "B":
        return _decode_bind(body)
    if kind == "Q":
        return _decode_query(body)
    if kind == "E":
        return _decode_execute(body)
    if kind == "S":
        if body:
            raise MessageError("message is longer than its contents")
        return _SYNC
    r = _Reader(body)
    if kind == "P":
        name, sql = r.cstring(), r.cstring()
        msg = Parse(name, sql, tuple(r.int32() & 0xFFFFFFFF for _ in range(r.count())))
    elif kind == "B":
        portal, statement = r.cstring(), r.cstring()
        formats = tuple(r.int16() for _ in range(r.count()))
        params = []
        for _ in range(r.count()):
            n = r.int32()
            params.append(None if n == -1 else r._take(n))
        results = tuple(r.int16() for _ in range(r.count()))
        if any(f not in (0, 1) for f in formats + results):
            raise MessageError("a format code is neither 0 (text) nor 1 (binary)")
        msg = Bind(portal, statement, formats, tuple(params), results)
    elif kind in "DC":
        which = r.byte()
        if which not in "SP":
            raise MessageError(f"invalid {'Describe' if kind == 'D' else 'Close'} target {which!r}")
        msg = (Describe if kind == "D" else Close)(which, r.cstring())
    elif kind == "E":
        msg = Execute(r.cstring(), r.int32())
    elif kind == "S":
        msg = Sync()
    elif kind == "H":
        msg = _FLUSH
    elif kind == "X":
        msg = Terminate()
    elif kind == "p":
        return PasswordMessage(body)
    elif kind == "F":
        return FunctionCall()
    elif kind in "dcf":
        return CopyInMessage(kind)
    else:
        return UnexpectedMessage(kind)
    r.end()
    return msg


def decode_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """The mechanism and the initial data of a SASLInitialResponse ('p') body.

    Raises:
        MessageError: the body does not follow the layout, or has no data.
    """
    r = _Reader(body)
    mechanism = r.cstring()
    n = r.int32()
    if n < 0:
        raise MessageError("SASLInitialResponse without its initial response")
    data = r._take(n)
    r.end()
    return mechanism, data


# --- encoding ----------------------------------------------------------------


def _cstr(text: str) -> bytes:
    # A zero byte would end the string early and desynchronise the client.
    return text.replace("\0", "").encode("utf-8") + b"\0"


def _typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _fields(
    code: str, message: str, severity: str, detail: str | None = None, hint: str | None = None, position: int | None = None
) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(code) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    if position:
        body += b"P" + _cstr(str(position))
    return body + b"\0"


_INT32 = struct.Struct("!i").pack
_DATA_ROW_HEAD = struct.Struct("!cih").pack


def data_row(values) -> bytes:
    """The bytes of ``DataRow(values)``: each value already encoded (bytes), or None for NULL."""
    parts = []
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_INT32(len(value)))
            parts.append(value)
    body = b"".join(parts)
    return _DATA_ROW_HEAD(b"D", len(body) + 6, len(values)) + body


ONE_VALUE_HEAD = struct.Struct("!cihi").pack
"""The head of a DataRow of one value that is not NULL: ``ONE_VALUE_HEAD(b"D", len(value) + 10, 1, len(value))``."""
_ONE_NULL_ROW = _DATA_ROW_HEAD(b"D", 10, 1) + b"\xff\xff\xff\xff"


def one_value_row(value: bytes | None) -> bytes:
    """The bytes of ``DataRow((value,))`` (what :func:`data_row` gives), without its loop: a point query's row."""
    if value is None:
        return _ONE_NULL_ROW
    return ONE_VALUE_HEAD(b"D", len(value) + 10, 1, len(value)) + value


def encode(msg) -> bytes:
    """Encode one backend message.

    Raises:
        TypeError: ``msg`` is not a backend message.
    """
    kind = type(msg)
    if kind is DataRow:
        return data_row(msg.values)
    if kind is CommandComplete:
        return _typed(b"C", _cstr(msg.tag))
    if kind is RowDescription:
        body = [struct.pack("!h", len(msg.fields))]
        for f in msg.fields:
            body.append(_cstr(f.name))
            body.append(struct.pack("!ihihih", f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format))
        return _typed(b"T", b"".join(body))
    if kind is ReadyForQuery:
        return _typed(b"Z", msg.status.encode("ascii"))
    if kind is ErrorResponse:
        return _typed(b"E", _fields(msg.code, msg.message, msg.severity, msg.detail, msg.hint, msg.position))
    if kind is NoticeResponse:
        return _typed(b"N", _fields(msg.code, msg.message, msg.severity))
    if kind is ParameterStatus:
        return _typed(b"S", _cstr(msg.name) + _cstr(msg.value))
    if kind is AuthenticationOk:
        return _typed(b"R", struct.pack("!i", 0))
    if kind is AuthenticationSasl:
        return _typed(b"R", struct.pack("!i", 10) + b"".join(_cstr(n) for n in msg.mechanisms) + b"\0")
    if kind is AuthenticationSaslContinue:
        return _typed(b"R", struct.pack("!i", 11) + msg.data)
    if kind is AuthenticationSaslFinal:
        return _typed(b"R", struct.pack("!i", 12) + msg.data)
    if kind is BackendKeyData:
        return _typed(b"K", struct.pack("!ii", msg.pid, msg.secret))
    if kind is NegotiateProtocolVersion:
        names = b"".join(_cstr(n) for n in msg.unrecognized)
        return _typed(b"v", struct.pack("!ii", (3 << 16) | msg.minor, len(msg.unrecognized)) + names)
    if kind is ParameterDescription:
        return _typed(b"t", struct.pack(f"!h{len(msg.type_oids)}I", len(msg.type_oids), *msg.type_oids))
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return simple
    raise TypeError(f"not a backend message: {msg!r}")


_SIMPLE = {
    EmptyQueryResponse: _typed(b"I", b""),
    ParseComplete: _typed(b"1", b""),
    BindComplete: _typed(b"2", b""),
    CloseComplete: _typed(b"3", b""),
    NoData: _typed(b"n", b""),
    PortalSuspended: _typed(b"s", b""),
}


# Pre-encoded answers of the hot path (:func:`encode` gives the same bytes).
PARSE_COMPLETE = _SIMPLE[ParseComplete]
BIND_COMPLETE = _SIMPLE[BindComplete]
READY_FOR_QUERY = {status: _typed(b"Z", status.encode("ascii")) for status in "ITE"}
"""ReadyForQuery's bytes by transaction status."""
_TAGS: dict[str, bytes] = {}
_TAGS_MAX = 1024


def command_complete(tag: str) -> bytes:
    """The bytes of ``CommandComplete(tag)``, remembered for tags seen before (``SELECT 1``...)."""
    data = _TAGS.get(tag)
    if data is None:
        data = _typed(b"C", _cstr(tag))
        if len(_TAGS) >= _TAGS_MAX:
            _TAGS.clear()
        _TAGS[tag] = data
    return data
