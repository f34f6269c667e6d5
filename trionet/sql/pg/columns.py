"""The types of result columns that are expressions, where SQLite's own rules fix them.

A column read straight from a table has its declared type; an expression
has none, and a Describe of a statement not run yet must still announce a
type that every row will fit. This module reads the select list and types
only the expressions whose SQLite result type is certain whatever the data:
``count(...)``, ``length(...)`` and the like are integers, ``total``/``avg``
reals, ``upper``/``printf``/``group_concat``... text, ``CAST(x AS T)`` T's
type, a literal number or string its own. Anything else is left to the
caller (text for a statement not run yet). Pure functions.
"""

from __future__ import annotations

import re

from trionet.sql.pg import types

__all__ = ["executed_names", "expression_oids"]

_TOKEN = re.compile(r"'[^']*(?:''[^']*)*'|\"[^\"]*\"|[(),]|[^'\"(),]+")
_ALIAS = re.compile(r"\s+(?:AS\s+)?(?:\"[^\"]*\"|[A-Za-z_]\w*)\s*\Z", re.IGNORECASE)
_INTEGER_FUNCTIONS = frozenset(
    "count length octet_length instr unicode changes total_changes last_insert_rowid random".split()
)
_REAL_FUNCTIONS = frozenset("total avg".split())
_TEXT_FUNCTIONS = frozenset(
    "upper lower trim ltrim rtrim substr substring replace printf format group_concat string_agg typeof hex quote"
    " char date time datetime strftime sqlite_version".split()
)
_MAX_SQL_CHARS = 100_000  # bounds the work on hostile text: longer statements get no inference
_MAX_EXPRESSION_CHARS = 2_000
_COMPOUND = re.compile(r"\b(?:UNION|EXCEPT|INTERSECT)\b", re.IGNORECASE)
_CALL = re.compile(r"\A([A-Za-z_]\w*)\s*\((.*)\)\Z", re.DOTALL)
_CAST = re.compile(
    r"\ACAST\s*\((.*)\s+AS\s+([A-Za-z_][\w ]*?)\s*(?:\(\s*\d+(?:\s*,\s*\d+)?\s*\))?\s*\)\Z", re.IGNORECASE | re.DOTALL
)
_CLAUSE = re.compile(r"\b(?:FROM|WHERE|GROUP|ORDER|LIMIT|UNION|EXCEPT|INTERSECT|HAVING|WINDOW)\b", re.IGNORECASE)
_INT_LITERAL = re.compile(r"\A[-+]?\d{1,18}\Z")
_REAL_LITERAL = re.compile(r"\A[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_STRING_LITERAL = re.compile(r"\A'[^']*(?:''[^']*)*'\Z")


def _select_list(sql: str) -> list[str] | None:
    # The top-level items between the first SELECT and its FROM (or the end).
    match = re.match(r"\s*SELECT\s+(?:ALL\s+|DISTINCT\s+)?", sql, re.IGNORECASE)
    if not match or _COMPOUND.search(sql):
        return None  # a compound's later parts may give a column other types
    items, current, depth = [], [], 0
    for token in _TOKEN.findall(sql, match.end()):
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth < 0:
                return None
        elif token == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        elif depth == 0 and token[0] not in "'\"":
            stop = _CLAUSE.search(token)
            if stop:
                current.append(token[: stop.start()])
                items.append("".join(current).strip())
                return items
        current.append(token)
    items.append("".join(current).strip())
    return items


def _oid(expression: str) -> int | None:
    expression = expression.strip()
    if len(expression) > _MAX_EXPRESSION_CHARS:
        return None
    if _INT_LITERAL.match(expression):
        return types.INT8
    if _REAL_LITERAL.match(expression):
        return types.FLOAT8
    if _STRING_LITERAL.match(expression):
        return types.TEXT
    if cast := _CAST.match(expression):
        oid = types.decltype_oid(cast[2])
        return None if oid == types.BOOL else oid  # CAST(5 AS BOOLEAN) is 5 in SQLite
    if call := _CALL.match(expression):
        name = call[1].lower()
        if name in _INTEGER_FUNCTIONS:
            return types.INT8
        if name in _REAL_FUNCTIONS:
            return types.FLOAT8
        if name in _TEXT_FUNCTIONS:
            return types.TEXT
    return None


def expression_oids(sql: str, n_columns: int) -> list[int | None]:
    """For each of a SELECT's ``n_columns`` result columns, the OID its expression is sure to have, or None.

    Args:
        sql: the statement (any placeholder form).
        n_columns: how many columns SQLite reports; when the select list
            does not have that many items (a ``*``, a compound), nothing is
            inferred.
    """
    items = _select_list(sql) if len(sql) <= _MAX_SQL_CHARS else None
    if items is None or len(items) != n_columns or any(item == "*" or item.endswith(".*") for item in items):
        return [None] * n_columns
    out = []
    for item in items:
        oid = _oid(item)
        if oid is None and (alias := _ALIAS.search(item)) and alias.start() > 0:
            oid = _oid(item[: alias.start()])
        out.append(oid)
    return out


def executed_names(sql: str, described: list[str]) -> list[str]:
    """The names SQLite gives the columns when ``sql`` runs, from those a view of it (NULL for each ``?N``) gave.

    SQLite names an expression without an alias by its text, so the view's
    ``CAST(NULL AS INTEGER)`` is ``CAST(?1 AS INTEGER)`` when the statement
    runs; only such names change.
    """
    if "NULL" not in "".join(described) or len(sql) > _MAX_SQL_CHARS:
        return described
    items = _select_list(sql)
    if items is None or len(items) != len(described):
        return described
    return [
        item if "NULL" in name and "?" in item and not _ALIAS.search(item) else name
        for name, item in zip(described, items)
    ]
