"""The shared trio layer: the send watchdog and the idle watch (under the mock clock), direct socket I/O."""

from __future__ import annotations


import trio
import trio.testing

from trionet.framing import EOF
from trionet.serving import IdleWatch, SendWatchdog


async def test_send_watchdog_cancels_a_stuck_send(autojump_clock):
    sender, receiver = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    watchdog = SendWatchdog(timeout=10)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(watchdog.watch, scope)
            started = trio.current_time()
            await watchdog.send(sender, b"nobody reads this")
        nursery.cancel_scope.cancel()
    assert watchdog.stalled and scope.cancelled_caught
    assert 5 <= trio.current_time() - started <= 10


async def test_send_watchdog_leaves_a_slow_but_steady_reader_alone(autojump_clock):
    sender, receiver = trio.testing.lockstep_stream_pair()
    watchdog = SendWatchdog(timeout=10)

    async def slow_reader() -> None:
        while await receiver.receive_some(1):
            await trio.sleep(4)  # each send waits 4 s: slow, never stuck for 5

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(watchdog.watch, scope)
            nursery.start_soon(slow_reader)
            for _ in range(20):
                await watchdog.send(sender, b"x")
        nursery.cancel_scope.cancel()
    assert not watchdog.stalled and not scope.cancelled_caught


async def test_direct_socket_io_reads_and_sends_without_waiting_when_it_can():
    from trionet.framing import LengthPrefixFramer
    from trionet.serving import DirectSocketIO

    left, right = trio.socket.socketpair()
    ours, theirs = trio.SocketStream(left), trio.SocketStream(right)
    async with ours, theirs:
        io = DirectSocketIO(ours)
        framer = LengthPrefixFramer(2, 100)
        assert io.direct and not io.read_ready(framer)  # nothing has arrived
        await theirs.send_all(b"\x00\x03abc")
        with trio.fail_after(5):
            await io.wait(framer)
        assert io.read_ready(framer) and framer.next_payload() == b"abc"
        assert io.send_now(b"hello") == b""
        assert await theirs.receive_some(100) == b"hello"
        rest = b""
        while not rest:  # nobody reads: the socket's buffer fills, and the rest is handed back
            rest = io.send_now(b"x" * 65536)
        assert 0 < len(rest) <= 65536
        await theirs.send_eof()
        while io.read_ready(framer) is False:
            await io.wait(framer)
        assert framer.next_event() is EOF


async def test_direct_socket_io_leaves_other_streams_to_their_own_methods():
    from trionet.framing import LengthPrefixFramer
    from trionet.serving import DirectSocketIO

    ours, theirs = trio.testing.memory_stream_pair()
    io = DirectSocketIO(ours)
    framer = LengthPrefixFramer(2, 100)
    assert not io.direct and not io.read_ready(framer) and io.send_now(b"data") == b"data"
    await theirs.send_all(b"\x00\x01z")
    await io.wait(framer)  # the stream's own receive_some
    assert framer.next_payload() == b"z"


async def test_idle_watch_ends_a_wait_at_its_deadline_even_one_set_while_it_slept(autojump_clock):
    idle = IdleWatch()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(idle.watch, scope, 5)
            idle.deadline = trio.current_time() + 300  # a long timeout first (outside a transaction)
            await trio.sleep(12)
            idle.deadline = None  # a request came
            await trio.sleep(1)
            started = trio.current_time()
            idle.deadline = started + 7  # the next wait has a shorter one (in a transaction)
            await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    assert idle.expired and scope.cancelled_caught
    assert abs(trio.current_time() - started - 7) < 1e-6


async def test_idle_watch_leaves_a_loop_that_keeps_getting_requests_alone(autojump_clock):
    idle = IdleWatch()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(idle.watch, scope, 5)
            for _ in range(100):
                idle.deadline = trio.current_time() + 5
                await trio.sleep(4.9)
                idle.deadline = None
                await trio.sleep(3)  # busy with a request: no deadline however long it takes
        nursery.cancel_scope.cancel()
    assert not idle.expired and not scope.cancelled_caught
