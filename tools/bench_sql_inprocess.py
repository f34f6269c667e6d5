"""CPU per request of the NDJSON port's point query through its fast path, in-process.

No socket in the timed part: the shipped catalogue (16,941 events, as
``tools/bench_sql.py`` imports it) in a temporary SQLite file, an
:class:`SqlServer` on loopback that one connection reaches to run the point
query a few times (so the server has classified it as fit for the event
loop); then a :class:`~trionet.sql.protocol.ServerProtocol` and
:meth:`RequestRunner.answer_now` of that server, with a session of their
own, are fed the bytes ``tools/bench_sql.py``'s load generator sends for
each request (``{"id":N,"sql":"SELECT * FROM quakes WHERE id = ?","params":["<id>"]}``,
a random existing event id and a random request id each), as the server's
ready loop feeds them. Before timing, the answer is checked byte for byte
against the one that came over the socket (but for the ``done`` frame's
``ms``, which is a clock reading). Measured:

- ``point``: ``receive_data`` -> ``next_event`` -> ``answer_now``;
- ``answer``: ``answer_now`` alone, on requests parsed beforehand;
- ``core``: ``receive_data`` + ``next_event`` only (the framer and the
  request parse).

Rounds alternate the three; figures are process CPU per request, median
over rounds [lowest-highest]. To compare trees, run the same tool with
``PYTHONPATH`` set to each (``git archive COMMIT | tar -x -C DIR``).
What the server adds (system calls, the ready loop, the kernel's TCP) is
not here: ``tools/bench_sql.py`` measures the whole.

Usage: PYTHONPATH=. python3 tools/bench_sql_inprocess.py [--requests 20000] [--rounds 7]
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import tempfile
from pathlib import Path

import click
import trio

from trionet.sql import protocol
from trionet.sql.catalog import build_catalogue
from trionet.sql.engine import Database
from trionet.sql.execute import ConnState
from trionet.sql.server import SqlServer, SqlServerConfig

from bench_pg_prepared import cpu_per_item, print_figures  # tools/ is on sys.path

POINT_SQL = "SELECT * FROM quakes WHERE id = ?"  # tools/bench_sql.py's point query
_MS = re.compile(rb'"ms":[0-9.e+-]+\}')


def request_bytes(req_id: int, event_id: str) -> bytes:
    """What ``tools/bench_sql.py``'s load generator sends for one point query."""
    return json.dumps({"id": req_id, "sql": POINT_SQL, "params": [event_id]}, separators=(",", ":")).encode() + b"\n"


def _masked(answer: bytes) -> bytes:
    return _MS.sub(b'"ms":_}', answer)


async def _answer(stream, data: bytes) -> bytes:
    await stream.send_all(data)
    answer = b""
    while b'"type":"done"' not in answer and b'"type":"error"' not in answer or not answer.endswith(b"\n"):
        answer += await stream.receive_some(65536)
    return answer


def _measure(runner, state: ConnState, ids: list[str], requests: int, rounds: int, expected: dict[bytes, bytes]):
    proto = state.proto
    answer_now = runner.answer_now
    for data, answer in expected.items():
        proto.receive_data(data)
        got = answer_now(state, proto.next_event())
        if got is None or _masked(got) != _masked(answer):
            raise SystemExit(f"the fast path did not answer as the server did:\n{got!r}\n{answer!r}")

    def whole(batch):
        for data in batch:
            proto.receive_data(data)
            answer_now(state, proto.next_event())

    def answer_only(batch):
        for request in batch:
            answer_now(state, request)

    def core(batch):
        for data in batch:
            proto.receive_data(data)
            proto.next_event()

    def parsed(batch):
        out = []
        for data in batch:
            proto.receive_data(data)
            out.append(proto.next_event())
        return out

    def lines(count):
        return [request_bytes(random.randint(1, 1024), random.choice(ids)) for _ in range(count)]

    ways = {"point": (whole, lines), "answer": (answer_only, lambda count: parsed(lines(count))), "core": (core, lines)}
    return cpu_per_item(ways, rounds, requests)


@click.command()
@click.option("--requests", type=int, default=20_000, show_default=True, help="Requests per round and way.")
@click.option("--rounds", type=int, default=7, show_default=True, help="Rounds, each way once per round.")
def main(requests: int, rounds: int) -> None:
    """Print µs of CPU per request for each way: the medians over rounds and their ranges."""

    async def run() -> dict[str, list[float]]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "quakes.sqlite"
            build_catalogue(path)
            with sqlite3.connect(path) as con:
                ids = [r[0] for r in con.execute("SELECT id FROM quakes")]
            database = Database(path)
            server = SqlServer(database, SqlServerConfig())
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(server.serve, "127.0.0.1", 0)
                stream = await trio.open_tcp_stream(*addresses[0][:2])
                hello = b""
                while not hello.endswith(b"\n"):
                    hello += await stream.receive_some(65536)
                samples = [request_bytes(n, random.choice(ids)) for n in (7, 1024)]
                samples.append(request_bytes(3, "no such id"))  # an empty result
                for _ in range(3):  # the first run classifies the statement
                    expected = {data: await _answer(stream, data) for data in samples}
                session = database.open_session()
                try:
                    state = ConnState(session, protocol.ServerProtocol(server.config.max_request_bytes), None, None)
                    figures = _measure(server.runner, state, ids, requests, rounds, expected)
                finally:
                    session.close()
                nursery.cancel_scope.cancel()
            return figures

    print_figures(trio.run(run))


if __name__ == "__main__":
    main()
