"""The trio layer of the PostgreSQL front: one task per connection, SQLite in worker threads.

Bytes from the socket go into the sans-IO :class:`~trionet.sql.pg.protocol.PgServerProtocol`;
each frontend message it returns is handled in order, one at a time, so a
pipelining client is held back by TCP, not by our memory. Statements run
through the same :class:`~trionet.sql.engine.Session` as the NDJSON server,
with the same safety: the sandbox's authorizer (read-only unless the
database was opened read-write), a query timeout, a cap on result rows, a
bounded pool of statement threads, and a rollback when the client leaves.

While a statement runs in its thread, a watcher reads ahead (bounded) so a
client that disappears is noticed at once and its statement interrupted; the
same watcher interrupts at the query timeout, or when a CancelRequest with
the connection's key arrives on another connection.
"""

from __future__ import annotations

import itertools
import math
import secrets
import sqlite3
from dataclasses import dataclass, field

import outcome
import trio

from trionet.framing import EOF
from trionet.log import get_logger
from trionet.serving import RECEIVE_CHUNK, Connection, SendWatchdog, TCPService, receive_event
from trionet.sql.engine import DEFAULT_BATCH_BYTES, Database, FetchResult, Session, SqlError
from trionet.sql.pg import messages as m
from trionet.sql.pg import types
from trionet.sql.pg.protocol import DEFAULT_MAX_MESSAGE_BYTES, EncryptionRefused, PgServerProtocol, ProtocolViolation
from trionet.sql.pg.session import (
    SERVER_VERSION,
    Column,
    PgError,
    Portal,
    PreparedStatement,
    Settings,
    TransactionRule,
)
from trionet.sql.pg.sqlstate import FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION, QUERY_CANCELED, sqlstate
from trionet.sql.pg.statements import Command, classify, command_tag, split

__all__ = ["DEFAULT_PG_PORT", "PgConfig", "PgServer", "serve_pg"]

log = get_logger("sql")

DEFAULT_PG_PORT = 7432
"""The PostgreSQL front's default port (PostgreSQL's own 5432, shifted like trionet's other ports)."""
_SESSION_THREADS = 4
_FLUSH_BYTES = 64 * 1024  # send what is pending once it reaches this much
_DESCRIBE_VIEW = "_trionet_pg_describe"
_ROW_WORDS = ("SELECT", "WITH", "VALUES")


@dataclass(frozen=True)
class PgConfig:
    """The PostgreSQL front's limits (the NDJSON server's, where they mean the same).

    Attributes:
        query_timeout: seconds SQLite may work on one statement; 0 for none.
        send_timeout: a client that leaves our writes unread this long is dropped.
        max_rows: the most rows one result may have (past it: error 54000); 0 for no cap.
        max_message_bytes: the largest frontend message (past it: FATAL 08P01, close).
        batch_rows: rows fetched from SQLite per step.
        max_batch_bytes: a step ends early once its values hold about this many bytes.
        max_threads: worker threads running statements at once.
        max_connections: clients at once; the one over it gets FATAL 53300.
        max_prepared: named statements plus portals one connection may hold.
        startup_timeout: seconds a new connection has to finish its startup.
        idle_timeout: seconds a connection may stay silent; 0 for ever.
        idle_transaction_timeout: the same inside a transaction block; 0 for ever.
    """

    query_timeout: float = 30.0
    send_timeout: float = 60.0
    max_rows: int = 100_000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    batch_rows: int = 256
    max_batch_bytes: int = DEFAULT_BATCH_BYTES
    max_threads: int = 2
    max_connections: int = 1000
    max_prepared: int = 1000
    startup_timeout: float = 10.0
    idle_timeout: float = 300.0
    idle_transaction_timeout: float = 60.0


