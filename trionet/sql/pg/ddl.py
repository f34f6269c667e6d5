"""The constraints of a ``CREATE TABLE`` that SQLite keeps only as text: their names, kinds and CHECK expressions.

SQLite's PRAGMAs tell a table's keys and foreign keys but not what the
constraints were called, and nothing at all of its CHECK constraints: those
live only in ``sqlite_schema.sql``. PostgreSQL's catalog has both, and
clients read them (SQLAlchemy's ``get_unique_constraints`` and
``get_check_constraints``, psql's ``\\d``), so the emulated ``pg_catalog``
reads them from that text.

The reading is one pass of a tokenizer (strings, quoted names and comments
skipped whole) over at most :data:`MAX_DDL_CHARS` characters, and a walk of
the tokens at the table's top level: linear in the text, whatever it holds.
A table whose SQL is longer, or that cannot be read (``CREATE TABLE ... AS
SELECT``), yields no constraints here; the PRAGMAs still give its keys.
Pure: no SQLite, no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["MAX_DDL_CHARS", "TableConstraint", "identifiers", "table_constraints", "unquote"]

MAX_DDL_CHARS = 65536
"""Longer ``CREATE TABLE`` texts are not read (their CHECKs and constraint names are not listed)."""

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<string>'(?:[^']|'')*'?)
    |(?P<name>"(?:[^"]|"")*"?|\[[^\]]*\]?|`(?:[^`]|``)*`?)
    |(?P<word>[^\W\d][\w$]*)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_CONSTRAINT_WORDS = frozenset({"primary", "unique", "check", "foreign"})
_COLUMN_CONSTRAINT_WORDS = frozenset({"primary", "unique", "check", "references"})


@dataclass(frozen=True, slots=True)
class TableConstraint:
    """One constraint as the ``CREATE TABLE`` wrote it.

    Attributes:
        kind: ``"p"`` primary key, ``"u"`` unique, ``"c"`` check, ``"f"`` foreign key (PostgreSQL's ``contype``).
        name: its ``CONSTRAINT name``, unquoted, or None.
        columns: the key's columns (for a constraint written on a column: that
            column); for a table-level CHECK, empty.
        text: a CHECK's expression as written; None for the others.
        references: a foreign key's parent table, unquoted.
        deferrable, deferred: a foreign key's ``DEFERRABLE`` / ``INITIALLY DEFERRED``.
    """

    kind: str
    name: str | None
    columns: tuple[str, ...]
    text: str | None = None
    references: str | None = None
    deferrable: bool = False
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int
    depth: int  # parentheses open before it (a "(" counts itself out, a ")" itself in)

    @property
    def word(self) -> str:
        return self.text.lower() if self.kind == "word" else ""


def unquote(name: str) -> str:
    """A name as SQLite reads it: ``"a""b"`` is ``a"b``, ``[a]`` and `` `a` `` and ``'a'`` are ``a``."""
    if len(name) >= 2 and name[0] in "\"'`[":
        close = "]" if name[0] == "[" else name[0]
        if name[-1] == close:
            body = name[1:-1]
            return body if close == "]" else body.replace(close * 2, close)
    return name


def _tokens(sql: str) -> list[_Token]:
    tokens, depth = [], 0
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "space":
            continue
        text = match.group()
        if text == ")":
            depth = max(depth - 1, 0)
        tokens.append(_Token(kind, text, match.start(), match.end(), depth))
        if text == "(":
            depth += 1
    return tokens


def identifiers(text: str) -> set[str]:
    """The lower-case names (words and quoted names, not strings) in an expression: a CHECK's columns."""
    return {unquote(t.text).lower() for t in _tokens(text[:MAX_DDL_CHARS]) if t.kind in ("word", "name")}


