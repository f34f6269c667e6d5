"""The trio layer of the name server: two ports, one admission limit, the hosts watcher.

:class:`NamesServer` runs two :class:`~trionet.serving.TCPService` s, the
line protocol and DNS over TCP, that share one
:class:`~trionet.limits.AdmissionLimit`: at most ``limit`` clients are served
at once across both ports, the next ``backlog`` wait in FIFO order, and the
rest are turned away with a "busy" reply; so is a client whose address
already holds ``per_address`` slots and places in line. Each connection goes
through the same stages:

1. *waiting*: while it waits for a slot the client's input is read (and kept,
   up to :data:`WAIT_BUFFER` bytes), so that a client that leaves is noticed
   and leaves the line; a line client is told its place each time it changes;
   after ``wait_timeout`` seconds without a slot it is turned away;
2. *admitted*: requests are answered until the session's
   :class:`~trionet.names.session.SessionRules` end it (the quota is used,
   the client is idle for ``idle_timeout`` seconds or was admitted
   ``session_timeout`` seconds ago), the client quits, or the server shuts down;
3. *closing*: the slot is given back first, so the next client is admitted
   at once; then the server sends EOF and reads what the client still sends
   (for at most :data:`LINGER` seconds) before closing, so the last answer
   is not lost to a TCP reset.

Lookups go to the hosts table, then the cache, then the
:class:`~trionet.names.resolver.Resolver`. The hosts file is reloaded when it
changes (checked every ``reload_interval`` seconds) and on
:meth:`NamesServer.request_reload` (SIGHUP in the CLI); connections are
never dropped for a reload.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from dataclasses import dataclass, field

import trio

from trionet.framing import EOF, NEED_DATA, Frame, LengthPrefixFramer, Oversized, TruncatedFrame, encode_length_prefixed
from trionet.limits import AdmissionLimit, ShareExceeded, Ticket, WaitingRoomFull, WaitTimeout, client_key
from trionet.log import get_logger
from trionet.names import dnswire, protocol
from trionet.names.answer import Answer
from trionet.names.cache import AnswerCache
from trionet.names.hosts import HostsTable, load_hosts
from trionet.names.resolver import Resolver, Transport, Upstream
from trionet.names.session import SessionRules
from trionet.serving import RECEIVE_CHUNK, Connection, SendWatchdog, TCPService, receive_event

__all__ = [
    "DEFAULT_DNS_PORT",
    "DNS_CLOSE_WAIT",
    "LINGER",
    "WAIT_BUFFER",
    "NamesAddresses",
    "NamesConfig",
    "NamesServer",
    "serve_names",
]

log = get_logger("names")

DEFAULT_DNS_PORT = 7453
WAIT_BUFFER = 64 * 1024
"""Bytes of input kept from a client while it waits; beyond that it is not read until admitted."""
LINGER = 2.0
"""Seconds a closing connection may take to read what the client still sends after our EOF."""
MAX_DNS_MESSAGE = 65535
DNS_CLOSE_WAIT = 1.0
HOSTS_WIRE_ENTRIES = 4096
STUCK_SEND_NO_IDLE = 30.0
"""Seconds a send may stay blocked when there is no idle timeout (otherwise: the idle timeout)."""
"""Seconds a DNS client that used its quota has to close first before the server closes."""


@dataclass(frozen=True)
class NamesConfig:
    """The server's rules; each one is a ``trionet names serve`` option.

    Attributes:
        limit: clients served at once, both ports together.
        quota: queries each admitted client may make; 0 for no quota.
        backlog: clients that may wait for a slot; ``None`` for no bound.
        idle_timeout: seconds an admitted client may stay silent; 0 for no limit.
        per_address: slots plus places in line one client address (an IPv6
            /64) may hold at once; 0 for no limit.
        wait_timeout: seconds a client may wait in line for a slot; 0 for no limit.
        session_timeout: seconds an admitted client may keep its slot; 0 for no limit.
        cache_size: answers kept in the cache (LRU).
        min_ttl: cached answers live at least this many seconds...
        max_ttl: ...and at most this many.
        upstream_timeout: seconds to wait for one upstream server.
        reload_interval: seconds between checks of the hosts file.
        max_in_flight: DNS queries of one connection being resolved at once;
            the next one is not read until one finishes.
    """

    limit: int = 3
    quota: int = 4
    backlog: int | None = 64
    idle_timeout: float = 30.0
    per_address: int = 8
    wait_timeout: float = 60.0
    session_timeout: float = 60.0
    cache_size: int = 10_000
    min_ttl: int = 0
    max_ttl: int = 86_400
    upstream_timeout: float = 2.0
    reload_interval: float = 2.0
    max_in_flight: int = 32


@dataclass(frozen=True)
class NamesAddresses:
    """Where a running server listens (what ``nursery.start(serve_names, ...)`` returns)."""

    line: tuple[str, int]
    dns: tuple[str, int]


class _Refused(Exception):
    """The client is turned away before it is admitted: ``reason`` is the bye reason, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class _Session:
    """One connection's state that the drain watcher also looks at."""

    ticket: Ticket | None = None
    key: str = ""  # the client's address, as its per-address share counts it
    busy: bool = False
    stopping: str = ""  # why the session ends: "shutdown" or a bye reason of SessionRules
    wait_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    pending: collections.deque = field(default_factory=collections.deque)
    sends: SendWatchdog = field(default_factory=lambda: SendWatchdog(STUCK_SEND_NO_IDLE))


