"""Where a ring node's connections come from: the :class:`Transport` interface, TCP, and the eager socket stream.

A node asks its transport to dial its next node and to accept its previous
node's connections; :class:`TcpTransport` does that over real TCP, the test
simulation (``tests/ring/sim.py``) over in-memory streams, so both run the
same node code.

TCP streams are wrapped in :class:`EagerSocketStream`, which reads and
writes without an extra pass of trio's event loop when the kernel completes
the call at once: a frame read by a node is written on to the next node in
the same task step (hop latency, ``docs/benchmarks.md``). It is the ring's
own: the other services use trio's plain ``SocketStream``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from trionet.log import get_logger
from trionet.ring.config import NodeAddress
from trionet.serving import RECEIVE_CHUNK, Connection, TCPService

__all__ = ["EagerSocketStream", "TcpTransport", "Transport"]

log = get_logger("ring")


class Transport(Protocol):
    """Where a node's connections come from."""

    async def connect(self, node: NodeAddress) -> trio.abc.Stream:
        """Open a stream to ``node``; raise ``OSError`` when it is not there."""

    async def serve(
        self,
        node: NodeAddress,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections for ``node`` and run ``handler`` on each, until cancelled."""


class TcpTransport:
    """Real TCP: listen with :class:`~trionet.serving.TCPService`, dial with ``trio.open_tcp_stream``.

    Args:
        stream: wraps each connected ``trio.SocketStream``;
            :class:`EagerSocketStream` by default. A tool passes a subclass
            to watch the bytes (``tools/trace_ring.py`` timestamps reads and
            writes this way), so the shipped code carries no tracing.
    """

    def __init__(self, stream: Callable[[trio.SocketStream], trio.abc.Stream] | None = None) -> None:
        self._wrap = stream or EagerSocketStream

    async def connect(self, node: NodeAddress) -> trio.abc.Stream:
        """Open a TCP connection to ``node`` (no timeout: the caller bounds it).

        Error handling: ``OSError`` when nothing listens there or the host
        cannot be reached.

        Resource handling: the caller owns the returned stream and closes it.
        """
        return self._wrap(await trio.open_tcp_stream(node.host, node.port))

    async def serve(self, node, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``node``'s address; per-connection errors stay in that connection (``TCPService``)."""

        async def _handle(conn: Connection) -> None:
            await handler(self._wrap(conn.stream))

        # One "node N listening on" line; a link's connections are logged at
        # debug level (the node logs what matters about its links itself).
        service = TCPService(f"node {node.id}", _handle, log, quiet=True)
        await service.serve(node.host, node.port, task_status=task_status)


class _OneAtATime:
    """Raise ``trio.BusyResourceError`` when two tasks use one side of a stream at once (as trio does)."""

    def __init__(self, doing: str) -> None:
        self._doing = doing
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is {self._doing} on this stream")
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


class EagerSocketStream(trio.abc.HalfCloseableStream):
    """A :class:`trio.SocketStream` that does not yield when the kernel completes a call at once.

    trio makes every ``send_all`` and the first ``recv`` of every
    ``receive_some`` a full scheduling point: after a system call that
    succeeded immediately, the task goes back to the run queue and waits for
    the next pass of the event loop (an ``epoll_wait`` and a pass over every
    runnable task). That is the right default, but on a forwarding path it
    puts an event-loop pass between reading a frame and writing it on. This
    wrapper calls ``read``/``write`` directly and waits (``wait_readable`` /
    ``wait_writable``) only when the kernel would block, so a frame read can
    be forwarded in the same task step (measured in ``docs/benchmarks.md``).

    It keeps trio's guarantees where they matter: every call raises
    ``Cancelled`` if its scope is cancelled, two tasks sending (or receiving)
    at once get ``trio.BusyResourceError``, and after ``fairness`` calls in
    a row that did not block it yields once, so a peer that keeps the socket
    busy cannot starve the other tasks.

    Args:
        stream: the socket stream to wrap; it is closed with this one.
        fairness: calls in a row that may complete without yielding.

    Error handling: as ``SocketStream``: a closed stream raises
    ``trio.ClosedResourceError``, a reset or broken connection
    ``trio.BrokenResourceError``.
    """

    def __init__(self, stream: trio.SocketStream, fairness: int = 16) -> None:
        self.stream = stream
        self.socket = stream.socket
        self._fairness = fairness
        self._unyielded = 0
        self._drained = False
        self._sending = _OneAtATime("sending")
        self._receiving = _OneAtATime("receiving")

    def _fileno(self) -> int:
        fd = self.socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the socket was closed")
        return fd

    async def _fair_yield(self) -> None:
        self._unyielded = 0
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the bytes available (at most ``max_bytes``), waiting for some; ``b""`` at end of stream."""
        max_bytes = RECEIVE_CHUNK if max_bytes is None else max_bytes
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receiving:
            if self._drained:
                # The last read took less than it could: the socket is almost
                # certainly empty, so wait first rather than pay for a failed read.
                self._unyielded = 0
                await trio.lowlevel.wait_readable(self.socket)
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                try:
                    data = os.read(self._fileno(), max_bytes)
                except BlockingIOError:
                    self._unyielded = 0
                    await trio.lowlevel.wait_readable(self.socket)
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
                self._drained = 0 < len(data) < max_bytes
                self._unyielded += 1
                if self._unyielded >= self._fairness:
                    await self._fair_yield()
                return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting whenever the socket's buffer is full."""
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.socket.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            fd = self._fileno()
            remaining = data
            while remaining:
                try:
                    written = os.write(fd, remaining)
                except BlockingIOError:
                    self._unyielded = 0
                    await trio.lowlevel.wait_writable(self.socket)
                    fd = self._fileno()
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
                # The usual case: the kernel took it all, and no view is made.
                remaining = memoryview(remaining)[written:] if written < len(remaining) else b""
            self._unyielded += 1
            if self._unyielded >= self._fairness:
                await self._fair_yield()

    async def wait_send_all_might_not_block(self) -> None:
        """Return when the socket can take more data."""
        with self._sending:
            self._fileno()
            await trio.lowlevel.wait_writable(self.socket)

    async def send_eof(self) -> None:
        """Shut down the sending side (as ``SocketStream``)."""
        with self._sending:
            await self.stream.send_eof()

    async def aclose(self) -> None:
        """Close the socket (as ``SocketStream``)."""
        await self.stream.aclose()
