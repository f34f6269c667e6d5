"""Running one PostgreSQL connection's messages: simple and extended queries over an engine Session.

The :class:`Executor` is shared by every connection of a server (it holds the
statement-thread limiter); each connection's state is a :class:`ConnState`.
For each frontend message it decides what runs in SQLite, in a worker
thread, and what the front answers itself (``SET``, ``SHOW``, ``BEGIN``...,
see :mod:`trionet.sql.pg.statements`), and writes the backend messages.

While a statement runs in its thread, a watcher reads ahead (bounded) so a
client that disappears is noticed at once and its statement interrupted; the
same watcher interrupts at the query timeout, or when a CancelRequest with
the connection's key arrives on another connection.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from trionet.log import get_logger
from trionet.serving import Connection, DirectSocketIO, SendWatchdog
from trionet.sql.engine import INLINE_BUDGET, FetchResult, OverBudget, Session, SqlError
from trionet.sql.pg import catalog, describe, params, types
from trionet.sql.pg import messages as m
from trionet.sql.pg.columns import executed_names, expression_oids
from trionet.sql.pg.config import PgConfig
from trionet.sql.pg.literals import bind_one_number, rebind
from trionet.sql.pg.protocol import PgServerProtocol, PortalRun
from trionet.sql.pg.session import (
    SERVER_VERSION,
    Column,
    FastPlan,
    PgError,
    Portal,
    PreparedStatement,
    Settings,
    TransactionRule,
)
from trionet.sql.pg.sqlstate import (
    FEATURE_NOT_SUPPORTED,
    PROTOCOL_VIOLATION,
    QUERY_CANCELED,
    error_position,
    sqlstate,
)
from trionet.sql.pg.statements import Command, Statement, classify, command_tag, split
from trionet.sql.watch import StopReason, run_watched

__all__ = ["ConnState", "Executor"]

log = get_logger("sql")

_FLUSH_BYTES = 64 * 1024  # send what is pending once it reaches this much
_SPLIT_INLINE_CHARS = 64 * 1024  # SQL longer than this is split in a worker thread
_ROW_WORDS = ("SELECT", "WITH", "VALUES")
_TEXTUAL = types.TEXTUAL
_DECL_CACHE_SIZE = 256  # statement shapes whose declared column types a connection remembers
_BOUND_KEY_CHARS = 1024  # the longest bound text whose shape a connection remembers (ConnState.bound_shapes)
_PARSED_CACHE_SIZE = 64  # unnamed-statement texts whose Parse (and fast plan) a connection remembers
# A literal (number or string) in SQL text; quoted names and comments match too, to be kept as they are.
# The lookahead lets the scan pass over every other character at once (half the time of a pgbench query's shape).
_LITERAL = re.compile(
    r"(?=[-/\"`\['0-9])(?:--[^\n]*|/\*.*?(?:\*/|\Z)|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]"
    r"|'(?:[^']|'')*'|\b[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?\b)",
    re.DOTALL,
)


def _shape(sql: str) -> str:
    """``sql`` with its literals replaced: statements of one shape have the same declared column types."""
    return _LITERAL.sub(lambda m: "0" if m.group()[0] in "'0123456789" else m.group(), sql)


@functools.lru_cache(maxsize=512)
def _row_description(columns: tuple[Column, ...], binary: tuple[bool, ...]) -> bytes:
    """RowDescription's bytes, remembered: a prepared statement's portals announce the same columns each time."""
    return m.encode(
        m.RowDescription(
            tuple(m.Field(c.name, c.oid, types.type_size(c.oid), 1 if b else 0) for c, b in zip(columns, binary))
        )
    )


def _completion(words: tuple[str, ...], rows: int, changes: int) -> bytes:
    """CommandComplete's bytes for a statement that returned rows (a fast path sends ``SELECT 1`` again and again).

    Remembered by the first word only, where the tag depends on no other
    (all but CREATE, DROP and ALTER) and the word is short: the cache holds
    no client text of any length.
    """
    first = words[0] if words else ""
    if len(first) > 16 or first in ("CREATE", "DROP", "ALTER"):
        return m.command_complete(command_tag(words, rows=rows, changes=changes, returns_rows=True))
    return _first_word_completion(first, rows, changes)


def _remembered_completion(st: ConnState, words: tuple[str, ...], rows: int, changes: int) -> bytes:
    """:func:`_completion`, the connection's last one kept: a statement's runs repeat it (``SELECT 1``).

    The words are compared by identity (a plan's, the same tuple each run,
    and held by the memo so it cannot be another's): equal words then.
    """
    last = st.last_completion
    if last[0] is words and last[1] == rows and last[2] == changes:
        return last[3]
    data = _completion(words, rows, changes)
    st.last_completion = (words, rows, changes, data)
    return data


def _describe_plan(plan: FastPlan, codes: tuple[int, ...]) -> tuple[tuple[bool, ...], bytes] | None:
    """(binary or not per column, RowDescription's bytes) for Bind's result format codes, kept in the plan.

    None when the number of codes fits neither all columns (0 or 1) nor each.
    """
    width = len(plan.columns)
    if len(codes) not in (0, 1, width):
        return None
    binary = tuple(c == 1 for c in codes) if len(codes) == width else ((bool(codes) and codes[0] == 1),) * width
    described = plan.descriptions[codes] = (binary, _row_description(plan.columns, binary))
    return described


_READY_IDLE, _READY_IN_BLOCK = m.READY_FOR_QUERY["I"], m.READY_FOR_QUERY["T"]
# A DataRow of one integer in text, by the text's length (at most 20: -9223372036854775808): its head, packed once.
_INT_ROW_HEADS = tuple(m.ONE_VALUE_HEAD(b"D", size + 10, 1, size) for size in range(21))


@functools.lru_cache(maxsize=1024)
def _first_word_completion(first: str, rows: int, changes: int) -> bytes:
    return m.command_complete(command_tag((first,), rows=rows, changes=changes, returns_rows=True))


@dataclass(eq=False)
class ConnState:
    """One connection's state: its stream and protocol core, its SQLite session, and the PostgreSQL session over it."""

    conn: Connection
    proto: PgServerProtocol
    sends: SendWatchdog
    session: Session
    settings: Settings
    pid: int
    io: DirectSocketIO
    txn: TransactionRule = field(default_factory=TransactionRule)
    statements: dict[str, PreparedStatement] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    out: bytearray = field(default_factory=bytearray)
    running: Portal | None = None  # the portal whose statement is open in the session
    cancel: trio.Event | None = None  # set by a CancelRequest while a thread works
    stop: StopReason = field(default_factory=StopReason)  # why the watcher interrupted: cancel, timeout, gone
    busy: bool = False
    in_transaction_before: bool = False
    decl_cache: dict[str, list[str]] = field(default_factory=dict)  # statement shape -> declared types
    # An unnamed statement's (text, Parse's parameter types) -> the statement
    # its last Parse made, and the parameter types Parse gave it; a Parse of
    # the same text in a PortalRun takes its fast plan over.
    parsed: dict[tuple[str, tuple[int, ...]], tuple[PreparedStatement, tuple[int, ...]]] = field(default_factory=dict)
    # A simple Query's shape (its whole text, literals replaced) -> the plan
    # and first keywords of the one read it held, whose columns all have
    # declared types (what literals cannot change), and whether its literals
    # may run bound (:func:`bind_literals`; False once a bound run did not fit).
    query_plans: dict[str, tuple[FastPlan, tuple[str, ...], bool]] = field(default_factory=dict)
    # A simple Query's text with its literals bound (bind_literals) -> its
    # shape: one scan of each text instead of two (texts that bind alike have
    # one shape; see _fast_query).
    bound_shapes: dict[str, str] = field(default_factory=dict)
    # The last simple Query that bound one integer, cut around it (bind_one_number).
    bind_memo: tuple[str, str, str] | None = None
    # The last CommandComplete of a fast path: (words, rows, changes, its bytes), see _remembered_completion.
    last_completion: tuple = ((), -1, -1, b"")


class Executor:
    """Handle frontend messages for any number of connections, one message at a time per connection.

    Args:
        config: the limits.
        limiter: statement threads at once (shared by every connection).
    """

    def __init__(self, config: PgConfig, limiter: trio.CapacityLimiter, *, roles: tuple[str, ...] = ()) -> None:
        self.config = config
        self._limiter = limiter
        self._roles = roles  # the users of --users, for the catalog's pg_roles (psql's \du)
        self._thread_tokens_held = trio.CapacityLimiter(math.inf)  # counted by self._limiter, not trio's default 40

    async def greet(self, st: ConnState, startup: m.StartupMessage, secret: int) -> None:
        """Answer a StartupMessage: AuthenticationOk (trust), ParameterStatus, BackendKeyData, ReadyForQuery."""
        out = st.out
        unrecognized = tuple(k for k in startup.parameters if k.startswith("_pq_."))
        if startup.minor > 0 or unrecognized:
            out += st.proto.send(m.NegotiateProtocolVersion(0, unrecognized))
        out += st.proto.send(m.AuthenticationOk())
        for status in st.settings.status_messages():
            out += st.proto.send(status)
        out += st.proto.send(m.BackendKeyData(st.pid, secret))
        out += st.proto.send(m.ReadyForQuery("I"))
        await self.flush(st)

    async def restore(self, st: ConnState, statements) -> None:
        """Prepare again the statements a connection moved here with (:class:`~trionet.sql.pg.handover.Handover`).

        Each is parsed as its Parse was, without a word to the client; the
        columns a Describe announced stay announced. One that no longer
        parses (it did on the other worker, over the same database) is left
        out and logged: the client then hears 26000 when it uses it.
        """
        for name, sql, oids, columns in statements:
            try:
                await self._parse(st, m.Parse(name, sql, oids))
            except PgError as exc:
                log.warning("pg: a moved connection's statement %r did not parse again: %s", name, exc.message)
                continue
            if columns is not None:
                st.statements[name].columns = tuple(Column(n, oid) for n, oid in columns)
        st.out.clear()  # the ParseCompletes: the client heard them on the other worker

    async def handle(self, st: ConnState, event, *, fast: bool = True) -> None:
        """Handle one frontend message (not Terminate, EOF or a violation: the server ends the connection).

        ``fast=False`` skips the fast paths (:meth:`answerer`'s answer already said no to this event).

        Error handling: a :class:`PgError` becomes an ErrorResponse; after a
        simple Query or a FunctionCall it is followed by ReadyForQuery, in an extended batch
        the protocol core skips to Sync. A ``trio.BrokenResourceError``
        (the client left) propagates.
        """
        kind = type(event)
        if fast and kind is m.Query and self._fast_query(st, event.sql):
            return
        if kind is PortalRun:
            if fast and self._fast_run(st, event):
                if len(st.out) >= _FLUSH_BYTES:
                    st.busy = True
                    try:
                        await self.flush(st)
                    finally:
                        st.busy = False
                return
            for part in st.proto.expand(event):
                await self.handle(st, part)
            return
        st.busy = True
        st.in_transaction_before = st.session.in_transaction
        try:
            await self._dispatch(st, event)
        except PgError as exc:
            self._error(st, exc)
            if isinstance(event, (m.Query, m.FunctionCall)):
                self._ready(st)
            # Sent at once, as PostgreSQL does: a client that sent Flush (not
            # Sync) after Describe waits for the answer, and the protocol core
            # now skips that Flush on its way to Sync.
            await self.flush(st)
        else:
            if len(st.out) >= _FLUSH_BYTES:
                await self.flush(st)
        finally:
            st.busy = False  # after the flush: a drain must not cut a send in the middle of a message

    def answerer(self, st: ConnState) -> Callable[[object], bool]:
        """The fast paths for one connection, for a caller that must not wait (the server's ready loop).

        ``answer(event) -> bool`` answers ``event`` at once into ``st.out``
        (a simple Query of a known shape, or a PortalRun of a statement
        with a plan, exactly as :meth:`handle` would answer it) and adds the
        frontend messages it answered to the connection's request count
        (``st.conn.requests``), as the server's message loop does for the
        ones it handles; False (nothing done) when the event needs
        :meth:`handle`.
        """
        fast_run, fast_query, conn = self._fast_run, self._fast_query, st.conn
        portal_run, query = PortalRun, m.Query

        def answer(event) -> bool:
            kind = type(event)
            if kind is portal_run:
                if not fast_run(st, event):
                    return False
                conn.requests += 3 + (event.parse is not None) + event.describe  # event.count, without its call
                return True
            if kind is query and fast_query(st, event.sql):
                conn.requests += 1
                return True
            return False

        return answer

    def _fast_run(self, st: ConnState, run: PortalRun) -> bool:
        """Answer a whole PortalRun of a statement with a :class:`FastPlan` in one step; False to take the slow path.

        The same statement, through the same :meth:`Session.execute` (the
        authorizer, the VM-instruction budget on the event loop, the row
        size cap), answered with the same bytes as Parse, Bind, Describe,
        Execute and Sync one by one, without a portal: the plan holds what
        is the same every time (columns, formats, RowDescription). Anything
        unusual (no plan, a parameter or format error, a statement over its
        budget or failing, more rows than one batch, the row cap, a row
        limit reached, a transaction in the failed state, another portal's
        statement open) returns False before anything is sent, and the slow
        path runs the messages one by one from the start, errors and all.
        Running the read again there is harmless: it only reads.
        """
        if st.running is not None or st.txn.failed:
            return False
        parse, name, formats, data, result_formats, describe_portal, execute = run
        if parse is None:
            prepared = st.statements.get(name)
        else:
            known = st.parsed.get((parse.sql, parse.param_oids))
            if known is None or known[0].plan is None:
                return False
            template, oids = known
            prepared = PreparedStatement(parse.sql, template.statement, template.command, oids, plan=template.plan)
        if prepared is None:
            return False
        plan = prepared.plan
        if plan is None or prepared.columns is not plan.fixed:
            return False
        param_oids = prepared.param_oids
        n = len(param_oids)
        if len(data) != n or (formats and len(formats) != 1 and len(formats) != n):
            return False
        decode = types.decode_param
        try:
            if not formats or (len(formats) == 1 and not formats[0]):
                if n == 1 and param_oids[0] in _TEXTUAL:  # pgbench's one value (type 0: unknown), as below
                    value = data[0]
                    values = [None if value is None else value.decode()]  # (UTF-8)
                elif _TEXTUAL.issuperset(param_oids):  # the text, as decode_param gives it
                    values = [None if v is None else v.decode("utf-8") for v in data]
                else:
                    values = [decode(v, oid or types.UNKNOWN, False) for v, oid in zip(data, param_oids)]
            else:
                values = [
                    decode(v, oid or types.UNKNOWN, bool(formats[0 if len(formats) == 1 else i]))
                    for i, (v, oid) in enumerate(zip(data, param_oids))
                ]
        except (types.ValueFormatError, UnicodeDecodeError):
            return False
        described = plan.descriptions.get(result_formats)
        if described is None:
            described = _describe_plan(plan, result_formats)
            if described is None:
                return False
        statement = prepared.statement
        session = st.session
        if session.database.inline_verdict(statement.sql) is not True:
            return False
        config = self.config
        try:
            result = session.execute(
                statement.sql,
                values if statement.n_params >= n else values[: statement.n_params],
                config.batch_rows,
                INLINE_BUDGET,
                config.max_batch_bytes,
            )
        except OverBudget:
            prepared.plan = None  # not again: the slow path tries it once more on the loop, then in a thread
            if parse is not None:
                template.plan = None
            return False
        except SqlError:
            return False
        rows = result.rows
        count = len(rows)
        limit = execute.max_rows
        if (
            not result.exhausted
            or result.columns != plan.names
            or (config.max_rows and count > config.max_rows)
            or (limit > 0 and count > limit)
        ):
            session.cancel_statement()
            return False
        binary, description = described
        encoded = _encode_rows(rows, plan.oids, binary)
        if encoded is None:
            return False
        if parse is not None:
            st.statements[""] = prepared
            st.out += m.PARSE_COMPLETE
        completion = _remembered_completion(st, statement.words, count, result.changes)
        # Sync: the unnamed portal never existed; outside a transaction block every portal ends.
        in_transaction = session.in_transaction
        if st.portals:
            if in_transaction:
                self._drop_portal(st, "")
            else:
                self._drop_portals(st)
        # st.txn.status(in_transaction) without its call (not failed: checked first, and still so).
        ready = _READY_IN_BLOCK if in_transaction else _READY_IDLE
        # One append: each costs a resize of the buffer.
        if describe_portal:
            st.out += b"".join((m.BIND_COMPLETE, description, encoded, completion, ready))
        else:
            st.out += b"".join((m.BIND_COMPLETE, encoded, completion, ready))
        return True

    def _fast_query(self, st: ConnState, sql: str) -> bool:
        """Answer a simple Query of one read whose shape has a plan in one step; False to take the slow path.

        The shape is the whole text with its literals replaced (what the
        declared types are kept by, :func:`_shape`). Texts of one shape
        split into the same statements (a literal cannot hold a statement's
        end) and are classified alike (what :func:`classify` looks for is
        never inside a literal), so a shape whose text was one read that
        SQLite answered on the event loop is one read again: its text runs
        as it is (SQLite ignores a trailing semicolon and comments), without
        being split and classified again. The plan of a shape is kept only
        when every column has a declared type, so literals cannot change
        what is announced (``SELECT 1`` and ``SELECT 'a'`` have one shape,
        not one type). The statement runs as the slow path runs it (SQL not
        seen yet is tried with the authorizer refusing anything but a read,
        within the budget of VM instructions); anything unusual returns
        False before anything is sent, as :meth:`_fast_run` does.

        The literals that :func:`bind_literals` finds safe to bind run as
        parameters of one text per shape (``WHERE aid = ?1``), so SQLite
        prepares it once (its statement cache) and the authorizer's verdict
        is remembered once, not once per literal. The answer must then have
        the text's column names; a bound run that fails or whose names
        differ is not tried bound again for that shape, and the slow path
        runs the text as it came.
        """
        plans = st.query_plans
        if not plans or st.running is not None or st.txn.failed or len(sql) > _SPLIT_INLINE_CHARS or "$" in sql:
            return False
        session = st.session
        bound = None  # nothing is bound on a database with value indexes (see _simple_query)
        if not session.database.value_indexes:
            # Bind first: the text bound is the shape's key too. Two texts
            # that bind to one text differ only in the literals bound, each
            # of which _shape reads as one literal in the same place, so
            # they have one shape (hypothesis checks it, tests/sql/pg).
            memo = st.bind_memo
            bound = None if memo is None else rebind(sql, memo)  # the same text, another integer: no scan
            if bound is None:
                bound, memo = bind_one_number(sql)
                st.bind_memo = memo if len(sql) <= _BOUND_KEY_CHARS else None
        shapes = st.bound_shapes
        shape = None if bound is None else shapes.get(bound[0])
        if shape is None:
            shape = _shape(sql)
            # Only what the plans can use, and short texts: at most
            # _DECL_CACHE_SIZE keys of _BOUND_KEY_CHARS each per connection.
            if bound is not None and shape in plans and len(bound[0]) <= _BOUND_KEY_CHARS:
                if len(shapes) >= _DECL_CACHE_SIZE:
                    shapes.clear()
                shapes[bound[0]] = shape
        known = plans.get(shape)
        if known is None:
            return False
        plan, words, bindable = known
        if not bindable:
            bound = None
        text, values = (sql, None) if bound is None else bound
        verdict = session.database.inline_verdict(text)
        if verdict is False:
            return False
        config = self.config
        try:
            result = session.execute(
                text, values, config.batch_rows, INLINE_BUDGET, config.max_batch_bytes, trial=verdict is None
            )
        except OverBudget:
            plans.pop(shape, None)  # not again: the slow path tries it once more on the loop, then in a thread
            return False
        except SqlError:
            if bound is not None:
                plans[shape] = (plan, words, False)
            return False
        rows = result.rows
        count = len(rows)
        if not result.exhausted or result.columns != plan.names or (config.max_rows and count > config.max_rows):
            session.cancel_statement()
            if bound is not None and result.columns != plan.names:
                plans[shape] = (plan, words, False)  # a select-list subquery's text names its column
            return False
        binary, description = plan.descriptions.get(()) or _describe_plan(plan, ())  # no codes: all text
        encoded = _encode_rows(rows, plan.oids, binary)
        if encoded is None:
            return False
        out = st.out
        out += description
        out += encoded
        out += _remembered_completion(st, words, count, result.changes)
        out += m.READY_FOR_QUERY[st.txn.status(session.in_transaction)]
        return True

    def cancel(self, st: ConnState) -> None:
        """A CancelRequest for this connection: interrupt the statement it has running, if any."""
        if st.cancel is not None:
            st.cancel.set()

    async def _dispatch(self, st: ConnState, event) -> None:
        kind = type(event)
        if kind is m.Query:
            await self._simple_query(st, event.sql)
            self._ready(st)  # sent by the server's loop, with whatever else was pipelined
        elif kind is m.Parse:
            await self._parse(st, event)
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
            self._ready(st)  # sent by the server's loop, with whatever else was pipelined
        elif kind is m.Flush:
            await self.flush(st)
        elif kind is m.FunctionCall:
            raise PgError(FEATURE_NOT_SUPPORTED, "the fast-path function call is not supported")
        # CopyData/CopyDone/CopyFail outside COPY: ignored, as PostgreSQL does.

    # --- output -------------------------------------------------------------------

    async def flush(self, st: ConnState) -> None:
        """Send what is pending (what the socket takes at once without a scheduler round)."""
        if st.out:
            data = bytes(st.out)
            st.out.clear()
            rest = st.io.send_now(data)
            if rest:
                await st.sends.send(st.conn.stream, rest)

    def _ready(self, st: ConnState) -> None:
        st.out += m.READY_FOR_QUERY[st.txn.status(st.session.in_transaction)]

    def _error(self, st: ConnState, exc: PgError) -> None:
        st.txn.on_error(st.in_transaction_before, st.session.in_transaction)
        st.out += st.proto.send(exc.response())

    # --- simple query -----------------------------------------------------------------

    async def _simple_query(self, st: ConnState, sql: str) -> None:
        statements = await self._split(sql)
        if not statements:
            st.out += st.proto.send(m.EmptyQueryResponse())
            return
        start = 0  # where the next statement's text is searched for (positions in errors)
        for statement in statements:
            if statement.n_params:
                raise PgError("42P02", f"there is no parameter ${statement.n_params}")
            at = sql.find(statement.sql, start)
            start = at + len(statement.sql) if at >= 0 else start
            prepared = PreparedStatement(statement.sql, statement, classify(statement), (), offset=max(0, at))
            portal = self._new_portal(prepared, (), ())
            await self._start(st, portal)
            if prepared.plan is not None and prepared.plan.declared and len(statements) == 1 and "$" not in sql:
                if len(st.query_plans) >= _DECL_CACHE_SIZE:
                    st.query_plans.clear()
                shape = _shape(sql)
                known = st.query_plans.get(shape)
                bindable = (
                    statement.words[:1] in (("SELECT",), ("WITH",))
                    and not st.session.database.value_indexes
                    and (known is None or known[2])  # a bound run of the shape did not fit: not again
                )
                st.query_plans[shape] = (prepared.plan, statement.words, bindable)
            if portal.returns_rows:
                st.out += self._row_description(portal, portal.formats())
            await self._send_rows(st, portal, 0)
            st.in_transaction_before = st.session.in_transaction

    # --- extended query ------------------------------------------------------------------

    async def _split(self, sql: str) -> list[Statement]:
        limit = self.config.max_query_statements
        if len(sql) <= _SPLIT_INLINE_CHARS:
            statements = split(sql, limit=limit)
        else:
            # Long text (hostile, or a big script) is split in a statement
            # thread, so the event loop is not held for its whole length.
            async with self._limiter:
                statements = await trio.to_thread.run_sync(
                    functools.partial(split, sql, limit=limit), limiter=self._thread_tokens_held
                )
        if len(statements) > limit:
            raise PgError("54000", f"a query may hold at most {limit} statements (max_query_statements)")
        return statements

    async def _parse(self, st: ConnState, event: m.Parse) -> None:
        if event.name and event.name in st.statements:
            raise PgError("42P05", f'prepared statement "{event.name}" already exists')
        if event.name and len(st.statements) + len(st.portals) >= self.config.max_prepared:
            raise PgError("54000", f"a connection may hold {self.config.max_prepared} prepared statements and portals")
        statements = await self._split(event.sql)
        if len(statements) > 1:
            raise PgError("42601", "cannot insert multiple commands into a prepared statement")
        statement = statements[0] if statements else None
        command = classify(statement) if statement else Command("empty")
        n = max(statement.n_params if statement else 0, len(event.param_oids))
        oids = tuple(event.param_oids) + (0,) * (n - len(event.param_oids))
        oids = params.cast_oids(event.sql, oids)
        prepared = PreparedStatement(event.sql, statement, command, oids)
        st.statements[event.name] = prepared
        if not event.name and command.kind == "sql":
            if len(st.parsed) >= _PARSED_CACHE_SIZE:
                st.parsed.clear()
            st.parsed[(event.sql, event.param_oids)] = (prepared, oids)
        st.out += m.PARSE_COMPLETE

    def _bind(self, st: ConnState, event: m.Bind) -> None:
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
        st.out += m.BIND_COMPLETE

    async def _describe(self, st: ConnState, event: m.Describe) -> None:
        if event.kind == "S":
            prepared = st.statements.get(event.name)
            if prepared is None:
                raise PgError("26000", f'prepared statement "{event.name}" does not exist')
            if prepared.command.kind == "catalog" and prepared.columns is None:
                await self._describe_catalog(st, prepared)
            if not all(prepared.param_oids) and prepared.command.kind == "sql":
                # As PostgreSQL does, the parameters' types come from where they
                # stand; Bind then reads values sent in those types.
                portal = self._new_portal(prepared, (), ())  # for its time budget
                prepared.param_oids = await self._in_sqlite(
                    st, portal, describe.describe_params, st.session, prepared.source, prepared.param_oids
                )
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
            st.out += self._row_description(portal, portal.formats())
        else:
            st.out += st.proto.send(m.NoData())

    async def _execute(self, st: ConnState, event: m.Execute) -> None:
        portal = self._portal(st, event.portal)
        if portal.done:
            # PostgreSQL answers a finished portal with an empty completion.
            st.out += m.command_complete(portal.tag)
            return
        if portal.prepared.statement is None:
            st.out += st.proto.send(m.EmptyQueryResponse())
            return
        if not portal.started:
            await self._start(st, portal)
        await self._send_rows(st, portal, max(0, event.max_rows))

    def _close(self, st: ConnState, event: m.Close) -> None:
        if event.kind == "S":
            st.statements.pop(event.name, None)
        else:
            self._drop_portal(st, event.name)
        st.out += st.proto.send(m.CloseComplete())

    def _portal(self, st: ConnState, name: str) -> Portal:
        portal = st.portals.get(name)
        if portal is None:
            raise PgError("34000", f'portal "{name}" does not exist')
        return portal

    def _new_portal(self, prepared: PreparedStatement, params: tuple, formats: tuple[int, ...]) -> Portal:
        return Portal(prepared, params, formats, work_left=self.config.query_timeout or math.inf)

    def _drop_portal(self, st: ConnState, name: str) -> None:
        portal = st.portals.pop(name, None)
        if portal is not None and portal is st.running:
            st.session.cancel_statement()
            st.running = None

    def _drop_portals(self, st: ConnState) -> None:
        for name in list(st.portals):
            self._drop_portal(st, name)

    # --- running a portal ------------------------------------------------------------------

    def _row_description(self, portal: Portal, binary: tuple[bool, ...]) -> bytes:
        return _row_description(portal.columns, binary)

    async def _start(self, st: ConnState, portal: Portal) -> None:
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

    async def _start_sql(self, st: ConnState, portal: Portal) -> None:
        statement = portal.prepared.statement
        fixed = portal.prepared.columns
        returns_rows = bool(statement.words[:1]) and statement.words[0] in _ROW_WORDS
        if not returns_rows:
            # It may create or drop a (temporary) table: the types may change.
            st.decl_cache.clear()
            st.parsed.clear()
            st.query_plans.clear()
            for prepared in st.statements.values():
                prepared.decl = None
                prepared.plan = None
        want_decl = fixed is None and returns_rows
        # Declared types cost a temporary view (four statements, and SQLite
        # prepares every cached statement again after a schema change): a
        # connection of a read-only server remembers them per statement shape,
        # so pgbench's "WHERE aid = 123" asks once, not once per query.
        cacheable = want_decl and not st.session.database.read_write
        decl = portal.prepared.decl if cacheable else None
        shape = ""
        if cacheable and decl is None:
            shape = _shape(portal.prepared.source)
            decl = st.decl_cache.get(shape)
        describe_source = portal.prepared.source if want_decl and decl is None else None
        args = (
            st.session, statement.sql, describe_source, portal.params, self.config.batch_rows,
            self.config.max_batch_bytes,
        )  # fmt: skip
        ran = self._try_inline(st, portal, statement.sql, args)
        ran_inline = ran is not None
        if ran is None:
            ran = await self._in_sqlite(st, portal, describe.start_statement, *args)
        found, result = ran
        if found is not None:
            decl = found
            if cacheable:
                if len(st.decl_cache) >= _DECL_CACHE_SIZE:
                    st.decl_cache.clear()
                st.decl_cache[shape] = found
        if cacheable:
            portal.prepared.decl = decl
        names = result.columns or []
        portal.returns_rows = bool(names)
        declared = False  # every column's type is its declared type (a simple Query's plan may then serve its shape)
        if fixed is not None:
            if len(fixed) != len(names):
                raise PgError("0A000", "the statement's columns changed since it was described; prepare it again")
            portal.columns = fixed
        else:
            first = result.rows[0] if result.rows else (None,) * len(names)
            if decl is None or len(decl) != len(names):
                decl = [None] * len(names)
            oids = [types.decltype_oid(d) for d in decl]
            if None in oids and statement.words[:1] == ("SELECT",):
                # The same rule as a Describe of the statement, then the first value.
                oids = [o or s for o, s in zip(oids, expression_oids(statement.sql, len(names)))]
            portal.columns = tuple(Column(n, o or types.column_oid(None, v)) for n, o, v in zip(names, oids, first))
            fixed = None if None in oids else portal.columns  # the same whatever the values
            declared = fixed is not None and None not in (types.decltype_oid(d) for d in decl)
        if fixed is not None and portal.returns_rows and ran_inline:
            portal.prepared.plan = FastPlan(
                fixed, names, portal.prepared.columns, tuple(c.oid for c in fixed), declared=declared
            )
        self._took(st, portal, result)
        if statement.words[:2] == ("ROLLBACK", "TO"):
            st.txn.on_end()  # back at a savepoint: the block works again, as in PostgreSQL

    async def _describe_statement(self, st: ConnState, prepared: PreparedStatement) -> tuple[Column, ...]:
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
            described = await self._in_sqlite(st, portal, describe.describe_statement, st.session, prepared.source)
            if described is None:
                raise PgError(
                    FEATURE_NOT_SUPPORTED,
                    "this statement cannot be described before it is bound: describe the portal instead",
                )
            names, decls = described
            names = executed_names(statement.sql, names)  # the view saw NULL where $N stands
            # An expression's type where SQLite's rules fix it (count(*) is an
            # integer), text otherwise: every row will fit what is announced.
            sure = expression_oids(statement.sql, len(names))
            return tuple(Column(n, types.decltype_oid(d) or s or types.TEXT) for n, d, s in zip(names, decls, sure))
        if "RETURNING" in statement.words or "RETURNING" in prepared.source.upper():
            raise PgError(
                FEATURE_NOT_SUPPORTED, "a RETURNING statement cannot be described before it is bound: describe the portal"
            )
        return ()

    async def _describe_catalog(self, st: ConnState, prepared: PreparedStatement) -> None:
        """Parameter types and columns of a catalog statement not bound yet, fixed on the statement."""
        run = functools.partial(
            catalog.describe,
            user=st.settings.user,
            roles=self._roles,
            database=st.settings.database,
            version=self._function_value(st, "version"),
        )
        portal = self._new_portal(prepared, (), ())  # for its time budget
        oids, described = await self._in_sqlite(st, portal, run, st.session, prepared.source, prepared.param_oids)
        prepared.param_oids = oids
        if described is None:
            raise PgError(
                FEATURE_NOT_SUPPORTED, "this catalog query cannot be described before it is bound: describe the portal"
            )
        # Declared types, else the expression rules, else text: rows are sent converted to them.
        sure = expression_oids(catalog.rewrite(prepared.source), len(described))
        prepared.columns = tuple(
            Column(name, types.decltype_oid(decl) or oid or types.TEXT) for (name, decl), oid in zip(described, sure)
        )

    def _took(self, st: ConnState, portal: Portal, result: FetchResult) -> None:
        portal.rows = result.rows
        portal.exhausted = result.exhausted
        portal.changes = result.changes
        st.running = None if result.exhausted else portal

    async def _run_command(self, st: ConnState, portal: Portal, command: Command) -> None:
        session = st.session
        portal.exhausted = True
        kind = command.kind
        if kind == "begin":
            if session.in_transaction:
                st.out += st.proto.send(m.NoticeResponse("25001", "there is already a transaction in progress", "WARNING"))
            else:
                await self._run_plain(st, portal, f"BEGIN {command.value}" if command.value else "BEGIN")
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
        elif kind == "catalog":
            run = functools.partial(
                catalog.run,
                user=st.settings.user,
                roles=self._roles,
                database=st.settings.database,
                version=self._function_value(st, "version"),
                settings=st.settings.values(),
                max_rows=self.config.max_rows or 100_000,
            )
            names, decls, rows = await self._in_sqlite(
                st, portal, run, st.session, portal.prepared.source, portal.params
            )
            fixed = portal.prepared.columns
            if fixed is not None and len(fixed) == len(names):
                portal.columns = fixed  # described before: the rows follow what was announced
            else:
                first = rows[0] if rows else (None,) * len(names)
                decls = decls if decls and len(decls) == len(names) else [None] * len(names)
                portal.columns = tuple(Column(n, types.column_oid(d, v)) for n, d, v in zip(names, decls, first))
            portal.rows, portal.returns_rows = list(rows), bool(names)
        elif kind == "noop":
            portal.tag = command.tag
        elif kind == "unsupported":
            raise PgError(command.tag, command.message)
        else:
            raise PgError("XX000", f"unknown command {kind}")

    @staticmethod
    def _function_value(st: ConnState, name: str) -> str:
        if name == "version":
            return f"PostgreSQL {SERVER_VERSION}, SQLite {sqlite3.sqlite_version}"
        if name == "current_schema":
            return "main"
        if name in ("current_database", "current_catalog"):
            return st.settings.database
        return st.settings.user  # current_user, session_user

    async def _run_plain(self, st: ConnState, portal: Portal, sql: str) -> None:
        await self._in_sqlite(st, portal, st.session.execute, sql, None, 1)

    async def _send_rows(self, st: ConnState, portal: Portal, limit: int) -> None:
        """Send the portal's rows (at most ``limit``, 0 for all), then CommandComplete or PortalSuspended."""
        binary = portal.formats() if portal.returns_rows else ()
        columns = portal.columns or ()
        cap = self.config.max_rows
        count = 0
        encode = types.encode_value
        data_row = m.data_row
        oids = [c.oid for c in columns]
        out = st.out
        while True:
            rows = portal.rows
            take = len(rows) if not limit else min(len(rows), limit - count)
            if cap and portal.sent + take > cap:
                take = max(0, cap - portal.sent)
                self._cut(st, portal, take, columns, binary)
                raise PgError("54000", f"the result has more than {cap} rows, the server's limit (--max-rows); add a LIMIT")
            try:
                for row in rows[:take]:
                    out += data_row([encode(v, o, b) for v, o, b in zip(row, oids, binary)])
                    if len(out) >= _FLUSH_BYTES:
                        await self.flush(st)
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
                raise PgError("55000", "portal was closed: trionet runs one statement at a time per connection")
            await self.flush(st)  # backpressure: the next batch waits until this one is sent
            result = await self._in_sqlite(st, portal, st.session.fetch, self.config.batch_rows, self.config.max_batch_bytes)
            self._took(st, portal, result)
        portal.done = True
        if not portal.tag:
            words = portal.prepared.statement.words
            portal.tag = command_tag(words, rows=portal.sent, changes=portal.changes, returns_rows=portal.returns_rows)
        st.out += m.command_complete(portal.tag)

    def _cut(self, st: ConnState, portal: Portal, take: int, columns, binary) -> None:
        for row in portal.rows[:take]:
            st.out += m.data_row([types.encode_value(v, c.oid, b) for v, c, b in zip(row, columns, binary)])
        portal.sent += take
        self._abandon(st, portal)

    def _abandon(self, st: ConnState, portal: Portal) -> None:
        portal.rows = []
        portal.done = True
        portal.exhausted = True
        if st.running is portal:
            st.session.cancel_statement()
            st.running = None

    # --- SQLite in worker threads ------------------------------------------------------------

    @staticmethod
    def _displace(st: ConnState, portal: Portal) -> None:
        # The session runs one statement at a time: the portal whose cursor
        # was open loses it, and its buffered batch is dropped at once (a
        # client with many suspended portals must not hold a batch each).
        running = st.running
        if running is not None and running is not portal:
            running.displaced = True
            running.rows = []
            st.running = None

    def _try_inline(self, st: ConnState, portal: Portal, sql: str, args: tuple):
        """Start a read on the event loop, as the NDJSON server does; None when it must go to a thread.

        Only on a read-only server, for SQL the authorizer saw only read
        through cheap functions, or SQL not seen yet, tried so that the
        authorizer refuses it before it runs if it is not such a read
        (:meth:`~trionet.sql.session.Session.execute`'s ``trial``); and within
        :data:`~trionet.sql.engine.INLINE_BUDGET` VM instructions. A thread
        hop costs more than a point query (docs/benchmarks.md).
        """
        verdict = st.session.database.inline_verdict(sql)
        if verdict is False:
            return None
        self._displace(st, portal)
        try:
            return describe.start_statement(*args, budget=INLINE_BUDGET, trial=verdict is None)
        except OverBudget:
            return None
        except SqlError as exc:
            raise self._portal_error(st, portal, exc) from None

    async def _in_sqlite(self, st: ConnState, portal: Portal, fn, *args):
        # The answers to earlier pipelined messages do not wait for a statement that may take long.
        await self.flush(st)
        self._displace(st, portal)
        async with self._limiter:
            begun = trio.current_time()
            try:
                return await self._in_thread(st, begun + portal.work_left, fn, *args)
            except SqlError as exc:
                raise self._portal_error(st, portal, exc) from None
            finally:
                portal.work_left -= trio.current_time() - begun

    def _portal_error(self, st: ConnState, portal: Portal, exc: SqlError) -> PgError:
        """What SQLite refused or stopped, for the client; the portal is done."""
        if st.running is portal:
            st.running = None
        portal.done = True
        error = self._sql_error(st, exc)
        if exc.code == "sql_error" and (at := error_position(portal.prepared.source, exc.message)):
            error.position = portal.prepared.offset + at
        return error

    @staticmethod
    def _sql_error(st: ConnState, exc: SqlError) -> PgError:
        code = sqlstate(exc.code, exc.message)
        message = exc.message
        if code == QUERY_CANCELED:
            if st.stop.reason == "cancel":
                message = "canceling statement due to user request"
            elif exc.code == "timeout":
                message = "canceling statement due to statement timeout (the server's --query-timeout)"
        return PgError(code, message)

    async def _in_thread(self, st: ConnState, deadline: float, fn, *args):
        st.cancel = trio.Event()
        try:
            return await run_watched(
                fn, *args, session=st.session, deadline=deadline, stream=st.conn.stream, proto=st.proto,
                max_buffered=self.config.max_message_bytes, tokens=self._thread_tokens_held, cancel=st.cancel,
                stop=st.stop,
            )  # fmt: skip
        finally:
            st.cancel = None


def _encode_rows(rows: list, oids: tuple[int, ...], binary: tuple[bool, ...]) -> bytes | None:
    """The fast paths' DataRows, each value by its announced type and format; None if one does not fit its type.

    A value that does not fit (:class:`~trionet.sql.pg.types.ValueFormatError`)
    sends the run to the slow path, which reports it as an error.
    """
    encode = types.encode_value
    try:
        if len(oids) == 1:  # one column (a point query's): no inner loop, DataRow's framing in one call
            oid, code = oids[0], binary[0]
            if len(rows) == 1:
                value = rows[0][0]
                if type(value) is int and oid == types.INT8 and not code:  # int8 holds every SQLite integer
                    text = str(value).encode()
                    return _INT_ROW_HEADS[len(text)] + text  # m.one_value_row's bytes
                return m.one_value_row(encode(value, oid, code))
            one_value_row = m.one_value_row
            return b"".join([one_value_row(encode(row[0], oid, code)) for row in rows])
        data_row = m.data_row
        return b"".join([data_row([encode(v, o, b) for v, o, b in zip(row, oids, binary)]) for row in rows])
    except types.ValueFormatError:
        return None
