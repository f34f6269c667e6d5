"""The login and TLS flags of `trionet sql`: serve --users/--insecure-no-auth/--tls-*, query and shell --user/--tls-ca, passwd."""

from __future__ import annotations

import os
import subprocess

import click
import pytest
from click.testing import CliRunner

from trionet.sql.auth import ScramClientExchange, ScramExchange, parse_users
from trionet.sql.cli import check_open_access, sql


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "db.example.org", ""])
def test_a_reachable_host_without_users_is_refused(host):
    with pytest.raises(click.ClickException) as caught:
        check_open_access(host, None, False)
    assert "is not a loopback address and --users is not given" in caught.value.message
    assert "--insecure-no-auth" in caught.value.message
    check_open_access(host, "users.txt", False)
    check_open_access(host, None, True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_users(host):
    check_open_access(host, None, False)


def test_serve_on_0000_without_users_stops_with_one_line(trionet_cmd, quake_db):
    result = trionet_cmd("sql", "serve", "--db", str(quake_db), "--host", "0.0.0.0", "--port", "0", "--no-pg")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: --host 0.0.0.0 is not a loopback address")


def test_serve_with_a_malformed_users_file_names_file_and_line(trionet_cmd, quake_db, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# ops\nalice:pw\nbob hunter2\n")
    result = trionet_cmd("sql", "serve", "--db", str(quake_db), "--users", str(users), "--port", "0", "--no-pg")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: {users}:3: expected NAME:PASSWORD or NAME:SCRAM-SHA-256$..."


def test_passwd_prints_a_verifier_line_that_logs_in():
    result = CliRunner().invoke(sql, ["passwd", "alice"], input="correct horse\ncorrect horse\n", env={"TRIONET_PASSWORD": None})
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("alice:SCRAM-SHA-256$4096:") and "correct horse" not in line
    users, plain = parse_users(line + "\n")
    assert plain == []
    client, server = ScramClientExchange("alice", "correct horse"), ScramExchange(users, b"k")
    client.verify(server.final(client.final(server.first(client.first()))))


def test_passwd_takes_the_environment_and_refuses_a_bad_name():
    result = CliRunner().invoke(sql, ["passwd", "bob"], env={"TRIONET_PASSWORD": "pw"})
    assert result.exit_code == 0 and result.output.startswith("bob:SCRAM-SHA-256$")
    result = CliRunner().invoke(sql, ["passwd", "a:b"], env={"TRIONET_PASSWORD": "pw"})
    assert result.exit_code == 2 and "holds a ':'" in result.output


@pytest.mark.requires_tool("psql", "postgresql-client")
def test_serve_with_users_and_tls_end_to_end(server_process, trionet_cmd, quake_db, tmp_path, tls_files):
    cert, key, ca = tls_files
    line = CliRunner().invoke(sql, ["passwd", "alice"], env={"TRIONET_PASSWORD": "s3cret"}).output.strip()
    users = tmp_path / "users.txt"
    users.write_text(f"# the analysts\n{line}\n")
    server = server_process(
        "sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0", "--users", str(users),
        "--tls-cert", cert, "--tls-key", key, "--auth-failure-delay", "0.1",
    )  # fmt: skip
    port = str(server.wait_listening())
    pg_port = server.wait_for(r"pg listening on 127\.0\.0\.1:(\d+)").group(1)

    ok = trionet_cmd(
        "sql", "query", "--port", port, "--user", "alice", "--tls-ca", ca, "SELECT count(*) FROM quakes", "--format", "csv",
        env={"TRIONET_PASSWORD": "s3cret"},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["count(*)", "2000"]

    wrong = trionet_cmd("sql", "query", "--port", port, "--user", "alice", "--tls-ca", ca, "SELECT 1", env={"TRIONET_PASSWORD": "nope"})
    assert wrong.returncode == 1
    assert 'refused the login (auth_failed): password authentication failed for user "alice"' in wrong.stderr

    shell = trionet_cmd(
        "sql", "shell", "--port", port, "-U", "alice", "--tls", "--tls-ca", ca, input="SELECT max(mag) FROM quakes;\n",
        env={"TRIONET_PASSWORD": "s3cret"},
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert "6.9" in shell.stdout

    psql = subprocess.run(
        ["psql", "-X", "-w", "-A", "-t", "-c", "SELECT count(*) FROM quakes",
         f"host=127.0.0.1 port={pg_port} user=alice dbname=quakes sslmode=verify-full sslrootcert={ca}"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PGPASSWORD": "s3cret"},
    )  # fmt: skip
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.strip() == "2000"
    server.signal()
    assert server.wait() == 0
    assert "authentication failed for 127.0.0.1:" in server.output
