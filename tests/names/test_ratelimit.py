"""The UDP port's limits: the per-address token bucket (pure), and the shell's rate and lookup caps under the mock clock."""

import errno

import dns.message
import dns.rcode
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.names.answer import Answer
from trionet.names.hosts import parse_hosts
from trionet.names.ratelimit import RateLimiter
from trionet.names.server import NamesConfig, NamesServer
from trionet.names.udpport import UdpStats, serve_udp

from .conftest import HOSTS


def test_a_burst_then_the_rate():
    limiter = RateLimiter(3)
    assert [limiter.allow("a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("b", 0.0)  # another address has its own bucket
    assert not limiter.allow("a", 0.2)  # 0.6 of a token
    assert limiter.allow("a", 0.4)  # 1.2 tokens
    assert [limiter.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]  # refills to the burst only


def test_zero_is_off_and_nonsense_is_refused():
    limiter = RateLimiter(0)
    assert all(limiter.allow("a", 0.0) for _ in range(1000)) and len(limiter) == 0
    with pytest.raises(ValueError):
        RateLimiter(-1)


def test_the_table_is_bounded_and_forgets_the_least_recent():
    limiter = RateLimiter(1, max_addresses=3)
    for key in "abc":
        assert limiter.allow(key, 0.0)
    assert not limiter.allow("a", 0.0)  # a is now the most recent
    assert limiter.allow("d", 0.0)  # b is forgotten
    assert len(limiter) == 3
    assert limiter.allow("b", 0.0)  # back with a full bucket; c goes
    assert not limiter.allow("a", 0.0)  # a was kept


@given(
    st.integers(1, 50),
    st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 0.5)), max_size=300),
    st.integers(1, 6),
)
@settings(max_examples=200, deadline=None)
def test_no_key_gets_more_than_burst_plus_rate_times_time(rate, events, max_addresses):
    limiter = RateLimiter(rate, max_addresses=max_addresses)
    now = 0.0
    allowed: dict[str, int] = {}
    for key, step in events:
        now += step
        if limiter.allow(key, now):
            allowed[key] = allowed.get(key, 0) + 1
        assert len(limiter) <= max_addresses
    if max_addresses >= 6:  # nothing forgotten: the bound holds for every key
        for count in allowed.values():
            assert count <= rate + rate * now + 1e-9


class _FakeSocket:
    """Datagrams in through a memory channel, out into a list: the UDP shell without the kernel."""

    def __init__(self) -> None:
        self.incoming, self._inbox = trio.open_memory_channel(100)
        self.sent: list[tuple[bytes, tuple]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    async def recvfrom(self, size: int):
        return await self._inbox.receive()

    async def sendto(self, data: bytes, peer) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append((data, peer))


async def test_the_udp_port_drops_past_the_rate(autojump_clock, nursery):
    server = NamesServer(NamesConfig(udp_rate=5), table=parse_hosts(HOSTS)[0])
    sock, stats = _FakeSocket(), UdpStats()
    await nursery.start(serve_udp, server, sock, stats)
    query = dns.message.make_query("gw", "A").to_wire()
    flooder, other = ("192.0.2.1", 5353), ("192.0.2.2", 5353)
    for _ in range(20):
        await sock.incoming.send((query, flooder))
    await sock.incoming.send((query, other))
    await trio.sleep(0.01)
    assert [peer for _, peer in sock.sent].count(flooder) == 5
    assert [peer for _, peer in sock.sent].count(other) == 1
    assert stats.dropped_rate == 15
    await trio.sleep(1)  # a second later (mock clock): five more
    for _ in range(10):
        await sock.incoming.send((query, flooder))
    await trio.sleep(0.01)
    assert [peer for _, peer in sock.sent].count(flooder) == 10 and stats.dropped_rate == 20
    assert all(dns.message.from_wire(data).rcode() == dns.rcode.NOERROR for data, _ in sock.sent)


async def test_the_udp_port_drops_past_its_lookups_but_still_answers_the_hosts_file(autojump_clock, nursery):
    server = NamesServer(NamesConfig(udp_lookups=2, udp_rate=0), table=parse_hosts(HOSTS)[0])
    release = trio.Event()

    async def slow_lookup(name: str, rdtype: str):
        await release.wait()
        return Answer(name, rdtype, "nxdomain")

    server.lookup = slow_lookup
    sock, stats = _FakeSocket(), UdpStats()
    await nursery.start(serve_udp, server, sock, stats)
    peer = ("192.0.2.1", 5353)
    for name in ("a.test", "b.test", "c.test", "gw"):
        await sock.incoming.send((dns.message.make_query(name, "A").to_wire(), peer))
    await trio.sleep(1)
    assert stats.dropped_busy == 1  # c.test: two lookups were already waiting
    assert [dns.message.from_wire(data).question[0].name.to_text() for data, _ in sock.sent] == ["gw."]
    release.set()
    await trio.sleep(0.01)
    answered = sorted(dns.message.from_wire(data).question[0].name.to_text() for data, _ in sock.sent)
    assert answered == ["a.test.", "b.test.", "gw."]


async def test_a_late_icmp_error_does_not_stop_the_udp_port_but_a_broken_socket_does(autojump_clock):
    server = NamesServer(NamesConfig(), table=parse_hosts(HOSTS)[0])
    sock = _FakeSocket()
    query = dns.message.make_query("gw", "A").to_wire()
    errors = iter([OSError(errno.ECONNREFUSED, "refused"), None, OSError(errno.EBADF, "bad")])

    async def recvfrom(size: int):
        error = next(errors)
        if error is not None:
            raise error
        return query, ("192.0.2.1", 5353)

    sock.recvfrom = recvfrom
    with pytest.raises(ExceptionGroup) as caught:  # raised inside serve_udp's nursery
        await serve_udp(server, sock, UdpStats())
    assert [exc.errno for exc in caught.value.exceptions] == [errno.EBADF]
    assert len(sock.sent) == 1  # answered between the two errors
