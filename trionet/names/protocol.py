"""Sans-IO core of the names line protocol: request parsing, reply lines, the client's parser.

One request per line, one reply line per request (``docs/protocol/names.md``
has the whole protocol, with a session typed into ``nc``)::

    www.example.com            ->  ok www.example.com A 3600 dns 93.184.216.34
    www.example.com AAAA       ->  nodata www.example.com AAAA 0 hosts www.example.com has no AAAA record
    10.0.0.1                   ->  ok 10.0.0.1 PTR 0 hosts gateway.lan.
    quit                       ->  bye quit goodbye

Every reply line is ``STATUS NAME TYPE TTL SOURCE DATA...``: ``DATA`` is the
records for ``ok`` and a sentence for the others. Control lines (``welcome``,
``wait``, ``bye``) have their own shape; both are parsed by
:func:`parse_reply`. The module never touches a socket.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from trionet.framing import LineClientProtocol, LineServerProtocol
from trionet.names.answer import (
    ONE_WORD_TYPES,
    Answer,
    InvalidName,
    InvalidType,
    normalize_name,
    parse_type,
    reverse_name,
)

__all__ = [
    "BYE_REASONS",
    "DEFAULT_PORT",
    "RECORD_SEPARATOR",
    "MAX_LINE",
    "BadLine",
    "Bye",
    "Query",
    "Quit",
    "RemoteProtocolError",
    "Reply",
    "ServerLineProtocol",
    "ClientLineProtocol",
    "Wait",
    "Welcome",
    "encode_answer",
    "encode_bad_request",
    "encode_bye",
    "decode_records",
    "encode_query",
    "encode_records",
    "encode_wait",
    "encode_welcome",
    "parse_line",
    "parse_reply",
]

DEFAULT_PORT = 7402
MAX_LINE = 1024
"""The longest request line, in bytes; a longer one is answered ``bad-request`` and skipped."""

RECORD_SEPARATOR = " | "
"""Between the records of a type whose data may hold spaces (MX, TXT, SOA, ...; not :data:`ONE_WORD_TYPES`)."""
_BAR_ESCAPE = "\\124"
"""A ``|`` inside a record's text is written as this decimal escape, which
DNS presentation format reads back as ``|`` (RFC 1035 5.1)."""

BYE_REASONS = ("quit", "quota-reached", "busy", "wait-timeout", "idle-timeout", "session-timeout", "shutdown")


class RemoteProtocolError(Exception):
    """The server sent a line that is not part of the protocol."""


# --- requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """Look up ``name`` (as typed, normalized) for ``rdtype``; ``qname`` is what is resolved.

    For a reverse query, ``name`` is the address and ``qname`` its PTR name.
    """

    name: str
    rdtype: str
    qname: str


@dataclass(frozen=True, slots=True)
class Quit:
    """The client asks the server to close the connection."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a request; it is answered with ``bad-request``."""

    message: str


def parse_line(line: bytes) -> Query | Quit | BadLine | None:
    """Parse one request line (without its line ending); None for a blank line.

    Accepted: ``NAME``, ``NAME TYPE``, ``ADDRESS`` (reverse), ``ADDRESS PTR``
    and ``quit``; keywords and types are case-insensitive. ``TYPE`` is any
    type dnspython knows by name, ``TYPEnnn``, or ``ANY``
    (:func:`~trionet.names.answer.parse_type`).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(f"the line is not valid UTF-8 (byte {exc.start})")
    words = text.split()
    if not words:
        return None
    if len(words) == 1 and words[0].lower() in ("quit", "exit"):
        return Quit()
    if len(words) > 2:
        return BadLine("expected NAME [TYPE], ADDRESS or quit")
    rdtype = None
    if len(words) == 2:
        try:
            rdtype = parse_type(words[1])
        except InvalidType as exc:
            return BadLine(f"{exc}; use a record type such as A, AAAA, MX, TXT, SRV or TYPE65280")
    target = words[0]
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        address = None
    if address is not None:
        if getattr(address, "scope_id", None) is not None:
            # fe80::1%eth0 parses, but a scope has no reverse name (and
            # ipaddress raises when asked for one).
            return BadLine(f"{target[:80]!r} has a scope (after the %); leave it out to ask for the name")
        if rdtype not in (None, "PTR"):
            return BadLine(f"{target} is an address: ask for its name with PTR, or leave the type out")
        return Query(str(address), "PTR", reverse_name(str(address)))
    try:
        name = normalize_name(target)
    except InvalidName as exc:
        return BadLine(str(exc))
    return Query(name, rdtype or "A", name)


def encode_query(name: str, rdtype: str = "A") -> bytes:
    """Return the request line for ``name`` and ``rdtype``."""
    return f"{name} {rdtype}\n".encode()


class ServerLineProtocol(LineServerProtocol["Query | Quit | BadLine"]):
    """The server's side of one line connection: bytes in, requests out.

    :meth:`next_event` returns a :class:`Query`, :class:`Quit` or
    :class:`BadLine` (a line longer than ``max_line`` is one ``BadLine`` and
    is skipped), NEED_DATA, or EOF.

    Args:
        max_line: the longest request line, in bytes.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        super().__init__(parse_line, _oversized, max_line)


def _oversized(limit: int) -> BadLine:
    return BadLine(f"line longer than {limit} bytes; it was skipped")


# --- replies -------------------------------------------------------------------


def _line(*words: object) -> bytes:
    return (" ".join(str(w) for w in words) + "\n").encode()


def _sentence(answer: Answer) -> str:
    if answer.status == "nxdomain":
        return "no such name"
    if answer.status == "nodata":
        return f"{answer.owner} has no {answer.rdtype} record"
    return answer.message or "upstream failure"


