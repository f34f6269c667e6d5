"""Benchmark of trionet's PostgreSQL port against PostgreSQL 15 itself, with PostgreSQL's own pgbench.

Both servers serve the same table, loaded with the same rows::

    pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)

100,000 rows (``--rows``): aid 1..N, bid 1, abalance 0, filler 84 blanks
(what ``pgbench -i`` writes). The load is::

    pgbench -n -T SECONDS -f select.sql [-c 1 | -c 32 -j 2] -M simple|prepared

(``--clients`` and ``--modes`` choose other cases; from 2 clients on, ``-j 2``)

with the script ``\\set aid random(1, 100000)`` / ``SELECT abalance FROM
pgbench_accounts WHERE aid = :aid;``.

Servers:

- ``postgres``: ``initdb`` into a temporary directory (as the ``postgres``
  user when run as root: PostgreSQL refuses to run as root), default
  settings, trust authentication, listening on 127.0.0.1 on a free port;
- ``trionet``: ``python3 -m trionet sql serve --db FILE --pg-port PORT
  --workers auto`` (``--trionet-args`` to change), read-only, default limits;
- ``trionet-1``: the same with ``--workers 1``, one process (``--no-single`` drops it);
- ``pg-floor`` and ``pg-floor-canned`` (with ``--floor``):
  ``tools/baselines/pg_floor.py``, one worker per core: the least a Python
  server can do per transaction (an ``epoll`` loop, SQLite inline), and the
  same loop answering without SQLite;
- ``pg-floor-apsw`` (with ``--floor --floor-apsw``): the floor calling
  SQLite through apsw (``pip install apsw``, for the benchmark only), a
  thinner wrapper than the standard ``sqlite3`` module;
- ``trionet-before`` (with ``--compare-tree DIR``): trionet from another
  source tree (an older commit: ``git archive COMMIT | tar -x -C DIR``) with
  the same arguments, so a change is measured before and after in one run.

Every server is started once; each round runs every case (clients x mode)
on every server, the servers in an order that rotates from round to round,
so load from elsewhere on the machine hits all alike. Each figure is the
median over rounds with its range [lowest-highest]; a target's ratio
(trionet / postgres) is taken within each round, and a target is "met" only
when every round meets it, "missed" when none does, else "undecided".

Besides pgbench's tps and average latency, each server's CPU time per
transaction is measured from /proc/PID/stat of the server's whole process
tree (postmaster and backends; supervisor and workers): the running
processes' utime+stime plus their cutime+cstime (children that ended, such
as backends, are counted in their parent).

With ``--perf``, pgbench runs under ``perf stat``, which counts its
``ppoll`` calls and context switches: how often it found nothing to read
and slept, per transaction (docs/benchmarks.md, "Session 15").

Usage::

    python3 tools/bench_pg.py --seconds 10 --rounds 5 --json bench_pg.json

Figures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SCRIPT = "\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
CASES = [(1, 1, "simple"), (1, 1, "prepared"), (32, 2, "simple"), (32, 2, "prepared")]
TARGETS = {32: 1.0, 1: 0.8}  # trionet tps / postgres tps, by clients
FILLER = " " * 84
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- data ------------------------------------------------------------------------


def _rows(count: int):
    return ((aid, 1, 0, FILLER) for aid in range(1, count + 1))


def load_sqlite(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)")
    db.executemany("INSERT INTO pgbench_accounts VALUES (?, ?, ?, ?)", _rows(rows))
    db.commit()
    db.execute("ANALYZE")
    db.close()


def load_postgres(port: int, socket_dir: Path, rows: int) -> None:
    data = "".join(f"{a}\t{b}\t{c}\t{f}\n" for a, b, c, f in _rows(rows))
    sql = (
        "CREATE TABLE pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT);\n"
        "COPY pgbench_accounts FROM STDIN;\n" + data + "\\.\nVACUUM ANALYZE pgbench_accounts;\n"
    )
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"],
        input=sql, text=True, check=True, capture_output=True,
    )  # fmt: skip


# --- servers -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user() -> list[str]:
    """The prefix that runs a PostgreSQL binary: ``runuser -u postgres --`` when we are root."""
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # KeyError: no such user
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    database: str
    log_path: Path

    def cpu_seconds(self) -> float:
        """CPU of the server's process tree so far (see the module docstring)."""
        return _tree_cpu(self.process.pid)

    def stop(self) -> None:
        if self.name == "postgres":
            # The postmaster, not runuser in front of it: SIGINT is PostgreSQL's fast shutdown.
            pidfile = self.log_path.parent / "pgdata" / "postmaster.pid"
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)
            except (OSError, ValueError, IndexError):
                pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT if self.name == "postgres" else signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _tree_cpu(root: int) -> float:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        # utime, stime, and cutime, cstime: the children it reaped (ended
        # backends, in the postmaster's), each counted once, in its parent.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        todo.extend(children.get(pid, []))
    return total / CLK_TCK


