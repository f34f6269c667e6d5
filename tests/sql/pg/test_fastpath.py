"""The fast path of a prepared read: a whole [Parse] Bind [Describe] Execute Sync answered in one step.

It must answer byte for byte what the messages one by one answer, and give
way to them whenever anything is unusual.
"""

from __future__ import annotations

import pytest

from trionet.sql.pg.executor import Executor

from .conftest import error_fields, typed
from .test_hostile import _close_streams, read_until, start_session  # noqa: F401 (the fixture closes the streams)
from .test_protocol import SYNC, _bind, _describe_portal, _execute, _parse

# --- the server ------------------------------------------------------------------------


@pytest.fixture
def fast_runs(monkeypatch):
    """The results of Executor._fast_run, in order (True: answered by the fast path)."""
    results: list[bool] = []
    original = Executor._fast_run

    def spy(self, st_, run):
        results.append(original(self, st_, run))
        return results[-1]

    monkeypatch.setattr(Executor, "_fast_run", spy)
    return results


async def _round_trip(stream, data: bytes) -> list[tuple[str, bytes]]:
    await stream.send_all(data)
    return await read_until(stream, "Z")


async def test_prepared_runs_answer_as_the_slow_path_does(start_pg, fast_runs):
    _, address = await start_pg()
    stream = await start_session(address)
    await _round_trip(stream, _parse("select id, mag, nst, time from quakes where nst = $1", name="s", oids=(20,)) + SYNC)
    for results in ((), (1,), (0, 1, 0, 1)):
        run = _bind(b"3", statement="s", results=results) + _describe_portal() + _execute() + SYNC
        answers = [await _round_trip(stream, run) for _ in range(3)]
        assert answers[0] == answers[1] == answers[2]
        kinds = [k for k, _ in answers[0]]
        assert kinds[:2] == ["2", "T"] and kinds[-2:] == ["C", "Z"] and kinds.count("D") >= 2
        assert answers[0][-2] == ("C", f"SELECT {kinds.count('D')}\0".encode())
    # The first run of each format is the slow one only the first time: the plan is the statement's.
    assert fast_runs == [False, True, True, True, True, True, True, True, True]


async def test_pgbench_shaped_runs_answer_as_the_slow_path_does(start_pg, fast_runs):
    # One column, and a parameter whose type the client left to the server (as pgbench's): the
    # fast path decodes its text and encodes one value a row itself; the first run of each is the slow path's.
    _, address = await start_pg()
    stream = await start_session(address)
    await _round_trip(stream, _parse("select id from quakes where nst = $1", name="P_0") + SYNC)
    for value in (b"3", "é".encode(), b"\xff"):
        for results in ((), (0,), (1,)):
            run = _bind(value, statement="P_0", results=results) + _describe_portal() + _execute() + SYNC
            answers = [await _round_trip(stream, run) for _ in range(2)]
            assert answers[0] == answers[1]
    # b"\xff" is not UTF-8: the slow path's error each time (22021), never a fast answer.
    assert [k for k, _ in answers[0]] == ["E", "Z"] and error_fields(answers[0][0][1])["C"] == "22021"
    assert fast_runs == [False] + [True] * 11 + [False] * 6


async def test_fast_runs_tag_each_run_with_its_own_row_count(start_pg, fast_runs):
    # The last CommandComplete is remembered per connection: a run with another count gets its own tag.
    _, address = await start_pg()
    stream = await start_session(address)
    await _round_trip(stream, _parse("select id from quakes where nst < $1", name="P_0") + SYNC)
    counts = []
    for value in (b"3", b"3", b"0", b"3", b"4", b"0", b"4"):
        answer = await _round_trip(stream, _bind(value, statement="P_0") + _describe_portal() + _execute() + SYNC)
        kinds = [k for k, _ in answer]
        counts.append(kinds.count("D"))
        assert answer[-2] == ("C", f"SELECT {counts[-1]}\0".encode())
    assert len(set(counts)) == 3 and fast_runs[1:] == [True] * 6


