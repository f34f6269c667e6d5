"""The SQL part of ``trionet demo``: a server on a free port and a short scripted session."""

from __future__ import annotations

import time

import trio
from rich.console import Console
from rich.markup import escape

from trionet.sql import catalog
from trionet.sql.client import connect
from trionet.sql.engine import Database
from trionet.sql.errors import SqlError
from trionet.sql.render import result_table
from trionet.sql.server import serve_sql

__all__ = ["SESSION", "run_demo"]

SESSION = [
    ("How many events are in the catalogue?", "SELECT count(*) AS events FROM quakes", None),
    (
        "The ten largest",
        "SELECT time, mag, magType, place FROM quakes ORDER BY mag DESC, time LIMIT 10",
        None,
    ),
    (
        "A parameterised query: Oklahoma in 2011, by month",
        "SELECT strftime('%m', time) AS month, count(*) AS events, max(mag) AS largest FROM quakes "
        "WHERE place LIKE '%' || :state AND strftime('%Y', time) = :year GROUP BY month ORDER BY month",
        {"state": "Oklahoma", "year": "2011"},
    ),
]


async def run_demo(console: Console, db_path=None) -> None:
    """Serve ``db_path`` (default: the shipped USGS catalogue) and run :data:`SESSION` against it."""
    if db_path is None:
        db_path = await trio.to_thread.run_sync(catalog.ensure_catalogue)
        console.print(f"database: the USGS catalogue, 1995-2015, at {db_path}")
    else:
        console.print(f"database: {db_path}")
    database = Database(db_path)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve_sql, database, "127.0.0.1", 0)
        host, port = addresses[0]
        console.print(f"server listening on {host}:{port}\n")
        async with connect(host, port) as conn:
            for title, sql, params in SESSION:
                console.print(f"[bold]{title}[/bold]")
                console.print(f"[cyan]> {sql}[/cyan]" + (f"  [dim]{params}[/dim]" if params else ""))
                started = time.perf_counter()
                result = await conn.query(sql, params)
                console.print(result_table(result))
                console.print(f"[dim]{len(result.rows)} row(s), {(time.perf_counter() - started) * 1000:.1f} ms[/dim]\n")

            console.print("[bold]Many clients at once: 20 connections, 10 point queries each[/bold]")
            ids = [row[0] for row in (await conn.query("SELECT id FROM quakes ORDER BY random() LIMIT 200")).rows]

            async def client(chunk: list[str]) -> None:
                async with connect(host, port) as other:
                    for event_id in chunk:
                        await other.query("SELECT mag, place FROM quakes WHERE id = ?", [event_id])

            started = time.perf_counter()
            async with trio.open_nursery() as clients:
                for i in range(20):
                    clients.start_soon(client, ids[i * 10 : (i + 1) * 10])
            console.print(f"[dim]200 queries from 20 clients in {(time.perf_counter() - started) * 1000:.0f} ms[/dim]\n")

            console.print("[bold]The server is read-only unless started with --read-write[/bold]")
            console.print("[cyan]> DELETE FROM quakes[/cyan]")
            try:
                await conn.query("DELETE FROM quakes")
            except SqlError as exc:
                console.print(f"[red]error \\[{exc.code}][/red]: {escape(exc.message)}\n")
        nursery.cancel_scope.cancel()
