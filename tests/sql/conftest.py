"""Fixtures for the SQL tests: a small typed database and in-process servers on free ports."""

from __future__ import annotations

import sqlite3

import pytest

from trionet.sql import Database, SqlServer, SqlServerConfig

N_QUAKES = 2000


def make_quake_db(path) -> None:
    """A small quakes table (indexed id, time, mag) plus a table of every storage class."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE quakes (id TEXT PRIMARY KEY, time TEXT, mag REAL, place TEXT, nst INTEGER);
        CREATE INDEX quakes_time ON quakes(time);
        CREATE INDEX quakes_mag ON quakes(mag);
        CREATE TABLE kinds (i INTEGER, r REAL, t TEXT, b BLOB, n);
        """
    )
    conn.executemany(
        "INSERT INTO quakes VALUES (?, ?, ?, ?, ?)",
        [
            (
                f"q{i:05d}",
                f"{1995 + i % 21}-{1 + i % 12:02d}-{1 + i % 28:02d}T00:00:{i % 60:02d}.000Z",
                3.0 + (i % 40) / 10,
                f"{i % 50}km N of Town, {['Oklahoma', 'California', 'Nevada'][i % 3]}",
                None if i % 4 == 0 else i % 90,
            )
            for i in range(N_QUAKES)
        ],
    )
    conn.execute("INSERT INTO kinds VALUES (?, ?, ?, ?, ?)", (42, 2.5, "text", b"\x00\xffblob", None))
    conn.execute("INSERT INTO kinds VALUES (?, ?, ?, ?, ?)", (-(2**63), float("inf"), "", b"", 1.0))
    conn.commit()
    conn.close()


@pytest.fixture
def quake_db(tmp_path):
    path = tmp_path / "quakes.sqlite"
    make_quake_db(path)
    return path


@pytest.fixture
def start_sql(nursery, quake_db):
    """``server, (host, port) = await start_sql(read_write=..., **config)``."""

    async def start(*, db=None, read_write: bool = False, **config):
        server = SqlServer(Database(db or quake_db, read_write=read_write), SqlServerConfig(**config))
        addresses = await nursery.start(server.serve, "127.0.0.1", 0)
        return server, addresses[0]

    return start
