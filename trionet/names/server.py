"""The trio shell of the name server: its ports, one admission limit, the hosts watcher.

:class:`NamesServer` runs two :class:`~trionet.serving.TCPService` s, the
line protocol and DNS over TCP, and a third for DNS over TLS (RFC 7858) when
it has a certificate, that share one
:class:`~trionet.limits.AdmissionLimit`: at most ``limit`` clients are served
at once across the ports, the next ``backlog`` wait in FIFO order, and the
rest are turned away with a "busy" reply; so is a client whose address
already holds ``per_address`` slots and places in line.

This module and the two port shells, :mod:`~trionet.names.lineport` and
:mod:`~trionet.names.dnsport`, move bytes and time between the sockets and
the sans-IO cores; they decide nothing themselves. What a connection does
next is the :class:`~trionet.names.session.Session`'s call: its stages
(waiting, admitted, closing), what it keeps while it waits, its quota, its
idle and session deadlines and its bye reason. The hosts table is
:mod:`~trionet.names.watcher`'s. A DNS-over-TLS client's handshake runs in
its :class:`~trionet.serving.TCPService`, under ``--tls-handshake-timeout``,
before any of this: a client that stalls it or fails it never waits in
line or holds a slot. What happens here, for every port:

1. *waiting*: while it waits for a slot (:meth:`NamesServer.admit`) the
   client's input is read and given to its session, so that a client that
   leaves is noticed and leaves the line; a line client is told its place
   each time it changes;
2. *admitted*: the port's shell answers requests; lookups go to the hosts
   table, then the cache, then the
   :class:`~trionet.names.resolver.Resolver`;
3. *closing*: the slot is given back first, so the next client is admitted
   at once; then the server sends EOF and reads what the client still sends
   (for at most :data:`LINGER` seconds) before closing, so the last answer
   is not lost to a TCP reset. At shutdown every session ends with
   ``shutdown`` after the request in hand.

The hosts file is reloaded when it changes (checked every
``reload_interval`` seconds) and on :meth:`NamesServer.request_reload`
(SIGHUP in the CLI); connections are never dropped for a reload.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import trio

from trionet.errors import leaves
from trionet.limits import (
    AdmissionLimit,
    ShareExceeded,
    Ticket,
    WaitingRoomFull,
    WaitTimeout,
    client_key,
)
from trionet.log import get_logger
from trionet.names import protocol
from trionet.names.answer import Answer
from trionet.names.cache import AnswerCache
from trionet.names.dnsport import serve_dns
from trionet.names.dnswire import EDNS_PAYLOAD
from trionet.names.hosts import HostsTable
from trionet.names.hostswire import HostsWireCache, TimedWireCache
from trionet.names.lineport import serve_line
from trionet.names.querylog import query_line
from trionet.names.resolver import Resolver, Transport, Upstream
from trionet.names.session import (
    DNS_CLOSE_WAIT,
    WAIT_BUFFER,
    Keep,
    Refused,
    Session,
    SessionRules,
    busy_message,
    share_message,
    wait_timeout_message,
)
from trionet.names.udpport import UDP_LOOKUPS, UdpStats, open_udp_socket, serve_udp
from trionet.names.watcher import HostsWatcher, read_hosts, stamp
from trionet.serving import RECEIVE_CHUNK, Connection, SendWatchdog, TCPService
from trionet.tls import TLSServerConfig, server_context

__all__ = [
    "DEFAULT_DNS_PORT",
    "DNS_CLOSE_WAIT",
    "DOT_ALPN",
    "LINGER",
    "WAIT_BUFFER",
    "NamesAddresses",
    "NamesConfig",
    "NamesServer",
    "serve_names",
]

log = get_logger("names")
query_log = get_logger("names.queries")

DEFAULT_DNS_PORT = 7453
LINGER = 2.0
"""Seconds a closing connection may take to read what the client still sends after our EOF."""
DOT_ALPN = "dot"
"""The ALPN protocol ID of DNS over TLS (RFC 7858, IANA registry)."""


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
        max_upstream_lookups: names looked up upstream at once; past it SERVFAIL.
        serve_stale: seconds past its TTL an answer may still be served (TTL 30,
            source ``stale``) while every upstream fails (RFC 8767); 0 for never.
        reload_interval: seconds between checks of the hosts file.
        max_in_flight: DNS queries of one connection being resolved at once;
            the next one is not read until one finishes.
        udp: whether the DNS port also serves UDP (same host, same port number).
        edns_udp_size: the largest UDP response, in bytes, even to a client
            that announces more in EDNS (512 without EDNS).
        udp_lookups: UDP queries waiting for an upstream at once, all clients
            together; past it queries are dropped.
        udp_rate: UDP answers per second per client address (an IPv6 /64),
            in bursts of as many; past it queries are dropped. 0 for no limit.
        log_queries: log one line per query (:mod:`~trionet.names.querylog`),
            on the ``trionet.names.queries`` logger at INFO.
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
    max_upstream_lookups: int = 1000
    serve_stale: float = 0.0
    reload_interval: float = 2.0
    max_in_flight: int = 32
    udp: bool = True
    edns_udp_size: int = EDNS_PAYLOAD
    udp_lookups: int = UDP_LOOKUPS
    udp_rate: int = 100
    log_queries: bool = False


@dataclass(frozen=True)


class NamesAddresses:
    """Where a running server listens (what ``nursery.start(serve_names, ...)`` returns)."""

    line: tuple[str, int]
    dns: tuple[str, int]
    dot: tuple[str, int] | None = None
    """The DNS-over-TLS port, when the server was given one."""


@dataclass(eq=False)


class Client:
    """The trio side of one connection: its :class:`Session`, and what the server's watcher touches."""

    session: Session
    sends: SendWatchdog
    draining: trio.Event | None = None  # its port's: set when that port shuts down
    ticket: Ticket | None = None
    key: str = ""  # the client's address, as its per-address share counts it
    wait_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    scope: trio.CancelScope | None = None  # the whole session's: cancelled when a send stays blocked
    peer_closed: bool = False  # its EOF was read: nothing is left to linger for


