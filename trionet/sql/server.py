"""The trio shell of the SQL server: bytes and time in, SQLite in worker threads, frames out.

Each connection is one task (:meth:`SqlServer._handle`) that loops: read one
request through the sans-IO :class:`~trionet.sql.protocol.ServerProtocol`,
run it, send its answer, read the next. One request at a time, so a
pipelining client is held back by TCP, not by our memory.

Running a request (on the event loop within a budget, or in a worker thread
watched for the client leaving and for its deadline, rows streamed in
batches with backpressure) is :class:`~trionet.sql.execute.RequestRunner`'s job.

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

import os
from dataclasses import dataclass

import trio

from trionet.framing import EOF, NEED_DATA
from trionet.log import get_logger
from trionet.serving import Connection, DirectSocketIO, ParkedServer, SendWatchdog, TCPService, receive_event
from trionet.sql import protocol, rules
from trionet.sql.auth import MECHANISM, AuthConfig, HelloLogin
from trionet.sql.engine import DEFAULT_BATCH_BYTES, Database
from trionet.sql.execute import ConnState, RequestRunner
from trionet.sql.watch import SESSION_THREADS, interrupt_when_cancelled
from trionet.tls import TLSServerConfig

__all__ = ["DEFAULT_STATEMENT_THREADS", "SqlServer", "SqlServerConfig", "serve_sql"]

log = get_logger("sql")

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


_NOT_NOW = "an auth message is valid only right after hello, when the hello lists 'auth'"


class SqlServer:
    """Serve one :class:`Database` to any number of TCP clients.

    Args:
        database: the database to serve.
        config: the limits.
        tls: serve TLS from the first byte (``--tls-cert/--tls-key``); the
            handshake happens before admission, under its own timeout.
        auth: ask every client for a user and password in the hello
            exchange (``--users``); None trusts every client.
    """

    def __init__(
        self,
        database: Database,
        config: SqlServerConfig | None = None,
        *,
        tls: TLSServerConfig | None = None,
        auth: AuthConfig | None = None,
    ) -> None:
        self.database = database
        self.config = config or SqlServerConfig()
        self.auth = auth
        self.auth_failures_total = 0
        """Logins that failed (wrong password, unknown user, a request first, too slow); :mod:`trionet.sql.metrics`."""
        self.service = TCPService("sql", self._handle, log, tls=tls)
        self._limiter = trio.CapacityLimiter(self.config.max_threads)
        self._session_limiter = trio.CapacityLimiter(SESSION_THREADS)
        self._idle = rules.IdlePolicy(self.config.idle_timeout, self.config.idle_transaction_timeout)
        self._hello = protocol.encode_hello(
            read_only=not database.read_write,
            max_rows=self.config.max_rows,
            max_request_bytes=self.config.max_request_bytes,
            query_timeout=self.config.query_timeout,
            idle_timeout=self.config.idle_timeout,
            idle_transaction_timeout=self.config.idle_transaction_timeout,
            auth=[MECHANISM] if auth is not None else None,
        )
        self._runner = RequestRunner(database, self.config, self._limiter)

    @property
    def runner(self) -> RequestRunner:
        """What runs the requests, and counts them (read by :mod:`trionet.sql.metrics`)."""
        return self._runner

    @property
    def statement_limiter(self) -> trio.CapacityLimiter:
        """The worker threads that run statements (``--query-threads``); the PostgreSQL front shares them."""
        return self._limiter

    @property
    def inline_runs(self) -> int:
        """Statements answered on the event loop, within :data:`~trionet.sql.engine.INLINE_BUDGET`."""
        return self._runner.inline_runs

    @property
    def inline_fallbacks(self) -> int:
        """Statements tried on the event loop that ran out of budget and went to a worker thread."""
        return self._runner.inline_fallbacks

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
        proto = protocol.ServerProtocol(self.config.max_request_bytes)
        if self.auth is not None and not await self._login(conn, proto):
            return
        session = await trio.to_thread.run_sync(self.database.open_session, limiter=self._session_limiter)
        state = ConnState(session, proto, SendWatchdog(self.config.send_timeout), DirectSocketIO(conn.stream))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_drain, conn, state, nursery.cancel_scope)
                nursery.start_soon(interrupt_when_cancelled, session)
                with trio.CancelScope() as requests_scope:
                    nursery.start_soon(state.sends.watch, requests_scope)
                    nursery.start_soon(self._watch_idle, state, requests_scope)
                    await self._serve_requests(conn, state, greeted=self.auth is not None)
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

    async def _login(self, conn: Connection, proto: protocol.ServerProtocol) -> bool:
        """Send hello and run the client's authentication (:class:`~trionet.sql.auth.HelloLogin`); True when it succeeded."""
        login = HelloLogin(self.auth)
        with trio.move_on_after(self.auth.timeout) as scope:
            await conn.stream.send_all(self._hello)
            while True:
                try:
                    event = await receive_event(conn.stream, proto)
                except (trio.BrokenResourceError, OSError):
                    return False
                if event is EOF:
                    return False
                step = login.receive(event)
                if step.log is not None:
                    log.warning("sql: authentication failed for %s: %s", conn.peer, step.log)
                if step.done and step.user is not None:
                    await conn.stream.send_all(step.reply)
                    log.info("sql: %s authenticated as %r", conn.peer, step.user)
                    return True
                if step.done:
                    break
                await conn.stream.send_all(step.reply)
        self.auth_failures_total += 1
        if scope.cancelled_caught:
            log.warning("sql: authentication failed for %s: not finished within %ss", conn.peer, self.auth.timeout)
            step_reply = protocol.encode_bye(
                f"authentication not finished within {self.auth.timeout} s (--auth-timeout)", "auth_timeout"
            )
            delay = 0.0
        else:
            step_reply, delay = step.reply, step.delay
        # The delay is this connection's alone: others are served meanwhile.
        await trio.sleep(delay)
        with trio.move_on_after(1):
            await conn.stream.send_all(step_reply)
        return False

    async def _serve_requests(self, conn: Connection, state: ConnState, *, greeted: bool = False) -> None:
        # The course's loop, for one connection: wait for a request, handle
        # it, repeat. One request at a time, so a pipelining client is held
        # back by TCP, not by our memory.
        if not greeted:
            await self._send(state, conn, self._hello)
        io = state.io
        proto = state.proto
        draining = conn.draining
        ready = conn.service.ready
        parked = self._parked_server(conn, state)
        while not draining.is_set():
            state.last_active = trio.current_time()
            # The next request. On a plain socket the wait is parked in the
            # service's ReadyLoop, which reads the socket directly and
            # answers the requests it can answer at once
            # (RequestRunner.answer_now) without waking this task; anything
            # else comes back here. It waits before trying to read: the
            # answer just went out, so a client that waits for its answers
            # cannot have sent more yet (a read would only fail with
            # EAGAIN), and one that pipelines has its requests in the
            # framer's buffer. The wait is the connection's checkpoint; a
            # request found in the buffer gets one of its own, so a client
            # that pipelines takes turns with the others (the direct send
            # has none). The idle timeout needs no scope here: _watch_idle.
            try:
                request = proto.next_event()
                if request is NEED_DATA:
                    while request is NEED_DATA:
                        if not io.direct:
                            await io.wait(proto)
                        elif await io.park(ready, parked.serve, parked.out):
                            if state.unsent:
                                unsent = bytes(state.unsent)
                                state.unsent.clear()
                                await state.sends.send(conn.stream, unsent)
                            request, _ = parked.take_handback()  # answer_now tried it: run() knows (inline_refused)
                            if request is None:
                                request = proto.next_event()  # EOF, or requests left in the buffer
                            continue
                        else:
                            io.read_ready(proto)  # direct: what woke us up (EOF reads b"")
                        request = proto.next_event()
                else:
                    ready.give_way()  # the ready loop's thread, if it runs as one, first
                    await trio.lowlevel.checkpoint()
            except (trio.BrokenResourceError, OSError):
                return  # reset by the client
            if request is EOF or state.session.aborted:
                return  # the client is gone (we do not answer after a half-close)
            conn.requests += 1
            state.busy = True
            if type(request) is protocol.Request:
                await self._runner.run(conn, state, request)
            elif type(request) is protocol.BadRequest:
                await self._send(state, conn, protocol.encode_error(request.id, request.code, request.message))
            else:  # an AuthMessage
                await self._send(state, conn, protocol.encode_error(None, "bad_request", _NOT_NOW))
            state.busy = False
        await self._send(state, conn, rules.SHUTDOWN_BYE)

    def _parked_server(self, conn: Connection, state: ConnState) -> ParkedServer:
        """What the ready loop does for this connection: answer the reads :meth:`RequestRunner.answer_now` answers.

        The answers go into ``state.unsent``; each is counted, and a read
        that answered something is activity for the idle watcher; anything
        else goes back to the task (:class:`~trionet.serving.ParkedServer`).
        """
        answer_now = self._runner.answer_now
        unsent = state.unsent

        def answer(request) -> bool:
            if type(request) is not protocol.Request or state.session.aborted:
                return False
            reply = answer_now(state, request)
            if reply is None:
                return False
            unsent.extend(reply)
            conn.requests += 1
            return True

        now = conn.service.ready.now  # trio's clock, read in the ready loop's thread

        def answered() -> None:
            state.last_active = now()

        return ParkedServer(state.io, state.proto, answer, unsent, conn.draining, answered, _PARKED_BURST)

    async def _watch_idle(self, state: ConnState, scope: trio.CancelScope) -> None:
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

    async def _watch_drain(self, conn: Connection, state: ConnState, scope: trio.CancelScope) -> None:
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
    async def _send(state: ConnState, conn: Connection, data: bytes) -> None:
        await state.send(conn, data)


_PARKED_BURST = 8
"""Requests the ready loop answers from one read before it hands a (pipelining) connection back to its task."""


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
