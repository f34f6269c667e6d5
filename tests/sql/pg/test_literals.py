"""A simple Query's literals bound as parameters: the rule, and answers identical to the text's, byte for byte."""

from __future__ import annotations

import sqlite3

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trionet.sql.pg import executor
from trionet.sql.pg.executor import Executor, _shape
from trionet.sql.pg.literals import MAX_BOUND, bind_literals, bind_one_number, rebind
from trionet.sql.session import Session

from .conftest import make_db, startup_packet, typed
from .test_hostile import read_until

# --- the rule ------------------------------------------------------------------------------


def test_a_point_select_binds_its_literal():
    assert bind_literals("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;") == (
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?1;",
        (48213,),
    )
    assert bind_literals("select a from t where (b)>='it''s' and c<>9223372036854775807 -- = 5") == (
        "select a from t where (b)>=?1 and c<>?2 -- = 5",
        ("it's", 9223372036854775807),
    )
    # What does not qualify stays in the text beside what does.
    assert bind_literals("select a from t where r > 1.5 and i = 5abc and s = 'x' and b<<2 and i = 7") == (
        "select a from t where r > 1.5 and i = 5abc and s = ?1 and b<<2 and i = ?2",
        ("x", 7),
    )


@pytest.mark.parametrize(
    "sql",
    [
        "select a from t order by 2",  # a column index
        "select a from t group by 1 limit 5 offset 2",
        "select 5, 'x' from t",  # the select list names its columns
        "select a from t where b = -5",  # a sign is an operator
        "select a from t where b = +5",
        "select a from t where b = 1.5",  # a real: SQLite rounds it its own way
        "select a from t where b = 1e3",
        "select a from t where b = 9223372036854775808",  # beyond int64: a real to SQLite
        "select a from t where b = 0x10",  # hexadecimal: not a name, not a plain number
        "select a from t where b = X'00'",  # a blob
        "select a from t where b = E'a'",  # PostgreSQL's escape string: SQLite's syntax error
        "select a from t where b = \"x\"",  # a name (or SQLite's double-quoted string)
        "select a from t where b like 'a%'",  # the LIKE optimisation reads the pattern
        "select a from t where b between 1 and 5",
        "select a from t where b in (1, 2)",
        "select a from t where b << 5",  # a shift, not <
        "select a from t where b -> 5",  # JSON
        "select a from t where b = (5)",
        "select a from t where b = /* c */ 5",
        "select a from t where 5 = b",  # before the operator: left as it is
        "select a from t where b = 5abc",  # a number run into a name: SQLite's error, untouched
        "select a from t where b = 'x'y",
        "select a from t where b = 't'.b",  # SQLite reads a string before a dot as a table's name
        "select a from t where b = 't' . b",
        "select a from t where b = ? and c = 5",  # parameters of its own
        "select a from t where b = :b and c = 5",
        "select a from t where b = @b and c = 5",
        "select a from t where b = 'unterminated",
        "select a from t where b = 1 and c = '",
    ],
)
def test_what_a_parameter_would_change_is_left_as_it_is(sql):
    assert bind_literals(sql) is None


def test_too_many_literals_are_left_as_they_are():
    where = " and ".join(f"b = {i}" for i in range(MAX_BOUND))
    assert bind_literals(f"select a from t where {where}") is not None
    assert bind_literals(f"select a from t where {where} and c = 1") is None


def _as_literal(value: int | str) -> str:
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


@given(st.text(alphabet=st.sampled_from("ab1 '\"=<>!-.()?:xX\n/*e;"), max_size=40) | st.text(max_size=30))
@example("a = '' and b = ''''")
@example("a = 007")
def test_the_values_put_back_give_the_same_shape(sql):
    found = bind_literals(sql)
    if found is None:
        return
    text, values = found
    assert values and all(isinstance(v, str) or 0 <= v < 1 << 63 for v in values)
    for i in range(len(values), 0, -1):  # ?10 before ?1
        assert text.count(f"?{i}") >= 1
        text = text.replace(f"?{i}", _as_literal(values[i - 1]))
    assert _shape(text) == _shape(sql)


_FRAGMENT = st.text(alphabet=st.sampled_from("ab1 '\"`[]=<>!-.()?:xX\n/*e;"), max_size=12)
_VALUE = st.integers(0, (1 << 63) - 1) | st.text(alphabet=st.sampled_from("ab '\"`[-/*\n?1.e"), max_size=8)


def _slots(max_size: int):
    """Templates: each slot a fragment, a comparison operator and two values to put after it."""
    operators = st.sampled_from(["=", " = ", "<>", ">=  "])
    return st.lists(st.tuples(_FRAGMENT, operators, _VALUE, _VALUE), min_size=1, max_size=max_size)


