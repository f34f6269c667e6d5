"""psycopg 3 against a real server in-process: text and binary, server-side parameters, transactions, errors."""

from __future__ import annotations

import decimal
import math

import pytest
import trio
import trio.lowlevel

from .conftest import cancel_an_endless_query

try:
    import psycopg
except ImportError:  # the test extra installs it; a developer without it skips, CI fails
    psycopg = None


pytestmark = pytest.mark.requires_module("psycopg")


def dsn(address, **extra) -> str:
    host, port = address
    params = {"host": host, "port": port, "dbname": "quakes", "user": "analyst", "connect_timeout": 10, **extra}
    return " ".join(f"{k}={v}" for k, v in params.items())


async def run(fn, *args):
    """psycopg is blocking: run it in a thread so the server keeps running on the event loop."""
    return await trio.to_thread.run_sync(fn, *args)


async def test_text_results_and_types(start_pg):
    _, address = await start_pg()

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            cur = conn.execute("select id, mag, nst, place from quakes where mag > %s order by id limit 2", (6.5,))
            names = [(c.name, c.type_code) for c in cur.description]
            return names, cur.fetchall(), cur.statusmessage, conn.info.parameter_status("server_version")

    names, rows, status, version = await run(go)
    assert names == [("id", 25), ("mag", 701), ("nst", 20), ("place", 25)]
    assert rows == [("q00036", 6.6, None, "36km N of Town, Oklahoma"), ("q00037", 6.7, 37, "37km N of Town, California")]
    assert status == "SELECT 2"
    assert version.startswith("15.0")


@pytest.mark.parametrize("binary", [False, True])
async def test_every_storage_class_in_text_and_binary(start_pg, binary):
    _, address = await start_pg()

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            cur = conn.cursor(binary=binary)
            cur.execute("select i, r, t, b, n from kinds order by rowid")
            return [c.type_code for c in cur.description], cur.fetchall()

    oids, rows = await run(go)
    assert oids == [20, 701, 25, 17, 25]  # n has no declared type and a NULL first: text
    assert rows[0] == (42, 2.5, "text", b"\x00\xffblob", None)
    assert rows[1][:4] == (-(2**63), math.inf, "", b"")
    assert rows[1][4] == "1.0"


@pytest.mark.parametrize("placeholder", ["%s", "%b", "%t"])
async def test_server_side_parameters_of_every_type(start_pg, placeholder):
    _, address = await start_pg()
    values = (7, 2**40, -2.5, "café", b"\x00\x01", True, decimal.Decimal("12.25"), None)
    sql = "select " + ", ".join([placeholder] * len(values))

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            return conn.execute(sql, values).fetchone()

    row = await run(go)
    # SQLite has no boolean or decimal: true comes back as 1, 12.25 as a float.
    assert row == (7, 2**40, -2.5, "café", b"\x00\x01", 1, 12.25, None)


async def test_parameters_filter_rows(start_pg):
    _, address = await start_pg()

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            one = conn.execute("select count(*) from quakes where place like %s and mag >= %s", ("%Nevada", 6.5)).fetchone()
            again = conn.execute("select count(*) from quakes where place like %s and mag >= %s", ("%Nevada", 6.5), prepare=True).fetchone()
            return one, again

    one, again = await run(go)
    assert one == again
    assert one[0] > 0


async def test_transaction_commit_and_error_then_rollback(start_pg, tmp_path):
    db = tmp_path / "rw.sqlite"
    import sqlite3

    setup = sqlite3.connect(db)
    setup.execute("create table t (a integer primary key, b text not null)")
    setup.commit()
    setup.close()
    _, address = await start_pg(db=db, read_write=True)

    def go():
        seen = {}
        with psycopg.connect(dsn(address)) as conn:  # not autocommit: psycopg sends BEGIN itself
            cur = conn.cursor()
            cur.execute("insert into t values (%s, %s), (%s, %s)", (1, "one", 2, "two"))
            seen["insert"] = cur.statusmessage
            seen["status_in_tx"] = conn.info.transaction_status
            conn.commit()
            with pytest.raises(psycopg.errors.UniqueViolation) as unique:
                cur.execute("insert into t values (%s, %s)", (1, "again"))
            seen["unique"] = unique.value.sqlstate
            seen["failed"] = conn.info.transaction_status
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                cur.execute("select 1")
            conn.rollback()
            cur.execute("insert into t values (%s, %s)", (3, "three"))
            conn.rollback()
            with pytest.raises(psycopg.errors.NotNullViolation):
                cur.execute("insert into t values (%s, %s)", (4, None))
            conn.rollback()
            cur.executemany("insert into t values (%s, %s)", [(10, "ten"), (11, "eleven")])  # libpq pipeline mode
            seen["many"] = conn.execute("select count(*) from t where a >= 10").fetchone()
            cur.execute("delete from t where a >= 10")
            cur.execute("update t set b = upper(b)")
            seen["update"] = cur.statusmessage
            cur.execute("delete from t where a = 2")
            seen["delete"] = cur.statusmessage
            conn.commit()
            seen["rows"] = conn.execute("select a, b from t order by a").fetchall()
        return seen

    seen = await run(go)
    assert seen["insert"] == "INSERT 0 2"
    assert seen["status_in_tx"] == psycopg.pq.TransactionStatus.INTRANS
    assert seen["unique"] == "23505"
    assert seen["failed"] == psycopg.pq.TransactionStatus.INERROR
    assert seen["many"] == (2,)
    assert seen["update"] == "UPDATE 2"
    assert seen["delete"] == "DELETE 1"
    assert seen["rows"] == [(1, "ONE")]


