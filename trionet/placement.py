"""Which worker serves a connection: the one its client's CPU maps to, as long as the workers stay even.

With ``--workers N`` the kernel's ``SO_REUSEPORT`` hash spreads connections
over the workers at random. A client with several threads, each with its
own connections (pgbench ``-j 2``, an application with a connection per
thread), then has every thread talking to every worker, and each thread is
woken by all of them. PostgreSQL does not pay that: a backend serves one
connection and the scheduler runs it beside the thread that wakes it.
Measured with ``tools/bench_pg_grouping.py`` (docs/benchmarks.md, "Session
16"): two pgbench processes of 16 connections got 1.35x the transactions
when each met one trionet process instead of both.

Which thread a connection belongs to cannot be seen when it is accepted:
pgbench's threads open their connections on whatever CPU they are on at
the time, often both on one. Once a client runs, though, each of its busy
threads stays on its CPU, and ``SO_INCOMING_CPU`` on the server's socket
says which CPU sent the last packet. So a PostgreSQL connection that has
been served for a while (:data:`REGROUP_AFTER`) is *looked at*: every
worker looks at its connections at the same moments (:data:`TICK`s of the
machine's monotonic clock) and writes on a :class:`LoadBoard` (memory every
worker shares) which worker each one's CPU wants (``cpu % N``); a moment
later (:data:`PLAN_DELAY`) each worker reads the whole board and computes
the same :func:`plan`. A look counts only when it is :func:`clear`: the
connections want the workers about evenly, as many busy client threads as
CPUs. Then each moves to the worker it wants, no worker ending above an
even share plus :data:`SLACK`, and none looks again, so a thread's
connections stay together when the scheduler later swaps CPUs. A look that
is not clear (one thread with many connections, or two threads sharing a
CPU at that moment) moves nothing, and its connections look again, up to
:data:`REGROUP_TRIES` times. A connection moves at a moment when it holds
nothing half-done: its descriptor passes over a Unix socket
(``SCM_RIGHTS``) with what the new worker needs to go on
(:mod:`trionet.sql.pg.handover`).

``--placement hash`` turns all of this off.
"""

from __future__ import annotations

import math
import mmap
import socket
from array import array
from collections.abc import Mapping, Sequence

from trionet.log import get_logger

__all__ = [
    "BURST_GAP",
    "GONE",
    "MAX_HANDOVER_BYTES",
    "PLAN_DELAY",
    "REGROUP_AFTER",
    "REGROUP_TRIES",
    "SLACK",
    "TICK",
    "LoadBoard",
    "Placer",
    "available",
    "clear",
    "next_tick",
    "plan",
    "receive_handoffs",
    "wanted",
]

GONE = -1
"""A worker's load on the board while it is not taking connections (starting, restarting, draining)."""
REGROUP_AFTER = 1.0
"""Seconds a connection is served before its client's CPU is looked at."""
TICK = 0.5
"""Seconds between two looks; every worker looks at the same moments (:func:`next_tick`)."""
PLAN_DELAY = 0.1
"""Seconds after a look at which the moves are planned: every worker has said what its connections want by then."""
BURST_GAP = 0.5
"""Seconds between two new connections of one burst (a client opening its pool), which share their first look."""
REGROUP_TRIES = 8
"""How many looks a connection gets before it stays where it is for good."""
SLACK = 1
"""Connections a worker may serve above an even share after the moves (:func:`plan`)."""
MAX_HANDOVER_BYTES = 32 * 1024
"""The largest state a connection carries when it moves (its settings and prepared statements); a bigger one stays."""

_SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", None)

log = get_logger("placement")


def available() -> bool:
    """Whether this platform tells a socket's CPU (``SO_INCOMING_CPU``: Linux); elsewhere nothing moves."""
    return _SO_INCOMING_CPU is not None


def next_tick(now: float, after: float = 0.0) -> int:
    """The number of the first look at or after ``now + after`` (``now`` on ``CLOCK_MONOTONIC``, which every process shares)."""
    return math.ceil((now + after) / TICK)


def wanted(cpu: int, workers: int) -> int | None:
    """The worker for a client on ``cpu`` (``cpu % workers``), or None for an unknown CPU."""
    return cpu % workers if cpu >= 0 else None


