"""The trio shell of the name server: two ports, one admission limit, the hosts watcher.

:class:`NamesServer` runs two :class:`~trionet.serving.TCPService` s, the
line protocol and DNS over TCP, that share one
:class:`~trionet.limits.AdmissionLimit`: at most ``limit`` clients are served
at once across both ports, the next ``backlog`` wait in FIFO order, and the
rest are turned away with a "busy" reply; so is a client whose address
already holds ``per_address`` slots and places in line.

This module moves bytes and time between the sockets and the sans-IO cores;
it decides nothing itself. What a connection does next is the
:class:`~trionet.names.session.Session`'s call: its stages (waiting,
admitted, closing), what it keeps while it waits, its quota, its idle and
session deadlines and its bye reason. Requests are parsed by
:mod:`~trionet.names.protocol` and :mod:`~trionet.names.dnswire`; the hosts
table is :mod:`~trionet.names.watcher`'s, and the DNS port's ready-made
hosts answers are :mod:`~trionet.names.hostswire`'s. What happens here:

1. *waiting*: while it waits for a slot the client's input is read and
   given to its session, so that a client that leaves is noticed and leaves
   the line; a line client is told its place each time it changes;
2. *admitted*: each read waits until the session's read deadline, each
   request is looked up (hosts table, cache, then the
   :class:`~trionet.names.resolver.Resolver`) and answered;
3. *closing*: the slot is given back first, so the next client is admitted
   at once; then the server sends EOF and reads what the client still sends
   (for at most :data:`LINGER` seconds) before closing, so the last answer
   is not lost to a TCP reset.

The hosts file is reloaded when it changes (checked every
``reload_interval`` seconds) and on :meth:`NamesServer.request_reload`
(SIGHUP in the CLI); connections are never dropped for a reload.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import trio

from trionet.errors import leaves
from trionet.framing import EOF, NEED_DATA, Frame, LengthPrefixFramer, TruncatedFrame, encode_length_prefixed
from trionet.limits import AdmissionLimit, ShareExceeded, Ticket, WaitingRoomFull, WaitTimeout, client_key
from trionet.log import get_logger
from trionet.names import dnswire, protocol
from trionet.names.answer import Answer
from trionet.names.cache import AnswerCache
from trionet.names.hosts import HostsTable
from trionet.names.hostswire import HostsWireCache
from trionet.names.resolver import Resolver, Transport, Upstream
from trionet.names.session import (
    DNS_CLOSE_WAIT,
    REFUSE_WAIT,
    WAIT_BUFFER,
    Keep,
    Session,
    SessionRules,
    busy_message,
    share_message,
    wait_timeout_message,
)
from trionet.names.watcher import HostsWatcher, read_hosts, stamp
from trionet.serving import RECEIVE_CHUNK, Connection, SendWatchdog, TCPService, receive_event

__all__ = [
    "DEFAULT_DNS_PORT",
    "DNS_CLOSE_WAIT",
    "LINGER",
    "MAX_DNS_MESSAGE",
    "WAIT_BUFFER",
    "NamesAddresses",
    "NamesConfig",
    "NamesServer",
    "serve_names",
]

log = get_logger("names")

DEFAULT_DNS_PORT = 7453
LINGER = 2.0
"""Seconds a closing connection may take to read what the client still sends after our EOF."""
MAX_DNS_MESSAGE = 65535
"""The largest DNS message over TCP: what a 2-byte length prefix can say."""


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
class _Client:
    """The trio side of one connection: its :class:`Session`, and what the shutdown watcher touches."""

    session: Session
    sends: SendWatchdog
    ticket: Ticket | None = None
    key: str = ""  # the client's address, as its per-address share counts it
    wait_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class NamesServer:
    """The name server: hosts table, cache, resolver and the two ports.

    Args:
        config: the rules.
        upstreams: the DNS servers asked for names not in the hosts table.
        hosts_path: the hosts file, loaded at start and watched; None for none.
        table: a table to use instead of (or until) ``hosts_path`` is loaded.
        transport: how upstream queries are sent (see
            :class:`~trionet.names.resolver.Resolver`); UDP then TCP by default.

    Resource handling: the resolver's flights and the hosts watcher run in
    the nursery of :meth:`running`; each connection is a task of its port's
    :class:`~trionet.serving.TCPService`, which closes its socket.
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
        self.watcher = HostsWatcher(hosts_path, table, log)
        self.hosts_wire = HostsWireCache()
        self.cache = AnswerCache(self.config.cache_size, min_ttl=self.config.min_ttl, max_ttl=self.config.max_ttl)
        self.admission = AdmissionLimit(
            self.config.limit, self.config.backlog, per_key=self.config.per_address or None
        )
        self.rules = SessionRules(self.config.quota, self.config.idle_timeout, self.config.session_timeout)
        self.line_service = TCPService("names", self.handle_line, log)
        self.dns_service = TCPService("names-dns", self.handle_dns, log)
        self.resolver: Resolver | None = None
        self._reload_requested = trio.Event()
        if hosts_path is not None and table is None:
            self._install(read_hosts(hosts_path))

    @property
    def table(self) -> HostsTable:
        """The hosts table served now."""
        return self.watcher.table

    @property
    def reloads(self) -> int:
        """How many times the hosts file was (re)loaded."""
        return self.watcher.reloads

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

        Error handling: a port that cannot be listened on raises
        :class:`~trionet.serving.ListenError` (inside an ``ExceptionGroup``).
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
        answer = self.watcher.table.lookup(name, rdtype)
        if answer is not None:
            return answer
        return self.cache.get(name, rdtype, trio.current_time())

    async def lookup(self, name: str, rdtype: str) -> Answer:
        """Answer ``name``/``rdtype``: hosts table, then cache, then upstream (never raises)."""
        answer = self.watcher.table.lookup(name, rdtype)
        if answer is not None:
            return answer
        assert self.resolver is not None, "lookup() needs a running server"
        return await self.resolver.resolve(name, rdtype)

    # --- the hosts file -----------------------------------------------------------

    def _install(self, read) -> None:
        if self.watcher.apply(read):
            self.hosts_wire.clear()  # its answers came from the old table

    async def _watch_hosts(self) -> None:
        watcher = self.watcher
        while True:
            with trio.move_on_after(self.config.reload_interval):
                await self._reload_requested.wait()
            forced = self._reload_requested.is_set()
            self._reload_requested = trio.Event()
            current = await trio.to_thread.run_sync(stamp, watcher.path)
            if watcher.needs_reload(current, forced):
                self._install(await trio.to_thread.run_sync(read_hosts, watcher.path))

    # --- what both ports do around a session ------------------------------------------

    async def _serve_client(self, conn: Connection, run_session) -> None:
        # The watcher (shutdown, stuck sends), giving back the client's slot,
        # and a gentle close.
        client = _Client(Session(self.rules), SendWatchdog(self.rules.stuck_send))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, conn, client, nursery.cancel_scope)
            try:
                await run_session(conn, client)
            finally:
                client.session.close()
                self._release(client)
                nursery.cancel_scope.cancel()
        await self._close_gently(conn.stream)

    async def _admit(self, conn: Connection, client: _Client, decoder, on_wait) -> bool:
        """Wait for a slot while the session keeps the client's input; True once admitted.

        Returns False when the client left while waiting (or the server is
        shutting down). Raises :class:`_Refused` when the waiting room is
        full, the client's address holds its share, or no slot came free
        within ``wait_timeout`` seconds.
        """
        client.key = _client_key(conn)
        session = client.session
        try:
            client.ticket = self.admission.try_enter(key=client.key)
        except ShareExceeded as exc:
            raise self._refusal(exc) from None
        if client.ticket is None:
            try:
                with client.wait_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._read_while_waiting, conn.stream, session, decoder, nursery.cancel_scope)
                        client.ticket = await self.admission.enter(
                            on_wait=on_wait, key=client.key, timeout=self.config.wait_timeout or math.inf
                        )
                        nursery.cancel_scope.cancel()
            except* (WaitingRoomFull, ShareExceeded, WaitTimeout) as group:
                raise self._refusal(next(leaves(group))) from None
            if client.ticket is None:
                return False
        session.admit(client.ticket.admitted)
        return True

    @staticmethod
    async def _read_while_waiting(stream, session: Session, decoder, line: trio.CancelScope) -> None:
        while True:
            kept = session.keep(await stream.receive_some(RECEIVE_CHUNK), decoder)
            if kept is Keep.LEAVE_LINE:
                line.cancel()
                return
            if kept is Keep.STOP_READING:
                await trio.sleep_forever()  # TCP holds back the rest

    def _refusal(self, exc: Exception) -> _Refused:
        """The bye reason and message for a client that ``exc`` turned away."""
        if isinstance(exc, ShareExceeded):
            return _Refused("busy", share_message(exc.key, exc.per_key))
        if isinstance(exc, WaitTimeout):
            return _Refused("wait-timeout", wait_timeout_message(exc.timeout))
        return _Refused("busy", busy_message(self.admission.limit, self.admission.waiting))

    def _release(self, client: _Client) -> None:
        if client.ticket is not None:
            self.admission.leave(client.ticket)
            client.ticket = None

    async def _watch(self, conn: Connection, client: _Client, scope: trio.CancelScope) -> None:
        """End the session at shutdown, and cancel ``scope`` when one send stays blocked too long.

        A client that does not read its answers must not hold its slot
        forever. A cancel scope around every send would cost more than the
        send itself on the DNS fast path, so the shared
        :class:`~trionet.serving.SendWatchdog` watches the sends instead.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.sends.watch, scope)
            await conn.draining.wait()
            client.session.end("shutdown")
            client.wait_scope.cancel()
        # (the watchdog runs until the connection's nursery is cancelled)

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

    # --- the line port --------------------------------------------------------------

    async def handle_line(self, conn: Connection) -> None:
        """Serve one client of the line protocol (the line port's TCPService handler)."""
        await self._serve_client(conn, self._line_session)

    async def _line_session(self, conn: Connection, client: _Client) -> None:
        stream = conn.stream
        proto = protocol.ServerLineProtocol()
        session = client.session
        sends = client.sends

        async def tell_place(place: int) -> None:
            await sends.send(stream, protocol.encode_wait(place, self.admission.limit))

        try:
            admitted = await self._admit(conn, client, proto, tell_place)
        except _Refused as refused:
            await sends.send(stream, protocol.encode_bye(refused.reason, refused.message))
            return
        if not admitted:
            if session.ending == "shutdown":
                await sends.send(stream, protocol.encode_bye("shutdown", session.bye()))
            return
        config = self.config
        welcome = protocol.encode_welcome(
            quota=config.quota,
            idle_timeout=config.idle_timeout,
            session_timeout=config.session_timeout,
            waited=client.ticket.waited,
        )
        await sends.send(stream, welcome)
        while True:
            if session.ending == "shutdown":
                await sends.send(stream, protocol.encode_bye("shutdown", session.bye()))
                return
            if session.pending:
                event = session.pending.popleft()
            else:
                deadline, reason = session.read_deadline(trio.current_time())
                client.wait_scope = trio.CancelScope(deadline=deadline)
                if session.ending:
                    client.wait_scope.cancel()
                event = None
                with client.wait_scope:
                    event = await receive_event(stream, proto)
                if event is None:
                    if session.ending == "shutdown":
                        continue
                    session.end(reason)
                    await sends.send(stream, protocol.encode_bye(reason, session.bye()))
                    return
            if event is EOF:
                return
            if isinstance(event, protocol.Quit):
                session.end("quit")
                await sends.send(stream, protocol.encode_bye("quit", session.bye()))
                return
            conn.requests += 1
            if isinstance(event, protocol.BadLine):
                reply = protocol.encode_bad_request(event.message)
            else:
                answer = await self.lookup(event.qname, event.rdtype)
                reply = protocol.encode_answer(answer, event.name)
            ending = session.after_answer(trio.current_time())
            if ending:
                await sends.send(stream, reply + protocol.encode_bye(ending, session.bye()))
                return
            await sends.send(stream, reply)

    # --- the DNS port -----------------------------------------------------------------

    async def handle_dns(self, conn: Connection) -> None:
        """Serve one DNS-over-TCP client (the DNS port's TCPService handler)."""
        await self._serve_client(conn, self._dns_session)

    async def _dns_session(self, conn: Connection, client: _Client) -> None:
        stream = conn.stream
        framer = LengthPrefixFramer(2, MAX_DNS_MESSAGE)
        session = client.session
        try:
            admitted = await self._admit(conn, client, framer, None)
        except _Refused:
            await self._refuse_dns(client, stream, framer)
            return
        if not admitted:
            return
        session_deadline = session.session_deadline()
        pending = session.pending
        known_answer = self.hosts_wire.get
        async with trio.open_nursery() as queries:
            replies = _DnsReplies(self, client.sends, stream, queries)
            out: list[bytes] = []  # answers to everything that arrived together go out in one send
            while not session.ending:
                if pending:
                    event = pending.popleft()
                else:
                    event = framer.next_event()
                    if event is NEED_DATA:
                        if out:
                            await replies.send(b"".join(out))
                            out.clear()
                        # Checked once per read, not per message: the fast path stays fast.
                        now = trio.current_time()
                        if now >= session_deadline:
                            session.end("session-timeout")
                            break
                        deadline, reason = session.read_deadline(now)
                        client.wait_scope = trio.CancelScope(deadline=deadline)
                        event = None
                        with client.wait_scope:
                            event = await receive_event(stream, framer)
                        if event is None:
                            session.end(reason)
                            break
                if event is EOF or type(event) is TruncatedFrame:
                    break
                # A 2-byte length prefix cannot announce more than MAX_DNS_MESSAGE: always a Frame.
                conn.requests += 1
                payload = event.payload
                known = known_answer(payload[2:])
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
                                await replies.send(b"".join(out))
                                out.clear()
                            await replies.resolve_soon(parsed)
                        else:
                            response = dnswire.build_response(parsed, answer)
                            if answer.source == "hosts":
                                self.hosts_wire.remember(payload, response)
                            out.append(_frame(response))
                if session.count():
                    break
            if out:
                await replies.send(b"".join(out))
        # Every answer is sent; give the slot to the next client before closing.
        self._release(client)
        if session.lets_client_close_first:
            await self._let_dns_client_close(stream, framer)

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

    async def _refuse_dns(self, client: _Client, stream: trio.abc.Stream, framer: LengthPrefixFramer) -> None:
        """Answer a turned-away DNS client with REFUSED, the DNS port's ``bye busy`` and ``bye wait-timeout``.

        The queries it sent while waiting are each refused; if there are
        none, its first query is, if it comes within :data:`REFUSE_WAIT` seconds.
        """
        frames = [event for event in client.session.pending if isinstance(event, Frame)]
        if not frames:
            with trio.move_on_after(REFUSE_WAIT):
                event = await receive_event(stream, framer)
                if isinstance(event, Frame):
                    frames.append(event)
        if frames:
            await client.sends.send(stream, b"".join(_frame(dnswire.build_refused(frame.payload)) for frame in frames))


class _DnsReplies:
    """Where a DNS connection's responses go out: the read loop's batches and the resolver tasks' answers.

    Every send goes through the connection's :class:`~trionet.serving.SendWatchdog`.
    Two tasks may send on the stream only while resolver tasks run, so the
    lock is taken only then: an uncontended ``trio.Lock`` still costs a
    scheduling point, as much as the send itself on the hosts-file fast path.
    At most ``max_in_flight`` queries resolve at once; :meth:`resolve_soon`
    waits for one to finish before it starts another, so the next message is
    not read meanwhile.
    """

    def __init__(self, server: NamesServer, sends: SendWatchdog, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self._server = server
        self._sends = sends
        self._stream = stream
        self._nursery = nursery
        self._lock = trio.Lock()
        self._in_flight = trio.Semaphore(server.config.max_in_flight)
        self.resolving = 0

    async def send(self, wire: bytes) -> None:
        """Send ``wire`` from the read loop."""
        if self.resolving:
            async with self._lock:
                await self._sends.send(self._stream, wire)
        else:
            await self._sends.send(self._stream, wire)  # nobody else can be sending: no lock to take

    async def resolve_soon(self, query: dnswire.DnsQuery) -> None:
        """Start resolving ``query`` in a task that sends its answer (waits while too many are in flight)."""
        await self._in_flight.acquire()
        self.resolving += 1
        self._nursery.start_soon(self._resolve_and_send, query)

    async def _resolve_and_send(self, query: dnswire.DnsQuery) -> None:
        try:
            answer = await self._server.lookup(query.qname, query.rdtype)
            async with self._lock:
                await self._sends.send(self._stream, _frame(dnswire.build_response(query, answer)))
        finally:
            self.resolving -= 1
            self._in_flight.release()


def _client_key(conn: Connection) -> str:
    """The key of the client's per-address share: its address (an IPv6 /64), else what the log calls it."""
    sock = getattr(conn.stream, "socket", None)
    try:
        host = sock.getpeername()[0] if sock is not None else conn.peer
    except OSError:
        host = conn.peer  # already reset
    return client_key(host)


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
