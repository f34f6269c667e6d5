"""``trionet sql shell``: its commands in process, scripts through pipes, and a person at a pseudo-terminal."""

from __future__ import annotations

import io
import os
import re
import select
import struct
import subprocess
import sys
import time

import pytest
import trio

from trionet.sql.shell import BlockingConnection, Shell, ShellStopped, completions, split_statements

# --- pure pieces ---------------------------------------------------------------


def test_split_statements_cuts_at_complete_statements_only():
    assert split_statements("SELECT 1; SELECT ';'; SELECT") == (["SELECT 1;", "SELECT ';';"], " SELECT")
    trigger = "CREATE TRIGGER t AFTER INSERT ON x BEGIN DELETE FROM y; END;"
    assert split_statements(trigger + "\n") == ([trigger], "\n")
    assert split_statements(";;  ;") == ([], "")


def test_completions_offer_tables_columns_keywords_and_commands():
    tables = {"quakes": ["id", "mag", "magType"], "kinds": ["i"]}
    assert completions("SELECT ma", tables) == [("mag", -2), ("magType", -2)]
    assert completions("select * from qua", tables) == [("quakes", -3)]
    assert completions("SELECT quakes.i", tables) == [("id", -1)]
    assert completions("sel", tables) == [("SELECT", -3)]
    assert completions(".sch", tables) == [(".schema", -4)]
    assert ("\\dt", -2) in completions("\\d", tables)
    assert completions("SELECT ", tables) == []


# --- the shell's commands against an in-process server -------------------------


async def run_in_shell(start_sql, lines, *, interactive=False, continue_on_error=False, **server):
    """Feed ``lines`` to a Shell on a blocking connection (in a thread) and return (shell, out, err, error)."""
    _, (host, port) = await start_sql(**server)
    out, err = io.StringIO(), io.StringIO()

    def session():
        conn = BlockingConnection(host, port)
        shell = Shell(conn, out, err, interactive=interactive, continue_on_error=continue_on_error)
        try:
            shell.run_lines(lines, "test")
            return shell, None
        except ShellStopped as exc:
            return shell, exc
        finally:
            shell.close()
            conn.close()

    shell, error = await trio.to_thread.run_sync(session)
    return shell, out.getvalue(), err.getvalue(), error


async def test_sqlite3_and_psql_commands_list_and_describe_tables(start_sql):
    _, out, err, error = await run_in_shell(start_sql, [".tables", "\\dt", ".schema kinds", "\\d quakes"])
    assert error is None and err == ""
    assert out.count("kinds\nquakes\n") == 2
    assert "CREATE TABLE kinds (i INTEGER, r REAL, t TEXT, b BLOB, n);" in out
    assert re.search(r"^mag +\| REAL ", out, re.MULTILINE)


async def test_mode_headers_and_expanded_change_how_results_print(start_sql):
    lines = [
        ".mode csv", ".headers off", "SELECT 1 AS a, 'x' AS b;", ".headers on", ".mode markdown",
        "SELECT 2 AS a;", ".mode table", "\\x on", "SELECT 3 AS a, 4 AS b;", "\\x off", "SELECT 5 AS n;",
        ".mode json", "SELECT 6 AS j;",
    ]
    _, out, err, error = await run_in_shell(start_sql, lines)
    assert error is None and err == ""
    assert out == (
        "1,x\n"
        "| a |\n| ---: |\n| 2 |\n"
        "-[ RECORD 1 ]\na | 3\nb | 4\n"
        "n\n-\n5\n"
        '{"columns": ["j"], "rows": [[6]], "truncated": false}\n'
    )


async def test_quit_and_exit_words_end_the_session(start_sql):
    for word in ("quit", "exit;", ".quit", "\\q", ".exit"):
        _, out, _, _ = await run_in_shell(start_sql, ["SELECT 1 AS one;", word, "SELECT 'after' AS x;"])
        assert "one" in out and "after" not in out, word


async def test_output_and_once_send_results_to_files(start_sql, tmp_path):
    every, once = tmp_path / "every.txt", tmp_path / "once.csv"
    lines = [
        f".output {every}", "SELECT 1 AS a;", "SELECT 2 AS b;", ".output", f".once {once}", ".mode csv",
        "SELECT 3 AS c;", "SELECT 4 AS d;",
    ]
    _, out, _, error = await run_in_shell(start_sql, lines)
    assert error is None
    assert every.read_text() == "a\n-\n1\nb\n-\n2\n"
    assert once.read_text() == "c\n3\n"
    assert out == "d\n4\n"


