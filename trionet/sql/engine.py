"""SQLite behind the SQL server: one session per client, with the safety rules applied.

Everything here is synchronous and blocking; the server calls it from worker
threads (``trio.to_thread``), one thread at a time per session. A
:class:`Session` owns one ``sqlite3.Connection`` in autocommit mode, so a
client's ``BEGIN ... COMMIT`` spans its requests and belongs to its
connection alone.

The safety rules live in SQLite's own hooks, not in string matching:

- the authorizer is an allow-list: it allows the statements, functions
  (:data:`ALLOWED_FUNCTIONS`), table-valued functions
  (:data:`ALLOWED_TABLE_FUNCTIONS`), virtual-table modules
  (:data:`ALLOWED_MODULES`, empty) and PRAGMAs a read-only analyst needs,
  writes to the main database on a read-write server only, and refuses the
  rest: ATTACH and DETACH (so ``VACUUM INTO``), ``load_extension``, and
  ``fts3_tokenizer`` and every other function that takes or leaks a pointer;
- ``printf``/``format`` are wrapped so that their widths and precisions
  cannot keep SQLite busy for seconds inside one VM step;
- the server interrupts a statement (``sqlite3_interrupt``) at its deadline,
  when its client leaves, or at shutdown; a statement tried on the event loop
  is also bounded by a progress handler counting VM instructions;
- ``sqlite3_limit`` caps strings, blobs and SQL text, and forbids attached
  databases outright; ``PRAGMA temp.max_page_count`` caps temporary storage.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOWED_FUNCTIONS",
    "ALLOWED_MODULES",
    "ALLOWED_TABLE_FUNCTIONS",
    "DEFAULT_BATCH_BYTES",
    "INLINE_BUDGET",
    "Database",
    "FetchResult",
    "OverBudget",
    "Session",
    "SqlError",
    "limit_sqlite_memory",
]

_PROGRESS_STEPS = 1000  # VM instructions between budget checks on the event loop (about 15-25 us here)
_THREAD_PROGRESS_STEPS = 1_000_000  # ... and between checks in a worker thread (about 20 ms)
DEFAULT_BATCH_BYTES = 1 << 20
"""About how many bytes of values one batch of rows may hold (``--max-batch-bytes``)."""
INLINE_BUDGET = 20
"""Progress-handler calls a statement may take on the event loop (about 0.5 ms, measured
in docs/benchmarks.md); past that it is stopped and run again in a worker thread."""

# Authorizer actions of a statement that only reads (safe to stop and run again).
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_CLASSIFIED_MAX = 4096  # SQL texts whose read-only verdict a Database remembers

# --- the sandbox: an allow-list ------------------------------------------------
#
# The authorizer allows what is listed here and refuses everything else, so
# a function or virtual-table module added by a newer SQLite is refused until
# someone reads what it does and lists it. To extend: add the name below,
# with a test in tests/sql/test_sandbox.py that it works, and say in
# docs/protocol/sql.md why it cannot take, return or forge a pointer, open a
# file, or run unbounded inside one VM step.

# Actions any client may take, on any server.
_ALWAYS_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_RECURSIVE,
        sqlite3.SQLITE_TRANSACTION,
        sqlite3.SQLITE_SAVEPOINT,
    }
)
# Actions on the connection's own temporary schema (bounded by max_temp_bytes).
_TEMP_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_INDEX,
        sqlite3.SQLITE_DROP_TEMP_VIEW,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
    }
)
# Actions that change the database file: a read-write server only.
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
        sqlite3.SQLITE_DROP_VTABLE,
    }
)
# SQL functions a client may call. Left out on purpose: fts3_tokenizer (takes
# and returns a raw C pointer: a segfault or an ASLR leak), fts5 (a pointer
# argument), load_extension, the FTS auxiliaries (matchinfo, offsets,
# snippet, highlight, bm25, optimize: they read FTS cursor internals),
# rtreenode/rtreedepth/rtreecheck (decode raw node blobs), sqlite_log (writes
# the server's log), sqlite_compileoption_* and the source ids (fingerprint
# the build), match and subtype.
ALLOWED_FUNCTIONS = frozenset(
    {
        # core scalars
        "abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull",
        "iif", "instr", "last_insert_rowid", "length", "like", "likelihood", "likely", "lower", "ltrim",
        "max", "min", "nullif", "octet_length", "printf", "quote", "random", "randomblob", "replace",
        "round", "rtrim", "sign", "soundex", "sqlite_version", "substr", "substring", "total_changes",
        "trim", "typeof", "unhex", "unicode", "unlikely", "upper", "zeroblob",
        # aggregates and window functions
        "avg", "count", "group_concat", "string_agg", "sum", "total",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
        "first_value", "last_value", "nth_value",
        # dates
        "date", "time", "datetime", "julianday", "strftime", "unixepoch", "timediff",
        "current_date", "current_time", "current_timestamp",
        # math
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh",
        "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians",
        "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
        # JSON
        "json", "json_array", "json_array_length", "json_extract", "json_insert", "json_object",
        "json_patch", "json_quote", "json_remove", "json_replace", "json_set", "json_type", "json_valid",
        "json_group_array", "json_group_object", "->", "->>",
    }
)
# Functions cheap enough, whatever their arguments, for a statement that uses
# them to be tried on the event loop: the VM-instruction budget is checked
# between instructions, never inside a function, so LIKE (a 16 MiB value:
# about 1 s), hex, replace, printf or zeroblob on big values would hold the
# loop. A statement calling any other function always runs in a thread.
_INLINE_FUNCTIONS = frozenset(
    {
        "abs", "changes", "coalesce", "ifnull", "iif", "last_insert_rowid", "likelihood", "likely", "max",
        "min", "nullif", "random", "round", "sign", "total_changes", "typeof", "unlikely",
        "avg", "count", "sum", "total", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist",
        "ntile", "current_date", "current_time", "current_timestamp",
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh",
        "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians",
        "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    }
)
# SQLite's own helpers for ALTER TABLE (a client cannot call them itself).
_ALTER_FUNCTIONS = frozenset(
    {"sqlite_rename_column", "sqlite_rename_table", "sqlite_rename_test", "sqlite_drop_column",
     "sqlite_rename_quotefix"}
)
# Table-valued functions (eponymous virtual tables) a client may read.
# dbstat and sqlite_stmt are left out; pragma_* tables are judged as PRAGMAs.
ALLOWED_TABLE_FUNCTIONS = frozenset({"json_each", "json_tree"})
# Virtual-table modules a client may CREATE VIRTUAL TABLE with: none. fts3/4
# take tokenizers by pointer, and every module's shadow tables can be
# written with crafted blobs, which SQLITE_DBCONFIG_DEFENSIVE (not reachable
# from Python's sqlite3) would otherwise stop.
ALLOWED_MODULES: frozenset[str] = frozenset()
# Schema tables SQLite touches on its own (building an eponymous table);
# a client cannot write them without PRAGMA writable_schema, which is denied.
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"})

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


_PRINTF_DIRECTIVE = re.compile(r"%[-+ 0#,!]*(\*|\d*)(?:\.(\*|\d*))?l{0,2}(.?)", re.DOTALL)
_LEADING_INT = re.compile(r"\s*[-+]?\d+")


def _printf_work(fmt: str, args: tuple) -> int:
    """An upper bound of the characters SQLite's printf loops over for ``fmt`` and ``args``."""
    total = len(fmt)
    it = iter(args)
    for match in _PRINTF_DIRECTIVE.finditer(fmt):
        width, precision, kind = match.groups()
        for part in (width, precision):
            if part == "*":
                total += _int_arg(next(it, 0))
            elif part:
                total += int(part) if len(part) < 20 else 1 << 62
        if kind and kind != "%":
            value = next(it, None)
            total += len(value) if isinstance(value, (str, bytes)) else 32
    return total


