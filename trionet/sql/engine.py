"""SQLite behind the SQL server: one session per client, with the safety rules applied.

Everything here is synchronous and blocking; the server calls it from worker
threads (``trio.to_thread``), one thread at a time per session. A
:class:`Session` owns one ``sqlite3.Connection`` in autocommit mode, so a
client's ``BEGIN ... COMMIT`` spans its requests and belongs to its
connection alone.

The safety rules live in SQLite's own hooks, not in string matching:

- the authorizer denies ATTACH and DETACH (which also stops ``VACUUM INTO``),
  ``load_extension``, PRAGMAs outside a short list, and, on a read-only
  server, every write to the main database (temporary tables stay allowed);
- the server interrupts a statement (``sqlite3_interrupt``) at its deadline,
  when its client leaves, or at shutdown; a statement tried on the event loop
  is also bounded by a progress handler counting VM instructions;
- ``sqlite3_limit`` caps strings, blobs and SQL text, and forbids attached
  databases outright.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["INLINE_BUDGET", "Database", "FetchResult", "OverBudget", "Session", "SqlError"]

_PROGRESS_STEPS = 1000  # VM instructions between budget checks on the event loop (about 15-25 us here)
_THREAD_PROGRESS_STEPS = 1_000_000  # ... and between checks in a worker thread (about 20 ms)
INLINE_BUDGET = 20
"""Progress-handler calls a statement may take on the event loop (about 0.5 ms, measured
in docs/benchmarks.md); past that it is stopped and run again in a worker thread."""

# Authorizer actions of a statement that only reads (safe to stop and run again).
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_CLASSIFIED_MAX = 4096  # SQL texts whose read-only verdict a Database remembers

_WRITE_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_REINDEX,
        sqlite3.SQLITE_ANALYZE,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_DROP_VTABLE,
    }
)

# PRAGMAs that only report, whatever their argument.
_PRAGMA_REPORTS = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
        "foreign_key_list", "foreign_key_check", "collation_list", "function_list", "pragma_list",
        "module_list", "database_list", "compile_options", "quick_check", "integrity_check",
    }
)
# PRAGMAs that report when asked without a value (``PRAGMA user_version``).
_PRAGMA_SETTINGS = frozenset(
    {
        "user_version", "schema_version", "application_id", "page_count", "page_size",
        "freelist_count", "encoding", "journal_mode", "data_version", "foreign_keys",
        "defer_foreign_keys", "recursive_triggers", "auto_vacuum", "cache_size",
    }
)
# PRAGMAs a read-write server lets a client set.
_PRAGMA_WRITABLE = frozenset(
    {"user_version", "application_id", "foreign_keys", "defer_foreign_keys", "recursive_triggers",
     "optimize", "wal_checkpoint", "incremental_vacuum"}
)


class OverBudget(Exception):
    """A statement tried on the event loop needed more than its budget; run it in a thread."""


class SqlError(Exception):
    """A request failed; ``code`` is one of the protocol's stable error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SqlError({self.code!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one call into SQLite produced: a batch of rows, and what follows."""

    columns: list[str] | None  # set on the first batch of a statement
    rows: list[tuple]
    exhausted: bool
    changes: int = 0
    last_insert_rowid: int | None = None


