"""Which literals of a simple Query may run as bound parameters: one prepared statement per query shape.

In pgbench's ``-M simple`` every Query carries its own literal
(``... WHERE aid = 48213``), so SQLite would compile every text anew and
the authorizer judge it anew. :func:`bind_literals` rewrites such a text into
one parameterized statement (``... WHERE aid = ?1``) and the values to bind,
so that every query of one shape shares a prepared statement.

A bound parameter is not a literal everywhere in SQLite: ``ORDER BY 2`` and
``GROUP BY 1`` name a column, a literal in the select list names the result
column, ``LIMIT``, DDL and PRAGMA take no parameter, the LIKE optimisation
and partial or expression indexes look at a literal's value, ``-`` is an
operator of its own, ``X'..'`` is a blob, and an integer beyond 64 bits is
read as a real (rounded the way SQLite rounds). So the rule binds only what
is the same value, with the same (no) affinity, in the one place where its
position gives it no other meaning: an integer that fits in 64 bits
(digits only, no sign, no ``.`` or exponent) or a plain ``'..'`` string
(``''`` inside it is one quote), standing right after a comparison operator
(``= == <> != < > <= >=``, spaces between; not the end of ``<< >> -> ->>``,
and a ``-`` or ``+`` sign means an operator stands between). Reals are never
bound: SQLite's reading of a decimal is not guaranteed to round as Python's
does. Anything else after an operator (``= 1.5``, ``= X'00'``, ``= (5)``,
``= 5abc``, ``= 't'.b``: a string before a dot is SQLite's table name)
stays in the text. A text with a parameter of its own (``? :a @a $a``) or
an unterminated quote is not rewritten at all. The caller still checks the
rest: that the statement is one read whose columns all have declared types
(so no select-list literal is ever an announced column), and that the
answer's column names are those of the text.

Pure functions, no SQLite.
"""

from __future__ import annotations

import re

__all__ = ["MAX_BOUND", "bind_literals", "bind_one_number", "rebind"]

MAX_BOUND = 100  # a text with more bindable literals than this runs as it is

_ID_CHARS = r"\w$\x80-\U0010ffff"  # what SQLite reads as part of a name (any byte >= 0x80 too)
_OPERATOR = r"(?<![<>!=\-])(?:==|=|<>|!=|<=|>=|<|>)\s*"  # not the end of << >> -> ->> or = =
# Only what the rule needs stops the scan: comments, quoted names and strings
# (kept as they are, so what is inside them is never read as SQL), a
# comparison operator with the literal after it, and what makes the text
# unfit for binding. Names and other numbers are passed over without a stop
# (a number run into a name, ``= 5abc``, is not bound: SQLite's error stays).
_TOKEN = re.compile(
    rf"""
    (?=[-/"`\['<>!=?:@$\#])  # no alternative starts elsewhere: a quick test at each character
    (?:(?P<skip>--[^\n]*|/\*.*?(?:\*/|\Z)|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|'(?:[^']|'')*')
    |{_OPERATOR}(?:(?P<string>'(?:[^']|'')*')(?![{_ID_CHARS}]|\s*\.)|(?P<number>[0-9]+)(?![{_ID_CHARS}.]))
    |(?P<bad>['"`\[?:@$\#]))
    """,
    re.DOTALL | re.VERBOSE,
)
_INT64_MAX = (1 << 63) - 1


def bind_literals(sql: str) -> tuple[str, tuple[int | str, ...]] | None:
    """``sql`` with the literals that are safe to bind replaced by ``?1, ?2, ...``, and their values.

    Args:
        sql: one statement's text as the client sent it (SQLite's dialect).

    Returns:
        The rewritten text and the values in parameter order, or None when
        nothing is bound (no literal qualifies, or the text is unfit: it has
        parameters of its own, an unterminated quote, or more than
        :data:`MAX_BOUND` literals to bind). Run with these values, the text
        answers what ``sql`` answers (see the module docstring for the rule
        and why).
    """
    found = _bind(sql)
    return None if found is None else found[:2]


def bind_one_number(sql: str) -> tuple[tuple[str, tuple[int | str, ...]] | None, tuple[str, str, str] | None]:
    """:func:`bind_literals`'s answer for ``sql``, and a memo for :func:`rebind` when it bound one integer, else None.

    The memo is the text around the integer (head and tail) and the text
    bound: pgbench's ``... WHERE aid = 48213;`` gives ``("... WHERE aid = ",
    ";", "... WHERE aid = ?1;")``.
    """
    found = _bind(sql)
    if found is None:
        return None, None
    text, values, (start, end) = found
    if len(values) != 1 or type(values[0]) is not int:
        return (text, values), None
    return (text, values), (sql[:start], sql[end:], text)


def rebind(sql: str, memo: tuple[str, str, str]) -> tuple[str, tuple[int]] | None:
    """What :func:`bind_literals` gives ``sql`` when it is ``memo``'s text with another integer; else None.

    Without a scan: ``sql`` must be the memo's head, then ASCII digits of a
    64-bit integer, then its tail. Everything around the integer is the text
    that bound one integer there, so the scan would read it alike: the head
    ends with the comparison operator (and its spaces), the tail starts with
    what made the old digits a whole number, and no comment or quote in the
    head reaches past it (or the old integer would not have been bound).
    Hypothesis holds it against :func:`bind_literals` (tests/sql/pg/test_literals.py).
    """
    head, tail, text = memo
    if not sql.startswith(head) or not sql.endswith(tail):
        return None
    digits = sql[len(head) : len(sql) - len(tail)]  # "" when the two overlap
    if not (digits.isascii() and digits.isdigit()) or (value := _int64(digits)) is None:
        return None
    return text, (value,)


def _int64(digits: str) -> int | None:
    # The value of ASCII digits SQLite reads as a 64-bit integer; None: it reads a real.
    if len(digits) > 19:
        return None
    value = int(digits)
    return value if value <= _INT64_MAX else None


def _bind(sql: str) -> tuple[str, tuple[int | str, ...], tuple[int, int]] | None:
    # bind_literals, and where in sql its first value was.
    parts: list[str] = []
    values: list[int | str] = []
    done = 0  # sql[:done] is in parts
    first = (0, 0)
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "skip":
            continue
        if kind == "bad":
            return None
        token = match.group(kind)
        if kind == "number":
            if (value := _int64(token)) is None:
                continue  # a real to SQLite
        else:
            value = token[1:-1].replace("''", "'")
        if len(values) == MAX_BOUND:
            return None
        values.append(value)
        start = match.start(kind)
        parts.append(sql[done:start])
        parts.append(f"?{len(values)}")
        done = start + len(token)
        if len(values) == 1:
            first = (start, done)
    if not values:
        return None
    parts.append(sql[done:])
    return "".join(parts), tuple(values), first
