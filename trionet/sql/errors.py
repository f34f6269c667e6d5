"""The SQL service's errors and their stable codes: what client, server and engine share.

Pure: no trio, no sqlite3. The clients (trio and the shell's blocking one)
raise :class:`SqlError` for an ``error`` frame and :class:`SqlConnectionError`
when the connection fails; the engine raises :class:`SqlError` for what SQLite
refused. All import them from here, so no client imports the SQLite side.
"""

from __future__ import annotations

__all__ = ["BYE_CODES", "ERROR_CODES", "SqlConnectionError", "SqlError"]

ERROR_CODES: dict[str, str] = {
    "bad_request": "the line is not a request: invalid JSON, a wrong field, or a field of the wrong type",
    "request_too_large": "the request line is longer than the server's limit; it was skipped",
    "bad_param": "a parameter cannot be bound: wrong count, unknown name, or a value SQLite cannot store",
    "sql_error": "SQLite rejected the statement (syntax, unknown table or column, ...)",
    "multiple_statements": "the request holds more than one statement; send one per request",
    "read_only": "the statement would write, and the server is read-only (start it with --read-write)",
    "denied": "the statement uses something off the server's allow-list (ATTACH, extensions, fts3_tokenizer, ...)",
    "constraint": "a constraint failed (UNIQUE, NOT NULL, CHECK, FOREIGN KEY)",
    "busy": "the database is locked by another writer; retry, or use BEGIN IMMEDIATE",
    "too_big": "a string or blob is larger than the server's limit",
    "timeout": "the request ran longer than the server's --query-timeout and was interrupted",
    "interrupted": "the request was interrupted because the server is shutting down",
    "out_of_memory": "SQLite reached the server's --max-sqlite-memory-bytes; the statement was stopped",
    "full": "temporary tables and indexes reached the server's --max-temp-bytes (or the disk is full)",
    "internal": "the server failed unexpectedly; the connection stays usable",
}
"""Every ``code`` an ``error`` frame may carry, with what it means."""

BYE_CODES: dict[str, str] = {
    "shutdown": "the server is shutting down (SIGINT or SIGTERM)",
    "idle": "the connection sent no request for the server's --idle-timeout",
    "idle_transaction": "the connection left a transaction open and idle for --idle-transaction-timeout; "
    "it was rolled back",
    "busy": "the server already has --max-connections clients; sent instead of hello",
    "auth_failed": "the user and password did not match the server's --users (the same for an unknown user), "
    "or the authentication messages were malformed",
    "auth_required": "the server has --users: authenticate (an 'auth' message) before the first request",
    "auth_timeout": "the client did not finish authenticating within the server's --auth-timeout",
}
"""Every ``code`` a ``bye`` frame may carry, with what it means."""


class SqlError(Exception):
    """A request failed; ``code`` is one of :data:`ERROR_CODES` (or ``connection``, client side)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SqlError({self.code!r}, {self.message!r})"


class SqlConnectionError(SqlError):
    """The connection to the server failed or was closed; ``code`` is ``connection``."""

    def __init__(self, message: str) -> None:
        super().__init__("connection", message)
