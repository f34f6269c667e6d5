"""The trio shell of the PostgreSQL front: accept, start up, feed messages to the executor, close.

Bytes from the socket go into the sans-IO :class:`~trionet.sql.pg.protocol.PgServerProtocol`;
each frontend message it returns is handed to the
:class:`~trionet.sql.pg.executor.Executor` in order, one at a time, so a
pipelining client is held back by TCP, not by our memory. Statements run
through the same :class:`~trionet.sql.engine.Session` as the NDJSON server,
with the same safety: the sandbox's authorizer (read-only unless the
database was opened read-write), a query timeout, a cap on result rows, a
bounded pool of statement threads, and a rollback when the client leaves.

Every connection is a resource with limits: ``startup_timeout`` to finish
its startup, at most ``max_connections`` (the one over gets FATAL 53300),
``idle_timeout`` / ``idle_transaction_timeout`` of silence (FATAL 57P05 /
25P03), and at shutdown FATAL 57P01 once the message in hand is answered (a
statement still running shortly before the grace period ends is
interrupted).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import trio

from trionet.framing import EOF, NEED_DATA
from trionet.log import get_logger
from trionet.placement import PLAN_DELAY, REGROUP_TRIES, TICK, next_tick
from trionet.serving import (
    Connection,
    DirectSocketIO,
    IdleWatch,
    ParkedServer,
    SendWatchdog,
    TCPService,
    receive_event,
)
from trionet.sql import rules
from trionet.sql.engine import Database
from trionet.sql.pg import messages as m
from trionet.sql.auth import AuthConfig
from trionet.sql.pg.config import DEFAULT_PG_PORT, PgConfig
from trionet.sql.pg.executor import ConnState, Executor
from trionet.sql.pg.handover import Handover, capture
from trionet.sql.pg.login import INVALID_AUTHORIZATION, LoginRefused, authenticate, close_tls, start_tls
from trionet.sql.pg.protocol import (
    EncryptionRefused,
    PgServerProtocol,
    PortalRun,
    ProtocolViolation,
)
from trionet.sql.pg.session import Settings
from trionet.sql.pg.sqlstate import PROTOCOL_VIOLATION
from trionet.sql.watch import SESSION_THREADS, interrupt_when_cancelled
from trionet.tls import TLSServerConfig, server_end_point

__all__ = ["PgServer", "serve_pg"]

log = get_logger("sql")

class PgServer:
    """Serve one :class:`~trionet.sql.engine.Database` to PostgreSQL clients (protocol v3).

    Args:
        database: the database to serve.
        config: the limits.
        limiter: the statement threads; pass the NDJSON server's to share
            one pool of ``max_threads`` between both fronts (default: a pool
            of ``config.max_threads`` of its own).
        pids: the BackendKeyData process ids to hand out (default: counting
            from a random start); a worker of ``--workers`` encodes itself in them.
        forward_cancel: ``forward_cancel(request, worker)`` for a CancelRequest
            whose key is not one of this server's: another worker's
            (:mod:`trionet.sql.workers`); ``worker`` is where this server
            moved that connection, or None.
        tls: answer SSLRequest with ``S`` and TLS (``--tls-cert/--tls-key``);
            a client that does not ask for TLS is then refused (FATAL 28000),
            except a CancelRequest (libpq sends those in plain text).
        auth: authenticate every client with SCRAM-SHA-256 against these
            users (``--users``); None trusts every client.

    Attributes:
        service: the :class:`~trionet.serving.TCPService` (connections, counters).
    """

    def __init__(
        self,
        database: Database,
        config: PgConfig | None = None,
        *,
        limiter: trio.CapacityLimiter | None = None,
        pids: Iterator[int] | None = None,
        forward_cancel: Callable[[m.CancelRequest, int | None], None] | None = None,
        tls: TLSServerConfig | None = None,
        auth: AuthConfig | None = None,
    ) -> None:
        self.database = database
        self.config = config or PgConfig()
        self.tls = tls
        self.auth = auth
        # SCRAM-SHA-256-PLUS's channel binding: the certificate's hash, read once.
        self._end_point = server_end_point(tls.cert) if tls is not None and auth is not None else None
        if tls is not None and auth is not None and self._end_point is None:
            log.warning("pg: SCRAM-SHA-256-PLUS not offered: no channel binding for the signature of %s", tls.cert)
        self.auth_failures_total = 0
        """Logins refused (wrong password, unknown user, a malformed exchange); :mod:`trionet.sql.metrics`."""
        self._admitted = 0  # connections past their startup (and login): what max_connections counts
        self.service = TCPService("pg", self._handle_then_close_tls, log)
        self._executor = Executor(
            self.config,
            limiter or trio.CapacityLimiter(self.config.max_threads),
            roles=tuple(auth.users) if auth is not None else (),
        )
        self._session_limiter = trio.CapacityLimiter(SESSION_THREADS)
        self._pids = pids if pids is not None else itertools.count(secrets.randbelow(1 << 20) + 1000)
        self._forward_cancel = forward_cancel
        self._keys: dict[int, tuple[int, ConnState]] = {}  # BackendKeyData pid -> (secret, connection)
        self._moved: OrderedDict[int, int] = OrderedDict()  # pid -> the worker a connection moved to (cancels)

    async def serve(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PG_PORT, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or shut down; reports the bound addresses through ``task_status``."""
        await self.service.serve(host, port, task_status=task_status)

    def shutdown(self, grace: float) -> None:
        """Stop accepting; let running statements finish within ``grace`` seconds."""
        self.service.shutdown(grace)

    # --- per connection ---------------------------------------------------------

    async def _handle_then_close_tls(self, conn: Connection) -> None:
        try:
            await self._handle(conn)
        finally:
            await close_tls(conn)

    async def _handle(self, conn: Connection) -> None:
        if conn.handed is not None:
            await self._serve_moved(conn)
            return
        # coalesce: a whole Bind/Describe/Execute/Sync comes as one PortalRun (the executor's fast path).
        proto = PgServerProtocol(self.config.max_message_bytes, coalesce=True)
        startup = None
        refusal: LoginRefused | None = None
        with trio.move_on_after(self.config.startup_timeout) as startup_scope:
            startup = await self._startup(conn, proto)
            if startup is not None and self.auth is not None:
                binding = self._end_point if isinstance(conn.stream, trio.SSLStream) else None
                outcome = await authenticate(conn, proto, self.auth, startup.parameters.get("user", ""), channel_binding=binding)
                if outcome is not True:
                    startup = None
                    refusal = outcome if isinstance(outcome, LoginRefused) else None
                    if refusal is not None:
                        self.auth_failures_total += 1
        if startup_scope.cancelled_caught:
            await _fatal(
                conn, proto, "08006", f"the startup took longer than {self.config.startup_timeout} s (startup_timeout)"
            )
        if refusal is not None:
            await trio.sleep(refusal.delay)  # this connection's alone: guessing is slow, nobody else waits
            await _fatal(conn, proto, refusal.code, refusal.message)
        if startup is None:
            return
        await self._admit(conn, proto, startup)

    async def _serve_moved(self, conn: Connection) -> None:
        """Go on with a connection another worker started and moved here (:mod:`trionet.placement`)."""
        try:
            handover = Handover.decode(conn.handed)
        except ValueError as exc:
            log.error("pg: a connection moved from another worker came with a bad state (%s): closed", exc)
            return
        # The other worker moves a connection only within an even share, so
        # the limit is reached here only by a race with new connections.
        await self._admit(conn, PgServerProtocol(self.config.max_message_bytes, coalesce=True, started=True), None, handover)

    async def _admit(
        self, conn: Connection, proto: PgServerProtocol, startup: m.StartupMessage | None, moved: Handover | None = None
    ) -> None:
        """Serve a connection past its startup if ``max_connections`` has room, else FATAL 53300."""
        # Only connections past their startup count: one that stalls its TLS
        # handshake or its login holds no slot (the startup timeout ends it).
        if rules.over_connection_limit(self._admitted + 1, self.config.max_connections):
            how = " (moved from another worker)" if moved is not None else ""
            log.warning("pg: refusing %s%s: %d connections open", conn.peer, how, self._admitted)
            await _fatal(conn, proto, "53300", f"sorry, too many clients already ({self.config.max_connections})")
            return
        self._admitted += 1
        try:
            await self._serve_admitted(conn, proto, startup, moved)
        finally:
            self._admitted -= 1

    async def _serve_admitted(
        self, conn: Connection, proto: PgServerProtocol, startup: m.StartupMessage | None, moved: Handover | None = None
    ) -> None:
        """Serve a connection past its startup: a new one (``startup``) or one moved here (``moved``)."""
        session = await trio.to_thread.run_sync(self.database.open_session, limiter=self._session_limiter)
        if moved is None:
            pid, secret = next(self._pids), secrets.randbits(31)
            settings = Settings(startup.parameters, read_only=not self.database.read_write)
        else:
            pid, secret = moved.pid, moved.secret
            settings = Settings.restore(moved.settings)
        st = ConnState(
            conn,
            proto,
            SendWatchdog(self.config.send_timeout),
            session,
            settings,
            pid,
            DirectSocketIO(conn.stream),
        )
        self._keys[pid] = (secret, st)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(interrupt_when_cancelled, session)
                with trio.CancelScope() as messages_scope:
                    nursery.start_soon(st.sends.watch, messages_scope)
                    nursery.start_soon(self._watch_drain, st, messages_scope)
                    idle, idle_scope = IdleWatch(), trio.CancelScope()
                    timeouts = [t for t in (self.config.idle_timeout, self.config.idle_transaction_timeout) if t > 0]
                    if timeouts:
                        nursery.start_soon(idle.watch, idle_scope, min(timeouts))
                    if moved is None:
                        await self._executor.greet(st, startup, secret)
                    else:
                        await self._executor.restore(st, moved.statements)
                    await self._serve_messages(st, idle, idle_scope)
                if conn.moved_to is not None:
                    nursery.cancel_scope.cancel()
                    return  # another worker has it now: not a word from here
                if st.sends.stalled:
                    # Unread for send_timeout: the stream may be mid-message, it cannot go on.
                    raise trio.BrokenResourceError(f"client read nothing for {self.config.send_timeout}s")
                if conn.draining.is_set():
                    await _fatal(conn, proto, "57P01", "terminating connection due to administrator command")
                nursery.cancel_scope.cancel()
        finally:
            del self._keys[pid]
            session.interrupt("connection closed")
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(session.close, limiter=self._session_limiter)

    async def _startup(self, conn: Connection, proto: PgServerProtocol) -> m.StartupMessage | None:
        while True:
            try:
                event = await receive_event(conn.stream, proto)
            except (trio.BrokenResourceError, OSError):
                return None
            if isinstance(event, m.SslRequest) and self.tls is not None and not _encrypted(conn):
                outcome = await start_tls(conn, proto, self.tls)
                if isinstance(outcome, LoginRefused):
                    await _fatal(conn, proto, outcome.code, outcome.message)
                if outcome is not True:
                    return None
            elif isinstance(event, (m.SslRequest, m.GssEncRequest)):
                await conn.stream.send_all(proto.send(EncryptionRefused()))  # go on as we are
            elif isinstance(event, m.StartupMessage):
                if self.tls is not None and not _encrypted(conn):
                    await _fatal(conn, proto, INVALID_AUTHORIZATION, _TLS_REQUIRED)
                    return None
                return event
            elif isinstance(event, m.CancelRequest):
                self.cancel(event)
                return None
            elif isinstance(event, ProtocolViolation):
                await _fatal(conn, proto, PROTOCOL_VIOLATION, event.message)
                return None
            else:
                return None  # EOF: a truncated startup packet, or a port scan

    async def _serve_messages(self, st: ConnState, idle: IdleWatch, idle_scope: trio.CancelScope) -> None:
        """Answer the client's messages until it leaves, breaks the protocol, idles too long or the server drains.

        Answers pile up in ``st.out`` and go out in one send when every
        message that arrived has been handled (before the loop waits for
        more), so a pipeline of Bind/Describe/Execute/Sync, or of many
        Syncs, costs one send; the executor also sends before a statement
        goes to a thread and once 64 KB are pending. On a plain TCP socket
        reads and sends that can finish at once skip trio's scheduler
        (:class:`~trionet.serving.DirectSocketIO`): one scheduler round per
        read, a checkpoint when the read did not have to wait.

        The idle timeouts: before a wait the loop sets ``idle.deadline``
        (kept across the reads of one message), and ``idle``'s watcher
        cancels ``idle_scope`` if it passes while the loop still waits: no
        cancel scope per wait (:class:`~trionet.serving.IdleWatch`).
        """
        with idle_scope:
            await self._message_loop(st, idle)
        if idle.expired:
            # Nothing ran while the loop waited: the transaction state is the one it waited in.
            if st.session.in_transaction:
                code, what = "25P03", "idle-in-transaction"
            else:
                code, what = "57P05", "idle-session"
            await _fatal(st.conn, st.proto, code, f"terminating connection due to {what} timeout")

    async def _message_loop(self, st: ConnState, idle: IdleWatch) -> None:
        conn = st.conn
        proto = st.proto
        io = st.io
        handle = self._executor.handle
        draining = conn.draining
        ready = conn.service.ready
        parked = self._parked_server(st, idle)
        fast = True  # False for an event the ready loop's fast paths already refused
        # The looks at the client's CPU (trionet.placement), for a new
        # connection of a worker that places them.
        regroup = None
        if conn.service.placer is not None and io.direct and not _encrypted(conn) and conn.handed is None:
            regroup = _Regroup(conn.service.placer.first_look(time.monotonic()))
        try:
            while not draining.is_set():
                event = proto.next_event()  # pipelined messages are served without a timer each
                if event is NEED_DATA:
                    if st.out:
                        await self._send_pending(st)
                    if idle.deadline is None:
                        idle.deadline = self._idle_deadline(st)
                    try:
                        if io.direct:
                            # Wait parked in the service's ReadyLoop, which
                            # answers what the fast paths can answer without
                            # waking this task; anything else comes back here.
                            # No read first: an answer just went out, so a
                            # client that waits for it has sent nothing yet.
                            if regroup is None:  # (no cancel scope per wait once the looks are over)
                                handed_back = await io.park(ready, parked.serve, parked.out)
                            else:
                                with trio.move_on_at(regroup.deadline()) as regroup_scope:
                                    handed_back = await io.park(ready, parked.serve, parked.out)
                                if regroup_scope.cancelled_caught:
                                    # Unparked between two reads of the loop's (under its lock).
                                    if self._regroup(st, regroup):
                                        return
                                    if regroup.tries >= REGROUP_TRIES:
                                        regroup = None  # it stays here for good
                                    continue
                            if idle.expired:
                                return
                            if handed_back:
                                event, fast = parked.take_handback()
                                if event is None:
                                    continue  # EOF, more messages, a send left over: the loop's top
                            else:
                                io.read_ready(proto)  # what woke us up (EOF reads b"")
                                event = proto.next_event()
                        else:
                            event = await receive_event(conn.stream, proto)
                    except (trio.BrokenResourceError, OSError):
                        return
                    if idle.expired:
                        return
                    if event is NEED_DATA:
                        continue  # a part of a message, or a spurious wake-up: the same deadline
                idle.deadline = None
                kind = type(event)
                if event is EOF or kind is m.Terminate:
                    return
                if kind is ProtocolViolation:
                    await self._send_pending(st)
                    await _fatal(conn, proto, PROTOCOL_VIOLATION, event.message)
                    return
                if kind is m.UnexpectedMessage:
                    await self._send_pending(st)
                    await _fatal(conn, proto, PROTOCOL_VIOLATION, f"invalid frontend message type {event.type!r}")
                    return
                conn.requests += event.count if kind is PortalRun else 1
                await handle(st, event, fast=fast)
                fast = True
        finally:
            idle.deadline = None
            if st.out and not st.sends.stalled:
                # What was answered before the loop ended (Terminate or EOF
                # after a pipeline, a drain, an error) still reaches the client.
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    try:
                        await self._send_pending(st)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass

    def _idle_deadline(self, st: ConnState, now: Callable[[], float] = trio.current_time) -> float | None:
        """When the wait for the next message ends (idle or idle-in-transaction timeout), or None for never.

        ``now`` is trio's clock; the ready loop passes its own reading of it
        (:attr:`~trionet.serving.ReadyLoop.now`), which works in its thread.
        """
        config = self.config
        timeout = config.idle_transaction_timeout if st.session.in_transaction else config.idle_timeout
        return now() + timeout if timeout > 0 else None

    def _parked_server(self, st: ConnState, idle: IdleWatch) -> ParkedServer:
        """What the ready loop does for this connection: answer what the fast paths answer, into ``st.out``.

        Each message :meth:`Executor.answerer` answers is counted, and a
        read that answered something starts the idle clock again
        (:meth:`_idle_deadline`); anything else goes back to the task
        (:class:`~trionet.serving.ParkedServer`).
        """
        conn = st.conn
        answer = self._executor.answerer(st)
        now = conn.service.ready.now
        deadline = self._idle_deadline

        def answered() -> None:
            idle.deadline = deadline(st, now)

        return ParkedServer(st.io, st.proto, answer, st.out, conn.draining, answered, _PARKED_BURST)

    async def _send_pending(self, st: ConnState) -> None:
        # Busy while sending: a drain must not cut a send in the middle of a message.
        st.busy = True
        try:
            await self._executor.flush(st)
        finally:
            st.busy = False

    def _regroup(self, st: ConnState, regroup: _Regroup) -> bool:
        """One moment of a look at ``st``'s client's CPU; True if the connection moved to another worker.

        At the tick it notes the worker its client's CPU wants; at the
        plan's moment it moves there if :meth:`Placer.decide
        <trionet.placement.Placer.decide>` says so and it can move now
        (:func:`~trionet.sql.pg.handover.capture`), stays for good if the
        look says stay, else waits for the next tick. See :mod:`trionet.placement`.
        """
        conn = st.conn
        placer = conn.service.placer
        if regroup.late():
            # Busy past the moment (a statement, a send): its note or plan
            # would be for a look the others are done with. The next one.
            regroup.tick, regroup.planning = next_tick(time.monotonic()), False
            regroup.tries += 1
            return False
        if not regroup.planning:
            regroup.target = placer.cpu_target(conn.stream.socket)
            placer.note(regroup.tick, regroup.target)
            regroup.planning = True
            return False
        regroup.planning = False
        tick, target = regroup.tick, regroup.target
        regroup.tick += 1
        regroup.tries += 1
        decision = placer.decide(tick, target)
        if decision != "move":
            if decision == "stay":
                regroup.tries = REGROUP_TRIES  # settled: it looks no more
            return False
        secret, _ = self._keys[st.pid]
        handover = capture(st, secret, encrypted=_encrypted(conn))
        if handover is None or not placer.hand_over(target, conn.stream.socket, handover.encode()):
            return False
        conn.moved_to = target
        self._moved[st.pid] = target
        if len(self._moved) > _MOVED_REMEMBERED:
            self._moved.popitem(last=False)
        return True

    def cancel(self, request: m.CancelRequest, *, forward: bool = True) -> bool:
        """Interrupt the statement of the connection ``request`` names, if its secret matches.

        A key this server does not hold goes to ``forward_cancel`` (when
        ``forward`` and one was given, or whatever ``forward`` says when this
        server moved that connection to another worker); PostgreSQL answers
        nothing either way.
        Returns whether the key was one of this server's connections.
        """
        entry = self._keys.get(request.pid)
        if entry is None:
            # A connection this server moved away: its new worker, even for a
            # cancel another worker forwarded here (its key names this one).
            moved_to = self._moved.get(request.pid)
            if (forward or moved_to is not None) and self._forward_cancel is not None:
                self._forward_cancel(request, moved_to)
            return False
        secret, target = entry
        if not secrets.compare_digest(secret.to_bytes(4, "big"), (request.secret & 0xFFFFFFFF).to_bytes(4, "big")):
            return False
        self._executor.cancel(target)
        return True

    async def _watch_drain(self, st: ConnState, scope: trio.CancelScope) -> None:
        await st.conn.draining.wait()
        if not st.busy:
            scope.cancel()
            return
        # A busy connection finishes its message and closes; a statement that
        # would outlive the grace period is interrupted shortly before its
        # end, so the client still gets the answer (57014) and the FATAL.
        await trio.sleep_until(rules.shutdown_interrupt_at(trio.current_time(), self.service.grace_deadline))
        st.session.interrupt("the server is shutting down")


