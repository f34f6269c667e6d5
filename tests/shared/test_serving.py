"""The shared trio layer: the send watchdog (under the mock clock)."""

from __future__ import annotations


import trio
import trio.testing

from trionet.serving import SendWatchdog


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
