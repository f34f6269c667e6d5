"""CPU per query of pgbench's point select as the simple-Query fast path runs it: its text, or its literals bound.

In-process, no sockets: a 100,000-row ``pgbench_accounts`` in a temporary
SQLite file, one :class:`~trionet.sql.engine.Session` with the safety rules,
and for each query a new random ``aid``, run as :meth:`Session.execute` is
called by ``Executor._fast_query``: the verdict looked up (a *trial* when the
text is new), within the inline VM budget. ``text`` runs the text as it came
(before branch pg-literals); ``bound`` runs
:func:`~trionet.sql.pg.literals.bind_literals`'s text and values, the rewrite
included. Rounds alternate; the figures are process CPU per query, median
over rounds. A hot loop: SQLite's parser stays in the CPU's caches, so the
server saves more than this (``tools/bench_pg.py`` measures that).

Usage: python3 tools/bench_pg_literals.py [--queries 20000] [--rounds 7]
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import click

from trionet.sql.engine import INLINE_BUDGET, Database
from trionet.sql.pg.literals import bind_literals

from bench_pg import load_sqlite  # the benchmark's own pgbench_accounts rows (tools/ is on sys.path)



@click.command()
@click.option("--queries", type=int, default=20_000, show_default=True, help="Queries per round and way.")
@click.option("--rounds", type=int, default=7, show_default=True, help="Rounds, each way once per round.")
def main(queries: int, rounds: int) -> None:
    """Print µs of CPU per query, text against bound, each round and the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        load_sqlite(path, 100_000)
        db = Database(path)
        session = db.open_session()

        def run(bound: bool) -> float:
            start = time.process_time()
            for _ in range(queries):
                sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {random.randint(1, 100_000)};"
                text, values = bind_literals(sql) if bound else (sql, None)
                verdict = db.inline_verdict(text)
                session.execute(text, values, 100, INLINE_BUDGET, trial=verdict is None)
            return (time.process_time() - start) / queries * 1e6

        figures: dict[str, list[float]] = {"text": [], "bound": []}
        try:
            for _ in range(rounds):
                figures["text"].append(run(False))
                figures["bound"].append(run(True))
        finally:
            session.close()
    for way, values in figures.items():
        click.echo(f"{way}: {statistics.median(values):.1f} µs CPU/query (rounds: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
