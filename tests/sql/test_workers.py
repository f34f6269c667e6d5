"""``trionet sql serve --workers N``: worker processes behind shared ports, supervised, drained, cancels routed."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import signal
import socket
import subprocess
import threading

import pytest

from trionet.sql.workers import backend_pids, share, worker_of
from trionet.workers import MAX_WORKERS, RestartPolicy, bind_reuseport, resolve_workers

try:
    import psycopg
except ImportError:  # the test extra installs it; a developer without it skips, CI fails
    psycopg = None

LONG_QUERY = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"


# --- the pure parts ---------------------------------------------------------------


def test_restart_pause_doubles_for_quick_deaths_and_resets_after_a_stable_run():
    policy = RestartPolicy(first=0.1, ceiling=1.0, stable=30.0)
    assert [policy.delay(0, started=t, died=t + 1) for t in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay(1, started=0, died=1) == 0.1  # each worker has its own history
    assert policy.delay(0, started=100, died=200) == 0.1  # a worker that ran a while starts over


def test_resolve_workers():
    assert resolve_workers("auto") == max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    assert resolve_workers("3") == 3
    for bad in ("0", "-1", "many", str(MAX_WORKERS + 1)):
        with pytest.raises(ValueError):
            resolve_workers(bad)


def test_shares_of_server_wide_limits_round_up():
    assert share(8, 2) == 4 and share(5, 2) == 3 and share(1, 4) == 1


def test_backend_pids_name_their_worker():
    for index in (0, 1, 7, MAX_WORKERS - 1):
        pids = backend_pids(index)
        taken = [next(pids) for _ in range(100)]
        assert len(set(taken)) == 100
        assert all(worker_of(pid) == index and 0 < pid < 2**31 for pid in taken)


def test_reuseport_listeners_share_one_port_even_when_asked_for_port_0():
    groups = bind_reuseport("127.0.0.1", 0, 3)
    try:
        ports = {group[0].getsockname()[1] for group in groups}
        assert len(groups) == 3 and len(ports) == 1 and ports != {0}
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=5):
            pass
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_a_port_in_use_fails_before_any_worker_starts(server_process, quake_db):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = server_process("sql", "serve", "--db", str(quake_db), "--port", str(port), "--no-pg", "--workers", "2")
        assert server.wait() == 1
    assert "cannot listen on 127.0.0.1:" in server.output and "workers started" not in server.output




# --- the real command ------------------------------------------------------------------


def start_workers(server_process, quake_db, *extra: str):
    """``trionet sql serve --workers 2``; returns (process, pg port, worker pids by index)."""
    server = server_process(
        "sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0", "--workers", "2", *extra
    )
    pg_port = int(server.wait_for(r"pg listening on 127\.0\.0\.1:(\d+)").group(1))
    pids = [int(p) for p in server.wait_for(r"2 workers started \(pids (\d+) (\d+)\)").groups()]
    return server, pg_port, pids


def dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname=quakes user=analyst connect_timeout=10"


def connect_to_each_worker(port: int, count: int = 2, **kwargs) -> dict:
    """Open connections until one has landed on each worker (the kernel spreads them by a hash); close the rest.

    A spare is closed at once: kept open, four landing on one worker would
    pass a small ``--max-connections`` (3 per worker) and fail the test by luck.
    Its server side still counts until that worker has closed it, so under
    load a worker can refuse the next one (53300, as it must): that attempt
    is a spare too.
    """
    chosen: dict[int, psycopg.Connection] = {}
    try:
        for _ in range(200):
            try:
                conn = psycopg.connect(dsn(port), autocommit=True, **kwargs)
            except psycopg.OperationalError as exc:
                if "sorry, too many clients already" not in str(exc):
                    raise
                continue
            index = worker_of(conn.info.backend_pid)
            if index in chosen:
                conn.close()
            else:
                chosen[index] = conn
            if len(chosen) == count:
                return chosen
        raise AssertionError(f"200 connections reached only workers {sorted(chosen)}")
    except BaseException:
        for conn in chosen.values():
            conn.close()
        raise


@pytest.mark.requires_module("psycopg")
def test_two_workers_serve_at_once_and_the_ports_are_logged_once(server_process, quake_db):
    server, port, pids = start_workers(server_process, quake_db, "--max-connections", "5")
    assert "at most 3 connections per port per worker" in server.output  # a total, shared out
    conns = connect_to_each_worker(port)
    try:
        assert sorted(conns) == [0, 1]
        # Both hold a connection open at once, each in its own process.
        results = [conns[i].execute("select count(*) from quakes").fetchone() for i in (0, 1)]
        assert results == [(2000,), (2000,)]
    finally:
        for conn in conns.values():
            conn.close()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert sum("pg listening on" in line for line in server.lines) == 1
    assert sum("sql listening on" in line for line in server.lines) == 1


@pytest.mark.requires_module("psycopg")
def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(server_process, quake_db):
    server, port, pids = start_workers(server_process, quake_db)
    os.kill(pids[0], signal.SIGKILL)
    server.wait_for(rf"worker 0 \(pid {pids[0]}\) was killed by SIGKILL after [\d.]+s; restarting it in")
    new_pid = int(server.wait_for(r"worker 0 restarted \(pid (\d+)\)").group(1))
    assert new_pid not in pids
    conns = connect_to_each_worker(port)  # worker 0 answers again, under its new pid
    try:
        assert [conns[i].execute("select 1").fetchone() for i in (0, 1)] == [(1,), (1,)]
    finally:
        for conn in conns.values():
            conn.close()


@pytest.mark.requires_module("psycopg")
def test_sigterm_drains_every_worker_and_exits_0(server_process, quake_db):
    server, port, pids = start_workers(server_process, quake_db)
    conns = connect_to_each_worker(port)
    try:
        server.signal(signal.SIGUSR1)  # forwarded: each worker logs its own figures
        for index in (0, 1):
            server.wait_for(rf"\[w{index}\]: SIGUSR1: figures")
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        for conn in conns.values():  # each was told, not reset
            with pytest.raises(psycopg.errors.AdminShutdown):
                conn.execute("select 1")
    finally:
        for conn in conns.values():
            conn.close()
    assert len(re.findall(r"\[w\d\]: SIGTERM: shutting down", server.output)) == 2
    assert "every worker has stopped" in server.output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_workers_drain_when_the_supervisor_is_killed(server_process, quake_db):
    server, _, pids = start_workers(server_process, quake_db)
    server.proc.kill()
    server.wait()
    for index in (0, 1):
        server.wait_for(rf"\[w{index}\]: the supervisor is gone")
    for pid in pids:  # reparented; they exit on their own
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    """Wait for a process that is not our child to exit (a pidfd reads ready then)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], 20)
        assert ready, f"pid {pid} still running after 20 s"
    finally:
        os.close(fd)


