"""Connections as a resource: size-bounded batches, the greeting, caps, idle limits and goodbyes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import trio
import trio.testing

from trionet.framing import EOF
from trionet.serving import receive_event
from trionet.sql import SqlConnectionError, SqlError, connect, protocol
from trionet.sql.cli import default_max_connections

from .test_server import ENDLESS, RawClient, wait_until_busy


async def events_until_close(client: RawClient) -> list:
    events = []
    with trio.fail_after(5):
        while (event := await client.event()) is not EOF:
            events.append(event)
    return events


async def test_a_batch_is_cut_by_its_size_as_well_as_its_rows(start_sql):
    _, address = await start_sql(max_batch_bytes=100_000)
    client = await RawClient.open(address)
    async with client.stream:
        await client.send(b"SELECT randomblob(60000) FROM quakes LIMIT 10\n")
        events = await client.answer()
    batches = [len(e.rows) for e in events if isinstance(e, protocol.Rows)]
    assert sum(batches) == 10 and max(batches) <= 2, batches  # 2 x 80 kB of base64 reach 100 kB
    assert events[-1].rows == 10


async def test_a_new_client_is_greeted_while_every_query_thread_is_busy(start_sql):
    server, address = await start_sql(max_threads=1, query_timeout=0)
    busy = await RawClient.open(address)
    async with busy.stream:
        await busy.send(ENDLESS.encode() + b"\n")
        await wait_until_busy(server)
        with trio.fail_after(10):  # the hello used to wait for the thread, which the endless query holds
            async with connect(*address) as conn:
                assert conn.server.read_only


async def test_the_client_over_max_connections_gets_bye_busy_not_eof(start_sql):
    _, address = await start_sql(max_connections=2)
    first, second = await RawClient.open(address), await RawClient.open(address)
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        proto = protocol.ClientProtocol()
        with trio.fail_after(5):
            bye = await receive_event(stream, proto)
        assert isinstance(bye, protocol.Bye) and bye.code == "busy" and "2 connections" in bye.reason
    with pytest.raises(SqlConnectionError, match="busy"):
        async with connect(*address):
            pass
    await first.stream.aclose()
    with trio.fail_after(5):
        while True:  # a slot frees when the server has seen the close
            try:
                async with connect(*address) as conn:
                    assert (await conn.query("SELECT 1")).rows == [(1,)]
                break
            except SqlConnectionError:
                await trio.sleep(0.02)
    await second.stream.aclose()


async def test_an_idle_connection_gets_bye_idle(start_sql):
    _, address = await start_sql(idle_timeout=0.3)
    client = await RawClient.open(address)
    assert client.hello.idle_timeout == 0.3
    async with client.stream:
        await client.send(b"SELECT 1\n")
        await client.answer()  # a request resets the clock
        assert await events_until_close(client) == [protocol.Bye("no request for 0.3s", "idle")]


async def test_requests_answered_by_the_ready_loop_reset_the_idle_clock(start_sql):
    # After the first, these reads are answered by the service's ReadyLoop
    # while the connection's task stays parked: each must count as activity.
    _, address = await start_sql(idle_timeout=0.5)
    client = await RawClient.open(address)
    async with client.stream:
        for _ in range(4):  # 1.2 s in all, never 0.5 s silent
            await client.send(b"SELECT 1\n")
            assert isinstance((await client.answer())[-1], protocol.Done)
            await trio.sleep(0.3)
        assert await events_until_close(client) == [protocol.Bye("no request for 0.5s", "idle")]


async def test_an_idle_transaction_is_rolled_back_and_frees_the_write_lock(start_sql):
    _, address = await start_sql(read_write=True, idle_transaction_timeout=0.3)
    holder = await RawClient.open(address)
    async with holder.stream:
        for line in (b"BEGIN IMMEDIATE\n", b"INSERT INTO quakes (id) VALUES ('held')\n"):
            await holder.send(line)
            assert isinstance((await holder.answer())[-1], protocol.Done)
        (bye,) = await events_until_close(holder)
    assert bye.code == "idle_transaction" and "rolled back" in bye.reason
    async with connect(*address, connect_timeout=30) as conn:
        # A lock still held would make this fail with 'busy' after the 5 s busy timeout.
        await conn.query("INSERT INTO quakes (id) VALUES ('next')")
        assert (await conn.query("SELECT count(*) FROM quakes WHERE id = 'held'")).rows == [(0,)]


def test_the_default_connection_cap_follows_the_descriptor_limit():
    assert default_max_connections(64, read_write=False) == 10
    assert default_max_connections(64, read_write=True) == 6
    assert default_max_connections(1 << 20, read_write=False) == 1000


_LISTENING = re.compile(rb"listening on \S+:(\d+)")


def test_with_few_descriptors_extra_clients_get_busy_never_a_silent_eof(quake_db):
    """10,000 idle clients used to exhaust descriptors; here the limit is 64 so the cap is 10.

    With the PostgreSQL port on too, each port would get half (5).
    """
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64));"
        "from trionet.cli import main; sys.argv = ['trionet'] + sys.argv[1:]; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "sql", "serve", "--db", str(quake_db), "--port", "0", "--no-pg"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        while not (match := _LISTENING.search(line := proc.stderr.readline())):
            assert line, "the server exited"
        port = int(match.group(1))

        async def crowd() -> list[str]:
            streams, firsts = [], []
            try:
                for _ in range(16):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    streams.append(stream)
                    with trio.fail_after(5):
                        event = await receive_event(stream, protocol.ClientProtocol())
                    firsts.append(type(event).__name__ if event is not EOF else "EOF")
                    if isinstance(event, protocol.Bye):
                        firsts[-1] += f" {event.code}"
            finally:
                for stream in streams:
                    await stream.aclose()
            return firsts

        assert trio.run(crowd) == ["Hello"] * 10 + ["Bye busy"] * 6
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_sigterm_mid_query_answers_interrupted_then_bye(quake_db):
    proc = subprocess.Popen(
        [sys.executable, "-m", "trionet", "sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0",
         "--query-timeout", "0", "--grace", "3", "--max-rows", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        while not (match := _LISTENING.search(line := proc.stderr.readline())):
            assert line, "the server exited"
        port = int(match.group(1))
        trickle = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c WHERE x % 1000 = 0"

        async def client() -> list:
            raw = await RawClient.open(("127.0.0.1", port))
            async with raw.stream:
                await raw.send(trickle.encode() + b"\n")
                events = [await raw.event(), await raw.event()]  # columns, a first batch: it runs
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(20):  # interrupted 1 s before the 3 s grace ends
                    while (event := await raw.event()) is not EOF:
                        events.append(event)
            return events

        events = trio.run(client)
        assert isinstance(events[-2], protocol.ErrorReply) and events[-2].code == "interrupted", events[-3:]
        assert events[-1] == protocol.Bye("server shutting down", "shutdown")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1)) / 1024


def test_big_values_keep_the_server_memory_bounded(quake_db):
    """6 values of 16 MB used to sit in one 256-row batch: about 500 MB of server memory for one client.

    A row of many big values is bounded by SQLite's heap limit, before Python copies any of it.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "trionet", "sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0",
         "--max-sqlite-memory-bytes", str(100 << 20)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        while not (match := _LISTENING.search(line := proc.stderr.readline())):
            assert line, "the server exited"
        port = int(match.group(1))
        before = _peak_rss_mb(proc.pid)

        async def client() -> tuple[int, str]:
            async with connect("127.0.0.1", port) as conn:
                result = await conn.query("SELECT zeroblob(16000000) FROM quakes LIMIT 6")
                with pytest.raises(SqlError) as info:  # 20 x 16 MB in one row
                    await conn.query("SELECT " + ", ".join(["randomblob(16000000)"] * 20))
                assert (await conn.query("SELECT 1")).rows == [(1,)]
            return len(result.rows), info.value.code

        assert trio.run(client) == (6, "out_of_memory")
        grown = _peak_rss_mb(proc.pid) - before
        # One row at a time: the blob, its base64 text, the frame and its bytes (~80 MB).
        assert grown < 250, f"server peak RSS grew by {grown:.0f} MB"
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