def encode_records(rdtype: str, records: tuple[str, ...]) -> str:
    """The records of an ``ok`` line: space-separated for :data:`ONE_WORD_TYPES`, else joined by :data:`RECORD_SEPARATOR`.

    A ``|`` inside a record is written ``\\124``, so the line splits back
    into the same records, each still valid presentation text.
    """
    if rdtype in ONE_WORD_TYPES:
        return " ".join(records)
    return RECORD_SEPARATOR.join(record.replace("|", _BAR_ESCAPE) for record in records)


def decode_records(rdtype: str, text: str) -> tuple[str, ...]:
    """The records of an ``ok`` line's data, as the server had them (the inverse of :func:`encode_records`).

    ``\\124`` becomes ``|`` again; an escaped backslash (``\\\\``) is
    skipped over, so ``\\\\124`` (a backslash, then ``124``) stays as it is.
    """
    if not text:
        return ()
    if rdtype in ONE_WORD_TYPES:
        return tuple(text.split(" "))
    return tuple(_BAR_ESCAPED.sub(_unescape_bar, record) for record in text.split(RECORD_SEPARATOR))


_BAR_ESCAPED = re.compile(r"\\\\|\\124")


def _unescape_bar(match: re.Match) -> str:
    return "|" if match.group() == _BAR_ESCAPE else match.group()


def encode_answer(answer: Answer, name: str | None = None) -> bytes:
    """Return the reply line for ``answer``; ``name`` overrides the name shown (an address)."""
    shown = name or answer.name
    if answer.status == "ok":
        if answer.rdtype in ONE_WORD_TYPES:
            return _line("ok", shown, answer.rdtype, answer.ttl, answer.source, *answer.records)
        return _line("ok", shown, answer.rdtype, answer.ttl, answer.source, encode_records(answer.rdtype, answer.records))
    return _line(answer.status, shown, answer.rdtype, answer.ttl, answer.source, _sentence(answer))


def encode_bad_request(message: str) -> bytes:
    """Return the reply to a line that is not a request."""
    return _line("bad-request", "-", "-", 0, "-", message)


def encode_welcome(*, quota: int, idle_timeout: float, waited: float, session_timeout: float = 0) -> bytes:
    """Sent when the client is admitted: its quota (0: none), the idle and session timeouts and the wait, in seconds."""
    return _line(
        "welcome",
        f"quota={quota}",
        f"idle-timeout={idle_timeout:g}",
        f"session-timeout={session_timeout:g}",
        f"waited={waited:.3f}",
    )


def encode_wait(place: int, serving: int) -> bytes:
    """Sent while the client waits for a slot, each time its place in line changes."""
    ahead = "you are next" if place == 1 else f"{place - 1} client(s) ahead of you"
    busy = "the only slot is busy" if serving == 1 else f"all {serving} slots are busy"
    return _line("wait", place, f"{busy}; {ahead}")


def encode_bye(reason: str, message: str) -> bytes:
    """Sent just before the server closes the connection; ``reason`` is one of :data:`BYE_REASONS`."""
    return _line("bye", reason, message)


# --- the client's side -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer line: ``status`` is ``ok``, ``nxdomain``, ``nodata``, ``servfail`` or ``bad-request``."""

    status: str
    name: str
    rdtype: str
    ttl: int
    source: str
    records: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The client is admitted: its quota (0: none), the idle timeout, how long it waited and the
    session timeout (0: none; absent from older servers' welcome), in seconds."""

    quota: int
    idle_timeout: float
    waited: float
    session_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class Wait:
    """Every slot is taken: the client is number ``place`` in line (1 is next)."""

    place: int
    message: str


@dataclass(frozen=True, slots=True)
class Bye:
    """The server closes the connection after this line; ``reason`` is one of :data:`BYE_REASONS`."""

    reason: str
    message: str


def parse_reply(line: bytes) -> Reply | Welcome | Wait | Bye:
    """Parse one line from the server.

    Raises:
        RemoteProtocolError: the line is not a reply of this protocol.
    """
    try:
        text = line.decode("utf-8")
        words = text.split(" ")
        kind = words[0]
        if kind in ("ok", "nxdomain", "nodata", "servfail", "bad-request"):
            status, name, rdtype, ttl, source, *rest = words
            if kind == "ok":
                return Reply(status, name, rdtype, int(ttl), source, decode_records(rdtype, " ".join(rest)))
            return Reply(status, name, rdtype, int(ttl), source, (), " ".join(rest))
        if kind == "welcome":
            fields = dict(w.split("=", 1) for w in words[1:])
            return Welcome(
                int(fields["quota"]),
                float(fields["idle-timeout"]),
                float(fields["waited"]),
                float(fields.get("session-timeout", 0)),
            )
        if kind == "wait":
            return Wait(int(words[1]), " ".join(words[2:]))
        if kind == "bye":
            return Bye(words[1], " ".join(words[2:]))
    except (ValueError, KeyError, IndexError) as exc:
        raise RemoteProtocolError(f"not a reply line: {line[:100]!r} ({exc})") from None
    raise RemoteProtocolError(f"unknown reply {kind[:20]!r}")


class ClientLineProtocol(LineClientProtocol["Reply | Welcome | Wait | Bye"]):
    """The client's side of one line connection: bytes in, replies out.

    :meth:`next_event` returns a :class:`Reply`, :class:`Welcome`,
    :class:`Wait` or :class:`Bye`, NEED_DATA, or EOF; it raises
    :class:`RemoteProtocolError` when a line is not a reply or the server
    closed mid-line.
    """

    def __init__(self, max_line: int = 1 << 20) -> None:
        super().__init__(parse_reply, RemoteProtocolError, max_line)
