"""Each SQLSTATE clients branch on comes out for its cause, through a real client (psycopg) or the wire."""

from __future__ import annotations

import sqlite3
import struct

import pytest
import trio

from trionet.sql.engine import Database
from trionet.sql.pg import PgConfig, PgServer
from trionet.sql.pg.sqlstate import error_position

from .conftest import error_fields, read_messages, startup_packet, typed

try:
    import psycopg
except ImportError:
    psycopg = None


pytestmark = pytest.mark.requires_module("psycopg")


@pytest.fixture
def rw_db(tmp_path):
    path = tmp_path / "constraints.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TABLE child (
            id INTEGER PRIMARY KEY,
            parent INTEGER REFERENCES parent(id),
            name TEXT NOT NULL UNIQUE,
            qty INTEGER CHECK (qty >= 0)
        );
        INSERT INTO parent VALUES (1);
        INSERT INTO child VALUES (1, 1, 'one', 1);
        """
    )
    conn.commit()
    conn.close()
    return path


def dsn(address) -> str:
    host, port = address
    return f"host={host} port={port} dbname=quakes user=analyst connect_timeout=10"


def sqlstate_of(address, *statements: str, autocommit: bool = True) -> tuple[str, int | None]:
    """Run ``statements`` in order; the SQLSTATE and position of the error the last one raises."""
    with psycopg.connect(dsn(address), autocommit=autocommit) as conn:
        for sql in statements[:-1]:
            conn.execute(sql)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statements[-1])
        position = info.value.diag.statement_position
        return info.value.sqlstate, int(position) if position else None


CASES = [
    # (read-write server?, statements, SQLSTATE)
    (False, ["SELEC 1"], "42601"),
    (False, ["SELECT * FROM nowhere"], "42P01"),
    (False, ["SELECT nope FROM quakes"], "42703"),
    (False, ["DELETE FROM quakes"], "25006"),
    (False, ["ATTACH DATABASE 'x.db' AS x"], "42501"),
    (False, ["SELECT load_extension('x')"], "42501"),
    (True, ["INSERT INTO child VALUES (2, 1, 'one', 1)"], "23505"),
    (True, ["INSERT INTO child VALUES (2, 1, NULL, 1)"], "23502"),
    (True, ["PRAGMA foreign_keys = ON", "INSERT INTO child VALUES (2, 99, 'two', 1)"], "23503"),
    (True, ["INSERT INTO child VALUES (2, 1, 'two', -1)"], "23514"),
    (False, ["COPY quakes TO STDOUT"], "0A000"),
]


@pytest.mark.parametrize(("read_write", "statements", "code"), CASES, ids=[c[2] + ":" + c[1][-1][:20] for c in CASES])
async def test_each_cause_gives_its_sqlstate(start_pg, rw_db, read_write, statements, code):
    _, address = await start_pg(db=rw_db if read_write else None, read_write=read_write)
    state, _ = await trio.to_thread.run_sync(lambda: sqlstate_of(address, *statements))
    assert state == code


async def test_failed_transaction_is_25P02_until_rollback(start_pg):
    _, address = await start_pg()

    def go():
        with psycopg.connect(dsn(address)) as conn:  # psycopg opens the transaction block itself
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM nowhere")
            with pytest.raises(psycopg.errors.InFailedSqlTransaction) as failed:
                conn.execute("SELECT 1")
            conn.rollback()
            return failed.value.sqlstate, conn.execute("SELECT 1").fetchone()

    assert await trio.to_thread.run_sync(go) == ("25P02", (1,))


async def test_timeout_is_57014(start_pg):
    _, address = await start_pg(query_timeout=0.2)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    state, _ = await trio.to_thread.run_sync(lambda: sqlstate_of(address, endless))
    assert state == "57014"


async def test_locked_database_is_55P03(nursery, rw_db):
    # A second writer waits --busy-timeout for the first one's lock, then gets a retryable code.
    server = PgServer(Database(rw_db, read_write=True, busy_timeout=0.1), PgConfig())
    address = (await nursery.start(server.serve, "127.0.0.1", 0))[0]

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as holder:
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("INSERT INTO parent VALUES (2)")
            try:
                return sqlstate_of(address, "INSERT INTO parent VALUES (3)")
            finally:
                holder.execute("ROLLBACK")

    state, _ = await trio.to_thread.run_sync(go)
    assert state == "55P03"


async def test_protocol_violation_is_08P01(start_pg):
    _, address = await start_pg()
    ready = b"Z\x00\x00\x00\x05I"

    async def until_ready(stream) -> bytes:
        data = b""
        with trio.fail_after(10):
            while not data.endswith(ready):
                chunk = await stream.receive_some(65536)
                assert chunk, f"the server closed the connection after {data!r}"
                data += chunk
        return data

    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(startup_packet(user="u", database="d"))
        await until_ready(stream)
        # A Bind that supplies one parameter to a statement that has none.
        parse = typed(b"P", b"\0SELECT 1\0" + struct.pack("!h", 0))
        bind = typed(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, 1) + b"7" + struct.pack("!h", 0))
        await stream.send_all(parse + bind + typed(b"S"))
        data = await until_ready(stream)
    errors = [error_fields(body) for kind, body in read_messages(data) if kind == "E"]
    assert [e["C"] for e in errors] == ["08P01"]


async def test_error_response_carries_the_position(start_pg):
    _, address = await start_pg()
    sql = "SELECT id, nope FROM quakes"
    state, position = await trio.to_thread.run_sync(lambda: sqlstate_of(address, sql))
    assert (state, position) == ("42703", sql.index("nope") + 1)
    # In a Query of several statements the position counts from the Query's start, as PostgreSQL's does.
    sql = "SELECT 1; SELECT * FROM nowhere"
    state, position = await trio.to_thread.run_sync(lambda: sqlstate_of(address, sql))
    assert (state, position) == ("42P01", sql.index("nowhere") + 1)


@pytest.mark.parametrize(
    ("sql", "message", "expected"),
    [
        ("SELEC 1", 'near "SELEC": syntax error', 1),
        ("select a, b from t", "no such column: b", 11),
        ("select * from main.t2", "no such table: main.t2", 20),
        ("select $b from t", "no such column: b", None),  # a parameter name is not the column
        ("select 1", "UNIQUE constraint failed: t.a", None),
    ],
)
def test_error_position_finds_the_name(sql, message, expected):
    assert error_position(sql, message) == expected