_FORWARDED = re.compile(r"\[w\d\]: pg cancel for a connection of worker \d: forwarded")
_MATCHED = re.compile(r"\[w\d\]: pg cancel forwarded by another worker: key matched")


@pytest.mark.requires_module("psycopg")
def test_a_cancel_reaches_the_worker_running_the_statement(server_process, quake_db):
    server, port, _ = start_workers(server_process, quake_db, "--log-level", "debug", "--query-timeout", "60")
    conns = connect_to_each_worker(port)
    try:
        # Each cancel request opens a new connection, which lands on either
        # worker; cancels sent before the statement runs are ignored (as in
        # PostgreSQL), so keep sending until the statement ends. Repeat until
        # some cancel has reached the other worker and been forwarded (each
        # does with probability 1/2: 40 rounds leave a chance of 2**-40).
        for _ in range(20):
            for conn in conns.values():
                outcome: dict = {}
                done = threading.Event()

                def long_query(conn=conn, outcome=outcome, done=done):
                    try:
                        conn.execute(LONG_QUERY)
                    except psycopg.Error as exc:
                        outcome["error"] = exc
                    finally:
                        done.set()

                thread = threading.Thread(target=long_query)
                thread.start()
                while not done.is_set():
                    conn.cancel_safe(timeout=10)
                thread.join()
                assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled), outcome
                assert "user request" in str(outcome["error"])
                assert conn.execute("select 1").fetchone() == (1,)
            if _FORWARDED.search(server.output) and _MATCHED.search(server.output):
                break
    finally:
        for conn in conns.values():
            conn.close()
    # Some cancels landed on the other worker and were forwarded, and the
    # worker running the statement found the key (each worker logs both).
    server.wait_for(_FORWARDED.pattern, timeout=5)
    server.wait_for(_MATCHED.pattern, timeout=5)


