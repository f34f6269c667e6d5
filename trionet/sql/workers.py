"""``trionet sql serve --workers N``: the SQL server in N processes, and how a cancel finds its worker.

Each worker is the whole single-process server (both ports, its own SQLite
connections, its own statement threads) serving its share of the
connections (:mod:`trionet.workers` binds the ports and supervises). What
is per server in one process is split as follows (documented in
``docs/protocol/sql.md``):

- ``--query-threads`` and ``--max-sqlite-memory-bytes`` are totals: each
  worker gets an equal share (:func:`share`), so the machine sees the same
  threads and SQLite memory as with one process;
- an explicit ``--max-connections`` is a total too, shared the same way (a
  client that lands on a full worker is refused even if another has room);
  the default comes from the descriptor limit, which is per process, so it
  is per worker;
- every per-connection limit (timeouts, rows, bytes, temp storage) is unchanged;
- ``--metrics`` is served by the supervisor, with each worker's figures
  labelled ``worker="INDEX"`` (:mod:`trionet.workers`, "Metrics").

A PostgreSQL CancelRequest arrives on a new connection, which the kernel
gives to any worker. So the BackendKeyData's process id carries the worker's
index in its low byte (:func:`backend_pids`, :func:`worker_of`); a worker
that receives a cancel for another worker's key posts the request (pid and
secret, 8 bytes) to that worker's mailbox, and that worker checks the secret
and interrupts the statement exactly as if the cancel had reached it. A
connection moved to another worker (:mod:`trionet.placement`) keeps its key;
the worker that moved it remembers where to, and posts the cancel on.

With ``--placement cpu`` (the default) every worker's PostgreSQL port also
gets a :class:`~trionet.placement.Placer` and serves the connections the
others move to it (:func:`~trionet.placement.receive_handoffs`,
:mod:`trionet.sql.pg.handover`); the NDJSON port moves none, so it has no
Placer and publishes nothing.
"""

from __future__ import annotations

import functools
import itertools
import math
import secrets
import struct
from collections.abc import Callable, Iterator

import trio

from trionet.cliutil import serve_until_signal
from trionet.log import get_logger
from trionet.placement import receive_handoffs
from trionet.sql.metrics import sql_registry
from trionet.sql.pg import messages as m
from trionet.sql.pg.server import PgServer
from trionet.sql.server import SqlServer
from trionet.workers import MAX_WORKERS, Listen, WorkerContext, answer_scrapes, supervise, watch_lifeline

__all__ = ["backend_pids", "cancel_forwarder", "receive_cancels", "serve_workers", "share", "worker_of"]

log = get_logger("sql")

_CANCEL = struct.Struct("!ii")

Build = Callable[[Iterator[int] | None, Callable[[m.CancelRequest], None] | None], tuple[SqlServer, PgServer | None]]


def share(total: int, workers: int) -> int:
    """One worker's share of a server-wide count: ``total / workers`` rounded up, at least 1."""
    return max(1, math.ceil(total / workers))


def backend_pids(index: int) -> Iterator[int]:
    """The BackendKeyData process ids worker ``index`` hands out: unique in it, ``worker_of(pid) == index``."""
    start = secrets.randbelow(1 << 20) + 1000
    return (n * MAX_WORKERS + index for n in itertools.count(start))


def worker_of(pid: int) -> int:
    """The index of the worker that handed out backend process id ``pid``."""
    return pid % MAX_WORKERS


def serve_workers(
    count: int,
    *,
    host: str,
    port: int,
    pg_port: int | None,
    grace: float,
    build: Build,
    metrics: tuple[str, int] | None = None,
    placement: bool = True,
) -> int:
    """Run the SQL server as ``count`` worker processes behind shared ports until a stop signal.

    Args:
        count: worker processes.
        host, port, pg_port: where to listen (``pg_port`` None: no PostgreSQL port).
        grace: the shutdown grace of each worker.
        build: ``build(pids, forward_cancel)`` makes one worker's servers
            (called in the worker, after the fork).
        metrics: ``(host, port)`` where the supervisor serves every worker's figures.
        placement: hand each connection to the worker of its client's CPU
            (:mod:`trionet.placement`); False: the kernel's hash alone.

    Returns:
        0 after a graceful stop.
    """
    listens = [Listen("sql", host, port)] + ([Listen("pg", host, pg_port)] if pg_port is not None else [])
    return supervise(
        count, listens, functools.partial(_run_worker, build=build, grace=grace), logger=log, grace=grace,
        metrics=metrics, placement=placement,
    )  # fmt: skip


def cancel_forwarder(context: WorkerContext) -> Callable[[m.CancelRequest, int | None], None]:
    """What a worker's PgServer does with a CancelRequest for a key it does not hold: post it to its worker.

    That is the worker the key names (:func:`worker_of`), or, when this
    worker handed the key out and then moved the connection
    (:mod:`trionet.placement`), the worker it moved to (``moved_to``).
    """

    def forward(request: m.CancelRequest, moved_to: int | None = None) -> None:
        target = worker_of(request.pid) if moved_to is None else moved_to
        if target != context.index and target < context.count:
            sent = context.post(target, _CANCEL.pack(request.pid, request.secret))
            log.debug("pg cancel for a connection of worker %d: %s", target, "forwarded" if sent else "mailbox full")

    return forward


async def receive_cancels(context: WorkerContext, pg: PgServer) -> None:
    """Hand the CancelRequests other workers post to this worker's mailbox to ``pg``; runs until cancelled."""
    sock = trio.socket.from_stdlib_socket(context.mailbox)
    while True:
        data = await sock.recv(64)
        if len(data) == _CANCEL.size:
            pid, secret = _CANCEL.unpack(data)
            matched = pg.cancel(m.CancelRequest(pid, secret), forward=False)
            log.debug("pg cancel forwarded by another worker: %s", "key matched" if matched else "no such key")


def _run_worker(context: WorkerContext, *, build: Build, grace: float) -> int:
    server, pg = build(backend_pids(context.index), cancel_forwarder(context))
    registry = sql_registry(server, pg)
    server.service.adopt(context.listeners["sql"])
    if pg is not None:
        pg.service.adopt(context.listeners["pg"])
        pg.service.placer = context.placer("pg")

    def shutdown(grace: float) -> None:
        server.shutdown(grace)
        if pg is not None:
            pg.shutdown(grace)

    async def serve() -> None:
        async with trio.open_nursery() as helpers:
            helpers.start_soon(watch_lifeline, context.lifeline, functools.partial(_orphaned, shutdown, grace))
            if pg is not None:
                helpers.start_soon(receive_cancels, context, pg)
            if context.scrapes is not None:
                helpers.start_soon(answer_scrapes, context.scrapes, registry)
            async with trio.open_nursery() as services:  # both return after a shutdown, once drained
                await services.start(server.serve, None, 0)
                if pg is not None:
                    await services.start(pg.serve, None, 0)
                if pg is not None and context.handoff is not None:  # serving: it can take what is handed over
                    helpers.start_soon(receive_handoffs, context.handoff, {"pg": pg.service})
            helpers.cancel_scope.cancel()

    serve_until_signal("sql", serve, shutdown=shutdown, grace=grace, registry=registry)
    return 0


def _orphaned(shutdown: Callable[[float], None], grace: float) -> None:
    log.warning("the supervisor is gone: draining and exiting")
    shutdown(grace)
