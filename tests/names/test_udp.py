"""DNS over UDP on the DNS port's number (RFC 1035 4.2.1): dnspython, dig, truncation, shutdown."""

import socket

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import trio

from trionet.names.hosts import parse_hosts
from trionet.names.server import NamesConfig, NamesServer

from .conftest import HOSTS

BIG = "".join(f"10.1.0.{i} big.lan\n" for i in range(1, 61))  # 60 A records: 16 bytes each, ~1 KB


async def _udp(addrs, name, rdtype="A", **kw):
    query = dns.message.make_query(name, rdtype, **kw)
    return query, await dns.asyncquery.udp(query, addrs.dns[0], port=addrs.dns[1], timeout=5, ignore_trailing=False)


async def test_udp_is_served_on_the_dns_port_number(start_names):
    server, addrs = await start_names(quota=1, limit=1)
    _, hosts = await _udp(addrs, "Multi.LAN.")
    assert hosts.flags & dns.flags.AA and not hosts.flags & dns.flags.TC
    assert sorted(r.to_text() for r in hosts.answer[0]) == ["10.0.0.3", "10.0.0.4"]
    _, upstream = await _udp(addrs, "www.test", "AAAA", use_edns=0)
    assert upstream.answer[0][0].to_text() == "2001:db8::1" and upstream.edns == 0
    _, nx = await _udp(addrs, "nope.test")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    # UDP is not admitted: neither --limit nor --quota counted these.
    assert server.admission.in_use == 0 and server.udp_stats.answered == 3


async def test_a_udp_message_that_is_not_a_query_gets_its_error(start_names):
    _server, addrs = await start_names()
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(addrs.dns)
        await sock.send(b"\xab\xcd\x01\x00not dns at all")
        with trio.fail_after(5):
            response = dns.message.from_wire(await sock.recv(65535))
    assert (response.id, response.rcode()) == (0xABCD, dns.rcode.FORMERR)
    _, good = await _udp(addrs, "gw")
    assert good.answer[0][0].to_text() == "10.0.0.1"  # and the socket goes on


async def _raw(addrs, query: dns.message.Message) -> dns.message.Message:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(addrs.dns)
        await sock.send(query.to_wire())
        with trio.fail_after(5):
            return dns.message.from_wire(await sock.recv(65535))


async def test_a_big_answer_is_truncated_to_the_clients_size(start_names):
    server, addrs = await start_names(hosts=HOSTS + BIG, edns_udp_size=1232)
    plain = await _raw(addrs, dns.message.make_query("big.lan", "A"))  # 512 bytes without EDNS
    assert plain.flags & dns.flags.TC and not plain.answer
    assert plain.question[0].to_text() == "big.lan. IN A"
    assert server.udp_stats.truncated == 1
    roomy = await _raw(addrs, dns.message.make_query("big.lan", "A", use_edns=0, payload=4096))
    assert not roomy.flags & dns.flags.TC and len(roomy.answer[0]) == 60 and roomy.edns == 0
    small = await start_names(hosts=HOSTS + BIG, edns_udp_size=512)
    capped = await _raw(small[1], dns.message.make_query("big.lan", "A", use_edns=0, payload=4096))
    assert capped.flags & dns.flags.TC and capped.edns == 0 and not capped.answer


@pytest.mark.requires_tool("dig", "dnsutils")
async def test_dig_over_udp_and_its_tcp_fallback(start_names):
    server, addrs = await start_names(hosts=HOSTS + BIG, quota=0)
    port = str(addrs.dns[1])
    argv = ["dig", "+noedns", "+tries=1", "+time=5", "-p", port, "@127.0.0.1"]
    gw = await trio.run_process([*argv, "+short", "gw"], capture_stdout=True, capture_stderr=True)
    assert gw.stdout.decode().split() == ["10.0.0.1"]
    big = await trio.run_process([*argv, "big.lan"], capture_stdout=True, capture_stderr=True)
    out = big.stdout.decode()
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 60" in out
    assert server.udp_stats.truncated == 1


async def test_shutdown_stops_the_udp_socket():
    server = NamesServer(NamesConfig(), table=parse_hosts(HOSTS)[0])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(server.serve, "127.0.0.1", 0, 0)
            _, answer = await _udp(addrs, "gw")
            assert answer.answer
            server.shutdown(0.5)
    # serve() returned, and the UDP port is free again.
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(addrs.dns)


async def test_udp_off_leaves_the_port_to_others(start_names):
    _server, addrs = await start_names(udp=False)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(addrs.dns)  # would fail with EADDRINUSE if the server held it


async def test_edns_on_both_transports(start_names):
    _server, addrs = await start_names(quota=0)
    for ask in (dns.asyncquery.udp, dns.asyncquery.tcp):
        future = dns.message.make_query("gw", "A", use_edns=1)
        badvers = await ask(future, addrs.dns[0], port=addrs.dns[1], timeout=5)
        assert (badvers.rcode(), badvers.edns) == (dns.rcode.BADVERS, 0)
        for name, rdtype, rcode in (("gw", "A", dns.rcode.NOERROR), ("gw", "AXFR", dns.rcode.NOTIMP), ("gw", "ANY", dns.rcode.NOERROR)):
            query = dns.message.make_query(name, rdtype, use_edns=0)
            response = await ask(query, addrs.dns[0], port=addrs.dns[1], timeout=5)
            assert (response.rcode(), response.edns, response.payload) == (rcode, 0, 1232)