def _strip_length(text: str, chars: str) -> int:
    """How many characters at the start of ``text`` are in ``chars``, in time linear in both."""
    unique = "".join(sorted(set(chars)))
    if len(unique) <= 8:
        return len(text) - len(text.lstrip(unique))  # a memchr over a few characters each
    return _charset_run(unique).match(text).end()


@functools.lru_cache(maxsize=32)
def _charset_run(unique: str) -> re.Pattern:
    # A character class is a bitmap lookup per character, whatever its size.
    return re.compile("[" + "".join(re.escape(c) for c in unique) + "]*")


def _lenient_text(raw: bytes) -> str:
    # A blob read as text need not be UTF-8; the wrappers return what Python can hold.
    return raw.decode("utf-8", "replace")


def _short(*values: Any) -> bool:
    """True when SQLite's quadratic string search over ``values`` is cheap (a few ms at most)."""
    product = 1
    for value in values:
        product *= len(value) if isinstance(value, (str, bytes)) else 32
    return product <= 1 << 22


def _int_arg(value: Any) -> int:
    # What sqlite3_value_int64 would make of a width or precision given by '*'.
    if isinstance(value, (int, float)):
        return abs(int(value)) if math.isfinite(value) else 1 << 62
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return abs(int(match.group()[:20])) if match else 0
    return 0


