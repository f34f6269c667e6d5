"""The SQLite sandbox: an allow-list of functions, table functions and modules, and per-connection limits."""

from __future__ import annotations

import sqlite3
import time

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trionet.sql import Database, SqlError, connect
from trionet.sql.engine import INLINE_BUDGET, OverBudget
from trionet.sql.sandbox import ALLOWED_FUNCTIONS

# Registers a tokenizer at address 0x4141414141414141, then makes FTS3 call it.
SEGFAULT = [
    "SELECT fts3_tokenizer('evil', x'4141414141414141')",
    "CREATE VIRTUAL TABLE temp.t USING fts3(tokenize=evil)",
]


def run(db: Database, sql: str, params=None):
    session = db.open_session()
    try:
        return session.execute(sql, params, 100).rows
    finally:
        session.close()


def test_the_fts3_tokenizer_segfault_is_refused_and_the_server_lives(server_process, quake_db):
    """Run in a server process: before the allow-list this killed it with SIGSEGV."""
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = server.wait_listening()

    async def attack() -> list[str]:
        codes = []
        async with connect("127.0.0.1", port) as conn:
            for sql in SEGFAULT + ["SELECT hex(fts3_tokenizer('simple'))"]:
                try:
                    await conn.query(sql)
                    codes.append("ok")
                except SqlError as exc:
                    codes.append(exc.code)
            assert (await conn.query("SELECT 1")).rows == [(1,)]
        return codes

    assert trio.run(attack) == ["denied", "denied", "denied"]
    assert server.proc.poll() is None


@pytest.mark.parametrize("read_write", [False, True])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT hex(fts3_tokenizer('simple'))",  # a pointer into libsqlite3: defeats ASLR
        "SELECT fts5(NULL)",
        "SELECT load_extension('x')",
        "SELECT sqlite_compileoption_get(0)",
        "SELECT sqlite_log(1, 'x')",
        "SELECT rtreenode(2, x'00')",
        "SELECT count(*) FROM dbstat",
        "SELECT count(*) FROM sqlite_stmt",
        "CREATE VIRTUAL TABLE temp.f USING fts4(x)",
        "CREATE VIRTUAL TABLE temp.f USING fts5(x)",
        "CREATE VIRTUAL TABLE temp.r USING rtree(id, a, b)",
    ],
)
def test_functions_and_modules_off_the_allow_list_are_denied(quake_db, read_write, sql):
    with pytest.raises(SqlError) as info:
        run(Database(quake_db, read_write=read_write), sql)
    assert info.value.code == "denied", info.value


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT printf('%5.2f|%d|%-3s|%%', 3.14159, 7, 'ab')", [(" 3.14|7|ab |%",)]),
        ("SELECT format('%q', 'it''s')", [("it''s",)]),
        ("SELECT count(*) FROM json_each('[1, 2, 3]')", [(3,)]),
        ("SELECT '{\"a\": [5]}' ->> '$.a[0]'", [(5,)]),
        ("SELECT name FROM pragma_table_info('kinds') LIMIT 1", [("i",)]),
        ("SELECT round(sqrt(16.0)), upper('a'), date('2020-01-02', '+1 day')", [(4.0, "A", "2020-01-03")]),
        ("SELECT rank() OVER (ORDER BY mag DESC) FROM quakes LIMIT 1", [(1,)]),
        ("SELECT group_concat(t) FROM kinds", [("text,",)]),
    ],
)
def test_what_an_analyst_needs_is_allowed(quake_db, sql, expected):
    assert run(Database(quake_db), sql) == expected


def test_the_allow_list_names_no_pointer_function():
    assert not {"fts3_tokenizer", "fts5", "load_extension", "matchinfo", "optimize"} & ALLOWED_FUNCTIONS


def test_printf_cannot_loop_for_seconds_inside_one_vm_step(quake_db):
    """SQLite 3.40 loops once per unit of precision even past the length limit, where no interrupt is seen."""
    db = Database(quake_db)
    started = time.perf_counter()
    with pytest.raises(SqlError) as info:
        run(db, "SELECT printf('%.*c%.*c%.*c', 1000000000, 'x', 1000000000, 'x', 1000000000, 'x')")
    assert time.perf_counter() - started < 0.5  # 4.5 s here without the wrapper
    assert info.value.code == "too_big"
    with pytest.raises(SqlError):
        run(db, "SELECT printf('%2000000000c', 'x')")
    assert run(db, "SELECT length(printf('%.*c', 1000, 'x'))") == [(1000,)]


def test_temporary_tables_are_bounded_by_max_temp_bytes(quake_db):
    db = Database(quake_db, max_temp_bytes=1 << 20)
    session = db.open_session()
    try:
        session.execute("CREATE TEMP TABLE scratch (b)", None, 1)
        session.execute("INSERT INTO scratch SELECT randomblob(100000) FROM quakes LIMIT 5", None, 1)
        with pytest.raises(SqlError) as info:
            session.execute("INSERT INTO scratch SELECT randomblob(100000) FROM quakes LIMIT 20", None, 1)
        assert info.value.code == "full" and "--max-temp-bytes" in info.value.message
        assert session.execute("SELECT count(*) FROM scratch", None, 1).rows == [(5,)]
    finally:
        session.close()


