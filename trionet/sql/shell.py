"""``trionet sql shell``: an interactive SQL session, with sqlite3's and psql's habits.

How it is built, and why:

- **Everything runs in the main thread, synchronously.** Lines are read with
  prompt_toolkit's blocking ``PromptSession.prompt()`` (line editing,
  history in ``~/.trionet_sql_history`` or ``$TRIONET_SQL_HISTORY``, Tab
  completion of table and column names), the way pgcli and litecli read
  theirs. prompt_toolkit's async API needs asyncio, not trio, and reading in
  a worker thread beside a trio loop cannot be cancelled: an abandoned
  ``input()`` thread kept the terminal and ate the next line after Ctrl-C.
- **The server is spoken to with a small blocking client**
  (:class:`BlockingConnection`): a plain socket driven by the same sans-IO
  core as the trio client (``protocol.ClientProtocol``). A shell runs one
  statement at a time, so it needs no event loop, and a blocking socket in
  the main thread is what makes Ctrl-C simple: SIGINT raises
  ``KeyboardInterrupt`` in the ``recv`` that waits for the answer.
- **Ctrl-C cancels**: while typing, it drops the line (and any unfinished
  statement); while a statement runs, it closes the connection, which makes
  the server interrupt the statement (the protocol has no cancel message:
  docs/protocol/sql.md, "The client leaves"), and the next statement
  reconnects. An open transaction is rolled back by that, and the shell
  says so. Ctrl-D on an empty line leaves.
- **Scripts**: from a pipe or ``-f FILE`` no prompt is printed, errors go to
  stderr as ``SOURCE:LINE: error [code]: message``, and the first error stops
  the run with exit status 1 (``--continue-on-error`` runs on, and the exit
  status is still 1 when a statement failed, as sqlite3's is).

:class:`Shell` holds the session's state and commands and does not know
where lines come from; :func:`run_shell` connects it to a terminal or a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from trionet.framing import EOF, NEED_DATA
from trionet.sql import protocol
from trionet.sql.auth import ClientLogin
from trionet.sql.errors import SqlConnectionError, SqlError
from trionet.sql.render import (
    EXPANDED,
    FORMATS,
    format_result,
    row_count,
    truncation_notice,
)
from trionet.sql.result import Result

__all__ = [
    "HELP",
    "BlockingConnection",
    "CtrlC",
    "Shell",
    "ShellStopped",
    "completions",
    "history_path",
    "run_shell",
    "split_statements",
]

HELP = """\
Type SQL ending with ';' (it may span lines). Commands (sqlite3 / psql spelling):
  .help            \\?            this text
  .tables          \\dt           list tables and views
  .schema [TABLE]  \\d [TABLE]    CREATE statements / the columns of TABLE
  .mode table|line|markdown|json|csv   how results are printed
  .headers on|off                column names in table and csv output
  .expanded [on|off|auto]  \\x [on|off|auto]   one 'column | value' line per value
                                 (auto: when a table is wider than the terminal)
  .timer on|off    \\timing [on|off]   how long each statement took
  .read FILE       \\i FILE       run the statements in FILE
  .output [FILE]   \\o [FILE]     send results to FILE (no FILE: back to the screen)
  .once FILE                     send the next result to FILE
  .quit  .exit     \\q  quit  exit   leave (Ctrl-D on an empty line too)
