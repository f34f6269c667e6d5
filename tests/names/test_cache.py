"""The answer cache: TTL countdown and expiry, negative caching (RFC 2308), the LRU bound.

The sans-IO cache is driven with plain numbers; the same rules are then
checked through a whole server over in-memory streams under the mock clock.
"""

import pytest
import trio

from trionet.names.answer import Answer
from trionet.names.cache import AnswerCache
from trionet.names.protocol import Reply, Welcome

SOA = ("test", "ns.test. admin.test. 1 3600 600 86400 60")


def ok(name: str, ttl: int) -> Answer:
    return Answer(name, "A", "ok", ("192.0.2.1",), ttl, "dns")


def test_ttl_counts_down_and_expires():
    cache = AnswerCache(10)
    assert cache.put(ok("a.test", 300), now=1000.0) == 300
    answer = cache.get("a.test", "A", now=1010.5)
    assert answer.ttl == 289 and answer.source == "cache"
    assert cache.get("a.test", "A", now=1299.0).ttl == 1
    # Rounded down: with less than a second left it is gone (never a TTL of 0 from the cache).
    assert cache.get("a.test", "A", now=1299.2) is None
    assert ("a.test", "A") not in cache
    assert cache.stats.expired == 1


def test_ttls_are_clamped():
    cache = AnswerCache(10, min_ttl=60, max_ttl=600)
    assert cache.put(ok("low.test", 5), now=0) == 60
    assert cache.put(ok("high.test", 86400), now=0) == 600
    assert cache.get("low.test", "A", now=59).ttl == 1
    assert cache.get("high.test", "A", now=601) is None
    zero = AnswerCache(10)
    assert zero.put(ok("zero.test", 0), now=0) == 0
    assert zero.get("zero.test", "A", now=0) is None


def test_negative_answers_are_cached_only_with_an_soa():
    cache = AnswerCache(10)
    nx = Answer("nope.test", "A", "nxdomain", ttl=60, soa=SOA)
    nodata = Answer("www.test", "MX", "nodata", ttl=60, soa=SOA)
    assert cache.put(nx, now=0) == 60
    assert cache.put(nodata, now=0) == 60
    assert cache.get("nope.test", "A", now=30).status == "nxdomain"
    assert cache.get("www.test", "MX", now=59).ttl == 1
    assert cache.get("nope.test", "A", now=61) is None
    assert cache.put(Answer("x.test", "A", "nxdomain", ttl=60), now=0) == 0  # no SOA
    assert cache.put(Answer("y.test", "A", "servfail", ttl=60), now=0) == 0
    assert len(cache) == 1


def test_lru_bound_evicts_the_least_recently_used():
    cache = AnswerCache(3)
    for name in ("a", "b", "c"):
        cache.put(ok(name, 100), now=0)
    assert cache.get("a", "A", now=1) is not None  # a is now the most recent
    cache.put(ok("d", 100), now=2)
    assert len(cache) == 3
    assert cache.get("b", "A", now=3) is None
    assert all(cache.get(n, "A", now=3) is not None for n in ("a", "c", "d"))
    assert cache.stats.evicted == 1


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        AnswerCache(0)
    with pytest.raises(ValueError):
        AnswerCache(1, min_ttl=10, max_ttl=5)


async def _ask(client, line: str) -> Reply:
    await client.send(line)
    reply = await client.next()
    assert isinstance(reply, Reply), reply
    return reply


async def test_countdown_and_expiry_through_the_server(autojump_clock, memory_names):
    server = await memory_names(quota=0, idle_timeout=0, session_timeout=0)
    up = server.fake_upstream
    client = await server.connect_memory()
    assert isinstance(await client.next(), Welcome)
    first = await _ask(client, "short.test")  # TTL 5 upstream
    assert (first.source, first.ttl, first.records) == ("dns", 5, ("192.0.2.2",))
    await trio.sleep(2)
    again = await _ask(client, "short.test")
    assert (again.source, again.ttl) == ("cache", 3)
    await trio.sleep(3)
    expired = await _ask(client, "short.test")
    assert expired.source == "dns"
    assert up.counts[("short.test", "A")] == 2


async def test_negative_caching_through_the_server(autojump_clock, memory_names):
    server = await memory_names(quota=0, idle_timeout=0, session_timeout=0)
    up = server.fake_upstream
    up.soa_minimum = 60
    client = await server.connect_memory()
    await client.next()
    nx = await _ask(client, "nope.test")
    assert (nx.status, nx.source, nx.ttl) == ("nxdomain", "dns", 60)
    await trio.sleep(30)
    cached = await _ask(client, "nope.test")
    assert (cached.status, cached.source, cached.ttl) == ("nxdomain", "cache", 30)
    # NODATA: the name exists upstream, without the type.
    nodata = await _ask(client, "www.test NS")
    assert (nodata.status, nodata.source) == ("nodata", "dns")
    assert (await _ask(client, "www.test NS")).source == "cache"
    await trio.sleep(31)
    assert (await _ask(client, "nope.test")).source == "dns"
    assert up.counts[("nope.test", "A")] == 2
    assert up.counts[("www.test", "NS")] == 1