async def test_waiting_for_a_statement_thread_does_not_count_as_query_time(start_sql, mock_clock):
    """The clock is frozen (``mock_clock``) and moved by hand: our request waits 2000 s for the
    only statement thread, which must not count against its 1000 s query timeout."""
    server, address = await start_sql(max_threads=1, query_timeout=1000)
    hog = await RawClient.open(address)
    async with hog.stream, connect(*address) as conn:
        await hog.send(ENDLESS.encode() + b"\n")
        while not server._limiter.borrowed_tokens:  # the hog holds the only thread
            await trio.testing.wait_all_tasks_blocked()
        answers: dict = {}

        async def ask() -> None:
            # About 0.2 s of real SQLite work, long enough for an interrupt to land.
            answers["ours"] = (await conn.query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000) "
                "SELECT count(*) FROM c"
            )).rows

        async def hear_hog() -> None:
            answers["hog"] = await hog.answer()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            while sum(c.requests >= 1 for c in server.service.connections) < 2:  # ours is taken, waiting
                await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(2000)  # the hog's time runs out; ours has waited 2000 s for the thread
            nursery.start_soon(hear_hog)
            while len(answers) < 2:
                # Let virtual time pass slowly, so that the server's repeated interrupts
                # (every 0.05 s) run: a few seconds at most against our 1000 s.
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(0.001)
        assert answers["ours"] == [(500000,)]
        assert answers["hog"][-1].code == "timeout"
