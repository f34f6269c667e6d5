"""End to end through the real ``trionet`` command, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import lzma
import signal
import socket
import sqlite3
import subprocess
import sys

import pytest
import trio

from trionet.sql import SqlError, catalog, connect


def test_top_level_help_lists_every_service(trionet_cmd):
    result = trionet_cmd("--help")
    assert result.returncode == 0
    for name in ("sql", "names", "ring", "demo"):
        assert f"  {name} " in result.stdout


def test_serve_help_says_the_default_is_the_shipped_catalogue(trionet_cmd):
    result = trionet_cmd("sql", "serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "USGS earthquake catalogue that ships with trionet" in text and "[default: 30.0; x>=0]" in text
    assert "SAMPLE" not in text and "synthetic" not in text
    for flag in ("--max-value-bytes", "--max-temp-bytes", "--max-batch-bytes", "--max-row-bytes",
                 "--max-like-pattern-bytes", "--max-sqlite-memory-bytes", "--query-threads", "--max-connections",
                 "--idle-timeout", "--idle-transaction-timeout"):
        assert flag in text, flag
    assert "allow-list" in text


def test_query_formats_and_params(server_process, trionet_cmd, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    as_json = trionet_cmd(
        "sql", "query", "--port", port, "--format", "json",
        "SELECT ? AS i, ? AS r, ? AS n, ? AS t, x'00ff' AS b", "-p", "5", "-p", "2.5", "-p", "null", "-p", "hello",
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "columns": ["i", "r", "n", "t", "b"],
        "rows": [[5, 2.5, None, "hello", {"$blob": "AP8="}]],
        "truncated": False,
    }
    named = trionet_cmd(
        "sql", "query", "--port", port, "--format", "csv",
        "SELECT count(*) AS n FROM quakes WHERE place LIKE :p", "-n", "p=%Oklahoma",
    )
    assert named.returncode == 0, named.stderr
    assert named.stdout == "n\n667\n"
    table = trionet_cmd("sql", "query", "--port", port, "SELECT id, mag FROM quakes ORDER BY id LIMIT 2")
    assert table.returncode == 0
    assert "q00000" in table.stdout and "q00001" in table.stdout and "mag" in table.stdout


def test_query_error_goes_to_stderr_with_status_1(server_process, trionet_cmd, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    result = trionet_cmd("sql", "query", "--port", port, "DELETE FROM quakes")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error [read_only]: ")
    unreachable = trionet_cmd("sql", "query", "--port", "1", "SELECT 1")
    assert unreachable.returncode == 1 and "error [connection]" in unreachable.stderr


def test_shell_reads_multi_line_statements_and_dot_commands(server_process, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    session = ".tables\nSELECT count(*)\n  AS total FROM quakes\n WHERE place LIKE '%;%' OR 1;\n.timer on\nSELECT nope;\n.quit\n"
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "sql", "shell", "--port", port],
        input=session, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr  # from a pipe, a failed statement is exit status 1
    assert "quakes" in result.stdout and "kinds" in result.stdout
    assert "2000" in result.stdout  # the ';' inside the string did not end the statement
    assert "stdin:6: error [sql_error]: no such column: nope" in result.stderr


def test_a_committed_write_survives_kill_9(server_process, trionet_cmd, tmp_path):
    db = tmp_path / "rw.sqlite"
    server = server_process("sql", "serve", "--db", str(db), "--read-write", "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    for sql in ["CREATE TABLE notes (n TEXT)", "INSERT INTO notes VALUES ('kept')"]:
        result = trionet_cmd("sql", "query", "--port", port, sql)
        assert result.returncode == 0, result.stderr
    server.proc.kill()  # SIGKILL: no chance to flush or checkpoint
    server.wait()
    assert sqlite3.connect(db).execute("SELECT n FROM notes").fetchall() == [("kept",)]
    # The OS page cache outlives a SIGKILL, so this passes even with synchronous=OFF:
    # tests/sql/test_server.py::test_read_write_sessions_commit_durably checks the fsync setting.


def test_sigterm_drains_and_exits_0(server_process, quake_db):
    server = server_process(
        "sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0", "--query-timeout", "1.5", "--max-rows", "0"
    )
    port = server.wait_listening()
    # Endless, a batch of rows now and then: the first proves the query is running.
    trickle = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c WHERE x % 2000 = 0"
    outcome = {"rows": 0}

    async def client() -> None:
        async with connect("127.0.0.1", port) as conn:
            try:
                async with conn.stream(trickle) as rows:
                    async for _ in rows:
                        outcome["rows"] += 1
                        if outcome["rows"] == 1:
                            server.signal(signal.SIGTERM)
            except SqlError as exc:
                outcome["code"] = exc.code

    trio.run(client)
    # It ran to its own end (the query timeout) while the server drained.
    assert outcome["code"] == "timeout" and outcome["rows"] > 1
    assert server.wait(timeout=20) == 0
    assert "SIGTERM: shutting down" in server.output


def test_serve_without_db_builds_and_serves_the_real_catalogue(server_process, trionet_cmd, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "TRIONET_CATALOG_DB": ""}
    server = server_process("sql", "serve", "--port", "0", "--pg-port", "0", env=env)
    port = str(server.wait_listening())
    assert "serving the USGS catalogue" in server.output
    assert (tmp_path / "cache" / "trionet" / "usgs-quakes-v1.sqlite").is_file()
    result = trionet_cmd(
        "sql", "query", "--port", port, "--format", "json",
        "SELECT count(*), max(mag), (SELECT max(mag) FROM quakes WHERE place LIKE '%Oklahoma') FROM quakes",
    )
    assert json.loads(result.stdout)["rows"] == [[16941, 7.2, 5.7]]
    refused = trionet_cmd("sql", "serve", "--read-write", "--port", "0", "--pg-port", "0", env=env)
    assert refused.returncode == 2 and "--read-write needs --db" in refused.stderr


def test_demo_sql_part_runs(trionet_cmd, tmp_path):
    result = trionet_cmd("demo", "--only", "sql", env={"TRIONET_CATALOG_DB": str(tmp_path / "c.sqlite")})
    assert result.returncode == 0, result.stderr
    for needle in ("16941", "The ten largest", "7.2", "Oklahoma", "error [read_only]"):
        assert needle in result.stdout


def test_python_dash_m_works(trionet_cmd):
    import trionet

    result = trionet_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.split() == ["trionet,", "version", trionet.__version__]


def test_import_usgs_command_loads_the_shipped_catalogue(trionet_cmd, tmp_path):
    db = tmp_path / "real.sqlite"
    result = trionet_cmd("sql", "import-usgs", "--db", str(db))  # no CSV: the copy trionet ships
    assert result.returncode == 0, result.stderr
    assert "16941 row(s) imported" in result.stdout and "0 bad row(s)" in result.stdout
    with catalog.shipped_csv() as xz_path:
        again = trionet_cmd("sql", "import-usgs", str(xz_path), "--db", str(db))  # an .xz file by name
    assert again.returncode == 0, again.stderr
    assert sqlite3.connect(db).execute("SELECT count(*), count(nst) FROM quakes").fetchone() == (16941, 16941 - 4066)


def test_import_usgs_command_reports_bad_rows_and_exits_1(trionet_cmd, tmp_path):
    with catalog.shipped_csv() as xz_path, lzma.open(xz_path, "rt", encoding="utf-8", newline="") as f:
        head = [next(f) for _ in range(4)]
    head[2] = head[2].replace(",3.1,", ",three,", 1)  # line 3: a magnitude that is not a number
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("".join(head), encoding="utf-8")
    result = trionet_cmd("sql", "import-usgs", str(bad_csv), "--db", str(tmp_path / "x.sqlite"))
    assert result.returncode == 1
    assert f"{bad_csv}:3:" in result.stderr
    assert "2 row(s) imported" in result.stdout and "1 bad row(s)" in result.stdout


WIDE_SELECT = "SELECT " + ", ".join(f"'value number {i}' AS column_{i}" for i in range(22))


def test_query_to_a_pipe_keeps_every_column_in_every_format(server_process, trionet_cmd, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    table = trionet_cmd("sql", "query", "--port", port, WIDE_SELECT, env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()
    assert [c.strip() for c in header.split(" | ")] == [f"column_{i}" for i in range(22)]
    assert row.rstrip().endswith("value number 21")
    line = trionet_cmd("sql", "query", "--port", port, "--format", "line", WIDE_SELECT)
    assert line.stdout.splitlines()[0].startswith("-[ RECORD 1 ]")
    assert "column_21 | value number 21" in line.stdout
    markdown = trionet_cmd("sql", "query", "--port", port, "--format", "markdown", "SELECT 1 AS n, 'a|b' AS t")
    assert markdown.stdout == "| n | t |\n| ---: | --- |\n| 1 | a\\|b |\n"


def test_query_says_on_stderr_when_max_rows_cut_the_result(server_process, trionet_cmd, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    for fmt in ("table", "csv"):
        cut = trionet_cmd("sql", "query", "--port", port, "--format", fmt, "--max-rows", "3", "SELECT id FROM quakes")
        assert cut.returncode == 0, cut.stderr
        assert cut.stdout.count("q0000") == 3
        assert "only the first 3 row(s)" in cut.stderr and "max-rows" in cut.stderr
    whole = trionet_cmd("sql", "query", "--port", port, "--max-rows", "3", "SELECT id FROM quakes LIMIT 3")
    assert whole.stderr == ""


def test_query_write_prints_rows_changed_and_json_carries_the_counts(server_process, trionet_cmd, tmp_path):
    server = server_process("sql", "serve", "--db", str(tmp_path / "w.sqlite"), "--read-write", "--port", "0", "--pg-port", "0")
    port = str(server.wait_listening())
    created = trionet_cmd("sql", "query", "--port", port, "CREATE TABLE t (x)")
    assert created.stdout == "0 row(s) changed\n"
    inserted = trionet_cmd("sql", "query", "--port", port, "INSERT INTO t VALUES (1), (2), (3)")
    assert inserted.returncode == 0 and inserted.stdout == "3 row(s) changed\n"
    as_json = trionet_cmd("sql", "query", "--port", port, "--format", "json", "INSERT INTO t VALUES (4)")
    assert json.loads(as_json.stdout) == {
        "columns": [], "rows": [], "truncated": False, "changes": 1, "last_insert_rowid": 4,
    }
    as_csv = trionet_cmd("sql", "query", "--port", port, "--format", "csv", "DELETE FROM t")
    assert as_csv.stdout == "" and as_csv.stderr == "4 row(s) changed\n"


def test_query_with_no_server_says_where_it_tried_and_how_to_start_one(trionet_cmd):
    with socket.socket() as sock:  # bound and held, never listening: refused, and no one else can take it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = trionet_cmd("sql", "query", "--port", str(port), "SELECT 1")
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert f"127.0.0.1:{port}" in result.stderr and f"trionet sql serve --port {port}" in result.stderr


@pytest.mark.requires_tool("psql", "postgresql-client")
def test_serve_answers_psql_on_the_pg_port_beside_ndjson(server_process, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    ndjson_port = server.wait_listening()
    pg_port = int(server.wait_for(r"pg listening on 127\.0\.0\.1:(\d+)").group(1))
    assert pg_port != ndjson_port
    result = subprocess.run(
        ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "someone", "-d", "quakes",
         "-c", "SELECT count(*), max(mag) FROM quakes"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2000|6.9"
    denied = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(pg_port), "-c", "DELETE FROM quakes"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert denied.returncode == 1 and "read" in denied.stderr.lower()  # the same read-only rule as NDJSON


def test_serve_with_no_pg_listens_on_one_port(server_process, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--no-pg")
    server.wait_listening()
    server.signal()
    assert server.wait() == 0
    assert "pg listening" not in server.output
    assert sum("listening on" in line for line in server.lines) == 1