@pytest.mark.requires_module("psycopg")
def test_two_workers_write_to_one_database(server_process, quake_db):
    server, port, _ = start_workers(server_process, quake_db, "--read-write")
    conns = connect_to_each_worker(port)
    try:
        conns[0].execute("create table t(worker integer, n integer)")
        errors: list = []

        def insert(index: int) -> None:
            try:
                for n in range(100):
                    conns[index].execute("insert into t values (%s, %s)", (index, n))
            except psycopg.Error as exc:
                errors.append(exc)

        threads = [threading.Thread(target=insert, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        counts = conns[1].execute("select worker, count(*) from t group by worker order by worker").fetchall()
        assert counts == [(0, 100), (1, 100)]
        # A transaction belongs to its connection: worker 1 does not see worker 0's until COMMIT.
        conns[0].execute("begin")
        conns[0].execute("insert into t values (0, 100)")
        assert conns[1].execute("select count(*) from t where worker = 0").fetchone() == (100,)
        # While it holds the write lock, the other worker's write waits the busy timeout, then
        # gets the retryable 55P03 (lock_not_available), and the same write succeeds once it is free.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conns[1].execute("insert into t values (1, 100)")
        conns[0].execute("commit")
        conns[1].execute("insert into t values (1, 100)")
        assert conns[1].execute("select count(*) from t").fetchone() == (202,)
    finally:
        for conn in conns.values():
            conn.close()


@pytest.mark.requires_module("psycopg")
def test_the_supervisor_serves_every_workers_figures_and_a_gap_for_a_stopped_one(
    server_process, quake_db, scrape_metrics
):
    server, port, pids = start_workers(server_process, quake_db, "--metrics", "127.0.0.1:0")
    metrics_port = int(server.wait_for(r"metrics listening on 127\.0\.0\.1:(\d+)").group(1))
    assert sum("metrics listening on" in line for line in server.lines) == 1
    conns = connect_to_each_worker(port)
    try:
        figures = scrape_metrics(metrics_port)
        for index in ("0", "1"):  # each worker's own count, told apart by a label
            assert figures[("trionet_worker_up", (("worker", index),))] == 1
            assert figures[("trionet_connections_open", (("listener", "pg"), ("worker", index)))] == 1
            assert figures[("trionet_connections_total", (("listener", "pg"), ("worker", index)))] >= 1
        assert ("process_open_fds", ()) in figures  # the supervisor's own, without a worker label

        # A worker that cannot answer (stopped here; dead or stuck alike) is a
        # gap after SCRAPE_TIMEOUT, not a hung scrape; the other still counts.
        os.kill(pids[1], signal.SIGSTOP)
        try:
            figures = scrape_metrics(metrics_port)
        finally:
            os.kill(pids[1], signal.SIGCONT)
        assert figures[("trionet_worker_up", (("worker", "1"),))] == 0
        assert figures[("trionet_worker_up", (("worker", "0"),))] == 1
        assert not any(("worker", "1") in labels for name, labels in figures if not name.startswith("trionet_worker_"))
        assert figures[("trionet_connections_open", (("listener", "pg"), ("worker", "0")))] == 1
        server.wait_for(r"worker 1 did not answer the scrape within")

        # Its late answer is dropped, and the next scrape has it again.
        figures = scrape_metrics(metrics_port)
        assert figures[("trionet_worker_up", (("worker", "1"),))] == 1
        assert figures[("trionet_connections_open", (("listener", "pg"), ("worker", "1")))] == 1
    finally:
        for conn in conns.values():
            conn.close()


# --- cancel routing in one process: two workers' PostgreSQL fronts and their mailboxes --------------


@contextlib.asynccontextmanager
async def two_workers(nursery, quake_db, *, placement: bool = False):
    """Workers 0 and 1 of a --workers 2 server, as two PgServers in this process: ``(servers, ports)``.

    Each has its mailbox for cancels from the other (as trionet.workers makes
    them); with ``placement``, also a Placer on one shared LoadBoard and its
    handoff channel, so connections can move between them.
    """
    from trionet.placement import LoadBoard, Placer, receive_handoffs
    from trionet.sql import Database
    from trionet.sql.pg.config import PgConfig
    from trionet.sql.pg.server import PgServer
    from trionet.sql.workers import cancel_forwarder, receive_cancels
    from trionet.workers import WorkerContext

    database = Database(quake_db)
    mailboxes = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    handoffs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)] if placement else []
    board = LoadBoard(["pg"], 2) if placement else None
    try:
        servers, ports = [], []
        for index in (0, 1):
            context = WorkerContext(index, 2, {}, mailboxes[index][0], [sender for _, sender in mailboxes], -1)
            pg = PgServer(
                database, PgConfig(query_timeout=30), pids=backend_pids(index), forward_cancel=cancel_forwarder(context)
            )
            if placement:
                pg.service.placer = Placer(board, "pg", index, [sender for _, sender in handoffs])
            addresses = await nursery.start(pg.serve, "127.0.0.1", 0)
            nursery.start_soon(receive_cancels, context, pg)
            if placement:
                nursery.start_soon(receive_handoffs, handoffs[index][0], {"pg": pg.service})
            servers.append(pg)
            ports.append(addresses[0][1])
        yield servers, ports
    finally:
        if board is not None:
            board.close()
        for pair in mailboxes + handoffs:
            for sock in pair:
                sock.close()


