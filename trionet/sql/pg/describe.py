"""What the PostgreSQL front runs in a worker thread besides the statement itself: declared column types.

Python's ``sqlite3`` does not expose ``sqlite3_column_decltype``, and cannot
prepare a statement without running it. A temporary view can: SQLite
reports a view's column types as the declared types of the columns they
come from (empty for expressions). These functions block; the executor
calls them through ``trio.to_thread`` with the statement-thread limiter.
"""

from __future__ import annotations

import sqlite3

from trionet.sql.engine import FetchResult, Session, SqlError
from trionet.sql.pg import params
from trionet.sql.pg.statements import split

__all__ = [
    "declared_types",
    "describe_params",
    "describe_statement",
    "infer_params",
    "null_params",
    "start_statement",
    "view_columns",
]

_DESCRIBE_VIEW = "_trionet_pg_describe"
_STATEMENT_ERRORS = (
    "syntax error", "no such table", "no such column", "no such function", "unrecognized token",
    "incomplete input", "ambiguous column", "wrong number of arguments",
)  # fmt: skip


def null_params(source: str) -> str:
    """The statement with every ``$N`` placeholder replaced by NULL (a view cannot hold parameters)."""
    statements = split(source, placeholder="NULL")
    return statements[0].sql if statements else ""


def _view_columns(conn: sqlite3.Connection, sql: str, strict: bool = False) -> list[tuple[str, str]] | None:
    # The view lives in the connection's own temp schema (allowed by the
    # sandbox, bounded by max_temp_bytes) and is dropped at once.
    try:
        conn.execute(f"DROP VIEW IF EXISTS temp.{_DESCRIBE_VIEW}")
        conn.execute(f"CREATE TEMP VIEW {_DESCRIBE_VIEW} AS {sql}")
        try:
            rows = conn.execute(f"PRAGMA temp.table_info({_DESCRIBE_VIEW})").fetchall()
        finally:
            conn.execute(f"DROP VIEW IF EXISTS temp.{_DESCRIBE_VIEW}")
    except (sqlite3.Error, sqlite3.Warning) as exc:
        message = str(exc)
        if strict and any(words in message for words in _STATEMENT_ERRORS):
            # The statement itself is wrong, so running it would fail the same
            # way: say so now, as PostgreSQL's Parse/Describe does.
            raise SqlError("sql_error", message) from None
        return None  # not a SELECT a view can hold
    return [(row[1], row[2]) for row in rows]


def declared_types(conn: sqlite3.Connection, sql: str) -> list[str] | None:
    """The declared type of each column of ``sql`` ('' for an expression), or None when no view can hold it."""
    columns = _view_columns(conn, sql)
    return None if columns is None else [decl for _name, decl in columns]


def describe_statement(session: Session, source: str) -> tuple[list[str], list[str]] | None:
    """The column names and declared types of a SELECT not run yet (None when no view can hold it).

    Raises:
        SqlError: ``sql_error`` when the statement is wrong (a syntax error,
            an unknown table or column), as running it would.

    Args:
        source: the statement as the client sent it (``$N`` placeholders).
    """
    columns = _view_columns(session.connection, null_params(source), strict=True)
    if columns is None:
        return None
    return [name for name, _decl in columns], [decl for _name, decl in columns]


def describe_params(session: Session, source: str, oids: tuple[int, ...]) -> tuple[int, ...]:
    """The statement's parameter OIDs, those the client left 0 inferred from the columns they meet.

    Reads the declared column types of the tables ``source`` names (see
    :func:`trionet.sql.pg.params.infer_param_oids`).
    """
    return infer_params(session.connection, source, oids)


def infer_params(conn: sqlite3.Connection, source: str, oids: tuple[int, ...]) -> tuple[int, ...]:
    """:func:`describe_params` on any connection (the emulated catalog's too)."""
    columns: dict[str, str | None] = {}
    ambiguous = set()
    for table in sorted(params.table_names(source))[:16]:
        try:
            rows = conn.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
        except sqlite3.Error:
            continue
        for name, decl in rows:
            key = name.lower()
            if columns.get(key, decl) != decl:
                ambiguous.add(key)
            columns[key] = decl
    for key in ambiguous:
        columns.pop(key)
    return params.infer_param_oids(source, oids, columns)


def view_columns(conn: sqlite3.Connection, sql: str) -> list[tuple[str, str]] | None:
    """The (name, declared type) of each column of ``sql``, or None when no view can hold it."""
    return _view_columns(conn, sql)


def start_statement(
    session: Session,
    sql: str,
    describe_source: str | None,
    params,
    batch: int,
    max_bytes: int,
    budget: int = 0,
    trial: bool = False,
) -> tuple[list[str] | None, FetchResult]:
    """Run ``sql`` to its first batch; first, when ``describe_source`` is given, read its declared types.

    Args:
        sql: the statement in SQLite's form (``?N`` placeholders).
        describe_source: the statement as the client sent it, or None.
        budget, trial: for a try on the event loop (:meth:`Session.execute`).

    Raises:
        SqlError: from :meth:`Session.execute`.
        OverBudget: the try on the event loop did not fit.
    """
    session.cancel_statement()  # a displaced portal's cursor would lock the temporary schema
    decl = declared_types(session.connection, null_params(describe_source)) if describe_source else None
    return decl, session.execute(sql, params, batch, budget, max_bytes, trial)
