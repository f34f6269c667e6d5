"""A read-only server's sessions hold SQLite's shared lock, unless other writers are allowed (--allow-external-writes)."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from trionet.sql import Database, connect


def _read(session) -> list:
    return session.execute("SELECT count(*) FROM quakes", None, 10).rows


def _write_from_another_process(path) -> None:
    writer = sqlite3.connect(path, timeout=0)
    try:
        writer.execute("CREATE TABLE IF NOT EXISTS outside (x)")
        writer.commit()
    finally:
        writer.close()


def test_read_only_sessions_hold_the_shared_lock_until_they_close(quake_db):
    db = Database(quake_db)
    assert db.holds_read_lock
    first, second = db.open_session(), db.open_session()
    try:
        assert _read(first) == _read(second)  # readers share the lock
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            _write_from_another_process(quake_db)
        assert _read(first) == _read(second)  # and go on reading
    finally:
        first.close()
        second.close()
    _write_from_another_process(quake_db)  # every session closed: the lock is gone


def _pragma(session, name: str):
    conn = session.connection
    conn.set_authorizer(None)  # the sandbox refuses clients this PRAGMA
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_a_session_holding_the_lock_reads_pages_through_a_memory_map(quake_db):
    held, free = Database(quake_db).open_session(), Database(quake_db, external_writes=True).open_session()
    try:
        assert (_pragma(held, "locking_mode"), _pragma(held, "mmap_size")) == ("exclusive", 1 << 30)
        assert (_pragma(free, "locking_mode"), _pragma(free, "mmap_size")) == ("normal", 0)
    finally:
        held.close()
        free.close()


def test_with_external_writes_a_session_sees_what_another_process_wrote(quake_db):
    db = Database(quake_db, external_writes=True)
    assert not db.holds_read_lock
    session = db.open_session()
    try:
        _read(session)
        _write_from_another_process(quake_db)
        assert session.execute("SELECT count(*) FROM outside", None, 10).rows == [(0,)]
    finally:
        session.close()


def test_a_file_in_wal_mode_and_a_read_write_server_lock_per_statement(quake_db):
    assert not Database(quake_db, read_write=True).holds_read_lock  # switches the file to WAL
    db = Database(quake_db)
    assert not db.holds_read_lock  # an exclusive-mode WAL reader would shut other processes out
    session = db.open_session()
    try:
        _read(session)
        _write_from_another_process(quake_db)
    finally:
        session.close()


@pytest.mark.parametrize("flag", [False, True])
def test_the_serve_flag_lets_other_processes_write_while_clients_are_connected(server_process, quake_db, flag):
    args = ["sql", "serve", "--db", str(quake_db), "--port", "0", "--no-pg"]
    server = server_process(*args, *(["--allow-external-writes"] if flag else []))
    port = server.wait_listening()

    async def write_while_connected() -> str:
        async with connect("127.0.0.1", port) as conn:
            await conn.query("SELECT count(*) FROM quakes")
            try:
                _write_from_another_process(quake_db)
            except sqlite3.OperationalError as exc:
                return str(exc)
            return "written"

    assert trio.run(write_while_connected) == ("written" if flag else "database is locked")



def test_import_into_a_file_a_server_holds_says_why_it_cannot(monkeypatch, tmp_path):
    # The lock itself is the test above; this is what the importer says when it meets it.
    from click.testing import CliRunner

    from trionet.cli import main
    from trionet.sql import catalog

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(catalog, "import_usgs", locked)
    done = CliRunner().invoke(main, ["sql", "import-usgs", "--db", str(tmp_path / "q.sqlite")])
    assert done.exit_code == 1
    assert "database is locked" in done.output and "--allow-external-writes" in done.output