@pytest.mark.parametrize(
    "sql",
    [
        # SQLite's own instr/replace compare at every position: 5 s and 3.5 s here for these,
        # hours for a 16 MB text and an 8 MB needle.
        "SELECT instr(replace(hex(zeroblob(500000)), '0', 'a'), replace(hex(zeroblob(100000)), '0', 'a') || 'b')",
        "SELECT length(replace(replace(hex(zeroblob(1000000)), '0', 'a'), "
        "replace(hex(zeroblob(50000)), '0', 'a') || 'b', 'x'))",
        # ... and trim(X, Y) tests each character of X against each of Y: 15 s here.
        "SELECT length(trim(replace(hex(zeroblob(500000)), '0', 'a'), replace(hex(zeroblob(5000)), '0', 'b') || 'a'))",
        "SELECT length(rtrim(replace(hex(zeroblob(500000)), '0', 'a'), "
        "(SELECT group_concat(char(x), '') FROM (WITH RECURSIVE c(x) AS (SELECT 256 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < 3000) SELECT x FROM c)) || 'a'))",
    ],
)
def test_string_search_is_linear_not_quadratic(quake_db, sql):
    started = time.perf_counter()
    run(Database(quake_db), sql)
    assert time.perf_counter() - started < 1


def test_a_long_like_pattern_is_too_big(quake_db):
    """LIKE matches in one VM step; 40 kB against 1 MB took 47 s. The pattern length bounds it."""
    with pytest.raises(SqlError) as info:
        run(Database(quake_db), "SELECT 'a' LIKE ('%' || hex(zeroblob(100)) || '%')")
    assert info.value.code == "too_big" and "--max-like-pattern-bytes" in info.value.message
    assert run(Database(quake_db), "SELECT count(*) FROM quakes WHERE place LIKE '%Oklahoma'") == [(667,)]


_texts = st.one_of(
    st.none(), st.text(max_size=8), st.text("ab .-", max_size=12), st.binary(max_size=8), st.integers(-100, 100),
    st.floats(-10, 10), st.text(max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=_texts, b=_texts, c=_texts)
@example(a="", b="\x00", c=None)  # SQLite reads the pattern as a C string
@example(a="", b=0, c=None)
@example(a=b"\x80", b="", c=None)
@example(a="xxabcabxx", b="ab\x00x", c="-")
def test_instr_and_replace_answer_as_sqlite_does(quake_db, a, b, c):
    """The linear-time wrappers (instr, replace, trim) give SQLite's own answers (the read-only database is not changed)."""
    session = Database(quake_db).open_session()
    reference = sqlite3.connect(":memory:")
    reference.text_factory = lambda raw: raw.decode("utf-8", "replace")  # a blob read as text may not be UTF-8
    try:
        for sql, args in [
            ("SELECT instr(?, ?)", (a, b)),
            ("SELECT replace(?, ?, ?)", (a, b, c)),
            ("SELECT trim(?, ?), ltrim(?, ?), rtrim(?, ?)", (a, b) * 3),
        ]:
            expected = reference.execute(sql, args).fetchone()
            assert session.execute(sql, args, 1).rows == [expected], (sql, args)
    finally:
        reference.close()
        session.close()


def test_a_row_larger_than_max_row_bytes_is_too_big(quake_db):
    """A batch holds at least one row; this bounds that row before it is encoded four more times."""
    db = Database(quake_db, max_row_bytes=100_000)
    with pytest.raises(SqlError) as info:
        run(db, "SELECT randomblob(40000), randomblob(40000)")  # 2 x 53 kB of base64
    assert info.value.code == "too_big" and "--max-row-bytes" in info.value.message
    assert len(run(db, "SELECT randomblob(40000)")[0][0]) == 40000


@pytest.mark.parametrize(
    "sql, inline",
    [
        ("SELECT mag FROM quakes WHERE id = 'q00001'", True),
        ("SELECT count(*), max(mag) FROM quakes WHERE mag > 4", True),
        # One call, one VM instruction, however long: never on the event loop.
        ("SELECT count(*) FROM quakes WHERE place LIKE '%aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa%'", False),
        ("SELECT hex(zeroblob(1000))", False),
        ("SELECT printf('%d', 5)", False),
    ],
)
def test_only_statements_of_cheap_functions_are_tried_on_the_event_loop(quake_db, sql, inline):
    db = Database(quake_db)
    run(db, sql)
    assert db.may_run_inline(sql) is inline


@pytest.mark.parametrize(
    "sql, inline",
    [
        ("SELECT mag FROM quakes WHERE id = 'q00001'", True),
        ("SELECT count(*) FROM quakes WHERE place LIKE '%aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa%'", False),
        ("SELECT hex(zeroblob(1000))", False),
        ("CREATE TEMP TABLE t(x)", False),
    ],
)
def test_a_trial_refuses_at_prepare_what_is_not_fit_for_the_event_loop(quake_db, sql, inline):
    db = Database(quake_db)
    session = db.open_session()
    try:
        assert db.inline_verdict(sql) is None
        if inline:
            result = session.execute(sql, None, 10, INLINE_BUDGET, trial=True)
            assert result.rows
        else:
            with pytest.raises(OverBudget):
                session.execute(sql, None, 10, INLINE_BUDGET, trial=True)
            # Refused before it ran: the temporary table was not created.
            assert session.connection.execute("SELECT count(*) FROM temp.sqlite_schema").fetchone() == (0,)
        assert db.inline_verdict(sql) is inline
        # A trial is for one call only: the same session then runs the statement normally.
        assert session.execute(sql, None, 10).exhausted
        if not inline:
            # Now in sqlite3's statement cache, which skips the authorizer; with its
            # verdict forgotten (the database keeps 4096), a trial must still refuse it.
            db._read_only_sql.clear()
            with pytest.raises(OverBudget):
                session.execute(sql, None, 10, INLINE_BUDGET, trial=True)
    finally:
        session.close()
