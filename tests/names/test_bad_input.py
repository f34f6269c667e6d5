"""Bad input on the line port: met with an error or a close, while other clients are served."""

import trio

import trionet.names as names
from trionet.framing import EOF
from trionet.names import protocol
from trionet.serving import receive_event


async def _welcome(stream) -> protocol.ClientLineProtocol:
    proto = protocol.ClientLineProtocol()
    assert isinstance(await receive_event(stream, proto), protocol.Welcome)
    return proto


async def test_a_one_megabyte_line(start_names, tcp):
    server, addrs = await start_names(quota=0, limit=2)
    stream = await tcp(addrs.line)
    proto = await _welcome(stream)

    async def send_big() -> None:
        await stream.send_all(b"a" * (1 << 20) + b"\ngw\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_big)
        # Served normally meanwhile.
        async with names.connect(*addrs.line) as other:
            assert (await other.resolve("printer")).ok
        bad = await receive_event(stream, proto)
        assert bad.status == "bad-request" and "longer than" in bad.message
        good = await receive_event(stream, proto)
        assert good.status == "ok" and good.records == ("10.0.0.1",)


async def test_bad_lines_get_bad_request_and_count_against_the_quota(start_names, tcp):
    server, addrs = await start_names(quota=3)
    stream = await tcp(addrs.line)
    proto = await _welcome(stream)
    await stream.send_all(b"\xff\xfe\n   \nwww.test FOO\ngw\n")
    replies = [await receive_event(stream, proto) for _ in range(4)]
    assert [r.status for r in replies[:3]] == ["bad-request", "bad-request", "ok"]
    assert replies[3].reason == "quota-reached"


async def test_half_closed_client_still_gets_its_answers(start_names, tcp):
    server, addrs = await start_names(quota=0)
    stream = await tcp(addrs.line)
    await stream.send_all(b"gw\nwww.test\nnope.test")  # the last line has no newline
    await stream.send_eof()
    proto = await _welcome(stream)
    first = await receive_event(stream, proto)
    second = await receive_event(stream, proto)
    assert (first.status, second.status) == ("ok", "ok")
    assert await receive_event(stream, proto) is EOF


async def test_half_closed_waiting_client_keeps_its_place(start_names, tcp):
    server, addrs = await start_names(quota=0, limit=1)
    holder = await tcp(addrs.line)
    await _welcome(holder)
    waiter = await tcp(addrs.line)
    await waiter.send_all(b"gw\n")
    await waiter.send_eof()
    proto = protocol.ClientLineProtocol()
    assert isinstance(await receive_event(waiter, proto), protocol.Wait)
    await holder.send_all(b"quit\n")
    with trio.fail_after(10):
        assert isinstance(await receive_event(waiter, proto), protocol.Welcome)
        assert (await receive_event(waiter, proto)).status == "ok"
        assert await receive_event(waiter, proto) is EOF


async def test_a_client_that_never_reads_is_dropped(start_names, tcp):
    server, addrs = await start_names(quota=0, limit=2, idle_timeout=0.5)
    stream = await tcp(addrs.line)
    # Ask a lot and never read: the server's sends block, then time out.
    payload = b"multi.lan\n" * 200_000

    async def flood() -> None:
        try:
            await stream.send_all(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)  # ends when the server drops the connection
            async with names.connect(*addrs.line) as other:
                assert (await other.resolve("gw")).ok
    assert server.admission.in_use == 0  # its slot was given back before the close


async def test_every_odd_request_is_answered_and_the_session_goes_on(start_names, tcp):
    server, addrs = await start_names(quota=0)
    stream = await tcp(addrs.line)
    proto = await _welcome(stream)
    odd = [b"fe80::1%eth0", b"fe80::1%eth0 PTR", b"::ffff:10.0.0.1", b". NS", b"*", b"a" * 64, b"\x00", b"gw\xc2\xa0A"]
    await stream.send_all(b"".join(line + b"\n" for line in odd) + b"gw\n")
    with trio.fail_after(5):
        replies = [await receive_event(stream, proto) for _ in range(len(odd) + 1)]
    assert all(isinstance(r, protocol.Reply) for r in replies), replies
    assert [r.status for r in replies[:2]] == ["bad-request", "bad-request"]
    assert "scope" in replies[0].message
    assert replies[-1].status == "ok" and replies[-1].records == ("10.0.0.1",)
    assert server.line_service.connections  # still open: nothing dropped it