async def test_extended_mode_runs_reuse_the_unnamed_statements_plan(start_pg, fast_runs):
    _, address = await start_pg()
    stream = await start_session(address)
    answers = []
    for mag in (b"3.5", b"3.5", b"4.5", b"3.5"):
        run = _parse("select count(*) as n, place from quakes where mag < $1", oids=(701,)) + _bind(mag)
        answers.append(await _round_trip(stream, run + _describe_portal() + _execute() + SYNC))
    assert answers[0] == answers[1] == answers[3] != answers[2]
    assert [k for k, _ in answers[0]] == ["1", "2", "T", "D", "C", "Z"]
    assert fast_runs == [False, True, True, True]


async def test_a_column_typed_by_its_values_never_takes_the_fast_path(start_pg, fast_runs):
    # max(mag) has no declared type and no rule: its type is that of the
    # value it returns (NULL here, then a real), so every run is described anew.
    _, address = await start_pg()
    stream = await start_session(address)
    await _round_trip(stream, _parse("select max(mag) from quakes where mag < $1", name="s", oids=(701,)) + SYNC)
    descriptions = []
    for mag in (b"0", b"0", b"4"):
        answer = await _round_trip(stream, _bind(mag, statement="s") + _describe_portal() + _execute() + SYNC)
        descriptions.append(answer[1])
    assert descriptions[0] == descriptions[1] != descriptions[2]
    assert fast_runs == [False, False, False]


async def test_unusual_runs_fall_back_to_the_messages_one_by_one(start_pg, fast_runs):
    _, address = await start_pg(max_rows=5)
    stream = await start_session(address)
    await _round_trip(stream, _parse("select id from quakes where nst > $1 order by id", name="s", oids=(20,)) + SYNC)
    ok = _bind(b"100000", statement="s") + _execute() + SYNC  # no rows
    assert [k for k, _ in await _round_trip(stream, ok)] == ["2", "C", "Z"]
    assert [k for k, _ in await _round_trip(stream, ok)] == ["2", "C", "Z"]
    assert fast_runs == [False, True]
    # A parameter that is not an int8: the error, then ReadyForQuery, as message by message.
    answer = await _round_trip(stream, _bind(b"x", statement="s") + _execute() + SYNC)
    assert [k for k, _ in answer] == ["E", "Z"] and error_fields(answer[0][1])["C"] == "22P02"
    # A row limit that suspends the portal.
    answer = await _round_trip(stream, _bind(b"0", statement="s") + _execute(2) + SYNC)
    assert [k for k, _ in answer] == ["2", "D", "D", "s", "Z"]
    # More rows than --max-rows: 54000, every time.
    for _ in range(2):
        answer = await _round_trip(stream, _bind(b"0", statement="s") + _execute() + SYNC)
        assert [k for k, _ in answer] == ["2"] + ["D"] * 5 + ["E", "Z"]
        assert error_fields(answer[-2][1])["C"] == "54000"
    assert fast_runs[2:] == [False, False, False, False]
    # And the statement still runs fast afterwards.
    assert [k for k, _ in await _round_trip(stream, ok)] == ["2", "C", "Z"]
    assert fast_runs[-1] is True


async def test_a_failed_transaction_block_refuses_a_prepared_run(start_pg, fast_runs):
    _, address = await start_pg()
    stream = await start_session(address)
    await _round_trip(stream, _parse("select count(*) from quakes where nst = $1", name="s", oids=(20,)) + SYNC)
    run = _bind(b"1", statement="s") + _execute() + SYNC
    await _round_trip(stream, run)
    await _round_trip(stream, typed(b"Q", b"begin\0"))
    await _round_trip(stream, typed(b"Q", b"select nosuchcolumn from quakes\0"))
    answer = await _round_trip(stream, run)
    assert [k for k, _ in answer] == ["2", "E", "Z"] and answer[-1] == ("Z", b"E")
    assert error_fields(answer[1][1])["C"] == "25P02"
    await _round_trip(stream, typed(b"Q", b"rollback\0"))
    assert [k for k, _ in await _round_trip(stream, run)] == ["2", "D", "C", "Z"]
    assert fast_runs == [False, False, True]


@pytest.fixture
def fast_queries(monkeypatch):
    """The results of Executor._fast_query, in order (True: answered by the fast path)."""
    results: list[bool] = []
    original = Executor._fast_query

    def spy(self, st_, sql):
        results.append(original(self, st_, sql))
        return results[-1]

    monkeypatch.setattr(Executor, "_fast_query", spy)
    return results


