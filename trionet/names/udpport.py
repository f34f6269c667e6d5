"""The DNS port's UDP shell: one socket, one datagram in, at most one datagram out.

UDP has no connection, so nothing here is admitted, queued or counted in
``--limit`` or ``--quota``: each datagram is parsed by
:mod:`~trionet.names.dnswire`, answered from the hosts table or the cache
at once, or from upstream in a task of its own, and the answer is cut to
the client's size by :func:`~trionet.names.dnswire.truncate` (TC set, so
the client asks again over TCP, where the course's rules apply).

At most ``udp_lookups`` upstream lookups run at once for all UDP clients
together; a datagram that would need one more is dropped (and counted):
the client retries, and a flood of spoofed sources gains no reply to
reflect. A client address past its ``udp_rate`` answers per second
(:class:`~trionet.names.ratelimit.RateLimiter`) is dropped too, before any
work is done for it.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trionet.addresses import format_address
from trionet.limits import client_key
from trionet.log import get_logger
from trionet.names import dnswire
from trionet.names.answer import Answer
from trionet.names.hostswire import TimedWireCache
from trionet.names.querylog import answer_rcode, error_rcode
from trionet.names.ratelimit import RateLimiter

if TYPE_CHECKING:
    from trionet.names.server import NamesServer

__all__ = ["MAX_DATAGRAM", "UDP_LOOKUPS", "UdpStats", "open_udp_socket", "serve_udp"]

log = get_logger("names")

MAX_DATAGRAM = 65535
"""The largest datagram read (a query is far smaller; the rest is cut off and the parser says FORMERR)."""
UDP_LOOKUPS = 256
"""Upstream lookups the UDP port runs at once, for all its clients together (``--udp-lookups``)."""
_PASSING_ERRORS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOBUFS, errno.ENOMEM}
)
"""Errors of one receive that say nothing about the socket (a late ICMP error, a full buffer)."""


@dataclass
class UdpStats:
    """What the UDP port did, read by the metrics at scrape time.

    Attributes:
        answered: responses handed to the socket.
        truncated: responses sent truncated (TC set) because they did not fit.
        dropped_busy: queries dropped because ``max_lookups`` lookups were running.
        dropped_rate: queries dropped because their address was past ``--udp-rate``.
    """

    answered: int = 0
    truncated: int = 0
    dropped_busy: int = 0
    dropped_rate: int = 0


async def open_udp_socket(address: tuple) -> trio.socket.SocketType:
    """Return a UDP socket bound to ``address`` (a sockname of the TCP DNS listener: same host, same port).

    Error handling: ``OSError`` from ``bind`` (the port is taken for UDP) is raised.
    """
    family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as trio's TCP listeners do
        await sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_udp(
    server: NamesServer,
    sock: trio.socket.SocketType,
    stats: UdpStats,
    *,
    max_lookups: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer the DNS queries that arrive on ``sock`` until cancelled.

    Args:
        server: whose hosts table, cache, resolver and config answer.
        sock: a bound UDP socket (:func:`open_udp_socket`).
        stats: the counters to keep.
        max_lookups: upstream lookups at once; ``server.config.udp_lookups`` when None.

    Resource handling: ``sock`` is closed on the way out; lookup tasks run
    in a nursery of this call, so cancelling it ends them too.

    Error handling: a datagram that is not a query gets its error response;
    an ``OSError`` from one ``sendto`` is logged at debug level and the
    loop goes on, and so does one from ``recvfrom`` that says nothing about
    the socket (a late ICMP error, a full buffer); any other is raised.
    """
    ceiling = server.config.edns_udp_size
    lookups = trio.Semaphore(max_lookups or server.config.udp_lookups)
    limiter = RateLimiter(server.config.udp_rate)
    logging_queries = server.config.log_queries
    # Ready-made answers to hosts-file names (cut to size already; the query's
    # bytes decide its size limit). They skip parsing, and so the log line.
    known = server.hosts_wire.linked()
    known_answer = known.get if not logging_queries else _never_known
    cached = server.hosts_wire.link(TimedWireCache())  # ...and to cached names, until their TTL changes
    cached_answer = cached.get if not logging_queries else _never_cached
    cache_stats = server.cache.stats
    datagrams = _Datagrams(sock, stats)

    async def reply(query: dnswire.DnsQuery, answer: Answer, peer, started: float, wire: bytes | None = None) -> None:
        response = dnswire.build_response(query, answer)
        out = dnswire.truncate(query, response, dnswire.udp_limit(query, ceiling))
        if out is not response:
            stats.truncated += 1
        if wire is not None:
            if answer.source == "hosts":
                known.remember(wire, out)
            elif answer.source == "cache":
                until = server.cache.unchanged_until(query.qname, query.rdtype)
                if until > started:
                    cached.remember(wire, out, until)
        await datagrams.send(out, peer)
        if logging_queries:
            rcode = answer_rcode(answer)
            server.log_query(format_address(peer), "udp", query.qname, query.rdtype, answer.source, rcode, started)

    async def resolve(query: dnswire.DnsQuery, peer, started: float) -> None:
        try:
            await reply(query, await server.lookup(query.qname, query.rdtype), peer, started)
        finally:
            lookups.release()

    with sock, datagrams:
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        data, peer = await datagrams.receive()
                    except OSError as exc:
                        if exc.errno not in _PASSING_ERRORS:
                            raise
                        log.debug("names-dns udp: receive failed: %s", exc)
                        continue
                    if limiter.rate and not limiter.allow(client_key(peer[0]), trio.current_time()):
                        stats.dropped_rate += 1
                        continue
                    ready = known_answer(data[2:])
                    if ready is not None:
                        await datagrams.send(data[:2] + ready, peer)
                        continue
                    started = trio.current_time()
                    ready = cached_answer(data[2:], started)
                    if ready is not None:
                        cache_stats.hits += 1  # a cache hit that did not need the cache's lookup
                        await datagrams.send(data[:2] + ready, peer)
                        continue
                    parsed = dnswire.parse_query(data)
                    if isinstance(parsed, bytes):
                        await datagrams.send(parsed, peer)
                        if logging_queries:
                            server.log_query(format_address(peer), "udp", "-", "-", "-", error_rcode(parsed), started)
                        continue
                    answer = server.lookup_local(parsed.qname, parsed.rdtype)
                    if answer is not None:
                        await reply(parsed, answer, peer, started, data)
                        continue
                    try:
                        lookups.acquire_nowait()
                    except trio.WouldBlock:
                        stats.dropped_busy += 1
                        continue
                    nursery.start_soon(resolve, parsed, peer, started)
        finally:
            server.hosts_wire.unlink(known)
            server.hosts_wire.unlink(cached)