Ctrl-C drops the line being typed, or cancels the running statement."""

META_COMMANDS = (
    ".help", ".tables", ".schema", ".mode", ".headers", ".expanded", ".timer", ".read", ".output",
    ".once", ".quit", ".exit", "\\?", "\\dt", "\\d", "\\x", "\\timing", "\\i", "\\o", "\\q",
)

SQL_KEYWORDS = (
    "SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "HAVING", "LIMIT", "OFFSET", "JOIN", "LEFT JOIN",
    "ON", "AS", "AND", "OR", "NOT", "NULL", "IS", "IN", "LIKE", "BETWEEN", "DISTINCT", "COUNT", "INSERT",
    "INTO", "VALUES", "UPDATE", "SET", "DELETE", "CREATE", "TABLE", "INDEX", "VIEW", "DROP", "ALTER",
    "BEGIN", "COMMIT", "ROLLBACK", "WITH", "RECURSIVE", "UNION", "CASE", "WHEN", "THEN", "ELSE", "END",
    "EXPLAIN", "QUERY PLAN", "DESC", "ASC",
)


# Tables and views, the connection's temporary ones included.
_TABLES = (
    "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' UNION "
    "SELECT name FROM sqlite_temp_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
    "ORDER BY name"
)


def history_path() -> Path:
    """Where the history is kept: ``$TRIONET_SQL_HISTORY``, else ``~/.trionet_sql_history``."""
    return Path(os.environ.get("TRIONET_SQL_HISTORY") or Path.home() / ".trionet_sql_history")


def split_statements(text: str) -> tuple[list[str], str]:
    """Cut ``text`` into complete statements and the unfinished rest.

    ``sqlite3.complete_statement`` decides where a statement ends, so a ``;``
    inside a string, a comment or a trigger body does not end it.
    """
    statements = []
    start = 0
    for match in re.finditer(";", text):
        end = match.end()
        if sqlite3.complete_statement(text[start:end]):
            statement = text[start:end].strip()
            if statement.strip("; \t\r\n"):
                statements.append(statement)
            start = end
    return statements, text[start:]


def completions(text_before_cursor: str, tables: dict[str, list[str]]) -> list[tuple[str, int]]:
    """What Tab may complete: ``(word, start)`` pairs, ``start`` counted back from the cursor (<= 0).

    Args:
        text_before_cursor: the line up to the cursor.
        tables: table name -> its column names.

    A line starting with ``.`` or ``\\`` completes shell commands; ``T.c``
    completes T's columns; any other word completes table names, column
    names and SQL keywords (case-insensitively).
    """
    stripped = text_before_cursor.lstrip()
    if stripped[:1] in (".", "\\") and " " not in stripped:
        return [(c, -len(stripped)) for c in META_COMMANDS if c.startswith(stripped)]
    word = re.search(r"[\w.]*$", text_before_cursor).group()
    table, dot, prefix = word.rpartition(".")
    if dot:
        columns = next((cols for name, cols in tables.items() if name.lower() == table.lower()), [])
        candidates = columns
    else:
        candidates = [*tables, *sorted({c for cols in tables.values() for c in cols}), *SQL_KEYWORDS]
    if not prefix:
        return [(c, 0) for c in candidates] if dot else []
    low = prefix.lower()
    seen = []
    for candidate in candidates:
        if candidate.lower().startswith(low) and candidate not in seen:
            seen.append(candidate)
    return [(c, -len(prefix)) for c in seen]


class BlockingConnection:
    """A blocking, one-statement-at-a-time client of the SQL protocol, for the shell.

    Args:
        host, port: the server's address.
        timeout: seconds to wait for the connection, the greeting and the login.
        tls: speak TLS, verifying the server with this context.
        user, password: the credentials, for a server with ``--users``.

    Error handling: a failed connection raises :class:`SqlConnectionError`;
    anything that interrupts a statement (``KeyboardInterrupt`` included)
    closes the connection, which tells the server to interrupt the
    statement; the next :meth:`query` connects again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 10.0,
        *,
        tls: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._tls = tls
        self._user = user
        self._password = password
        self.server: protocol.Hello | None = None
        self._sock: socket.socket | None = None
        self._proto = protocol.ClientProtocol()
        self._ids = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Connect and read the greeting (a no-op when connected)."""
        if self._sock is not None:
            return
        where = f"{self.host}:{self.port}"
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self._tls is not None:
                self._sock = self._tls.wrap_socket(self._sock, server_hostname=self.host)
            self._proto = protocol.ClientProtocol()
            hello = self._next_event()
            if isinstance(hello, protocol.Hello) and hello.auth:
                self._login(hello, where)
        except SqlConnectionError:
            self.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise SqlConnectionError(f"TLS with {where} failed: certificate verify failed: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            self.close()
            raise SqlConnectionError(f"TLS with {where} failed: {exc.reason or exc}") from None
        except TimeoutError:
            self.close()
            raise SqlConnectionError(f"no answer from {where} within {self.timeout}s") from None
        except OSError as exc:
            self.close()
            raise SqlConnectionError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        except protocol.RemoteProtocolError as exc:
            self.close()
            raise SqlConnectionError(f"{where} is not a trionet SQL server ({exc})") from None
        if hello is EOF and self._tls is None:
            self.close()
            raise SqlConnectionError(f"{where} closed the connection without a hello (if it serves TLS, use --tls-ca)")
        if not isinstance(hello, protocol.Hello):
            self.close()
            raise SqlConnectionError(f"{where} is not a trionet SQL server")
        self._sock.settimeout(None)  # a statement may run as long as the server lets it
        self.server = hello

    def _login(self, hello: protocol.Hello, where: str) -> None:
        login = ClientLogin(hello, self._user, self._password, where)
        line = login.first()
        while line is not None:
            self._sock.sendall(line)
            line = login.receive(self._next_event())

    def close(self) -> None:
        """Close the connection (the server interrupts a statement still running)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next_event(self):
        while True:
            event = self._proto.next_event()
            if event is not NEED_DATA:
                return event
            self._proto.receive_data(self._sock.recv(65536))

    def query(self, sql: str, params=None) -> Result:
        """Run one statement and return its whole result.

        Raises:
            SqlError: the server answered with an error; the connection stays.
            SqlConnectionError: the connection failed; it is closed.
        """
        self.connect()
        self._ids += 1
        columns: list[str] = []
        rows: list[tuple] = []
        try:
            self._sock.sendall(protocol.encode_request(sql, params, id=self._ids))
            while True:
                event = self._next_event()
                if isinstance(event, protocol.Columns):
                    columns = event.columns
                elif isinstance(event, protocol.Rows):
                    rows.extend(event.rows)
                elif isinstance(event, protocol.Done):
                    return Result(columns, rows, event.truncated, event.changes, event.last_insert_rowid, event.ms)
                elif isinstance(event, protocol.ErrorReply):
                    raise SqlError(event.code, event.message)
                elif event is EOF or isinstance(event, protocol.Bye):
                    reason = f": {event.reason}" if isinstance(event, protocol.Bye) else ""
                    raise SqlConnectionError(f"the server closed the connection{reason}")
        except SqlError as exc:
            if isinstance(exc, SqlConnectionError):
                self.close()
            raise
        except (OSError, protocol.RemoteProtocolError) as exc:
            self.close()
            raise SqlConnectionError(str(exc)) from None
        except BaseException:
            self.close()  # KeyboardInterrupt: the server interrupts the statement when we leave
            raise


