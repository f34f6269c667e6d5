"""CPU per transaction of pgbench's point select through the PostgreSQL port's fast paths, in-process.

No pgbench and no socket in the timed part: a 100,000-row
``pgbench_accounts`` in a temporary SQLite file, a :class:`PgServer` on
loopback that one connection reaches to log in, prepare ``P_0`` as pgbench
does and run each path once (so the fast paths have their plans); then that
connection's protocol core and :meth:`Executor.answerer`'s answer are fed the bytes
pgbench sends for each transaction (captured from ``pgbench -M prepared``
and ``-M simple``, a new random ``aid`` each), as the server's ready loop
feeds them, and the answer is checked byte for byte against the one that
came over the socket. Measured:

- ``prepared``: Bind, Describe portal, Execute, Sync in one packet (libpq's
  ``PQexecPrepared``) -> ``next_event`` -> ``answer``;
- ``simple``: one Query -> the same;
- ``core-prepared`` / ``core-simple``: ``receive_data`` + ``next_event`` only.

Rounds alternate the four; figures are process CPU per transaction, median
over rounds [lowest-highest].

``--evict-kb 256,2048,...`` adds ``prepared after N KB``: each transaction
timed alone (the thread's CPU clock, less the clock's own cost), right
after the process wrote one byte in every cache line of an N KB buffer, as
the kernel, trio or another process would have touched that much memory
between two requests. The hot loop above keeps the path's code and data in
the CPU's caches; a server answering one client at a time does not. To compare trees, run the same tool with
``PYTHONPATH`` set to each (``git archive COMMIT | tar -x -C DIR``).
What the server adds (system calls, the ready loop, the kernel's TCP) is
not here: ``tools/bench_pg.py`` measures the whole.

Usage: PYTHONPATH=. python3 tools/bench_pg_prepared.py [--transactions 20000] [--rounds 7]
"""

from __future__ import annotations

import random
import statistics
import struct
import tempfile
import time
from pathlib import Path

import click
import trio

import trionet
from trionet.sql.engine import Database
from trionet.sql.pg import PgConfig, PgServer

from bench_pg import load_sqlite  # the benchmark's own pgbench_accounts rows (tools/ is on sys.path)

STARTUP = b"\x00\x00\x004\x00\x03\x00\x00user\x00x\x00database\x00x\x00application_name\x00pgbench\x00\x00"
PARSE = b"P\x00\x00\x00@P_0\x00SELECT abalance FROM pgbench_accounts WHERE aid = $1;\x00\x00\x00S\x00\x00\x00\x04"
READY = b"Z\x00\x00\x00\x05I"


def prepared_bytes(aid: int) -> bytes:
    """What ``pgbench -M prepared`` sends for one transaction."""
    value = str(aid).encode()
    body = b"\x00P_0\x00" + b"\x00\x00" + b"\x00\x01" + struct.pack("!i", len(value)) + value + b"\x00\x01\x00\x00"
    bind = b"B" + struct.pack("!i", len(body) + 4) + body
    return bind + b"D\x00\x00\x00\x06P\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + b"S\x00\x00\x00\x04"


def simple_bytes(aid: int) -> bytes:
    """What ``pgbench -M simple`` sends for one transaction."""
    body = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};".encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body



async def _answer(stream, data: bytes) -> bytes:
    await stream.send_all(data)
    answer = b""
    while not answer.endswith(READY):
        answer += await stream.receive_some(65536)
    return answer


def _measure(executor, st, transactions: int, rounds: int, expected: dict[str, bytes]) -> dict[str, list[float]]:
    proto = st.proto
    answer = executor.answerer(st)
    out = st.out
    for name, make in (("prepared", prepared_bytes), ("simple", simple_bytes)):
        proto.receive_data(make(7))
        if not answer(proto.next_event()) or bytes(out) != expected[name]:
            raise SystemExit(f"{name}: the fast path did not answer as the server did")
        out.clear()

    def whole(batch):
        for data in batch:
            proto.receive_data(data)
            answer(proto.next_event())
            out.clear()

    def core(batch):
        for data in batch:
            proto.receive_data(data)
            proto.next_event()

    def batches(make):
        return lambda count: [make(random.randint(1, 100_000)) for _ in range(count)]

    ways = {"prepared": (whole, batches(prepared_bytes)), "simple": (whole, batches(simple_bytes)),
            "core-prepared": (core, batches(prepared_bytes)), "core-simple": (core, batches(simple_bytes))}  # fmt: skip
    return cpu_per_item(ways, rounds, transactions)