def limit_sqlite_memory(max_bytes: int) -> None:
    """Cap the memory SQLite may allocate in this whole process (``PRAGMA hard_heap_limit``).

    A statement that needs more fails with ``out_of_memory``: the one bound
    on a single result row, whose values (up to 2000 columns of
    max_value_bytes each) SQLite builds before Python sees any of them.
    Shared by every connection of the process; 0 removes the cap.
    """
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute(f"PRAGMA hard_heap_limit = {int(max_bytes)}")
    finally:
        probe.close()


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
        max_temp_bytes: the most a session's temporary tables and indexes may
            hold (``PRAGMA temp.max_page_count``).
        max_like_pattern_bytes: the longest LIKE or GLOB pattern. SQLite
            matches in one VM step, in time about value length x pattern
            length (a 16 MiB value and a 50-byte pattern: about 1 s here).
        max_row_bytes: the largest result row (its values as sent, blobs in
            base64), refused with ``too_big`` before it is encoded.
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
        max_temp_bytes: int = 64 << 20,
        max_like_pattern_bytes: int = 50,
        max_row_bytes: int = 32 << 20,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.read_write = read_write
        self.max_value_bytes = max_value_bytes
        self.max_sql_bytes = max_sql_bytes
        self.max_temp_bytes = max_temp_bytes
        self.max_like_pattern_bytes = max_like_pattern_bytes
        self.max_row_bytes = max_row_bytes
        self.busy_timeout = busy_timeout
        probe = sqlite3.connect(":memory:")
        try:
            # Every module SQLite was built with: a READ of one of these names
            # is a table-valued function, judged against ALLOWED_TABLE_FUNCTIONS.
            self.modules = frozenset(row[0] for row in probe.execute("PRAGMA module_list"))
        finally:
            probe.close()
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
        """True when ``sql`` is known to only read, and to call only cheap functions, so it may be tried on the event loop.

        The verdict comes from the authorizer the first time the statement was
        prepared (in a worker thread). Only a read-only server runs anything
        inline: with writers about, even a read may wait on a lock. A
        function call is one VM instruction however long it runs, so only
        statements whose functions are all in ``_INLINE_FUNCTIONS`` qualify.
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
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, database.max_like_pattern_bytes)
        page_size = conn.execute("PRAGMA temp.page_size").fetchone()[0]
        conn.execute(f"PRAGMA temp.max_page_count = {max(1, database.max_temp_bytes // page_size)}")
        # printf/format loop once per unit of width and precision even past
        # the length limit, inside one VM step where sqlite3_interrupt is not
        # seen (SQLite 3.40: printf('%.*c', 2e9, 'x') takes 3 s, and a format
        # may hold many such directives). They are replaced by a wrapper that
        # refuses widths and precisions summing past max_value_bytes, then
        # lets SQLite's own printf do the work on a private connection.
        # instr and replace compare at every position (memcmp), value length
        # x pattern length inside one step: instr of a 1 MB text and a 100 kB
        # needle took 2.8 s. Python's str.find/replace are linear-time.
        self._builtin_conn: sqlite3.Connection | None = None
        self._function_error: tuple[str, str] | None = None
        for name in ("printf", "format"):
            conn.create_function(name, -1, self._printf, deterministic=True)
        conn.create_function("instr", 2, self._instr, deterministic=True)
        conn.create_function("replace", 3, self._replace, deterministic=True)
        # trim(X, Y) and friends test every character of X against every one
        # of Y: 1 MB against 10 kB took 15-20 s.
        for name in ("trim", "ltrim", "rtrim"):
            conn.create_function(name, 2, functools.partial(self._trim, name), deterministic=True)
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
        if action in _ALWAYS_ACTIONS:
            if action == sqlite3.SQLITE_READ and arg1 in self._db.modules and arg1 not in ALLOWED_TABLE_FUNCTIONS:
                return self._deny("denied", f"the table-valued function {arg1} is not allowed on this server")
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            name = str(arg2).lower()
            if name not in _INLINE_FUNCTIONS:
                self._auth_read_only = False  # not for the event loop: see _INLINE_FUNCTIONS
            if name in ALLOWED_FUNCTIONS or (name in _ALTER_FUNCTIONS and self._db.read_write):
                return sqlite3.SQLITE_OK
            return self._deny("denied", f"the function {arg2} is not allowed on this server")
        if action == sqlite3.SQLITE_PRAGMA:
            return self._authorize_pragma(str(arg1).lower(), arg2)
        if action in _TEMP_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_CREATE_VTABLE:
            if str(arg2).lower() in ALLOWED_MODULES:
                return self._authorize_write(arg1, dbname)
            return self._deny("denied", f"virtual tables of module {arg2} are not allowed on this server")
        if action in _WRITE_ACTIONS:
            if dbname == "temp" or arg1 in _SCHEMA_TABLES:
                # The connection's own scratch space, or SQLite updating its
                # schema on its own (a client cannot: writable_schema is denied).
                return sqlite3.SQLITE_OK
            return self._authorize_write(arg1, dbname)
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._deny("denied", "ATTACH and DETACH are not allowed on this server")
        return self._deny("denied", "this kind of statement is not allowed on this server")

    def _authorize_write(self, target: Any, dbname: Any) -> int:
        if self._db.read_write or dbname == "temp":
            return sqlite3.SQLITE_OK
        name = f" {target}" if isinstance(target, str) else ""
        return self._deny("read_only", f"the server is read-only: cannot write{name}")

    def _printf(self, *args: Any) -> Any:
        if not args:
            raise self._function_fails("sql_error", "printf needs a format")
        fmt = args[0]
        if fmt is None:
            return None
        if not isinstance(fmt, str):
            fmt = str(fmt, "utf-8", "replace") if isinstance(fmt, bytes) else str(fmt)
        limit = self._db.max_value_bytes
        if _printf_work(fmt, args[1:]) > limit:
            raise self._function_fails(
                "too_big", f"printf widths and precisions add up to more than the server's limit of {limit} bytes"
            )
        return self._builtin("printf", args)

    def _builtin(self, name: str, args: tuple) -> Any:
        # SQLite's own function, on a private connection (here the name is ours).
        return self._private_value(f"SELECT {name}({','.join('?' * len(args))})", args)

    def _private_value(self, sql: str, args: tuple) -> Any:
        if self._builtin_conn is None:
            self._builtin_conn = sqlite3.connect(":memory:", check_same_thread=False)
            self._builtin_conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self._db.max_value_bytes)
            self._builtin_conn.text_factory = _lenient_text
        try:
            return self._builtin_conn.execute(sql, args).fetchone()[0]
        except sqlite3.DataError as exc:
            raise self._function_fails("too_big", str(exc)) from None
        except sqlite3.Error as exc:
            raise self._function_fails("sql_error", str(exc)) from None

    def _as_text(self, value: Any) -> str:
        # As SQLite casts a value to TEXT (a blob's bytes read as UTF-8).
        if type(value) is str:
            return value
        if type(value) is bytes:
            return value.decode("utf-8", "replace")
        return self._private_value("SELECT CAST(? AS TEXT)", (value,))

    def _instr(self, haystack: Any, needle: Any) -> Any:
        if haystack is None or needle is None:
            return None
        if type(haystack) is type(needle) and type(haystack) in (str, bytes):
            return haystack.find(needle) + 1
        if _short(haystack, needle):
            return self._builtin("instr", (haystack, needle))
        return self._as_text(haystack).find(self._as_text(needle)) + 1

    def _trim(self, name: str, text: Any, chars: Any) -> Any:
        if text is None or chars is None:
            return None
        if type(text) is not str or type(chars) is not str:
            if _short(text, chars):
                return self._builtin(name, (text, chars))
            text, chars = self._as_text(text), self._as_text(chars)
        chars = chars.partition("\0")[0]  # SQLite reads the set as a C string
        if not chars:
            return text
        start, end = 0, len(text)
        if name != "rtrim":
            start = _strip_length(text, chars)
        if name != "ltrim" and start < end:
            end -= _strip_length(text[::-1], chars)
        return text[start:end]

    def _replace(self, text: Any, old: Any, new: Any) -> Any:
        # SQLite's order: NULL text or pattern is NULL; an empty pattern
        # returns the text as it is (a number stays a number, a blob is read
        # as text); then a NULL replacement is NULL.
        if text is None or old is None:
            return None
        if isinstance(old, (str, bytes)) and old[:1] in ("", "\0", b"", b"\0"):  # a C string: NUL first is empty
            return self._as_text(text) if type(text) is bytes else text
        if new is None:
            return None
        if type(text) is str and type(old) is str and type(new) is str:
            result = text.replace(old, new)
        elif _short(text, old):
            return self._builtin("replace", (text, old, new))
        else:
            result = self._as_text(text).replace(self._as_text(old), self._as_text(new))
        if len(result) > self._db.max_value_bytes:
            raise self._function_fails("too_big", "string or blob too big")
        return result

    def _function_fails(self, code: str, message: str) -> Exception:
        self._function_error = (code, message)
        return ValueError(message)

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

    def execute(
        self, sql: str, params: Any, batch: int, budget: int = 0, max_bytes: int = DEFAULT_BATCH_BYTES
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

        Raises:
            SqlError: SQLite rejected or stopped the statement.
            OverBudget: the budget ran out; nothing was returned yet.
        """
        self._close_cursor()
        self._timed_out = False
        self._denial = None
        self._function_error = None
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
            return self._fetch(columns, batch, max_bytes)
        except SqlError:
            raise
        except Exception as exc:
            self._close_cursor()
            if self._over_budget:
                raise OverBudget from None
            raise self._map_error(exc) from None
        finally:
            self._count_instructions(False)

    def fetch(self, batch: int, max_bytes: int = DEFAULT_BATCH_BYTES) -> FetchResult:
        """Return the next batch of rows of the running statement (at most ``batch`` rows, about ``max_bytes``)."""
        return self._fetch(None, batch, max_bytes)

    def _fetch(self, columns: list[str] | None, batch: int, max_bytes: int) -> FetchResult:
        cursor = self._cursor
        if cursor is None:
            raise SqlError("internal", "no statement is running")
        rows: list[tuple] = []
        full = False
        try:
            if cursor.description:
                # Row by row, so that a batch is cut by its size as well as its
                # count: 256 rows of 16 MB values would be 4 GB in one batch.
                fetchone = cursor.fetchone
                max_row = self._db.max_row_bytes
                size = 0
                while len(rows) < batch:
                    row = fetchone()
                    if row is None:
                        break
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
                        full = True
                        break
        except SqlError:
            self._close_cursor()
            raise
        except Exception as exc:
            self._close_cursor()
            if self._over_budget:
                raise OverBudget from None
            raise self._map_error(exc) from None
        if full or len(rows) == batch:
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
        if self._builtin_conn is not None:
            self._builtin_conn.close()

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
        if self._function_error is not None:
            return SqlError(*self._function_error)
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
                f"{message}: LIKE and GLOB patterns are limited to {self._db.max_like_pattern_bytes} bytes "
                "(--max-like-pattern-bytes)",
            )
        if name == "SQLITE_FULL":
            return SqlError(
                "full",
                f"{message} (a connection's temporary tables and indexes may hold "
                f"{self._db.max_temp_bytes} bytes: --max-temp-bytes)",
            )
        return SqlError("sql_error", message)