class Database:
    """The database file the server owns, and the limits its sessions apply.

    Args:
        path: the SQLite file. It must exist unless ``read_write``.
        read_write: allow writes; the database is switched to WAL mode.
        max_value_bytes: the largest string or blob a statement may build.
        max_sql_bytes: the longest SQL text accepted.
        busy_timeout: seconds a writer waits for another writer's lock.

    Raises:
        SqlError: the file is missing, or is not an SQLite database.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        read_write: bool = False,
        max_value_bytes: int = 16 << 20,
        max_sql_bytes: int = 1 << 20,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.read_write = read_write
        self.max_value_bytes = max_value_bytes
        self.max_sql_bytes = max_sql_bytes
        self.busy_timeout = busy_timeout
        self._read_only_sql: dict[str, bool] = {}
        if not read_write and not self.path.is_file():
            raise SqlError("sql_error", f"no database at {self.path}")
        try:
            if read_write:
                # WAL lets readers go on while one writer writes; it is a
                # property of the file, so it is set once, before any session.
                setup = sqlite3.connect(self.path, timeout=busy_timeout)
                try:
                    setup.execute("PRAGMA journal_mode=WAL")
                finally:
                    setup.close()
            # Open a session now so that a bad file fails at start-up, not on the first client.
            session = self.open_session()
            try:
                session.connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            finally:
                session.close()
        except sqlite3.DatabaseError as exc:
            raise SqlError("sql_error", f"{self.path}: {exc}") from None

    def open_session(self) -> "Session":
        """Open a new SQLite connection with the safety rules installed."""
        return Session(self)

    def may_run_inline(self, sql: str) -> bool:
        """True when ``sql`` is known to only read, so it may be tried on the event loop.

        The verdict comes from the authorizer the first time the statement was
        prepared (in a worker thread). Only a read-only server runs anything
        inline: with writers about, even a read may wait on a lock.
        """
        return not self.read_write and self._read_only_sql.get(sql, False)

    def _remember(self, sql: str, read_only: bool) -> None:
        if len(self._read_only_sql) >= _CLASSIFIED_MAX:
            self._read_only_sql.clear()
        self._read_only_sql[sql] = read_only


class Session:
    """One client's SQLite connection. Not thread-safe: one call at a time.

    :meth:`interrupt` is the exception: any thread may call it to stop the
    statement that is running.
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        if database.read_write:
            conn = sqlite3.connect(
                database.path, isolation_level=None, check_same_thread=False, timeout=database.busy_timeout
            )
            conn.execute("PRAGMA synchronous=FULL")  # a committed write survives a crash
        else:
            uri = database.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0.1)
        # 512 KiB of page cache per connection instead of SQLite's 2 MiB: the
        # OS page cache holds the file for everyone. Measured with
        # tools/bench_sql_memory.py: 2.5 MB -> 1.0 MB per connection, same q/s.
        conn.execute("PRAGMA cache_size=-512")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, database.max_value_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, database.max_sql_bytes)
        conn.set_authorizer(self._authorize)
        conn.set_progress_handler(self._progress, _THREAD_PROGRESS_STEPS)
        self.connection = conn
        self._cursor: sqlite3.Cursor | None = None
        self._counting = False  # counting an event-loop budget, or only watching for aborts?
        self._abort_reason: str | None = None
        self._timed_out = False
        self._denial: tuple[str, str] | None = None
        self._budget = 0
        self._over_budget = False
        self._auth_calls = 0
        self._auth_read_only = True
        self._lock = threading.Lock()  # guards interrupt() against close()
        self._closed = False

    # --- hooks SQLite calls ------------------------------------------------

    def _authorize(self, action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
        self._auth_calls += 1
        if action not in _READ_ACTIONS:
            self._auth_read_only = False
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._deny("denied", "ATTACH and DETACH are not allowed on this server")
        if action == sqlite3.SQLITE_FUNCTION and arg2 == "load_extension":
            return self._deny("denied", "extensions are not allowed on this server")
        if action == sqlite3.SQLITE_PRAGMA:
            return self._authorize_pragma(str(arg1).lower(), arg2)
        if not self._db.read_write and action in _WRITE_ACTIONS and dbname != "temp":
            target = f" {arg1}" if isinstance(arg1, str) else ""
            return self._deny("read_only", f"the server is read-only: cannot write{target}")
        return sqlite3.SQLITE_OK

    def _authorize_pragma(self, name: str, value: Any) -> int:
        if name in _PRAGMA_REPORTS or (name in _PRAGMA_SETTINGS and value is None):
            return sqlite3.SQLITE_OK
        if name in _PRAGMA_WRITABLE:
            if self._db.read_write:
                return sqlite3.SQLITE_OK
            return self._deny("read_only", f"the server is read-only: cannot set PRAGMA {name}")
        return self._deny("denied", f"PRAGMA {name} is not allowed on this server")

    def _deny(self, code: str, message: str) -> int:
        self._denial = (code, message)
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

    def _count_instructions(self, on: bool) -> None:
        # On the event loop the handler counts the budget, every 1000 VM
        # instructions. In a worker thread it only checks for an abort, every
        # million: a Python handler needs the GIL, and asking for it every few
        # microseconds starved the statement behind the busy event loop
        # (measured: a 3 s query took over 8 s under load). Threads are
        # stopped by interrupt(); the check catches an interrupt that came
        # before the statement started, which SQLite ignores.
        if on != self._counting:
            self.connection.set_progress_handler(self._progress, _PROGRESS_STEPS if on else _THREAD_PROGRESS_STEPS)
            self._counting = on

    # --- running statements -------------------------------------------------

    def execute(self, sql: str, params: Any, batch: int, budget: int = 0) -> FetchResult:
        """Start ``sql`` and return its column names and first batch of rows.

        Args:
            batch: the most rows to return now; :meth:`fetch` returns the rest.
            budget: when not 0, stop after about ``budget`` thousand SQLite VM
                instructions and raise :class:`OverBudget` (for statements
                tried on the event loop, which :meth:`Database.may_run_inline`
                allows).

        Raises:
            SqlError: SQLite rejected or stopped the statement.
            OverBudget: the budget ran out; nothing was returned yet.
        """
        self._close_cursor()
        self._timed_out = False
        self._denial = None
        self._budget = budget
        self._over_budget = False
        self._count_instructions(budget > 0)
        self._auth_calls = 0
        self._auth_read_only = True
        try:
            cursor = self.connection.cursor()
            self._cursor = cursor
            cursor.execute(sql, () if params is None else params)
            columns = [d[0] for d in cursor.description] if cursor.description else []
            if self._auth_calls:  # prepared now, not taken from the statement cache
                self._db._remember(sql, self._auth_read_only)
            return self._fetch(columns, batch)
        except SqlError:
            raise
        except Exception as exc:
            self._close_cursor()
            if self._over_budget:
                raise OverBudget from None
            raise self._map_error(exc) from None
        finally:
            self._count_instructions(False)

    def fetch(self, batch: int) -> FetchResult:
        """Return the next batch of rows of the running statement."""
        return self._fetch(None, batch)

    def _fetch(self, columns: list[str] | None, batch: int) -> FetchResult:
        cursor = self._cursor
        if cursor is None:
            raise SqlError("internal", "no statement is running")
        try:
            rows = cursor.fetchmany(batch) if cursor.description else []
        except Exception as exc:
            self._close_cursor()
            if self._over_budget:
                raise OverBudget from None
            raise self._map_error(exc) from None
        if len(rows) == batch:
            return FetchResult(columns, rows, exhausted=False)
        changes = max(cursor.rowcount, 0)
        last = cursor.lastrowid if changes else None
        self._close_cursor()
        return FetchResult(columns, rows, exhausted=True, changes=changes, last_insert_rowid=last)

    def cancel_statement(self) -> None:
        """Drop the running statement (for example when a result was truncated)."""
        self._close_cursor()

    def _close_cursor(self) -> None:
        if self._cursor is not None:
            try:
                self._cursor.close()
            except sqlite3.Error:
                pass
            self._cursor = None

    def interrupt(self, reason: str) -> None:
        """Stop the running statement from any thread (client gone, shutdown).

        Args:
            reason: why, for the error message.
        """
        with self._lock:
            self._abort_reason = reason
            if not self._closed:
                self.connection.interrupt()

    def interrupt_for_timeout(self) -> None:
        """Stop the running statement because its time is up (any thread)."""
        with self._lock:
            self._timed_out = True
            if not self._closed:
                self.connection.interrupt()

    def close(self) -> None:
        """Roll back an open transaction and close the connection."""
        with self._lock:
            self._closed = True
        self._close_cursor()
        try:
            if self.connection.in_transaction:
                self.connection.rollback()
        except sqlite3.Error:
            pass
        self.connection.close()

    @property
    def aborted(self) -> bool:
        """True once :meth:`interrupt` was called: the client is gone or the server is closing."""
        return self._abort_reason is not None

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

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
        if not isinstance(exc, sqlite3.Error):
            return SqlError("internal", f"{type(exc).__name__}: {message}")
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name == "SQLITE_AUTH" and self._denial is not None:
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
        return SqlError("sql_error", message)