def _measure_cold(executor, st, transactions: int, rounds: int, sizes: list[int]) -> dict[str, list[float]]:
    """The prepared path, each transaction timed alone after writing every cache line of a ``size`` KB buffer."""
    proto, answer, out = st.proto, executor.answerer(st), st.out
    clock = time.thread_time_ns
    figures: dict[str, list[float]] = {f"prepared after {kb} KB": [] for kb in sizes}
    for _ in range(rounds):
        empty = []
        for _ in range(transactions):
            start = clock()
            empty.append(clock() - start)
        cost_of_clock = statistics.median(empty)
        for kb in sizes:
            buffer = bytearray(kb * 1024)
            ones = b"\x01" * len(buffer[::64])
            batch = [prepared_bytes(random.randint(1, 100_000)) for _ in range(transactions)]
            times = []
            for data in batch:
                buffer[::64] = ones
                start = clock()
                proto.receive_data(data)
                answer(proto.next_event())
                out.clear()
                times.append(clock() - start)
            figures[f"prepared after {kb} KB"].append((statistics.median(times) - cost_of_clock) / 1000)
    return figures


def cpu_per_item(ways: dict, rounds: int, count: int) -> dict[str, list[float]]:
    """Process CPU µs per item of each way, a figure per round, the ways taking turns within each round.

    ``ways`` maps a name to ``(run, make_batch)``: ``make_batch(count)``
    builds the round's input, untimed; ``run(batch)`` is timed.
    """
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, (run, make_batch) in ways.items():
            batch = make_batch(count)
            start = time.process_time()
            run(batch)
            figures[name].append((time.process_time() - start) / count * 1e6)
    return figures


def print_figures(figures: dict[str, list[float]]) -> None:
    """The tree measured, then each way's median over rounds and its range."""
    print(f"trionet from {Path(trionet.__file__).parent.parent}")
    width = max(map(len, figures)) + 1
    for name, values in figures.items():
        print(f"{name:{width}s} {statistics.median(values):6.2f} µs [{min(values):.2f}-{max(values):.2f}]")


@click.command()
@click.option("--transactions", type=int, default=20_000, show_default=True, help="Transactions per round and way.")
@click.option("--rounds", type=int, default=7, show_default=True, help="Rounds, each way once per round.")
@click.option(
    "--evict-kb", default="", metavar="KB,KB,...",
    help="Also time the prepared path with this much memory written between transactions (see above).",
)  # fmt: skip
def main(transactions: int, rounds: int, evict_kb: str) -> None:
    """Print µs of CPU per transaction for each way, each round's and the medians."""

    async def run() -> dict[str, list[float]]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.sqlite"
            load_sqlite(path, 100_000)
            server = PgServer(Database(path, read_write=False), PgConfig())
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(server.serve, "127.0.0.1", 0)
                stream = await trio.open_tcp_stream(*addresses[0][:2])
                await _answer(stream, STARTUP)
                await _answer(stream, PARSE)
                for _ in range(3):  # the first runs make the plans
                    expected = {"prepared": await _answer(stream, prepared_bytes(7)),
                                "simple": await _answer(stream, simple_bytes(7))}  # fmt: skip
                ((_secret, st),) = server._keys.values()
                figures = _measure(server._executor, st, transactions, rounds, expected)
                if evict_kb:
                    sizes = [int(kb) for kb in evict_kb.split(",")]
                    figures |= _measure_cold(server._executor, st, min(transactions, 5000), rounds, sizes)
                nursery.cancel_scope.cancel()
            return figures

    print_figures(trio.run(run))


if __name__ == "__main__":
    main()
