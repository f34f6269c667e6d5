"""DNS over TCP (RFC 1035 4.2.2, RFC 7766): dnspython against the DNS port, pipelining, bad input."""

import os

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import trio

from trionet.framing import EOF, Frame, LengthPrefixFramer, encode_length_prefixed
from trionet.names import protocol
from trionet.serving import receive_event


async def _ask(addrs, name, rdtype="A", **kw):
    query = dns.message.make_query(name, rdtype, **kw)
    return await dns.asyncquery.tcp(query, addrs.dns[0], port=addrs.dns[1], timeout=5)


async def test_dnspython_against_the_dns_port(start_names):
    server, addrs = await start_names(quota=0)
    hosts = await _ask(addrs, "Multi.LAN.")
    assert hosts.flags & dns.flags.AA and hosts.rcode() == dns.rcode.NOERROR
    assert sorted(r.to_text() for r in hosts.answer[0]) == ["10.0.0.3", "10.0.0.4"]
    ptr = await _ask(addrs, "1.0.0.10.in-addr.arpa", "PTR")
    assert ptr.answer[0][0].to_text() == "gateway.lan."
    nodata = await _ask(addrs, "v6only.lan", "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.flags & dns.flags.AA
    upstream = await _ask(addrs, "www.test", "AAAA", use_edns=0)
    assert upstream.answer[0][0].to_text() == "2001:db8::1" and not upstream.flags & dns.flags.AA
    assert upstream.edns == 0
    nx = await _ask(addrs, "nope.test")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    mx = await _ask(addrs, "www.test", "MX")  # any type goes upstream
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer


async def test_several_queries_in_flight_answered_by_id(start_names, tcp):
    server, addrs = await start_names(quota=0)
    stream = await tcp(addrs.dns)
    slow = dns.message.make_query("slow.test", "A")  # 0.3 s upstream
    fast = dns.message.make_query("gateway.lan", "A")
    also = dns.message.make_query("www.test", "A")
    await stream.send_all(b"".join(encode_length_prefixed(q.to_wire(), 2) for q in (slow, fast, also)))
    framer = LengthPrefixFramer(2, 65535)
    ids = []
    for _ in range(3):
        frame = await receive_event(stream, framer)
        response = dns.message.from_wire(frame.payload)
        ids.append(response.id)
        query = {slow.id: slow, fast.id: fast, also.id: also}[response.id]
        assert response.question[0].name == query.question[0].name
    assert ids[0] == fast.id and ids[-1] == slow.id  # the slow one did not hold the others back


async def test_bad_messages_get_errors_and_the_connection_goes_on(start_names, tcp):
    server, addrs = await start_names(quota=0)
    stream = await tcp(addrs.dns)
    framer = LengthPrefixFramer(2, 65535)
    notify = dns.message.make_query("gw", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    for payload, rcode, msg_id in (
        (b"\xab\xcd\x01\x00not dns at all", dns.rcode.FORMERR, 0xABCD),
        (b"\x07", dns.rcode.FORMERR, 0),  # not even an ID: the error says 0
        (notify.to_wire(), dns.rcode.NOTIMP, notify.id),
    ):
        await stream.send_all(encode_length_prefixed(payload, 2))
        frame = await receive_event(stream, framer)
        assert isinstance(frame, Frame)
        response = dns.message.from_wire(frame.payload)
        assert (response.rcode(), response.id) == (rcode, msg_id)
    good = dns.message.make_query("gw", "A")
    await stream.send_all(encode_length_prefixed(good.to_wire(), 2))
    response = dns.message.from_wire((await receive_event(stream, framer)).payload)
    assert response.id == good.id and response.answer[0][0].to_text() == "10.0.0.1"


async def test_dns_quota_closes_cleanly_after_the_last_answer(start_names, tcp):
    server, addrs = await start_names(quota=3)
    stream = await tcp(addrs.dns)
    queries = [dns.message.make_query(n, "A") for n in ("slow.test", "gw", "printer", "multi.lan")]
    await stream.send_all(b"".join(encode_length_prefixed(q.to_wire(), 2) for q in queries))
    framer = LengthPrefixFramer(2, 65535)
    got = set()
    for _ in range(3):
        got.add(dns.message.from_wire((await receive_event(stream, framer)).payload).id)
    assert got == {q.id for q in queries[:3]}  # the in-flight slow one too
    assert await receive_event(stream, framer) is EOF


async def test_an_upstream_query_after_hosts_answers_holds_nothing_back_and_counts(start_names, tcp):
    # The resolver nursery opens at the connection's first upstream query,
    # here the second message: the ones after it are still answered first,
    # and it is counted against the quota like every other.
    server, addrs = await start_names(quota=4)
    stream = await tcp(addrs.dns)
    queries = [dns.message.make_query(n, "A") for n in ("gw", "slow.test", "printer", "multi.lan", "gw")]
    await stream.send_all(b"".join(encode_length_prefixed(q.to_wire(), 2) for q in queries))
    framer = LengthPrefixFramer(2, 65535)
    ids = [dns.message.from_wire((await receive_event(stream, framer)).payload).id for _ in range(4)]
    assert ids == [queries[0].id, queries[2].id, queries[3].id, queries[1].id]
    assert await receive_event(stream, framer) is EOF  # the fifth is over the quota


async def test_a_length_prefix_without_its_body(start_names, tcp):
    server, addrs = await start_names(quota=0, limit=2)
    stream = await tcp(addrs.dns)
    await stream.send_all(b"\x01\x00partial")
    await stream.send_eof()
    framer = LengthPrefixFramer(2, 65535)
    with trio.fail_after(10):
        assert await receive_event(stream, framer) is EOF
    assert (await _ask(addrs, "gw")).answer  # and the server is fine


async def test_random_bytes_on_both_ports_while_others_are_served(start_names, tcp):
    server, addrs = await start_names(quota=0, limit=4)
    line = await tcp(addrs.line)
    dnsconn = await tcp(addrs.dns)
    await line.send_all(os.urandom(5000) + b"\n")
    await dnsconn.send_all(os.urandom(5000))
    # A well-behaved client is served meanwhile.
    response = await _ask(addrs, "gw")
    assert response.answer[0][0].to_text() == "10.0.0.1"
    proto = protocol.ClientLineProtocol()
    assert isinstance(await receive_event(line, proto), protocol.Welcome)
    event = await receive_event(line, proto)
    assert isinstance(event, protocol.Reply) and event.status == "bad-request"


async def test_a_waiting_dns_client_is_answered_once_admitted(autojump_clock, memory_names):
    server = await memory_names(quota=0, limit=1, idle_timeout=0, session_timeout=0, wait_timeout=0)
    holder = await server.connect_memory()
    assert isinstance(await holder.next(), protocol.Welcome)
    waiter = await server.connect_memory("dns")
    query = dns.message.make_query("gw", "A")
    await waiter.stream.send_all(encode_length_prefixed(query.to_wire(), 2))
    framer = LengthPrefixFramer(2, 65535)
    with trio.move_on_after(3600) as waited:  # mock clock: an hour passes in no time
        await receive_event(waiter.stream, framer)
    assert waited.cancelled_caught, "answered while every slot was taken"
    assert server.admission.waiting == 1
    await holder.send("quit")
    response = dns.message.from_wire((await receive_event(waiter.stream, framer)).payload)
    assert trio.current_time() == 3600  # at once
    assert response.id == query.id and response.answer[0][0].to_text() == "10.0.0.1"


async def test_a_dns_client_that_leaves_the_line_is_forgotten(start_names, tcp):
    server, addrs = await start_names(quota=0, limit=1)
    holder = await tcp(addrs.line)
    assert isinstance(await receive_event(holder, protocol.ClientLineProtocol()), protocol.Welcome)
    leaver = await tcp(addrs.dns)
    with trio.fail_after(10):
        while server.admission.waiting != 1:
            await trio.sleep(0.01)
        await leaver.aclose()
        while server.admission.waiting != 0:
            await trio.sleep(0.01)