def _never_known(_query: bytes) -> None:
    return None


def _never_cached(_query: bytes, _now: float) -> None:
    return None


_ROUND = 64
"""Datagrams read without waiting before the UDP loop lets other tasks run (a checkpoint)."""


class _Datagrams:
    """Receive and send on the UDP socket; on a real socket, directly when it is ready.

    trio's ``await sock.recvfrom()`` and ``await sock.sendto()`` each take a
    scheduler round even when the socket is ready, which cost more than
    answering a hosts-file or cached name. On a real trio socket, a second
    handle on the same socket (``os.dup``; closed with this object) reads
    and sends at once, waits (:func:`trio.lowlevel.wait_readable`) only when
    nothing has arrived, and checkpoints once every :data:`_ROUND` datagrams
    read without waiting, so the other tasks (the TCP ports, lookups) still
    run and cancellation still reaches the loop. Any other socket (the
    tests' in-memory one) is used through its own methods.
    """

    def __init__(self, sock, stats: UdpStats) -> None:
        self._sock = sock
        self._stats = stats
        self._direct: socket.socket | None = None
        if isinstance(sock, trio.socket.SocketType):
            self._direct = socket.socket(fileno=os.dup(sock.fileno()))
            self._direct.setblocking(False)
        self._left = _ROUND

    def __enter__(self) -> _Datagrams:
        return self

    def __exit__(self, *exc) -> None:
        if self._direct is not None:
            self._direct.close()

    async def receive(self) -> tuple[bytes, tuple]:
        """The next datagram and its sender (``OSError`` as ``recvfrom`` raises it)."""
        direct = self._direct
        if direct is None:
            return await self._sock.recvfrom(MAX_DATAGRAM)
        while True:
            try:
                item = direct.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(direct)
                self._left = _ROUND
                continue
            self._left -= 1
            if not self._left:
                self._left = _ROUND
                await trio.lowlevel.checkpoint()
            return item

    async def send(self, wire: bytes, peer) -> None:
        """Send ``wire`` to ``peer``; a failure is logged at debug level, not raised (UDP: the client asks again)."""
        self._stats.answered += 1  # before any checkpoint: the client may read the answer before we resume
        try:
            if self._direct is not None:
                try:
                    self._direct.sendto(wire, peer)
                    return
                except BlockingIOError:
                    pass  # the socket's buffer is full: wait for room
            await self._sock.sendto(wire, peer)
        except OSError as exc:
            log.debug("names-dns udp: send to %s failed: %s", peer, exc)
