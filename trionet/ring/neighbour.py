"""One neighbour of a ring node (trio): its current connection, the writes to it, and the acknowledgements.

A :class:`Neighbour` outlives its connections: its
:class:`~trionet.ring.link.LinkState` keeps every frame sent until the peer
acknowledges it, so a new connection resends exactly what was lost. Per
connection it runs the node's reader (given to :meth:`Neighbour.run_connection`)
beside tasks of its own: one sends the cumulative ``ACK`` a moment after
frames arrive, one closes the connection when the peer's acks stop coming
(a connection dead without a reset), one sends a ``HEARTBEAT`` when the
link has carried nothing for a while, and one closes the connection when
the peer has been silent for the failure timeout (failure detection). Writes come from several tasks and
hold one semaphore, a frame at a time (:meth:`Neighbour.send`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from trionet.errors import first_message
from trionet.log import get_logger
from trionet.ring.config import NodeAddress
from trionet.ring.frames import (
    Ack,
    Bye,
    DataFrame,
    Direction,
    Heartbeat,
    Hello,
    RemoteProtocolError,
    encode_frame,
)
from trionet.ring.link import LinkState

__all__ = ["EPOCH", "LINK_ERRORS", "Neighbour"]

log = get_logger("ring")

EPOCH = 1
"""The epoch of the first view (node 0's at the start); later views count up from the highest seen."""

LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, RemoteProtocolError)
"""What ends one connection (and only it): the next one repairs the link."""


_UNWRITTEN = RuntimeError("a send was cancelled with its frame not fully written")


@dataclass(eq=False)
class _Conn:
    stream: trio.abc.Stream
    scope: trio.CancelScope
    done: trio.Event


