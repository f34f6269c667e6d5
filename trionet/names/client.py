"""The trio client of the names line protocol: ``async with connect(...) as conn: await conn.resolve(...)``.

Connecting may mean waiting in line: :func:`connect` returns once the
server has admitted the client, and reports each place in line through
``on_wait``. When the server ends the session (the quota is used, the client
was idle, the server shuts down), the next :meth:`NamesConnection.resolve`
raises :class:`SessionEnded` (:class:`QuotaReached` for the quota) and
:attr:`NamesConnection.bye` says why.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from trionet.framing import EOF
from trionet.names import protocol
from trionet.serving import receive_event

__all__ = [
    "NamesConnection",
    "NamesConnectionError",
    "QuotaReached",
    "Resolved",
    "ServerBusy",
    "SessionEnded",
    "connect",
]


class NamesConnectionError(Exception):
    """The server cannot be reached, or the connection failed."""


class SessionEnded(NamesConnectionError):
    """The server ended the session; ``reason`` is the ``bye`` reason (``idle-timeout``, ``shutdown``...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"the server ended the session ({reason}): {message}")
        self.reason = reason
        self.message = message


class QuotaReached(SessionEnded):
    """Every query of the quota is answered; connect again (and wait in line) for more."""


class ServerBusy(SessionEnded):
    """Turned away before admission: the waiting room was full, this address held its share
    (the message starts with ``per-address:``), or no slot came free in time (``wait-timeout``)."""


def _ended(bye: protocol.Bye) -> SessionEnded:
    kind = {"quota-reached": QuotaReached, "busy": ServerBusy, "wait-timeout": ServerBusy}.get(bye.reason, SessionEnded)
    return kind(bye.reason, bye.message)


@dataclass(frozen=True, slots=True)
class Resolved:
    """One answer, as the server gave it.

    Attributes:
        name: the name (or address) asked.
        rdtype: the record type.
        status: ``ok``, ``nxdomain``, ``nodata``, ``servfail`` or ``bad-request``.
        addresses: the records, as DNS presentation text (addresses for
            A/AAAA, names for PTR, ``10 mail.example.`` for MX, ...); also
            known as :attr:`records`.
        ttl: seconds the answer stays valid.
        source: ``hosts``, ``cache``, ``dns``, ``stale`` or ``rfc8482``.
        message: why, for anything but ``ok``.
        latency: seconds between sending the query and reading the answer.
    """

    name: str
    rdtype: str
    status: str
    addresses: tuple[str, ...]
    ttl: int
    source: str
    message: str
    latency: float

    @property
    def records(self) -> tuple[str, ...]:
        """The records, whatever their type (the same tuple as :attr:`addresses`)."""
        return self.addresses

    @property
    def ok(self) -> bool:
        """True when the name has records of the type."""
        return self.status == "ok"

    def to_json(self) -> dict:
        """The answer as a JSON-ready dict (what ``trionet names query --format json`` prints)."""
        return {
            "name": self.name,
            "type": self.rdtype,
            "status": self.status,
            "addresses": list(self.addresses),
            "records": list(self.addresses),
            "ttl": self.ttl,
            "source": self.source,
            "message": self.message,
            "latency_ms": round(self.latency * 1000, 3),
        }