class NamesServer:
    """The name server: hosts table, cache, resolver and the two ports.

    Args:
        config: the rules.
        upstreams: the DNS servers asked for names not in the hosts table.
        hosts_path: the hosts file, loaded at start and watched; None for none.
        table: a table to use instead of (or until) ``hosts_path`` is loaded.
        transport: how upstream queries are sent (see
            :class:`~trionet.names.resolver.Resolver`); UDP then TCP by default.
        tls: the certificate to serve DNS over TLS with (``--tls-cert``,
            ``--tls-key``); its context is rebuilt to offer ALPN ``dot``.
            Needed for :meth:`serve`'s ``dot_port``.

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
        tls: TLSServerConfig | None = None,
    ) -> None:
        self._transport = transport
        self.config = config or NamesConfig()
        self.upstreams = list(upstreams)
        self.hosts_path = hosts_path
        self.watcher = HostsWatcher(hosts_path, table, log)
        self.hosts_wire = HostsWireCache()
        self.cache_wire = self.hosts_wire.link(TimedWireCache())  # the DNS-over-TCP responses of cache hits
        self.cache = AnswerCache(
            self.config.cache_size,
            min_ttl=self.config.min_ttl,
            max_ttl=self.config.max_ttl,
            stale_for=self.config.serve_stale,
        )
        self.admission = AdmissionLimit(
            self.config.limit, self.config.backlog, per_key=self.config.per_address or None
        )
        self.rules = SessionRules(self.config.quota, self.config.idle_timeout, self.config.session_timeout)
        # How sessions ended, by bye reason ("left" when the client went
        # first); admission waits and lookups go to the observers the
        # metrics attach (trionet/names/metrics.py), if any.
        self.endings: collections.Counter[str] = collections.Counter()
        self.on_admitted: Callable[[float], None] | None = None
        self.on_lookup: Callable[[str, float], None] | None = None
        self.line_service = TCPService("names", self.handle_line, log)
        self.dns_service = TCPService("names-dns", self.handle_dns, log)
        self.dot_service: TCPService | None = None
        self._clients: set[Client] = set()  # the connections being served, for the watcher
        if tls is not None:
            tls = dataclasses.replace(tls, context=server_context(tls.cert, tls.key, alpn=[DOT_ALPN]))
            # The same handler as the DNS port: the session sees a stream either way.
            self.dot_service = TCPService("names-dot", self.handle_dns, log, tls=tls)
        self.udp_stats = UdpStats()
        self._udp_scope = trio.CancelScope()
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
        dot_port: int | None = None,
        listen_backlog: int | None = None,
        task_status: trio.TaskStatus[NamesAddresses] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on the ports and serve until cancelled or shut down.

        Reports a :class:`NamesAddresses` through ``task_status``, so tests
        use ``port=0, dns_port=0`` (and ``dot_port=0``) and learn the ports.
        ``dot_port`` serves DNS over TLS; None (the default) serves none.

        Unless ``config.udp`` is off, every address the DNS port's TCP
        listeners got is also bound for UDP (:mod:`~trionet.names.udpport`),
        so ``dns_port=0`` serves both on one port number.

        Error handling: a port that cannot be listened on raises
        :class:`~trionet.serving.ListenError` (inside an ``ExceptionGroup``);
        a DNS port number taken for UDP raises its ``OSError`` the same way.
        ``dot_port`` without ``tls`` given to the server raises ``ValueError``.
        """
        if dot_port is not None and self.dot_service is None:
            raise ValueError("a DNS-over-TLS port needs a certificate: NamesServer(tls=...)")
        async with self.running():
            async with trio.open_nursery() as services:
                line = await services.start(partial(self.line_service.serve, backlog=listen_backlog), host, port)
                dns = await services.start(partial(self.dns_service.serve, backlog=listen_backlog), host, dns_port)
                if self.config.udp:
                    sockets = []
                    try:
                        for address in dns:
                            sockets.append(await open_udp_socket(address))
                    except BaseException:
                        for sock in sockets:
                            sock.close()
                        raise
                    services.start_soon(self._serve_udp, sockets)
                dot = None
                if dot_port is not None:
                    dot = await services.start(partial(self.dot_service.serve, backlog=listen_backlog), host, dot_port)
                    dot = tuple(dot[0][:2])
                task_status.started(NamesAddresses(tuple(line[0][:2]), tuple(dns[0][:2]), dot))

    async def _serve_udp(self, sockets: list) -> None:
        with self._udp_scope:  # cancelled by shutdown(): UDP has no session to let finish
            async with trio.open_nursery() as nursery:
                for sock in sockets:
                    nursery.start_soon(serve_udp, self, sock, self.udp_stats)

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
                max_flights=self.config.max_upstream_lookups,
            )
            if self.hosts_path is not None:
                background.start_soon(self._watch_hosts)
            background.start_soon(self._watch_clients)
            try:
                yield
            finally:
                background.cancel_scope.cancel()

    def shutdown(self, grace: float) -> None:
        """Stop accepting on every port; clients get ``bye shutdown`` after the request in hand."""
        self.line_service.shutdown(grace)
        self.dns_service.shutdown(grace)
        if self.dot_service is not None:
            self.dot_service.shutdown(grace)
        self._udp_scope.cancel()

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
        if answer is None:
            assert self.resolver is not None, "lookup() needs a running server"
            started = trio.current_time()
            answer = await self.resolver.resolve(name, rdtype)
            if self.on_lookup is not None:
                self.on_lookup(answer.source, trio.current_time() - started)
        elif self.on_lookup is not None:
            self.on_lookup(answer.source, 0.0)
        return answer

    def log_query(self, client: str, transport: str, name: str, rdtype: str, source: str, rcode: str, started: float) -> None:
        """Log one query's line (the shells call this only when ``config.log_queries`` is on)."""
        query_log.info(query_line(client, transport, name, rdtype, source, rcode, trio.current_time() - started))

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
        # Watched by the server's one watcher (shutdown, stuck sends), then
        # the client's slot given back, and a gentle close.
        client = Client(Session(self.rules), SendWatchdog(self.rules.stuck_send), conn.draining)
        client.scope = trio.CancelScope()
        with client.scope:
            self._clients.add(client)
            if conn.draining.is_set():
                _end_for_shutdown(client)
            try:
                try:
                    await run_session(self, conn, client)
                except* trio.BrokenResourceError as group:
                    if not all(_tls_eof(exc) for exc in leaves(group)):
                        raise
                self.endings[client.session.ending or "left"] += 1
            finally:
                self._clients.discard(client)
                client.session.close()
                self.release(client)
        if not client.peer_closed:
            await self._close_gently(conn.stream)

    async def admit(self, conn: Connection, client: Client, decoder, on_wait) -> bool:
        """Wait for a slot while the session keeps the client's input; True once admitted (both ports use it).

        Returns False when the client left while waiting (or the server is
        shutting down). Raises :class:`Refused` when the waiting room is
        full, the client's address holds its share, or no slot came free
        within ``wait_timeout`` seconds.
        """
        client.key = _client_key(conn)
        session = client.session
        try:
            client.ticket = self.admission.try_enter(key=client.key)
        except ShareExceeded as exc:
            raise self._refusal(exc, session) from None
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
                raise self._refusal(next(leaves(group)), session) from None
            if client.ticket is None:
                return False
        session.admit(client.ticket.admitted)
        if self.on_admitted is not None:
            self.on_admitted(client.ticket.waited)
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

    def _refusal(self, exc: Exception, session: Session) -> Refused:
        """The bye reason and message for a client that ``exc`` turned away (its session ends for it)."""
        if isinstance(exc, ShareExceeded):
            refused = Refused("busy", share_message(exc.key, exc.per_key))
        elif isinstance(exc, WaitTimeout):
            refused = Refused("wait-timeout", wait_timeout_message(exc.timeout))
        else:
            refused = Refused("busy", busy_message(self.admission.limit, self.admission.waiting))
        session.end(refused.reason)
        return refused

    def release(self, client: Client) -> None:
        """Give back the client's slot, if it holds one (at once, so the next client is admitted)."""
        if client.ticket is not None:
            self.admission.leave(client.ticket)
            client.ticket = None

    async def _watch_clients(self) -> None:
        """End every session at its port's shutdown, and cancel one whose send stays blocked too long.

        A client that does not read its answers must not hold its slot
        forever. A cancel scope around every send would cost more than the
        send itself on the DNS fast path, so each connection's
        :class:`~trionet.serving.SendWatchdog` counts its sends, and this one
        task looks at all of them every ``stuck_send / 2`` seconds (a
        watcher task per connection cost two task starts and a nursery per
        connection, measured in docs/benchmarks.md). Runs in :meth:`running`.
        """
        async with trio.open_nursery() as nursery:
            for service in (self.line_service, self.dns_service, self.dot_service):
                if service is not None:
                    nursery.start_soon(self._end_sessions_at_shutdown, service.draining)
            period = self.rules.stuck_send / 2
            while True:
                await trio.sleep(period)
                for client in self._clients:
                    if client.sends.look():
                        client.scope.cancel()

    async def _end_sessions_at_shutdown(self, draining: trio.Event) -> None:
        await draining.wait()
        for client in self._clients:
            if client.draining is draining:
                _end_for_shutdown(client)

    @staticmethod
    async def _close_gently(stream: trio.abc.Stream) -> None:
        """Send EOF, then read and drop what the client still sends until it closes (bounded).

        Not called once the client's EOF was read: its data is all read, so
        closing cannot reset the connection, and there is nothing to wait for.

        TLS cannot half-close: a TLS stream is left to its
        :class:`~trionet.serving.TCPService`, which ends every TLS connection
        with close_notify (the DNS session has already let the client close first).
        """
        if isinstance(stream, trio.SSLStream):
            return
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
        await self._serve_client(conn, serve_line)

    # --- the DNS port -----------------------------------------------------------------

    async def handle_dns(self, conn: Connection) -> None:
        """Serve one DNS-over-TCP client, or a DNS-over-TLS one after its handshake (both ports' handler)."""
        await self._serve_client(conn, serve_dns)