async def test_min_ttl_and_max_ttl_through_the_server(autojump_clock, memory_names):
    server = await memory_names(quota=0, idle_timeout=0, session_timeout=0, min_ttl=30, max_ttl=100)
    client = await server.connect_memory()
    await client.next()
    assert (await _ask(client, "short.test")).ttl == 30
    assert (await _ask(client, "target.test")).ttl == 100
    await trio.sleep(29)
    assert (await _ask(client, "short.test")).source == "cache"
    await trio.sleep(72)
    assert (await _ask(client, "target.test")).source == "dns"


async def test_lru_bound_through_the_server(autojump_clock, memory_names):
    server = await memory_names(quota=0, idle_timeout=0, cache_size=2)
    up = server.fake_upstream
    client = await server.connect_memory()
    await client.next()
    for name in ("www.test", "short.test", "target.test", "www.test"):
        await _ask(client, name)
    assert len(server.cache) == 2
    assert up.counts[("www.test", "A")] == 2  # evicted by target.test, asked again


def test_an_entry_in_the_last_tenth_of_its_ttl_is_due():
    cache = AnswerCache(10)
    due: list[tuple[str, str]] = []
    cache.on_due = lambda name, rdtype: due.append((name, rdtype))
    cache.put(Answer("a.test", "MX", "ok", ("10 mx.test.",), 200), now=0)
    assert cache.get("a.test", "MX", now=179.9) is not None and due == []
    assert cache.get("a.test", "MX", now=180).ttl == 20 and due == [("a.test", "MX")]
    cache.put(Answer("a.test", "MX", "ok", ("20 mx.test.",), 200), now=185)  # the refresh replaces it
    assert cache.get("a.test", "MX", now=190).records == ("20 mx.test.",) and len(due) == 1
    assert cache.stats.due == 1


def test_a_served_answer_is_unchanged_until_its_ttl_drops_a_second_or_prefetch_is_due():
    cache = AnswerCache(10)
    cache.put(ok("a.test", 100), now=0)
    assert cache.unchanged_until("a.test", "A") == 0.0  # nothing served yet
    assert cache.get("a.test", "A", now=5.3).ttl == 94
    assert cache.unchanged_until("a.test", "A") == 6.0  # at 6.0+ the TTL reads 93
    assert cache.get("a.test", "A", now=89.5).ttl == 10
    assert cache.unchanged_until("a.test", "A") == 90.0  # the prefetch window opens
    assert cache.get("a.test", "A", now=95).ttl == 5
    assert cache.unchanged_until("a.test", "A") == 90.0  # in the past: not to be kept
    assert cache.unchanged_until("other.test", "A") == 0.0


def test_timed_wire_cache():
    from trionet.names.hostswire import TimedWireCache

    wire = TimedWireCache(entries=2)
    wire.remember(b"\x00\x01query", b"\x00\x01answer", until=10)
    assert wire.get(b"query", 9.9) == b"answer"
    assert wire.get(b"query", 10) is None and len(wire) == 0  # expired, and forgotten
    for i in range(3):
        wire.remember(b"\x00\x01q%d" % i, b"\x00\x01a", until=10)
    assert len(wire) == 1  # full means emptied


async def test_repeated_dns_queries_count_down_the_ttl_and_still_prefetch(autojump_clock, memory_names):
    """The ready-made responses of cache hits never show a stale TTL, and hits in the last tenth still prefetch."""
    import dns.message

    from trionet.framing import LengthPrefixFramer, encode_length_prefixed
    from trionet.serving import receive_event

    server = await memory_names(limit=1, quota=0, idle_timeout=0, session_timeout=0)
    server.fake_upstream.add("hot.test", "A", "192.0.2.9", ttl=100)
    client = await server.connect_memory("dns")
    framer = LengthPrefixFramer(2, 65535)
    query = dns.message.make_query("hot.test", "A")

    async def ask() -> int:
        await client.stream.send_all(encode_length_prefixed(query.to_wire(), 2))
        response = dns.message.from_wire((await receive_event(client.stream, framer)).payload)
        assert response.id == query.id and response.answer[0][0].to_text() == "192.0.2.9"
        return response.answer[0].ttl

    start = trio.current_time()
    assert await ask() == 100  # from upstream
    await trio.sleep(0.5)
    assert [await ask() for _ in range(3)] == [99, 99, 99]  # the last two are ready-made
    assert len(server.cache_wire) == 1
    hits = server.cache.stats.hits
    assert hits == 3
    await trio.sleep_until(start + 1.5)
    assert [await ask() for _ in range(2)] == [98, 98]
    await trio.sleep_until(start + 89.5)
    assert [await ask() for _ in range(2)] == [10, 10]
    assert server.resolver.stats.prefetches == 0
    await trio.sleep_until(start + 90.2)
    assert await ask() == 9
    assert server.resolver.stats.prefetches == 1  # the window opened: the hit went through the cache
    assert server.cache.stats.hits == hits + 5
