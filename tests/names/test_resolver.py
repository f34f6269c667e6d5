"""Upstream lookups: merged concurrent misses, failures and fallbacks, CNAME chains."""

import dns.asyncquery
import dns.message
import dns.rrset
import dns.rcode
import trio
import trio.testing

import trionet.names as names
from trionet.framing import encode_length_prefixed
from trionet.names import protocol
from trionet.names.answer import Answer
from trionet.names.resolver import Upstream, answer_from_response, parse_upstream, system_upstreams


async def test_ten_concurrent_misses_reach_the_upstream_once(start_names, upstream):
    # The upstream holds its answer until all ten clients have asked (the
    # server's own counters say so), however slowly they connect.
    upstream.held["slow.test"] = trio.Event()
    server, addrs = await start_names(limit=10, quota=0, per_address=0, upstream_timeout=30)  # ten clients, one address
    results: list[names.Resolved] = []

    async def client() -> None:
        async with names.connect(*addrs.line) as conn:
            results.append(await conn.resolve("slow.test"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(client)
        with trio.fail_after(30):
            while server.resolver is None or server.resolver.stats.merged < 9:
                await trio.sleep(0.01)
        upstream.held["slow.test"].set()
    assert upstream.counts[("slow.test", "A")] == 1
    assert len(results) == 10
    assert all(r.status == "ok" and r.addresses == ("192.0.2.20",) for r in results)
    assert {r.source for r in results} == {"dns"}
    assert server.resolver.stats.flights == 1 and server.resolver.stats.merged == 9


async def test_past_max_upstream_lookups_a_new_name_gets_servfail_at_once(autojump_clock, memory_names):
    server = await memory_names(limit=4, quota=0, upstream_timeout=5, max_upstream_lookups=2)
    first, second, joiner, refused = [await server.connect_memory() for _ in range(4)]
    for client in (first, second, joiner, refused):
        assert isinstance(await client.next(), protocol.Welcome)
    server.fake_upstream.slow.update({"one.test": 3, "two.test": 3})
    server.fake_upstream.add("one.test", "A", "192.0.2.1")
    server.fake_upstream.add("two.test", "A", "192.0.2.2")
    await first.send("one.test")
    await second.send("two.test")  # two lookups under way: the bound
    await joiner.send("one.test")  # joins a lookup: no new one
    while server.resolver.stats.merged < 1:
        await trio.sleep(0.01)
    start = trio.current_time()
    await refused.send("three.test")
    answer = await refused.next()
    assert answer.status == "servfail" and "2 upstream lookups already under way" in answer.message
    assert trio.current_time() - start < 1  # at once, not after the others
    assert server.resolver.stats.refused == 1
    assert [(await c.next()).status for c in (first, second, joiner)] == ["ok"] * 3
    await refused.send("three.test")  # the lookups are over: room again
    assert (await refused.next()).status == "nxdomain"
    assert server.fake_upstream.counts[("three.test", "A")] == 1


async def test_serve_stale_answers_from_an_expired_entry_while_the_upstream_fails(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, upstream_timeout=0.5, serve_stale=3600, idle_timeout=0, session_timeout=0)
    client = await server.connect_memory()
    assert isinstance(await client.next(), protocol.Welcome)
    upstream = server.fake_upstream
    upstream.add("old.test", "A", "192.0.2.7", ttl=60)
    await client.send("old.test")
    fresh = await client.next()
    assert (fresh.status, fresh.source, fresh.records) == ("ok", "dns", ("192.0.2.7",))
    await trio.sleep(120)  # expired an hour before the stale window closes
    upstream.drop.add("old.test")  # and now the upstream does not answer
    await client.send("old.test")
    stale = await client.next()
    assert (stale.status, stale.source, stale.ttl, stale.records) == ("ok", "stale", 30, ("192.0.2.7",))
    assert server.cache.stats.stale == 1
    upstream.drop.discard("old.test")  # back: the next question refreshes the entry
    upstream.add("old.test", "A", "192.0.2.8", ttl=60)
    await client.send("old.test")
    refreshed = await client.next()
    assert (refreshed.source, refreshed.records) == ("dns", ("192.0.2.8",))
    await trio.sleep(60 + 3600 + 1)  # past the stale window
    upstream.drop.add("old.test")
    await client.send("old.test")
    assert (await client.next()).status == "servfail"


async def test_without_serve_stale_an_expired_entry_is_not_served(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, upstream_timeout=0.5, idle_timeout=0, session_timeout=0)
    client = await server.connect_memory()
    assert isinstance(await client.next(), protocol.Welcome)
    server.fake_upstream.add("old.test", "A", "192.0.2.7", ttl=60)
    await client.send("old.test")
    assert (await client.next()).source == "dns"
    await trio.sleep(120)
    server.fake_upstream.drop.add("old.test")
    await client.send("old.test")
    assert (await client.next()).status == "servfail"
    assert len(server.cache) == 0  # forgotten at expiry, as before


async def test_merged_waiters_each_get_the_failure(autojump_clock, memory_names):
    server = await memory_names(limit=5, quota=0, upstream_timeout=0.3)
    clients = [await server.connect_memory() for _ in range(5)]
    for client in clients:
        assert isinstance(await client.next(), protocol.Welcome)
        await client.send("dropped.test")
    start = trio.current_time()
    results = [await client.next() for client in clients]
    assert trio.current_time() - start < 1  # the upstream timeout (+0.5 s), never a hang
    assert [r.status for r in results] == ["servfail"] * 5
    assert all("no answer within 0.3s" in r.message for r in results)
    assert server.fake_upstream.counts[("dropped.test", "A")] == 1
    assert server.resolver.stats.merged == 4
    # A failure is not cached: the next client gets a fresh try.
    await clients[0].send("dropped.test")
    assert (await clients[0].next()).status == "servfail"
    assert server.fake_upstream.counts[("dropped.test", "A")] == 2


async def test_a_shared_lookup_outlives_the_client_that_started_it(autojump_clock, memory_names):
    # docs/protocol/names.md: the upstream query runs in the server's own
    # nursery, so a client that disconnects does not cancel it for the others.
    server = await memory_names(limit=2, quota=0, idle_timeout=0, session_timeout=0, upstream_timeout=5)
    server.fake_upstream.slow["slow.test"] = 2.0
    starter = await server.connect_memory("dns")
    query = dns.message.make_query("slow.test", "A")
    await starter.stream.send_all(encode_length_prefixed(query.to_wire(), 2))
    await trio.testing.wait_all_tasks_blocked()
    assert server.resolver.stats.flights == 1  # the DNS client started the flight...
    other = await server.connect_memory()
    assert isinstance(await other.next(), protocol.Welcome)
    await other.send("slow.test")
    await trio.testing.wait_all_tasks_blocked()
    assert server.resolver.stats.merged == 1  # ...and the line client waits on it
    starter.server_side.reset()  # the starter's connection dies: its tasks are cancelled
    with trio.fail_after(60):
        reply = await other.next()
    assert (reply.status, reply.source, reply.records) == ("ok", "dns", ("192.0.2.20",))
    assert trio.current_time() == 2.0
    assert server.fake_upstream.counts[("slow.test", "A")] == 1
    assert server.cache.get("slow.test", "A", trio.current_time()) is not None  # and it was cached


async def _closed_udp_port() -> int:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


async def test_a_truncated_upstream_answer_is_asked_again_over_tcp(start_names, upstream):
    addresses = [f"192.0.2.{i}" for i in range(1, 41)]
    upstream.add("big.test", "A", *addresses)
    upstream.truncate_udp.add("big.test")
    server, addrs = await start_names(quota=0)
    async with names.connect(*addrs.line) as conn:
        answer = await conn.resolve("big.test")
    assert sorted(answer.addresses) == sorted(addresses)  # all of them: the TCP answer, not the empty TC one
    assert upstream.counts[("big.test", "A")] == 2  # once over UDP (TC), once over TCP
    assert server.resolver.stats.upstream_queries == 1


async def test_next_upstream_after_unreachable_timeout_and_servfail(start_names, upstream, nursery):
    from .conftest import FakeUpstream

    broken = FakeUpstream()
    broken.servfail.add("www.test")
    await nursery.start(broken.serve)
    mute = FakeUpstream()
    mute.drop.add("www.test")
    await nursery.start(mute.serve)
    dead = Upstream("127.0.0.1", await _closed_udp_port())
    server, addrs = await start_names(
        quota=0, upstreams=[dead, broken.upstream, mute.upstream, upstream.upstream], upstream_timeout=0.3
    )
    async with names.connect(*addrs.line) as conn:
        answer = await conn.resolve("www.test")
    assert answer.status == "ok" and answer.addresses == ("192.0.2.1",)
    assert broken.counts[("www.test", "A")] == 1 and mute.counts[("www.test", "A")] == 1


async def test_all_upstreams_failing_is_a_clear_error(start_names, upstream):
    dead = Upstream("127.0.0.1", await _closed_udp_port())
    server, addrs = await start_names(quota=0, upstreams=[dead, upstream.upstream])
    async with names.connect(*addrs.line) as conn:
        answer = await conn.resolve("broken.test")
    assert answer.status == "servfail"
    assert "answered SERVFAIL" in answer.message and str(dead) in answer.message
    # And SERVFAIL on the DNS port.
    response = await dns.asyncquery.tcp(dns.message.make_query("broken.test", "A"), addrs.dns[0], port=addrs.dns[1], timeout=5)
    assert response.rcode() == dns.rcode.SERVFAIL


async def test_no_upstream_at_all(start_names):
    server, addrs = await start_names(quota=0, upstreams=[])
    async with names.connect(*addrs.line) as conn:
        assert (await conn.resolve("www.test")).status == "servfail"
        assert (await conn.resolve("gateway.lan")).status == "ok"


async def test_cname_chains_are_followed(start_names, upstream):
    server, addrs = await start_names(quota=0)
    async with names.connect(*addrs.line) as conn:
        answer = await conn.resolve("alias2.test")
        assert answer.addresses == ("192.0.2.10",)
        assert answer.ttl == 50  # the smallest TTL along the chain
    response = await dns.asyncquery.tcp(dns.message.make_query("alias2.test", "A"), addrs.dns[0], port=addrs.dns[1], timeout=5)
    assert [r.name.to_text() for r in response.answer] == ["alias2.test.", "alias.test.", "target.test."]


async def test_a_dangling_cname_is_queried_further(start_names, upstream):
    upstream.follow_cnames = False  # an upstream that answers only the first step
    server, addrs = await start_names(quota=0)
    async with names.connect(*addrs.line) as conn:
        answer = await conn.resolve("alias2.test")
    assert answer.addresses == ("192.0.2.10",)
    assert upstream.counts[("alias.test", "A")] == 1 and upstream.counts[("target.test", "A")] == 1


def test_answer_from_response_loops_and_negative_ttls():
    from trionet.names.resolver import UpstreamFailure

    query = dns.message.make_query("a.test", "A")
    loop = dns.message.make_response(query)
    loop.answer.append(dns.rrset.from_text("a.test.", 60, "IN", "CNAME", "b.test."))
    loop.answer.append(dns.rrset.from_text("b.test.", 60, "IN", "CNAME", "a.test."))
    try:
        answer_from_response("a.test", "A", loop)
    except UpstreamFailure as exc:
        assert "loop" in str(exc)
    else:
        raise AssertionError("a CNAME loop must fail")
    nx = dns.message.make_response(query)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    nx.authority.append(dns.rrset.from_text("test.", 900, "IN", "SOA", "ns.test. a.test. 1 2 3 4 120"))
    answer, follow = answer_from_response("a.test", "A", nx)
    assert follow is None and answer.status == "nxdomain"
    assert answer.ttl == 120 and answer.soa[0] == "test"  # min(SOA TTL, MINIMUM)
    assert isinstance(answer, Answer)


def test_upstream_parsing(tmp_path):
    assert parse_upstream("192.0.2.1") == Upstream("192.0.2.1", 53)
    assert parse_upstream("192.0.2.1:5353") == Upstream("192.0.2.1", 5353)
    assert parse_upstream("[2001:db8::1]:5300") == Upstream("2001:db8::1", 5300)
    assert parse_upstream("2001:db8::1") == Upstream("2001:db8::1", 53)
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n")
    assert system_upstreams(str(conf)) == [Upstream("192.0.2.53"), Upstream("fe80::1")]
    assert system_upstreams(str(tmp_path / "missing")) == []


def _nxdomain(name: str, *authority: tuple[str, str, str]) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    response.set_rcode(dns.rcode.NXDOMAIN)
    for owner, rdtype, text in authority:
        response.authority.append(dns.rrset.from_text(owner, 900, "IN", rdtype, text))
    return response


def test_only_the_soa_of_an_enclosing_zone_is_believed():
    com_soa = ("com.", "SOA", "a.gtld-servers.net. nstld.verisign-grs.com. 1 2 3 4 86400")
    test_soa = ("example.test.", "SOA", "ns.example.test. admin.example.test. 1 2 3 4 60")
    # An unrelated zone's SOA alone: no authority, and so not cached (TTL 0).
    answer, _ = answer_from_response("nosuch.example.test", "A", _nxdomain("nosuch.example.test", com_soa))
    assert answer.status == "nxdomain" and answer.soa is None and answer.ttl == 0
    # Beside the right one, in either order: the enclosing zone wins.
    for authority in ((com_soa, test_soa), (test_soa, com_soa)):
        answer, _ = answer_from_response("nosuch.example.test", "A", _nxdomain("nosuch.example.test", *authority))
        assert answer.soa[0] == "example.test" and answer.ttl == 60
    # A sibling zone that merely shares a suffix of characters does not enclose it.
    answer, _ = answer_from_response("a.xample.test", "A", _nxdomain("a.xample.test", test_soa))
    assert answer.soa is None
    # The zone of the question itself counts (the apex).
    answer, _ = answer_from_response("example.test", "A", _nxdomain("example.test", test_soa))
    assert answer.soa[0] == "example.test"


def test_the_soa_must_enclose_the_end_of_the_cname_chain():
    response = _nxdomain("alias.test", ("other.", "SOA", "ns.other. a.other. 1 2 3 4 30"))
    response.answer.append(dns.rrset.from_text("alias.test.", 60, "IN", "CNAME", "gone.other."))
    answer, follow = answer_from_response("alias.test", "A", response)
    assert follow is None and answer.soa == ("other", "ns.other. a.other. 1 2 3 4 30")
    foreign = _nxdomain("alias.test", ("test.", "SOA", "ns.test. a.test. 1 2 3 4 30"))
    foreign.answer.append(dns.rrset.from_text("alias.test.", 60, "IN", "CNAME", "gone.other."))
    answer, _ = answer_from_response("alias.test", "A", foreign)
    assert answer.soa is None  # test. is not a zone of gone.other


def test_ns_records_for_another_name_are_not_an_answer():
    response = dns.message.make_response(dns.message.make_query("www.test", "NS"))
    response.answer.append(dns.rrset.from_text("com.", 900, "IN", "NS", "evil.example."))
    response.authority.append(dns.rrset.from_text("test.", 900, "IN", "NS", "evil.example."))
    answer, _ = answer_from_response("www.test", "NS", response)
    assert answer.status == "nodata" and answer.records == ()


async def test_a_foreign_soa_is_not_passed_on(start_names, upstream):
    upstream.extra_authority.append(
        dns.rrset.from_text("com.", 86400, "IN", "SOA", "a.gtld-servers.net. nstld.verisign-grs.com. 1 2 3 4 86400")
    )
    _server, addrs = await start_names(quota=0)
    response = await dns.asyncquery.tcp(
        dns.message.make_query("nosuch.test", "A"), addrs.dns[0], port=addrs.dns[1], timeout=5
    )
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert [r.name.to_text() for r in response.authority] == ["test."]
    assert response.authority[0].ttl <= 60  # the test zone's negative TTL, not com.'s day


# --- prefetch: an entry asked for near the end of its TTL is refreshed in the background ---


async def test_prefetch_refreshes_an_entry_asked_for_in_its_last_tenth(autojump_clock, memory_names):
    server = await memory_names(limit=2, quota=0, idle_timeout=0, session_timeout=0, upstream_timeout=30)
    client, other = await server.connect_memory(), await server.connect_memory()
    for c in (client, other):
        assert isinstance(await c.next(), protocol.Welcome)
    upstream = server.fake_upstream
    upstream.add("hot.test", "A", "192.0.2.50", ttl=100)
    await client.send("hot.test")
    assert (await client.next()).source == "dns"
    await trio.sleep(50)  # half its TTL: no prefetch
    await client.send("hot.test")
    assert (await client.next()).ttl == 50
    await trio.sleep(5)
    assert upstream.counts[("hot.test", "A")] == 1 and server.resolver.stats.prefetches == 0

    await trio.sleep(40)  # 95 s: in the last 10 s of its TTL
    upstream.add("hot.test", "A", "192.0.2.51", ttl=100)
    upstream.slow["hot.test"] = 3  # the refresh takes 3 s; clients do not wait for it
    start = trio.current_time()
    for c in (client, other, client):
        await c.send("hot.test")
        cached = await c.next()
        assert (cached.source, cached.ttl, cached.records) == ("cache", 5, ("192.0.2.50",))
    assert trio.current_time() - start < 0.1
    await trio.sleep(1)
    assert ("hot.test", "A") in server.resolver._flights  # the refresh, under way
    assert server.resolver.stats.prefetches == 1 and server.cache.stats.due == 3  # one at a time
    await trio.sleep(3)  # the refresh is in
    assert upstream.counts[("hot.test", "A")] == 2
    await client.send("hot.test")
    fresh = await client.next()
    assert (fresh.source, fresh.records) == ("cache", ("192.0.2.51",)) and fresh.ttl > 90
    assert upstream.counts[("hot.test", "A")] == 2


async def test_prefetch_gives_way_to_max_upstream_lookups_and_a_failed_one_keeps_the_entry(autojump_clock, memory_names):
    server = await memory_names(limit=2, quota=0, idle_timeout=0, session_timeout=0, upstream_timeout=1, max_upstream_lookups=1)
    client, busy = await server.connect_memory(), await server.connect_memory()
    for c in (client, busy):
        assert isinstance(await c.next(), protocol.Welcome)
    upstream = server.fake_upstream
    upstream.add("hot.test", "A", "192.0.2.50", ttl=100)
    await client.send("hot.test")
    assert (await client.next()).source == "dns"
    await trio.sleep(95)
    upstream.held["busy.test"] = trio.Event()
    upstream.add("busy.test", "A", "192.0.2.60")
    await busy.send("busy.test")  # holds the only upstream lookup
    while not server.resolver._flights:
        await trio.sleep(0.01)
    await client.send("hot.test")
    assert (await client.next()).records == ("192.0.2.50",)  # served, and no refresh: no room
    assert server.resolver.stats.prefetches_skipped == 1 and upstream.counts[("hot.test", "A")] == 1
    upstream.held["busy.test"].set()
    assert (await busy.next()).status == "ok"

    upstream.drop.add("hot.test")  # now a refresh times out...
    await client.send("hot.test")
    assert (await client.next()).records == ("192.0.2.50",)
    await trio.sleep(2)
    assert server.resolver.stats.prefetches == 1 and server.resolver.stats.failures == 1
    await client.send("hot.test")  # ...and the entry is still there, counting down
    kept = await client.next()
    assert (kept.source, kept.records) == ("cache", ("192.0.2.50",)) and kept.ttl <= 3