@pytest.mark.parametrize(
    "sql, error",
    [
        ("selec 1", "SyntaxError"),
        ("select * from nope", "UndefinedTable"),
        ("select nope from quakes", "UndefinedColumn"),
        ("delete from quakes", "ReadOnlySqlTransaction"),
        ("select load_extension('x')", "InsufficientPrivilege"),
        ("copy quakes to stdout", "FeatureNotSupported"),
    ],
)
async def test_errors_carry_sqlstate(start_pg, sql, error):
    _, address = await start_pg()

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            # The connection is still usable after the error.
            return type(info.value).__name__, conn.execute("select 1").fetchone()

    name, after = await run(go)
    assert (name, after) == (error, (1,))


async def test_what_clients_send_on_their_own(start_pg):
    _, address = await start_pg()

    def go():
        with psycopg.connect(dsn(address, application_name="tests"), autocommit=True) as conn:
            out = {"app": conn.info.parameter_status("application_name")}
            conn.execute("set application_name = 'renamed'")
            out["renamed"] = conn.info.parameter_status("application_name")
            out["show"] = conn.execute("show transaction_isolation").fetchone()
            out["database"] = conn.execute("select current_database()").fetchone()
            out["version"] = conn.execute("select version()").fetchone()[0]
            out["tz"] = conn.execute("show timezone").fetchone()
            out["combo"] = conn.execute(
                "select current_database(), current_setting('server_version_num'), version() like %s", ("%trionet%",)
            ).fetchone()
            out["pid"] = conn.execute("select pg_backend_pid()").fetchone()[0] == conn.info.backend_pid
            out["pid_binary"] = conn.cursor(binary=True).execute("select pg_backend_pid()").fetchone()[0] == conn.info.backend_pid
            with pytest.raises(psycopg.errors.UndefinedObject):
                conn.execute("show no_such_setting")
            return out

    out = await run(go)
    assert out["app"] == "tests"
    assert out["renamed"] == "renamed"
    assert out["show"] == ("serializable",)
    assert out["database"] == ("quakes",)
    assert "trionet" in out["version"]
    assert out["tz"] == ("UTC",)
    assert out["combo"] == ("quakes", "150000", 1)
    assert out["pid"] and out["pid_binary"]


async def test_server_side_cursor_rows_in_parts(start_pg):
    # psycopg's stream() uses single-row mode; fetchmany on a plain cursor
    # exercises a full result. Both must see every row exactly once.
    _, address = await start_pg(batch_rows=7)

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            streamed = [row[0] for row in conn.cursor().stream("select id from quakes order by id")]
            return streamed

    ids = await run(go)
    assert len(ids) == 2000 and ids == sorted(set(ids))


async def test_cancel_interrupts_a_running_query(start_pg):
    server, address = await start_pg(query_timeout=60)
    conn = await run(lambda: psycopg.connect(dsn(address), autocommit=True))
    try:
        error = await cancel_an_endless_query(server, conn, lambda: run(conn.cancel_safe))
        assert isinstance(error, psycopg.errors.QueryCanceled)
        assert "user request" in str(error)
        assert await run(lambda: conn.execute("select 1").fetchone()) == (1,)
    finally:
        await run(conn.close)


async def test_query_timeout_is_57014(start_pg):
    _, address = await start_pg(query_timeout=0.2)

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                conn.execute("with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c")
            return str(info.value)

    assert "timeout" in await run(go)


async def test_max_rows_is_an_error_not_a_silent_cut(start_pg):
    _, address = await start_pg(max_rows=10)

    def go():
        with psycopg.connect(dsn(address), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.ProgramLimitExceeded):
                conn.execute("select * from quakes").fetchall()
            return conn.execute("select count(*) from quakes").fetchone()

    assert await run(go) == (2000,)