async def test_a_simple_query_of_a_known_shape_answers_as_the_slow_path_does(start_pg, fast_queries):
    _, address = await start_pg()
    stream = await start_session(address)

    async def query(sql: str) -> list[tuple[str, bytes]]:
        return await _round_trip(stream, typed(b"Q", sql.encode() + b"\0"))

    first = await query("select id, mag, place from quakes where nst = 7 order by id")
    again = await query("select id, mag, place from quakes where nst = 7 order by id")
    other = await query("select id, mag, place from quakes where nst = 8 order by id")
    assert first == again and first[0] == other[0] and first != other
    assert [k for k, _ in first[-2:]] == ["C", "Z"] and first[-2][1] == f"SELECT {len(first) - 3}\0".encode()
    assert fast_queries == [False, True, True]
    # Another text of the same statement (a semicolon) is another shape: the slow path, same answer.
    assert await query("select id, mag, place from quakes where nst = 7 order by id;") == first
    assert fast_queries.pop() is False
    # An expression column's type may follow its literal (1, 'a'): such a shape never has a plan.
    one = await query("select id, 1 from quakes where nst = 7")
    text = await query("select id, 'a' from quakes where nst = 7")
    assert one[0] != text[0]
    # Two statements, or an error, take the slow path.
    assert [k for k, _ in await query("select id, mag, place from quakes where nst = 9; select 2")].count("Z") == 1
    answer = await query("select id, mag, place from quakes where nst = 7 and nosuch = 1")
    assert [k for k, _ in answer] == ["E", "Z"] and error_fields(answer[0][1])["C"] == "42703"
    assert fast_queries[3:] == [False, False, False, False]


async def test_a_statement_that_is_not_a_read_forgets_the_plans(start_pg, fast_queries, fast_runs):
    _, address = await start_pg()
    stream = await start_session(address)
    query = typed(b"Q", b"select id from quakes where nst = 7\0")
    await _round_trip(stream, _parse("select id from quakes where nst = $1", name="s", oids=(20,)) + SYNC)
    run = _bind(b"7", statement="s") + _execute() + SYNC
    for _ in range(2):
        await _round_trip(stream, query)
        await _round_trip(stream, run)
    # It may create or drop a table (a temporary one, here): the declared types may change.
    answer = await _round_trip(stream, typed(b"Q", b"create temp table t(x integer)\0"))
    assert [k for k, _ in answer] == ["C", "Z"]
    for _ in range(2):
        await _round_trip(stream, query)
        await _round_trip(stream, run)
    assert fast_queries == [False, True, False, False, True]
    assert fast_runs == [False, True, False, True]


async def test_the_shapes_remembered_by_bound_text_stay_few_short_and_useful(start_pg, monkeypatch):
    # ConnState.bound_shapes: a client sending endless distinct texts must not grow it.
    states = []
    original = Executor._fast_query

    def spy(self, st_, sql):
        states.append(st_)
        return original(self, st_, sql)

    monkeypatch.setattr(Executor, "_fast_query", spy)
    _, address = await start_pg()
    stream = await start_session(address)

    async def query(sql: str) -> list[tuple[str, bytes]]:
        return await _round_trip(stream, typed(b"Q", sql.encode() + b"\0"))

    await query("select id from quakes where nst = 7 and mag > 1.5")  # the slow path: its shape gets a plan
    for n in range(300):  # the real is not bound: 300 bound texts of one shape
        answer = await query(f"select id from quakes where nst = {n % 9} and mag > {n}.5")
        assert [k for k, _ in answer[-2:]] == ["C", "Z"]
    for _ in range(2):  # a long text: its shape gets a plan, its bound text is not kept
        await query("select id from quakes where nst = 3" + " " * 2000)
    for _ in range(2):  # an expression column: this shape never gets a plan, its bound text is not kept
        await query("select id, 1 from quakes where nst = 3")
    shapes = states[-1].bound_shapes
    assert 0 < len(shapes) <= 256
    assert all(len(text) <= 1024 and shape in states[-1].query_plans for text, shape in shapes.items())
    assert "select id from quakes where nst = ?1 and mag > 299.5" in shapes
