"""The ring's eager socket stream keeps trio's stream contract, on real sockets."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from trionet.ring.transport import EagerSocketStream


# --- EagerSocketStream: trio's stream contract, on real sockets --------------------


async def _eager_pair() -> tuple[EagerSocketStream, EagerSocketStream]:
    left, right = trio.socket.socketpair()
    return EagerSocketStream(trio.SocketStream(left)), EagerSocketStream(trio.SocketStream(right))


async def test_eager_socket_stream_carries_a_large_payload_intact():
    # Far more than the kernel buffers hold: send_all must wait for the reader.
    left, right = await _eager_pair()
    payload = os.urandom(4 << 20)
    received = bytearray()

    async def reader() -> None:
        while len(received) < len(payload):
            received.extend(await right.receive_some(7919))

    async with left, right, trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await left.send_all(payload)
    assert received == payload


async def test_eager_socket_stream_refuses_two_senders_at_once():
    # (trio.testing.check_half_closeable_stream cannot be used as is: it
    # asserts that every send_all yields, which is what this class avoids.)
    left, right = await _eager_pair()
    async with left, right, trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, b"x" * (16 << 20))  # blocks: nobody reads
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await left.send_all(b"y")
        with pytest.raises(trio.BusyResourceError):
            await left.send_eof()
        nursery.start_soon(left.receive_some)  # blocks: right sends nothing
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await left.receive_some()
        nursery.cancel_scope.cancel()


async def test_eager_socket_stream_half_close_and_close():
    left, right = await _eager_pair()
    await left.send_all(b"last words")
    await left.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"more")
    assert await right.receive_some() == b"last words"
    assert await right.receive_some() == b""
    await right.send_all(b"still open this way")
    assert await left.receive_some() == b"still open this way"

    async def blocked_reader() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await left.receive_some()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_reader)
        await trio.testing.wait_all_tasks_blocked()
        await left.aclose()  # wakes the reader with ClosedResourceError
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")
    await right.aclose()


async def test_eager_socket_stream_yields_to_other_tasks_when_never_blocked():
    left, right = await _eager_pair()
    other_ran = 0

    async def other() -> None:
        nonlocal other_ran
        while True:
            await trio.lowlevel.checkpoint()
            other_ran += 1

    async with left, right, trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.sleep(0)
        before = other_ran
        for _ in range(64):  # the data is always there: no call ever blocks
            await left.send_all(b"x")
            assert await right.receive_some(1) == b"x"
        assert other_ran - before >= 64 * 2 // 16 - 1  # one yield per 16 calls
        nursery.cancel_scope.cancel()


async def test_eager_socket_stream_honours_cancellation_even_with_data_ready():
    left, right = await _eager_pair()
    async with left, right:
        await left.send_all(b"ready")
        with trio.CancelScope() as scope:
            scope.cancel()
            await right.receive_some()
        assert scope.cancelled_caught
        assert await right.receive_some() == b"ready"  # nothing was consumed


async def test_eager_socket_stream_reports_a_reset_peer_as_broken():
    left, right = await _eager_pair()
    await right.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first writes may still fit in the buffer
            await left.send_all(b"x" * 65536)
    await left.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.receive_some()