@pytest.mark.requires_module("psycopg")
async def test_a_cancel_reaching_the_wrong_worker_is_posted_to_the_right_one(nursery, quake_db):
    import struct

    import trio

    async with two_workers(nursery, quake_db) as (servers, ports):
        conn = await trio.to_thread.run_sync(lambda: psycopg.connect(dsn(ports[0]), autocommit=True))
        outcome: dict = {}

        def long_query():
            try:
                conn.execute(LONG_QUERY)
            except psycopg.Error as exc:
                outcome["error"] = exc

        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(trio.to_thread.run_sync, long_query)
                # Wait (by checkpoints) until the statement runs: a cancel before it is ignored.
                with trio.fail_after(10):
                    while not any(st.cancel is not None for _, st in servers[0]._keys.values()):
                        await trio.lowlevel.checkpoint()
                pid = conn.info.backend_pid
                secret, _ = servers[0]._keys[pid]
                assert worker_of(pid) == 0
                # The CancelRequest goes to worker 1's port, which does not know the key.
                with trio.fail_after(10):
                    sock = await trio.open_tcp_stream("127.0.0.1", ports[1])
                    async with sock:
                        await sock.send_all(struct.pack("!iiii", 16, 80877102, pid, secret))
                        assert await sock.receive_some(16) == b""  # closed, answering nothing
            assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled), outcome
            assert "user request" in str(outcome["error"])
            assert await trio.to_thread.run_sync(lambda: conn.execute("select 1").fetchone()) == (1,)
        finally:
            await trio.to_thread.run_sync(conn.close)


# --- connections moved to the worker of their client's CPU (trionet.placement) -------------