@given(_slots(4), _FRAGMENT)
@example([("SELECT abalance FROM pgbench_accounts WHERE aid ", "= ", 1, 99999)], ";")
@example([("a ", "= ", "x -- y", 5), (" and b /* ", "= ", "*/", "'")], " -- z")
def test_texts_that_bind_to_one_text_have_one_shape(slots, tail):
    # The simple-Query fast path looks a text's shape up by its bound text
    # (ConnState.bound_shapes): right only if this holds.
    a = "".join(f + op + _as_literal(x) for f, op, x, _ in slots) + tail
    b = "".join(f + op + _as_literal(y) for f, op, _, y in slots) + tail
    bound_a, bound_b = bind_literals(a), bind_literals(b)
    if bound_a is not None and bound_b is not None and bound_a[0] == bound_b[0]:
        assert _shape(a) == _shape(b)


_DIGITS = st.text(alphabet=st.sampled_from("0123456789 x.e-'\u0663\u00b2"), min_size=1, max_size=22)


@given(_slots(3), _FRAGMENT, st.integers(0, (1 << 64)) | _DIGITS)
@example([("SELECT abalance FROM pgbench_accounts WHERE aid ", "= ", 1, 1)], ";", 99999)
@example([("a ", "= ", 5, 5)], "", "9" * 19)
@example([("a ", "= ", 5, 5)], "", "\u0663")
@example([("a ", "= ", 5, 5)], " ;", "0" * 19 + "1")  # 20 digits: a real to SQLite, whatever their value
@example([("a ", "= ", 5, 5)], "", "12.5")
def test_a_text_rebound_by_its_memo_binds_as_the_scan_binds_it(slots, tail, other):
    sql = "".join(f + op + _as_literal(x) for f, op, x, _ in slots) + tail
    found, memo = bind_one_number(sql)
    assert found == bind_literals(sql)
    if memo is None:
        assert found is None or len(found[1]) != 1 or not isinstance(found[1][0], int)
        return
    head, rest, text = memo
    assert int(sql[len(head) : len(sql) - len(rest)]) == found[1][0]  # the memo cuts around the integer bound
    again = head + str(other) + rest
    rebound = rebind(again, memo)
    assert rebound is None or rebound == bind_literals(again)
    if isinstance(other, int) and other < 1 << 63:
        assert rebound == (text, (other,))  # another integer: always rebound


# --- identical answers in SQLite -----------------------------------------------------------

_SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB);"
_ROWS = [
    (1, 0, 0.0, "", b""),
    (2, -5, -5.0, "-5", b"-5"),
    (3, 5, 5.5, "5", b"5"),
    (4, 9223372036854775807, 1e300, "it's", b"\x00\xff"),
    (5, -9223372036854775808, -1e-300, "ünï ☃", "ünï".encode()),
    (6, None, None, None, None),
    (7, 42, 42.0, "42", b"42"),
    (8, 7, 0.1, "a'b''c", b"'"),
    (9, 10, 10.0, "Z", b"Z"),
]
_INSERT = "".join(
    f"INSERT INTO t VALUES ({i}, {'NULL' if n is None else n}, {'NULL' if r is None else repr(r)}, "
    f"{'NULL' if s is None else _as_literal(s)}, {'NULL' if b is None else 'X' + repr(b.hex())});"
    for i, n, r, s, b in _ROWS
)
_COLUMNS = ["id", "i", "r", "s", "b"]
_OPERATORS = ["=", "==", "<>", "!=", "<", ">", "<=", ">="]
_literals = st.one_of(
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.sampled_from([0, 5, -5, 42, (1 << 63) - 1, 1 << 63, -(1 << 63)]).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=6).map(_as_literal),
    st.sampled_from(["''", "'5'", "'-5'", "'42'", "'it''s'", "'Z'", "'5.5'", "'t'.s", "'t' . i"]),
    st.binary(max_size=3).map(lambda b: f"X'{b.hex()}'"),
)
_selects = st.builds(
    lambda cols, col, op, lit, col2, op2, lit2, order: (
        f"SELECT {cols} FROM t WHERE {col} {op} {lit}"
        + ("" if col2 is None else f" AND {col2}{op2}{lit2}")
        + (" ORDER BY id" if order else "")
    ),
    st.sampled_from(["id, i", "s, b", "r", "*", "i AS x, t.s"]),
    st.sampled_from(_COLUMNS),
    st.sampled_from(_OPERATORS),
    _literals,
    st.none() | st.sampled_from(_COLUMNS),
    st.sampled_from(_OPERATORS),
    _literals,
    st.booleans(),
)


