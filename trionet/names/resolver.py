"""The upstream resolver: cache first, then real DNS queries with dnspython's async API under trio.

Concurrent misses for the same (name, type) are merged: the first one starts
a *flight* (one upstream query, run in the resolver's own nursery so that it
does not die with the client that started it) and every later one waits on
the flight's :class:`trio.Event`. Each waiter then gets its own answer, or
its own SERVFAIL answer saying what failed.

An entry the cache finds in the last tenth of its TTL
(:data:`~trionet.names.cache.PREFETCH_SHARE`) is *prefetched*: the client
gets the cached answer at once, and a flight refreshes the entry in the
background, unless one for it is already under way (one refresh per entry at
a time) or ``max_flights`` are (prefetch is the first thing to give up, it
is never refused with SERVFAIL). A refresh that fails leaves the entry as it
was.

Upstreams are tried in order; a timeout, an unreachable upstream, or an
answer other than NOERROR/NXDOMAIN moves on to the next one. When every
upstream failed, the answer is SERVFAIL with the reasons. Every wait is
bounded (``timeout`` per upstream), so a client never hangs.

Turning a DNS response into an :class:`~trionet.names.answer.Answer`
(following CNAME chains, reading the SOA of a negative answer, taken only
from a zone that encloses the name) is pure and lives in
:func:`answer_from_response`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import trio

from trionet.addresses import format_address
from trionet.log import get_logger
from trionet.names.answer import Answer, any_answer
from trionet.names.cache import AnswerCache

__all__ = [
    "MAX_CNAME_HOPS",
    "Resolver",
    "ResolverStats",
    "Upstream",
    "answer_from_response",
    "Transport",
    "UpstreamFailure",
    "parse_upstream",
    "system_upstreams",
    "udp_then_tcp",
]

log = get_logger("names")

MAX_CNAME_HOPS = 8
"""CNAME records followed for one lookup before giving up with SERVFAIL."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """A DNS server to ask."""

    host: str
    port: int = 53

    def __str__(self) -> str:
        return format_address(self.host, self.port)


def parse_upstream(text: str) -> Upstream:
    """Parse ``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address.

    Raises:
        ValueError: the port is not a number from 1 to 65535.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    return Upstream(host, number)


def system_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """The nameservers of ``path``, read by dnspython's own resolv.conf parser (empty if none or unreadable).

    A scoped IPv6 address (``fe80::1%eth0``) loses its scope: the upstream
    socket is opened by address.
    """
    try:
        config = dns.resolver.Resolver(filename=path, configure=True)
    except dns.resolver.NoResolverConfiguration:
        return []
    return [Upstream(str(server).split("%", 1)[0], config.port) for server in config.nameservers]


class UpstreamFailure(Exception):
    """One upstream could not give a usable answer."""


def _find(section: list, name: dns.name.Name, rdtype: int):
    for rrset in section:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


def _enclosing_soa(section: list, name: dns.name.Name):
    """The SOA in ``section`` of the closest zone that encloses ``name``, or None.

    An upstream (or whoever forges its answers) may put any record in the
    authority section; an SOA whose owner is not ``name`` or one of its
    ancestors (``com.`` for a name under ``example.test``) says nothing about
    ``name`` and is dropped, so it is neither cached nor passed on.
    """
    best = None
    for rrset in section:
        if rrset.rdtype != dns.rdatatype.SOA or rrset.rdclass != dns.rdataclass.IN or not len(rrset):
            continue
        if name.is_subdomain(rrset.name) and (best is None or len(rrset.name) > len(best.name)):
            best = rrset
    return best


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