def _pinned(cpu: int, body):
    """Run ``body()`` in a thread held on ``cpu`` (so the server sees its packets come from there)."""
    outcome: dict = {}

    def run():
        os.sched_setaffinity(0, {cpu})
        try:
            outcome["value"] = body()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _two_cpus() -> None:
    from tests.conftest import require

    require(None if len(os.sched_getaffinity(0)) >= 2 else "this test needs two CPUs to run its clients on")


@pytest.mark.requires_module("psycopg")
async def test_connections_move_to_the_worker_of_their_clients_cpu_and_keep_their_session(nursery, quake_db):
    import struct

    import trio

    from tests.sql.pg.conftest import cancel_an_endless_query

    _two_cpus()
    async with two_workers(nursery, quake_db, placement=True) as (servers, ports):
        stop = threading.Event()

        def client(cpu: int):
            # Two connections to the worker that is not this CPU's, each with
            # a setting of its own and a prepared statement; queries until told.
            conns = [psycopg.connect(dsn(ports[1 - cpu]), autocommit=True) for _ in range(2)]
            for number, conn in enumerate(conns):
                conn.execute(f"SET application_name = 'cpu{cpu}-{number}'")
            while not stop.is_set():
                for conn in conns:
                    assert conn.execute("select count(*) from quakes where mag > %s", [4.5], prepare=True).fetchone()[0] > 0
            return conns

        threads = [_pinned(cpu, functools.partial(client, cpu)) for cpu in (0, 1)]
        try:
            with trio.fail_after(20):
                while not all(len(pg._keys) == 2 and pg.service.placer.moved_out == 2 for pg in servers):
                    for _, outcome in threads:
                        if "error" in outcome:
                            raise outcome["error"]
                    await trio.sleep(0.05)
        finally:
            stop.set()
            for thread, _ in threads:
                await trio.to_thread.run_sync(thread.join)
        for cpu, (_, outcome) in enumerate(threads):
            conns = outcome["value"]
            try:
                for number, conn in enumerate(conns):
                    # Served now by the worker of its CPU, which it did not connect to.
                    assert conn.info.backend_pid in servers[cpu]._keys
                    assert worker_of(conn.info.backend_pid) == 1 - cpu  # its key still names the first one
                    show = await trio.to_thread.run_sync(lambda c=conn: c.execute("show application_name").fetchone())
                    assert show == (f"cpu{cpu}-{number}",)
                    rows = await trio.to_thread.run_sync(
                        lambda c=conn: c.execute("select count(*) from quakes where mag > %s", [4.5], prepare=True).fetchone()
                    )
                    assert rows[0] > 0
                # A cancel sent to the worker the key names reaches the statement where it runs now.
                conn = conns[0]
                pid = conn.info.backend_pid

                async def cancel(pid=pid, cpu=cpu):
                    secret, _ = servers[cpu]._keys[pid]
                    sock = await trio.open_tcp_stream("127.0.0.1", ports[1 - cpu])
                    async with sock:
                        await sock.send_all(struct.pack("!iiii", 16, 80877102, pid, secret))
                        assert await sock.receive_some(16) == b""

                error = await cancel_an_endless_query(servers[cpu], conn, cancel)
                assert isinstance(error, psycopg.errors.QueryCanceled), error
            finally:
                for conn in conns:
                    await trio.to_thread.run_sync(conn.close)
        assert [pg.service.placer.moved_in for pg in servers] == [2, 2]