def start_postgres(workdir: Path, rows: int) -> Server:
    prefix = _as_postgres_user()
    data = workdir / "pgdata"
    data.mkdir()
    if prefix:
        shutil.chown(workdir, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        prefix + [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = _free_port()
    log_path = workdir / "postgres.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            prefix + [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(workdir),
                      "-c", "listen_addresses=127.0.0.1"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_ready(proc, port, log_path)
    load_postgres(port, workdir, rows)
    return Server("postgres", proc, port, "postgres", log_path)


def start_trionet(name: str, db: Path, workdir: Path, extra: list[str], tree: Path = ROOT) -> Server:
    log_path = workdir / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(tree))  # the code of ``tree``, not the installed package
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [PY, "-m", "trionet", "sql", "serve", "--db", str(db), "--port", "0", "--pg-port", "0",
             "--log-level", "info", *extra],
            cwd=tree, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:  # a benchmark may poll its log (tests may not)
        if match := re.search(r"pg listening on 127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace")):
            port = int(match.group(1))
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"{name} did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    _wait_ready(proc, port, log_path)
    return Server(name, proc, port, "bench", log_path)


def start_floor(name: str, db: Path, workdir: Path, extra: list[str]) -> Server:
    """``tools/baselines/pg_floor.py``: the least a Python server can do per transaction."""
    log_path = workdir / f"{name}.log"
    port = _free_port()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [PY, str(ROOT / "tools" / "baselines" / "pg_floor.py"), "--db", str(db), "--port", str(port),
             "--workers", str(os.cpu_count() or 1), *extra],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_ready(proc, port, log_path)
    return Server(name, proc, port, "bench", log_path)


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise click.ClickException(f"server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        ready = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atc", "SELECT 1", "postgres"],
            capture_output=True, text=True,
        )  # fmt: skip
        if ready.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"no answer on port {port}: {ready.stderr}")
        time.sleep(0.1)


# --- running -----------------------------------------------------------------------


@dataclass
class Run:
    server: str
    clients: int
    threads: int
    mode: str
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    cpu_us_per_tx: float
    machine_busy: float  # cores busy on the whole machine during the run
    pgbench_us_per_tx: float = 0.0  # the load generator's own CPU (its rusage), per transaction
    pgbench_polls_per_tx: float | None = None  # with --perf: pgbench's ppoll calls per transaction
    pgbench_switches_per_tx: float | None = None  # with --perf: its context switches per transaction


def _machine_busy() -> tuple[float, float]:
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    total = sum(ticks[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


PERF_EVENTS = ("context-switches", "syscalls:sys_enter_ppoll")


def run_pgbench(
    server: Server, script: Path, clients: int, threads: int, mode: str, seconds: float, perf: bool = False
) -> Run:
    cmd = [
        "pgbench", "-n", "-T", str(seconds), "-f", str(script), "-c", str(clients), "-j", str(threads),
        "-M", mode, "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", server.database,
    ]  # fmt: skip
    perf_out = script.parent / "perf-stat.csv"
    if perf:  # pgbench's polls and switches, counted by the kernel (perf's own CPU counts in the rusage)
        cmd = ["perf", "stat", "-x,", "-e", ",".join(PERF_EVENTS), "-o", str(perf_out), "--", *cmd]
    cpu0, (busy0, total0) = server.cpu_seconds(), _machine_busy()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)  # let ended backends be reaped into the postmaster's cutime
    cpu1, (busy1, total1) = server.cpu_seconds(), _machine_busy()
    if done.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    failed_match = re.search(r"number of failed transactions: (\d+)", out)
    failed = int(failed_match.group(1)) if failed_match else 0
    ncpu = os.cpu_count() or 1
    counts = _perf_counts(perf_out) if perf else {}
    per_tx = {name: counts[name] / max(1, transactions) for name in counts}
    return Run(
        server.name, clients, threads, mode, tps, latency, transactions, failed,
        (cpu1 - cpu0) / max(1, transactions) * 1e6,
        (busy1 - busy0) / max(1e-9, total1 - total0) * ncpu,
        (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime)
        / max(1, transactions) * 1e6,
        per_tx.get("syscalls:sys_enter_ppoll"), per_tx.get("context-switches"),
    )  # fmt: skip


def _perf_counts(path: Path) -> dict[str, float]:
    """``perf stat -x,`` output: count by event name."""
    counts = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0])
    return counts


