"""One client's SQLite connection with the safety hooks installed: run a statement, fetch rows, interrupt.

Synchronous and blocking: the server calls a :class:`Session` from worker
threads (``trio.to_thread``), one call at a time, or, for a statement known
to only read through cheap functions, on the event loop with a budget of VM
instructions (:data:`INLINE_BUDGET`). A session is in autocommit mode, so a
client's ``BEGIN ... COMMIT`` spans its requests and belongs to it alone.

Its hooks: the authorizer (:func:`trionet.sql.sandbox.judge`, which also
tells whether a statement only reads), the linear replacements of
``printf``/``instr``/``replace``/``trim``, a progress handler that counts
the event-loop budget or catches an early interrupt, and ``sqlite3_limit``
caps. SQLite's exceptions become :class:`~trionet.sql.errors.SqlError`
with a stable code.
"""

from __future__ import annotations

import operator
import sqlite3
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from trionet.sql import sandbox
from trionet.sql.errors import SqlError

if TYPE_CHECKING:
    from trionet.sql.engine import Database

__all__ = ["DEFAULT_BATCH_BYTES", "INLINE_BUDGET", "FetchResult", "OverBudget", "Session"]

_PROGRESS_STEPS = 1000  # VM instructions between budget checks on the event loop (about 15-25 us here)
_THREAD_PROGRESS_STEPS = 1_000_000  # ... and between checks in a worker thread (about 20 ms)
_MMAP_BYTES = 1 << 30
"""How much of the file a read-only session holding the shared lock reads through a memory map (address space, not memory)."""
DEFAULT_BATCH_BYTES = 1 << 20
"""About how many bytes of values one batch of rows may hold (``--max-batch-bytes``)."""
INLINE_BUDGET = 20
"""Progress-handler calls a statement may take on the event loop (about 0.5 ms, measured
in docs/benchmarks.md); past that it is stopped and run again in a worker thread."""

# Authorizer actions of a statement that only reads (safe to stop and run again).
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


class OverBudget(Exception):
    """A statement tried on the event loop needed more than its budget; run it in a thread."""


class FetchResult(NamedTuple):
    """What one call into SQLite produced: a batch of rows, and what follows.

    A tuple, made in :meth:`Session._fetch` with ``tuple.__new__`` (no
    ``__init__`` or ``__new__`` in Python, several per statement: about
    1 µs less than a dataclass); nothing keeps or shares a result past the
    request that fetched it.
    """

    columns: list[str] | None  # set on the first batch of a statement
    rows: list[tuple]
    exhausted: bool
    changes: int = 0
    last_insert_rowid: int | None = None


_new_result = tuple.__new__  # FetchResult(...) without NamedTuple's __new__ in Python: its fields in order


_TRIAL_MARK = "\n-- trionet: tried on the event loop"
_FIRST = operator.itemgetter(0)  # a column's name in cursor.description (map: no comprehension's frame)