@functools.lru_cache(maxsize=256)
def table_constraints(sql: str | None) -> tuple[TableConstraint, ...]:
    """The constraints of a ``CREATE TABLE`` statement, in the order it wrote them (see the module's docstring)."""
    if not sql or len(sql) > MAX_DDL_CHARS:
        return ()
    tokens = _tokens(sql)
    opening = next((i for i, t in enumerate(tokens) if t.text == "(" and t.depth == 0), None)
    if opening is None:
        return ()
    items, current = [], []
    for token in tokens[opening + 1 :]:
        if token.depth == 0:  # the body's closing ")": table options follow
            break
        if token.depth == 1 and token.text == ",":
            items.append(current)
            current = []
        else:
            current.append(token)
    items.append(current)
    found: list[TableConstraint] = []
    for item in items:
        if not item:
            continue
        first = item[2].word if item[0].word == "constraint" and len(item) > 2 else item[0].word
        if first in _CONSTRAINT_WORDS:
            found.extend(_constraints(sql, item, None))
        else:
            found.extend(_constraints(sql, item[1:], unquote(item[0].text)))
    return tuple(found)


def _constraints(sql: str, tokens: list[_Token], column: str | None) -> list[TableConstraint]:
    """The constraints in one item of the body: a table constraint (``column`` None) or a column's definition."""
    found, name, i = [], None, 0
    top = tokens[0].depth if tokens else 1
    while i < len(tokens):
        token = tokens[i]
        word = token.word if token.depth == top else ""
        if word == "constraint" and i + 1 < len(tokens):
            name, i = unquote(tokens[i + 1].text), i + 2
            continue
        if word in _COLUMN_CONSTRAINT_WORDS or (column is None and word == "foreign"):
            kind = {"primary": "p", "unique": "u", "check": "c"}.get(word, "f")
            if kind != "f":
                group, i = _next_group(tokens, i + 1, top)
            if kind == "c":
                text = sql[group[0].start : group[-1].end] if group else ""
                found.append(TableConstraint("c", name, (column,) if column else (), text.strip()))
            elif kind == "f":
                constraint, i = _foreign_key(tokens, i + 1, top, name, column)
                found.append(constraint)
            else:
                found.append(TableConstraint(kind, name, (column,) if column else _names(group)))
            name = None
            continue
        i += 1
    return found


def _next_group(tokens: list[_Token], i: int, top: int) -> tuple[list[_Token], int]:
    """The tokens inside the next parenthesised group at ``top`` (none if a word of ``top`` comes first), and the index past it."""
    while i < len(tokens) and tokens[i].depth == top and tokens[i].text != "(":
        if tokens[i].word in ("references", "constraint", "not", "null", "default", "check", "unique"):
            return [], i
        i += 1
    if i >= len(tokens):
        return [], i
    start = i + 1
    i = start
    while i < len(tokens) and tokens[i].depth > top:
        i += 1
    return tokens[start:i], i + 1


def _names(group: list[_Token]) -> tuple[str, ...]:
    """The first name of each comma-separated part of a key's column list (``a COLLATE x DESC, b`` -> a, b)."""
    names, fresh = [], True
    for token in group:
        if token.depth == group[0].depth and token.text == ",":
            fresh = True
        elif fresh and token.kind in ("word", "name", "string"):
            names.append(unquote(token.text))
            fresh = False
    return tuple(names)


_AFTER_REFERENCES = frozenset({"constraint", "primary", "unique", "check", "references", "default", "collate", "generated", "as"})


def _foreign_key(tokens, i, top, name, column) -> tuple[TableConstraint, int]:
    """``[FOREIGN KEY (cols)] REFERENCES parent [(cols)] [ON ...] [[NOT] DEFERRABLE [INITIALLY ...]]`` from ``i``."""
    if column is None:
        group, i = _next_group(tokens, i, top)
        columns = _names(group)
        while i < len(tokens) and tokens[i].word != "references":
            i += 1
        i += 1
    else:
        columns = (column,)
    parent = unquote(tokens[i].text) if i < len(tokens) else None
    i += 1
    words = []
    while i < len(tokens) and not (tokens[i].depth == top and tokens[i].word in _AFTER_REFERENCES):
        if tokens[i].depth == top and tokens[i].word:
            words.append(tokens[i].word)
        i += 1
    pairs = list(zip(words, words[1:]))
    deferrable = "deferrable" in words and ("not", "deferrable") not in pairs
    deferred = deferrable and ("initially", "deferred") in pairs
    return TableConstraint("f", name, columns, None, parent, deferrable, deferred), i
