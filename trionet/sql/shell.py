"""``trionet sql shell``: an interactive SQL session for people.

Lines are read with ``readline`` (line editing, history kept in
``~/.trionet_sql_history``) in a worker thread, so the trio connection stays
alive while the person types. A statement may span several lines and ends
with ``;`` (``sqlite3.complete_statement`` decides, so a ``;`` inside a
string does not end it). Lines starting with ``.`` are shell commands.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import trio
from rich.console import Console
from rich.markup import escape

from trionet.sql.client import SqlConnection, connect
from trionet.sql.engine import SqlError
from trionet.sql.render import FORMATS, format_result

__all__ = ["HELP", "Shell", "run_shell"]

HELP = """\
Type SQL ending with ';' (it may span lines). Commands:
  .help                 this text
  .tables               list the tables
  .schema [TABLE]       show CREATE statements
  .timer on|off         print how long each statement took
  .format table|json|csv  how results are printed
  .quit                 leave (Ctrl-D works too)
Ctrl-C abandons the statement being typed."""

HISTORY = Path(os.environ.get("TRIONET_SQL_HISTORY", Path.home() / ".trionet_sql_history"))


class Shell:
    """The shell's state and commands, apart from where lines come from.

    Args:
        conn: an open connection.
        console: where results go.
    """

    def __init__(self, conn: SqlConnection, console: Console) -> None:
        self.conn = conn
        self.console = console
        self.timer = False
        self.format = "table"
        self.buffer: list[str] = []

    @property
    def prompt(self) -> str:
        return "   ...> " if self.buffer else "trionet> "

    async def feed(self, line: str) -> bool:
        """Take one typed line; return False when the person asked to leave."""
        if not self.buffer and line.strip().startswith("."):
            return await self.command(line.strip())
        self.buffer.append(line)
        text = "\n".join(self.buffer)
        if not text.strip():
            self.buffer.clear()
        elif sqlite3.complete_statement(text):
            self.buffer.clear()
            await self.run(text)
        return True

    async def run(self, text: str) -> None:
        started = time.perf_counter()
        try:
            result = await self.conn.query(text.strip())
        except SqlError as exc:
            self.console.print(f"[red]error \\[{exc.code}][/red]: {escape(exc.message)}", highlight=False)
            return
        self.console.print(format_result(result, self.format), end="", markup=False, highlight=False)
        if self.timer:
            self.console.print(
                f"[dim]time: {(time.perf_counter() - started) * 1000:.1f} ms "
                f"(server {result.server_ms:.1f} ms)[/dim]"
            )

    async def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            self.console.print(HELP, markup=False)
        elif name == ".tables":
            await self.run("SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') ORDER BY name")
        elif name == ".schema":
            where = "WHERE sql IS NOT NULL" + (" AND tbl_name = ?" if arg else "")
            result = await self.conn.query(f"SELECT sql FROM sqlite_schema {where} ORDER BY name", [arg] if arg else None)
            for (text,) in result.rows:
                self.console.print(text + ";", markup=False, highlight=False)
        elif name == ".timer" and arg in ("on", "off"):
            self.timer = arg == "on"
        elif name == ".format" and arg in FORMATS:
            self.format = arg
        else:
            self.console.print(f"unknown command {line!r}; try .help", markup=False)
        return True


def _read_line(prompt: str, interactive: bool) -> str | None:
    try:
        return input(prompt if interactive else "")
    except EOFError:
        return None


async def run_shell(host: str, port: int) -> None:
    """Run the shell on stdin/stdout until ``.quit`` or end of input."""
    interactive = sys.stdin.isatty()
    console = Console(highlight=False)
    if interactive:
        try:
            import readline

            try:
                readline.read_history_file(HISTORY)
            except OSError:
                pass
        except ImportError:  # pragma: no cover - readline is missing on some platforms
            readline = None
    async with connect(host, port) as conn:
        shell = Shell(conn, console)
        if interactive:
            mode = "read-only" if conn.server.read_only else "read-write"
            console.print(f"connected to {host}:{port} ({mode}). .help for help, .quit to leave.")
        try:
            while True:
                try:
                    line = await trio.to_thread.run_sync(_read_line, shell.prompt, interactive, abandon_on_cancel=True)
                except KeyboardInterrupt:
                    shell.buffer.clear()
                    console.print()
                    continue
                if line is None or not await shell.feed(line):
                    break
            if shell.buffer and "".join(shell.buffer).strip():
                await shell.run("\n".join(shell.buffer))  # the last statement may lack its ';'
        finally:
            if interactive and readline is not None:
                try:
                    readline.write_history_file(HISTORY)
                except OSError:
                    pass
