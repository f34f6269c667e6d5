"""Hostile and broken clients over real sockets: each one ends alone, and the server serves the next."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.lowlevel

from trionet.sql.engine import Database
from trionet.sql.pg import serve_pg

from .conftest import error_fields, read_messages, startup_packet, typed

_OPEN: list[trio.SocketStream] = []


@pytest.fixture(autouse=True)
async def _close_streams():
    """Every stream a test opened is closed at its end (an unclosed socket warns, and warnings fail)."""
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


async def connect(address) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*address)
    _OPEN.append(stream)
    return stream


async def read_until(stream, kinds: str, max_bytes: int = 1 << 20) -> list[tuple[str, bytes]]:
    """Read backend messages until one of ``kinds`` arrives (or the server closes)."""
    data = b""
    while True:
        with trio.fail_after(10):
            chunk = await stream.receive_some(65536)
        data += chunk
        complete = _complete_prefix(data)
        messages = read_messages(data[:complete])
        if not chunk or any(kind in kinds for kind, _ in messages):
            return messages
        assert len(data) < max_bytes


def _complete_prefix(data: bytes) -> int:
    i = 0
    while i + 5 <= len(data):
        (length,) = struct.unpack_from("!i", data, i + 1)
        if i + 1 + length > len(data):
            break
        i += 1 + length
    return i


async def start_session(address) -> trio.SocketStream:
    stream = await connect(address)
    await stream.send_all(startup_packet(user="u", database="quakes"))
    messages = await read_until(stream, "Z")
    assert messages[-1] == ("Z", b"I")
    return stream


async def assert_serving(address) -> None:
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"select count(*) from quakes\0"))
    messages = await read_until(stream, "Z")
    assert ("D", b"\0\x01\0\0\0\x042000") in messages
    await stream.aclose()


async def test_greeting_and_key(start_pg):
    _, address = await start_pg()
    stream = await connect(address)
    await stream.send_all(startup_packet(user="u", database="quakes", application_name="raw"))
    messages = await read_until(stream, "Z")
    kinds = [k for k, _ in messages]
    assert kinds[0] == "R" and kinds[-2:] == ["K", "Z"]
    statuses = dict(body.rstrip(b"\0").split(b"\0") for k, body in messages if k == "S")
    assert statuses[b"application_name"] == b"raw"
    assert statuses[b"server_encoding"] == statuses[b"client_encoding"] == b"UTF8"
    assert statuses[b"standard_conforming_strings"] == b"on"
    assert statuses[b"integer_datetimes"] == b"on"
    assert statuses[b"TimeZone"] == b"UTC"
    assert statuses[b"DateStyle"].startswith(b"ISO")


@pytest.mark.parametrize("length", [2**30 + 1, 3, -1])
async def test_bad_message_length_is_fatal_08P01(start_pg, length):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(b"Q" + struct.pack("!i", length))
    messages = await read_until(stream, "E")
    fields = error_fields(messages[-1][1])
    assert fields["S"] == "FATAL" and fields["C"] == "08P01"
    with trio.fail_after(10):
        assert await stream.receive_some(10) == b""  # closed
    await assert_serving(address)


async def test_message_over_the_configured_limit(start_pg):
    _, address = await start_pg(max_message_bytes=4096)
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"select '" + b"x" * 5000 + b"'\0"))
    fields = error_fields((await read_until(stream, "E"))[-1][1])
    assert fields["C"] == "08P01" and "4096" in fields["M"]
    await assert_serving(address)


@pytest.mark.parametrize(
    "junk",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + b"\xff" * 20, b"\x16\x03\x01\x02\x00"],
)
async def test_junk_instead_of_startup(start_pg, junk):
    _, address = await start_pg()
    stream = await connect(address)
    await stream.send_all(junk)
    with trio.fail_after(10):
        while await stream.receive_some(65536):
            pass
    await assert_serving(address)


async def test_truncated_startup_packet(start_pg):
    _, address = await start_pg()
    stream = await connect(address)
    await stream.send_all(startup_packet(user="u")[:-4])
    await stream.send_eof()
    with trio.fail_after(10):
        assert await stream.receive_some(10) == b""
    await assert_serving(address)


async def test_client_that_never_finishes_startup_is_dropped(start_pg):
    _, address = await start_pg(startup_timeout=0.2)
    stream = await connect(address)
    await stream.send_all(startup_packet(user="u")[:5])
    messages = await read_until(stream, "E")
    fields = error_fields(messages[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "08006") and "startup_timeout" in fields["M"]
    with trio.fail_after(10):
        assert await stream.receive_some(10) == b""


async def test_query_then_disappear_interrupts_the_statement(start_pg):
    _server, address = await start_pg(query_timeout=60, max_threads=1)
    stream = await start_session(address)
    await stream.send_all(
        typed(b"Q", b"with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c\0")
    )
    await stream.aclose()
    # With one statement thread, this answers only once the forever-query was interrupted.
    await assert_serving(address)


async def test_garbage_message_type_is_fatal(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"\x01", b"abc"))
    fields = error_fields((await read_until(stream, "E"))[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    await assert_serving(address)


async def test_pipelined_extended_batch_with_an_error_skips_to_sync(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    parse_bad = typed(b"P", b"\0selec 1\0\0\0")
    bind = typed(b"B", b"\0\0\0\0\0\0\0\0")
    execute = typed(b"E", b"\0\0\0\0\0")
    parse_ok = typed(b"P", b"s1\0select $1 + 1\0\0\x01\0\0\0\x14")
    bind_ok = typed(b"B", b"p1\0s1\0" + struct.pack("!hhh", 1, 1, 1) + struct.pack("!i", 8) + struct.pack("!q", 41) + b"\0\x01\0\x01")
    describe = typed(b"D", b"Pp1\0")
    execute_ok = typed(b"E", b"p1\0\0\0\0\0")
    await stream.send_all(parse_bad + bind + execute + typed(b"S") + parse_ok + bind_ok + describe + execute_ok + typed(b"S"))
    messages = await read_until(stream, "Z")
    # SQLite's syntax error comes at Execute (docs/protocol/pg.md: statements are prepared when first run).
    assert [k for k, _ in messages[:4]] == ["1", "2", "E", "Z"]
    assert error_fields(messages[2][1])["C"] == "42601"
    messages = messages[4:] + (await read_until(stream, "Z") if not any(k == "Z" for k, _ in messages[4:]) else [])
    assert [k for k, _ in messages] == ["1", "2", "T", "D", "C", "Z"]
    assert messages[3][1] == b"\0\x01" + struct.pack("!i", 8) + struct.pack("!q", 42)  # binary int8
    assert messages[4][1] == b"SELECT 1\0"


async def test_execute_with_row_limit_suspends(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(
        typed(b"P", b"\0select id from quakes order by id limit 5\0\0\0")
        + typed(b"B", b"\0\0\0\0\0\0\0\0")
        + typed(b"E", b"\0" + struct.pack("!i", 2))
        + typed(b"E", b"\0" + struct.pack("!i", 2))
        + typed(b"E", b"\0" + struct.pack("!i", 2))
        + typed(b"S")
    )
    messages = await read_until(stream, "Z")
    assert [k for k, _ in messages] == ["1", "2", "D", "D", "s", "D", "D", "s", "D", "C", "Z"]
    assert messages[-2][1] == b"SELECT 5\0"


async def test_empty_query(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b" ; -- nothing\0"))
    assert [k for k, _ in await read_until(stream, "Z")] == ["I", "Z"]


async def test_too_many_connections_is_fatal_53300(start_pg):
    _, address = await start_pg(max_connections=1)
    first = await start_session(address)
    second = await connect(address)
    await second.send_all(startup_packet(user="u"))
    fields = error_fields((await read_until(second, "E"))[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "53300")
    await first.aclose()


async def test_begin_twice_and_commit_outside_warn_like_postgresql(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"begin; begin; select 1; commit; commit\0"))
    messages = await read_until(stream, "Z")
    kinds = [k for k, _ in messages]
    assert kinds == ["C", "N", "C", "T", "D", "C", "C", "N", "C", "Z"]
    notices = [error_fields(body)["C"] for k, body in messages if k == "N"]
    assert notices == ["25001", "25P01"]
    assert messages[-1] == ("Z", b"I")


async def test_status_byte_follows_the_transaction(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"begin\0"))
    assert (await read_until(stream, "Z"))[-1] == ("Z", b"T")
    await stream.send_all(typed(b"Q", b"select * from nope\0"))
    assert (await read_until(stream, "Z"))[-1] == ("Z", b"E")
    await stream.send_all(typed(b"Q", b"select 1\0"))
    messages = await read_until(stream, "Z")
    assert error_fields(messages[0][1])["C"] == "25P02" and messages[-1] == ("Z", b"E")
    await stream.send_all(typed(b"Q", b"commit\0"))
    messages = await read_until(stream, "Z")
    assert messages == [("C", b"ROLLBACK\0"), ("Z", b"I")]


async def test_idle_connection_is_closed_with_57P05(start_pg):
    _, address = await start_pg(idle_timeout=0.2)
    stream = await start_session(address)
    fields = error_fields((await read_until(stream, "E"))[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "57P05")


async def test_the_idle_timeout_counts_from_the_last_answer_of_the_ready_loop(start_pg):
    # Queries of a known shape are answered by the service's ReadyLoop while
    # the connection's task stays parked: each answer must move the deadline.
    _, address = await start_pg(idle_timeout=0.5)
    stream = await start_session(address)
    query = typed(b"Q", b"select id from quakes where nst = 3\0")
    for _ in range(4):  # 1.2 s in all, never 0.5 s silent
        await stream.send_all(query)
        assert (await read_until(stream, "Z"))[-1] == ("Z", b"I")
        await trio.sleep(0.3)
    last = trio.current_time()
    fields = error_fields((await read_until(stream, "E"))[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "57P05")
    assert trio.current_time() - last >= 0.5 - 0.3 - 0.05  # 0.5 s after the last answer, not the first


async def test_an_answer_the_socket_takes_only_in_part_is_finished_by_the_connections_task(start_pg, partial_sends):
    # The ready loop's direct send hands what the socket did not take to the
    # connection's task (the send watchdog's path), which parks again after.
    watched = partial_sends
    _, address = await start_pg()
    stream = await start_session(address)
    watched.clear()
    query = typed(b"Q", b"select id from quakes where nst = 3\0")
    answers = []
    for _ in range(4):  # the first through the task, the others from the ready loop: all cut after 5 bytes
        await stream.send_all(query)
        answers.append(await read_until(stream, "Z"))
    assert answers[0] == answers[1] == answers[2] == answers[3]
    kinds = [k for k, _ in answers[0]]
    assert kinds[0] == "T" and kinds[-2:] == ["C", "Z"] and answers[0][-1] == ("Z", b"I")
    assert len(watched) == 4  # each answer's rest went out under the send watchdog


async def test_idle_in_transaction_is_closed_with_25P03(start_pg):
    _, address = await start_pg(idle_transaction_timeout=0.2)
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"begin\0"))
    assert (await read_until(stream, "Z"))[-1] == ("Z", b"T")
    fields = error_fields((await read_until(stream, "E"))[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "25P03")


async def test_shutdown_says_57P01_to_idle_clients_and_interrupts_busy_ones(start_pg):
    server, address = await start_pg(query_timeout=60)
    idle = await start_session(address)
    busy = await start_session(address)
    await busy.send_all(
        typed(b"Q", b"with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c\0")
    )
    with trio.fail_after(10):
        while not any(c.requests for c in server.service.connections):
            await trio.lowlevel.checkpoint()  # until the busy connection took its query (a checkpoint, not a timed sleep)
    server.shutdown(grace=1.0)
    fields = error_fields((await read_until(idle, "E"))[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "57P01")
    messages = await read_until(busy, "Z")
    if messages[-1][0] == "Z":
        messages += await read_until(busy, "E")
    assert [k for k, _ in messages] == ["E", "Z", "E"]
    assert error_fields(messages[0][1])["C"] == "57014"  # interrupted before the grace period ended
    assert (error_fields(messages[2][1])["S"], error_fields(messages[2][1])["C"]) == ("FATAL", "57P01")


async def test_function_call_is_refused_and_the_session_goes_on(start_pg):
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(typed(b"F", struct.pack("!i", 1234) + b"\0\0\0\0\0\0\0\0"))
    messages = await read_until(stream, "Z")
    assert [k for k, _ in messages] == ["E", "Z"]
    assert error_fields(messages[0][1])["C"] == "0A000"
    await stream.send_all(typed(b"Q", b"select 1\0"))
    assert [k for k, _ in await read_until(stream, "Z")] == ["T", "D", "C", "Z"]


async def test_statement_describe_fixes_the_columns_its_portals_send(start_pg):
    # Describe of a statement (before Bind) announces declared types, and
    # text where there is none; the portal's binary values then follow that.
    _, address = await start_pg()
    stream = await start_session(address)
    await stream.send_all(
        typed(b"P", b"s\0select mag, nst, nst + 1 from quakes where id = $1\0\0\0")
        + typed(b"D", b"Ss\0")
        + typed(b"B", b"\0s\0\0\0\0\x01" + struct.pack("!i", 6) + b"q00005" + struct.pack("!hh", 1, 1))
        + typed(b"E", b"\0\0\0\0\0")
        + typed(b"S")
    )
    messages = await read_until(stream, "Z")
    assert [k for k, _ in messages] == ["1", "t", "T", "2", "D", "C", "Z"]
    assert messages[1][1] == struct.pack("!hI", 1, 25)  # $1 unspecified: text
    description = messages[2][1]
    oids = [struct.unpack_from("!i", description, description.index(name + b"\0") + len(name) + 7)[0]
            for name in (b"mag", b"nst", b"nst + 1")]
    assert oids == [701, 20, 25]
    assert messages[4][1] == (
        b"\0\x03" + struct.pack("!i", 8) + struct.pack("!d", 3.5)
        + struct.pack("!i", 8) + struct.pack("!q", 5)
        + struct.pack("!i", 1) + b"6"
    )


@pytest.mark.parametrize("right_key", [True, False])
async def test_cancel_request_needs_the_right_key(start_pg, right_key):
    server, address = await start_pg(query_timeout=1.0)
    stream = await connect(address)
    await stream.send_all(startup_packet(user="u"))
    greeting = await read_until(stream, "Z")
    pid, secret = struct.unpack("!ii", dict(greeting)["K"])
    await stream.send_all(
        typed(b"Q", b"with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c\0")
    )
    # A cancel that comes before the statement runs is ignored, as in
    # PostgreSQL: wait (checkpoints, not a timed sleep) until it runs.
    target = server._keys[pid][1]
    with trio.fail_after(10):
        while target.cancel is None:
            await trio.lowlevel.checkpoint()
    canceller = await connect(address)
    await canceller.send_all(struct.pack("!iiii", 16, 80877102, pid, secret if right_key else secret ^ 1))
    with trio.fail_after(10):
        assert await canceller.receive_some(10) == b""  # a CancelRequest is never answered
    messages = await read_until(stream, "Z")
    fields = error_fields(messages[0][1])
    assert fields["C"] == "57014"
    # The wrong key leaves the query to its timeout.
    assert ("user request" in fields["M"]) is right_key


async def test_query_with_too_many_statements_is_refused(start_pg):
    _, address = await start_pg(max_query_statements=5)
    stream = await start_session(address)
    await stream.send_all(typed(b"Q", b"select 1;" * 6 + b"\0"))
    messages = await read_until(stream, "Z")
    assert [k for k, _ in messages] == ["E", "Z"]  # refused before any runs
    assert error_fields(messages[0][1])["C"] == "54000"


async def test_a_megabyte_of_placeholders_and_quotes_is_answered(start_pg):
    _, address = await start_pg(max_message_bytes=2 << 20)
    stream = await start_session(address)
    sql = b"select " + b"'$1'||" * 150_000 + b"$1 -- " + b"$2" * 100_000
    await stream.send_all(typed(b"Q", sql + b"\0"))
    messages = await read_until(stream, "Z")
    assert error_fields(messages[0][1])["C"] == "42P02"  # there is no parameter $1
    await assert_serving(address)


async def test_a_suspended_portal_displaced_by_another_statement_says_so(start_pg):
    _, address = await start_pg(batch_rows=3)
    stream = await start_session(address)
    await stream.send_all(
        typed(b"Q", b"begin\0")
        + typed(b"P", b"\0select id from quakes order by id\0\0\0")
        + typed(b"B", b"a\0\0\0\0\0\0\0\0")
        + typed(b"E", b"a\0" + struct.pack("!i", 1))
        + typed(b"B", b"b\0\0\0\0\0\0\0\0")
        + typed(b"E", b"b\0" + struct.pack("!i", 1))
        + typed(b"E", b"a\0" + struct.pack("!i", 1))
        + typed(b"S")
    )
    messages = await read_until(stream, "Z")
    messages += await read_until(stream, "Z") if [k for k, _ in messages].count("Z") < 2 else []
    kinds = [k for k, _ in messages]
    assert kinds == ["C", "Z", "1", "2", "D", "s", "2", "D", "s", "E", "Z"]
    assert error_fields(messages[9][1])["C"] == "55000"


async def test_serve_pg_reports_its_port_and_serves(nursery, quake_db):
    addresses = await nursery.start(serve_pg, Database(quake_db), "127.0.0.1", 0)
    host, port = addresses[0]
    assert host == "127.0.0.1" and port != 0
    await assert_serving((host, port))


async def test_prepared_statements_per_connection_are_bounded(start_pg):
    _, address = await start_pg(max_prepared=2)
    stream = await start_session(address)
    await stream.send_all(b"".join(typed(b"P", b"s%d\0select 1\0\0\0" % i) for i in range(3)) + typed(b"S"))
    messages = await read_until(stream, "Z")
    assert [k for k, _ in messages] == ["1", "1", "E", "Z"]
    fields = error_fields(messages[2][1])
    assert fields["C"] == "54000" and "2 prepared statements" in fields["M"]