def answer_from_response(name: str, rdtype: str, response: dns.message.Message) -> tuple[Answer, str | None]:
    """Read the answer to ``name``/``rdtype`` out of an upstream response.

    Returns:
        The answer (source ``dns``, TTL the smallest of the records used, not
        yet clamped), and the name to query next when the response ends in
        a CNAME whose target it does not resolve (else None).

    Only records about the name asked are believed: answer records must be
    owned by the name (or the CNAME chain's next name), and the SOA of a
    negative answer must be that of a zone enclosing it; any other SOA (and
    every NS record of the authority section) is dropped.

    Raises:
        UpstreamFailure: the response's rcode is neither NOERROR nor
            NXDOMAIN, or the CNAME chain loops.
    """
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise UpstreamFailure(f"answered {dns.rcode.to_text(rcode)}")
    wanted = dns.rdatatype.from_text(rdtype)
    current = dns.name.from_text(name)
    chain: list[tuple[str, str]] = []
    ttl = math.inf
    seen = {current}
    while True:
        rrset = _find(response.answer, current, wanted)
        if rrset is not None:
            ttl = min(ttl, rrset.ttl)
            records = tuple(rdata.to_text() for rdata in rrset)
            return Answer(name, rdtype, "ok", records, int(ttl), "dns", _text(current), tuple(chain)), None
        cname = _find(response.answer, current, dns.rdatatype.CNAME) if wanted != dns.rdatatype.CNAME else None
        if cname is None:
            break
        target = cname[0].target
        if target in seen:
            raise UpstreamFailure(f"CNAME loop at {_text(target)}")
        seen.add(target)
        chain.append((_text(current), _text(target)))
        ttl = min(ttl, cname.ttl)
        current = target
    # Only the authority of a zone that encloses the name answered counts (the
    # end of the CNAME chain: that is the name the negative answer is about).
    # NS records of the authority section are never used or passed on.
    soa = _enclosing_soa(response.authority, current)
    if chain and rcode == dns.rcode.NOERROR and soa is None:
        partial = Answer(name, rdtype, "nodata", (), int(ttl), "dns", _text(current), tuple(chain))
        return partial, _text(current)
    status = "nxdomain" if rcode == dns.rcode.NXDOMAIN else "nodata"
    soa_pair = None
    if soa is not None:
        ttl = min(ttl, soa.ttl, soa[0].minimum)  # RFC 2308 section 5
        soa_pair = (_text(soa.name), soa[0].to_text())
    if ttl == math.inf:
        ttl = 0
    return Answer(name, rdtype, status, (), int(ttl), "dns", _text(current), tuple(chain), soa_pair), None


async def udp_then_tcp(query: dns.message.Message, upstream: Upstream, timeout: float) -> dns.message.Message:
    """Send ``query`` to ``upstream`` over UDP, and again over TCP if the answer was truncated.

    dnspython's own :func:`dns.asyncquery.udp_with_fallback` (on trio through
    dnspython's trio backend): a random source port per query, answers from
    elsewhere or with another ID ignored while it waits.

    Raises:
        dns.exception.Timeout: no answer within ``timeout`` seconds.
        OSError: the upstream is unreachable.
        dns.exception.DNSException: the answer is not a valid response.
    """
    response, _used_tcp = await dns.asyncquery.udp_with_fallback(
        query, upstream.host, timeout=timeout, port=upstream.port, ignore_unexpected=True
    )
    return response


Transport = Callable[[dns.message.Message, Upstream, float], Awaitable[dns.message.Message]]


@dataclass
class ResolverStats:
    """Counters, for logs and tests."""

    flights: int = 0
    merged: int = 0
    upstream_queries: int = 0
    failures: int = 0
    refused: int = 0  # lookups answered SERVFAIL at once: --max-upstream-lookups were in flight
    prefetches: int = 0  # background refreshes of entries near the end of their TTL
    prefetches_skipped: int = 0  # due entries not refreshed: --max-upstream-lookups were in flight


@dataclass(eq=False)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None