@dataclass(eq=False)
class _Conn:
    conn: Connection
    proto: PgServerProtocol
    sends: SendWatchdog
    session: Session
    settings: Settings
    pid: int
    txn: TransactionRule = field(default_factory=TransactionRule)
    statements: dict[str, PreparedStatement] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    out: bytearray = field(default_factory=bytearray)
    running: Portal | None = None  # the portal whose statement is open in the session
    cancel: trio.Event | None = None  # set by a CancelRequest while a thread works
    stop_reason: str | None = None  # why the watcher interrupted: cancel, timeout, gone
    busy: bool = False
    in_transaction_before: bool = False


class PgServer:
    """Serve one :class:`~trionet.sql.engine.Database` to PostgreSQL clients (protocol v3).

    Args:
        database: the database to serve.
        config: the limits.
    """

    def __init__(self, database: Database, config: PgConfig | None = None) -> None:
        self.database = database
        self.config = config or PgConfig()
        self.service = TCPService("pg", self._handle, log)
        self._limiter = trio.CapacityLimiter(self.config.max_threads)
        self._session_limiter = trio.CapacityLimiter(_SESSION_THREADS)
        self._thread_tokens_held = trio.CapacityLimiter(math.inf)  # counted by self._limiter
        self._pids = itertools.count(secrets.randbelow(1 << 20) + 1000)
        self._keys: dict[int, tuple[int, _Conn]] = {}

    async def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PG_PORT, *, task_status=trio.TASK_STATUS_IGNORED):
        """Listen and serve until cancelled or shut down; reports the bound addresses."""
        await self.service.serve(host, port, task_status=task_status)

    def shutdown(self, grace: float) -> None:
        """Stop accepting; let running statements finish within ``grace`` seconds."""
        self.service.shutdown(grace)

    # --- per connection ---------------------------------------------------------

    async def _handle(self, conn: Connection) -> None:
        proto = PgServerProtocol(self.config.max_message_bytes)
        startup = None
        with trio.move_on_after(self.config.startup_timeout):
            startup = await self._startup(conn, proto)
        if startup is None:
            return
        if len(self.service.connections) > self.config.max_connections:
            await self._fatal(conn, proto, "53300", f"sorry, too many clients already ({self.config.max_connections})")
            return
        session = await trio.to_thread.run_sync(self.database.open_session, limiter=self._session_limiter)
        pid = next(self._pids)
        st = _Conn(
            conn,
            proto,
            SendWatchdog(self.config.send_timeout),
            session,
            Settings(startup.parameters, read_only=not self.database.read_write),
            pid,
        )
        secret = secrets.randbits(31)
        self._keys[pid] = (secret, st)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._interrupt_when_cancelled, session)
                with trio.CancelScope() as requests_scope:
                    nursery.start_soon(st.sends.watch, requests_scope)
                    nursery.start_soon(self._watch_drain, st, requests_scope)
                    await self._greet(st, startup, secret)
                    await self._serve_messages(st)
                if st.sends.stalled:
                    raise trio.BrokenResourceError(f"client read nothing for {self.config.send_timeout}s")
                if conn.draining.is_set():
                    await self._fatal(conn, proto, "57P01", "terminating connection due to administrator command")
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
            if isinstance(event, (m.SslRequest, m.GssEncRequest)):
                await conn.stream.send_all(proto.send(EncryptionRefused()))  # no TLS yet: go on in plain text
            elif isinstance(event, m.StartupMessage):
                return event
            elif isinstance(event, m.CancelRequest):
                self._cancel(event)
                return None
            elif isinstance(event, ProtocolViolation):
                await self._fatal(conn, proto, PROTOCOL_VIOLATION, event.message)
                return None
            else:
                return None  # EOF: a truncated startup packet, or a port scan

    async def _greet(self, st: _Conn, startup: m.StartupMessage, secret: int) -> None:
        out = st.out
        unrecognized = tuple(k for k in startup.parameters if k.startswith("_pq_."))
        if startup.minor > 0 or unrecognized:
            out += st.proto.send(m.NegotiateProtocolVersion(0, unrecognized))
        out += st.proto.send(m.AuthenticationOk())
        for status in st.settings.status_messages():
            out += st.proto.send(status)
        out += st.proto.send(m.BackendKeyData(st.pid, secret))
        out += st.proto.send(m.ReadyForQuery("I"))
        await self._flush(st)

    async def _serve_messages(self, st: _Conn) -> None:
        conn = st.conn
        while not conn.draining.is_set():
            idle = self.config.idle_transaction_timeout if st.session.in_transaction else self.config.idle_timeout
            event = None
            with trio.move_on_after(idle or math.inf):
                try:
                    event = await receive_event(conn.stream, st.proto)
                except (trio.BrokenResourceError, OSError):
                    return
            if event is None:
                if st.session.in_transaction:
                    code, what = "25P03", "idle-in-transaction"
                else:
                    code, what = "57P05", "idle-session"
                await self._fatal(conn, st.proto, code, f"terminating connection due to {what} timeout")
                return
            if event is EOF or isinstance(event, m.Terminate):
                return
            if isinstance(event, (ProtocolViolation, m.UnexpectedMessage)):
                message = event.message if isinstance(event, ProtocolViolation) else f"invalid frontend message type {event.type!r}"
                await self._fatal(conn, st.proto, PROTOCOL_VIOLATION, message)
                return
            conn.requests += 1
            st.busy = True
            st.in_transaction_before = st.session.in_transaction
            try:
                await self._dispatch(st, event)
            except PgError as exc:
                self._error(st, exc)
                if isinstance(event, m.Query):
                    self._ready(st)
                    await self._flush(st)
            finally:
                st.busy = False
            if len(st.out) >= _FLUSH_BYTES:
                await self._flush(st)

    async def _dispatch(self, st: _Conn, event) -> None:
        kind = type(event)
        if kind is m.Query:
            await self._simple_query(st, event.sql)
            self._ready(st)
            await self._flush(st)
        elif kind is m.Parse:
            self._parse(st, event)
        elif kind is m.Bind:
            self._bind(st, event)
        elif kind is m.Describe:
            await self._describe(st, event)
        elif kind is m.Execute:
            await self._execute(st, event)
        elif kind is m.Close:
            self._close(st, event)
        elif kind is m.Sync:
            if not st.session.in_transaction:
                self._drop_portals(st)
            else:
                self._drop_portal(st, "")
            self._ready(st)
            await self._flush(st)
        elif kind is m.Flush:
            await self._flush(st)
        elif kind is m.FunctionCall:
            raise PgError(FEATURE_NOT_SUPPORTED, "the fast-path function call is not supported")
        # CopyData/CopyDone/CopyFail outside COPY: ignored, as PostgreSQL does.

    # --- output -------------------------------------------------------------------

    async def _flush(self, st: _Conn) -> None:
        if st.out:
            data = bytes(st.out)
            st.out.clear()
            await st.sends.send(st.conn.stream, data)

    def _ready(self, st: _Conn) -> None:
        st.out += st.proto.send(m.ReadyForQuery(st.txn.status(st.session.in_transaction)))

    def _error(self, st: _Conn, exc: PgError) -> None:
        st.txn.on_error(st.in_transaction_before, st.session.in_transaction)
        st.out += st.proto.send(exc.response())

    @staticmethod
    async def _fatal(conn: Connection, proto: PgServerProtocol, code: str, message: str) -> None:
        with trio.move_on_after(1):
            try:
                await conn.stream.send_all(proto.send(m.ErrorResponse(code, message, "FATAL")))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # --- simple query -----------------------------------------------------------------

    async def _simple_query(self, st: _Conn, sql: str) -> None:
        statements = split(sql)
        if not statements:
            st.out += st.proto.send(m.EmptyQueryResponse())
            return
        for statement in statements:
            if statement.n_params:
                raise PgError("42P02", f"there is no parameter ${statement.n_params}")
            prepared = PreparedStatement(statement.sql, statement, classify(statement), ())
            portal = self._new_portal(prepared, (), ())
            await self._start(st, portal)
            if portal.returns_rows:
                st.out += st.proto.send(self._row_description(portal, portal.formats()))
            await self._send_rows(st, portal, 0)
            st.in_transaction_before = st.session.in_transaction

    # --- extended query ------------------------------------------------------------------

    def _parse(self, st: _Conn, event: m.Parse) -> None:
        if event.name and event.name in st.statements:
            raise PgError("42P05", f'prepared statement "{event.name}" already exists')
        if event.name and len(st.statements) + len(st.portals) >= self.config.max_prepared:
            raise PgError("54000", f"a connection may hold {self.config.max_prepared} prepared statements and portals")
        statements = split(event.sql)
        if len(statements) > 1:
            raise PgError("42601", "cannot insert multiple commands into a prepared statement")
        statement = statements[0] if statements else None
        command = classify(statement) if statement else Command("empty")
        n = max(statement.n_params if statement else 0, len(event.param_oids))
        oids = tuple(event.param_oids) + (0,) * (n - len(event.param_oids))
        st.statements[event.name] = PreparedStatement(event.sql, statement, command, oids)
        st.out += st.proto.send(m.ParseComplete())

    def _bind(self, st: _Conn, event: m.Bind) -> None:
        prepared = st.statements.get(event.statement)
        if prepared is None:
            raise PgError("26000", f'prepared statement "{event.statement}" does not exist')
        if event.portal and event.portal in st.portals:
            raise PgError("42P03", f'cursor "{event.portal}" already exists')
        if event.portal and len(st.statements) + len(st.portals) >= self.config.max_prepared:
            raise PgError("54000", f"a connection may hold {self.config.max_prepared} prepared statements and portals")
        n = len(prepared.param_oids)
        if len(event.params) != n:
            raise PgError(
                PROTOCOL_VIOLATION, f"bind message supplies {len(event.params)} parameters, but prepared statement requires {n}"
            )
        formats = event.param_formats
        if len(formats) not in (0, 1, n):
            raise PgError(PROTOCOL_VIOLATION, f"bind message has {len(formats)} parameter formats but {n} parameters")
        values = []
        for i, (data, oid) in enumerate(zip(event.params, prepared.param_oids)):
            binary = bool(formats and formats[0 if len(formats) == 1 else i])
            try:
                values.append(types.decode_param(data, oid or types.UNKNOWN, binary))
            except types.ValueFormatError as exc:
                raise PgError(exc.code, f"parameter ${i + 1}: {exc}") from None
        used = prepared.statement.n_params if prepared.statement else 0
        self._drop_portal(st, event.portal)
        st.portals[event.portal] = self._new_portal(prepared, tuple(values[:used]), event.result_formats)
        st.out += st.proto.send(m.BindComplete())

    async def _describe(self, st: _Conn, event: m.Describe) -> None:
        if event.kind == "S":
            prepared = st.statements.get(event.name)
            if prepared is None:
                raise PgError("26000", f'prepared statement "{event.name}" does not exist')
            oids = tuple(oid or types.TEXT for oid in prepared.param_oids)
            st.out += st.proto.send(m.ParameterDescription(oids))
            if prepared.columns is None:
                prepared.columns = await self._describe_statement(st, prepared)
            if prepared.columns:
                fields = tuple(m.Field(c.name, c.oid, types.type_size(c.oid)) for c in prepared.columns)
                st.out += st.proto.send(m.RowDescription(fields))
            else:
                st.out += st.proto.send(m.NoData())
            return
        portal = self._portal(st, event.name)
        if not portal.started:
            await self._start(st, portal)
        if portal.returns_rows:
            st.out += st.proto.send(self._row_description(portal, portal.formats()))
        else:
            st.out += st.proto.send(m.NoData())

    async def _execute(self, st: _Conn, event: m.Execute) -> None:
        portal = self._portal(st, event.portal)
        if portal.done:
            # PostgreSQL answers a finished portal with an empty completion.
            st.out += st.proto.send(m.CommandComplete(portal.tag))
            return
        if portal.prepared.statement is None:
            st.out += st.proto.send(m.EmptyQueryResponse())
            return
        if not portal.started:
            await self._start(st, portal)
        await self._send_rows(st, portal, max(0, event.max_rows))

    def _close(self, st: _Conn, event: m.Close) -> None:
        if event.kind == "S":
            st.statements.pop(event.name, None)
        else:
            self._drop_portal(st, event.name)
        st.out += st.proto.send(m.CloseComplete())

    def _portal(self, st: _Conn, name: str) -> Portal:
        portal = st.portals.get(name)
        if portal is None:
            raise PgError("34000", f'portal "{name}" does not exist')
        return portal

    def _new_portal(self, prepared: PreparedStatement, params: tuple, formats: tuple[int, ...]) -> Portal:
        return Portal(prepared, params, formats, work_left=self.config.query_timeout or math.inf)

    def _drop_portal(self, st: _Conn, name: str) -> None:
        portal = st.portals.pop(name, None)
        if portal is not None and portal is st.running:
            st.session.cancel_statement()
            st.running = None

    def _drop_portals(self, st: _Conn) -> None:
        for name in list(st.portals):
            self._drop_portal(st, name)

    # --- running a portal ------------------------------------------------------------------

    def _row_description(self, portal: Portal, binary: tuple[bool, ...]) -> m.RowDescription:
        return m.RowDescription(
            tuple(
                m.Field(c.name, c.oid, types.type_size(c.oid), 1 if b else 0)
                for c, b in zip(portal.columns, binary)
            )
        )

    async def _start(self, st: _Conn, portal: Portal) -> None:
        """Run the portal's statement up to its first batch of rows, and fix its columns."""
        prepared = portal.prepared
        command = prepared.command
        statement = prepared.statement
        st.txn.check(command, statement.words if statement else ())
        portal.started = True
        if command.kind == "sql":
            await self._start_sql(st, portal)
        else:
            await self._run_command(st, portal, command)

    async def _start_sql(self, st: _Conn, portal: Portal) -> None:
        statement = portal.prepared.statement
        fixed = portal.prepared.columns
        want_decl = fixed is None and statement.words[:1] and statement.words[0] in _ROW_WORDS
        describe_sql = _null_params(portal.prepared.source) if want_decl else None
        decl, result = await self._in_sqlite(
            st,
            portal,
            _start_in_thread,
            st.session,
            statement.sql,
            describe_sql,
            portal.params,
            self.config.batch_rows,
            self.config.max_batch_bytes,
        )
        names = result.columns or []
        portal.returns_rows = bool(names)
        if fixed is not None:
            if len(fixed) != len(names):
                raise PgError("0A000", "the statement's columns changed since it was described; prepare it again")
            portal.columns = fixed
        else:
            first = result.rows[0] if result.rows else (None,) * len(names)
            if decl is None or len(decl) != len(names):
                decl = [None] * len(names)
            portal.columns = tuple(Column(n, types.column_oid(d, v)) for n, d, v in zip(names, decl, first))
        self._took(st, portal, result)
        if statement.words[:2] == ("ROLLBACK", "TO"):
            st.txn.on_end()  # back at a savepoint: the block works again, as in PostgreSQL

    async def _describe_statement(self, st: _Conn, prepared: PreparedStatement) -> tuple[Column, ...]:
        """The columns of a statement not bound yet: declared types, and text for expressions.

        The rule that keeps Describe and Execute consistent: these columns
        are fixed on the statement, and every portal made from it sends its
        values converted to them.
        """
        command = prepared.command
        if command.kind == "show":
            if command.name == "all":
                return (Column("name", types.TEXT), Column("setting", types.TEXT), Column("description", types.TEXT))
            return (Column(command.name, types.TEXT),)
        if command.kind == "function":
            return (Column(command.name, types.INT4 if command.name == "pg_backend_pid" else types.TEXT),)
        statement = prepared.statement
        if command.kind != "sql" or statement is None:
            return ()
        if statement.words[:1] and statement.words[0] in _ROW_WORDS:
            portal = self._new_portal(prepared, (), ())  # for its time budget
            described = await self._in_sqlite(st, portal, _describe_in_thread, st.session, _null_params(prepared.source))
            if described is None:
                raise PgError(
                    FEATURE_NOT_SUPPORTED,
                    "this statement cannot be described before it is bound: describe the portal instead",
                )
            names, decls = described
            return tuple(Column(n, types.decltype_oid(d) or types.TEXT) for n, d in zip(names, decls))
        if "RETURNING" in statement.words or "RETURNING" in prepared.source.upper():
            raise PgError(
                FEATURE_NOT_SUPPORTED, "a RETURNING statement cannot be described before it is bound: describe the portal"
            )
        return ()

    def _took(self, st: _Conn, portal: Portal, result: FetchResult) -> None:
        portal.rows = result.rows
        portal.exhausted = result.exhausted
        portal.changes = result.changes
        st.running = None if result.exhausted else portal

    async def _run_command(self, st: _Conn, portal: Portal, command: Command) -> None:
        session = st.session
        portal.exhausted = True
        kind = command.kind
        if kind == "begin":
            if session.in_transaction:
                st.out += st.proto.send(m.NoticeResponse("25001", "there is already a transaction in progress", "WARNING"))
            else:
                await self._run_plain(st, portal, "BEGIN")
            portal.tag = "BEGIN"
        elif kind in ("commit", "rollback"):
            ending = "ROLLBACK" if kind == "rollback" or st.txn.failed else "COMMIT"
            if session.in_transaction:
                await self._run_plain(st, portal, ending)
            elif not st.txn.failed:
                st.out += st.proto.send(m.NoticeResponse("25P01", "there is no transaction in progress", "WARNING"))
            st.txn.on_end()
            portal.tag = ending
        elif kind in ("set", "reset"):
            changed = st.settings.set(command.name, command.value) if kind == "set" else st.settings.reset(command.name)
            for status in changed:
                st.out += st.proto.send(status)
            portal.tag = kind.upper()
        elif kind == "show":
            name, rows = st.settings.show(command.name)
            if name == "all":
                portal.columns = (Column("name", types.TEXT), Column("setting", types.TEXT), Column("description", types.TEXT))
            else:
                portal.columns = (Column(name, types.TEXT),)
            portal.rows, portal.returns_rows, portal.tag = list(rows), True, "SHOW"
        elif kind == "function":
            name = command.name
            if name == "pg_backend_pid":
                value, oid = st.pid, types.INT4
            else:
                value, oid = self._function_value(st, name), types.TEXT
            portal.columns = (Column(name, oid),)
            portal.rows, portal.returns_rows, portal.tag = [(value,)], True, "SELECT 1"
        elif kind == "noop":
            portal.tag = command.tag
        elif kind == "unsupported":
            raise PgError(command.tag, command.message)
        else:
            raise PgError("XX000", f"unknown command {kind}")

    @staticmethod
    def _function_value(st: _Conn, name: str) -> str:
        if name == "version":
            return f"PostgreSQL {SERVER_VERSION}, SQLite {sqlite3.sqlite_version}"
        if name == "current_schema":
            return "main"
        if name in ("current_database", "current_catalog"):
            return st.settings.database
        return st.settings.user  # current_user, session_user

    async def _run_plain(self, st: _Conn, portal: Portal, sql: str) -> None:
        if st.running is not None and st.running is not portal:
            st.running.displaced = True
        st.running = None
        await self._in_sqlite(st, portal, st.session.execute, sql, None, 1)

    async def _send_rows(self, st: _Conn, portal: Portal, limit: int) -> None:
        """Send the portal's rows (at most ``limit``, 0 for all), then CommandComplete or PortalSuspended."""
        binary = portal.formats() if portal.returns_rows else ()
        columns = portal.columns or ()
        cap = self.config.max_rows
        count = 0
        encode = types.encode_value
        while True:
            rows = portal.rows
            take = len(rows) if not limit else min(len(rows), limit - count)
            if cap and portal.sent + take > cap:
                take = max(0, cap - portal.sent)
                self._cut(st, portal, take, columns, binary)
                raise PgError("54000", f"the result has more than {cap} rows, the server's limit (--max-rows); add a LIMIT")
            try:
                for row in rows[:take]:
                    values = tuple(encode(v, c.oid, b) for v, c, b in zip(row, columns, binary))
                    st.out += st.proto.send(m.DataRow(values))
                    if len(st.out) >= _FLUSH_BYTES:
                        await self._flush(st)
            except types.ValueFormatError as exc:
                self._abandon(st, portal)
                raise PgError(exc.code, str(exc)) from None
            del rows[:take]
            portal.sent += take
            count += take
            if limit and count >= limit and (rows or not portal.exhausted):
                st.out += st.proto.send(m.PortalSuspended())
                return
            if portal.exhausted:
                break
            if portal.displaced:
                raise PgError("55000", f"portal was closed: trionet runs one statement at a time per connection")
            await self._flush(st)  # backpressure: the next batch waits until this one is sent
            result = await self._in_sqlite(st, portal, st.session.fetch, self.config.batch_rows, self.config.max_batch_bytes)
            self._took(st, portal, result)
        portal.done = True
        if not portal.tag:
            words = portal.prepared.statement.words
            portal.tag = command_tag(words, rows=portal.sent, changes=portal.changes, returns_rows=portal.returns_rows)
        st.out += st.proto.send(m.CommandComplete(portal.tag))

    def _cut(self, st: _Conn, portal: Portal, take: int, columns, binary) -> None:
        for row in portal.rows[:take]:
            values = tuple(types.encode_value(v, c.oid, b) for v, c, b in zip(row, columns, binary))
            st.out += st.proto.send(m.DataRow(values))
        portal.sent += take
        self._abandon(st, portal)

    def _abandon(self, st: _Conn, portal: Portal) -> None:
        portal.rows = []
        portal.done = True
        portal.exhausted = True
        if st.running is portal:
            st.session.cancel_statement()
            st.running = None

    # --- SQLite in worker threads ------------------------------------------------------------

    async def _in_sqlite(self, st: _Conn, portal: Portal, fn, *args):
        if st.running is not None and st.running is not portal:
            st.running.displaced = True  # the session runs one statement: that portal's cursor closes
        async with self._limiter:
            begun = trio.current_time()
            try:
                return await self._in_thread(st, begun + portal.work_left, fn, *args)
            except SqlError as exc:
                if st.running is portal:
                    st.running = None
                portal.done = True
                raise self._sql_error(st, exc) from None
            finally:
                portal.work_left -= trio.current_time() - begun

    @staticmethod
    def _sql_error(st: _Conn, exc: SqlError) -> PgError:
        code = sqlstate(exc.code, exc.message)
        message = exc.message
        if code == QUERY_CANCELED:
            if st.stop_reason == "cancel":
                message = "canceling statement due to user request"
            elif exc.code == "timeout":
                message = "canceling statement due to statement timeout (the server's --query-timeout)"
        return PgError(code, message)

    async def _in_thread(self, st: _Conn, deadline: float, fn, *args):
        st.cancel = trio.Event()
        st.stop_reason = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_while_working, st, deadline)
                result = await outcome.acapture(trio.to_thread.run_sync, fn, *args, limiter=self._thread_tokens_held)
                nursery.cancel_scope.cancel()
        finally:
            st.cancel = None
        return result.unwrap()

    async def _watch_while_working(self, st: _Conn, deadline: float) -> None:
        with trio.move_on_at(deadline) as timer:
            async with trio.open_nursery() as inner:
                inner.start_soon(self._wait_cancel, st, inner.cancel_scope)
                await self._read_ahead(st)
                st.stop_reason = "gone"
                inner.cancel_scope.cancel()
        if timer.cancelled_caught:
            st.stop_reason = "timeout"
        # SQLite ignores an interrupt that comes before the statement starts,
        # so it is repeated until the thread returns (and this task is cancelled).
        while True:
            if st.stop_reason == "gone":
                st.session.interrupt("client gone")
            else:
                st.session.interrupt_for_timeout()
            await trio.sleep(0.05)

    @staticmethod
    async def _wait_cancel(st: _Conn, scope: trio.CancelScope) -> None:
        await st.cancel.wait()
        st.stop_reason = "cancel"
        scope.cancel()

    async def _read_ahead(self, st: _Conn) -> None:
        # Bounded: what the client pipelines stays in the protocol object for
        # the loop; reading it now is how a client that left is noticed.
        while st.proto.buffered < self.config.max_message_bytes:
            try:
                data = await st.conn.stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, OSError):
                data = b""
            st.proto.receive_data(data)
            if not data:
                return
        await trio.sleep_forever()

    def _cancel(self, request: m.CancelRequest) -> None:
        entry = self._keys.get(request.pid)
        if entry is None or not secrets.compare_digest(entry[0].to_bytes(4, "big"), (request.secret & 0xFFFFFFFF).to_bytes(4, "big")):
            return  # PostgreSQL says nothing either way
        target = entry[1]
        if target.cancel is not None:
            target.cancel.set()

    async def _watch_drain(self, st: _Conn, scope: trio.CancelScope) -> None:
        await st.conn.draining.wait()
        if not st.busy:
            scope.cancel()
            return
        deadline = self.service.grace_deadline
        await trio.sleep_until(deadline - min(1.0, (deadline - trio.current_time()) / 2))
        st.session.interrupt("the server is shutting down")

    @staticmethod
    async def _interrupt_when_cancelled(session: Session) -> None:
        try:
            await trio.sleep_forever()
        finally:
            session.interrupt("connection closing")