class NamesConnection:
    """An admitted session with a names server. Create it with :func:`connect`."""

    def __init__(self, stream: trio.abc.Stream, proto: protocol.ClientLineProtocol, welcome: protocol.Welcome) -> None:
        self._stream = stream
        self._proto = proto
        self._lock = trio.Lock()
        self.welcome = welcome
        """What the server said on admission: quota, idle timeout, how long we waited."""
        self.answered = 0
        """Answers received on this connection."""
        self.bye: protocol.Bye | None = None
        """Set once the server has ended the session."""

    @property
    def remaining(self) -> float:
        """Queries left in the quota (``math.inf`` when the server has none)."""
        if self.welcome.quota == 0:
            return math.inf
        return max(0, self.welcome.quota - self.answered)

    async def resolve(self, name: str, rdtype: str | None = "A") -> Resolved:
        """Ask for the records of ``name``; for an IP address (or ``rdtype`` None) its PTR name.

        Returns:
            The answer, whatever its status (``nxdomain`` is an answer, not an error).

        Raises:
            QuotaReached: the session ended at the quota before this query.
            SessionEnded: the session ended for another reason.
            NamesConnectionError: the connection failed.
        """
        async with self._lock:
            if self.bye is not None:
                raise _ended(self.bye)
            try:
                ipaddress.ip_address(name)
                is_address = True
            except ValueError:
                is_address = False
            line = f"{name}\n" if is_address and rdtype in (None, "A", "PTR") else protocol.encode_query(name, rdtype or "A").decode()
            started = time.perf_counter()
            try:
                await self._stream.send_all(line.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                event = await self._next_or_none()
                if isinstance(event, protocol.Bye):
                    self.bye = event
                    raise _ended(event) from None
                raise NamesConnectionError(f"cannot send the query: {exc}") from None
            event = await self._next()
            if isinstance(event, protocol.Bye):
                self.bye = event
                raise _ended(event)
            if not isinstance(event, protocol.Reply):
                raise NamesConnectionError(f"unexpected {type(event).__name__} from the server")
            self.answered += 1
            resolved = Resolved(
                event.name,
                event.rdtype,
                event.status,
                event.records,
                event.ttl,
                event.source,
                event.message,
                time.perf_counter() - started,
            )
            if self.welcome.quota and self.answered >= self.welcome.quota:
                # The bye follows the last answer; read it now so callers know.
                with trio.move_on_after(5):
                    bye = await self._next_or_none()
                    if isinstance(bye, protocol.Bye):
                        self.bye = bye
            return resolved

    async def _next(self):
        try:
            event = await receive_event(self._stream, self._proto)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise NamesConnectionError(f"connection lost: {exc}") from None
        except protocol.RemoteProtocolError as exc:
            raise NamesConnectionError(str(exc)) from None
        if event is EOF:
            raise NamesConnectionError("the server closed the connection")
        return event

    async def _next_or_none(self):
        try:
            return await self._next()
        except NamesConnectionError:
            return None

    async def quit(self) -> None:
        """Say goodbye; the server closes the connection."""
        async with self._lock:
            if self.bye is not None:
                return
            try:
                await self._stream.send_all(b"quit\n")
                event = await self._next()
                if isinstance(event, protocol.Bye):
                    self.bye = event
            except (NamesConnectionError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


@asynccontextmanager
async def connect(
    host: str = "127.0.0.1",
    port: int = protocol.DEFAULT_PORT,
    *,
    on_wait: Callable[[int], Awaitable[None] | None] | None = None,
    connect_timeout: float = 10.0,
    wait_timeout: float | None = None,
) -> AsyncIterator[NamesConnection]:
    """Connect to a names server and wait until it admits us.

    Args:
        host, port: the server's line port.
        on_wait: called with our place in line (1 is next) each time the
            server reports it; may be a plain or an async function.
        connect_timeout: seconds to wait for the TCP connection and the first line.
        wait_timeout: seconds to wait in line; None for as long as it takes.

    Raises:
        ServerBusy: turned away: the waiting room was full, this address
            held its share, or the server's wait timeout passed.
        NamesConnectionError: the server cannot be reached, or is not a names server.
    """
    proto = protocol.ClientLineProtocol()
    try:
        with trio.fail_after(connect_timeout if connect_timeout > 0 else math.inf):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise NamesConnectionError(f"no connection to {host}:{port} within {connect_timeout}s") from None
    except OSError as exc:
        raise NamesConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    async with stream:
        conn = NamesConnection(stream, proto, protocol.Welcome(0, 0, 0))
        try:
            with trio.fail_after(wait_timeout if wait_timeout is not None else math.inf):
                with trio.fail_after(connect_timeout if connect_timeout > 0 else math.inf):
                    event = await conn._next()
                while isinstance(event, protocol.Wait):
                    if on_wait is not None:
                        result = on_wait(event.place)
                        if result is not None:
                            await result
                    event = await conn._next()
        except trio.TooSlowError:
            raise NamesConnectionError(f"not admitted by {host}:{port} in time") from None
        if isinstance(event, protocol.Bye):
            raise _ended(event)
        if not isinstance(event, protocol.Welcome):
            raise NamesConnectionError(f"{host}:{port} is not a trionet names server")
        conn.welcome = event
        yield conn