async def test_read_runs_a_file_and_stops_it_at_its_first_error(start_sql, tmp_path):
    script = tmp_path / "s.sql"
    script.write_text("SELECT 'first' AS x;\nSELECT nope;\nSELECT 'never' AS x;\n")
    _, out, err, error = await run_in_shell(
        start_sql, [f".read {script}", "SELECT 'typed' AS x;"], interactive=True
    )
    assert error is None  # at the prompt, a failed .read does not end the session
    assert "first" in out and "never" not in out and "typed" in out
    assert "error [sql_error]: no such column: nope" in err and f"stopped reading {script}" in err
    _, out, err, error = await run_in_shell(start_sql, [f"\\i {script}", "SELECT 'typed' AS x;"])
    assert isinstance(error, ShellStopped) and "typed" not in out  # in a script it ends the run
    assert f"{script}:2: error [sql_error]" in err


async def test_a_write_and_the_timer_are_reported(start_sql, tmp_path):
    lines = ["CREATE TEMP TABLE t (x);", "INSERT INTO t VALUES (1), (2);", "\\timing", "SELECT count(*) AS n FROM t;"]
    _, out, _, error = await run_in_shell(start_sql, lines, interactive=True)
    assert error is None
    assert "0 row(s) changed\n2 row(s) changed\n" in out and "timing is on" in out
    assert re.search(r"time: [\d.]+ ms \(server [\d.]+ ms\)", out)


async def test_completion_names_come_from_the_server_and_follow_ddl(start_sql):
    shell, _, _, error = await run_in_shell(
        start_sql, ["CREATE TEMP TABLE notes (body TEXT);"], interactive=True
    )
    assert error is None
    assert shell.tables["quakes"] == ["id", "time", "mag", "place", "nst"]
    assert shell.tables["notes"] == ["body"]


# --- scripts: a pipe or -f FILE ------------------------------------------------


def run_shell_cmd(port, *args, input=None):
    return subprocess.run(
        [sys.executable, "-m", "trionet", "sql", "shell", "--port", str(port), *args],
        input=input, capture_output=True, text=True, timeout=30,
    )


@pytest.fixture
def sql_port(server_process, quake_db):
    return server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0").wait_listening()


def test_a_script_stops_at_its_first_error_with_status_1(sql_port, tmp_path):
    script = "SELECT 'one' AS x;\nSELECT nope;\nSELECT 'three' AS x;\n"
    piped = run_shell_cmd(sql_port, input=script)
    assert piped.returncode == 1
    assert "one" in piped.stdout and "three" not in piped.stdout
    assert piped.stderr == "stdin:2: error [sql_error]: no such column: nope\n"
    assert "trionet>" not in piped.stdout and "...>" not in piped.stdout  # no prompts
    path = tmp_path / "s.sql"
    path.write_text(script)
    from_file = run_shell_cmd(sql_port, "-f", str(path))
    assert from_file.returncode == 1 and "three" not in from_file.stdout
    assert from_file.stderr == f"{path}:2: error [sql_error]: no such column: nope\n"


def test_continue_on_error_runs_every_statement_and_still_fails(sql_port):
    result = run_shell_cmd(
        sql_port, "--continue-on-error", input="SELECT 'one' AS x;\nSELECT nope;\nSELECT 'three' AS x\n"
    )
    assert result.returncode == 1  # the last statement ran although it lacks its ';'
    assert "one" in result.stdout and "three" in result.stdout
    ok = run_shell_cmd(sql_port, input=".mode csv\nSELECT count(*) AS n FROM quakes;\n")
    assert ok.returncode == 0 and ok.stdout == "n\n2000\n" and ok.stderr == ""


def test_shell_with_no_server_says_where_it_tried(tmp_path):
    result = run_shell_cmd(1, input="SELECT 1;\n")
    assert result.returncode == 1
    assert "127.0.0.1:1" in result.stderr and "trionet sql serve --port 1" in result.stderr


# --- a person at a terminal ------------------------------------------------------

