"""Sans-IO core of the trionet SQL protocol: request parsing, reply frames, value encoding.

The protocol is newline-delimited JSON over TCP (``docs/protocol/sql.md`` has
every message and the behaviour in every situation). This module never
touches a socket: the server feeds bytes to :class:`ServerProtocol` and gets
:class:`Request` or :class:`BadRequest` events; the client feeds bytes to
:class:`ClientProtocol` and gets reply events. Both are driven by hypothesis
in the tests.

Values keep SQLite's five storage classes: NULL, INTEGER and TEXT are JSON
null, integers and strings; REAL is a JSON number with a fraction or exponent
(``1.0``, never ``1``); BLOB is ``{"$blob": "<base64>"}``; and a REAL that JSON
cannot write (infinity) is ``{"$real": "Infinity"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from trionet.framing import LineClientProtocol, LineServerProtocol
from trionet.sql.errors import BYE_CODES, ERROR_CODES

__all__ = [
    "AuthChallenge",
    "AuthMessage",
    "AuthOk",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_PORT",
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "BadRequest",
    "Bye",
    "ClientProtocol",
    "Columns",
    "Done",
    "BYE_CODES",
    "ErrorReply",
    "Hello",
    "RemoteProtocolError",
    "Request",
    "Rows",
    "ServerProtocol",
    "decode_value",
    "encode_auth",
    "encode_auth_challenge",
    "encode_auth_ok",
    "encode_bye",
    "encode_columns",
    "encode_done",
    "encode_error",
    "encode_hello",
    "encode_request",
    "encode_result",
    "encode_rows",
    "encode_value",
]

PROTOCOL_VERSION = 1
DEFAULT_PORT = 7401
DEFAULT_MAX_REQUEST_BYTES = 1 << 20

class RemoteProtocolError(Exception):
    """The peer sent something that breaks the protocol; the connection cannot go on."""


# --- values -----------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """Return ``value`` (an SQLite result value) as a JSON-ready object."""
    if isinstance(value, bytes):
        return {"$blob": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$real": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    return value


def decode_value(value: Any) -> Any:
    """Return the Python value for a JSON value on the wire.

    Raises:
        ValueError: the value is not one of the protocol's encodings.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value  # bool is an int: True binds as 1, as in SQLite itself
    if isinstance(value, dict) and len(value) == 1:
        if "$blob" in value and isinstance(value["$blob"], str):
            try:
                return base64.b64decode(value["$blob"], validate=True)
            except binascii.Error:
                raise ValueError("$blob is not valid base64") from None
        if "$real" in value and value["$real"] in ("Infinity", "-Infinity", "NaN"):
            return float(value["$real"])
    raise ValueError(f"not a value of the protocol: {json.dumps(value)[:80]}")


# One encoder for every frame: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _dumps(obj: Any) -> bytes:
    return _encode(obj).encode() + b"\n"


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