class Neighbour:
    """One neighbour: the current connection (if any) and the :class:`LinkState` that outlives it.

    Error handling: any failure of the connection (reset, EOF, a bad frame)
    ends that connection only; the state keeps the unacknowledged frames for
    the next one.
    """

    def __init__(
        self,
        name: str,
        peer: NodeAddress,
        incoming: Direction,
        *,
        ack_delay: float,
        ack_timeout: float,
        failure_timeout: float = 3.0,
    ) -> None:
        self.name = name
        self.peer = peer
        self.state = LinkState(EPOCH, incoming, peer.id)
        # One writer at a time on the stream. A semaphore rather than a Lock:
        # Lock tracks its owner task (and registers it to break the lock if
        # that task exits), which is measurable on the per-hop path.
        self._lock = trio.Semaphore(1)
        self._stream: trio.abc.Stream | None = None
        self._current: _Conn | None = None
        self.up = False
        self._changed = trio.Event()
        self.connects = 0
        self.passed_through = 0  # frames from this link that the node passed on without a token task
        self.ack_sent = 0
        self.ack_timeouts = 0
        self.closed = False
        self.peer_done = trio.Event()
        """Set when the peer said ``BYE``: it has finished and needs nothing more on this link."""
        self._ack_wanted = trio.Event()
        self._ack_urgent = trio.Event()
        self._ack_delay = ack_delay
        self._ack_timeout = ack_timeout
        self._failure_timeout = failure_timeout
        self.last_error = "never connected"
        self.last_heard = 0.0
        self.down_since = -float("inf")
        """When the link last went down (never up: long ago)."""
        """When the reader last got bytes from the peer (the node's reader sets it)."""
        self._wrote = False
        self.heartbeats = 0
        self.silences = 0

    async def wait_up(self, up: bool = True) -> None:
        """Return once the link is up (or down, with ``up=False``)."""
        while self.up != up:
            await self._changed.wait()

    async def wait_drained(self) -> None:
        """Return once the peer has acknowledged everything sent on this link."""
        while self.state.unacked:
            await self._changed.wait()

    async def close(self) -> None:
        """Tell the peer this node is done with the link (``BYE``), close the connection, accept no other."""
        self.closed = True
        current = self._current
        if current is None:
            return
        async with self._lock:
            try:
                with trio.move_on_after(1.0):
                    await current.stream.send_all(encode_frame(Bye()))
            except LINK_ERRORS:
                pass  # the peer then waits for its grace period
        current.scope.cancel()

    def flush_acks(self) -> None:
        """Send the pending acknowledgement now rather than after ``ack_delay``."""
        self._ack_urgent.set()

    def want_ack(self, urgent: bool) -> None:
        """A data frame arrived: acknowledge it within ``ack_delay`` (at once if ``urgent``)."""
        self._ack_wanted.set()
        if urgent:
            self._ack_urgent.set()

    def acked(self) -> None:
        """The peer acknowledged frames (:attr:`state` has dropped them): wake whoever waits for that."""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def drop_connection(self, reason: str) -> None:
        """End the current connection (another one will take its place)."""
        current = self._current
        if current is not None:
            self.last_error = reason
            current.scope.cancel()

    async def send(self, frame: DataFrame, epoch: int = EPOCH) -> None:
        """Number ``frame``, keep it until acknowledged, and write it if the link is up.

        Called by the token tasks and by the other link's reader (passing a
        frame through: :meth:`~trionet.ring.node.RingNode._read_frames`) themselves: a hand-over to a writer task cost 40% more per
        hop (measured), and the socket never blocks for long because the
        protocol keeps only a few frames in flight per link. A frame written
        to a dead connection is resent after the reconnect.

        The frame is numbered and kept before the first checkpoint, so once
        this is called it is never lost. If the caller is cancelled before
        the frame is fully written (a reader whose own connection is being
        replaced), this link's connection is restarted: a partial frame would
        corrupt the stream, and the reconnect resends the frame at once.
        """
        was_idle = not self.state.unacked
        data = self.state.wrap(frame, epoch)
        self._wrote = True
        if was_idle:
            self._notify()  # wakes the ack watchdog
        stream = self._stream
        try:
            try:
                self._lock.acquire_nowait()  # the usual case: no yield before the write
            except trio.WouldBlock:
                await self._lock.acquire()
        except trio.Cancelled:
            self._fail(stream, _UNWRITTEN)
            raise
        try:
            stream = self._stream
            if stream is not None:
                await stream.send_all(data)
        except LINK_ERRORS as exc:
            self._fail(stream, exc)
        except trio.Cancelled:
            self._fail(stream, _UNWRITTEN)
            raise
        finally:
            self._lock.release()

    def _fail(self, stream: trio.abc.Stream, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        current = self._current
        if current is not None and current.stream is stream:
            current.scope.cancel()

    async def run_connection(
        self,
        stream: trio.abc.Stream,
        hello: Hello,
        read: Callable[[trio.abc.Stream], Awaitable[None]],
        *,
        resume: bool = True,
        peer: NodeAddress | None = None,
        on_ready: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        """Use ``stream`` for this link until it fails (it replaces any older connection).

        ``hello`` is the peer's accepted greeting; ``resume`` says whether
        the link continues or starts again (the handshake's decision:
        :meth:`~trionet.ring.link.LinkState.answer`); on a resume, resends
        what the peer has not got. ``peer`` is the node at the other end
        when it changed (bypass, rejoin). Then ``on_ready(reset)`` is
        awaited (``reset``: the link started again, frames may have been
        lost), and ``read(stream)`` (the node's reader:
        :meth:`~trionet.ring.node.RingNode._read_frames`) runs beside this
        link's ack, heartbeat and silence tasks until the connection ends.

        Error handling: returns normally on every connection failure
        (reset, EOF, a protocol error), with the reason in :attr:`last_error`.

        Resource handling: ``stream`` is this link's until it ends, then closed.
        """
        while self._current is not None:
            self._current.scope.cancel()
            await self._current.done.wait()
        if self.closed:
            await trio.aclose_forcefully(stream)
            return
        conn = _Conn(stream, trio.CancelScope(), trio.Event())
        self._current = conn
        try:
            with conn.scope:
                async with self._lock:
                    if peer is not None:
                        self.peer = peer
                    resend, reset = self.state.connect(hello.node_id, hello.session, resume, hello.recv_next)
                    if resend:
                        log.info("%s: resending %d byte(s) after reconnect", self.name, len(resend))
                        await stream.send_all(resend)
                    self._stream = stream
                self.up = True
                self.connects += 1
                self.last_heard = trio.current_time()
                self._notify()
                if on_ready is not None:
                    await on_ready(reset)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._ack_loop, stream)
                    nursery.start_soon(self._ack_watchdog, stream)
                    nursery.start_soon(self._heartbeat_loop, stream)
                    nursery.start_soon(self._silence_watchdog, stream)
                    await read(stream)
                    nursery.cancel_scope.cancel()
                self.last_error = "closed by the peer"
        except* LINK_ERRORS as group:
            self.last_error = first_message(group)
        finally:
            if self._stream is stream:
                self._stream = None
            self._current = None
            if self.up:
                self.up = False
                self.down_since = trio.current_time()
                self._notify()
            conn.done.set()
            await trio.aclose_forcefully(stream)
            log.debug("%s: connection ended (%s)", self.name, self.last_error)

    async def _ack_loop(self, stream: trio.abc.Stream) -> None:
        # Acks are cumulative and sent up to ack_delay later: off the path of
        # the frame being forwarded, and shared by every frame of that period
        # (an ack per frame doubled the packets and wake-ups per hop). The
        # protocol keeps only a handful of frames unacknowledged per link, so
        # a late ack costs no memory; only the finalization command, whose
        # sender waits for it, is acknowledged at once.
        try:
            while True:
                await self._ack_wanted.wait()
                with trio.move_on_after(self._ack_delay):
                    await self._ack_urgent.wait()
                self._ack_wanted = trio.Event()
                self._ack_urgent = trio.Event()
                ack = self.state.ack
                async with self._lock:
                    await stream.send_all(encode_frame(Ack(ack)))
                self.ack_sent = ack
                self._notify()
        except LINK_ERRORS as exc:
            self._fail(stream, exc)


    async def _heartbeat_loop(self, stream: trio.abc.Stream) -> None:
        # Silence means death to the peer (_silence_watchdog there): on a
        # link with nothing to say, say that we live, a few times per timeout.
        interval = self._failure_timeout / 3
        try:
            while True:
                self._wrote = False
                await trio.sleep(interval)
                if self._wrote:
                    continue
                async with self._lock:
                    await stream.send_all(encode_frame(Heartbeat()))
                self.heartbeats += 1
        except LINK_ERRORS as exc:
            self._fail(stream, exc)

    async def _silence_watchdog(self, stream: trio.abc.Stream) -> None:
        # A live peer writes at least a heartbeat every failure_timeout/3
        # (its own tasks, not its token tasks: a slow node still answers).
        timeout = self._failure_timeout
        while True:
            deadline = self.last_heard + timeout
            await trio.sleep_until(deadline)
            if trio.current_time() >= self.last_heard + timeout:  # (not now - last: floats round)
                self.silences += 1
                self._fail(stream, TimeoutError(f"node {self.peer.id} silent for {timeout:g}s"))
                return

    async def _ack_watchdog(self, stream: trio.abc.Stream) -> None:
        # A connection can die without a reset (a cable pulled, a host
        # gone): writes still succeed into the socket buffer and reads just
        # wait. Acks come at most ack_delay after a frame arrives, so a frame
        # unacknowledged for ack_timeout means the connection is dead.
        while True:
            while not self.state.unacked:
                await self._changed.wait()
            oldest = self.state.unacked[0][0]
            with trio.move_on_after(self._ack_timeout) as waited:
                while self.state.unacked and self.state.unacked[0][0] == oldest:
                    await self._changed.wait()
            if waited.cancelled_caught:
                self.ack_timeouts += 1
                self._fail(stream, TimeoutError(f"frame {oldest} unacknowledged for {self._ack_timeout:g}s"))
                return