def clear(loads: Sequence[int], wants: Sequence[Sequence[int]]) -> bool:
    """Whether a look shows the clients' threads on CPUs of their own, so that moves would group them.

    Sans-IO. ``wants[w][t]``: connections of worker ``w`` that looked and
    want worker ``t`` (those that stay included). The look is clear when the
    connections that looked want the live workers about evenly (within 2,
    or an eighth of them): so many threads, so many CPUs. It is not when two
    busy threads shared a CPU at that moment, or for one thread with many
    connections: then all want one worker, and moving them would only pile
    them up (or, within the plan's even shares, move a few at random).
    """
    live = [w for w in range(len(loads)) if loads[w] >= 0]
    if len(live) < 2:
        return False
    totals = [sum(wants[w][t] for w in live) for t in live]
    looked = sum(totals)
    return looked > 0 and max(totals) - min(totals) <= max(2, looked // 8)


def plan(loads: Sequence[int], wants: Sequence[Sequence[int]], slack: int = SLACK) -> list[list[int]]:
    """How many connections each worker moves to each other worker in one look: ``moves[w][t]``.

    Sans-IO, and the same in every worker (each computes it from the same
    board). ``loads[w]`` are the connections worker ``w`` serves
    (:data:`GONE`: it takes none, and moves none); ``wants[w][t]`` how many
    of them have their client on a CPU of worker ``t``. Every connection
    that wants another worker moves there, as long as no worker ends with
    more than an even share plus ``slack``: a worker's room (that share,
    less what stays in it) is given to its senders in the order of their
    index. So two client threads on two CPUs with 16 connections each end
    grouped in one look, and one thread's 32 connections stay spread.
    """
    n = len(loads)
    live = [w for w in range(n) if loads[w] >= 0]
    moves = [[0] * n for _ in range(n)]
    if len(live) < 2:
        return moves
    share = -(-sum(loads[w] for w in live) // len(live)) + slack
    for t in live:
        leaving = sum(wants[t][u] for u in live if u != t)
        room = share - (loads[t] - leaving)
        for w in live:
            if w != t and room > 0:
                moves[w][t] = min(wants[w][t], room)
                room -= moves[w][t]
    return moves


class LoadBoard:
    """What the workers tell each other about their connections, in anonymous shared memory every forked worker sees.

    Per port: each worker's open connections (:meth:`set`), and, for one
    look at a time, how many of them want each worker (:meth:`set_wants`).
    The supervisor makes it before the first fork. Each worker writes only
    its own entries, everyone reads all of them; an entry is one aligned
    8-byte word, so a read never sees half a write, and a count read a
    moment late only makes one look a little less even. Every load starts
    as :data:`GONE`.
    """

    def __init__(self, ports: Sequence[str], workers: int) -> None:
        self.ports = tuple(ports)
        self.workers = workers
        self._block = workers * (workers + 2)  # loads, the tick of each row of wants, the rows
        self._map = mmap.mmap(-1, 8 * len(self.ports) * self._block)
        self._words = memoryview(self._map).cast("q")
        for port in self.ports:
            for worker in range(workers):
                self.set(port, worker, GONE)

    def _base(self, port: str) -> int:
        return self.ports.index(port) * self._block

    def set(self, port: str, worker: int, value: int) -> None:
        """Publish worker ``worker``'s count of open connections of ``port`` (or :data:`GONE`)."""
        self._words[self._base(port) + worker] = value

    def gone(self, worker: int) -> None:
        """Mark every port of worker ``worker`` :data:`GONE` (the supervisor, when the worker died)."""
        for port in self.ports:
            self.set(port, worker, GONE)

    def loads(self, port: str) -> list[int]:
        """Every worker's count for ``port``, by worker index."""
        base = self._base(port)
        return self._words[base : base + self.workers].tolist()

    def set_wants(self, port: str, worker: int, tick: int, row: Sequence[int]) -> None:
        """Publish how many of worker ``worker``'s connections want each worker at look ``tick``."""
        n = self.workers
        base = self._base(port)
        self._words[base + n + worker] = -1  # (a reader meanwhile takes the row for another look's: zeros)
        start = base + 2 * n + worker * n
        self._words[start : start + n] = memoryview(array("q", row))
        self._words[base + n + worker] = tick

    def wants(self, port: str, tick: int) -> list[list[int]]:
        """Every worker's row of wants for look ``tick`` (zeros for a worker that said nothing for it)."""
        n = self.workers
        base = self._base(port)
        rows = []
        for worker in range(n):
            start = base + 2 * n + worker * n
            row = self._words[start : start + n].tolist()
            rows.append(row if self._words[base + n + worker] == tick else [0] * n)
        return rows

    def close(self) -> None:
        self._words.release()
        self._map.close()


class Placer:
    """One worker's placement for one port: its load on the board, and the looks that move connections.

    A look has two moments, the same in every worker: at the tick, each
    connection due for a look says which worker its client's CPU wants
    (:meth:`note`); :data:`PLAN_DELAY` later, each asks what to do
    (:meth:`decide`), by the board as it then is: if the look was
    :func:`clear`, move as the :func:`plan` says or stay, and look no more;
    else look again at the next tick.

    Args:
        board: the shared :class:`LoadBoard`.
        port: the port's name (``sql``, ``pg``), as on the board.
        index: this worker.
        handoffs: every worker's receiving channel's sending end, by index
            (a ``SOCK_SEQPACKET`` Unix socket; this worker's own is not used).

    Attributes:
        moved_out: connections this worker handed to another.
        moved_in: connections another worker handed to this one.
    """

    def __init__(self, board: LoadBoard, port: str, index: int, handoffs: Sequence[socket.socket]) -> None:
        self.board = board
        self.port = port
        self.index = index
        self._handoffs = handoffs
        self.moved_out = 0
        self.moved_in = 0
        self._row_tick = None
        self._row = [0] * board.workers
        self._plan_tick = None
        self._burst: tuple[float, int] | None = None  # (when the burst's last connection started, its first look)
        self._clear = False
        self._quota = [0] * board.workers  # moves left to each worker in this look

    def publish(self, count: int) -> None:
        """Say that this worker serves ``count`` connections of the port now."""
        self.board.set(self.port, self.index, count)

    def withdraw(self) -> None:
        """Take no more connections from other workers (this one is draining)."""
        self.board.set(self.port, self.index, GONE)

    def cpu_target(self, sock) -> int | None:
        """The worker ``sock``'s client's CPU wants (``SO_INCOMING_CPU``), or None if unknown."""
        if _SO_INCOMING_CPU is None:
            return None
        try:
            cpu = sock.getsockopt(socket.SOL_SOCKET, _SO_INCOMING_CPU)
        except OSError:
            return None
        return wanted(cpu, self.board.workers)

    def first_look(self, now: float) -> int:
        """The first look of a connection starting at ``now`` (``CLOCK_MONOTONIC``).

        :data:`REGROUP_AFTER` later, on a tick; but a connection that starts
        within :data:`BURST_GAP` of the one before shares its look, so that a
        client's pool, opened in one burst, is looked at all at once: looked
        at across two ticks, its threads could have changed CPUs in between,
        and its connections would be split by the very moves meant to group them.
        """
        if self._burst is not None and now - self._burst[0] <= BURST_GAP:
            tick = self._burst[1]
        else:
            tick = next_tick(now, REGROUP_AFTER)
        self._burst = (now, tick)
        return tick

    def note(self, tick: int, target: int | None) -> None:
        """A connection of this worker wants worker ``target`` at look ``tick`` (this one's index: to stay)."""
        if target is None:
            return
        if self._row_tick != tick:
            self._row_tick = tick
            self._row = [0] * self.board.workers
        self._row[target] += 1
        self.board.set_wants(self.port, self.index, tick, self._row)

    def decide(self, tick: int, target: int | None) -> str:
        """What a connection that wants ``target`` does after look ``tick``: ``move``, ``stay`` or ``again``.

        ``again`` (look at the next tick) when the look was not :func:`clear`
        or the client's CPU is unknown; else ``move`` if one of the
        :func:`plan`'s moves from here to ``target`` is still free, and
        ``stay`` (for good) if not or if it is where it should be.
        """
        if self._plan_tick != tick:
            self._plan_tick = tick
            loads, wants = self.board.loads(self.port), self.board.wants(self.port, tick)
            self._clear = clear(loads, wants)
            self._quota = plan(loads, wants)[self.index] if self._clear else [0] * self.board.workers
            log.debug(
                "%s look %d: loads %s, wants %s: %s", self.port, tick, loads, wants,
                f"moves {self._quota}" if self._clear else "not clear, again",
            )  # fmt: skip
        if target is None or not self._clear:
            return "again"
        if target == self.index or self._quota[target] <= 0:
            return "stay"
        self._quota[target] -= 1
        return "move"

    def hand_over(self, target: int, sock, state: bytes) -> bool:
        """Send ``sock``'s descriptor and ``state`` to worker ``target`` without waiting; True if it went.

        False (the channel is full or gone, or ``state`` is over
        :data:`MAX_HANDOVER_BYTES`): the caller keeps the connection. True:
        the other worker holds its own copy of the descriptor, and the caller
        closes this one without a word to the client.
        """
        if len(state) > MAX_HANDOVER_BYTES:
            return False
        try:
            socket.send_fds(self._handoffs[target], [self.port.encode() + b"\0" + state], [sock.fileno()], socket.MSG_DONTWAIT)
        except OSError:
            return False
        self.moved_out += 1
        return True


async def receive_handoffs(channel: socket.socket, services: Mapping[str, object]) -> None:
    """Serve the connections other workers hand to this one, by port name; runs until cancelled.

    Each message on ``channel`` is a port's name, a NUL, the connection's
    state, and one descriptor (``SCM_RIGHTS``); the socket and the state go
    to ``services[name].take`` (:meth:`trionet.serving.TCPService.take`). A
    message with an unknown name or extra descriptors has them closed.
    """
    import trio

    while True:
        await trio.lowlevel.wait_readable(channel)
        try:
            data, fds, _flags, _address = socket.recv_fds(
                channel, MAX_HANDOVER_BYTES + 64, 4, socket.MSG_DONTWAIT
            )  # fmt: skip
        except BlockingIOError:
            continue
        if not data and not fds:
            return  # every sending end is closed: the server is stopping
        name, _, state = data.partition(b"\0")
        service = services.get(name.decode("ascii", "replace"))
        for position, fd in enumerate(fds):
            sock = socket.socket(fileno=fd)
            if service is None or position:
                sock.close()
            else:
                service.take(sock, state)