def _null_params(source: str) -> str:
    """The statement with every placeholder replaced by NULL, for a view that reports declared types."""
    statements = split(source, placeholder="NULL")
    return statements[0].sql if statements else ""


def _decltypes(conn: sqlite3.Connection, sql: str) -> list[str] | None:
    # SQLite reports a view's column types as the declared types of the
    # columns they come from (empty for expressions): a temporary view is the
    # one way to reach sqlite3_column_decltype from Python's sqlite3.
    try:
        conn.execute(f"DROP VIEW IF EXISTS temp.{_DESCRIBE_VIEW}")
        conn.execute(f"CREATE TEMP VIEW {_DESCRIBE_VIEW} AS {sql}")
        try:
            return [row[2] for row in conn.execute(f"PRAGMA temp.table_info({_DESCRIBE_VIEW})")]
        finally:
            conn.execute(f"DROP VIEW IF EXISTS temp.{_DESCRIBE_VIEW}")
    except (sqlite3.Error, sqlite3.Warning):
        return None


def _start_in_thread(session: Session, sql: str, describe_sql: str | None, params, batch: int, max_bytes: int):
    session.cancel_statement()  # a displaced portal's cursor would lock the temporary schema
    decl = _decltypes(session.connection, describe_sql) if describe_sql else None
    return decl, session.execute(sql, params, batch, 0, max_bytes)


def _describe_in_thread(session: Session, describe_sql: str) -> tuple[list[str], list[str]] | None:
    conn = session.connection
    try:
        conn.execute(f"DROP VIEW IF EXISTS temp.{_DESCRIBE_VIEW}")
        conn.execute(f"CREATE TEMP VIEW {_DESCRIBE_VIEW} AS {describe_sql}")
        try:
            rows = conn.execute(f"PRAGMA temp.table_info({_DESCRIBE_VIEW})").fetchall()
        finally:
            conn.execute(f"DROP VIEW IF EXISTS temp.{_DESCRIBE_VIEW}")
    except (sqlite3.Error, sqlite3.Warning):
        return None
    return [r[1] for r in rows], [r[2] for r in rows]


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
    """
    await PgServer(database, config).serve(host, port, task_status=task_status)
