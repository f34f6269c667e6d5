"""What both SQL fronts (NDJSON and PostgreSQL) do around a statement in a worker thread (trio).

A thread cannot be cancelled, but its statement can be interrupted
(``sqlite3_interrupt``). So while SQLite works in a thread, a watcher task
reads ahead on the client's socket (a client that leaves is noticed at once)
and interrupts the statement when its client leaves, when its deadline
passes, or when a cancel request arrives (PostgreSQL's CancelRequest). And
however a connection ends, :func:`interrupt_when_cancelled` interrupts
whatever still runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

from trionet.serving import RECEIVE_CHUNK
from trionet.sql.session import Session

__all__ = ["SESSION_THREADS", "StopReason", "interrupt_when_cancelled", "run_watched"]

SESSION_THREADS = 4
"""Threads opening and closing sessions (a file open, a rollback: short, I/O-bound), per front."""

_REPEAT_INTERRUPT = 0.05  # seconds between interrupts until the thread returns

T = TypeVar("T")


class StopReason:
    """Why the watcher interrupted the statement: None, ``gone``, ``timeout`` or ``cancel``."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None


async def run_watched(
    fn: Callable[..., T],
    *args: Any,
    session: Session,
    deadline: float,
    stream: trio.abc.ReceiveStream,
    proto,
    max_buffered: int,
    tokens: trio.CapacityLimiter,
    cancel: trio.Event | None = None,
    stop: StopReason | None = None,
) -> T:
    """Run ``fn(*args)`` in a worker thread while a watcher guards ``session``'s statement.

    Args:
        fn: what to run (``session.execute``, ``session.fetch``, ...).
        session: the session whose statement is interrupted.
        deadline: when (trio time) the statement is interrupted as timed out.
        stream, proto: the client's socket and the sans-IO protocol object
            that keeps what it pipelines; at most ``max_buffered`` bytes are
            read ahead (then TCP holds the rest back).
        tokens: the limiter the thread runs under (the caller holds a
            statement-thread token already).
        cancel: set to interrupt as at the deadline (a cancel request).
        stop: filled with why the statement was interrupted, if it was.

    Returns:
        What ``fn`` returned.

    Error handling:
        What ``fn`` raised (an :class:`~trionet.sql.errors.SqlError` for an
        interrupted statement, say) is raised as is, not wrapped in a group.
    """
    stop = stop if stop is not None else StopReason()
    stop.reason = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, session, deadline, stream, proto, max_buffered, cancel, stop)
        # The watcher never raises, so the thread's error is not wrapped.
        result = await outcome.acapture(trio.to_thread.run_sync, fn, *args, limiter=tokens)
        nursery.cancel_scope.cancel()
    return result.unwrap()


async def _watch(session, deadline, stream, proto, max_buffered, cancel, stop: StopReason) -> None:
    with trio.move_on_at(deadline) as timer:
        async with trio.open_nursery() as inner:
            if cancel is not None:
                inner.start_soon(_wait_cancel, cancel, stop, inner.cancel_scope)
            await _read_until_gone(stream, proto, max_buffered)
            stop.reason = "gone"
            inner.cancel_scope.cancel()
    if timer.cancelled_caught:
        stop.reason = "timeout"
    # SQLite ignores an interrupt that comes before the statement starts, so
    # it is repeated until the thread returns (this task is cancelled then).
    while True:
        if stop.reason == "gone":
            session.interrupt("client gone")
        else:
            session.interrupt_for_timeout()
        await trio.sleep(_REPEAT_INTERRUPT)


async def _wait_cancel(cancel: trio.Event, stop: StopReason, scope: trio.CancelScope) -> None:
    await cancel.wait()
    stop.reason = "cancel"
    scope.cancel()


async def _read_until_gone(stream: trio.abc.ReceiveStream, proto, max_buffered: int) -> None:
    # Bounded read-ahead: what the client pipelines stays in the protocol
    # object for the connection's loop; reading it now is how a client that
    # left is noticed. Returns when the client is gone.
    while proto.buffered < max_buffered:
        try:
            data = await stream.receive_some(RECEIVE_CHUNK)
        except (trio.BrokenResourceError, OSError):
            data = b""
        proto.receive_data(data)
        if not data:
            return
    await trio.sleep_forever()


async def interrupt_when_cancelled(session: Session) -> None:
    """Sleep until cancelled, then interrupt ``session``'s statement.

    However a connection ends (client gone, the end of the shutdown grace,
    the whole server cancelled), its worker thread must not outlive it: a
    thread cannot be cancelled, but its statement can.
    """
    try:
        await trio.sleep_forever()
    finally:
        session.interrupt("connection closing")