@pytest.mark.requires_module("psycopg")
async def test_a_connection_in_a_transaction_or_with_a_temp_table_stays(nursery, quake_db):
    import trio

    _two_cpus()
    async with two_workers(nursery, quake_db, placement=True) as (servers, ports):
        stop = threading.Event()

        def client(cpu: int):
            # Connections to the wrong worker that cannot move: one inside a
            # transaction block, one with a temporary table; a third that can,
            # so that the looks are clear.
            in_block = psycopg.connect(dsn(ports[1 - cpu]))  # (psycopg opens a block at the first statement)
            temp = psycopg.connect(dsn(ports[1 - cpu]), autocommit=True)
            temp.execute("create temp table scratch(x)")
            free = psycopg.connect(dsn(ports[1 - cpu]), autocommit=True)
            while not stop.is_set():
                for conn in (in_block, temp, free):
                    conn.execute("select 1").fetchone()
            return in_block, temp, free

        threads = [_pinned(cpu, functools.partial(client, cpu)) for cpu in (0, 1)]
        try:
            with trio.fail_after(20):
                while sum(pg.service.placer.moved_out for pg in servers) < 2:
                    for _, outcome in threads:
                        if "error" in outcome:
                            raise outcome["error"]
                    await trio.sleep(0.05)
            await trio.sleep(1.5)  # three more looks
        finally:
            stop.set()
            for thread, _ in threads:
                await trio.to_thread.run_sync(thread.join)
        for cpu, (_, outcome) in enumerate(threads):
            in_block, temp, free = outcome["value"]
            try:
                assert in_block.info.backend_pid in servers[1 - cpu]._keys  # stayed
                assert temp.info.backend_pid in servers[1 - cpu]._keys  # stayed
                assert free.info.backend_pid in servers[cpu]._keys  # moved
                assert await trio.to_thread.run_sync(lambda t=temp: t.execute("select count(*) from scratch").fetchone()) == (0,)
            finally:
                for conn in (in_block, temp, free):
                    await trio.to_thread.run_sync(conn.close)


def _serving_pids(port: int, conns) -> list[int]:
    """The worker process serving each of ``conns`` now, from the kernel's socket table (``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    by_peer = {}
    for line in out.splitlines():
        owner = re.search(r"pid=(\d+)", line)
        if owner:
            by_peer[int(line.split()[3].rsplit(":", 1)[1])] = int(owner.group(1))
    pids = []
    for conn in conns:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            pids.append(by_peer.get(sock.getsockname()[1], 0))
    return pids


@pytest.mark.requires_module("psycopg")
@pytest.mark.requires_tool("ss", "iproute2")
@pytest.mark.parametrize("placement", ["cpu", "hash"])
def test_workers_group_each_client_threads_connections_only_with_placement_cpu(server_process, quake_db, placement):
    import time

    _two_cpus()
    server, port, pids = start_workers(server_process, quake_db, "--placement", placement)
    stop = threading.Event()
    ready = threading.Barrier(3)
    opened: dict[int, list] = {}

    def client(cpu: int):
        conns = opened[cpu] = [psycopg.connect(dsn(port), autocommit=True) for _ in range(3)]
        for conn in conns:
            conn.execute("SET application_name = 'kept'")
        ready.wait()
        while not stop.is_set():
            for conn in conns:
                conn.execute("select 1").fetchone()
        return conns

    threads = [_pinned(cpu, functools.partial(client, cpu)) for cpu in (0, 1)]
    grouped = False
    try:
        ready.wait(timeout=20)
        deadline = time.monotonic() + (15 if placement == "cpu" else 3)  # (hash: past the first looks)
        while time.monotonic() < deadline:
            by_thread = [_serving_pids(port, opened[cpu]) for cpu in (0, 1)]
            if placement == "cpu" and all(len(set(p)) == 1 for p in by_thread) and by_thread[0][0] != by_thread[1][0]:
                grouped = True
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for thread, _ in threads:
            thread.join()
    moved = len(re.findall(r"pg connection moved to worker \d", server.output))
    for _, outcome in threads:
        assert "error" not in outcome, outcome
        for conn in outcome["value"]:
            assert conn.execute("show application_name").fetchone() == ("kept",)
            conn.close()
    if placement == "cpu":
        assert grouped, by_thread  # each thread's three connections in one worker, each thread in its own
        assert set(by_thread[0] + by_thread[1]) == set(pids)
    else:
        assert moved == 0