class Session:
    """One client's SQLite connection. Not thread-safe: one call at a time.

    :meth:`interrupt` is the exception: any thread may call it to stop the
    statement that is running.
    """

    def __init__(self, database: "Database") -> None:
        self.database = database
        """The database this session belongs to (an attribute, not a property: read on every fast-path run)."""
        if database.read_write:
            conn = sqlite3.connect(
                database.path, isolation_level=None, check_same_thread=False, timeout=database.busy_timeout
            )
            # FULL in WAL mode fsyncs the WAL at every COMMIT, before the client
            # is told "done": the write survives a power cut. NORMAL would fsync
            # only at checkpoints, so the last commits could vanish with the power.
            conn.execute("PRAGMA synchronous=FULL")
        else:
            uri = database.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0.1)
        # 512 KiB of page cache per connection instead of SQLite's 2 MiB: the
        # OS page cache holds the file for everyone. Measured with
        # tools/bench_sql_memory.py: 2.5 MB -> 1.0 MB per connection, same q/s.
        conn.execute("PRAGMA cache_size=-512")
        if database.holds_read_lock:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # read-only: the shared lock, held (Database's external_writes)
            # Pages read from a map of the file, not with a pread() each
            # (strace: one per point query with a 512 KiB cache): the OS page
            # cache holds them once for every session and worker. Only with
            # the lock held, so no SQLite writer can change the file under the map.
            conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, database.max_value_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, database.max_sql_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, database.max_like_pattern_bytes)
        page_size = conn.execute("PRAGMA temp.page_size").fetchone()[0]
        conn.execute(f"PRAGMA temp.max_page_count = {max(1, database.max_temp_bytes // page_size)}")
        # printf, instr, replace and trim could run for seconds to hours inside
        # one VM instruction, where sqlite3_interrupt is not seen.
        self._functions = sandbox.LinearFunctions(database.max_value_bytes)
        self._functions.install(conn)
        conn.set_authorizer(self._authorize)
        conn.set_progress_handler(self._progress, _THREAD_PROGRESS_STEPS)
        self._conn = conn
        self._cursor: sqlite3.Cursor | None = None  # the running statement's (see _spare)
        # The cursor the next statement runs on: every statement takes it,
        # and it stays here once its rows are all fetched (SQLite has reset
        # that statement: it holds no lock and pins no schema). A cursor closed
        # (an error, a statement displaced or cancelled) is dropped from here.
        self._spare: sqlite3.Cursor | None = None
        self._counting = False  # counting an event-loop budget, or only watching for aborts?
        self._loop_steps = False  # is the handler installed every _PROGRESS_STEPS (the event loop's)?
        self._trial = False  # refuse, at prepare, a statement not known to be fit for the event loop
        self._trial_refused = False
        self._abort_reason: str | None = None
        self._timed_out = False
        self._denial: tuple[str, str] | None = None
        self._budget = 0
        self._over_budget = False
        self._auth_calls = 0
        self._auth_read_only = True
        self._pragma_set = False  # a PRAGMA other than a report was allowed (sandbox.sets_pragma)
        self._lock = threading.Lock()  # guards interrupt() against close()
        self._closed = False

    # --- hooks SQLite calls ------------------------------------------------

    def _authorize(self, action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
        self._auth_calls += 1
        if action not in _READ_ACTIONS or (action == sqlite3.SQLITE_FUNCTION and not sandbox.cheap_call(str(arg2))):
            self._auth_read_only = False  # not for the event loop (see Database.may_run_inline)
            if action == sqlite3.SQLITE_PRAGMA and sandbox.sets_pragma(arg1):
                self._pragma_set = True  # (holds_state)
            if self._trial:
                self._trial_refused = True
                return sqlite3.SQLITE_DENY
        verdict = sandbox.judge(
            action, arg1, arg2, dbname, read_write=self.database.read_write, modules=self.database.modules
        )
        if verdict is None:
            return sqlite3.SQLITE_OK
        self._denial = verdict
        return sqlite3.SQLITE_DENY

    def _progress(self) -> int:
        if self._abort_reason is not None:
            return 1
        if self._counting:
            self._budget -= 1
            if self._budget <= 0:
                self._over_budget = True
                return 1
        return 0

    def _install_progress(self, loop: bool) -> None:
        # On the event loop the handler counts the budget, every 1000 VM
        # instructions. In a worker thread it only checks for an abort, every
        # million: a Python handler needs the GIL, and asking for it every few
        # microseconds starved the statement behind the busy event loop
        # (measured: a 3 s query took over 8 s under load). Threads are
        # stopped by interrupt(); the check catches an interrupt that came
        # before the statement started, which SQLite ignores.
        #
        # The event loop's handler stays installed after its statement (not
        # counting any more), as the next statement most likely runs on the
        # loop too: two C calls fewer per statement. Whatever may run in a
        # thread puts the thread's back first: a statement without a budget,
        # fetch(), and the connection handed out by the `connection` property.
        self._conn.set_progress_handler(self._progress, _PROGRESS_STEPS if loop else _THREAD_PROGRESS_STEPS)
        self._loop_steps = loop

    def _for_threads(self) -> None:
        """Install the worker thread's progress handler if the event loop's is installed (``_install_progress``)."""
        if self._loop_steps:
            self._install_progress(False)

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection, for a caller that runs its own statements on it (in a worker thread, say).

        The worker thread's progress handler is installed first if the
        event loop's was (see ``_install_progress``).
        """
        self._for_threads()
        return self._conn

    # --- running statements -------------------------------------------------

    def execute(
        self,
        sql: str,
        params: Any,
        batch: int,
        budget: int = 0,
        max_bytes: int = DEFAULT_BATCH_BYTES,
        trial: bool = False,
    ) -> FetchResult:
        """Start ``sql`` and return its column names and first batch of rows.

        Args:
            batch: the most rows to return now; :meth:`fetch` returns the rest.
            max_bytes: end the batch early once its values add up to about
                this many bytes on the wire (the last row may go past it).
            budget: when not 0, stop after about ``budget`` thousand SQLite VM
                instructions and raise :class:`OverBudget` (for statements
                tried on the event loop, which :meth:`Database.may_run_inline`
                allows).
            trial: with a budget, for SQL the database has no verdict on yet
                (:meth:`Database.inline_verdict` is None): the authorizer
                refuses, while SQLite prepares it, anything that is not a read
                through cheap functions, and that raises :class:`OverBudget`
                before any of it runs (the verdict is remembered either way).

        Raises:
            SqlError: SQLite rejected or stopped the statement.
            OverBudget: the budget ran out; nothing was returned yet.
        """
        if self._cursor is not None:
            self._close_cursor()
        self._timed_out = False
        self._denial = None
        if self._functions.refusal is not None:
            self._functions.reset()
        self._budget = budget
        self._over_budget = False
        if budget > 0:
            if not self._loop_steps:
                self._install_progress(True)
            self._counting = True
            self._trial = trial
        else:
            self._for_threads()
        self._auth_calls = 0
        self._auth_read_only = True
        self._trial_refused = False
        try:
            cursor = self._spare
            if cursor is None:
                cursor = self._spare = self._conn.cursor()
            self._cursor = cursor
            # A trial prepares its own text (a comment more): a statement in
            # sqlite3's cache is not authorized again, and one cached by a run
            # that was not a trial (its verdict since forgotten) must not skip it.
            cursor.execute(sql + _TRIAL_MARK if self._trial else sql, () if params is None else params)
            description = cursor.description
            if self._auth_calls:  # prepared now, not taken from the statement cache
                self.database._remember(sql, self._auth_read_only)
            names = list(map(_FIRST, description)) if description else []
            return self._fetch(cursor, names, bool(description), batch, max_bytes)
        except SqlError:
            raise
        except Exception as exc:
            self._close_cursor()
            if self._trial_refused:
                self.database._remember(sql, False)
                raise OverBudget from None
            if self._over_budget:
                raise OverBudget from None
            raise self._map_error(exc) from None
        finally:
            self._trial = False
            self._counting = False

    def fetch(self, batch: int, max_bytes: int = DEFAULT_BATCH_BYTES) -> FetchResult:
        """Return the next batch of rows of the running statement (at most ``batch`` rows, about ``max_bytes``)."""
        cursor = self._cursor
        if cursor is None:
            raise SqlError("internal", "no statement is running")
        self._for_threads()
        return self._fetch(cursor, None, bool(cursor.description), batch, max_bytes)

    def _fetch(
        self, cursor: sqlite3.Cursor, columns: list[str] | None, has_rows: bool, batch: int, max_bytes: int
    ) -> FetchResult:
        # The running statement's next rows (if it has result columns), at
        # most batch of them. Row by row, so that a batch is cut by its size
        # as well as its count: 256 rows of 16 MB values would be 4 GB in one batch.
        rows: list[tuple] = []
        if has_rows and batch > 0:
            try:
                max_row = self.database.max_row_bytes
                size = 0
                for row in cursor:  # fetchone(), without a method call per row
                    row_size = 0
                    for value in row:
                        kind = type(value)
                        row_size += len(value) if kind is str else (len(value) * 4 // 3 if kind is bytes else 8)
                    if row_size > max_row:
                        # Refused before it is encoded (base64, JSON, bytes:
                        # four more copies of it).
                        raise SqlError(
                            "too_big",
                            f"a result row holds about {row_size} bytes, more than the server's limit of "
                            f"{max_row} (--max-row-bytes)",
                        )
                    rows.append(row)
                    size += row_size
                    if size >= max_bytes:
                        return _new_result(FetchResult, (columns, rows, False, 0, None))
                    if len(rows) >= batch:
                        break
            except SqlError:
                self._close_cursor()
                raise
            except Exception as exc:
                self._close_cursor()
                if self._over_budget:
                    raise OverBudget from None
                raise self._map_error(exc) from None
        if len(rows) == batch:
            return _new_result(FetchResult, (columns, rows, False, 0, None))
        changes = cursor.rowcount
        if changes < 0:  # -1: not a write
            changes = 0
        if batch > 0 or not has_rows:
            self._cursor = None  # done, so SQLite reset its statement: it stays the spare for the next one
        else:
            self._close_cursor()  # a negative batch: its rows were not even read
        return _new_result(FetchResult, (columns, rows, True, changes, cursor.lastrowid if changes else None))

    def cancel_statement(self) -> None:
        """Drop the running statement (for example when a result was truncated)."""
        self._close_cursor()

    def _close_cursor(self) -> None:
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            if cursor is self._spare:
                self._spare = None
            try:
                cursor.close()
            except sqlite3.Error:
                pass

    def interrupt(self, reason: str) -> None:
        """Stop the running statement from any thread (client gone, shutdown).

        Args:
            reason: why, for the error message.
        """
        with self._lock:
            self._abort_reason = reason
            if not self._closed:
                self._conn.interrupt()

    def interrupt_for_timeout(self) -> None:
        """Stop the running statement because its time is up (any thread)."""
        with self._lock:
            self._timed_out = True
            if not self._closed:
                self._conn.interrupt()

    def close(self) -> None:
        """Roll back an open transaction and close the connection."""
        with self._lock:
            self._closed = True
        self._close_cursor()
        self._spare = None
        try:
            if self._conn.in_transaction:
                self._conn.rollback()
        except sqlite3.Error:
            pass
        self._conn.close()
        self._functions.close()

    @property
    def aborted(self) -> bool:
        """True once :meth:`interrupt` was called: the client is gone or the server is closing."""
        return self._abort_reason is not None

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def holds_state(self) -> bool:
        """Whether this SQLite connection holds something of the client's own: a temporary object, or a PRAGMA it ran.

        Such a session cannot go on in another worker's connection
        (:mod:`trionet.placement`). Any PRAGMA but the reports counts, even
        one that only read a setting. Looks at the temporary schema: call it
        with no statement running.
        """
        if self._pragma_set:
            return True
        return self._conn.execute("SELECT 1 FROM temp.sqlite_master LIMIT 1").fetchone() is not None

    def _map_error(self, exc: Exception) -> SqlError:
        message = str(exc)
        if isinstance(exc, OverflowError):
            return SqlError("bad_param", f"parameter out of range: {message}")
        if isinstance(exc, sqlite3.InterfaceError):
            return SqlError("bad_param", message)
        if isinstance(exc, sqlite3.ProgrammingError):
            if "one statement at a time" in message:
                return SqlError("multiple_statements", "send one statement per request")
            if "binding" in message or "supplied" in message or "parameter" in message:
                return SqlError("bad_param", message)
            return SqlError("sql_error", message)
        if self._functions.refusal is not None:
            return SqlError(*self._functions.refusal)
        if isinstance(exc, MemoryError):  # SQLITE_NOMEM: the hard heap limit
            return SqlError(
                "out_of_memory", "the statement needs more memory than the server lets SQLite use "
                "(--max-sqlite-memory-bytes)"
            )
        if not isinstance(exc, sqlite3.Error):
            return SqlError("internal", f"{type(exc).__name__}: {message}")
        name = getattr(exc, "sqlite_errorname", "") or ""
        if self._denial is not None and (name == "SQLITE_AUTH" or message.startswith("not authorized")):
            return SqlError(*self._denial)
        if name == "SQLITE_INTERRUPT" or message == "interrupted":
            if self._timed_out:
                return SqlError("timeout", "the query ran longer than the server's query timeout")
            return SqlError("interrupted", f"the query was interrupted ({self._abort_reason or 'by the server'})")
        if name.startswith("SQLITE_READONLY"):
            return SqlError("read_only", f"the database is read-only: {message}")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return SqlError("busy", f"{message}; retry, or use BEGIN IMMEDIATE")
        if name.startswith("SQLITE_CONSTRAINT"):
            return SqlError("constraint", message)
        if name == "SQLITE_TOOBIG":
            return SqlError("too_big", message)
        if "pattern too complex" in message:
            return SqlError(
                "too_big",
                f"{message}: LIKE and GLOB patterns are limited to {self.database.max_like_pattern_bytes} bytes "
                "(--max-like-pattern-bytes)",
            )
        if name == "SQLITE_FULL":
            return SqlError(
                "full",
                f"{message} (a connection's temporary tables and indexes may hold "
                f"{self.database.max_temp_bytes} bytes: --max-temp-bytes)",
            )
        return SqlError("sql_error", message)
