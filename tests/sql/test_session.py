"""Session's statement loop: the progress handler's two modes, the cursor kept between statements."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trionet.sql import Database, SqlError
from trionet.sql.engine import INLINE_BUDGET, OverBudget
from trionet.sql.session import Session

POINT = "SELECT mag FROM quakes WHERE id = ?"
# About 20 VM instructions a row: some millions in all.
LONG = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c"


class CountingSession(Session):
    """A session that counts how often SQLite calls its progress handler."""

    calls = 0

    def _progress(self) -> int:
        self.calls += 1
        return super()._progress()


@pytest.fixture
def session(quake_db):
    session = CountingSession(Database(quake_db))
    yield session
    session.close()


def _calls(session: CountingSession, run) -> int:
    session.calls = 0
    run()
    return session.calls


def test_a_budget_stops_a_long_statement_on_the_loop_however_many_ran_there_before(session):
    for _ in range(3):
        assert session.execute(POINT, ("q00001",), 10, INLINE_BUDGET).exhausted
    session.calls = 0
    for _ in range(3):
        with pytest.raises(OverBudget):
            session.execute(LONG, None, 10, INLINE_BUDGET)
        assert session.calls == INLINE_BUDGET  # checked every 1000 instructions, stopped at the budget
        # In between, the same session runs it as in a worker thread: to its end.
        session.calls = 0
        result = session.execute(LONG, None, 10)
        assert result.rows == [(300000,)] and result.exhausted
        session.calls = 0


def test_a_statement_without_budget_is_checked_every_million_instructions_after_one_on_the_loop(session):
    loop = _calls(session, lambda: session.execute(LONG, None, 10, 10**6))  # on the loop, budget to spare
    thread = _calls(session, lambda: session.execute(LONG, None, 10))
    assert loop > 1000 and 0 < thread < 50, (loop, thread)
    # fetch() and the connection handed out run with the thread's handler too.
    session.execute(POINT, ("q00001",), 10, INLINE_BUDGET)
    assert 0 < _calls(session, lambda: session.connection.execute(LONG).fetchall()) < 50
    assert session.execute("SELECT 1 UNION ALL SELECT 2", None, 1, INLINE_BUDGET).rows == [(1,)]
    session.calls = 0
    assert session.fetch(10).rows == [(2,)]
    assert session.calls == 0  # a handful of instructions: not one check due yet
    session.execute(LONG.replace("count(*)", "x"), None, 1, INLINE_BUDGET)  # a suspended portal
    assert 0 < _calls(session, lambda: session.fetch(10**6)) < 50


def test_a_thread_run_after_loop_runs_still_sees_an_abort(session):
    for _ in range(3):
        session.execute(POINT, ("q00001",), 10, INLINE_BUDGET)
    session.interrupt("the client left")  # before the statement starts: SQLite would ignore it
    with pytest.raises(SqlError) as info:
        session.execute(LONG, None, 10)
    assert info.value.code == "interrupted" and "the client left" in info.value.message
    # A budget on the loop stops it at the first check too.
    with pytest.raises(SqlError) as info:
        session.execute(LONG, None, 10, INLINE_BUDGET)
    assert info.value.code == "interrupted"


def test_a_finished_statement_s_cursor_kept_for_the_next_holds_no_lock(quake_db):
    session = Database(quake_db).open_session()
    try:
        session.execute("CREATE TEMP TABLE t AS SELECT id FROM quakes", None, 10)
        result = session.execute("SELECT id FROM t LIMIT 3", None, 10)
        assert result.exhausted and len(result.rows) == 3
        # A statement still running on t would make this "database table is locked".
        assert session.connection.execute("DROP TABLE temp.t").fetchall() == []
        session.execute("CREATE TEMP TABLE u (x)", None, 10)
        assert session.execute("INSERT INTO u VALUES (1), (2)", None, 10).changes == 2
        assert session.connection.execute("DROP TABLE temp.u").fetchall() == []
        assert session.execute("SELECT 1 UNION ALL SELECT 2", None, -1).exhausted  # unread: closed, not kept
        assert session._spare is None
        result = session.execute("SELECT id FROM quakes LIMIT 3", None, 2)
        assert not result.exhausted
        session.cancel_statement()
        assert session.execute("SELECT 1", None, 10).rows == [(1,)]
    finally:
        session.close()


# --- the cursor kept between statements answers as a new one would --------

_TEXT = st.text(max_size=30)
_SMALL = st.integers(-2, 12)
_STATEMENTS = [
    ("INSERT INTO t (v, b) VALUES (?, ?)", st.tuples(_TEXT, st.binary(max_size=40))),
    ("INSERT INTO t (id, v) VALUES (?, ?)", st.tuples(_SMALL, _TEXT)),  # constraint errors
    ("UPDATE t SET v = v || ? WHERE id > ?", st.tuples(_TEXT, _SMALL)),
    ("DELETE FROM t WHERE id = ?", st.tuples(_SMALL)),
    ("SELECT id, v, b FROM t ORDER BY id", st.none()),
    ("SELECT count(*), max(id) FROM t", st.none()),
    ("SELECT id FROM t WHERE id > ?", st.tuples(_SMALL)),
    ("SELECT * FROM missing", st.none()),
    ("SELECT ?", st.none()),  # a parameter not supplied
    ("SELECT ?", st.tuples(st.integers(-(2**70), 2**70))),  # out of range past 64 bits
    ("BEGIN", st.none()),
    ("COMMIT", st.none()),
    ("ROLLBACK", st.none()),
    ("CREATE TEMP TABLE IF NOT EXISTS tt (x)", st.none()),
    ("DROP TABLE IF EXISTS temp.tt", st.none()),
    ("INSERT INTO tt SELECT id FROM t", st.none()),
    (LONG, st.none()),
]
_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("execute"),
            st.sampled_from(range(len(_STATEMENTS))).flatmap(lambda i: st.tuples(st.just(i), _STATEMENTS[i][1])),
            st.integers(0, 4),  # batch
            st.sampled_from([1, 20, 1 << 20]),  # max_bytes
            st.sampled_from([0, 1, INLINE_BUDGET]),
            st.booleans(),  # trial
        ),
        st.tuples(st.just("fetch"), st.integers(0, 4), st.sampled_from([1, 20, 1 << 20])),
        st.tuples(st.just("cancel")),
    ),
    max_size=25,
)


def _outcome(session: Session, op, fresh: bool):
    try:
        if op[0] == "cancel":
            session.cancel_statement()
            return None
        if op[0] == "fetch":
            result = session.fetch(op[1], op[2])
        else:
            _, (index, params), batch, max_bytes, budget, trial = op
            if fresh:
                session._spare = None  # what every statement had before: a cursor of its own
            result = session.execute(_STATEMENTS[index][0], params, batch, budget, max_bytes, trial)
    except SqlError as exc:
        return ("error", exc.code)
    except OverBudget:
        return ("over budget",)
    return (result.columns, result.rows, result.exhausted, result.changes, result.last_insert_rowid)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_a_kept_cursor_answers_as_a_new_cursor_would(ops):
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for name in ("kept", "fresh"):
            path = Path(tmp) / f"{name}.sqlite"
            conn = sqlite3.connect(path)
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
            conn.executemany("INSERT INTO t (v) VALUES (?)", [("a",), ("bb",), ("ccc",)])
            conn.commit()
            conn.close()
            sessions.append(Database(path, read_write=True).open_session())
        kept, fresh = sessions
        try:
            for op in ops:
                assert _outcome(kept, op, False) == _outcome(fresh, op, True), op
            kept.cancel_statement()
            fresh.cancel_statement()
            final = "SELECT id, v, b FROM t ORDER BY id"
            assert kept.execute(final, None, 1000).rows == fresh.execute(final, None, 1000).rows
        finally:
            kept.close()
            fresh.close()