@dataclass
class Summary:
    server: str
    clients: int
    mode: str
    tps: float
    tps_range: tuple[float, float]
    latency_ms: float
    latency_range: tuple[float, float]
    cpu_us_per_tx: float
    cpu_range: tuple[float, float]
    ratio: float | None = None  # trionet / postgres, median of per-round ratios
    ratio_range: tuple[float, float] | None = None
    verdict: str | None = None
    rounds: list[float] = field(default_factory=list)


def _median_range(values: list[float]) -> tuple[float, tuple[float, float]]:
    return statistics.median(values), (min(values), max(values))


def cases(clients: str, modes: str) -> list[tuple[int, int, str]]:
    """(clients, pgbench threads, mode) for each of ``clients`` x ``modes`` (comma-separated): -j 2 from 2 clients on."""
    return [(int(c), min(int(c), 2), mode) for c in clients.split(",") for mode in modes.split(",")]


def summarize(runs: list[list[Run]], servers: list[str], cases: list[tuple[int, int, str]] = CASES) -> list[Summary]:
    out = []
    for clients, _, mode in cases:
        base = [next(r for r in rnd if r.server == "postgres" and r.clients == clients and r.mode == mode) for rnd in runs]
        for name in servers:
            mine = [next(r for r in rnd if r.server == name and r.clients == clients and r.mode == mode) for rnd in runs]
            tps, tps_range = _median_range([r.tps for r in mine])
            lat, lat_range = _median_range([r.latency_ms for r in mine])
            cpu, cpu_range = _median_range([r.cpu_us_per_tx for r in mine])
            summary = Summary(name, clients, mode, tps, tps_range, lat, lat_range, cpu, cpu_range,
                              rounds=[r.tps for r in mine])  # fmt: skip
            if name != "postgres" and clients in TARGETS:
                ratios = [m.tps / b.tps for m, b in zip(mine, base)]
                summary.ratio, summary.ratio_range = _median_range(ratios)
                target = TARGETS[clients]
                met = [r >= target for r in ratios]
                summary.verdict = "met" if all(met) else "missed" if not any(met) else "undecided"
            out.append(summary)
    return out


