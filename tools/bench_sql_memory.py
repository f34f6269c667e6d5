"""Memory of ``trionet sql serve`` as connections grow: RSS idle, then with N clients.

Starts the real server on the real catalogue in its own process, opens
``--clients`` connections that each read the whole ``quakes`` table (so
every SQLite page cache fills), and prints the server's RSS before and
after, and per connection. A measurement, not a test: it always exits 0.

Usage: python3 tools/bench_sql_memory.py [--clients 200]
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import trio

import trionet.sql
from trionet.sql import catalog



def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _measure(pid: int, port: int, clients: int) -> None:
    with trio.fail_after(30):
        while True:  # a benchmark may poll for readiness; tests may not
            try:
                async with trionet.sql.connect("127.0.0.1", port):
                    break
            except trionet.sql.SqlConnectionError:
                await trio.sleep(0.1)
    idle = _rss_mb(pid)
    print(f"server RSS idle: {idle:.1f} MB")
    everyone_read = trio.Event()
    done = 0

    async def client() -> None:
        nonlocal done
        async with trionet.sql.connect("127.0.0.1", port, connect_timeout=60) as conn:
            result = await conn.query("SELECT * FROM quakes")
            assert len(result.rows) == 16_941
            done += 1
            if done == clients:
                everyone_read.set()
            await everyone_read.wait()
            loaded = _rss_mb(pid)
            if done == clients:
                done += 1
                print(f"server RSS with {clients} connections that each read the whole table: {loaded:.1f} MB")
                print(f"per connection: {(loaded - idle) / clients * 1024:.0f} KB")

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)


@click.command()
@click.option("--clients", default=200, show_default=True, help="Connections to open.")
def main(clients: int) -> None:
    """Measure the SQL server's memory with many connections."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "quakes.sqlite"
        catalog.build_catalogue(db)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "trionet", "sql", "serve", "--db", str(db), "--port", str(port),
             "--log-level", "warning", "--query-timeout", "0"]
        )
        try:
            trio.run(_measure, server.pid, port, clients)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