@pytest.fixture(scope="module")
def table():
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA + _INSERT)
    yield conn
    conn.close()


def _answer(conn: sqlite3.Connection, sql: str, params=()) -> tuple:
    try:
        cursor = conn.execute(sql, params)
        return [d[0] for d in cursor.description], [tuple((type(v), v) for v in row) for row in cursor]
    except sqlite3.Error as exc:
        return ("error", type(exc).__name__)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_selects)
def test_bound_literals_answer_what_the_text_answers(table, sql):
    found = bind_literals(sql)
    if found is None:
        return
    assert _answer(table, found[0], found[1]) == _answer(table, sql)


# --- identical answers on the wire ---------------------------------------------------------


async def _session(address) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(startup_packet(user="u", database="t"))
    assert (await read_until(stream, "Z"))[-1] == ("Z", b"I")
    return stream


@pytest.fixture
def bound(monkeypatch):
    """What the fast path bound for each simple Query it tried: by the last text's memo, or by a scan."""
    results: list[tuple | None] = []
    rebind, scan = executor.rebind, executor.bind_one_number

    def rebind_spy(sql, memo):
        found = rebind(sql, memo)
        if found is not None:
            results.append(found)
        return found

    def scan_spy(sql):
        found = scan(sql)
        results.append(found[0])
        return found

    monkeypatch.setattr(executor, "rebind", rebind_spy)
    monkeypatch.setattr(executor, "bind_one_number", scan_spy)
    return results


@pytest.fixture
def ran(monkeypatch):
    """The SQL text of every statement a session ran."""
    texts: list[str] = []
    original = Session.execute

    def spy(self, sql, *args, **kwargs):
        texts.append(sql)
        return original(self, sql, *args, **kwargs)

    monkeypatch.setattr(Session, "execute", spy)
    return texts


@pytest.fixture
def slow_only(monkeypatch):
    """Set ``slow_only[0]`` to send simple Queries down the slow path (the text as it came)."""
    flag = [False]
    original = Executor._fast_query

    def switch(self, st_, sql):
        return False if flag[0] else original(self, st_, sql)

    monkeypatch.setattr(Executor, "_fast_query", switch)
    return flag


async def test_bound_runs_send_the_bytes_the_text_sends(start_pg, tmp_path, bound, slow_only):
    db = make_db(tmp_path / "t.sqlite", _SCHEMA + _INSERT)
    _, address = await start_pg(db=db)
    stream = await _session(address)

    async def query(sql: str) -> list[tuple[str, bytes]]:
        await stream.send_all(typed(b"Q", sql.encode() + b"\0"))
        return await read_until(stream, "Z")

    def exchange(sql: str) -> None:
        slow_only[0] = True
        slow = trio.from_thread.run(query, sql)  # the text as it came; its shape now has a plan
        slow_only[0] = False
        assert trio.from_thread.run(query, sql) == slow  # bound where bind_literals says

    @settings(max_examples=150, deadline=None, database=None)
    @given(_selects)
    def check(sql):
        exchange(sql)

    async with stream:
        await trio.to_thread.run_sync(check)
    binds = [b for b in bound if b is not None]
    assert len(binds) > 50  # most examples have a literal that binds


async def test_an_index_on_a_literal_keeps_the_text(start_pg, tmp_path, bound):
    db = make_db(tmp_path / "t.sqlite", _SCHEMA + _INSERT + "CREATE INDEX few ON t(s) WHERE i > 5;")
    _, address = await start_pg(db=db)
    stream = await _session(address)
    async with stream:
        for n in (1, 2, 3):
            await stream.send_all(typed(b"Q", f"select s from t where i > {n}\0".encode()))
            assert [k for k, _ in await read_until(stream, "Z")][-2:] == ["C", "Z"]
    assert bound == []  # the fast path ran both later texts as they came


async def test_a_column_named_by_a_bound_text_is_not_bound_again(start_pg, tmp_path, ran):
    # A select-list subquery has its column's declared type, and its text as the column's name.
    db = make_db(tmp_path / "t.sqlite", _SCHEMA + _INSERT)
    _, address = await start_pg(db=db)
    stream = await _session(address)
    answers = []
    async with stream:
        for n in (2, 3, 3, 3):
            await stream.send_all(typed(b"Q", f"select (select s from t where id = {n}) from t where id = 1\0".encode()))
            answers.append(await read_until(stream, "Z"))
    assert answers[1] == answers[2] == answers[3] and b"id = 3" in answers[1][0][1]
    assert sum("?1" in sql for sql in ran) == 1  # tried bound once, then the shape keeps its text
