"""The SQL server over real sockets: answers, streaming, concurrency, and every safety rule."""

from __future__ import annotations

import math
import sqlite3
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trionet.framing import EOF
from trionet.serving import receive_event
from trionet.sql import Database, SqlError, connect, protocol, serve_sql
from trionet.sql import engine as engine_module

# An endless query: SQLite counts until something stops it.
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


class RawClient:
    """A client that speaks the wire protocol by hand, as ``nc`` would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.proto = protocol.ClientProtocol()

    @classmethod
    async def open(cls, address) -> "RawClient":
        client = cls(await trio.open_tcp_stream(*address))
        hello = await client.event()
        assert isinstance(hello, protocol.Hello)
        client.hello = hello
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def event(self):
        return await receive_event(self.stream, self.proto)

    async def answer(self) -> list:
        """Events up to and including the next done/error."""
        events = []
        while True:
            event = await self.event()
            events.append(event)
            if isinstance(event, (protocol.Done, protocol.ErrorReply)) or event is EOF:
                return events


@pytest.fixture
async def raw():
    """``client = await raw(address)``: RawClients closed at the end of the test."""
    clients: list[RawClient] = []

    async def open_client(address) -> RawClient:
        client = await RawClient.open(address)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.stream.aclose()


async def test_values_keep_their_storage_class(start_sql):
    _, address = await start_sql()
    async with connect(*address) as conn:
        result = await conn.query("SELECT i, r, t, b, n FROM kinds ORDER BY rowid")
    assert result.columns == ["i", "r", "t", "b", "n"]
    assert result.rows == [(42, 2.5, "text", b"\x00\xffblob", None), (-(2**63), math.inf, "", b"", 1.0)]
    assert isinstance(result.rows[1][4], float)


async def test_positional_and_named_parameters(start_sql):
    _, address = await start_sql()
    async with connect(*address) as conn:
        a = await conn.query("SELECT id FROM quakes WHERE id IN (?, ?) ORDER BY id", ["q00001", "q00002"])
        b = await conn.query("SELECT :x + 1, typeof(:y), :z", {"x": 41, "y": 2.0, "z": b"\x01"})
        with pytest.raises(SqlError) as info:
            await conn.query("SELECT ?", [1, 2])
    assert a.rows == [("q00001",), ("q00002",)]
    assert b.rows == [(42, "real", b"\x01")]
    assert info.value.code == "bad_param"


async def test_bare_sql_line_as_typed_in_nc(raw, start_sql):
    _, address = await start_sql()
    client = await raw(address)
    await client.send(b"SELECT count(*) AS n FROM quakes\r\n")
    events = await client.answer()
    assert events[0] == protocol.Columns(None, ["n"])
    assert events[1] == protocol.Rows(None, [(2000,)])
    assert isinstance(events[2], protocol.Done) and events[2].rows == 1


async def test_pipelined_requests_are_answered_in_order(raw, start_sql):
    _, address = await start_sql()
    client = await raw(address)
    await client.send(
        protocol.encode_request("SELECT 1", id="a")
        + protocol.encode_request("SELECT nope", id="b")
        + protocol.encode_request("SELECT 3", id="c")
    )
    a, b, c = await client.answer(), await client.answer(), await client.answer()
    assert {e.id for e in a} == {"a"} and a[1].rows == [(1,)]
    assert b == [protocol.ErrorReply("b", "sql_error", "no such column: nope")]
    assert {e.id for e in c} == {"c"} and c[1].rows == [(3,)]


async def test_a_pipelining_client_takes_turns_with_the_others(raw, start_sql):
    # Requests found in the buffer run on the event loop and are sent
    # without a scheduler round; each still gets a checkpoint, so a client
    # that pipelines hundreds of them cannot hold the others until it is done.
    # The ready loop answers at most a burst of 8 of them from one read, then
    # hands the connection back to its task.
    server, address = await start_sql()
    order: list = []
    run, answer_now = server.runner.run, server.runner.answer_now

    async def recording_run(conn, state, request):
        order.append(request.id)
        await run(conn, state, request)

    def recording_answer_now(state, request):
        order.append(request.id)
        return answer_now(state, request)

    server.runner.run = recording_run
    server.runner.answer_now = recording_answer_now
    busy, other = await raw(address), await raw(address)
    sql = "SELECT id FROM quakes LIMIT 1"
    await busy.send(protocol.encode_request(sql, id="warm"))  # known now: the next ones run inline
    await busy.answer()
    await busy.send(b"".join(protocol.encode_request(sql, id=i) for i in range(300)))
    await other.send(protocol.encode_request(sql, id="other"))
    assert (await other.answer())[-1] == protocol.Done("other", 1, False, 0, None, mock.ANY)
    assert order.index("other") < 20  # measured: 10 with the ready loop's burst of 8 (10-15 as a thread; 30-82 without give_way)
    for _ in range(300):
        assert isinstance((await busy.answer())[-1], protocol.Done)


async def test_an_answer_the_socket_takes_only_in_part_is_finished_by_the_connections_task(raw, start_sql, partial_sends):
    # The ready loop's direct send leaves the rest in state.unsent for the
    # connection's task, which sends it under the send watchdog and parks again.
    watched = partial_sends
    _, address = await start_sql()
    client = await raw(address)
    answers = []
    for _ in range(4):  # the first through the task, the others from the ready loop: all cut after 5 bytes
        await client.send(protocol.encode_request("SELECT id FROM quakes LIMIT 2", id="q"))
        with trio.fail_after(10):  # a rest that was dropped would leave us waiting
            answers.append(await client.answer())
    for columns, rows, done in answers:  # whole answers, in order
        assert (columns, rows) == (protocol.Columns("q", ["id"]), protocol.Rows("q", [("q00000",), ("q00001",)]))
        assert isinstance(done, protocol.Done) and done.rows == 2
    assert len(watched) == 5  # the hello, then each answer's rest went out under the send watchdog


async def test_client_api_pipelines_across_tasks(start_sql):
    _, address = await start_sql()
    results = {}
    async with connect(*address) as conn:

        async def one(i: int) -> None:
            results[i] = (await conn.query("SELECT ?", [i])).rows

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
    assert results == {i: [(i,)] for i in range(50)}


async def test_large_result_is_streamed_in_batches(raw, start_sql):
    _, address = await start_sql(batch_rows=100)
    client = await raw(address)
    await client.send(b"SELECT id FROM quakes ORDER BY id\n")
    events = await client.answer()
    batches = [e for e in events if isinstance(e, protocol.Rows)]
    assert len(batches) == 20 and all(len(b.rows) == 100 for b in batches)
    assert events[-1].rows == 2000 and not events[-1].truncated


async def test_max_rows_cuts_and_marks_the_result(start_sql):
    _, address = await start_sql(max_rows=150, batch_rows=100)
    async with connect(*address) as conn:
        cut = await conn.query("SELECT id FROM quakes")
        exact = await conn.query("SELECT id FROM quakes LIMIT 150")
        asked = await conn.query("SELECT id FROM quakes", max_rows=10)
        none = await conn.query("SELECT id FROM quakes", max_rows=0)  # not a way round the server's cap
    assert len(cut.rows) == 150 and cut.truncated
    assert len(exact.rows) == 150 and not exact.truncated
    assert len(asked.rows) == 10 and asked.truncated
    assert none.rows == [] and none.truncated and none.columns == ["id"]


async def test_a_client_that_does_not_read_holds_the_server_back(raw, start_sql, monkeypatch):
    """Backpressure: the server fetches a batch only after the previous one was sent."""
    fetched = [0]
    real_fetch = engine_module.Session._fetch

    def counting_fetch(self, *args):
        result = real_fetch(self, *args)
        fetched[0] += len(result.rows)
        return result

    monkeypatch.setattr(engine_module.Session, "_fetch", counting_fetch)
    server, address = await start_sql(max_rows=0, query_timeout=0)
    client = await raw(address)
    # A million rows of 1 kB: a gigabyte if the server did not wait for us.
    await client.send(
        b"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) "
        b"SELECT x, randomblob(1000) FROM c\n"
    )
    for _ in range(3):  # a few reads: the answer is under way
        await client.event()
    await wait_until_sending(server)  # no thread fetching: the server waits for us to read
    previous = fetched[0]
    assert 0 < previous * 1000 < 64 << 20, previous
    # Reading a little lets it go on: the stall was backpressure, not a hang.
    for _ in range(50):
        await client.event()
    with trio.fail_after(10):
        while fetched[0] == previous:
            await trio.sleep(0.05)
            await client.event()


async def test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout(raw, start_sql):
    server, address = await start_sql(max_rows=0, query_timeout=0, send_timeout=0.5)
    client = await raw(address)
    await client.send(b"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, randomblob(1000) FROM c\n")
    with trio.fail_after(10):  # without the send timeout it would wait for us forever
        while server.service.connections:
            await trio.sleep(0.05)


async def wait_until_sending(server) -> None:
    """Wait until every task is blocked and no statement thread is working: the server waits on us.

    No clock involved (it works under a frozen ``mock_clock``).
    """
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if not server._limiter.borrowed_tokens:
            return


async def test_query_timeout_counts_sqlite_time_not_a_slow_reader(raw, start_sql, mock_clock):
    """The clock is frozen (``mock_clock``) and jumped by hand: SQLite's own work takes no
    time, and a slow reader takes a second, twice the query timeout, while the server waits."""
    server, address = await start_sql(query_timeout=0.5, max_rows=0)
    client = await raw(address)
    # 20 MB: far more than the socket buffers hold, so the server must wait for us.
    await client.send(
        b"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) "
        b"SELECT x, randomblob(2000) FROM c\n"
    )
    events = [await client.event(), await client.event()]
    await wait_until_sending(server)
    mock_clock.jump(1.0)  # a slow reader: longer than the query timeout
    events += await client.answer()
    assert isinstance(events[-1], protocol.Done), events[-1]
    assert events[-1].rows == 10000


async def test_malformed_input_gets_errors_and_the_connection_stays_usable(raw, start_sql):
    _, address = await start_sql(max_request_bytes=8000)
    client = await raw(address)
    for line, code in [
        (b"{broken json\n", "bad_request"),
        (b"\xff\xfe\xfd\n", "bad_request"),
        (b'{"sql": "SELECT 1", "params": [[]]}\n', "bad_param"),
        (b"x" * 9000 + b"\n", "request_too_large"),
        (b"SELECT 1; SELECT 2\n", "multiple_statements"),
        (b"DROP TABLE\n", "sql_error"),
        (b'{"sql": "SELECT ?", "params": [' + b"1" * 4301 + b"]}\n", "bad_request"),
        (b'{"id": "\\ud800", "sql": "SELECT ?", "params": ["\\udc00"]}\n', "bad_request"),
    ]:
        await client.send(line)
        (event,) = await client.answer()
        assert isinstance(event, protocol.ErrorReply) and event.code == code, (line[:30], event)
    await client.send(b"SELECT 'still here'\n")
    assert (await client.answer())[1].rows == [("still here",)]


async def test_a_megabyte_line_does_not_hurt_other_clients(raw, start_sql):
    _, address = await start_sql()
    flood = await raw(address)
    async with connect(*address) as conn:
        await flood.send(b"S" * (3 << 20))  # no newline yet: the server must not buffer it all
        assert (await conn.query("SELECT 1")).rows == [(1,)]
        await flood.send(b"\nSELECT 2\n")
        (too_large,) = await flood.answer()
        assert too_large.code == "request_too_large"
        assert (await flood.answer())[1].rows == [(2,)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5))
async def test_random_bytes_never_break_the_server(quake_db, garbage):
    async with trio.open_nursery() as nursery:  # one server per example: fixtures outlive examples
        address = (await nursery.start(serve_sql, Database(quake_db), "127.0.0.1", 0))[0]
        async with await trio.open_tcp_stream(*address) as stream:
            for chunk in garbage:
                await stream.send_all(chunk)
        async with connect(*address) as conn:
            assert (await conn.query("SELECT 40 + 2")).rows == [(42,)]
        nursery.cancel_scope.cancel()


async def test_read_only_server_refuses_writes_but_allows_temp_tables(start_sql):
    _, address = await start_sql()
    async with connect(*address) as conn:
        assert conn.server.read_only
        for sql in [
            "INSERT INTO quakes (id) VALUES ('x')",
            "UPDATE quakes SET mag = 9",
            "DELETE FROM quakes",
            "CREATE TABLE t (a)",
            "DROP TABLE quakes",
            "CREATE INDEX i ON quakes(place)",
            "PRAGMA user_version = 5",
        ]:
            with pytest.raises(SqlError) as info:
                await conn.query(sql)
            assert info.value.code == "read_only", sql
        await conn.query("CREATE TEMP TABLE scratch AS SELECT id FROM quakes LIMIT 3")
        assert (await conn.query("SELECT count(*) FROM scratch")).rows == [(3,)]
        assert (await conn.query("SELECT count(*) FROM quakes")).rows == [(2000,)]


@pytest.mark.parametrize("read_write", [False, True])
async def test_attach_detach_vacuum_into_and_extensions_are_denied(start_sql, tmp_path, read_write):
    _, address = await start_sql(read_write=read_write)
    target = tmp_path / "copy.sqlite"
    async with connect(*address) as conn:
        for sql in [
            f"ATTACH DATABASE '{tmp_path / 'other.sqlite'}' AS other",
            "DETACH DATABASE main",
            f"VACUUM INTO '{target}'",
            "SELECT load_extension('/nonexistent')",
            "PRAGMA writable_schema = 1",
            "PRAGMA journal_mode = DELETE",
        ]:
            with pytest.raises(SqlError) as info:
                await conn.query(sql)
            assert info.value.code == "denied", (sql, info.value)  # the authorizer's refusal, nothing else
    assert not target.exists()
    assert not (tmp_path / "other.sqlite").exists()


async def test_query_timeout_interrupts_and_the_connection_goes_on(start_sql):
    _, address = await start_sql(query_timeout=0.5)
    async with connect(*address) as conn:
        with trio.fail_after(10):
            with pytest.raises(SqlError) as info:
                await conn.query(ENDLESS)
        assert info.value.code == "timeout"
        assert (await conn.query("SELECT 1")).rows == [(1,)]


async def wait_until_busy(server, requests: int = 1) -> None:
    """Wait until the server has taken ``requests`` requests on one of its connections."""
    with trio.fail_after(5):
        while not any(conn.requests >= requests for conn in server.service.connections):
            await trio.sleep(0.01)


async def test_a_slow_query_does_not_stall_other_clients(start_sql):
    server, address = await start_sql(query_timeout=10.0)
    done: list[str] = []

    async def slow() -> None:
        async with connect(*address) as conn:
            with pytest.raises(SqlError):
                await conn.query(ENDLESS)  # would run its full 10 s, then time out
        done.append("slow")

    async def quick() -> None:
        async with connect(*address) as conn:
            for i in range(100):
                assert (await conn.query("SELECT mag FROM quakes WHERE id = ?", [f"q{i:05d}"])).rows
        done.append("quick")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await wait_until_busy(server)  # the slow query is running
        await quick()
        nursery.cancel_scope.cancel()  # the slow client leaves; the server interrupts its query
    assert done == ["quick"]  # a stalled server would have answered quick only after slow's 10 s


async def test_a_client_that_leaves_mid_query_has_it_interrupted(raw, start_sql):
    server, address = await start_sql(query_timeout=0)  # only the disconnect can stop it
    client = await raw(address)
    await client.send(ENDLESS.encode() + b"\n")
    await wait_until_busy(server)
    await client.stream.aclose()
    with trio.fail_after(5):  # without the interrupt the worker thread would count forever
        while server.service.connections:
            await trio.sleep(0.01)


async def test_requests_pipelined_behind_a_disconnect_are_dropped(raw, start_sql):
    server, address = await start_sql(query_timeout=0, read_write=True)
    client = await raw(address)
    await client.send(b"CREATE TABLE log (n)\n")
    await client.answer()
    # An endless query, then a write, then the client leaves: the write must not run.
    await client.send(ENDLESS.encode() + b"\nINSERT INTO log VALUES (1)\n")
    await wait_until_busy(server, requests=2)  # the endless query runs
    await client.stream.send_eof()
    with trio.fail_after(5):
        while server.service.connections:
            await trio.sleep(0.01)
    async with connect(*address) as conn:
        assert (await conn.query("SELECT count(*) FROM log")).rows == [(0,)]


async def test_transactions_belong_to_their_connection_and_roll_back_on_disconnect(start_sql, quake_db):
    _, address = await start_sql(read_write=True)
    async with connect(*address) as other:
        async with connect(*address) as owner:
            await owner.query("BEGIN")
            inserted = await owner.query("INSERT INTO quakes (id, mag) VALUES ('new1', 9.9)")
            assert inserted.changes == 1
            assert (await owner.query("SELECT count(*) FROM quakes")).rows == [(2001,)]
            assert (await other.query("SELECT count(*) FROM quakes")).rows == [(2000,)]
        # the owner left without COMMIT: its transaction is gone, and so is its lock
        with trio.fail_after(5):
            await other.query("INSERT INTO quakes (id) VALUES ('new2')")
        assert (await other.query("SELECT count(*) FROM quakes WHERE id LIKE 'new%'")).rows == [(1,)]
    check = sqlite3.connect(quake_db)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert check.execute("SELECT id FROM quakes WHERE id LIKE 'new%'").fetchall() == [("new2",)]


def test_read_write_sessions_commit_durably(quake_db):
    """WAL with synchronous=FULL: the WAL is fsynced at every COMMIT, so a write the client was
    told is done survives a power cut, not only a kill -9 (which the OS page cache survives)."""
    database = Database(quake_db, read_write=True)
    session = database.open_session()
    try:
        session.connection.set_authorizer(None)  # clients may not read the setting; the test may
        assert session.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert session.connection.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 is FULL
    finally:
        session.close()


async def test_writers_are_serialised(start_sql):
    _, address = await start_sql(read_write=True)
    async with connect(*address) as a, connect(*address) as b:
        await a.query("CREATE TABLE counter (n INTEGER)")
        await a.query("INSERT INTO counter VALUES (0)")

        async def bump(conn) -> None:
            for _ in range(50):
                await conn.query("UPDATE counter SET n = n + 1")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bump, a)
            nursery.start_soon(bump, b)
        assert (await a.query("SELECT n FROM counter")).rows == [(100,)]


async def test_constraint_errors_have_their_code(start_sql):
    _, address = await start_sql(read_write=True)
    async with connect(*address) as conn:
        with pytest.raises(SqlError) as info:
            await conn.query("INSERT INTO quakes (id) VALUES ('q00001')")
    assert info.value.code == "constraint"


async def test_oversized_values_are_refused(start_sql):
    _, address = await start_sql()
    async with connect(*address) as conn:
        with pytest.raises(SqlError) as info:
            await conn.query("SELECT length(randomblob(100000000))")
    assert info.value.code == "too_big"


async def _events_until_close(client: RawClient) -> list:
    events = []
    with trio.fail_after(20):
        while (event := await client.event()) is not EOF:
            events.append(event)
    return events


async def test_shutdown_lets_the_running_query_finish(raw, start_sql):
    server, address = await start_sql(query_timeout=1.0)
    busy, idle = await raw(address), await raw(address)
    await busy.send(ENDLESS.encode() + b"\n")
    await wait_until_busy(server)
    server.shutdown(grace=10)
    # The running query ends on its own (its timeout, within the grace), then bye.
    *_, answer, bye = await _events_until_close(busy)
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "timeout", answer
    assert bye == protocol.Bye("server shutting down", "shutdown")
    assert await _events_until_close(idle) == [protocol.Bye("server shutting down", "shutdown")]
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*address)  # no longer accepting


async def test_shutdown_grace_interrupts_what_runs_too_long(raw, start_sql):
    server, address = await start_sql(query_timeout=0)
    client = await raw(address)
    await client.send(ENDLESS.encode() + b"\n")
    await wait_until_busy(server)
    server.shutdown(grace=2)
    # Interrupted a second before the grace ends, so the client still hears why.
    *_, answer, bye = await _events_until_close(client)
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "interrupted", answer
    assert bye == protocol.Bye("server shutting down", "shutdown")
    with trio.fail_after(5):
        while server.service.connections:
            await trio.sleep(0.01)


async def test_a_long_read_that_looks_cheap_falls_back_to_a_thread_and_the_loop_stays_free(raw, start_sql):
    """INLINE_BUDGET: a read classified as may-run-inline that runs long is stopped on the event
    loop and finished in a worker thread, while another client is answered."""
    server, address = await start_sql(query_timeout=0)
    # Only count() and a recursive CTE: cheap-looking. The bound is a parameter, so one
    # SQL text is classified by a quick run and then run long.
    counting = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT count(*) FROM c"
    long_run = await raw(address)
    await long_run.send(protocol.encode_request(counting, [10], id="classify"))
    assert (await long_run.answer())[-2].rows == [(10,)]
    assert server.database.may_run_inline(counting)
    order: list[str] = []

    async def run_long() -> None:
        await long_run.send(protocol.encode_request(counting, [3_000_000], id="long"))
        events = await long_run.answer()
        assert events[-2].rows == [(3_000_000,)], events[-2:]
        order.append("long")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_long)
        await wait_until_busy(server, requests=2)
        # Busy means taken, not yet in a thread: wait for the fall-back (or the long answer).
        with trio.fail_after(10):
            while not (server.inline_fallbacks or order):
                await trio.sleep(0.005)
        async with connect(*address) as other:
            assert (await other.query("SELECT 1")).rows == [(1,)]
        order.append("other")
    assert order == ["other", "long"]  # the other answer came while the long one ran
    assert server.inline_fallbacks == 1
