"""End to end through the real ``trionet`` command, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import trio

from trionet.sql import SqlError, connect


def test_top_level_help_lists_every_service(trionet_cmd):
    result = trionet_cmd("--help")
    assert result.returncode == 0
    for name in ("sql", "names", "ring", "demo"):
        assert f"  {name} " in result.stdout


def test_serve_help_says_the_default_is_a_sample(trionet_cmd):
    result = trionet_cmd("sql", "serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "SAMPLE catalogue" in text and "import-usgs" in text and "[default: 30.0; x>=0]" in text
    for flag in ("--max-value-bytes", "--max-temp-bytes", "--max-batch-bytes", "--max-row-bytes",
                 "--max-like-pattern-bytes", "--max-sqlite-memory-bytes", "--query-threads", "--max-connections",
                 "--idle-timeout", "--idle-transaction-timeout"):
        assert flag in text, flag
    assert "allow-list" in text


def test_query_formats_and_params(server_process, trionet_cmd, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0")
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
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0")
    port = str(server.wait_listening())
    result = trionet_cmd("sql", "query", "--port", port, "DELETE FROM quakes")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error [read_only]: ")
    unreachable = trionet_cmd("sql", "query", "--port", "1", "SELECT 1")
    assert unreachable.returncode == 1 and "error [connection]" in unreachable.stderr


def test_shell_reads_multi_line_statements_and_dot_commands(server_process, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0")
    port = str(server.wait_listening())
    session = ".tables\nSELECT count(*)\n  AS total FROM quakes\n WHERE place LIKE '%;%' OR 1;\n.timer on\nSELECT nope;\n.quit\n"
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "sql", "shell", "--port", port],
        input=session, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "quakes" in result.stdout and "kinds" in result.stdout
    assert "2000" in result.stdout  # the ';' inside the string did not end the statement
    assert "error [sql_error]: no such column: nope" in result.stdout


def test_a_committed_write_survives_kill_9(server_process, trionet_cmd, tmp_path):
    db = tmp_path / "rw.sqlite"
    server = server_process("sql", "serve", "--db", str(db), "--read-write", "--port", "0")
    port = str(server.wait_listening())
    for sql in ["CREATE TABLE notes (n TEXT)", "INSERT INTO notes VALUES ('kept')"]:
        result = trionet_cmd("sql", "query", "--port", port, sql)
        assert result.returncode == 0, result.stderr
    server.proc.kill()  # SIGKILL: no chance to flush or checkpoint
    server.wait()
    assert sqlite3.connect(db).execute("SELECT n FROM notes").fetchall() == [("kept",)]


def test_sigterm_drains_and_exits_0(server_process, quake_db):
    server = server_process(
        "sql", "serve", "--db", str(quake_db), "--port", "0", "--query-timeout", "1.5", "--max-rows", "0"
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


def test_serve_without_db_builds_and_serves_the_sample(server_process, trionet_cmd, tmp_path):
    env = {"TRIONET_SAMPLE_DB": str(tmp_path / "sample.sqlite")}
    server = server_process("sql", "serve", "--port", "0", env=env)
    port = str(server.wait_listening())
    assert "SAMPLE catalogue" in server.output
    result = trionet_cmd("sql", "query", "--port", port, "--format", "json", "SELECT count(*) FROM quakes")
    assert json.loads(result.stdout)["rows"][0][0] > 10_000
    refused = trionet_cmd("sql", "serve", "--read-write", "--port", "0", env=env)
    assert refused.returncode == 2 and "--read-write needs --db" in refused.stderr


def test_demo_sql_part_runs(trionet_cmd, tmp_path):
    result = trionet_cmd("demo", "--only", "sql", env={"TRIONET_SAMPLE_DB": str(tmp_path / "s.sqlite")})
    assert result.returncode == 0, result.stderr
    for needle in ("events", "The ten largest", "Oklahoma", "error [read_only]"):
        assert needle in result.stdout


def test_python_dash_m_works(trionet_cmd):
    result = trionet_cmd("--version")
    assert result.returncode == 0 and "trionet" in result.stdout
    assert os.path.basename(sys.executable)  # the same interpreter the tests run under


def test_import_usgs_command_loads_the_shared_catalogue(trionet_cmd, tmp_path):
    csv_path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "usgs-quakes-lower-us.csv"
    db = tmp_path / "real.sqlite"
    result = trionet_cmd("sql", "import-usgs", str(csv_path), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "16941 row(s) imported" in result.stdout and "0 bad row(s)" in result.stdout
    again = trionet_cmd("sql", "import-usgs", str(csv_path), "--db", str(db))
    assert again.returncode == 0
    assert sqlite3.connect(db).execute("SELECT count(*), count(nst) FROM quakes").fetchone() == (16941, 16941 - 4066)


def test_import_usgs_command_reports_bad_rows_and_exits_1(trionet_cmd, tmp_path):
    csv_path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "usgs-quakes-lower-us.csv"
    with open(csv_path, encoding="utf-8") as f:
        head = [next(f) for _ in range(4)]
    head[2] = head[2].replace(",3.1,", ",three,", 1)  # line 3: a magnitude that is not a number
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("".join(head), encoding="utf-8")
    result = trionet_cmd("sql", "import-usgs", str(bad_csv), "--db", str(tmp_path / "x.sqlite"))
    assert result.returncode == 1
    assert f"{bad_csv}:3:" in result.stderr
    assert "2 row(s) imported" in result.stdout and "1 bad row(s)" in result.stdout
