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


@pytest.fixture
def tls_config(tls_files):
    """A server's :class:`~trionet.tls.TLSServerConfig` for ``tls_files`` (a short handshake timeout)."""
    from trionet.tls import TLSServerConfig, server_context

    cert, key, _ = tls_files
    return TLSServerConfig(server_context(cert, key), cert, key, handshake_timeout=2.0)


@pytest.fixture(scope="session")
def users():
    """Users for the login tests: alice's line is a verifier, bob's a plain password."""
    from trionet.sql.auth import make_verifier, parse_users

    parsed, _ = parse_users(f"alice:{make_verifier('s3cret pass')}\nbob:hunter2\n")
    return parsed


@pytest.fixture
def sql_log():
    """The messages ``trionet.sql`` logs during the test, whatever an earlier in-process command configured."""
    import logging

    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("trionet.sql")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def partial_sends(monkeypatch) -> list[int]:
    """Every direct send takes only 5 bytes at once (a full socket buffer); returns the sizes the send watchdog sent.

    For tests of what happens to the rest of an answer: the ready loop
    hands it to the connection's task, which sends it under the watchdog.
    """
    from trionet import serving
    from trionet.batchsend import BatchSender
    from trionet.serving import DirectSocketIO, SendWatchdog

    send_now, write_some, batch_send = DirectSocketIO.send_now, serving._write_some, BatchSender.send
    watched_send = SendWatchdog.send
    watched: list[int] = []

    def partial(io, data: bytes) -> bytes:
        return send_now(io, data[:5]) + data[5:]

    def partial_some(sock, data: bytearray) -> bool:  # the ready loop's, one socket
        rest = data[5:]
        del data[5:]
        write_some(sock, data)
        data += rest
        return not data

    def partial_batch(sender, items: list) -> int:  # the ready loop's, several at once
        rests = [data[5:] for _, data in items]
        for _, data in items:
            del data[5:]
        calls = batch_send(sender, items)
        for (_, data), rest in zip(items, rests):
            data += rest
        return calls

    async def counting(watchdog, stream, data: bytes) -> None:
        watched.append(len(data))
        await watched_send(watchdog, stream, data)

    monkeypatch.setattr(DirectSocketIO, "send_now", partial)
    monkeypatch.setattr(serving, "_write_some", partial_some)
    monkeypatch.setattr(BatchSender, "send", partial_batch)
    monkeypatch.setattr(SendWatchdog, "send", counting)
    return watched
