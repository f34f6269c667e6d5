"""Fixtures for the PostgreSQL front's tests: an in-process server on a free port, and wire helpers."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from trionet.sql.engine import Database
from trionet.sql.pg import PgConfig, PgServer


@pytest.fixture
def start_pg(nursery, quake_db):
    """``server, (host, port) = await start_pg(read_write=..., **config)``."""

    async def start(*, db=None, read_write: bool = False, **config):
        server = PgServer(Database(db or quake_db, read_write=read_write), PgConfig(**config))
        addresses = await nursery.start(server.serve, "127.0.0.1", 0)
        return server, addresses[0]

    return start


def make_db(path: Path, script: str) -> Path:
    """An SQLite file at ``path`` made by running ``script`` (statements separated by ``;``)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
    finally:
        conn.close()
    return path


def startup_packet(**params: str) -> bytes:
    """A StartupMessage for protocol 3.0 with ``params``."""
    body = struct.pack("!i", 3 << 16)
    for name, value in params.items():
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def typed(kind: bytes, body: bytes = b"") -> bytes:
    """A typed frontend message."""
    return kind + struct.pack("!i", len(body) + 4) + body


def read_messages(data: bytes) -> list[tuple[str, bytes]]:
    """Split backend bytes into (type, body) pairs; a trailing partial message is an error."""
    out = []
    i = 0
    while i < len(data):
        kind = chr(data[i])
        (length,) = struct.unpack_from("!i", data, i + 1)
        assert i + 1 + length <= len(data), "truncated backend message"
        out.append((kind, data[i + 5 : i + 1 + length]))
        i += 1 + length
    return out


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body."""
    fields = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


ENDLESS_QUERY = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"
"""A statement that runs until it is interrupted."""


async def cancel_an_endless_query(server: PgServer, conn, cancel: Callable[[], Awaitable[None]]) -> BaseException | None:
    """Run :data:`ENDLESS_QUERY` on psycopg ``conn`` (in a thread), call ``await cancel()`` once it runs; its error.

    A cancel that arrives before the statement runs is ignored (as in
    PostgreSQL), so this waits, by checkpoints, until ``server`` has the
    statement in its thread.
    """
    import psycopg

    outcome: dict[str, BaseException] = {}

    def long_query() -> None:
        try:
            conn.execute(ENDLESS_QUERY)
        except psycopg.Error as exc:
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, long_query)
        with trio.fail_after(10):
            while not any(st.cancel is not None for _, st in server._keys.values()):
                await trio.lowlevel.checkpoint()
        await cancel()
    return outcome.get("error")
