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
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trionet.addresses import format_address
from trionet.limits import client_key
from trionet.log import get_logger
from trionet.names import dnswire
from trionet.names.answer import Answer
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

    async def reply(query: dnswire.DnsQuery, answer: Answer, peer, started: float) -> None:
        response = dnswire.build_response(query, answer)
        wire = dnswire.truncate(query, response, dnswire.udp_limit(query, ceiling))
        if wire is not response:
            stats.truncated += 1
        await _send(sock, wire, peer, stats)
        if logging_queries:
            rcode = answer_rcode(answer)
            server.log_query(format_address(peer), "udp", query.qname, query.rdtype, answer.source, rcode, started)

    async def resolve(query: dnswire.DnsQuery, peer, started: float) -> None:
        try:
            await reply(query, await server.lookup(query.qname, query.rdtype), peer, started)
        finally:
            lookups.release()

    with sock:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    data, peer = await sock.recvfrom(MAX_DATAGRAM)
                except OSError as exc:
                    if exc.errno not in _PASSING_ERRORS:
                        raise
                    log.debug("names-dns udp: receive failed: %s", exc)
                    continue
                if limiter.rate and not limiter.allow(client_key(peer[0]), trio.current_time()):
                    stats.dropped_rate += 1
                    continue
                started = trio.current_time()
                parsed = dnswire.parse_query(data)
                if isinstance(parsed, bytes):
                    await _send(sock, parsed, peer, stats)
                    if logging_queries:
                        server.log_query(format_address(peer), "udp", "-", "-", "-", error_rcode(parsed), started)
                    continue
                answer = server.lookup_local(parsed.qname, parsed.rdtype)
                if answer is not None:
                    await reply(parsed, answer, peer, started)
                    continue
                try:
                    lookups.acquire_nowait()
                except trio.WouldBlock:
                    stats.dropped_busy += 1
                    continue
                nursery.start_soon(resolve, parsed, peer, started)


async def _send(sock: trio.socket.SocketType, wire: bytes, peer, stats: UdpStats) -> None:
    stats.answered += 1  # before the send's checkpoint: the client may read the answer before we resume
    try:
        await sock.sendto(wire, peer)
    except OSError as exc:
        log.debug("names-dns udp: send to %s failed: %s", peer, exc)