def machine() -> dict:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    pg_version = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": pg_version,
        "pgbench": subprocess.run(["pgbench", "--version"], capture_output=True, text=True).stdout.strip(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def print_pgbench_table(runs: list[list[Run]], servers: list[str], cases: list[tuple[int, int, str]]) -> None:
    """With --perf: pgbench's own cost against each server, medians over the rounds."""
    print("\n| clients | mode | server | pgbench CPU µs/tx | pgbench ppoll calls/tx | pgbench context switches/tx |")
    print("| --- | --- | --- | --- | --- | --- |")
    for clients, _, mode in cases:
        for name in servers:
            mine = [r for rnd in runs for r in rnd if (r.server, r.clients, r.mode) == (name, clients, mode)]
            cpu = statistics.median(r.pgbench_us_per_tx for r in mine)
            polls = statistics.median(r.pgbench_polls_per_tx for r in mine)
            switches = statistics.median(r.pgbench_switches_per_tx for r in mine)
            print(f"| {clients} | {mode} | {name} | {cpu:.1f} | {polls:.3f} | {switches:.3f} |")


def print_table(summaries: list[Summary]) -> None:
    print("| clients | mode | server | tps | latency ms | server CPU µs/tx | tps vs postgres | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in summaries:
        ratio = "" if s.ratio is None else f"{s.ratio:.2f}x [{s.ratio_range[0]:.2f}-{s.ratio_range[1]:.2f}]"
        target = "" if s.verdict is None else f">= {TARGETS[s.clients]:.1f}x: {s.verdict}"
        print(
            f"| {s.clients} | {s.mode} | {s.server} | {s.tps:,.0f} [{s.tps_range[0]:,.0f}-{s.tps_range[1]:,.0f}] "
            f"| {s.latency_ms:.3f} [{s.latency_range[0]:.3f}-{s.latency_range[1]:.3f}] "
            f"| {s.cpu_us_per_tx:.0f} [{s.cpu_range[0]:.0f}-{s.cpu_range[1]:.0f}] | {ratio} | {target} |"
        )


@click.command()
@click.option("--seconds", type=int, default=10.0, show_default=True, help="pgbench -T of each run.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Rounds; figures are medians over them.")
@click.option("--rows", type=int, default=100_000, show_default=True, help="Rows in pgbench_accounts.")
@click.option("--trionet-args", default="--workers auto", show_default=True, help="Extra `sql serve` arguments.")
@click.option("--no-single", is_flag=True, help="Do not also measure trionet with --workers 1.")
@click.option(
    "--compare-tree",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Also run trionet from this source tree (e.g. `git worktree add /tmp/before COMMIT`) as `trionet-before`, "
    "with the same --trionet-args, interleaved with the others: a before/after in one run.",
)
@click.option("--clients", default="1,32", show_default=True, help="pgbench -c of each case, comma-separated.")
@click.option("--modes", default="simple,prepared", show_default=True, help="pgbench -M of each case, comma-separated.")
@click.option("--floor", is_flag=True, help="Also measure tools/baselines/pg_floor.py, with and without SQLite.")
@click.option(
    "--floor-apsw", is_flag=True,
    help="With --floor: also the floor calling SQLite through apsw instead of sqlite3 (pip install apsw first).",
)  # fmt: skip
@click.option(
    "--perf", is_flag=True,
    help="Run pgbench under `perf stat` and report its ppoll calls and context switches per transaction: "
    "how often it found nothing to read and slept.",
)  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write every run here.")
def main(
    seconds, rounds, rows, trionet_args, no_single, compare_tree, clients, modes, floor, floor_apsw, perf, json_path
):
    """Run pgbench's point select against PostgreSQL 15 and trionet, interleaved, and print the medians."""
    run_cases = cases(clients, modes)
    if floor_apsw and not floor:
        raise click.UsageError("--floor-apsw goes with --floor")
    if floor_apsw and importlib.util.find_spec("apsw") is None:
        raise click.ClickException("--floor-apsw needs apsw (pip install apsw): the benchmark's own, not trionet's")
    if perf and shutil.which("perf") is None:
        raise click.ClickException("--perf needs perf (apt-get install linux-perf)")
    if not (PG_BIN / "initdb").exists() or shutil.which("pgbench") is None:
        raise click.ClickException(f"needs PostgreSQL 15 in {PG_BIN} and pgbench (apt-get install postgresql-15)")
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench_pg-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        script = workdir / "select.sql"
        script.write_text(SCRIPT)
        os.chmod(script, 0o644)
        db = workdir / "bench.sqlite"
        load_sqlite(db, rows)
        try:
            servers.append(start_postgres(workdir, rows))
            servers.append(start_trionet("trionet", db, workdir, trionet_args.split()))
            if not no_single:
                servers.append(start_trionet("trionet-1", db, workdir, ["--workers", "1"]))
            if compare_tree is not None:
                servers.append(start_trionet("trionet-before", db, workdir, trionet_args.split(), compare_tree))
            if floor:
                servers.append(start_floor("pg-floor", db, workdir, []))
                servers.append(start_floor("pg-floor-canned", db, workdir, ["--canned"]))
                if floor_apsw:
                    servers.append(start_floor("pg-floor-apsw", db, workdir, ["--apsw"]))
            names = [s.name for s in servers]
            info = machine()
            print(f"machine: {info}", file=sys.stderr)
            for server in servers:  # warm caches and connections once
                run_pgbench(server, script, 2, 1, "simple", 1)
            runs: list[list[Run]] = []
            for rnd in range(rounds):
                this_round = []
                for n_clients, threads, mode in run_cases:
                    order = servers[rnd % len(servers):] + servers[: rnd % len(servers)]
                    for server in order:
                        run = run_pgbench(server, script, n_clients, threads, mode, seconds, perf)
                        print(
                            f"round {rnd + 1} -c {n_clients} -M {mode} {server.name}: {run.tps:,.0f} tps, "
                            f"{run.latency_ms:.3f} ms, {run.cpu_us_per_tx:.0f} µs CPU/tx, "
                            f"pgbench {run.pgbench_us_per_tx:.0f} µs CPU/tx"
                            + (f" {run.pgbench_polls_per_tx:.3f} polls/tx, {run.pgbench_switches_per_tx:.3f} switches/tx"
                               if perf else "")
                            + ", "
                            f"machine {run.machine_busy:.2f} cores busy",
                            file=sys.stderr,
                        )
                        this_round.append(run)
                runs.append(this_round)
        finally:
            for server in servers:
                server.stop()
    summaries = summarize(runs, [n for n in names if n != "postgres"] + ["postgres"], run_cases)
    print_table(summaries)
    if perf:
        print_pgbench_table(runs, [n for n in names if n != "postgres"] + ["postgres"], run_cases)
    if json_path is not None:
        json_path.write_text(json.dumps(
            {"machine": info, "seconds": seconds, "rounds": rounds, "rows": rows, "trionet_args": trionet_args,
             "compare_tree": str(compare_tree) if compare_tree else None, "floor": floor, "floor_apsw": floor_apsw,
             "perf": perf, "cases": run_cases,
             "runs": [[r.__dict__ for r in rnd] for rnd in runs], "summary": [s.__dict__ for s in summaries]},
            indent=1,
        ))  # fmt: skip


if __name__ == "__main__":
    main()
