"""pgbench, PostgreSQL's own benchmark client, runs a custom select script in every query mode."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess

import pytest
import trio

pytestmark = pytest.mark.requires_tool("pgbench", "postgresql")  # Debian ships pgbench with the server package

N_ACCOUNTS = 3000
SCRIPT = f"\\set aid random(1, {N_ACCOUNTS})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"


@pytest.fixture
def bench_db(tmp_path):
    """pgbench_accounts as tools/bench_pg.py loads it, smaller."""
    path = tmp_path / "bench.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pgbench_accounts (aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)")
    conn.executemany(
        "INSERT INTO pgbench_accounts VALUES (?, ?, ?, ?)", ((aid, 1, aid % 7, " " * 84) for aid in range(1, N_ACCOUNTS + 1))
    )
    conn.commit()
    conn.close()
    return path


async def pgbench(address, tmp_path, *args: str) -> subprocess.CompletedProcess:
    host, port = address
    script = tmp_path / "select.sql"
    script.write_text(SCRIPT)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "prefer"}
    return await trio.run_process(
        ["pgbench", "-h", host, "-p", str(port), "-U", "analyst", *args, "-f", str(script), "quakes"],
        capture_stdout=True,
        capture_stderr=True,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
async def test_select_script_in_every_query_mode(start_pg, bench_db, tmp_path, mode):
    _, address = await start_pg(db=bench_db)
    result = await pgbench(address, tmp_path, "-n", "-t", "200", "-c", "2", "-j", "1", "-M", mode)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode() + out
    assert f"query mode: {mode}" in out
    assert "number of transactions actually processed: 400/400" in out
    assert re.search(r"number of failed transactions: 0 \(0\.000%\)", out), out


async def test_startup_without_n_gets_clear_answers_and_goes_on(start_pg, bench_db, tmp_path):
    # Without -n pgbench vacuums its tables and truncates pgbench_history first;
    # trionet says why it does not, and pgbench carries on.
    _, address = await start_pg(db=bench_db)
    result = await pgbench(address, tmp_path, "-t", "5")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "VACUUM of one table is PostgreSQL's" in err
    assert "TRUNCATE is PostgreSQL's, not SQLite's" in err
    assert "number of failed transactions: 0" in result.stdout.decode()
