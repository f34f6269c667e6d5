"""Instructions per transaction of pgbench's prepared point select through the PostgreSQL port, counted by valgrind.

Time on a shared VM swings by 2x from minute to minute; the number of
instructions the CPU runs does not. This tool counts them with valgrind's
callgrind (``apt-get install valgrind``, for measuring only), so that a
change of a few percent in the hot path can be seen at once and compared
between trees; ``tools/bench_pg.py`` then says what it is worth in tps.

Each count is a run of this file under callgrind with ``--inner``: a
:class:`PgServer` on loopback, one connection logged in and ``P_0``
prepared as pgbench does (the run as :mod:`bench_pg_prepared` sets it
up), then N transactions of one way, each ``pgbench -M prepared``'s
bytes with a new ``aid``. Two runs (N small and large) give the count per
transaction as their difference over the difference of N, so start-up
does not count; the ``none`` way (building the inputs only) is taken off
every other way.

Ways:

- ``parked``: what the ready loop's thread does for one request, without
  the socket: :class:`~trionet.serving.ParkedServer`'s ``serve`` (the
  read handed to the protocol core, the fast path, the answer) and
  ``flush`` (a stand-in socket that takes everything);
- ``core``: ``receive_data`` and ``next_event`` until it needs data;
- ``execute``: :meth:`Session.execute` of the statement alone;
- ``sqlite``: the same statement through a bare ``sqlite3`` cursor
  (``execute`` and ``fetchall``): the floor under ``execute``.

What is not here: the system calls, the ready loop's epoll and lock, the
kernel's TCP; and an instruction is not a nanosecond (cache misses are
not counted).

Usage: python3 tools/count_pg_instructions.py [--tree DIR]... [--ways parked,core,execute,sqlite]
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
SMALL, LARGE = 1000, 4000


class _TakesEverything:
    """A stand-in for the connection's DirectSocketIO: reads come from a list, sends all go."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = iter(reads)

    def read_ready(self, framer) -> bool:
        framer.receive_data(next(self._reads))
        return True

    def send_now(self, data: bytes) -> bytes:  # (a tree before send_some)
        return b""

    def send_some(self, data: bytearray) -> None:
        data.clear()


def _inner(way: str, count: int, db: str) -> None:
    sys.path.insert(0, str(TOOLS))
    import bench_pg_prepared as bench
    import trio

    from trionet.framing import NEED_DATA
    from trionet.serving import IdleWatch
    from trionet.sql.engine import INLINE_BUDGET, Database
    from trionet.sql.pg import PgConfig, PgServer

    def run_way(server, st) -> None:
        random.seed(1)
        reads = [bench.prepared_bytes(random.randint(1, 100_000)) for _ in range(count)]
        values = [[str(random.randint(1, 100_000))] for _ in range(count)]
        real, st.io = st.io, _TakesEverything(reads)
        parked = server._parked_server(st, IdleWatch())
        st.io = real
        session, config, proto = st.session, server._executor.config, st.proto
        sql = st.statements["P_0"].statement.sql
        if way == "parked":
            # The ready loop sends ``out`` after serve(); here it is taken
            # whole, as _TakesEverything does (a tree before the loop sent it:
            # the parked server's own flush).
            serve = parked.serve
            flush = getattr(parked, "flush", None) or parked.out.clear
            for _ in range(count):
                serve()
                flush()
        elif way == "core":
            for data in reads:
                proto.receive_data(data)
                while proto.next_event() is not NEED_DATA:
                    pass
        elif way == "execute":
            for value in values:
                session.execute(sql, value, config.batch_rows, INLINE_BUDGET, config.max_batch_bytes)
        elif way == "sqlite":  # ("none" builds the inputs only)
            cursor = session.connection.cursor()
            for value in values:
                cursor.execute(sql, value)
                cursor.fetchall()

    async def main() -> None:
        server = PgServer(Database(Path(db), read_write=False), PgConfig())
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(server.serve, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream(*addresses[0][:2])
            await bench._answer(stream, bench.STARTUP)
            await bench._answer(stream, bench.PARSE)
            for _ in range(3):  # the first runs make the plans
                await bench._answer(stream, bench.prepared_bytes(7))
            ((_secret, st),) = server._keys.values()
            # The connection's real task is parked in the ready loop, whose
            # thread may not have finished sending the last answer yet (its
            # os.write holds st.out while the client here already read the
            # bytes): under the loop's lock, the way has the state alone.
            with st.conn.service.ready._lock:
                run_way(server, st)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _count(tree: Path, way: str, count: int, db: Path, workdir: Path) -> int:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{TOOLS}")
    out = workdir / f"callgrind.{way}.{count}"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
         "--inner", way, str(count), str(db)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise click.ClickException(f"{way} under callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


@click.command()
@click.option("--tree", "trees", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              help="A source tree to count (e.g. `git archive COMMIT | tar -x -C DIR`); default: this one.")
@click.option("--ways", default="parked,core,execute,sqlite", show_default=True, help="Comma-separated.")
@click.option("--inner", nargs=3, hidden=True, help="WAY COUNT DB: run one way (under callgrind).")
def main(trees: tuple[Path, ...], ways: str, inner) -> None:
    """Print instructions per transaction of each way, for each tree."""
    if inner:
        _inner(inner[0], int(inner[1]), inner[2])
        return
    sys.path.insert(0, str(TOOLS))
    from bench_pg import load_sqlite

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db = workdir / "bench.sqlite"
        load_sqlite(db, 100_000)
        for tree in trees or (ROOT,):
            counts = {}
            for way in ["none", *ways.split(",")]:
                small, large = (_count(tree, way, n, db, workdir) for n in (SMALL, LARGE))
                counts[way] = (large - small) / (LARGE - SMALL)
            print(f"tree {tree}")
            for way, per in counts.items():
                if way != "none":
                    print(f"  {way:8s} {per - counts['none']:9,.0f} instructions per transaction")


if __name__ == "__main__":
    main()