class _Regroup:
    """One connection's looks at its client's CPU: the next tick, which moment of it, what it noted."""

    __slots__ = ("tick", "planning", "target", "tries")

    def __init__(self, tick: int) -> None:
        self.tick = tick
        self.planning = False  # False: the tick's moment comes next (note); True: the plan's (move)
        self.target: int | None = None
        self.tries = 0

    def _moment(self) -> float:
        return self.tick * TICK + (PLAN_DELAY if self.planning else 0.0)

    def deadline(self) -> float:
        """The next moment in trio's clock (the ticks are on CLOCK_MONOTONIC, the same in every worker)."""
        return trio.current_time() + (self._moment() - time.monotonic())

    def late(self) -> bool:
        """Whether the moment passed too long ago to take part in its look (half the plan's delay)."""
        return time.monotonic() > self._moment() + PLAN_DELAY / 2


_MOVED_REMEMBERED = 65536
"""Connections moved to other workers whose cancels this server still forwards (the oldest are forgotten)."""

_PARKED_BURST = 8
"""Messages the ready loop answers from one read before it hands a (pipelining) connection back to its task."""

_TLS_REQUIRED = (
    "this server accepts only TLS connections (it was started with --tls-cert): "
    "connect with sslmode=require, or verify-full with sslrootcert=CA-FILE"
)


def _encrypted(conn: Connection) -> bool:
    return isinstance(conn.stream, trio.SSLStream)


async def _fatal(conn: Connection, proto: PgServerProtocol, code: str, message: str) -> None:
    """Send a FATAL ErrorResponse (the caller closes), giving up after a second or if the client is gone."""
    with trio.move_on_after(1):
        try:
            await conn.stream.send_all(proto.send(m.ErrorResponse(code, message, "FATAL")))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def serve_pg(
    database: Database,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PG_PORT,
    *,
    config: PgConfig | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``database`` to PostgreSQL clients on ``host``:``port`` until cancelled.

    ``await nursery.start(serve_pg, db, "127.0.0.1", 0)`` returns the bound
    addresses, so tests can use a free port.

    Error handling: a port that cannot be bound raises
    :class:`~trionet.serving.ListenError`; whatever one connection does
    ends only that connection.
    """
    await PgServer(database, config).serve(host, port, task_status=task_status)