class NamesServer:
    """The name server: hosts table, cache, resolver and the two ports.

    Args:
        config: the rules.
        upstreams: the DNS servers asked for names not in the hosts table.
        hosts_path: the hosts file, loaded at start and watched; None for none.
        table: a table to use instead of (or until) ``hosts_path`` is loaded.
        transport: how upstream queries are sent (see
            :class:`~trionet.names.resolver.Resolver`); UDP then TCP by default.
    """

    def __init__(
        self,
        config: NamesConfig | None = None,
        *,
        upstreams: list[Upstream] = (),
        hosts_path: str | None = None,
        table: HostsTable | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._transport = transport
        self.config = config or NamesConfig()
        self.upstreams = list(upstreams)
        self.hosts_path = hosts_path
        self.table = table or HostsTable()
        self.cache = AnswerCache(self.config.cache_size, min_ttl=self.config.min_ttl, max_ttl=self.config.max_ttl)
        self.admission = AdmissionLimit(
            self.config.limit, self.config.backlog, per_key=self.config.per_address or None
        )
        self.rules = SessionRules(self.config.quota, self.config.idle_timeout, self.config.session_timeout)
        self.line_service = TCPService("names", self.handle_line, log)
        self.dns_service = TCPService("names-dns", self.handle_dns, log)
        self.resolver: Resolver | None = None
        self.reloads = 0
        """How many times the hosts file was (re)loaded."""
        self._reload_requested = trio.Event()
        self._hosts_stamp: tuple | None = None
        self._hosts_wire: dict[bytes, bytes] = {}
        if hosts_path is not None and table is None:
            self._load(hosts_path)

    # --- lifecycle --------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = protocol.DEFAULT_PORT,
        dns_port: int = DEFAULT_DNS_PORT,
        *,
        listen_backlog: int | None = None,
        task_status: trio.TaskStatus[NamesAddresses] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on both ports and serve until cancelled or shut down.

        Reports a :class:`NamesAddresses` through ``task_status``, so tests
        use ``port=0, dns_port=0`` and learn the ports.
        """
        async with self.running():
            async with trio.open_nursery() as services:
                line = await services.start(partial(self.line_service.serve, backlog=listen_backlog), host, port)
                dns = await services.start(partial(self.dns_service.serve, backlog=listen_backlog), host, dns_port)
                task_status.started(NamesAddresses(tuple(line[0][:2]), tuple(dns[0][:2])))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the resolver and the hosts watcher for the body of the ``async with``.

        :meth:`serve` runs inside it; tests use it alone to drive
        :meth:`handle_line` and :meth:`handle_dns` over in-memory streams.
        """
        async with trio.open_nursery() as background:
            self.resolver = Resolver(
                self.upstreams,
                self.cache,
                background,
                timeout=self.config.upstream_timeout,
                transport=self._transport,
            )
            if self.hosts_path is not None:
                background.start_soon(self._watch_hosts)
            try:
                yield
            finally:
                background.cancel_scope.cancel()

    def shutdown(self, grace: float) -> None:
        """Stop accepting on both ports; clients get ``bye shutdown`` after the request in hand."""
        self.line_service.shutdown(grace)
        self.dns_service.shutdown(grace)

    def request_reload(self) -> None:
        """Reload the hosts file now (what SIGHUP does)."""
        self._reload_requested.set()

    # --- lookups ----------------------------------------------------------------

    def lookup_local(self, name: str, rdtype: str) -> Answer | None:
        """Answer from the hosts table or the cache without waiting; None means ask upstream."""
        answer = self.table.lookup(name, rdtype)
        if answer is not None:
            return answer
        return self.cache.get(name, rdtype, trio.current_time())

    async def lookup(self, name: str, rdtype: str) -> Answer:
        """Answer ``name``/``rdtype``: hosts table, then cache, then upstream (never raises)."""
        answer = self.table.lookup(name, rdtype)
        if answer is not None:
            return answer
        assert self.resolver is not None, "lookup() needs a running server"
        return await self.resolver.resolve(name, rdtype)

    # --- the hosts file -----------------------------------------------------------

    def _stamp(self, path: str) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self, path: str) -> tuple[tuple | None, HostsTable | None, list, OSError | None]:
        """Stat and parse the hosts file; safe to run in a worker thread (it changes nothing)."""
        stamp = self._stamp(path)
        try:
            table, warnings = load_hosts(path)
        except OSError as exc:
            return stamp, None, [], exc
        return stamp, table, warnings, None

    def _apply(self, path: str, read: tuple) -> None:
        """Install what :meth:`_read` returned; runs on the event loop, so no lookup sees half of it."""
        stamp, table, warnings, error = read
        self._hosts_stamp = stamp
        if error is not None:
            log.warning(
                "cannot read hosts file %s: %s; keeping %d name(s)", path, error.strerror or error, len(self.table)
            )
            return
        for warning in warnings:
            log.warning("%s", warning)
        self.table = table
        self._hosts_wire.clear()
        self.reloads += 1
        log.info("hosts file %s: %d name(s)", path, len(table))

    def _load(self, path: str) -> None:
        self._apply(path, self._read(path))

    async def _watch_hosts(self) -> None:
        path = self.hosts_path
        assert path is not None
        while True:
            with trio.move_on_after(self.config.reload_interval):
                await self._reload_requested.wait()
            forced = self._reload_requested.is_set()
            self._reload_requested = trio.Event()
            stamp = await trio.to_thread.run_sync(self._stamp, path)
            if forced or stamp != self._hosts_stamp:
                self._apply(path, await trio.to_thread.run_sync(self._read, path))

    # --- admission, shared by both ports ------------------------------------------

    async def _admit(self, conn: Connection, session: _Session, framer, on_wait) -> bool:
        """Wait for a slot while reading the client's input; True once admitted.

        Returns False when the client left while waiting (or the server is
        shutting down). Raises :class:`_Refused` when the waiting room is
        full, the client's address holds its share, or no slot came free
        within ``wait_timeout`` seconds.
        """
        session.key = _client_key(conn)
        try:
            session.ticket = self.admission.try_enter(key=session.key)
        except ShareExceeded as exc:
            raise self._refusal(exc) from None
        if session.ticket is not None:
            return True  # a free slot: no waiting, nothing to watch

        async def watch_client(scope: trio.CancelScope) -> None:
            kept = 0
            while kept < WAIT_BUFFER:
                data = await conn.stream.receive_some(RECEIVE_CHUNK)
                framer.receive_data(data)
                kept += len(data)
                has_request = bool(session.pending)
                while (event := framer.next_event()) is not NEED_DATA:
                    if event is EOF or isinstance(event, TruncatedFrame):
                        if not has_request:
                            scope.cancel()  # gone before it asked anything: leave the line
                            return
                        session.pending.append(EOF)
                        await trio.sleep_forever()  # half-closed: it still wants its answers
                    session.pending.append(event)
                    has_request = True
            await trio.sleep_forever()  # enough kept: TCP holds back the rest

        refused: Exception | None = None
        try:
            with session.wait_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_client, nursery.cancel_scope)
                    session.ticket = await self.admission.enter(
                        on_wait=on_wait, key=session.key, timeout=self.config.wait_timeout or math.inf
                    )
                    nursery.cancel_scope.cancel()
        except* (WaitingRoomFull, ShareExceeded, WaitTimeout) as group:
            refused = _first_leaf(group)
        if refused is not None:
            raise self._refusal(refused)
        return session.ticket is not None

    def _refusal(self, exc: Exception) -> _Refused:
        """The bye reason and message for a client that ``exc`` turned away."""
        if isinstance(exc, ShareExceeded):
            return _Refused(
                "busy",
                f"per-address: {exc.key} already has {exc.per_key} connection(s) served or waiting, "
                "the most one address may have; try again when one has closed",
            )
        if isinstance(exc, WaitTimeout):
            return _Refused("wait-timeout", f"no slot came free within {exc.timeout:g} seconds; try again later")
        return _Refused(
            "busy",
            f"all {self.admission.limit} slots are busy and {self.admission.waiting} client(s) are waiting; "
            "try again later",
        )

    def _release(self, session: _Session) -> None:
        if session.ticket is not None:
            self.admission.leave(session.ticket)
            session.ticket = None

    async def _watch(self, conn: Connection, session: _Session, scope: trio.CancelScope) -> None:
        """Stop the session at shutdown, and end it when one send stays blocked too long.

        A client that does not read its answers must not hold its slot
        forever. A cancel scope around every send would cost more than the
        send itself on the DNS fast path, so the shared
        :class:`~trionet.serving.SendWatchdog` watches the sends instead.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.sends.watch, scope)
            await conn.draining.wait()
            session.stopping = "shutdown"
            session.wait_scope.cancel()
        # (the watchdog runs until the connection's nursery is cancelled)

    @staticmethod
    async def _send(session: _Session, stream: trio.abc.Stream, data: bytes) -> None:
        await session.sends.send(stream, data)

    @staticmethod
    async def _close_gently(stream: trio.abc.Stream) -> None:
        """Send EOF, then read and drop what the client still sends until it closes (bounded)."""
        with trio.move_on_after(LINGER):
            try:
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_CHUNK):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def _bye(self, reason: str, answered: int) -> bytes:
        """The ``bye`` line for a session that :attr:`rules` ended."""
        config = self.config
        message = {
            "quota-reached": f"{answered} queries answered, the quota of this server; connect again for more",
            "idle-timeout": f"no query for {config.idle_timeout:g} seconds; goodbye",
            "session-timeout": f"admitted {config.session_timeout:g} seconds ago, the longest a session may last; "
            "connect again for more",
        }[reason]
        return protocol.encode_bye(reason, message)

    # --- the line port --------------------------------------------------------------

    async def handle_line(self, conn: Connection) -> None:
        """Serve one client of the line protocol (the line port's TCPService handler)."""
        await self._serve_client(conn, self._line_session)

    async def _serve_client(self, conn: Connection, run_session) -> None:
        # What both ports do around a session: the watcher (idle time, stuck
        # sends), giving back the client's slot, and a gentle close.
        session = _Session(sends=SendWatchdog(self.config.idle_timeout or STUCK_SEND_NO_IDLE))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, conn, session, nursery.cancel_scope)
            try:
                await run_session(conn, session)
            finally:
                self._release(session)
                nursery.cancel_scope.cancel()
        await self._close_gently(conn.stream)

    async def _line_session(self, conn: Connection, session: _Session) -> None:
        stream = conn.stream
        proto = protocol.ServerLineProtocol()
        config = self.config

        async def tell_place(place: int) -> None:
            await self._send(session, stream, protocol.encode_wait(place, self.admission.limit))

        try:
            admitted = await self._admit(conn, session, proto, tell_place)
        except _Refused as refused:
            await self._send(session, stream, protocol.encode_bye(refused.reason, refused.message))
            return
        if not admitted:
            if session.stopping == "shutdown":
                await self._send(session, stream, protocol.encode_bye("shutdown", "the server is shutting down"))
            return
        ticket = session.ticket
        admitted_at = ticket.admitted
        welcome = protocol.encode_welcome(
            quota=config.quota,
            idle_timeout=config.idle_timeout,
            session_timeout=config.session_timeout,
            waited=ticket.waited,
        )
        await self._send(session, stream, welcome)
        answered = 0
        while True:
            if session.stopping == "shutdown":
                await self._send(session, stream, protocol.encode_bye("shutdown", "the server is shutting down"))
                return
            if session.pending:
                event = session.pending.popleft()
            else:
                deadline, reason = self.rules.read_deadline(admitted_at, trio.current_time())
                session.wait_scope = trio.CancelScope(deadline=deadline)
                if session.stopping:
                    session.wait_scope.cancel()
                event = None
                with session.wait_scope:
                    event = await receive_event(stream, proto)
                if event is None:
                    if session.stopping == "shutdown":
                        continue
                    await self._send(session, stream, self._bye(reason, answered))
                    return
            if event is EOF:
                return
            if isinstance(event, protocol.Quit):
                await self._send(session, stream, protocol.encode_bye("quit", "goodbye"))
                return
            conn.requests += 1
            answered += 1
            session.busy = True
            if isinstance(event, protocol.BadLine):
                reply = protocol.encode_bad_request(event.message)
            else:
                answer = await self.lookup(event.qname, event.rdtype)
                reply = protocol.encode_answer(answer, event.name)
            session.busy = False
            ending = self.rules.end_reason(answered, admitted_at, trio.current_time())
            if ending:
                await self._send(session, stream, reply + self._bye(ending, answered))
                return
            await self._send(session, stream, reply)

    # --- the DNS port -----------------------------------------------------------------

    async def handle_dns(self, conn: Connection) -> None:
        """Serve one DNS-over-TCP client (the DNS port's TCPService handler)."""
        await self._serve_client(conn, self._dns_session)

    async def _dns_session(self, conn: Connection, session: _Session) -> None:
        stream = conn.stream
        framer = LengthPrefixFramer(2, MAX_DNS_MESSAGE)
        config = self.config
        try:
            admitted = await self._admit(conn, session, framer, None)
        except _Refused:
            await self._refuse(session, stream, framer)
            return
        if not admitted:
            return
        admitted_at = session.ticket.admitted
        session_deadline = self.rules.session_deadline(admitted_at)
        send_lock = trio.Lock()
        in_flight = trio.Semaphore(config.max_in_flight)
        answered = 0
        resolving = 0  # tasks resolving a query; while there are none, nobody else sends

        async def send(wire: bytes) -> None:
            if resolving:
                async with send_lock:
                    await self._send(session, stream, wire)
            else:
                await self._send(session, stream, wire)  # the fast path: no lock to take

        async def resolve_and_send(query: dnswire.DnsQuery) -> None:
            nonlocal resolving
            try:
                answer = await self.lookup(query.qname, query.rdtype)
                async with send_lock:
                    await self._send(session, stream, _frame(dnswire.build_response(query, answer)))
            finally:
                resolving -= 1
                in_flight.release()

        async with trio.open_nursery() as queries:
            out: list[bytes] = []
            while not session.stopping:
                if session.pending:
                    event = session.pending.popleft()
                else:
                    event = framer.next_event()
                    if event is NEED_DATA:
                        if out:  # answer everything that arrived together with one send
                            await send(b"".join(out))
                            out.clear()
                        # Checked once per read, not per message: the fast path stays fast.
                        now = trio.current_time()
                        if now >= session_deadline:
                            session.stopping = "session-timeout"
                            break
                        deadline, reason = self.rules.read_deadline(admitted_at, now)
                        session.wait_scope = trio.CancelScope(deadline=deadline)
                        event = None
                        with session.wait_scope:
                            event = await receive_event(stream, framer)
                        if event is None:
                            session.stopping = session.stopping or reason
                            break
                if event is EOF or isinstance(event, TruncatedFrame):
                    break
                if isinstance(event, Oversized):  # cannot happen with a 2-byte prefix; kept for safety
                    out.append(_frame(dnswire.build_error(b"", dnswire.FORMERR)))
                    continue
                assert isinstance(event, Frame)
                conn.requests += 1
                answered += 1
                payload = event.payload
                known = self._hosts_wire.get(payload[2:])
                if known is not None:
                    out.append(_frame(payload[:2] + known))
                else:
                    parsed = dnswire.parse_query(payload)
                    if isinstance(parsed, bytes):
                        out.append(_frame(parsed))
                    else:
                        answer = self.lookup_local(parsed.qname, parsed.rdtype)
                        if answer is None:
                            if out:
                                await send(b"".join(out))
                                out.clear()
                            await in_flight.acquire()
                            resolving += 1
                            queries.start_soon(resolve_and_send, parsed)
                        else:
                            response = dnswire.build_response(parsed, answer)
                            if answer.source == "hosts":
                                self._remember_hosts_wire(payload, response)
                            out.append(_frame(response))
                if config.quota and answered >= config.quota:
                    session.stopping = "quota-reached"
                    break
            if out:
                await send(b"".join(out))
        # Every answer is sent; give the slot to the next client before closing.
        self._release(session)
        if session.stopping in ("quota-reached", "session-timeout"):
            await self._let_dns_client_close(stream, framer)

    def _remember_hosts_wire(self, query: bytes, response: bytes) -> None:
        # A hosts-file answer depends only on the query's bytes after its ID
        # and on the table, so it is kept ready to send: the busiest path
        # then costs one dict lookup. A reload clears it.
        if len(self._hosts_wire) >= HOSTS_WIRE_ENTRIES:
            self._hosts_wire.clear()
        self._hosts_wire[query[2:]] = response[2:]

    @staticmethod
    async def _let_dns_client_close(stream: trio.abc.Stream, framer: LengthPrefixFramer) -> None:
        """After the quota, give a DNS client a moment to close first, as RFC 7766 6.2.3 asks of clients.

        The side that closes first keeps the TIME_WAIT state, so a server
        that lets clients close keeps none; and a client that counts its own
        queries (``dnsperf -O num-queries-per-conn=N``) is not surprised by
        an EOF while it closes. A client that sends more, or stays silent for
        :data:`DNS_CLOSE_WAIT` seconds, is closed by the server at once.
        """
        if framer.next_event() is not NEED_DATA:
            return  # it already sent more than its quota
        with trio.move_on_after(DNS_CLOSE_WAIT):
            try:
                await stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _refuse(self, session: _Session, stream: trio.abc.Stream, framer: LengthPrefixFramer) -> None:
        """Answer a turned-away DNS client with REFUSED, the DNS port's ``bye busy`` and ``bye wait-timeout``.

        The queries it sent while waiting are each refused; if there are
        none, its first query is, if it comes within a second.
        """
        frames = [event for event in session.pending if isinstance(event, Frame)]
        if not frames:
            with trio.move_on_after(1.0):
                event = await receive_event(stream, framer)
                if isinstance(event, Frame):
                    frames.append(event)
        if frames:
            await self._send(session, stream, b"".join(_frame(_refused(frame.payload)) for frame in frames))


def _refused(payload: bytes) -> bytes:
    parsed = dnswire.parse_query(payload)
    if isinstance(parsed, bytes):
        return parsed  # not a query it could have had answered: its own error
    return dnswire.build_error(payload, dnswire.REFUSED, parsed)


def _client_key(conn: Connection) -> str:
    """The key of the client's per-address share: its address (an IPv6 /64), else what the log calls it."""
    sock = getattr(conn.stream, "socket", None)
    try:
        host = sock.getpeername()[0] if sock is not None else conn.peer
    except OSError:
        host = conn.peer  # already reset
    return client_key(host)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _frame(wire: bytes) -> bytes:
    if len(wire) > MAX_DNS_MESSAGE:
        wire = dnswire.build_error(wire[:4], dnswire.SERVFAIL)
    return encode_length_prefixed(wire, 2)


async def serve_names(
    server: NamesServer,
    host: str = "127.0.0.1",
    port: int = protocol.DEFAULT_PORT,
    dns_port: int = DEFAULT_DNS_PORT,
    *,
    task_status: trio.TaskStatus[NamesAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``server`` until cancelled; ``await nursery.start(serve_names, server, "127.0.0.1", 0, 0)``."""
    await server.serve(host, port, dns_port, task_status=task_status)
