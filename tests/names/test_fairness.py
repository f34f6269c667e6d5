"""Fair admission (issue 9): a share per client address, a bound on time in line, a bound on time admitted.

The per-address tests use real sockets from other loopback addresses
(127.0.0.2, 127.0.0.3) and the real clock; the timeout tests use in-memory
streams under the mock clock.
"""

import dns.message
import dns.rcode
import trio

from trionet.framing import EOF, LengthPrefixFramer, encode_length_prefixed
from trionet.names import protocol
from trionet.names.server import DNS_CLOSE_WAIT
from trionet.serving import receive_event


async def _open(addr, source: str) -> trio.SocketStream:
    return await trio.open_tcp_stream(*addr, local_address=source)


async def _first_line(stream: trio.SocketStream):
    return await receive_event(stream, protocol.ClientLineProtocol())


def _dns_query(name: str = "gw") -> tuple[dns.message.Message, bytes]:
    query = dns.message.make_query(name, "A")
    return query, encode_length_prefixed(query.to_wire(), 2)


async def test_one_address_cannot_fill_the_waiting_room(start_names):
    # The attack of issue 9: one address opens 67 connections (3 slots and the
    # 64-place waiting room, the defaults). Only its share of 8 gets in.
    server, addrs = await start_names(quota=4)
    assert (server.config.limit, server.config.backlog, server.config.per_address) == (3, 64, 8)
    hog: list[trio.SocketStream] = []
    firsts = []
    try:
        for _ in range(67):
            stream = await _open(addrs.line, "127.0.0.2")
            hog.append(stream)
            firsts.append(await _first_line(stream))
        kinds = [type(event).__name__ for event in firsts]
        assert kinds == ["Welcome"] * 3 + ["Wait"] * 5 + ["Bye"] * 59
        assert all(b.reason == "busy" and b.message.startswith("per-address: 127.0.0.2 ") for b in firsts[8:])
        assert server.admission.held_by("127.0.0.2") == 8 and server.admission.over_share == 59
        # Reopening does not help the hog...
        again = await _open(addrs.line, "127.0.0.2")
        hog.append(again)
        assert (await _first_line(again)).reason == "busy"
        # ...and another address still gets a place in line, right behind the hog's five.
        other = await _open(addrs.line, "127.0.0.3")
        hog.append(other)
        assert await _first_line(other) == protocol.Wait(6, "all 3 slots are busy; 5 client(s) ahead of you")
        assert server.admission.waiting == 6
    finally:
        for stream in hog:
            await trio.aclose_forcefully(stream)


async def test_a_dns_client_over_its_address_share_is_refused(start_names):
    server, addrs = await start_names(limit=1, per_address=2, quota=0)
    held = [await _open(addrs.line, "127.0.0.2") for _ in range(2)]  # a slot and a place in line
    try:
        assert isinstance(await _first_line(held[0]), protocol.Welcome)
        assert isinstance(await _first_line(held[1]), protocol.Wait)
        dns_stream = await _open(addrs.dns, "127.0.0.2")
        held.append(dns_stream)
        query, wire = _dns_query()
        await dns_stream.send_all(wire)
        framer = LengthPrefixFramer(2, 65535)
        with trio.fail_after(5):
            response = dns.message.from_wire((await receive_event(dns_stream, framer)).payload)
            assert response.id == query.id and response.rcode() == dns.rcode.REFUSED
            assert await receive_event(dns_stream, framer) is EOF
        assert server.admission.over_share == 1
        # The same query from another address waits for the slot instead.
        other = await _open(addrs.dns, "127.0.0.3")
        held.append(other)
        await other.send_all(wire)
        with trio.fail_after(5):
            while server.admission.waiting < 2:
                await trio.sleep(0.01)
        assert server.admission.held_by("127.0.0.3") == 1 and server.admission.over_share == 1
    finally:
        for stream in held:
            await trio.aclose_forcefully(stream)


async def test_per_address_zero_turns_the_share_off(start_names):
    server, addrs = await start_names(limit=1, per_address=0, backlog=20)
    streams = [await _open(addrs.line, "127.0.0.2") for _ in range(12)]
    try:
        events = [await _first_line(s) for s in streams]
        assert [type(e).__name__ for e in events] == ["Welcome"] + ["Wait"] * 11
        assert server.admission.over_share == 0
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


# --- time in line and time admitted, under the mock clock ----------------------------


async def test_a_client_waits_in_line_at_most_wait_timeout(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, idle_timeout=0, session_timeout=0, wait_timeout=60)
    holder = await server.connect_memory()
    assert isinstance(await holder.next(), protocol.Welcome)  # and never lets go
    waiter = await server.connect_memory()
    start = trio.current_time()
    assert (await waiter.next()).place == 1
    with trio.fail_after(61):
        bye = await waiter.next()
    assert isinstance(bye, protocol.Bye) and bye.reason == "wait-timeout" and "60 seconds" in bye.message
    assert trio.current_time() - start == 60
    assert await waiter.next() is EOF
    assert server.admission.waiting == 0 and server.admission.timed_out == 1


