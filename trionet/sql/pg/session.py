"""The state of one PostgreSQL session, without I/O: settings, transaction status, statements, portals.

- :class:`Settings` answers ``SET``, ``RESET`` and ``SHOW`` and says which
  ParameterStatus messages PostgreSQL would send (for the parameters it
  reports: application_name, client_encoding, DateStyle, TimeZone...);
- :class:`TransactionRule` keeps PostgreSQL's failed-transaction state: an
  error inside a transaction block makes every later command fail with
  25P02 until ROLLBACK (or COMMIT, which then rolls back);
- :class:`PreparedStatement` and :class:`Portal` are what Parse and Bind
  create; a portal's columns are fixed the first time they are announced,
  so a Describe and the rows that follow always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trionet.sql.pg import messages as m
from trionet.sql.pg.statements import Command, Statement

__all__ = ["SERVER_VERSION", "Column", "FastPlan", "PgError", "Portal", "PreparedStatement", "Settings", "TransactionRule"]

SERVER_VERSION = "15.0 (trionet)"
"""What ``server_version`` says: PostgreSQL 15's protocol and catalogue expectations, served by trionet."""


class PgError(Exception):
    """An error to answer with an ErrorResponse: SQLSTATE ``code`` and ``message``."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, position: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.position = position

    def response(self) -> m.ErrorResponse:
        return m.ErrorResponse(self.code, self.message, "FATAL" if self.fatal else "ERROR", position=self.position)


# name -> (canonical name, default); the ones PostgreSQL reports with ParameterStatus are in _REPORTED.
_SETTINGS = {
    "application_name": ("application_name", ""),
    "client_encoding": ("client_encoding", "UTF8"),
    "datestyle": ("DateStyle", "ISO, MDY"),
    "timezone": ("TimeZone", "UTC"),
    "intervalstyle": ("IntervalStyle", "postgres"),
    "integer_datetimes": ("integer_datetimes", "on"),
    "is_superuser": ("is_superuser", "off"),
    "server_encoding": ("server_encoding", "UTF8"),
    "server_version": ("server_version", SERVER_VERSION),
    "server_version_num": ("server_version_num", "150000"),
    "session_authorization": ("session_authorization", ""),
    "standard_conforming_strings": ("standard_conforming_strings", "on"),
    "default_transaction_read_only": ("default_transaction_read_only", "off"),
    "in_hot_standby": ("in_hot_standby", "off"),
    "transaction_isolation": ("transaction_isolation", "serializable"),
    "default_transaction_isolation": ("default_transaction_isolation", "serializable"),
    "transaction_read_only": ("transaction_read_only", "off"),
    "search_path": ("search_path", '"$user", public'),
    "extra_float_digits": ("extra_float_digits", "1"),
    "statement_timeout": ("statement_timeout", "0"),
    "lock_timeout": ("lock_timeout", "0"),
    "idle_in_transaction_session_timeout": ("idle_in_transaction_session_timeout", "0"),
    "client_min_messages": ("client_min_messages", "notice"),
    "bytea_output": ("bytea_output", "hex"),
    "max_identifier_length": ("max_identifier_length", "63"),
    "lc_messages": ("lc_messages", "C"),
    "lc_monetary": ("lc_monetary", "C"),
    "lc_numeric": ("lc_numeric", "C"),
    "lc_time": ("lc_time", "C"),
    "jit": ("jit", "off"),
    "synchronous_commit": ("synchronous_commit", "on"),
    "row_security": ("row_security", "on"),
    "escape_string_warning": ("escape_string_warning", "on"),
    "work_mem": ("work_mem", "4MB"),
}
_REPORTED = (
    "application_name", "client_encoding", "datestyle", "default_transaction_read_only", "in_hot_standby",
    "integer_datetimes", "intervalstyle", "is_superuser", "server_encoding", "server_version",
    "session_authorization", "standard_conforming_strings", "timezone",
)
# Settings whose value trionet cannot honour: only these values are accepted.
_FIXED = {
    "client_encoding": ("UTF8", "UTF-8", "UNICODE"),
    "standard_conforming_strings": ("ON", "TRUE", "1"),
    "bytea_output": ("HEX",),
    "server_encoding": ("UTF8",),
    "server_version": (),
    "server_version_num": (),
    "integer_datetimes": (),
    "is_superuser": (),
    "in_hot_standby": (),
    "max_identifier_length": (),
}


class Settings:
    """A session's run-time parameters, starting from the StartupMessage's.

    Args:
        startup: the StartupMessage's parameters; ``user`` and ``database``
            are kept for ``current_user`` and ``current_database()``, the
            others are applied as ``SET`` would (unknown ones are ignored,
            as PostgreSQL only warns).
        read_only: the server refuses writes (``default_transaction_read_only`` on).
    """

    def __init__(self, startup: dict[str, str], *, read_only: bool) -> None:
        self.user = startup.get("user", "")
        self.database = startup.get("database") or self.user
        self._values = {name: default for name, (_canon, default) in _SETTINGS.items()}
        self._values["session_authorization"] = self.user
        if read_only:
            self._values["default_transaction_read_only"] = "on"
            self._values["transaction_read_only"] = "on"
        self._defaults = dict(self._values)
        for name, value in startup.items():
            if name.lower() in _SETTINGS:
                try:
                    self.set(name, value)
                    self._defaults[name.lower()] = self._values[name.lower()]
                except PgError:
                    pass  # a bad client_encoding is refused when the client SETs it; at startup, kept UTF8

    def snapshot(self) -> dict:
        """Everything this object holds, as JSON-ready values (a connection moving to another worker)."""
        return {"user": self.user, "database": self.database, "values": self._values, "defaults": self._defaults}

    @classmethod
    def restore(cls, snapshot: dict) -> Settings:
        """The :class:`Settings` a :meth:`snapshot` was taken of."""
        settings = cls.__new__(cls)
        settings.user = str(snapshot["user"])
        settings.database = str(snapshot["database"])
        settings._values = {str(k): str(v) for k, v in snapshot["values"].items()}
        settings._defaults = {str(k): str(v) for k, v in snapshot["defaults"].items()}
        return settings

    def status_messages(self) -> list[m.ParameterStatus]:
        """The ParameterStatus messages sent after authentication."""
        return [m.ParameterStatus(_SETTINGS[n][0], self._values[n]) for n in _REPORTED]

    def set(self, name: str, value: str) -> list[m.ParameterStatus]:
        """``SET name TO value``; returns the ParameterStatus to send (if PostgreSQL reports ``name``).

        Raises:
            PgError: 42704 for a parameter PostgreSQL does not know (custom
                ``a.b`` ones are accepted), 22023 or 55P02 for a value
                trionet cannot honour.
        """
        key = name.lower()
        if value.upper() == "DEFAULT":
            return self.reset(key)
        if key not in _SETTINGS:
            if "." in key:
                self._values[key] = value
                return []
            raise PgError("42704", f'unrecognized configuration parameter "{name}"')
        allowed = _FIXED.get(key)
        if allowed is not None and value.upper() not in allowed:
            if not allowed:
                raise PgError("55P02", f'parameter "{name}" cannot be changed')
            raise PgError("22023", f'trionet supports only {allowed[0]} for "{name}", not {value!r}')
        if key == "client_encoding":
            value = "UTF8"
        self._values[key] = value
        return [m.ParameterStatus(_SETTINGS[key][0], value)] if key in _REPORTED else []

    def reset(self, name: str) -> list[m.ParameterStatus]:
        """``RESET name`` or ``RESET ALL``."""
        key = name.lower()
        if key == "all":
            out = []
            for k in list(self._values):
                if self._values[k] != self._defaults.get(k, self._values[k]):
                    out += self.reset(k)
            return out
        if key not in _SETTINGS and "." not in key:
            raise PgError("42704", f'unrecognized configuration parameter "{name}"')
        if key in self._defaults:
            self._values[key] = self._defaults[key]
        else:
            self._values.pop(key, None)
        return [m.ParameterStatus(_SETTINGS[key][0], self._values[key])] if key in _REPORTED else []

    def values(self) -> dict[str, str]:
        """Every setting by lower-case name (for ``current_setting()``)."""
        return dict(self._values)

    def show(self, name: str) -> tuple[str, list[tuple[str, ...]]]:
        """``SHOW name``: the column name and rows (``SHOW ALL``: name, setting, description).

        Raises:
            PgError: 42704 for an unknown parameter.
        """
        key = name.lower()
        if key == "all":
            return "all", [(_SETTINGS[k][0] if k in _SETTINGS else k, v, "") for k, v in sorted(self._values.items())]
        if key not in self._values:
            raise PgError("42704", f'unrecognized configuration parameter "{name}"')
        return key, [(self._values[key],)]


@dataclass
class TransactionRule:
    """PostgreSQL's transaction status on top of SQLite's: I, T, or E (failed until ROLLBACK)."""

    failed: bool = False

    def status(self, in_transaction: bool) -> str:
        """The ReadyForQuery status byte."""
        if self.failed:
            return "E"
        return "T" if in_transaction else "I"

    def check(self, command: Command, words: tuple[str, ...]) -> None:
        """Raise 25P02 when a failed transaction block refuses this command.

        Only ROLLBACK, COMMIT (which rolls back) and ``ROLLBACK TO SAVEPOINT``
        run in a failed block.
        """
        if self.failed and command.kind not in ("rollback", "commit") and (words[:1] != ("ROLLBACK",)):
            raise PgError(
                "25P02", "current transaction is aborted, commands ignored until end of transaction block"
            )

    def on_error(self, in_transaction_before: bool, in_transaction_after: bool) -> None:
        """An error happened: inside a transaction block, the block is now failed."""
        if in_transaction_before or in_transaction_after:
            self.failed = True

    def on_end(self) -> None:
        """COMMIT, ROLLBACK or ROLLBACK TO SAVEPOINT succeeded."""
        self.failed = False


@dataclass(frozen=True, slots=True)
class Column:
    """A result column as announced: its name and type OID."""

    name: str
    oid: int


@dataclass(eq=False)
class FastPlan:
    """What every run of a read-only prepared statement repeats, kept once a portal of it has run.

    The executor's fast path (:meth:`~trionet.sql.pg.executor.Executor.handle`
    of a :class:`~trionet.sql.pg.protocol.PortalRun`) answers Bind, Describe,
    Execute and Sync of such a statement from it, without a portal. Kept only
    when the columns' types do not depend on the values (declared types, the
    expression rules, or fixed by a Describe of the statement), so every run
    announces what the first announced.
    """

    columns: tuple[Column, ...]
    names: list[str]  # the column names SQLite reported: a run that reports others takes the slow path
    fixed: tuple[Column, ...] | None  # the statement's described columns when the plan was made
    oids: tuple[int, ...]
    declared: bool = False  # every column has a declared type (no expression rule, no Describe)
    descriptions: dict[tuple[int, ...], tuple[tuple[bool, ...], bytes]] = field(default_factory=dict)
    """Bind's result format codes -> (binary per column, RowDescription's bytes)."""


@dataclass
class PreparedStatement:
    """What Parse made: the statement (None for an empty query), its command, its parameter types."""

    source: str
    statement: Statement | None
    command: Command
    param_oids: tuple[int, ...]
    columns: tuple[Column, ...] | None = None  # set by a Describe of the statement, then fixed
    decl: list[str] | None = None  # the declared types of its columns, once a portal has run it
    offset: int = 0  # where ``source`` starts in the simple Query it came from (error positions)
    plan: FastPlan | None = None  # set once a portal of it ran as a read on the event loop (see FastPlan)


@dataclass
class Portal:
    """What Bind made: a statement with its parameter values, run by Execute (maybe in several parts)."""

    prepared: PreparedStatement
    params: tuple
    result_formats: tuple[int, ...]
    columns: tuple[Column, ...] | None = None  # fixed once announced or first run
    started: bool = False
    done: bool = False
    displaced: bool = False
    returns_rows: bool = False
    rows: list = field(default_factory=list)  # fetched, not sent yet
    exhausted: bool = False
    sent: int = 0
    changes: int = 0
    tag: str = ""
    work_left: float = 0.0  # seconds of SQLite time still allowed (query timeout)

    def formats(self) -> tuple[bool, ...]:
        """Whether each column is sent in binary, from Bind's result format codes.

        Raises:
            PgError: 08P01 when the number of format codes is neither 0, 1 nor the number of columns.
        """
        n = len(self.columns or ())
        codes = self.result_formats
        if not codes:
            return (False,) * n
        if len(codes) == 1:
            return (codes[0] == 1,) * n
        if len(codes) != n:
            raise PgError("08P01", f"bind message has {len(codes)} result formats but query has {n} columns")
        return tuple(c == 1 for c in codes)
