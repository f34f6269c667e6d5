"""The SQLite sandbox: what the authorizer allows, and SQL functions that cannot run long in one step.

Two jobs, both pure rules with no trio and no clock:

- :func:`judge` decides one authorizer call (an action, its arguments) from
  allow-lists: the actions, functions (:data:`ALLOWED_FUNCTIONS`),
  table-valued functions (:data:`ALLOWED_TABLE_FUNCTIONS`), virtual-table
  modules (:data:`ALLOWED_MODULES`, empty) and PRAGMAs a read-only analyst
  needs, writes to the main database on a read-write server only; anything
  not listed is refused. :func:`cheap_call` says whether a function may run
  on the event loop.
- :class:`LinearFunctions` replaces the SQL functions that SQLite 3.40 runs
  in time quadratic in their arguments, or loops in far past the length
  limit (printf), inside one VM instruction where ``sqlite3_interrupt`` is
  not seen, so that ``--query-timeout`` cannot stop them.

:class:`~trionet.sql.session.Session` installs both on each connection.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
from typing import Any

__all__ = [
    "ALLOWED_FUNCTIONS",
    "ALLOWED_MODULES",
    "ALLOWED_TABLE_FUNCTIONS",
    "LinearFunctions",
    "cheap_call",
    "judge",
    "sets_pragma",
]

# The allow-list.
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


def judge(action: int, arg1: Any, arg2: Any, dbname: Any, *, read_write: bool, modules: frozenset[str]):
    """Decide one authorizer call: None to allow it, or ``(code, message)`` to refuse it.

    Args:
        action, arg1, arg2, dbname: as SQLite passes them to the authorizer.
        read_write: whether the server allows writes to the main database.
        modules: every virtual-table module SQLite was built with (a READ
            of one of these names is a table-valued function).
    """
    if action in _ALWAYS_ACTIONS:
        if action == sqlite3.SQLITE_READ and arg1 in modules and arg1 not in ALLOWED_TABLE_FUNCTIONS:
            return "denied", f"the table-valued function {arg1} is not allowed on this server"
        return None
    if action == sqlite3.SQLITE_FUNCTION:
        name = str(arg2).lower()
        if name in ALLOWED_FUNCTIONS or (name in _ALTER_FUNCTIONS and read_write):
            return None
        return "denied", f"the function {arg2} is not allowed on this server"
    if action == sqlite3.SQLITE_PRAGMA:
        return _judge_pragma(str(arg1).lower(), arg2, read_write)
    if action in _TEMP_ACTIONS:
        return None
    if action == sqlite3.SQLITE_CREATE_VTABLE:
        if str(arg2).lower() in ALLOWED_MODULES:
            return _judge_write(arg1, dbname, read_write)
        return "denied", f"virtual tables of module {arg2} are not allowed on this server"
    if action in _WRITE_ACTIONS:
        if dbname == "temp" or arg1 in _SCHEMA_TABLES:
            # The connection's own scratch space, or SQLite updating its
            # schema on its own (a client cannot: writable_schema is denied).
            return None
        return _judge_write(arg1, dbname, read_write)
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return "denied", "ATTACH and DETACH are not allowed on this server"
    return "denied", "this kind of statement is not allowed on this server"


def sets_pragma(name: Any) -> bool:
    """True for a PRAGMA that may change the connection's own settings: any but the reports.

    A session that ran one cannot move to another worker's SQLite
    connection (:meth:`Session.holds_state <trionet.sql.session.Session.holds_state>`).
    """
    return str(name).lower() not in _PRAGMA_REPORTS


def cheap_call(function: str) -> bool:
    """True when a statement calling ``function`` may still be tried on the event loop."""
    return function.lower() in _INLINE_FUNCTIONS


def _judge_write(target: Any, dbname: Any, read_write: bool):
    if read_write or dbname == "temp":
        return None
    name = f" {target}" if isinstance(target, str) else ""
    return "read_only", f"the server is read-only: cannot write{name}"


def _judge_pragma(name: str, value: Any, read_write: bool):
    if name in _PRAGMA_REPORTS or (name in _PRAGMA_SETTINGS and value is None):
        return None
    if name in _PRAGMA_WRITABLE:
        if read_write:
            return None
        return "read_only", f"the server is read-only: cannot set PRAGMA {name}"
    return "denied", f"PRAGMA {name} is not allowed on this server"


class LinearFunctions:
    """printf/format, instr, replace and trim/ltrim/rtrim that finish in time linear in their arguments.

    SQLite 3.40's own: ``printf('%.*c', 1e9, 'x')`` loops a billion times
    even past the length limit (1.5 s; several directives add up);
    ``instr`` and ``replace`` compare at every position (a 1 MB text and a
    100 kB needle: 2.8 s); ``trim(X, Y)`` tests every character of X against
    every one of Y (1 MB and 10 kB: 15-20 s). All inside one VM instruction.

    Args:
        max_value_bytes: the connection's SQLITE_LIMIT_LENGTH.

    Error handling: a refused call raises, and SQLite reports "user-defined
    function raised exception"; :attr:`refusal` then holds the protocol's
    ``(code, message)`` for it, until :meth:`reset`.
    """

    def __init__(self, max_value_bytes: int) -> None:
        self.max_value_bytes = max_value_bytes
        self.refusal: tuple[str, str] | None = None
        self._builtin_conn: sqlite3.Connection | None = None

    def install(self, conn: sqlite3.Connection) -> None:
        """Register the functions on ``conn``, in place of SQLite's own."""
        for name in ("printf", "format"):
            conn.create_function(name, -1, self.printf, deterministic=True)
        conn.create_function("instr", 2, self.instr, deterministic=True)
        conn.create_function("replace", 3, self.replace, deterministic=True)
        for name in ("trim", "ltrim", "rtrim"):
            conn.create_function(name, 2, functools.partial(self.trim, name), deterministic=True)

    def reset(self) -> None:
        """Forget the last refusal (a new statement starts)."""
        self.refusal = None

    def close(self) -> None:
        """Close the private connection SQLite's own functions run on."""
        if self._builtin_conn is not None:
            self._builtin_conn.close()

    def printf(self, *args: Any) -> Any:
        if not args:
            raise self._function_fails("sql_error", "printf needs a format")
        fmt = args[0]
        if fmt is None:
            return None
        if not isinstance(fmt, str):
            fmt = str(fmt, "utf-8", "replace") if isinstance(fmt, bytes) else str(fmt)
        limit = self.max_value_bytes
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
            self._builtin_conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_value_bytes)
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

    def instr(self, haystack: Any, needle: Any) -> Any:
        if haystack is None or needle is None:
            return None
        if type(haystack) is type(needle) and type(haystack) in (str, bytes):
            return haystack.find(needle) + 1
        if _short(haystack, needle):
            return self._builtin("instr", (haystack, needle))
        return self._as_text(haystack).find(self._as_text(needle)) + 1

    def trim(self, name: str, text: Any, chars: Any) -> Any:
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

    def replace(self, text: Any, old: Any, new: Any) -> Any:
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
        if len(result) > self.max_value_bytes:
            raise self._function_fails("too_big", "string or blob too big")
        return result

    def _function_fails(self, code: str, message: str) -> Exception:
        self.refusal = (code, message)
        return ValueError(message)