class Resolver:
    """Answer from the cache, or ask the upstreams (one flight per (name, type) at a time).

    Args:
        upstreams: the servers to ask, in order.
        cache: where answers are kept.
        nursery: where flights run; it must outlive every :meth:`resolve` call.
        timeout: seconds to wait for one upstream before trying the next.
        transport: ``await transport(query, upstream, timeout)`` sends one
            query and returns the response; the default is :func:`udp_then_tcp`.
            Tests pass an in-memory one to run under trio's mock clock.
        max_flights: distinct names being looked up upstream at once; a new
            one past it is answered SERVFAIL at once, saying so (a flood of
            random names cannot pile up tasks and sockets).
    """

    def __init__(
        self,
        upstreams: list[Upstream],
        cache: AnswerCache,
        nursery: trio.Nursery,
        *,
        timeout: float = 2.0,
        transport: Transport | None = None,
        max_flights: int = 1000,
    ) -> None:
        self.upstreams = list(upstreams)
        self.max_flights = max_flights
        self._transport = transport or udp_then_tcp
        self.cache = cache
        self.timeout = timeout
        self.stats = ResolverStats()
        self._nursery = nursery
        self._flights: dict[tuple[str, str], _Flight] = {}
        cache.on_due = self._prefetch

    async def resolve(self, name: str, rdtype: str) -> Answer:
        """Return the answer for ``name``/``rdtype``: cached, merged with a flight, or fetched.

        Never raises for a DNS failure: the answer is then SERVFAIL with a
        message. Takes at most about ``timeout`` seconds per upstream and CNAME hop.
        ANY is answered at once with one HINFO record, never asked upstream
        (RFC 8482; :func:`~trionet.names.answer.any_answer` says why).
        """
        if rdtype == "ANY":
            return any_answer(name)
        cached = self.cache.get(name, rdtype, trio.current_time())
        if cached is not None:
            return cached
        key = (name, rdtype)
        flight = self._flights.get(key)
        if flight is None:
            if len(self._flights) >= self.max_flights:
                self.stats.refused += 1
                return Answer(
                    name, rdtype, "servfail",
                    message=f"the server is busy: {self.max_flights} upstream lookups already under way; try again",
                )  # fmt: skip
            flight = self._flights[key] = _Flight()
            self.stats.flights += 1
            self._nursery.start_soon(self._fly, key, flight)
        else:
            self.stats.merged += 1
        await flight.done.wait()
        assert flight.answer is not None
        return flight.answer

    def _prefetch(self, name: str, rdtype: str) -> None:
        """Refresh ``name``/``rdtype`` in the background (the cache found it near its end); never waits."""
        key = (name, rdtype)
        if key in self._flights:
            return  # its refresh (or a lookup) is already under way
        if len(self._flights) >= self.max_flights:
            self.stats.prefetches_skipped += 1
            return
        flight = self._flights[key] = _Flight()
        self.stats.prefetches += 1
        self._nursery.start_soon(self._fly, key, flight)

    async def _fly(self, key: tuple[str, str], flight: _Flight) -> None:
        name, rdtype = key
        try:
            answer = await self._fetch(name, rdtype)
            if answer.status == "servfail":
                self.stats.failures += 1
                # RFC 8767: while the upstreams fail, an expired answer
                # still inside --serve-stale beats SERVFAIL.
                answer = self.cache.get_stale(name, rdtype, trio.current_time()) or answer
            else:
                stored = self.cache.put(answer, trio.current_time())
                answer = answer.with_ttl(stored or self.cache.clamp(answer.ttl), "dns")
        except Exception as exc:  # a bug must not leave the waiters hanging
            log.exception("lookup of %s %s failed", name, rdtype)
            answer = Answer(name, rdtype, "servfail", message=f"internal error: {exc}")
        finally:
            del self._flights[key]
        flight.answer = answer
        flight.done.set()

    async def _fetch(self, name: str, rdtype: str) -> Answer:
        chain: list[tuple[str, str]] = []
        ttl = math.inf
        qname = name
        for _hop in range(MAX_CNAME_HOPS):
            try:
                response = await self._ask(qname, rdtype)
                answer, follow = answer_from_response(qname, rdtype, response)
            except UpstreamFailure as exc:
                return Answer(name, rdtype, "servfail", message=str(exc))
            chain.extend(answer.chain)
            if follow is None:
                if answer.status == "ok" or answer.soa is not None:
                    ttl = min(ttl, answer.ttl)
                else:
                    ttl = 0  # a negative answer without an SOA is not cached
                return Answer(
                    name, rdtype, answer.status, answer.records, int(ttl), "dns", answer.owner, tuple(chain), answer.soa
                )
            ttl = min(ttl, answer.ttl)
            chain_names = {alias for alias, _ in chain}
            if follow in chain_names:
                return Answer(name, rdtype, "servfail", message=f"CNAME loop at {follow}")
            qname = follow
        return Answer(name, rdtype, "servfail", message=f"CNAME chain longer than {MAX_CNAME_HOPS}")

    async def _ask(self, qname: str, rdtype: str) -> dns.message.Message:
        if not self.upstreams:
            raise UpstreamFailure("no upstream DNS server configured")
        reasons = []
        for upstream in self.upstreams:
            query = dns.message.make_query(qname, rdtype)
            self.stats.upstream_queries += 1
            try:
                # dnspython has its own timeout; the cancel scope is the
                # guarantee that nothing below can wait longer.
                with trio.fail_after(self.timeout + 0.5):
                    response = await self._transport(query, upstream, self.timeout)
            except (dns.exception.Timeout, trio.TooSlowError):
                reasons.append(f"{upstream}: no answer within {self.timeout:g}s")
                continue
            except OSError as exc:
                reasons.append(f"{upstream}: {exc.strerror or exc}")
                continue
            except dns.exception.DNSException as exc:
                reasons.append(f"{upstream}: bad response ({exc})")
                continue
            rcode = response.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                reasons.append(f"{upstream}: answered {dns.rcode.to_text(rcode)}")
                continue
            return response
        raise UpstreamFailure("upstream failure: " + "; ".join(reasons))