async def test_a_waiting_dns_client_is_refused_at_the_wait_timeout(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, idle_timeout=0, session_timeout=0, wait_timeout=60)
    holder = await server.connect_memory()
    assert isinstance(await holder.next(), protocol.Welcome)
    client = await server.connect_memory("dns")
    queries = [dns.message.make_query(name, "A") for name in ("gw", "printer")]
    start = trio.current_time()
    await client.stream.send_all(b"".join(encode_length_prefixed(q.to_wire(), 2) for q in queries))
    framer = LengthPrefixFramer(2, 65535)
    with trio.fail_after(61):
        responses = [dns.message.from_wire((await receive_event(client.stream, framer)).payload) for _ in queries]
    assert trio.current_time() - start == 60
    assert [(r.id, r.rcode()) for r in responses] == [(q.id, dns.rcode.REFUSED) for q in queries]
    assert await receive_event(client.stream, framer) is EOF
    assert server.admission.timed_out == 1


async def test_a_query_every_29_seconds_keeps_the_slot_only_session_timeout(autojump_clock, memory_names):
    # Issue 9: quota 4 and a 30 s idle timeout let such a client keep its slot for 87 s.
    server = await memory_names(limit=1, quota=4, idle_timeout=30, session_timeout=60, wait_timeout=0)
    slow = await server.connect_memory()
    welcome = await slow.next()
    assert welcome.session_timeout == 60
    start = trio.current_time()
    waiting = await server.connect_memory()
    assert (await waiting.next()).place == 1
    for at in (0, 29, 58):
        await trio.sleep_until(start + at)
        await slow.send("gw")
        assert (await slow.next()).status == "ok"
    with trio.fail_after(100):
        event = await slow.next()  # its fourth query would come at 87 s
    assert event.reason == "session-timeout" and "60 seconds" in event.message
    assert trio.current_time() - start == 60  # cut at the deadline, not at the next query
    admitted = await waiting.next()
    assert isinstance(admitted, protocol.Welcome) and admitted.waited == 60


async def test_an_answer_after_the_session_deadline_ends_the_session(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, idle_timeout=0, session_timeout=10, upstream_timeout=5)
    server.fake_upstream.slow["slow.test"] = 2.0
    client = await server.connect_memory()
    assert isinstance(await client.next(), protocol.Welcome)
    await trio.sleep(9)
    await client.send("slow.test")  # asked in time, answered after the deadline
    assert (await client.next()).status == "ok"
    assert trio.current_time() == 11
    with trio.fail_after(100):
        assert (await client.next()).reason == "session-timeout"


async def test_a_dns_client_is_closed_at_the_session_timeout(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, idle_timeout=30, session_timeout=60, wait_timeout=0)
    client = await server.connect_memory("dns")
    framer = LengthPrefixFramer(2, 65535)
    start = trio.current_time()
    for at in range(0, 60, 9):  # never idle for long
        await trio.sleep_until(start + at)
        query, wire = _dns_query()
        await client.stream.send_all(wire)
        assert dns.message.from_wire((await receive_event(client.stream, framer)).payload).id == query.id
    with trio.fail_after(100):
        assert await receive_event(client.stream, framer) is EOF
    assert trio.current_time() - start == 60 + DNS_CLOSE_WAIT  # the client may close first, as at the quota
    assert server.admission.in_use == 0


def test_serve_flags_reach_the_server_config(monkeypatch):
    from click.testing import CliRunner

    from trionet.names import cli

    help_text = " ".join(CliRunner().invoke(cli.serve, ["--help"]).output.split())
    for flag, default in (("--per-address N", "8"), ("--wait-timeout SECONDS", "60.0"), ("--session-timeout SECONDS", "60.0")):
        assert flag in help_text
        assert f"[default: {default}" in help_text.split(flag, 1)[1].split("--", 1)[0]
    seen = []

    class Stop(Exception):
        pass

    def fake_server(config, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(cli, "NamesServer", fake_server)
    args = ["--hosts", "/dev/null", "--upstream", "127.0.0.1", "--per-address", "2", "--wait-timeout", "5",
            "--session-timeout", "7"]
    result = CliRunner().invoke(cli.serve, args)
    assert isinstance(result.exception, Stop)
    assert (seen[0].per_address, seen[0].wait_timeout, seen[0].session_timeout) == (2, 5.0, 7.0)


async def test_the_client_raises_server_busy_over_the_address_share(start_names):
    import pytest

    from trionet import names

    _server, addrs = await start_names(limit=1, per_address=1, quota=0)
    async with names.connect(*addrs.line):
        with pytest.raises(names.ServerBusy) as info:
            async with names.connect(*addrs.line):
                pass
    assert info.value.reason == "busy" and info.value.message.startswith("per-address: 127.0.0.1 ")
