"""The trio shell of the SQL server: bytes and time in, SQLite in worker threads, frames out.

Each connection is one task (:meth:`SqlServer._handle`) that loops: read one
request through the sans-IO :class:`~trionet.sql.protocol.ServerProtocol`,
run it, send its answer, read the next. One request at a time, so a
pipelining client is held back by TCP, not by our memory.

A request runs on the event loop when the engine has seen it only read
through cheap functions (bounded by :data:`~trionet.sql.engine.INLINE_BUDGET`
VM instructions, then retried in a thread), otherwise in a worker thread.
While a thread works, a watcher task reads ahead (bounded) to notice a client
that leaves, and interrupts the statement then or at its query deadline.
Rows are streamed in batches, each sent before the next is fetched, so a
client that reads slowly slows only its own query, and the server holds at
most one batch per connection.

Statement threads are few (sized to the cores, so CPU-bound queries cannot
starve the event loop); opening and closing sessions has its own small pool,
so a new client is greeted at once however many queries run.

Beside the request loop, each connection has small watcher tasks: the send
watchdog (a client that reads nothing for ``send_timeout``), the idle
watcher, the shutdown watcher, and one that interrupts the statement however
the connection ends. What they decide (admission over ``max_connections``,
idle and idle-transaction deadlines, when to interrupt at shutdown, which
``bye`` to send, row caps, the query-time account) is decided by the pure
rules in :mod:`trionet.sql.rules`; this module only waits, reads and writes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import outcome
import trio

from trionet.framing import EOF
from trionet.log import get_logger
from trionet.serving import RECEIVE_CHUNK, Connection, SendWatchdog, TCPService, receive_event
from trionet.sql import protocol, rules
from trionet.sql.engine import DEFAULT_BATCH_BYTES, INLINE_BUDGET, Database, FetchResult, OverBudget, Session
from trionet.sql.errors import SqlError

__all__ = ["DEFAULT_STATEMENT_THREADS", "SqlServer", "SqlServerConfig", "serve_sql"]

log = get_logger("sql")

_SESSION_THREADS = 4  # threads opening and closing sessions (a file open, a rollback): short, I/O-bound
DEFAULT_STATEMENT_THREADS = max(2, os.cpu_count() or 2)
"""Worker threads running statements at once: one per core (at least 2)."""


@dataclass(frozen=True)
class SqlServerConfig:
    """The server's limits; every one of them is a ``trionet sql serve`` option.

    Attributes:
        query_timeout: seconds SQLite may work on one request (time spent
            waiting for the client to read rows does not count); 0 for none.
        send_timeout: a client that leaves the server's writes unread for
            between half this and this many seconds is disconnected.
        max_rows: the most rows one result may have (more are cut and marked
            truncated); 0 for no cap.
        max_request_bytes: the longest request line.
        batch_rows: rows per ``rows`` frame.
        max_batch_bytes: a ``rows`` frame ends early once its values hold
            about this many bytes (one row may go past it).
        max_threads: worker threads running statements at once (sized to
            the cores: more only helps statements that wait on a lock).
        max_connections: clients at once; the one over it gets ``bye busy``.
        idle_timeout: seconds a connection may stay silent between requests
            (``bye idle``); 0 for ever.
        idle_transaction_timeout: the same inside an open transaction
            (``bye idle_transaction``, rolled back); 0 for ever.
        inline: try short read-only statements on the event loop first (bounded
            by :data:`~trionet.sql.engine.INLINE_BUDGET`); off only to measure.
    """

    query_timeout: float = 30.0
    send_timeout: float = 60.0
    max_rows: int = 100_000
    max_request_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES
    batch_rows: int = 256
    max_batch_bytes: int = DEFAULT_BATCH_BYTES
    max_threads: int = DEFAULT_STATEMENT_THREADS
    max_connections: int = 1000
    idle_timeout: float = 300.0
    idle_transaction_timeout: float = 60.0
    inline: bool = True


class SqlServer:
    """Serve one :class:`Database` to any number of TCP clients.

    Args:
        database: the database to serve.
        config: the limits.
    """

    def __init__(self, database: Database, config: SqlServerConfig | None = None) -> None:
        self.database = database
        self.config = config or SqlServerConfig()
        self.service = TCPService("sql", self._handle, log)
        self._limiter = trio.CapacityLimiter(self.config.max_threads)
        self._session_limiter = trio.CapacityLimiter(_SESSION_THREADS)
        self._thread_tokens_held = trio.CapacityLimiter(math.inf)  # counted by self._limiter, not trio's default 40
        self._idle = rules.IdlePolicy(self.config.idle_timeout, self.config.idle_transaction_timeout)
        self._hello = protocol.encode_hello(
            read_only=not database.read_write,
            max_rows=self.config.max_rows,
            max_request_bytes=self.config.max_request_bytes,
            query_timeout=self.config.query_timeout,
            idle_timeout=self.config.idle_timeout,
            idle_transaction_timeout=self.config.idle_transaction_timeout,
        )
        self.inline_runs = 0
        """Statements answered on the event loop, within :data:`~trionet.sql.engine.INLINE_BUDGET`."""
        self.inline_fallbacks = 0
        """Statements tried on the event loop that ran out of budget and went to a worker thread."""

    async def serve(
        self, host: str = "127.0.0.1", port: int = protocol.DEFAULT_PORT, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or shut down; reports the bound addresses."""
        await self.service.serve(host, port, task_status=task_status)

    def shutdown(self, grace: float) -> None:
        """Stop accepting; let running requests finish within ``grace`` seconds."""
        self.service.shutdown(grace)

    # --- per connection -------------------------------------------------------

    async def _handle(self, conn: Connection) -> None:
        refusal = rules.admission_bye(len(self.service.connections), self.config.max_connections)
        if refusal is not None:
            # Say so rather than let the client meet a silent EOF (or, worse,
            # run the server out of descriptors for everyone).
            log.warning("sql: refusing %s: %d connections open", conn.peer, len(self.service.connections) - 1)
            with trio.move_on_after(1):
                await conn.stream.send_all(refusal)
            return
        session = await trio.to_thread.run_sync(self.database.open_session, limiter=self._session_limiter)
        state = _ConnState(
            session, protocol.ServerProtocol(self.config.max_request_bytes), SendWatchdog(self.config.send_timeout)
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_drain, conn, state, nursery.cancel_scope)
                nursery.start_soon(self._interrupt_when_cancelled, session)
                with trio.CancelScope() as requests_scope:
                    nursery.start_soon(state.sends.watch, requests_scope)
                    nursery.start_soon(self._watch_idle, state, requests_scope)
                    await self._serve_requests(conn, state)
                if state.sends.stalled:
                    # The client has not read what we sent for send_timeout
                    # seconds; the stream may be mid-frame, so it cannot go on.
                    raise trio.BrokenResourceError(f"client read nothing for {self.config.send_timeout}s")
                if state.idle_bye is not None:
                    with trio.move_on_after(1):
                        await conn.stream.send_all(state.idle_bye)
                nursery.cancel_scope.cancel()
        finally:
            session.interrupt("connection closed")
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(session.close, limiter=self._session_limiter)

    async def _serve_requests(self, conn: Connection, state: "_ConnState") -> None:
        # The course's loop, for one connection: wait for a request, handle
        # it, repeat. One request at a time, so a pipelining client is held
        # back by TCP, not by our memory.
        await self._send(state, conn, self._hello)
        while not conn.draining.is_set():
            state.last_active = trio.current_time()
            try:
                request = await receive_event(conn.stream, state.proto)
            except (trio.BrokenResourceError, OSError):
                return  # reset by the client
            if request is EOF or state.session.aborted:
                return  # the client is gone (we do not answer after a half-close)
            conn.requests += 1
            state.busy = True
            if isinstance(request, protocol.BadRequest):
                await self._send(state, conn, protocol.encode_error(request.id, request.code, request.message))
            else:
                await self._run(conn, state, request)
            state.busy = False
        await self._send(state, conn, rules.SHUTDOWN_BYE)

    async def _watch_idle(self, state: "_ConnState", scope: trio.CancelScope) -> None:
        # One sleeping task per connection, not a cancel scope per request
        # (the per-request cost the send watchdog also avoids); the rule of
        # when to close lives in rules.IdlePolicy.
        while True:
            wake, bye = self._idle.check(
                trio.current_time(), state.last_active, state.busy, state.session.in_transaction
            )
            if bye is not None:
                state.idle_bye = bye
                scope.cancel()
                return
            await trio.sleep_until(wake)

    async def _watch_drain(self, conn: Connection, state: "_ConnState", scope: trio.CancelScope) -> None:
        await conn.draining.wait()
        if not state.busy:
            with trio.move_on_after(1):
                await conn.stream.send_all(rules.SHUTDOWN_BYE)
            scope.cancel()
            return
        # A busy connection finishes its request, says bye and closes; one
        # that would outlive the grace period is interrupted shortly before.
        await trio.sleep_until(rules.shutdown_interrupt_at(trio.current_time(), self.service.grace_deadline))
        state.session.interrupt("the server is shutting down")

    @staticmethod
    async def _interrupt_when_cancelled(session: Session) -> None:
        # However this connection ends (client gone, the end of the shutdown
        # grace, the whole server cancelled), the worker thread must not
        # outlive it: a thread cannot be cancelled, but its statement can.
        try:
            await trio.sleep_forever()
        finally:
            session.interrupt("connection closing")

    @staticmethod
    async def _send(state: "_ConnState", conn: Connection, data: bytes) -> None:
        await state.sends.send(conn.stream, data)

    async def _in_thread(self, conn: Connection, state: "_ConnState", deadline: float, fn, *args) -> FetchResult:
        """Run ``fn`` in a worker thread while watching the client and the clock.

        The watcher interrupts the statement from the event loop at the
        deadline, or at once when the client leaves; inside SQLite only a
        rare abort check runs (see ``Session._count_instructions``).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_while_working, conn, state, deadline)
            # The watcher never raises, so what the thread raised (an
            # SqlError, say) is re-raised as is, not wrapped in a group.
            # The caller holds a statement-thread token (self._limiter) already.
            result = await outcome.acapture(trio.to_thread.run_sync, fn, *args, limiter=self._thread_tokens_held)
            nursery.cancel_scope.cancel()
        return result.unwrap()

    async def _watch_while_working(self, conn: Connection, state: "_ConnState", deadline: float) -> None:
        with trio.move_on_at(deadline) as timer:
            # Read ahead, bounded, so that a client that leaves is noticed now
            # rather than at the next send; what it pipelined stays queued in
            # the protocol object for the loop.
            while state.proto.buffered < self.config.max_request_bytes:
                try:
                    data = await conn.stream.receive_some(RECEIVE_CHUNK)
                except (trio.BrokenResourceError, OSError):
                    data = b""
                state.proto.receive_data(data)
                if not data:
                    break
            else:
                await trio.sleep_forever()
        # Client gone or time up. SQLite ignores an interrupt that comes
        # before the statement starts, so repeat it until the thread returns
        # (this task is cancelled then).
        while True:
            if timer.cancelled_caught:
                state.session.interrupt_for_timeout()
            else:
                state.session.interrupt("client gone")
            await trio.sleep(0.05)

    async def _run(self, conn: Connection, state: "_ConnState", request: protocol.Request) -> None:
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
            if self.config.inline and self.database.may_run_inline(request.sql):
                # A short read costs less here than a thread hop (docs/benchmarks.md);
                # the VM-instruction budget bounds how long it holds the event loop.
                try:
                    result = session.execute(request.sql, request.params, rows_left.want(), INLINE_BUDGET, max_bytes)
                    self.inline_runs += 1
                except OverBudget:
                    self.inline_fallbacks += 1
            if result is None:
                result = await in_sqlite(session.execute, request.sql, request.params, rows_left.want(), 0, max_bytes)
            out = protocol.encode_columns(req_id, result.columns or [])
            while True:
                rows = rows_left.take(result.rows)
                if rows:
                    out += protocol.encode_rows(req_id, rows)
                if rows_left.truncated or result.exhausted:
                    break
                await self._send(state, conn, out)  # backpressure: the next batch waits for this one
                out = b""
                result = await in_sqlite(session.fetch, rows_left.want(), max_bytes)
            if rows_left.truncated and not result.exhausted:
                session.cancel_statement()
            out += protocol.encode_done(
                req_id,
                rows=rows_left.sent,
                truncated=rows_left.truncated,
                changes=result.changes,
                last_insert_rowid=result.last_insert_rowid,
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
        except SqlError as exc:
            out += protocol.encode_error(req_id, exc.code, exc.message)
        await self._send(state, conn, out)


@dataclass(eq=False)
class _ConnState:
    session: Session
    proto: protocol.ServerProtocol
    sends: SendWatchdog
    busy: bool = False
    last_active: float = field(default_factory=trio.current_time)
    idle_bye: bytes | None = None  # set when the idle watcher closes the connection


async def serve_sql(
    database: Database,
    host: str = "127.0.0.1",
    port: int = protocol.DEFAULT_PORT,
    *,
    config: SqlServerConfig | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``database`` on ``host``:``port`` until cancelled.

    ``await nursery.start(serve_sql, db, "127.0.0.1", 0)`` returns the bound
    addresses, so tests and the demo can use a free port.
    """
    await SqlServer(database, config).serve(host, port, task_status=task_status)
