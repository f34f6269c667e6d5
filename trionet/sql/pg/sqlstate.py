"""SQLSTATE codes for the engine's errors, so PostgreSQL clients can tell them apart.

The engine (:mod:`trionet.sql.engine`) reports stable codes of its own
(``read_only``, ``constraint``, ``timeout``...); SQLite's message refines a
few of them (which constraint failed, a syntax error or a missing table).
The table is in docs/protocol/pg.md. Pure functions.
"""

from __future__ import annotations

import re

__all__ = [
    "ACTIVE_SQL_TRANSACTION",
    "FEATURE_NOT_SUPPORTED",
    "IN_FAILED_TRANSACTION",
    "PROTOCOL_VIOLATION",
    "QUERY_CANCELED",
    "error_position",
    "sqlstate",
]

PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
IN_FAILED_TRANSACTION = "25P02"
ACTIVE_SQL_TRANSACTION = "25001"
NO_ACTIVE_SQL_TRANSACTION = "25P01"
QUERY_CANCELED = "57014"
UNDEFINED_OBJECT = "42704"
INVALID_PARAMETER_VALUE = "22023"

_BY_CODE = {
    "read_only": "25006",
    "denied": "42501",
    "timeout": QUERY_CANCELED,
    "interrupted": QUERY_CANCELED,
    "busy": "55P03",
    "bad_param": "22023",
    "too_big": "54000",
    "full": "53100",
    "out_of_memory": "53200",
    "multiple_statements": "42601",
    "internal": "XX000",
}

# (code, words in SQLite's message) -> SQLSTATE, first match wins.
_BY_MESSAGE = (
    ("constraint", "UNIQUE constraint", "23505"),
    ("constraint", "PRIMARY KEY constraint", "23505"),
    ("constraint", "NOT NULL constraint", "23502"),
    ("constraint", "FOREIGN KEY constraint", "23503"),
    ("constraint", "CHECK constraint", "23514"),
    ("constraint", "", "23000"),
    ("sql_error", "syntax error", "42601"),
    ("sql_error", "incomplete input", "42601"),
    ("sql_error", "unrecognized token", "42601"),
    ("sql_error", "no such table", "42P01"),
    ("sql_error", "no such view", "42P01"),
    ("sql_error", "no such column", "42703"),
    ("sql_error", "no such function", "42883"),
    ("sql_error", "already exists", "42P07"),
    ("sql_error", "ambiguous column", "42702"),
    ("sql_error", "datatype mismatch", "42804"),
    ("sql_error", "cannot start a transaction within a transaction", ACTIVE_SQL_TRANSACTION),
    ("sql_error", "no transaction is active", NO_ACTIVE_SQL_TRANSACTION),
    ("sql_error", "no such savepoint", "3B001"),
    ("sql_error", "", "42000"),
)


def sqlstate(code: str, message: str) -> str:
    """The SQLSTATE for an engine error ``code`` with SQLite's ``message``."""
    direct = _BY_CODE.get(code)
    if direct is not None:
        return direct
    for kind, words, state in _BY_MESSAGE:
        if kind == code and words in message:
            return state
    return "XX000"


# SQLite names the token or object an error is about; PostgreSQL clients
# (psql's caret line) want where it is. Python's sqlite3 does not expose
# sqlite3_error_offset, so the position is the first place the name stands.
_NAMED = re.compile(
    r'near "(?P<near>[^"]*)": syntax error|no such (?:table|column|function): (?:\w+\.)*(?P<name>\w+)'
    r"|unrecognized token: \"(?P<token>[^\"]*)\""
)


def error_position(sql: str, message: str) -> int | None:
    """The 1-based character of ``sql`` that SQLite's ``message`` is about, or None when it names nothing findable."""
    match = _NAMED.search(message)
    if match is None:
        return None
    if match["name"] is not None:
        found = re.search(rf"(?<![\w$]){re.escape(match['name'])}(?!\w)", sql, re.IGNORECASE)
        return found.start() + 1 if found else None
    needle = match["near"] if match["near"] is not None else match["token"]
    if not needle:
        return None
    at = sql.find(needle)
    return at + 1 if at >= 0 else None