def _end_for_shutdown(client: Client) -> None:
    """The client's port is shutting down: its session ends after the request in hand, a wait ends now."""
    client.session.end("shutdown")
    client.wait_scope.cancel()


def _tls_eof(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS client closing its connection without TLS's close_notify.

    Many DNS-over-TLS clients (``dig +tls``) do. A DNS message carries its
    own length, so a cut one is seen as such (RFC 7858 does not ask for
    close_notify); this client simply left, as one closing a TCP connection.
    """
    cause = exc.__cause__
    return isinstance(cause, ssl.SSLEOFError) or "UNEXPECTED_EOF" in str(cause)


def _client_key(conn: Connection) -> str:
    """The key of the client's per-address share: its address (an IPv6 /64), else what the log calls it."""
    stream = conn.stream
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    try:
        host = sock.getpeername()[0] if sock is not None else conn.peer
    except OSError:
        host = conn.peer  # already reset
    return client_key(host)


async def serve_names(
    server: NamesServer,
    host: str = "127.0.0.1",
    port: int = protocol.DEFAULT_PORT,
    dns_port: int = DEFAULT_DNS_PORT,
    *,
    dot_port: int | None = None,
    task_status: trio.TaskStatus[NamesAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``server`` until cancelled; ``await nursery.start(serve_names, server, "127.0.0.1", 0, 0)``."""
    await server.serve(host, port, dns_port, dot_port=dot_port, task_status=task_status)
