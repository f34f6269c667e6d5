"""Running one SQL request: on the event loop or in a worker thread, rows streamed in batches.

:class:`RequestRunner` is the part of the trio shell that runs a request a
connection task has read. A statement the engine knows to only read through
cheap functions is tried on the event loop within
:data:`~trionet.sql.engine.INLINE_BUDGET` VM instructions; anything else, or
one that runs out of budget, runs in a worker thread, one of
``max_threads``. While a thread works, a watcher reads ahead (bounded) to
notice a client that leaves, and interrupts the statement then or at its
deadline (:class:`~trionet.sql.rules.WorkClock`: only SQLite's own time
counts). Each batch is sent before the next is fetched, so a slow reader
slows only its own query and the server holds one batch per connection.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from trionet.serving import Connection, DirectSocketIO, SendWatchdog
from trionet.sql import protocol, rules
from trionet.sql.engine import INLINE_BUDGET, Database, FetchResult, OverBudget, Session
from trionet.sql.errors import SqlError
from trionet.sql.watch import run_watched

if TYPE_CHECKING:
    from trionet.sql.server import SqlServerConfig

__all__ = ["ConnState", "RequestRunner"]

_clock = time.perf_counter  # the answers' ms and the latency histogram (a global lookup less per reading)


class RequestRunner:
    """Runs requests for every connection of one server.

    Args:
        database: the database the sessions belong to.
        config: the server's limits.
        statement_threads: the limiter of statement threads (``max_threads``).

    Resource handling:
        A statement-thread token is held only while SQLite works on a
        request, never while its rows wait for the client.
    """

    def __init__(self, database: Database, config: SqlServerConfig, statement_threads: trio.CapacityLimiter) -> None:
        self.database = database
        self.config = config
        self._limiter = statement_threads
        self._thread_tokens_held = trio.CapacityLimiter(math.inf)  # counted by self._limiter, not trio's default 40
        self.inline_runs = 0
        """Statements answered on the event loop, within :data:`~trionet.sql.engine.INLINE_BUDGET`."""
        self.inline_fallbacks = 0
        """Statements tried on the event loop that ran out of budget and went to a worker thread."""
        self.outcomes: collections.Counter[str] = collections.Counter()
        """Requests answered, by outcome: ``ok``, ``truncated``, or the error code (``timeout``, ``interrupted``, ...)."""
        self.rows_sent = 0
        """Rows sent to clients."""
        self.on_request: Callable[[str, float], None] | None = None
        """Called with each request's outcome and seconds, when set (the metrics' latency histogram)."""
        # The counts (and on_request) are updated from two threads: the event
        # loop's and the ready loop's (answer_now), so under one lock.
        self._counting = threading.Lock()
        # What answer_now reads per request, looked up once (the config is frozen).
        self._inline = config.inline
        self._may_run_inline = database.may_run_inline
        self._max_rows = config.max_rows
        self._batch_rows = config.batch_rows
        self._max_batch_bytes = config.max_batch_bytes

    async def _in_thread(self, conn: Connection, state: ConnState, deadline: float, fn, *args) -> FetchResult:
        """Run ``fn`` in a worker thread, interrupted at ``deadline`` or when the client leaves (:mod:`.watch`)."""
        return await run_watched(
            fn, *args, session=state.session, deadline=deadline, stream=conn.stream, proto=state.proto,
            max_buffered=self.config.max_request_bytes, tokens=self._thread_tokens_held,
        )  # fmt: skip

    def answer_now(self, state: ConnState, request: protocol.Request) -> bytes | None:
        """The whole answer to ``request`` if it is a read answered on the event loop in one batch; else None.

        For a caller that must not wait (the server's :class:`~trionet.serving.ReadyLoop`):
        the same statement through the same :meth:`Session.execute` (the
        authorizer, the VM-instruction budget, the byte and row caps) and the
        same frames and counts as :meth:`run`. None leaves nothing behind
        for :meth:`run` to trip on: a result of more than one batch is
        closed (:meth:`run` runs it again from the start; it only reads), and
        a statement over the event loop's budget sets
        ``state.inline_refused``, so that :meth:`run` takes it straight to a
        worker thread instead of trying the loop twice.
        """
        sql = request.sql
        if not (self._inline and self._may_run_inline(sql)):
            return None
        session = state.session
        started = _clock()
        req_id = request.id
        rows_left = rules.RowCap(self._max_rows, request.max_rows, self._batch_rows)
        try:
            result = session.execute(sql, request.params, rows_left.want(), INLINE_BUDGET, self._max_batch_bytes)
        except OverBudget:
            self._count_inline(False)
            state.inline_refused = True
            return None
        except SqlError as exc:
            self._finish(exc.code, started, 0)
            return protocol.encode_error(req_id, exc.code, exc.message)
        self._count_inline(True)
        rows = rows_left.take(result.rows)
        if not (rows_left.truncated or result.exhausted):
            session.cancel_statement()
            return None
        if not result.exhausted:
            session.cancel_statement()
        out = protocol.encode_result(req_id, result.columns or [], rows) + _done(req_id, rows_left, result, started)
        self._finish("truncated" if rows_left.truncated else "ok", started, rows_left.sent)
        return out

    def _count_inline(self, ran: bool) -> None:
        """Count one statement tried on the event loop: answered there, or over its budget (off to a thread)."""
        with self._counting:
            if ran:
                self.inline_runs += 1
            else:
                self.inline_fallbacks += 1

    def _finish(self, ending: str, started: float, rows: int) -> None:
        """Count one answered request (outcome, rows, the latency histogram)."""
        seconds = _clock() - started
        with self._counting:
            self.outcomes[ending] += 1
            self.rows_sent += rows
            on_request = self.on_request
            if on_request is not None:
                on_request(ending, seconds)

    async def run(self, conn: Connection, state: ConnState, request: protocol.Request) -> None:
        """Run one request and send its whole answer (columns, rows, done or error).

        Error handling:
            What SQLite refuses or stops (an :class:`~trionet.sql.errors.SqlError`)
            becomes the answer's ``error`` frame; a client that breaks the
            connection raises ``trio.BrokenResourceError`` or ``OSError`` to the caller.
        """
        session = state.session
        started = time.perf_counter()
        req_id = request.id
        rows_left = rules.RowCap(self.config.max_rows, request.max_rows, self.config.batch_rows)
        max_bytes = self.config.max_batch_bytes
        clock = rules.WorkClock(self.config.query_timeout)
        out = b""  # what is ready to send and not sent yet

        async def in_sqlite(fn, *args) -> FetchResult:
            # The clock starts once a statement thread is ours: with few
            # threads, waiting for one is not time SQLite worked on this request.
            async with self._limiter:
                begun = trio.current_time()
                try:
                    return await self._in_thread(conn, state, clock.deadline(begun), fn, *args)
                finally:
                    clock.spend(trio.current_time() - begun)

        try:
            result = None
            inline, state.inline_refused = not state.inline_refused, False
            if inline and self.config.inline and self.database.may_run_inline(request.sql):
                # A short read costs less here than a thread hop (docs/benchmarks.md);
                # the VM-instruction budget bounds how long it holds the event loop.
                try:
                    result = session.execute(request.sql, request.params, rows_left.want(), INLINE_BUDGET, max_bytes)
                    self._count_inline(True)
                except OverBudget:
                    self._count_inline(False)
            if result is None:
                result = await in_sqlite(session.execute, request.sql, request.params, rows_left.want(), 0, max_bytes)
            out = protocol.encode_columns(req_id, result.columns or [])
            while True:
                rows = rows_left.take(result.rows)
                if rows:
                    out += protocol.encode_rows(req_id, rows)
                if rows_left.truncated or result.exhausted:
                    break
                await state.send(conn, out)  # backpressure: the next batch waits for this one
                out = b""
                result = await in_sqlite(session.fetch, rows_left.want(), max_bytes)
            if rows_left.truncated and not result.exhausted:
                session.cancel_statement()
            out += _done(req_id, rows_left, result, started)
            ending = "truncated" if rows_left.truncated else "ok"
        except SqlError as exc:
            out += protocol.encode_error(req_id, exc.code, exc.message)
            ending = exc.code
        self._finish(ending, started, rows_left.sent)
        await state.send(conn, out)


def _done(req_id, rows_left: rules.RowCap, result: FetchResult, started: float) -> bytes:
    """The ``done`` frame that ends an answer: rows sent, truncation, changes, and the time since ``started``."""
    return protocol.encode_done(
        req_id,
        rows=rows_left.sent,
        truncated=rows_left.truncated,
        changes=result.changes,
        last_insert_rowid=result.last_insert_rowid,
        elapsed_ms=(_clock() - started) * 1000,
    )


@dataclass(eq=False)
class ConnState:
    """What the request runner and the connection's watchers share about one connection."""

    session: Session
    proto: protocol.ServerProtocol
    sends: SendWatchdog
    io: DirectSocketIO
    busy: bool = False
    last_active: float = field(default_factory=trio.current_time)
    idle_bye: bytes | None = None  # set when the idle watcher closes the connection
    inline_refused: bool = False  # RequestRunner.answer_now found the request over the event loop's budget
    unsent: bytearray = field(default_factory=bytearray)  # the ready loop's answers not sent yet (serving.ParkedServer)

    async def send(self, conn: Connection, data: bytes) -> None:
        """Send ``data``: what the socket takes at once directly, the rest through the send watchdog.

        A direct write skips trio's scheduler round (:class:`~trionet.serving.DirectSocketIO`);
        the request loop checkpoints once per request, so the connection still
        takes its turn.
        """
        rest = self.io.send_now(data)
        if rest:
            await self.sends.send(conn.stream, rest)
