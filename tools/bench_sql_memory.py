"""Memory of ``trionet sql serve`` as connections grow, and under results of big values.

Starts the real server on the real catalogue in its own process and measures
its RSS (``/proc/PID/status``) in three scenarios:

- ``page-cache``: ``--clients`` connections that each read the whole
  ``quakes`` table (so every SQLite page cache fills): RSS per connection;
- ``idle``: ``--idle-clients`` connections that only say hello: RSS and
  descriptors per idle connection;
- ``big-values``: ``--big-clients`` clients at once each reading
  ``SELECT zeroblob(16000000) FROM quakes LIMIT 32`` (512 MB of values
  each), and one asking for a row of 20 x 16 MB: the server's peak RSS
  (VmHWM) growth, the bound that ``--max-batch-bytes`` and
  ``--max-sqlite-memory-bytes`` give.

A measurement, not a test: it always exits 0.

Usage: python3 tools/bench_sql_memory.py [--scenarios page-cache,idle,big-values] [--clients 200]
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



def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(field + r":\s+(\d+)", status).group(1)) / 1024


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _wait_ready(port: int) -> None:
    with trio.fail_after(30):
        while True:  # a benchmark may poll for readiness; tests may not
            try:
                async with trionet.sql.connect("127.0.0.1", port):
                    return
            except trionet.sql.SqlConnectionError:
                await trio.sleep(0.1)


async def _measure_idle(pid: int, port: int, clients: int) -> None:
    await _wait_ready(port)
    rss, fds = _rss_mb(pid), _fds(pid)
    streams = []
    try:
        for _ in range(clients):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            streams.append(stream)
            await stream.receive_some(65536)  # the hello: the session is open
        rss2, fds2 = _rss_mb(pid), _fds(pid)
        print(f"idle: {clients} connections that only said hello: RSS {rss:.1f} -> {rss2:.1f} MB, "
              f"{(rss2 - rss) / clients * 1024:.0f} KB and {(fds2 - fds) / clients:.1f} descriptors each")
    finally:
        for stream in streams:
            await stream.aclose()


async def _measure_big_values(pid: int, port: int, clients: int) -> None:
    await _wait_ready(port)
    before = _rss_mb(pid, "VmHWM")
    rows = 0

    async def client() -> None:
        nonlocal rows
        async with trionet.sql.connect("127.0.0.1", port, connect_timeout=60) as conn:
            async with conn.stream("SELECT zeroblob(16000000) FROM quakes LIMIT 32") as result:
                async for _ in result:
                    rows += 1

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    peak = _rss_mb(pid, "VmHWM")
    print(f"big-values: {clients} client(s) each reading 32 values of 16 MB ({rows} rows): "
          f"server peak RSS {before:.1f} -> {peak:.1f} MB (+{(peak - before) / clients:.0f} MB per client)")
    async with trionet.sql.connect("127.0.0.1", port) as conn:
        try:
            await conn.query("SELECT " + ", ".join(["randomblob(16000000)"] * 20))
            outcome = "answered"
        except trionet.sql.SqlError as exc:
            outcome = exc.code
    print(f"big-values: one row of 20 x 16 MB: {outcome}; server peak RSS now {_rss_mb(pid, 'VmHWM'):.1f} MB")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _measure(pid: int, port: int, clients: int) -> None:
    await _wait_ready(port)
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
@click.option("--scenarios", default="page-cache,idle,big-values", show_default=True, help="Which to run.")
@click.option("--clients", default=200, show_default=True, help="page-cache: connections to open.")
@click.option("--idle-clients", default=1000, show_default=True, help="idle: connections to open.")
@click.option("--big-clients", default=4, show_default=True, help="big-values: clients at once.")
def main(scenarios: str, clients: int, idle_clients: int, big_clients: int) -> None:
    """Measure the SQL server's memory with many connections and with big values."""
    runs = {
        "page-cache": (_measure, clients),
        "idle": (_measure_idle, idle_clients),
        "big-values": (_measure_big_values, big_clients),
    }
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "quakes.sqlite"
        catalog.build_catalogue(db)
        for name in scenarios.split(","):
            measure, count = runs[name]
            port = _free_port()  # a fresh server per scenario: peak RSS is per process
            server = subprocess.Popen(
                [sys.executable, "-m", "trionet", "sql", "serve", "--db", str(db), "--port", str(port), "--no-pg",
                 "--log-level", "warning", "--query-timeout", "0", "--max-rows", "0"]
            )
            try:
                trio.run(measure, server.pid, port, count)
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