# The child makes the pseudo-terminal its controlling terminal (it starts a new
# session first), so Ctrl-C typed there sends it SIGINT as a real terminal does.
_WITH_CTTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'trionet', *sys.argv[1:]])"
)


class Terminal:
    """The shell at the other end of a pseudo-terminal: type, then wait for what it prints."""

    def __init__(self, port: int, history, *args: str, env: dict | None = None) -> None:
        import fcntl
        import termios

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {
            **os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "TRIONET_SQL_HISTORY": str(history),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WITH_CTTY, "sql", "shell", "--port", str(port), *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        )
        os.close(slave)
        self.output = ""
        self._seen = 0

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-B]|\r", "", data.decode(errors="replace"))
        return bool(data)

    def expect(self, pattern: str, timeout: float = 10.0) -> None:
        """Wait until ``pattern`` appears in what was printed since the last match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while not (match := regex.search(self.output, self._seen)):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} not printed; the terminal shows:\n{self.output}")
        self._seen = match.end()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminal(server_process, quake_db, tmp_path):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0", "--query-timeout", "20")
    term = Terminal(server.wait_listening(), tmp_path / "history", "--no-pager")
    yield term
    term.close()


def test_ctrl_c_drops_the_typed_line_and_ctrl_d_leaves(terminal, tmp_path):
    terminal.expect(r"connected to 127\.0\.0\.1:\d+ \(read-only\)")
    terminal.expect("trionet>")
    terminal.type("SELECT 'abandoned' AS x")
    terminal.expect("abandoned")
    terminal.type("\x03")
    terminal.expect("trionet>")
    terminal.type("SELECT 'kept' || 'line' AS x;\r")
    terminal.expect(r"keptline\n1 row\(s\)")  # the dropped line did not join this statement
    terminal.expect("trionet>")
    terminal.type("SELECT 'a'\r")  # an unfinished statement ...
    terminal.expect(r"\.\.\.>")
    terminal.type("\x03")  # ... is dropped by Ctrl-C too
    terminal.expect("trionet>")
    terminal.type("SELECT 'fresh' || 'start' AS y;\r")
    terminal.expect(r"freshstart\n1 row\(s\)")
    terminal.expect("trionet>")
    terminal.type("\x04")  # Ctrl-D once, on an empty line
    assert terminal.proc.wait(timeout=10) == 0
    assert "error" not in terminal.output
    assert "SELECT 'kept' || 'line' AS x;" in (tmp_path / "history").read_text()


def test_ctrl_c_cancels_a_running_statement_and_the_shell_goes_on(terminal):
    terminal.expect("trionet>")
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c;"
    terminal.type(endless + "\r")
    terminal.expect(re.escape(endless))
    # Ctrl-C until the shell says it cancelled: one typed before the statement
    # was sent lands at the prompt instead (and drops an empty line there).
    deadline = time.monotonic() + 10
    while "cancelled" not in terminal.output[terminal._seen:]:
        assert time.monotonic() < deadline, terminal.output
        terminal.type("\x03")
        pace = time.monotonic() + 0.1
        while (left := pace - time.monotonic()) > 0:
            terminal._read(left)
    terminal.expect("cancelled: the connection was closed, so the server stopped the statement")
    terminal.expect("trionet>")
    terminal.type("SELECT 'still' || 'here' AS z;\r")
    terminal.expect(r"stillhere\n1 row\(s\)")
    terminal.expect("trionet>")
    terminal.type("\\q\r")
    assert terminal.proc.wait(timeout=10) == 0


def test_a_result_taller_than_the_terminal_goes_through_the_pager(server_process, quake_db, tmp_path):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    pager = f"{sys.executable} -c \"import sys; print('paged', len(sys.stdin.read().splitlines()), 'lines')\""
    term = Terminal(server.wait_listening(), tmp_path / "history", env={"PAGER": pager})
    try:
        term.expect("trionet>")
        term.type("SELECT id FROM quakes LIMIT 100;\r")  # 102 lines on a 40-line terminal
        term.expect(r"paged 102 lines\n100 row\(s\)")
        term.type("SELECT id FROM quakes LIMIT 3;\r")  # fits: printed as is
        term.expect(r"q00002\n3 row\(s\)")
        term.expect("trionet>")
        term.type("\x04")
        assert term.proc.wait(timeout=10) == 0
    finally:
        term.close()