# The per-request frames (columns, rows, done) are written from pre-encoded
# parts around json's C encoder, called directly: JSONEncoder.encode builds a
# new C encoder object (and a dict for its cycle check) on every call, which
# cost more than encoding a point query's row (docs/benchmarks.md). Result
# rows are flat tuples of scalars, so they need no cycle check. The bytes are
# the same as _dumps gives (the tests compare them).
_encode_rows_c = (
    json.encoder.c_make_encoder(None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    if json.encoder.c_make_encoder is not None  # None: an interpreter without the C accelerator
    else None
)


def _json_id(req_id: Any) -> str:
    """``req_id`` as JSON (an int, a string or null: what the request parser lets through)."""
    if type(req_id) is int:
        return str(req_id)
    if req_id is None:
        return "null"
    return _encode(req_id)


def _json_rows(rows: list[tuple]) -> str:
    """``rows`` as a JSON array of arrays, each value in the protocol's encoding (:func:`encode_value`)."""
    try:
        if _encode_rows_c is not None:
            return "".join(_encode_rows_c(rows, 0))
        return _encode(rows)
    except (TypeError, ValueError):  # a BLOB or a non-finite REAL: take the slow path
        return _encode([[encode_value(v) for v in row] for row in rows])


# --- requests (client -> server) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One statement to run.

    ``params`` is a tuple (positional ``?``), a dict (named ``:name``) or
    None; ``bare`` is true for a plain SQL line typed by a person.
    """

    id: str | int | None
    sql: str
    params: tuple | dict | None = None
    max_rows: int | None = None
    bare: bool = False


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A line that is not a valid request; the server answers it with an error frame."""

    id: str | int | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """A client's step of the authentication in the hello exchange: ``{"type": "auth", ...}``.

    ``mechanism`` is set in the first one only (``"SCRAM-SHA-256"``);
    ``data`` is the SASL message (SCRAM's client-first, then client-final).
    """

    mechanism: str | None
    data: str


_REQUEST_FIELDS = frozenset({"id", "sql", "params", "max_rows"})
_PLAIN = frozenset({str, int, float, bool, type(None)})  # what decode_value returns as it is

# json.loads's scanner without its wrapper (type checks, a regex for the
# whitespace around the value): the request line is already stripped.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())
_AUTH_FIELDS = frozenset({"type", "mechanism", "data"})


def _parse_auth(obj: dict) -> AuthMessage | BadRequest:
    unknown = sorted(set(obj) - _AUTH_FIELDS)
    if unknown:
        return BadRequest(None, "bad_request", f"unknown field(s) in an auth message: {', '.join(unknown)}")
    mechanism, data = obj.get("mechanism"), obj.get("data")
    if not isinstance(data, str) or not (mechanism is None or isinstance(mechanism, str)):
        return BadRequest(None, "bad_request", "an auth message has a string 'data' and, first, a 'mechanism'")
    return AuthMessage(mechanism, data)


def parse_request(line: bytes) -> Request | BadRequest | AuthMessage | None:
    """Parse one request line (without its newline); None for a blank line.

    An ``{"type": "auth", ...}`` object is an :class:`AuthMessage` (the
    hello exchange's authentication); the server decides whether one is
    expected.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRequest(None, "bad_request", f"request is not valid UTF-8 (byte {exc.start})")
    stripped = text.strip()
    if not stripped:
        return None
    if not stripped.startswith("{"):
        return Request(id=None, sql=stripped, bare=True)
    try:
        obj, end = _scan_json(stripped, 0)
        if end != len(stripped):
            raise ValueError("extra data")  # json.loads below says where
    except (StopIteration, ValueError):
        # The error (or an extra-data line) the slow way, for json's own message.
        obj = None
    except RecursionError:
        return BadRequest(None, "bad_request", "invalid JSON: nested too deeply")
    if obj is None:
        try:
            obj = json.loads(stripped)
        except RecursionError:
            return BadRequest(None, "bad_request", "invalid JSON: nested too deeply")
        except ValueError as exc:
            # JSONDecodeError, and the plain ValueError of an integer literal
            # longer than sys.get_int_max_str_digits() (4300 digits by default).
            return BadRequest(None, "bad_request", f"invalid JSON: {str(exc)[:200]}")
    if not isinstance(obj, dict):
        return BadRequest(None, "bad_request", "a JSON request must be an object")
    if "\\u" in stripped and _has_lone_surrogate(obj):
        # "\ud800" is valid JSON but no UTF-8 string: SQLite could not take it,
        # and the id could not be echoed.
        return BadRequest(None, "bad_request", "a string holds a lone surrogate (\\ud800-\\udfff): not Unicode text")
    # json gives exact types (a bool is a bool, never an int): type tests suffice.
    req_id = obj.get("id")
    if req_id is not None and type(req_id) is not int and type(req_id) is not str:
        return BadRequest(None, "bad_request", "'id' must be a string, an integer or null")
    if not _REQUEST_FIELDS.issuperset(obj):
        if obj.get("type") == "auth":  # checked only here: no cost to a request
            return _parse_auth(obj)
        unknown = sorted(set(obj) - _REQUEST_FIELDS)
        return BadRequest(req_id, "bad_request", f"unknown field(s): {', '.join(unknown)}")
    sql = obj.get("sql")
    if type(sql) is not str or not sql or sql.isspace():
        return BadRequest(req_id, "bad_request", "'sql' must be a non-empty string")
    max_rows = obj.get("max_rows")
    if max_rows is not None and (type(max_rows) is not int or max_rows < 0):
        return BadRequest(req_id, "bad_request", "'max_rows' must be a non-negative integer")
    raw_params = obj.get("params")
    try:
        if raw_params is None:
            params = None
        elif type(raw_params) is list:
            params = tuple(raw_params)
            for value in params:
                if type(value) not in _PLAIN:  # a $blob or $real, or not a value: decode them all
                    params = tuple(decode_value(v) for v in raw_params)
                    break
        elif type(raw_params) is dict:
            params = {}
            for key, value in raw_params.items():
                params[key.lstrip(":@$")] = decode_value(value)
        else:
            return BadRequest(req_id, "bad_request", "'params' must be an array or an object")
    except ValueError as exc:
        return BadRequest(req_id, "bad_param", str(exc))
    request = _new_request(Request)
    _set_id(request, req_id)
    _set_sql(request, sql)
    _set_params(request, params)
    _set_max_rows(request, max_rows)
    _set_bare(request, False)
    return request


# A frozen dataclass's __init__ sets each field through object.__setattr__;
# the request parser sets the slots directly, in half the time (the same
# object: Request's __init__ has nothing else to do).
_new_request = object.__new__
_set_id, _set_sql, _set_params, _set_max_rows, _set_bare = (
    Request.__dict__[name].__set__ for name in ("id", "sql", "params", "max_rows", "bare")
)


_encode_any = json.JSONEncoder(ensure_ascii=False, allow_nan=True).encode


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        _encode_any(obj).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode_auth(data: str, mechanism: str | None = None) -> bytes:
    """A client's authentication step (``mechanism`` in the first one only)."""
    obj: dict[str, Any] = {"type": "auth"}
    if mechanism is not None:
        obj["mechanism"] = mechanism
    obj["data"] = data
    return _dumps(obj)


def encode_request(
    sql: str, params: list | tuple | dict | None = None, *, id: str | int | None = None, max_rows: int | None = None
) -> bytes:
    """Return the request line for ``sql`` with ``params``."""
    obj: dict[str, Any] = {"id": id, "sql": sql}
    if params is not None:
        if isinstance(params, dict):
            obj["params"] = {k: encode_value(v) for k, v in params.items()}
        else:
            obj["params"] = [encode_value(v) for v in params]
    if max_rows is not None:
        obj["max_rows"] = max_rows
    return _dumps(obj)


def _too_large(limit: int) -> BadRequest:
    return BadRequest(None, "request_too_large", f"request longer than {limit} bytes; it was skipped")


class ServerProtocol(LineServerProtocol[Request | BadRequest | AuthMessage]):
    """The server's side of one connection: bytes in, :class:`Request` or :class:`BadRequest` out.

    Args:
        max_request_bytes: the longest request line accepted; a longer one
            becomes a ``request_too_large`` :class:`BadRequest`.
    """

    def __init__(self, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        super().__init__(parse_request, _too_large, max_request_bytes)
        self.max_request_bytes = max_request_bytes


# --- replies (server -> client) ------------------------------------------------


def encode_hello(
    *,
    read_only: bool,
    max_rows: int,
    max_request_bytes: int,
    query_timeout: float,
    idle_timeout: float | None = None,
    idle_transaction_timeout: float | None = None,
    auth: list[str] | None = None,
) -> bytes:
    """The greeting the server sends as soon as a client connects.

    ``auth`` lists the mechanisms the client must authenticate with before
    its first request (``["SCRAM-SHA-256"]`` with ``--users``); None when the
    server trusts its clients.
    """
    hello = {
        "type": "hello",
        "server": "trionet-sql",
        "protocol": PROTOCOL_VERSION,
        "read_only": read_only,
        "max_rows": max_rows,
        "max_request_bytes": max_request_bytes,
        "query_timeout": query_timeout,
    }
    if idle_timeout is not None:
        hello["idle_timeout"] = idle_timeout
    if idle_transaction_timeout is not None:
        hello["idle_transaction_timeout"] = idle_transaction_timeout
    if auth:
        hello["auth"] = list(auth)
    return _dumps(hello)


def encode_auth_challenge(data: str) -> bytes:
    """The server's next authentication step (SCRAM's server-first message)."""
    return _dumps({"type": "auth", "data": data})


def encode_auth_ok(data: str) -> bytes:
    """Authentication succeeded; ``data`` is SCRAM's server-final message (the server's proof)."""
    return _dumps({"type": "auth_ok", "data": data})


_COLUMNS_TAILS: dict[tuple, str] = {}
_COLUMNS_CACHE = 256


# The last shape asked for, before the dict: a list compared with a list
# costs less than a tuple of fresh names (sqlite3 makes new ones for each
# statement) hashed and then compared.
_last_columns: tuple[list[str], str] = ([], ',"type":"columns","columns":[]}\n')


def _columns_tail(columns: list[str]) -> str:
    """The ``columns`` frame after its id (the same few shapes come back: they are kept, at most 256)."""
    global _last_columns
    last = _last_columns
    if columns == last[0]:
        return last[1]
    key = tuple(columns)
    tail = _COLUMNS_TAILS.get(key)
    if tail is None:
        tail = ',"type":"columns","columns":' + _encode(columns) + "}\n"
        if len(_COLUMNS_TAILS) >= _COLUMNS_CACHE:
            _COLUMNS_TAILS.clear()  # a bound, not an LRU: the same few shapes come back
        _COLUMNS_TAILS[key] = tail
    _last_columns = (list(key), tail)  # a copy: the caller's list may change
    return tail


# The frames below are built as one str with an f-string and encoded once:
# fewer objects than joining pre-encoded bytes. The tests compare their
# bytes with json.dumps's.


def encode_columns(req_id: Any, columns: list[str]) -> bytes:
    """The first frame of a result: the column names (empty for a statement with no result)."""
    return f'{{"id":{_json_id(req_id)}{_columns_tail(columns)}'.encode()


def encode_rows(req_id: Any, rows: list[tuple]) -> bytes:
    """One batch of result rows."""
    return f'{{"id":{_json_id(req_id)},"type":"rows","rows":{_json_rows(rows)}}}\n'.encode()


def encode_result(req_id: Any, columns: list[str], rows: list[tuple]) -> bytes:
    """A result's ``columns`` frame, then its ``rows`` frame when ``rows`` is not empty.

    The same bytes as :func:`encode_columns` followed by :func:`encode_rows`,
    in one piece: for an answer whose rows come in one batch.
    """
    req = _json_id(req_id)
    if not rows:
        return f'{{"id":{req}{_columns_tail(columns)}'.encode()
    return f'{{"id":{req}{_columns_tail(columns)}{{"id":{req},"type":"rows","rows":{_json_rows(rows)}}}\n'.encode()


def encode_done(
    req_id: Any, *, rows: int, truncated: bool, changes: int, last_insert_rowid: int | None, elapsed_ms: float
) -> bytes:
    """The last frame of a successful result."""
    return (
        f'{{"id":{_json_id(req_id)},"type":"done","rows":{rows},"truncated":{"true" if truncated else "false"},'
        f'"changes":{changes},"last_insert_rowid":{"null" if last_insert_rowid is None else last_insert_rowid},'
        f'"ms":{_json_ms(elapsed_ms)}}}\n'
    ).encode()


def _json_ms(ms: float) -> str:
    """``repr(round(ms, 3))``, the done frame's ``ms``, in two thirds of the time for the values it has.

    ``.3f`` rounds as ``round`` does (both take the correctly rounded
    decimal digits of the same dtoa call), and below 1e12 that decimal has
    at most 15 significant digits, so no shorter text names its float: it
    is what ``repr`` writes, once its trailing zeros go.
    """
    if 0.0 <= ms < 1e12:
        text = f"{ms:.3f}"
        text = text.rstrip("0")
        return text + "0" if text[-1] == "." else text
    return repr(round(ms, 3))


def encode_error(req_id: Any, code: str, message: str) -> bytes:
    """The last frame of a failed request (it may follow ``columns`` and ``rows``)."""
    return _dumps({"id": req_id, "type": "error", "code": code, "message": message})


def encode_bye(reason: str, code: str = "shutdown") -> bytes:
    """Sent before the server closes a connection on its own; ``code`` is one of :data:`BYE_CODES`."""
    return _dumps({"type": "bye", "code": code, "reason": reason})


# --- the client's side -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    server: str
    protocol: int
    read_only: bool
    max_rows: int
    max_request_bytes: int
    query_timeout: float
    idle_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    auth: tuple[str, ...] = ()
    """Mechanisms the server asks the client to authenticate with; empty when it trusts clients."""


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """The server's authentication step (SCRAM's server-first message)."""

    data: str


@dataclass(frozen=True, slots=True)
class AuthOk:
    """Authenticated; ``data`` is SCRAM's server-final message, for the client to check."""

    data: str


@dataclass(frozen=True, slots=True)
class Columns:
    id: Any
    columns: list[str]


@dataclass(frozen=True, slots=True)
class Rows:
    id: Any
    rows: list[tuple]


@dataclass(frozen=True, slots=True)
class Done:
    id: Any
    rows: int
    truncated: bool
    changes: int
    last_insert_rowid: int | None
    ms: float


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: Any
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str
    code: str | None = None  # one of BYE_CODES; None from a server older than the code


class ClientProtocol(LineClientProtocol[Hello | AuthChallenge | AuthOk | Columns | Rows | Done | ErrorReply | Bye]):
    """The client's side of one connection: bytes in, reply events out.

    Raises :class:`RemoteProtocolError` when a line is not a reply frame.
    """

    def __init__(self, max_line: int = 64 << 20) -> None:
        super().__init__(parse_reply, RemoteProtocolError, max_line)


def _decode_rows(rows: Any) -> list[tuple]:
    if not isinstance(rows, list):
        raise ValueError("rows must be an array")
    out = []
    for row in rows:
        if not isinstance(row, list):
            raise ValueError("each row must be an array")
        out.append(tuple(v if not isinstance(v, dict) else decode_value(v) for v in row))
    return out


def parse_reply(line: bytes) -> Hello | AuthChallenge | AuthOk | Columns | Rows | Done | ErrorReply | Bye:
    """Parse one reply line from the server.

    Raises:
        RemoteProtocolError: the line is not a reply frame.
    """
    try:
        obj = json.loads(line)
        kind = obj["type"]
        if kind == "rows":
            return Rows(obj["id"], _decode_rows(obj["rows"]))
        if kind == "columns":
            return Columns(obj["id"], list(obj["columns"]))
        if kind == "done":
            return Done(
                obj["id"], obj["rows"], obj["truncated"], obj["changes"], obj["last_insert_rowid"], obj["ms"]
            )
        if kind == "error":
            return ErrorReply(obj.get("id"), obj["code"], obj["message"])
        if kind == "hello":
            return Hello(
                obj["server"],
                obj["protocol"],
                obj["read_only"],
                obj["max_rows"],
                obj["max_request_bytes"],
                obj["query_timeout"],
                obj.get("idle_timeout"),
                obj.get("idle_transaction_timeout"),
                tuple(str(a) for a in obj.get("auth") or ()),
            )
        if kind == "auth":
            return AuthChallenge(str(obj["data"]))
        if kind == "auth_ok":
            return AuthOk(str(obj["data"]))
        if kind == "bye":
            return Bye(obj["reason"], obj.get("code"))
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteProtocolError(f"not a reply frame: {line[:100]!r} ({exc})") from None
    raise RemoteProtocolError(f"unknown frame type {kind!r}")
