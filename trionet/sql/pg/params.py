"""The types of ``$N`` parameters a client left to the server, read from where they stand in the SQL.

PostgreSQL infers an undeclared parameter's type from its context
(``mag > $1`` makes ``$1`` the type of ``mag``) and reports it in the
ParameterDescription; asyncpg then encodes the value as that type, in
binary. SQLite has no such step, so this module does the common cases from
the text: a comparison with a column, ``BETWEEN``, ``IN (...)``, an
``INSERT``'s column list, and ``LIMIT``/``OFFSET`` (``$N::type`` is read at Parse: :func:`cast_oids`). A
parameter found in none of them is text, as PostgreSQL makes an unknown.
Pure functions; the column types come from the caller
(:func:`trionet.sql.pg.describe.param_columns`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from trionet.sql.pg import types
from trionet.sql.pg.statements import param_casts

__all__ = ["cast_oids", "infer_param_oids", "table_names"]

_MAX_SQL_CHARS = 100_000  # longer statements are not read for types: their parameters are text
_LITERAL = re.compile(r"'[^']*(?:''[^']*)*'")
_NAME = r'(?<![\w$])(?:[A-Za-z_]\w*\s*\.\s*)?"?([A-Za-z_]\w*)"?'
_OP = r"(?:==|=|!=|<>|<=|>=|<|>|\bIS(?:\s+NOT)?\b)"  # not LIKE/GLOB: a pattern is text whatever the column
_COLUMN_FIRST = re.compile(rf"{_NAME}\s*(?:NOT\s+)?{_OP}\s*\$(\d+)\b", re.IGNORECASE)
_PARAM_FIRST = re.compile(rf"\$(\d+)\s*{_OP}\s*{_NAME}", re.IGNORECASE)
_BETWEEN = re.compile(rf"{_NAME}\s+(?:NOT\s+)?BETWEEN\s+\$(\d+)\s+AND\s+\$(\d+)\b", re.IGNORECASE)
_IN_LIST = re.compile(rf"{_NAME}\s+(?:NOT\s+)?IN\s*\(([^()]*)\)", re.IGNORECASE)
_LIMIT = re.compile(r"\b(?:LIMIT|OFFSET)\s+\$(\d+)\b", re.IGNORECASE)
_INSERT = re.compile(
    rf"\bINTO\s+{_NAME}\s*\(([^()]*)\)\s*VALUES\s*\(([^()]*)\)", re.IGNORECASE
)
_TABLES = re.compile(rf"\b(?:FROM|JOIN|INTO|UPDATE)\s+{_NAME}", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\s*\$(\d+)\s*")
_CAST_NAMES = {
    "integer": types.INT4, "int": types.INT4, "int4": types.INT4, "smallint": types.INT2, "int2": types.INT2,
    "bigint": types.INT8, "int8": types.INT8, "float4": types.FLOAT4, "real": types.FLOAT4, "float8": types.FLOAT8,
    "double precision": types.FLOAT8, "bool": types.BOOL, "boolean": types.BOOL, "bytea": types.BYTEA,
    "numeric": types.NUMERIC, "decimal": types.NUMERIC, "text": types.TEXT, "varchar": types.VARCHAR,
    "character varying": types.VARCHAR,
}  # fmt: skip


def cast_oids(sql: str, oids: tuple[int, ...]) -> tuple[int, ...]:
    """The parameter OIDs with those the client left 0 taken from ``$N::type`` casts (what PostgreSQL does at Parse)."""
    casts = param_casts(sql)
    if not casts:
        return oids
    return tuple(oid or _CAST_NAMES.get(casts.get(i + 1, ""), 0) for i, oid in enumerate(oids))


def table_names(sql: str) -> set[str]:
    """The names after FROM, JOIN, INTO and UPDATE (lower case): the tables whose columns may type a parameter."""
    return {m[1].lower() for m in _TABLES.finditer(_LITERAL.sub("''", sql))}


def infer_param_oids(sql: str, oids: tuple[int, ...], columns: Mapping[str, str | None]) -> tuple[int, ...]:
    """Fill in the parameter OIDs the client left 0.

    Args:
        sql: the statement as the client sent it (``$N`` placeholders).
        oids: one per parameter, 0 where the client declared none.
        columns: lower-case column name -> its declared type, for the
            columns of the tables the statement names (a name whose type
            differs between tables must be left out).

    Returns:
        The OIDs, a declared one kept, an inferred one where the context
        says, text otherwise.
    """
    if all(oids):
        return oids
    if len(sql) > _MAX_SQL_CHARS:
        return tuple(oid or types.TEXT for oid in oids)
    text = _LITERAL.sub("''", sql)
    found: dict[int, int] = {}

    def note(number: str, oid: int | None) -> None:
        n = int(number)
        if oid and 1 <= n <= len(oids) and n not in found:
            found[n] = oid

    def column(name: str) -> int | None:
        return types.decltype_oid(columns.get(name.lower()))

    for m in _LIMIT.finditer(text):
        note(m[1], types.INT8)
    for m in _COLUMN_FIRST.finditer(text):
        note(m[2], column(m[1]))
    for m in _PARAM_FIRST.finditer(text):
        note(m[1], column(m[2]))
    for m in _BETWEEN.finditer(text):
        note(m[2], column(m[1]))
        note(m[3], column(m[1]))
    for m in _IN_LIST.finditer(text):
        for p in re.finditer(r"\$(\d+)", m[2]):
            note(p[1], column(m[1]))
    for m in _INSERT.finditer(text):
        names = [n.strip().strip('"').lower() for n in m[2].split(",")]
        values = m[3].split(",")
        for name, value in zip(names, values):
            if placeholder := _PLACEHOLDER.fullmatch(value):
                note(placeholder[1], column(name))
    return tuple(oid or found.get(i + 1, types.TEXT) for i, oid in enumerate(oids))
