"""A node's neighbour (trionet.ring.neighbour): a frame is never lost to a cancelled send."""

from __future__ import annotations

import trio
import trio.testing

from trionet.ring.config import NodeAddress
from trionet.ring.neighbour import Neighbour
from trionet.ring.frames import Direction, Hello, Role, Token


class StuckStream(trio.abc.Stream):
    """A connection whose peer never reads nor writes: a send blocks after its first byte."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint()
        self.written += bytes(data[:1])  # a partial write, then the socket is full
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.sleep_forever()

    async def receive_some(self, max_bytes=None) -> bytes:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_a_send_cancelled_mid_frame_restarts_the_connection_and_keeps_the_frame():
    # A link reader repeating a frame can be cancelled inside the next link's
    # send (its own connection being replaced). Half a frame must not stay
    # on the stream, and the frame must not wait for the ack watchdog.
    link = Neighbour("test", NodeAddress(1, "127.0.0.1", 1), Direction.CCW, ack_delay=0.2, ack_timeout=5.0)
    stream = StuckStream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run_connection, stream, Hello(1, Role.SUCCESSOR, 0, 1), _read_nothing)
        await link.wait_up()
        with trio.CancelScope() as scope:
            nursery.start_soon(_cancel_soon, scope)
            await link.send(Token(Direction.CW))
        assert scope.cancelled_caught
        await link.wait_up(False)  # the connection was restarted...
    assert stream.closed and stream.written == b"\x00"
    assert [seq for seq, _ in link.state.unacked] == [1]  # ...and the frame waits for the next one
    assert "cancelled" in link.last_error


async def _read_nothing(stream: trio.abc.Stream) -> None:
    await trio.sleep_forever()


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()
