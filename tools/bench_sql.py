"""Benchmark of ``trionet sql``: throughput and latency against two baselines.

Every server runs in its own process; the load generator is one more process
(``--load-procs`` for more) driving ``--clients`` connections with minimal
parsing (it counts lines up to the ``done`` or ``error`` line), so the
client's cost per request is the same for every server. By default it is one
``epoll`` loop over all its clients (``--loadgen epoll``, about 18-20 µs of
CPU per request here); ``--loadgen trio``, a trio task per client, is what the
figures before session 14 were measured with (about 47 µs per request). The
load generator shares the machine's CPUs with the server: a server that uses
one core leaves it the other, a server on every core (``--workers auto``)
loses what it takes.

Servers:

- ``trionet``: ``python3 -m trionet sql serve`` (the real CLI, default config);
- ``trionet-noinline``: the same server with ``SqlServerConfig(inline=False)``,
  so every statement takes a thread hop (launched by this script);
- ``select``: ``tools/baselines/select_sql_server.py``, a single-threaded
  select() loop running SQLite inline, as the course writes it;
- ``echo``: ``tools/baselines/echo_server.py``, a trio server that echoes each
  chunk (the request line comes back as the whole reply);
- ``floor``: ``tools/baselines/trio_sql_floor.py``, the least a trio SQL
  server can do (no safety, no limits): what trio itself costs per request;
- ``trionet-before`` (with ``--compare-tree DIR``): trionet from another
  source tree (``git archive main | tar -x -C DIR``), with the same
  ``--trionet-args``, interleaved with the others in every round: a before and
  after measured in one run.

Scenarios:

- ``point``: ``SELECT * FROM quakes WHERE id = ?`` with random existing ids;
- ``mixed``: 80% point queries, 15% time-range queries of ~16 rows (index on
  time), 5% top-10 by magnitude within a one-year window;
- ``slow``: the point workload again while one extra client runs an aggregate
  self-join of about ``--slow-seconds`` back to back; its p99 is compared with
  the ``point`` p99 of the same server.

Targets (from the issue): trionet point q/s >= 0.8x echo and >= 1.0x select;
trionet point p99 with the slow client <= 5x the p99 without it. The script
reports PASS/FAIL and always exits 0 when the measurement itself ran: it is a
measurement, not a test.

Besides q/s and p50/p99 it reports each process's CPU (server, load
generator, and everything else on the machine), and the server's CPU time
per answered query, the figure least disturbed by a busy machine. On a
shared machine, ``--wait-quiet`` waits for an idle moment before each
scenario. ``--repeat N`` runs N rounds; in each round every server runs every
scenario, in an order that rotates from round to round, so that load which
comes and goes hits all servers alike. Each figure is the median over rounds
with its range [lowest-highest]; a target's ratio is taken within each round,
and a target is PASS or FAIL only when every round agrees, else UNDECIDED.

Usage::

    python3 tools/bench_sql.py --duration 5 --repeat 2 --wait-quiet 30 --json bench.json

The database is the real catalogue trionet ships (16,941 events), imported
with ``trionet.sql.catalog.build_catalogue`` into a temporary SQLite file. Figures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import array
import json
import math
import os
import platform
import random
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "tools/baselines"
PY = sys.executable

SERVERS = ("trionet", "trionet-noinline", "select", "echo", "floor")
OPTIONAL_SERVERS = ("trionet-before",)  # not in the default list
SCENARIOS = ("point", "mixed", "slow")
SQL_SERVERS = frozenset({"trionet", "trionet-before", "trionet-noinline", "select", "floor"})
BEFORE_TREE: list[Path] = []  # --compare-tree: where trionet-before's code is

POINT_SQL = "SELECT * FROM quakes WHERE id = ?"
RANGE_SQL = "SELECT id, time, mag, place FROM quakes WHERE time >= ? AND time < ? ORDER BY time"
TOP_SQL = "SELECT id, time, mag, place FROM quakes WHERE time >= ? AND time < ? ORDER BY mag DESC LIMIT 10"
RANGE_ROWS = 16  # rows per range query
TOP_WINDOW = 800  # rows in a top-10 window: about one year of the catalogue
# The slow aggregate: pairs of events at nearly the same place. abs() keeps
# SQLite from using an index for the inner loop, so the cost is
# (rows before the cutoff) x (all rows), tuned by the cutoff.
SLOW_SQL = (
    "SELECT count(*) FROM quakes a JOIN quakes b "
    "ON abs(a.latitude - b.latitude) < 0.05 AND abs(a.longitude - b.longitude) < 0.05 "
    "WHERE a.time < ?"
)
POOL_SIZE = 1024  # pre-encoded requests per client, cycled


# --- the load generator (a separate process) -------------------------------------


@dataclass
class LoadSpec:
    """What one load-generator process does; passed as a JSON file."""

    port: int
    mode: str  # point | mixed
    clients: int
    first_client: int
    echo: bool
    db: str
    start_at: float  # time.time() when the warm-up starts
    warmup: float
    duration: float
    latencies_path: str
    slow_param: str | None = None  # run the slow client too, with this cutoff
    loop: str = "epoll"  # epoll (_load_epoll) or trio (_load_main)


def _build_pool(mode: str, ids: list[str], times: list, rng: random.Random) -> list[bytes]:
    pool = []
    for n in range(POOL_SIZE):
        roll = rng.random() if mode == "mixed" else 0.0
        if roll < 0.80:
            sql, params = POINT_SQL, [rng.choice(ids)]
        elif roll < 0.95:
            i = rng.randrange(len(times) - RANGE_ROWS)
            sql, params = RANGE_SQL, [times[i], times[i + RANGE_ROWS]]
        else:
            i = rng.randrange(len(times) - TOP_WINDOW)
            sql, params = TOP_SQL, [times[i], times[i + TOP_WINDOW]]
        pool.append(_request(n + 1, sql, params))
    return pool


def _request(req_id: int, sql: str, params: list) -> bytes:
    return json.dumps({"id": req_id, "sql": sql, "params": params}, separators=(",", ":")).encode() + b"\n"


async def _open_client(port: int, echo: bool):
    import trio

    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await sock.connect(("127.0.0.1", port))
    buf = b""
    if not echo:  # skip the hello line
        while b"\n" not in buf:
            data = await sock.recv(65536)
            if not data:
                raise ConnectionError("server closed before its hello")
            buf += data
        buf = buf[buf.index(b"\n") + 1 :]
    return sock, buf


async def _exchange(sock, buf: bytes, request: bytes, echo: bool) -> tuple[bytes, bytes | None]:
    """Send one request and read to its last line; returns (leftover, error line or None)."""
    view = memoryview(request)
    while view:
        view = view[await sock.send(view) :]
    pos = 0
    while True:
        pos, ended, error = _answer_end(buf, pos, echo)
        if ended:
            return buf[pos:], error
        data = await sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buf = buf[pos:] + data
        pos = 0


def _answer_end(buf: bytes, pos: int, echo: bool) -> tuple[int, bool, bytes | None]:
    """Look through the whole lines of ``buf`` from ``pos`` for an answer's last one.

    Returns where the look stopped (after that line, or at the first
    incomplete one), whether it was found (the ``done`` or ``error`` line;
    for echo, any line) and, for an ``error`` line, the line.
    """
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return pos, False, None
        start, pos = pos, nl + 1
        if echo:
            return pos, True, None
        k = buf.find(b'"type":"', start, min(nl, start + 48))
        if k >= 0:
            kind = buf[k + 8]
            if kind == 0x64:  # "done"
                return pos, True, None
            if kind == 0x65:  # "error"
                return pos, True, buf[start:nl]


def _load_setup(spec: LoadSpec) -> tuple[list[list[bytes]], array.array, dict, tuple[float, float, float]]:
    """What both load generators start from: each client's requests, the latencies, the results, the windows.

    The requests are the same for every server and load generator (seeded
    by the client's number); the windows (warm-up, start, end) are the
    wall-clock start shared by every load process, in ``perf_counter`` time.
    """
    con = sqlite3.connect(spec.db)
    ids = [r[0] for r in con.execute("SELECT id FROM quakes")]
    times = [r[0] for r in con.execute("SELECT time FROM quakes ORDER BY time")]
    con.close()
    pools = [
        _build_pool(spec.mode, ids, times, random.Random(1000 + spec.first_client + i)) for i in range(spec.clients)
    ]
    out: dict = {"count": 0, "errors": 0, "first_error": None, "slow": [], "slow_errors": [], "late": 0.0}
    t_warm = time.perf_counter() + (spec.start_at - time.time())
    t_start = t_warm + spec.warmup
    return pools, array.array("d"), out, (t_warm, t_start, t_start + spec.duration)


def _record(out: dict, latencies: array.array, t0: float, t1: float, error: bytes | None, t_start: float,
            t_end: float) -> None:
    """Count one answer of a request sent at ``t0`` and ended at ``t1`` (its ``error`` line, or None).

    Latency: every request sent in the window, however late it ends (a
    request stuck behind a slow query counts in full). Throughput: the
    requests that ended in the window.
    """
    if t0 >= t_start:
        latencies.append(t1 - t0)
        if error is not None:
            out["errors"] += 1
            out["first_error"] = out["first_error"] or error.decode(errors="replace")
    if t_start <= t1 <= t_end:
        out["count"] += 1


async def _load_main(spec: LoadSpec) -> dict:
    import trio

    pools, latencies, out, (t_warm, t_start, t_end) = _load_setup(spec)

    async def client(i: int) -> None:
        sock, buf = await _open_client(spec.port, spec.echo)
        with sock:
            pool = pools[i]
            k = random.Random(i).randrange(len(pool))
            out["late"] = max(out["late"], time.perf_counter() - t_warm)
            await trio.sleep_until(trio.current_time() + (t_warm - time.perf_counter()))
            while True:
                request = pool[k % POOL_SIZE]
                k += 1
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                buf, error = await _exchange(sock, buf, request, spec.echo)
                _record(out, latencies, t0, time.perf_counter(), error, t_start, t_end)

    async def slow_client() -> None:
        sock, buf = await _open_client(spec.port, spec.echo)
        with sock:
            request = _request(1, SLOW_SQL, [spec.slow_param])
            while True:
                t0 = in_flight[0] = time.perf_counter()
                buf, error = await _exchange(sock, buf, request, spec.echo)
                t1 = time.perf_counter()
                in_flight[0] = None
                out["slow"].append([t0, t1 - t0, True])
                if error is not None:
                    out["slow_errors"].append(error.decode(errors="replace"))

    in_flight: list[float | None] = [None]
    async with trio.open_nursery() as nursery:
        if spec.slow_param is not None:
            # Starts at once, so that a slow query is already running when the window opens.
            nursery.start_soon(slow_client)
        async with trio.open_nursery() as clients:
            for i in range(spec.clients):
                clients.start_soon(client, i)
        nursery.cancel_scope.cancel()
    if in_flight[0] is not None:  # still running: report how long it had run so far
        out["slow"].append([in_flight[0], time.perf_counter() - in_flight[0], False])
    # Slow queries that overlapped the measured window, as offsets from its start.
    out["slow"] = [[t0 - t_start, d, finished] for t0, d, finished in out["slow"]]
    with open(spec.latencies_path, "wb") as f:
        latencies.tofile(f)
    return out


@dataclass(slots=True, eq=False)
class _Client:
    """One client of :func:`_load_epoll`: its socket, what it has read of the answer, its requests and the next one."""

    sock: socket.socket
    buf: bytes
    pool: list[bytes]
    next: int  # the next request's index in pool (modulo its length)
    slow: bool = False  # the slow client: sends back to back until the others are done
    sent_at: float = 0.0  # perf_counter when the request out went


def _load_epoll(spec: LoadSpec) -> dict:
    """The same load as :func:`_load_main`, from one ``epoll`` loop instead of a trio task per client.

    Each client is a small state machine (its socket, what it has read, its
    next request, when the request went); the loop reads each readable
    socket once, looks for the answer's end as :func:`_exchange` does (:func:`_answer_end`), and sends the
    client's next request as soon as the answer's ``done`` or ``error``
    line is in. The same requests, windows and counting as the trio load
    generator, at a fraction of its CPU per request: on a 2-core machine the
    load generator shares the CPUs with the server, and a server that uses
    both cores (``--workers auto``) loses what the client takes, while a
    one-core server does not.
    """
    import select

    pools, latencies, out, (t_warm, t_start, t_end) = _load_setup(spec)
    clock = time.perf_counter

    def open_client() -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(("127.0.0.1", spec.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        if not spec.echo:  # skip the hello line
            while b"\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed before its hello")
                buf += data
            buf = buf[buf.index(b"\n") + 1 :]
        return sock, buf

    clients: dict[int, _Client] = {}  # by fd
    for i in range(spec.clients):
        sock, buf = open_client()
        pool = pools[i]
        clients[sock.fileno()] = _Client(sock, buf, pool, random.Random(i).randrange(len(pool)))
    if spec.slow_param is not None:
        sock, buf = open_client()
        clients[sock.fileno()] = _Client(sock, buf, [_request(1, SLOW_SQL, [spec.slow_param])], 0, slow=True)
    out["late"] = clock() - t_warm
    epoll = select.epoll()
    for fd in clients:
        epoll.register(fd, select.EPOLLIN)

    def send_next(client: _Client) -> bool:
        """Send the client's next request; False once the window is over (the client stops)."""
        t0 = clock()
        if t0 >= t_end and not client.slow:
            return False
        pool = client.pool
        request = pool[client.next % len(pool)]
        client.next += 1
        client.sent_at = t0
        client.sock.sendall(request)
        return True

    for client in clients.values():
        if client.slow:  # at once, so that a slow query is already running when the window opens
            send_next(client)
    delay = t_warm - clock()
    if delay > 0:
        time.sleep(delay)
    for client in clients.values():
        if not client.slow:
            send_next(client)
    running = spec.clients
    echo = spec.echo
    while running:
        for fd, _ in epoll.poll():
            client = clients[fd]
            data = client.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buf = client.buf + data
            pos, ended, error = _answer_end(buf, 0, echo)
            client.buf = buf[pos:]
            if not ended:
                continue
            t1 = clock()
            t0 = client.sent_at
            if client.slow:  # the slow client: back to back until the others are done
                out["slow"].append([t0, t1 - t0, True])
                if error is not None:
                    out["slow_errors"].append(error.decode(errors="replace"))
                send_next(client)
                continue
            _record(out, latencies, t0, t1, error, t_start, t_end)
            if not send_next(client):
                epoll.unregister(fd)
                running -= 1
    for client in clients.values():
        if client.slow:  # its last query is still running: how long it had run so far
            out["slow"].append([client.sent_at, clock() - client.sent_at, False])
        client.sock.close()
    epoll.close()
    out["slow"] = [[t0 - t_start, d, finished] for t0, d, finished in out["slow"]]
    with open(spec.latencies_path, "wb") as f:
        latencies.tofile(f)
    return out


# --- servers ---------------------------------------------------------------------


TRIONET_ARGS: list[str] = []  # --trionet-args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(name: str) -> Path:
    """The source tree a server's code comes from: ``--compare-tree`` for trionet-before, else this one."""
    return BEFORE_TREE[0] if name == "trionet-before" else ROOT


def _server_env(name: str) -> dict[str, str] | None:
    """trionet-before imports its own tree's package, whatever PYTHONPATH this script was started with."""
    return {**os.environ, "PYTHONPATH": str(BEFORE_TREE[0])} if name == "trionet-before" else None


def _trionet_cli_command(db: Path, port: int, root: Path = ROOT) -> list[str] | None:
    """The ``trionet sql serve`` command line, or None if this checkout has no such CLI yet."""
    try:
        helptext = subprocess.run(
            [PY, "-m", "trionet", "sql", "serve", "--help"], cwd=root, capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if helptext.returncode != 0 or "--db" not in helptext.stdout:
        return None
    cmd = [PY, "-m", "trionet", "sql", "serve", "--db", str(db), "--port", str(port)]
    if "--no-pg" in helptext.stdout:
        cmd.append("--no-pg")  # the NDJSON port alone is measured here (tools/bench_pg.py: the other)
    if "--log-level" in helptext.stdout:
        cmd += ["--log-level", "warning"]
    return cmd + TRIONET_ARGS


def _server_command(name: str, db: Path, port: int, use_cli: bool) -> list[str]:
    if name == "trionet-before":
        cmd = _trionet_cli_command(db, port, BEFORE_TREE[0])
        if cmd is None:
            raise click.ClickException(f"{BEFORE_TREE[0]} has no 'trionet sql serve --db'")
        return cmd
    if name == "trionet" and use_cli:
        cmd = _trionet_cli_command(db, port)
        if cmd is not None:
            return cmd
    if name in ("trionet", "trionet-noinline"):
        cmd = [PY, str(Path(__file__).resolve()), "serve-trionet", "--db", str(db), "--port", str(port)]
        return cmd + (["--no-inline"] if name == "trionet-noinline" else [])
    if name == "select":
        return [PY, str(BASELINES / "select_sql_server.py"), "--db", str(db), "--port", str(port)]
    if name == "echo":
        return [PY, str(BASELINES / "echo_server.py"), "--port", str(port)]
    if name == "floor":
        return [PY, str(BASELINES / "trio_sql_floor.py"), "--db", str(db), "--port", str(port)]
    raise ValueError(name)


@dataclass
class RunningServer:
    name: str
    command: list[str]
    process: subprocess.Popen
    port: int
    log_path: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process, all its threads, and of its children (``--workers``)."""
        return _tree_cpu(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and its descendants, live or reaped."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
        todo.extend(children.get(pid, []))
    return total


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    tck = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tck, total / tck


def _start_server(name: str, db: Path, workdir: Path, use_cli: bool) -> RunningServer:
    """Start ``name`` on a free port and wait until it answers.

    The port is found by binding port 0 and passed on; if another process
    takes it in between (the server then fails with EADDRINUSE), try another.
    """
    for attempt in range(5):
        try:
            return _start_server_once(name, db, workdir, use_cli)
        except _PortTaken:
            continue
    raise click.ClickException(f"{name}: no free port after 5 attempts")


class _PortTaken(Exception):
    pass


def _start_server_once(name: str, db: Path, workdir: Path, use_cli: bool) -> RunningServer:
    port = _free_port()
    cmd = _server_command(name, db, port, use_cli)
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=_tree(name), env=_server_env(name), stdout=log_file, stderr=subprocess.STDOUT)
    server = RunningServer(name, cmd, proc, port, log_path)
    # A benchmark may poll (tests may not): connect until the server answers.
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            if "Address already in use" in log_path.read_text(errors="replace"):
                raise _PortTaken
            raise click.ClickException(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if name == "echo":
                    s.sendall(b"ping\n")
                if s.recv(1024):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise click.ClickException(f"{name} did not answer on port {port} within 30 s")
        time.sleep(0.05)


async def _serve_trionet(db: str, port: int, inline: bool) -> None:
    from trionet.sql import Database, SqlServer, SqlServerConfig

    await SqlServer(Database(db), SqlServerConfig(inline=inline)).serve("127.0.0.1", port)


# --- running scenarios -------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    server: str
    qps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    count: int
    errors: int
    server_cpu: float  # cores used by the server process in the window
    load_cpu: float  # cores used by the load generator(s) in the window
    other_cpu: float  # cores used by everything else (other users of the machine, the kernel)
    server_us_per_query: float = math.nan  # server CPU per answered query: less sensitive to a busy machine
    first_error: str | None = None
    slow_queries_s: list[list] = field(default_factory=list)  # [seconds, finished] per slow query
    qps_range: tuple[float, float] | None = None  # lowest and highest round, for medians over rounds
    p99_range: tuple[float, float] | None = None
    rounds: int = 1


def _percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _wait_quiet(limit_s: float, threshold: float = 0.25) -> float:
    """Wait up to ``limit_s`` for the machine to be idle; returns the cores busy at the end.

    Other people's test runs on a 2-core machine skew every figure, so a run
    can wait for them (``--wait-quiet``); the ``other CPU`` column shows what
    was left.
    """
    deadline = time.monotonic() + limit_s
    while True:
        b0 = _machine_busy()
        time.sleep(0.5)
        b1 = _machine_busy()
        busy = (b1[0] - b0[0]) / max(b1[1] - b0[1], 1e-9) * len(os.sched_getaffinity(0))
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(1.0)


def _run_scenario(
    server: RunningServer, scenario: str, db: Path, workdir: Path, opts: dict, slow_param: str | None
) -> Result:
    procs = opts["load_procs"]
    clients = opts["clients"]
    if opts["wait_quiet"]:
        _wait_quiet(opts["wait_quiet"])
    start_at = time.time() + 2.0 + 0.3 * procs  # time to start Python, build the requests and connect
    loaders = []
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    first = 0
    for i in range(procs):
        spec = LoadSpec(
            port=server.port,
            mode="mixed" if scenario == "mixed" else "point",
            clients=share[i],
            first_client=first,
            echo=server.name == "echo",
            db=str(db),
            start_at=start_at,
            warmup=opts["warmup"],
            duration=opts["duration"],
            latencies_path=str(workdir / f"lat-{i}.bin"),
            slow_param=slow_param if scenario == "slow" and i == 0 else None,
            loop=opts["loadgen"],
        )
        first += share[i]
        spec_path = workdir / f"load-{i}.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        cmd = [PY, str(Path(__file__).resolve()), "loadgen", str(spec_path)]
        loaders.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    time.sleep(max(0.0, start_at + opts["warmup"] - time.time()))

    def sample() -> tuple[float, float, tuple[float, float], float]:
        load = sum(_process_cpu(p.pid) for p in loaders)
        return server.cpu_seconds(), load, _machine_busy(), time.monotonic()

    before = sample()
    time.sleep(opts["duration"])
    after = sample()
    window = after[3] - before[3]
    server_cpu = (after[0] - before[0]) / window
    load_cpu = (after[1] - before[1]) / window
    busy = (after[2][0] - before[2][0]) / (after[2][1] - before[2][1]) * len(os.sched_getaffinity(0))
    outs = []
    for proc in loaders:
        stdout, stderr = proc.communicate(timeout=opts["duration"] + 60)
        if proc.returncode != 0:
            raise click.ClickException(f"load generator failed:\n{stderr[-3000:]}")
        outs.append(json.loads(stdout))
    late = max(o["late"] for o in outs)
    if late > 0:
        click.echo(f"  (the load generator was ready {late:.2f} s late: the warm-up was that much shorter)")
    latencies = array.array("d")
    for i in range(procs):
        with open(workdir / f"lat-{i}.bin", "rb") as f:
            latencies.frombytes(f.read())
    values = sorted(latencies)
    completed = sum(o["count"] for o in outs)
    duration = opts["duration"]
    slow = []
    for out in outs:
        # Slow queries that ran (at least partly) in the measured window.
        slow += [[d, finished] for start, d, finished in out["slow"] if start + d > 0 and start < duration]
        if out["slow_errors"]:
            raise click.ClickException(f"the slow query failed on {server.name}: {out['slow_errors'][0]}")
    return Result(
        scenario=scenario,
        server=server.name,
        qps=completed / duration,
        p50_ms=_percentile(values, 0.50) * 1000,
        p99_ms=_percentile(values, 0.99) * 1000,
        mean_ms=(sum(values) / len(values) * 1000) if values else math.nan,
        max_ms=(values[-1] * 1000) if values else math.nan,
        count=completed,
        errors=sum(o["errors"] for o in outs),
        server_cpu=server_cpu,
        load_cpu=load_cpu,
        other_cpu=max(0.0, busy - server_cpu - load_cpu),
        server_us_per_query=server_cpu / (completed / duration) * 1e6 if completed else math.nan,
        first_error=next((o["first_error"] for o in outs if o["first_error"]), None),
        slow_queries_s=slow,
    )


# --- the database ----------------------------------------------------------------------


def _calibrate_slow(db: Path, target_s: float) -> tuple[str, float, int]:
    """Pick the cutoff that makes SLOW_SQL take about ``target_s`` here.

    Runs in-process with a progress handler like the server's (a Python call
    every 1000 VM instructions), so the cost is close to what a server pays.
    Returns (cutoff, measured CPU seconds, rows before the cutoff).
    """
    con = sqlite3.connect(db)
    con.set_progress_handler(lambda: 0, 1000)
    times = [r[0] for r in con.execute("SELECT time FROM quakes ORDER BY time")]

    def timed(k: int) -> float:
        # CPU time, not wall time: other processes on the machine would
        # otherwise make the query look slower and the cutoff too small.
        t0 = time.thread_time()
        con.execute(SLOW_SQL, (times[k],)).fetchone()
        return time.thread_time() - t0

    k = 100
    elapsed = timed(k)
    while elapsed < 0.25 and k < len(times) // 2:
        k *= 2
        elapsed = timed(k)
    k = min(len(times) - 1, max(1, round(k * target_s / elapsed)))
    measured = timed(k)
    con.close()
    return times[k], measured, k


# --- reporting -------------------------------------------------------------------------


def _machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import trio

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "trio": trio.__version__,
        "kernel": platform.release(),
        "loadavg_before": os.getloadavg(),
    }


def _targets(results: list[Result]) -> list[dict]:
    by = {(r.scenario, r.server): r for r in results}
    targets = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool, detail: str) -> None:
        if value is None or math.isnan(value):
            targets.append({"target": name, "value": None, "limit": limit, "verdict": "n/a", "detail": detail})
            return
        ok = value >= limit if higher_is_better else value <= limit
        targets.append({"target": name, "value": value, "limit": limit, "verdict": "PASS" if ok else "FAIL", "detail": detail})

    def ratio(a, b, attr):
        if a is None or b is None or not getattr(b, attr):
            return None
        return getattr(a, attr) / getattr(b, attr)

    t, e, s = by.get(("point", "trionet")), by.get(("point", "echo")), by.get(("point", "select"))
    add("point q/s trionet / echo", ratio(t, e, "qps"), 0.8, True, ">= 0.8")
    add("point q/s trionet / select", ratio(t, s, "qps"), 1.0, True, ">= 1.0")
    add("p99 with slow query / without (trionet)", ratio(by.get(("slow", "trionet")), t, "p99_ms"), 5.0, False, "<= 5")
    f = by.get(("point", "floor"))
    value = ratio(f, s, "qps")
    if value is not None:
        targets.append({"target": "point q/s floor / select", "value": value, "limit": None,
                        "verdict": "info", "detail": "what trio itself allows"})  # fmt: skip
    value = ratio(t, f, "qps")
    if value is not None:
        targets.append({"target": "point q/s trionet / floor", "value": value, "limit": None,
                        "verdict": "info", "detail": "the cost of trionet's safety"})  # fmt: skip
    b = by.get(("point", "trionet-before"))
    for what, attr in (("q/s", "qps"), ("server us/q", "server_us_per_query")):
        value = ratio(t, b, attr)
        if value is not None:
            targets.append({"target": f"point {what} trionet / trionet-before", "value": value, "limit": None,
                            "verdict": "info", "detail": "after / before (--compare-tree)"})  # fmt: skip
    value = ratio(b, s, "qps")
    if value is not None:
        targets.append({"target": "point q/s trionet-before / select", "value": value, "limit": None,
                        "verdict": "info", "detail": "the before tree against the target's baseline"})  # fmt: skip
    for name in ("trionet-before", "trionet-noinline", "select"):
        slow, alone = by.get(("slow", name)), by.get(("point", name))
        if slow and alone:
            value = ratio(slow, alone, "p99_ms")
            targets.append({"target": f"p99 with slow query / without ({name})", "value": value, "limit": None,
                            "verdict": "info", "detail": "for comparison"})  # fmt: skip
    return targets


def _medians(rounds: list[list[Result]]) -> list[Result]:
    """One Result per (scenario, server): the median of each figure over the rounds, with ranges."""
    by: dict[tuple[str, str], list[Result]] = {}
    for one in rounds:
        for r in one:
            by.setdefault((r.scenario, r.server), []).append(r)
    out = []
    for (scenario, server), runs in by.items():

        def med(attr: str) -> float:
            return statistics.median(getattr(r, attr) for r in runs)

        errors = sum(r.errors for r in runs)
        out.append(
            Result(
                scenario=scenario, server=server, qps=med("qps"), p50_ms=med("p50_ms"), p99_ms=med("p99_ms"),
                mean_ms=med("mean_ms"), max_ms=max(r.max_ms for r in runs), count=sum(r.count for r in runs),
                errors=errors, server_cpu=med("server_cpu"), load_cpu=med("load_cpu"), other_cpu=med("other_cpu"),
                server_us_per_query=med("server_us_per_query"),
                first_error=next((r.first_error for r in runs if r.first_error), None),
                slow_queries_s=[q for r in runs for q in r.slow_queries_s],
                qps_range=(min(r.qps for r in runs), max(r.qps for r in runs)),
                p99_range=(min(r.p99_ms for r in runs), max(r.p99_ms for r in runs)),
                rounds=len(runs),
            )
        )  # fmt: skip
    return out


def _combine_targets(per_round: list[list[dict]]) -> list[dict]:
    """Each target's median ratio over rounds and its range; PASS/FAIL only when all rounds agree."""
    combined = []
    for name in dict.fromkeys(t["target"] for one in per_round for t in one):
        entries = [t for one in per_round for t in one if t["target"] == name]
        values = [t["value"] for t in entries if t["value"] is not None and not math.isnan(t["value"])]
        first = entries[0]
        if not values:
            combined.append({**first, "value": None, "range": None, "verdict": "n/a"})
            continue
        verdicts = {t["verdict"] for t in entries if t["value"] is not None}
        if verdicts <= {"info"}:
            verdict = "info"
        elif verdicts == {"PASS"}:
            verdict = "PASS"
        elif verdicts == {"FAIL"}:
            verdict = "FAIL"
        else:
            verdict = "UNDECIDED"  # the rounds disagree: the spread straddles the limit
        combined.append({**first, "value": statistics.median(values), "range": (min(values), max(values)),
                         "rounds": len(values), "verdict": verdict})  # fmt: skip
    return combined


def _print_report(results: list[Result], targets: list[dict], slow_info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    table = Table(title="trionet sql benchmark")
    columns = ("scenario", "server", "q/s", "q/s range", "p50 ms", "p99 ms", "p99 range", "max ms", "errors",
               "server CPU", "server us/q", "load CPU", "other CPU")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("scenario", "server") else "right")
    for r in results:
        qps_range = f"{r.qps_range[0]:,.0f}-{r.qps_range[1]:,.0f}" if r.qps_range else "-"
        p99_range = f"{r.p99_range[0]:.2f}-{r.p99_range[1]:.2f}" if r.p99_range else "-"
        table.add_row(
            r.scenario, r.server, f"{r.qps:,.0f}", qps_range, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", p99_range,
            f"{r.max_ms:.1f}",
            str(r.errors), f"{r.server_cpu:.2f}", f"{r.server_us_per_query:.0f}", f"{r.load_cpu:.2f}",
            f"{r.other_cpu:.2f}",
        )  # fmt: skip
    console.print(table)
    for r in results:
        if r.first_error:
            console.print(f"[red]{r.scenario}/{r.server}: {r.errors} error(s), first: {r.first_error}[/red]")
        if r.slow_queries_s:
            runs = ", ".join(f"{d:.2f}" + ("" if finished else "+ (unfinished)") for d, finished in r.slow_queries_s)
            console.print(f"slow query on {r.server} during the window: {runs} s")
    if slow_info["cutoff"] is not None:
        console.print(
            f"slow query alone (in-process, calibration): {slow_info['calibrated_s']:.2f} s of CPU "
            f"({slow_info['outer_rows']} outer rows)"
        )
    ttable = Table(title="targets (median ratio over rounds, each taken within its round)")
    for col in ("target", "ratio", "range", "limit", "verdict"):
        ttable.add_column(col)
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        spread = "-" if not t.get("range") else f"{t['range'][0]:.2f}-{t['range'][1]:.2f}"
        style = {"PASS": "green", "FAIL": "red", "UNDECIDED": "yellow"}.get(t["verdict"], "")
        ttable.add_row(t["target"], value, spread, t["detail"], f"[{style}]{t['verdict']}[/{style}]" if style else t["verdict"])
    console.print(ttable)


# --- the command ---------------------------------------------------------------------------


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--clients", type=click.IntRange(1), default=32, show_default=True, help="Concurrent connections.")
@click.option("--duration", type=click.FloatRange(0.5), default=5.0, show_default=True, metavar="SECONDS",
              help="Measured time per scenario and server.")  # fmt: skip
@click.option("--warmup", type=click.FloatRange(0), default=1.0, show_default=True, metavar="SECONDS",
              help="Unmeasured load before each measurement.")  # fmt: skip
@click.option("--slow-seconds", type=click.FloatRange(0.1), default=3.0, show_default=True, metavar="SECONDS",
              help="How long the slow aggregate should take (calibrated at start).")  # fmt: skip
@click.option("--servers", default=",".join(SERVERS), show_default=True, help="Comma-separated servers to measure.")
@click.option("--scenarios", default=",".join(SCENARIOS), show_default=True, help="Comma-separated scenarios.")
@click.option("--load-procs", type=click.IntRange(1), default=1, show_default=True,
              help="Load-generator processes sharing the clients.")  # fmt: skip
@click.option("--loadgen", type=click.Choice(["epoll", "trio"]), default="epoll", show_default=True,
              help="How each load-generator process drives its clients: one epoll loop (less CPU per request, "
              "left to the servers), or a trio task per client (what sessions before 14 measured with).")  # fmt: skip
@click.option("--wait-quiet", type=click.FloatRange(0), default=0.0, show_default=True, metavar="SECONDS",
              help="Before each scenario, wait up to this long for other processes to leave the CPUs idle.")  # fmt: skip
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Rounds of every scenario on every server, interleaved; medians and ranges are reported.")  # fmt: skip
@click.option("--no-cli", is_flag=True, help="Start trionet with this script's launcher, not 'python3 -m trionet'.")
@click.option("--trionet-args", default="", metavar="ARGS",
              help="More arguments for 'trionet sql serve', e.g. '--workers auto'.")  # fmt: skip
@click.option("--compare-tree", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
              help="Also run trionet from this source tree as 'trionet-before', interleaved with the others.")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
@click.pass_context
def main(
    ctx, clients, duration, warmup, slow_seconds, servers, scenarios, load_procs, loadgen, wait_quiet, repeat,
    no_cli, trionet_args, compare_tree, json_path,
) -> None:
    """Measure trionet sql against an echo server and a select()-loop server."""
    if ctx.invoked_subcommand is not None:
        return
    TRIONET_ARGS[:] = shlex.split(trionet_args)
    servers = [s for s in servers.split(",") if s]
    if compare_tree is not None:
        BEFORE_TREE[:] = [compare_tree.resolve()]
        if "trionet-before" not in servers:
            servers.insert(servers.index("trionet") + 1 if "trionet" in servers else 0, "trionet-before")
    elif "trionet-before" in servers:
        raise click.BadParameter("trionet-before needs --compare-tree DIR", param_hint="--servers")
    scenarios = [s for s in scenarios.split(",") if s]
    for s in servers:
        if s not in SERVERS + OPTIONAL_SERVERS:
            raise click.BadParameter(f"unknown server {s!r}", param_hint="--servers")
    for s in scenarios:
        if s not in SCENARIOS:
            raise click.BadParameter(f"unknown scenario {s!r}", param_hint="--scenarios")
    opts = {
        "clients": clients, "duration": duration, "warmup": warmup, "load_procs": load_procs, "wait_quiet": wait_quiet,
        "repeat": repeat, "loadgen": loadgen,
    }  # fmt: skip
    machine = _machine()
    click.echo(
        f"{machine['nproc']} CPU(s), {machine['cpu']}; Python {machine['python']}, SQLite {machine['sqlite']}, "
        f"trio {machine['trio']}; load average {machine['loadavg_before'][0]:.2f}"
    )
    results: list[Result] = []
    commands: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
        workdir = Path(tmp)
        db = workdir / "quakes.sqlite"
        t0 = time.perf_counter()
        from trionet.sql.catalog import build_catalogue

        build_catalogue(db)
        n_rows = sqlite3.connect(db).execute("SELECT count(*) FROM quakes").fetchone()[0]
        click.echo(f"imported {n_rows} rows of the shipped catalogue in {time.perf_counter() - t0:.1f} s")
        slow_param, calibrated, outer = None, math.nan, 0
        if "slow" in scenarios:
            slow_param, calibrated, outer = _calibrate_slow(db, slow_seconds)
            click.echo(
                f"slow query: {calibrated:.2f} s of CPU in-process with cutoff time < {slow_param!r} ({outer} outer rows)"
            )
        started: dict[str, object] = {}
        rounds: list[list[Result]] = []
        try:
            for name in servers:
                started[name] = _start_server(name, db, workdir, use_cli=not no_cli)
                commands[name] = shlex.join(started[name].command)
                click.echo(f"{name}: {commands[name]}")
            for i in range(repeat):
                order = servers[i % len(servers):] + servers[: i % len(servers)]
                this_round: list[Result] = []
                for scenario in scenarios:
                    for name in order:
                        if name not in SQL_SERVERS and scenario != "point":
                            continue
                        if name == "floor" and scenario == "slow":
                            continue  # the floor runs SQLite inline: a slow query stops it, like select
                        result = _run_scenario(started[name], scenario, db, workdir, opts, slow_param)
                        this_round.append(result)
                        click.echo(
                            f"  round {i + 1} {scenario:6} {name:16} {result.qps:9,.0f} q/s  p50 {result.p50_ms:7.2f} ms  "
                            f"p99 {result.p99_ms:8.2f} ms  server CPU {result.server_cpu:.2f}  "
                            f"load CPU {result.load_cpu:.2f}  other CPU {result.other_cpu:.2f}  errors {result.errors}"
                        )
                rounds.append(this_round)
        finally:
            for server in started.values():
                server.stop()
        results = _medians(rounds)
    machine["loadavg_after"] = os.getloadavg()
    targets = _combine_targets([_targets(r) for r in rounds])
    slow_info = {"sql": SLOW_SQL, "cutoff": slow_param, "calibrated_s": calibrated, "outer_rows": outer}
    _print_report(results, targets, slow_info)
    if json_path is not None:
        doc = {
            "command": shlex.join([Path(PY).name, *sys.argv]),
            "machine": machine,
            "options": {**opts, "slow_seconds": slow_seconds, "compare_tree": str(compare_tree) if compare_tree else None},
            "servers": commands,
            "queries": {"point": POINT_SQL, "range": RANGE_SQL, "top10": TOP_SQL, "slow": slow_info},
            "results": [asdict(r) for r in results],
            "rounds": [[asdict(r) for r in one] for one in rounds],
            "targets": targets,
        }
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        click.echo(f"results written to {json_path}")


@main.command("loadgen", hidden=True)
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def loadgen(spec_path: Path) -> None:
    """Run one load-generator process (started by the benchmark)."""
    import trio

    spec = LoadSpec(**json.loads(spec_path.read_text()))
    out = _load_epoll(spec) if spec.loop == "epoll" else trio.run(_load_main, spec)
    json.dump(out, sys.stdout)


@main.command("serve-trionet", hidden=True)
@click.option("--db", required=True)
@click.option("--port", type=int, required=True)
@click.option("--inline/--no-inline", default=True)
def serve_trionet(db: str, port: int, inline: bool) -> None:
    """Run trionet's SQL server with a chosen ``inline`` setting (for the benchmark)."""
    import trio

    try:
        trio.run(_serve_trionet, db, port, inline)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
