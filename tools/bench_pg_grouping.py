"""What it is worth when each client thread talks to one worker: a diagnosis of the 32-client case of #12.

``pgbench -c 32 -j 2`` runs two threads of 16 connections each. Against
``trionet sql serve --workers 2`` the kernel's ``SO_REUSEPORT`` hash spreads
every thread's connections over both workers, so each thread is woken by
both. PostgreSQL's backends each serve one connection and run beside the
thread that wakes them. This tool measures the same load (two load
threads of 16 connections, ``-M prepared``, the point select of
``tools/bench_pg.py``) as two pgbench processes of ``-c 16 -j 1`` each,
started together, their tps added, against:

- ``postgres``: PostgreSQL 15 (as ``tools/bench_pg.py`` starts it);
- ``trionet-mixed``: one ``trionet sql serve --workers 2``, both pgbench
  processes on its port: what ``-c 32 -j 2`` gets today;
- ``trionet-grouped``: two ``trionet sql serve --workers 1`` on two ports,
  one pgbench process each: the same two processes of trionet's code, but
  every client thread meets one worker (what trionet cannot arrange by
  itself yet: docs/benchmarks.md, "Session 16").

Configurations rotate from round to round; each figure is the median
over rounds, and a ratio is taken within each round.

Usage: python3 tools/bench_pg_grouping.py --seconds 8 --rounds 5
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pg import SCRIPT, load_sqlite, start_postgres, start_trionet  # noqa: E402


def _pgbench(port: int, database: str, script: Path, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["pgbench", "-n", "-T", str(seconds), "-f", str(script), "-c", "16", "-j", "1", "-M", "prepared",
         "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _tps(proc: subprocess.Popen) -> float:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise click.ClickException(f"pgbench failed:\n{out}\n{err}")
    for line in out.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise click.ClickException(f"no tps in pgbench's output:\n{out}")


@click.command()
@click.option("--seconds", type=int, default=8, show_default=True, help="pgbench -T of each run.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Rounds; figures are medians over them.")
@click.option("--rows", type=int, default=100_000, show_default=True, help="Rows in pgbench_accounts.")
def main(seconds: int, rounds: int, rows: int) -> None:
    """Two pgbench processes of 16 connections: PostgreSQL, trionet's two workers, one trionet per process."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db = workdir / "bench.sqlite"
        load_sqlite(db, rows)
        script = workdir / "select.sql"
        script.write_text(SCRIPT)
        servers = []
        try:
            servers.append(start_postgres(workdir, rows))
            servers.append(start_trionet("trionet-mixed", db, workdir, ["--workers", "2"]))
            servers.append(start_trionet("trionet-a", db, workdir, ["--workers", "1"]))
            servers.append(start_trionet("trionet-b", db, workdir, ["--workers", "1"]))
            postgres, mixed, one, other = servers
            configs = {
                "postgres": (postgres, postgres),
                "trionet-mixed": (mixed, mixed),
                "trionet-grouped": (one, other),
            }
            names = list(configs)
            results: dict[str, list[float]] = {name: [] for name in names}
            for number in range(rounds):
                order = names[number % len(names) :] + names[: number % len(names)]
                for name in order:
                    first, second = configs[name]
                    procs = [_pgbench(s.port, s.database, script, seconds) for s in (first, second)]
                    tps = sum(_tps(p) for p in procs)
                    results[name].append(tps)
                    print(f"round {number + 1} {name}: {tps:,.0f} tps", flush=True)
        finally:
            for server in servers:
                server.stop()
    print("| load | tps | vs postgres | vs trionet-mixed |")
    print("| --- | --- | --- | --- |")
    for name in names:
        values = results[name]
        cells = [f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"]
        for base in ("postgres", "trionet-mixed"):
            ratios = [v / b for v, b in zip(values, results[base])]
            cells.append("" if base == name else f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
