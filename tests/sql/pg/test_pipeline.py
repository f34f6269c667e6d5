"""Pipelined messages: everything that arrived together is answered, in order, with one send."""

from __future__ import annotations

import struct

import trio

from trionet import serving
from trionet.serving import DirectSocketIO

from .conftest import error_fields, read_messages, typed
from .test_hostile import _close_streams, read_until, start_session  # noqa: F401 (the fixture closes the streams)


def _bind_execute_sync(value: int) -> bytes:
    param = str(value).encode()
    bind = b"\0\0" + struct.pack("!hhi", 0, 1, len(param)) + param + struct.pack("!h", 0)
    return typed(b"B", bind) + typed(b"D", b"P\0") + typed(b"E", b"\0" + struct.pack("!i", 0)) + typed(b"S")


async def _read_readies(stream, count: int) -> list[tuple[str, bytes]]:
    data = b""
    while sum(1 for kind, _ in read_messages(data) if kind == "Z") < count:
        with trio.fail_after(10):
            chunk = await stream.receive_some(65536)
        assert chunk, "the server closed early"
        data += chunk
    return read_messages(data)


async def test_a_pipeline_of_syncs_is_answered_with_one_send_per_read(start_pg, monkeypatch):
    _, address = await start_pg()
    stream = await start_session(address)
    counts = {"reads": 0, "sends": 0}
    read_ready, send_now, write_some = DirectSocketIO.read_ready, DirectSocketIO.send_now, serving._write_some

    def counting_read(self, framer):
        got = read_ready(self, framer)
        counts["reads"] += got
        return got

    def counting_send(self, data):
        counts["sends"] += 1
        return send_now(self, data)

    def counting_write_some(sock, data):  # the ready loop's (one connection: never a batch of several)
        counts["sends"] += 1
        return write_some(sock, data)

    monkeypatch.setattr(DirectSocketIO, "read_ready", counting_read)
    monkeypatch.setattr(DirectSocketIO, "send_now", counting_send)
    monkeypatch.setattr(serving, "_write_some", counting_write_some)
    pipeline = typed(b"P", b"\0select $1::integer + 1\0\0\0")
    pipeline += b"".join(_bind_execute_sync(n) for n in (1, 2, 3)) + typed(b"Q", b"select 10\0")
    await stream.send_all(pipeline)
    messages = await _read_readies(stream, 4)
    rows = [body for kind, body in messages if kind == "D"]
    assert rows == [b"\0\x01\0\0\0\x012", b"\0\x01\0\0\0\x013", b"\0\x01\0\0\0\x014", b"\0\x01\0\0\0\x0210"]
    assert [kind for kind, _ in messages].count("Z") == 4
    # Each read is answered once all it brought is handled: one send, not one per Sync.
    assert 1 <= counts["sends"] <= counts["reads"]


async def test_answers_pipelined_before_terminate_are_sent(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"select 7\0") + typed(b"X"))
    data = b""
    while True:
        with trio.fail_after(10):
            chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    messages = read_messages(data)
    assert ("D", b"\0\x01\0\0\0\x017") in messages and messages[-1] == ("Z", b"I")


async def test_answers_pipelined_before_a_violation_come_before_the_fatal(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"select 8\0") + b"Q" + struct.pack("!i", 3))
    messages = await read_until(stream, "E")
    kinds = [kind for kind, _ in messages]
    assert ("D", b"\0\x01\0\0\0\x018") in messages
    assert kinds.index("Z") < kinds.index("E")


async def test_a_message_trickled_byte_by_byte_still_meets_the_idle_timeout(start_pg):
    # Each partial read keeps the deadline of the message being waited for:
    # a client cannot hold its connection by sending one byte at a time.
    _, address = await start_pg(idle_timeout=0.3)
    stream = await start_session(address)
    message = typed(b"Q", b"select '" + b"x" * 5000 + b"'\0")  # 2.5 s at one byte per 0.5 ms at best

    async def trickle():
        try:
            for i in range(len(message)):
                await stream.send_all(message[i : i + 1])
                await trio.sleep(0.0005)  # the client's pace, not a wait for the server
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            messages = await read_until(stream, "E")
            nursery.cancel_scope.cancel()
    assert [kind for kind, _ in messages] == ["E"]  # the query never arrived whole
    fields = error_fields(messages[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "57P05")
