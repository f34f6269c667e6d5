"""The DNS port's shell: moves one DNS-over-TCP (or DNS-over-TLS) client's bytes between its socket and its session.

Messages are framed by a 2-byte length (:class:`~trionet.framing.LengthPrefixFramer`)
and parsed and answered by :mod:`~trionet.names.dnswire`; a repeated
hosts-file query is answered from :class:`~trionet.names.hostswire.HostsWireCache`,
a repeated cached one from :class:`~trionet.names.hostswire.TimedWireCache`.
What happens next (the quota, the deadlines, whether the client may close
first) is the :class:`~trionet.names.session.Session`'s call; admission, the
shutdown watcher and the gentle close around it are
:class:`~trionet.names.server.NamesServer`'s.

The DNS-over-TLS port (RFC 7858) runs the same shell on the TLS stream its
:class:`~trionet.serving.TCPService` handed over after the handshake; what
differs is only the EDNS options the answers carry
(:func:`~trionet.names.dnswire.add_stream_options`: padding over TLS only)
and the transport named in the query log.

This is the benchmark's hot path: the loop answers everything that arrived
together with one send, checks the clock once per read rather than per
message, opens the resolver nursery (and takes the send lock) only once a
query must go upstream, and reads and sends directly on the socket when it
is ready
(:class:`~trionet.serving.DirectSocketIO`: one scheduler round per read
instead of one per call, measured in docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from trionet.framing import (
    NEED_DATA,
    Frame,
    LengthPrefixFramer,
    encode_length_prefixed,
)
from trionet.names import dnswire
from trionet.names.querylog import answer_rcode, error_rcode
from trionet.names.session import DNS_CLOSE_WAIT, REFUSE_WAIT, Refused
from trionet.serving import RECEIVE_CHUNK, Connection, DirectSocketIO, SendWatchdog, receive_event

if TYPE_CHECKING:
    from trionet.names.server import Client, NamesServer

__all__ = ["MAX_DNS_MESSAGE", "serve_dns"]

MAX_DNS_MESSAGE = 65535
"""The largest DNS message over TCP: what a 2-byte length prefix can say."""


async def serve_dns(server: NamesServer, conn: Connection, client: Client) -> None:
    """Serve one DNS-over-TCP client through its session: wait, answer (pipelined), let it close.

    Error handling: a broken connection raises out of here (the
    :class:`~trionet.serving.TCPService` logs it); a message that is not a
    query gets its error response and the connection goes on.
    """
    stream = conn.stream
    framer = LengthPrefixFramer(2, MAX_DNS_MESSAGE)
    session = client.session
    try:
        admitted = await server.admit(conn, client, framer, None)
    except Refused:
        await _refuse(client, stream, framer)
        return
    if not admitted:
        return
    io = DirectSocketIO(stream)
    replies = _Replies(server, client.sends, stream, conn.peer, _StreamOptions(server, conn), io)
    # The nursery for resolver tasks is opened only when a query must go
    # upstream: a connection answered from the hosts file and the cache
    # (the benchmark's, and most clients') never pays for one.
    upstream = await _answer(server, conn, client, framer, replies)
    if upstream is not None:
        async with trio.open_nursery() as queries:
            replies.open_resolving(queries)
            await replies.resolve_soon(upstream)
            if not session.count():
                await _answer(server, conn, client, framer, replies)
    # Every answer is sent; give the slot to the next client before closing.
    server.release(client)
    if session.lets_client_close_first:
        client.peer_closed = await _let_client_close(stream, framer)


async def _answer(
    server: NamesServer, conn: Connection, client: Client, framer: LengthPrefixFramer, replies: _Replies
) -> dnswire.DnsQuery | None:
    """Answer the client's queries until its session ends, pipelined; or stop at one that must go upstream.

    Hosts-file, cached and error answers are made here; a query to resolve
    goes to :meth:`_Replies.resolve_soon`, which needs the resolver
    nursery. While none is open, every answer so far is sent and the query
    is returned, for :func:`serve_dns` to open it and call this again.
    """
    session = client.session
    session_deadline = session.session_deadline()
    pending = session.pending
    logging_queries = server.config.log_queries
    # The ready-made answers skip parsing, and so would skip the query's log line.
    known_answer = _never_known if logging_queries else server.hosts_wire.get
    cached_answer = _never_cached if logging_queries else server.cache_wire.get
    cache_stats = server.cache.stats
    options = replies.options
    transport = options.transport
    io = replies.io
    out: list[bytes] = []  # answers to everything that arrived together go out in one send
    while not session.ending:
        if pending:
            event = pending.popleft()  # kept while waiting: Frame, TruncatedFrame or EOF
            payload = event.payload if type(event) is Frame else event
        else:
            # The bare payload: no Frame is built per message only to be taken apart.
            payload = framer.next_payload()
            if payload is NEED_DATA:
                if out:
                    await replies.send(b"".join(out))
                    out.clear()
                # Checked once per read, not per message: the fast path stays fast.
                now = trio.current_time()
                if now >= session_deadline:
                    session.end("session-timeout")
                    break
                if io.read_ready(framer):
                    await trio.lowlevel.checkpoint()  # read without waiting: let the others run
                    continue
                deadline, reason = session.read_deadline(now)
                client.wait_scope = trio.CancelScope(deadline=deadline)
                with client.wait_scope:
                    await io.wait(framer)
                if client.wait_scope.cancelled_caught:
                    session.end(reason)
                    break
                io.read_ready(framer)  # what woke us up (a direct socket's wait reads nothing)
                continue
        if type(payload) is not bytes:  # EOF or TruncatedFrame
            client.peer_closed = True
            break
        # A 2-byte length prefix cannot announce more than MAX_DNS_MESSAGE: never Oversized.
        conn.requests += 1
        known = known_answer(payload[2:])
        if known is None:
            known = cached_answer(payload[2:], trio.current_time())
            if known is not None:
                cache_stats.hits += 1  # a cache hit that did not need the cache's lookup
        if known is not None:
            out.append(_frame(payload[:2] + known))
        else:
            parsed = dnswire.parse_stream_query(payload)
            if isinstance(parsed, bytes):
                out.append(_frame(parsed))
                if logging_queries:
                    server.log_query(conn.peer, transport, "-", "-", "-", error_rcode(parsed), trio.current_time())
            else:
                started = trio.current_time() if logging_queries else 0.0
                answer = server.lookup_local(parsed.qname, parsed.rdtype)
                if answer is None:
                    if out:
                        await replies.send(b"".join(out))
                        out.clear()
                    if replies.nursery is None:
                        return parsed  # not counted yet: the caller counts it
                    await replies.resolve_soon(parsed)
                else:
                    response = dnswire.build_response(parsed, answer)
                    if parsed.keepalive >= 0 or parsed.padding:
                        # Not remembered: a padded answer is for TLS only.
                        response = options.add(parsed, response)
                    elif answer.source == "hosts":
                        server.hosts_wire.remember(payload, response)
                    elif answer.source == "cache":
                        until = server.cache.unchanged_until(parsed.qname, parsed.rdtype)
                        if until > trio.current_time():
                            server.cache_wire.remember(payload, response, until)
                    out.append(_frame(response))
                    if logging_queries:
                        rcode = answer_rcode(answer)
                        server.log_query(conn.peer, transport, parsed.qname, parsed.rdtype, answer.source, rcode, started)
        if session.count():
            break
    if out:
        await replies.send(b"".join(out))
    return None

async def _let_client_close(stream: trio.abc.Stream, framer: LengthPrefixFramer) -> bool:
    """After the quota, give a DNS client a moment to close first, as RFC 7766 6.2.3 asks of clients.

    The side that closes first keeps the TIME_WAIT state, so a server
    that lets clients close keeps none; and a client that counts its own
    queries (``dnsperf -O num-queries-per-conn=N``) is not surprised by
    an EOF while it closes. A client that sends more, or stays silent for
    :data:`DNS_CLOSE_WAIT` seconds, is closed by the server at once.

    Returns True when the client closed (its EOF was read).
    """
    if framer.next_event() is not NEED_DATA:
        return False  # it already sent more than its quota
    with trio.move_on_after(DNS_CLOSE_WAIT):
        try:
            return not await stream.receive_some(RECEIVE_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    return False


async def _refuse(client: Client, stream: trio.abc.Stream, framer: LengthPrefixFramer) -> None:
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


class _StreamOptions:
    """What a connection's answers carry besides the answer: the keepalive value, padding if TLS.

    ``transport`` is ``tls`` when the connection came through the TLS port's
    handshake, else ``tcp`` (the query log's word for it).
    """

    __slots__ = ("keepalive", "pad", "transport")

    def __init__(self, server: NamesServer, conn: Connection) -> None:
        self.keepalive = dnswire.keepalive_units(server.config.idle_timeout)
        self.pad = conn.service.tls is not None
        self.transport = "tls" if self.pad else "tcp"

    def add(self, query: dnswire.DnsQuery, response: bytes) -> bytes:
        """``response`` with the options ``query`` asked for (see :func:`~trionet.names.dnswire.add_stream_options`)."""
        return dnswire.add_stream_options(query, response, self.keepalive, self.pad)


class _Replies:
    """Where a DNS connection's responses go out: the read loop's batches and the resolver tasks' answers.

    Every send goes through the connection's :class:`~trionet.serving.SendWatchdog`.
    Two tasks may send on the stream only while resolver tasks run, so the
    lock is taken only then: an uncontended ``trio.Lock`` still costs a
    scheduling point, as much as the send itself on the hosts-file fast path.
    At most ``max_in_flight`` queries resolve at once; :meth:`resolve_soon`
    waits for one to finish before it starts another, so the next message is
    not read meanwhile. The resolver nursery, the lock and the bound exist
    only once :meth:`open_resolving` is called, at the connection's first
    query that must go upstream.
    """

    __slots__ = ("_in_flight", "_lock", "_peer", "_sends", "_server", "_stream", "io", "nursery", "options", "resolving")

    def __init__(
        self,
        server: NamesServer,
        sends: SendWatchdog,
        stream: trio.abc.Stream,
        peer: str,
        options: _StreamOptions,
        io: DirectSocketIO,
    ) -> None:
        self._server = server
        self.options = options
        self.io = io
        self._peer = peer
        self._sends = sends
        self._stream = stream
        self.nursery: trio.Nursery | None = None
        """Where resolver tasks run; None until :meth:`open_resolving`."""
        self._lock: trio.Lock | None = None
        self._in_flight: trio.Semaphore | None = None
        self.resolving = 0

    def open_resolving(self, nursery: trio.Nursery) -> None:
        """From now on queries may resolve in tasks of ``nursery``, at most ``max_in_flight`` at once."""
        self.nursery = nursery
        self._lock = trio.Lock()
        self._in_flight = trio.Semaphore(self._server.config.max_in_flight)

    async def send(self, wire: bytes) -> None:
        """Send ``wire`` from the read loop."""
        if self.resolving:
            async with self._lock:
                await self._sends.send(self._stream, wire)
        else:
            # Nobody else can be sending: no lock to take, and what the
            # socket takes at once needs no scheduler round.
            rest = self.io.send_now(wire)
            if rest:
                await self._sends.send(self._stream, rest)

    async def resolve_soon(self, query: dnswire.DnsQuery) -> None:
        """Start resolving ``query`` in a task that sends its answer (waits while too many are in flight)."""
        await self._in_flight.acquire()
        self.resolving += 1
        self.nursery.start_soon(self._resolve_and_send, query)

    async def _resolve_and_send(self, query: dnswire.DnsQuery) -> None:
        try:
            started = trio.current_time()
            answer = await self._server.lookup(query.qname, query.rdtype)
            response = self.options.add(query, dnswire.build_response(query, answer))
            async with self._lock:
                await self._sends.send(self._stream, _frame(response))
            if self._server.config.log_queries:
                rcode = answer_rcode(answer)
                transport = self.options.transport
                self._server.log_query(self._peer, transport, query.qname, query.rdtype, answer.source, rcode, started)
        finally:
            self.resolving -= 1
            self._in_flight.release()


def _never_known(_query: bytes) -> None:
    return None


def _never_cached(_query: bytes, _now: float) -> None:
    return None


def _frame(wire: bytes) -> bytes:
    if len(wire) > MAX_DNS_MESSAGE:
        wire = dnswire.build_error(wire[:4], dnswire.SERVFAIL)
    return encode_length_prefixed(wire, 2)