class CtrlC:
    """The SIGINT handler of an interactive session: it cancels the running statement, nothing else.

    While a statement runs (inside :meth:`cancels`) the first SIGINT raises
    ``KeyboardInterrupt`` in the main thread, which is waiting in ``recv``;
    any other SIGINT (a second Ctrl-C while the first is handled, or one
    typed while a result prints) is ignored, so the shell cannot be killed
    half-way through cleaning up. While a line is typed, prompt_toolkit reads
    Ctrl-C as a key (the terminal is in raw mode) and puts this handler back
    afterwards.
    """

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def cancels(self) -> Iterator[None]:
        """Let one SIGINT interrupt the body."""
        self.armed = True
        try:
            yield
        finally:
            self.armed = False


class ShellStopped(Exception):
    """A statement failed and the session (or the ``.read`` file) stops there."""


class Shell:
    """The shell's state and commands, apart from where lines come from.

    Args:
        conn: a :class:`BlockingConnection` (or anything with its ``query``).
        out: where results go (the terminal, or a pipe).
        err: where errors and notices go.
        interactive: a person is typing: errors do not stop the session.
        continue_on_error: in scripts, run on past a failed statement.
        pager: page long results on a terminal (``$PAGER``, else ``less -S``).

    Error handling: a failed statement is reported on ``err``; when the
    session stops on errors (scripts, ``.read``) it then raises
    :class:`ShellStopped`. ``failures`` counts failed statements.
    """

    def __init__(
        self,
        conn,
        out: TextIO,
        err: TextIO,
        *,
        interactive: bool = False,
        continue_on_error: bool = False,
        pager: bool = False,
    ) -> None:
        self.conn = conn
        self.out = out
        self.err = err
        self.interactive = interactive
        self.continue_on_error = continue_on_error
        self.pager = pager
        self.mode = "table"
        self.headers = True
        self.expanded = "auto"
        self.timer = False
        self.failures = 0
        self.buffer = ""
        self.location = ""
        self.tables: dict[str, list[str]] = {}
        self.ctrl_c: CtrlC | None = None
        self._output: TextIO | None = None
        self._once: TextIO | None = None
        self._stop_on_error = not interactive and not continue_on_error

    @property
    def prompt(self) -> str:
        return "   ...> " if self.buffer.strip() else "trionet> "

    # --- lines in -------------------------------------------------------------

    def feed(self, line: str) -> bool:
        """Take one line; return False when it asks to leave.

        Raises:
            ShellStopped: a statement failed and the session stops on errors.
        """
        stripped = line.strip()
        if not self.buffer.strip():
            if stripped[:1] in (".", "\\"):
                self.buffer = ""
                return self.command(stripped)
            if stripped.rstrip(";").strip().lower() in ("quit", "exit"):
                return False
        self.buffer += line + "\n"
        statements, self.buffer = split_statements(self.buffer)
        for statement in statements:
            self.execute(statement)
        return True

    def finish(self) -> None:
        """At the end of input: run a last statement that lacks its ``;``."""
        rest, self.buffer = self.buffer.strip(), ""
        if rest:
            self.execute(rest)

    def run_lines(self, lines: Iterable[str], source: str) -> bool:
        """Feed every line of ``source``; return False when one asked to leave.

        Raises:
            ShellStopped: a statement failed and the session stops on errors.
        """
        saved = self.location
        try:
            for number, line in enumerate(lines, 1):
                self.location = f"{source}:{number}"
                if not self.feed(line.rstrip("\r\n")):
                    return False
            self.finish()
        finally:
            self.location = saved
        return True

    # --- statements -------------------------------------------------------------

    def execute(self, sql: str) -> None:
        """Run one statement and print its result (or its error).

        Raises:
            ShellStopped: it failed and the session stops on errors.
        """
        started = time.perf_counter()
        try:
            with self.ctrl_c.cancels() if self.ctrl_c else contextlib.nullcontext():
                result = self.conn.query(sql)
        except SqlError as exc:
            self.fail(f"error [{exc.code}]: {exc.message}")
            return
        except KeyboardInterrupt:
            self.conn.close()  # it may have come just after the answer: close all the same
            self.fail("cancelled: the connection was closed, so the server stopped the statement "
                      "and rolled back any open transaction; the next statement reconnects")
            return
        elapsed = time.perf_counter() - started
        self.show(result)
        if self.timer:
            self.status(f"time: {elapsed * 1000:.1f} ms (server {result.server_ms:.1f} ms)")
        if re.match(r"\s*(create|drop|alter)\b", sql, re.IGNORECASE):
            self.load_names()

    def fail(self, message: str) -> None:
        """Report a failure; raise :class:`ShellStopped` when the session stops on errors."""
        self.failures += 1
        prefix = f"{self.location}: " if self.location and not self.interactive else ""
        print(prefix + message, file=self.err, flush=True)
        if self._stop_on_error:
            raise ShellStopped(message)

    def status(self, text: str) -> None:
        """A line about a result (row count, timing): on the screen, never into a ``.output`` file."""
        if self.interactive:
            print(text, file=self.out, flush=True)

    def show(self, result: Result) -> None:
        """Print ``result`` where results go now."""
        target = self._once or self._output
        to_screen = target is None
        stream = target or self.out
        width = shutil.get_terminal_size().columns if to_screen and _isatty(stream) else None
        text = format_result(result, self.mode, width=width, headers=self.headers, expanded=self.expanded)
        if to_screen and self.pager and self.interactive and width is not None and _too_long(text, width):
            _page(text, stream)
        else:
            stream.write(text)
            stream.flush()
        if self._once is not None:
            self._once.close()
            self._once = None
        if result.columns and self.mode in ("table", "line", "markdown"):
            self.status(row_count(result))
        notice = truncation_notice(result)
        if notice and self.mode != "json":
            print(notice, file=self.err, flush=True)

    def load_names(self) -> None:
        """Fetch table and column names for completion (silently fewer names on failure)."""
        try:
            result = self.conn.query(_TABLES)
        except SqlError:
            return
        tables: dict[str, list[str]] = {}
        for (table,) in result.rows:
            try:
                columns = self.conn.query(f"PRAGMA table_info({_quote(table)})")
            except SqlError:
                columns = Result([], [])
            tables[table] = [row[1] for row in columns.rows]
        self.tables = tables

    # --- meta-commands ------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a ``.`` or ``\\`` command; return False when it asks to leave.

        Raises:
            ShellStopped: a statement it ran failed and the session stops on errors.
        """
        name, _, arg = line.partition(" ")
        arg = arg.strip().rstrip(";").strip()
        on_off = {"on": True, "off": False}
        if name in (".quit", ".exit", ".q", "\\q"):
            return False
        if name in (".help", "\\?", "\\h"):
            print(HELP, file=self.out, flush=True)
        elif name in (".tables", "\\dt") or (name == "\\d" and not arg):
            self.execute(_TABLES)
        elif name == ".schema":
            self.schema(arg)
        elif name == "\\d":
            self.describe(arg)
        elif name in (".mode", ".format") and arg in FORMATS:
            self.mode = arg
        elif name == ".headers" and arg in on_off:
            self.headers = on_off[arg]
        elif name in ("\\x", ".expanded") and (arg in EXPANDED or not arg):
            self.expanded = arg or ("off" if self.expanded == "on" else "on")
            self.status(f"expanded display is {self.expanded}")
        elif name in (".timer", "\\timing") and (arg in on_off or not arg):
            self.timer = on_off[arg] if arg else not self.timer
            self.status(f"timing is {'on' if self.timer else 'off'}")
        elif name in (".read", "\\i") and arg:
            return self.read(arg)
        elif name in (".output", "\\o"):
            self.redirect(arg)
        elif name == ".once" and arg:
            self._once = self._open(arg)
        else:
            self.fail(f"unknown command or arguments: {line!r}; try .help")
        return True

    def schema(self, table: str) -> None:
        where = "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'" + (" AND tbl_name = ?" if table else "")
        try:
            result = self.conn.query(f"SELECT sql FROM sqlite_schema {where} ORDER BY name", [table] if table else None)
        except SqlError as exc:
            self.fail(f"error [{exc.code}]: {exc.message}")
            return
        for (text,) in result.rows:
            print(text + ";", file=self._output or self.out, flush=True)
        if table and not result.rows:
            self.fail(f"no table named {table!r}")

    def describe(self, table: str) -> None:
        # The server allows PRAGMA table_info but not the pragma_table_info() function.
        try:
            result = self.conn.query(f"PRAGMA table_info({_quote(table)})")
        except SqlError as exc:
            self.fail(f"error [{exc.code}]: {exc.message}")
            return
        if not result.rows:
            self.fail(f"no table named {table!r}")
            return
        keep = [result.columns.index(c) for c in ("name", "type", "notnull", "dflt_value", "pk")]
        self.show(Result(["column", "type", "not null", "default", "primary key"],
                         [tuple(row[i] for i in keep) for row in result.rows]))

    def read(self, path: str) -> bool:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            self.fail(f"cannot read {path}: {exc.strerror or exc}")
            return True
        saved_buffer, self.buffer = self.buffer, ""
        saved_stop, self._stop_on_error = self._stop_on_error, not self.continue_on_error
        try:
            return self.run_lines(lines, path)
        except ShellStopped:
            if saved_stop or not self.interactive:
                raise
            print(f"stopped reading {path} at the first error", file=self.err, flush=True)
            return True
        finally:
            self.buffer = saved_buffer
            self._stop_on_error = saved_stop

    def _open(self, path: str) -> TextIO | None:
        try:
            return open(os.path.expanduser(path), "w", encoding="utf-8")
        except OSError as exc:
            self.fail(f"cannot write {path}: {exc.strerror or exc}")
            return None

    def redirect(self, path: str) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None
        if path and path != "stdout":
            self._output = self._open(path)

    def close(self) -> None:
        """Close any ``.output``/``.once`` file."""
        for f in (self._output, self._once):
            if f is not None:
                f.close()
        self._output = self._once = None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _too_long(text: str, width: int) -> bool:
    height = shutil.get_terminal_size().lines
    lines = text.splitlines()
    return len(lines) > height - 2 or any(len(line) > width for line in lines)


def _page(text: str, stream: TextIO) -> None:
    """Show ``text`` in ``$PAGER`` (default ``less -SFRX``); print it if there is no pager."""
    command = shlex.split(os.environ.get("PAGER") or "less -SFRX")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the pager
    try:
        subprocess.run(command, input=text, text=True, check=False)
    except OSError:
        stream.write(text)
        stream.flush()
    finally:
        signal.signal(signal.SIGINT, previous)


def _prompt_session(shell: Shell):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.history import FileHistory

    class _Names(Completer):
        def get_completions(self, document, complete_event):
            for word, start in completions(document.text_before_cursor, shell.tables):
                yield Completion(word, start_position=start)

    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        from prompt_toolkit.history import InMemoryHistory

        history = InMemoryHistory()
    return PromptSession(history=history, completer=_Names(), complete_while_typing=False)


def _interactive_loop(shell: Shell) -> None:
    session = _prompt_session(shell)
    while True:
        try:
            line = session.prompt(shell.prompt)
        except KeyboardInterrupt:
            shell.buffer = ""  # Ctrl-C: drop the line and any unfinished statement
            continue
        except EOFError:
            return
        if not shell.feed(line):
            return


def run_shell(
    host: str,
    port: int,
    *,
    script: TextIO | None = None,
    continue_on_error: bool = False,
    pager: bool = True,
    tls: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str | None = None,
) -> int:
    """Run the shell until ``.quit`` or end of input; return the exit status.

    Args:
        host, port: the server's address.
        script: read statements from this file instead of stdin.
        continue_on_error: in a script, run on past a failed statement.
        pager: page long results on a terminal.
        tls, user, password: as :class:`BlockingConnection`'s.

    Returns:
        0, or 1 when a statement of a script failed.

    Raises:
        SqlConnectionError: the server cannot be reached.
    """
    interactive = script is None and sys.stdin.isatty() and sys.stdout.isatty()
    conn = BlockingConnection(host, port, tls=tls, user=user, password=password)
    conn.connect()
    shell = Shell(
        conn, sys.stdout, sys.stderr, interactive=interactive, continue_on_error=continue_on_error, pager=pager
    )
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        if interactive:
            shell.ctrl_c = CtrlC()
            signal.signal(signal.SIGINT, shell.ctrl_c)
            mode = "read-only" if conn.server.read_only else "read-write"
            print(f"connected to {host}:{port} ({mode}). .help for help, .quit or Ctrl-D to leave.", flush=True)
            shell.load_names()
            _interactive_loop(shell)
            return 0
        source = script if script is not None else sys.stdin
        name = "stdin" if script is None else getattr(script, "name", "script")
        try:
            shell.run_lines(source, name)
        except ShellStopped:
            return 1
        return 1 if shell.failures else 0
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
        shell.close()
        conn.close()
