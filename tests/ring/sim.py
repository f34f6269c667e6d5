"""In-process simulation of a ring: N real nodes over in-memory links, with hooks to delay, cut and restore links.

Each node is a full :class:`~trionet.ring.node.RingNode` (the same trio layer
and sans-IO core as a real node); only the transport differs:
:class:`SimNetwork` connects nodes with ``trio.testing.memory_stream_pair``.
Under ``trio.testing.MockClock(autojump_threshold=0)`` a run with delays,
backoff and link outages takes milliseconds of real time.

:class:`RingMonitor` watches every node core and checks the ring's
invariants as they happen; :func:`simulate` runs a whole ring to its end and
returns what happened. The tests drive it with hypothesis, the benchmark
measures it in hops per second (``tools/bench_ring.py`` puts this directory
on its import path). It is a test harness, so it lives with the tests and
not in the package: it needs ``trio.testing``, which imports pytest.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio
import trio.testing

from trionet.ring.config import NodeAddress, RingConfig
from trionet.ring.node import NodeOptions, RingError, RingNode
from trionet.ring.core import Summary
from trionet.ring.frames import Direction, Message
from trionet.ring.journal import Journal

__all__ = [
    "Crash", "InvariantViolation", "LinkCut", "MemoryJournal", "ReadStall", "RingMonitor", "SimNetwork", "SimResult",
    "simulate",
]


class InvariantViolation(AssertionError):
    """A ring invariant broke during a simulation."""


class _SimStream(trio.abc.Stream):
    """One end of an in-memory connection that the network can delay or cut."""

    def __init__(self, inner: trio.abc.Stream, network: SimNetwork, link: tuple[int, int], accepted: bool) -> None:
        self._inner = inner
        self._network = network
        self._link = link
        self.accepted = accepted  # the acceptor's end (else the dialer's)
        self.cut = False
        self.silent = False
        self.stalled: trio.Event | None = None  # set when reads may go on

    async def send_all(self, data) -> None:
        if self.accepted:
            self._network._accepted_wrote(self)
        delay = self._network.delays.get(self._link, 0.0)
        if delay:
            await trio.sleep(delay)
        if self.cut:
            raise trio.BrokenResourceError("link cut")
        if self.silent:
            return  # lost on the way, and nobody is told
        await self._inner.send_all(data)
        self._network.bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        if self.stalled is not None:
            await self.stalled.wait()
        if self.cut:
            raise trio.BrokenResourceError("link cut")
        try:
            return await self._inner.receive_some(max_bytes)
        except trio.ClosedResourceError:
            if self.cut:
                raise trio.BrokenResourceError("link cut") from None
            raise

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def sever(self) -> None:
        """Drop the connection at once, losing whatever bytes were in it (like a reset)."""
        self.cut = True
        self._inner.send_stream.close()
        self._inner.receive_stream.close()


@dataclass(frozen=True)
class ReadStall:
    """At ``at`` seconds, node ``source``'s next node stops reading their connection, until ``source`` is back.

    Like a node busy elsewhere: bytes ``source`` sends wait unread, so no
    ack comes and ``source`` reconnects (its ack watchdog). The stalled
    reader goes on only once the next node has answered the new
    connection's greeting, so it reads those waiting frames *after* its
    greeting told ``source`` where to resume: ``source`` resends them and
    they arrive twice. The link layer must drop the second copies.
    """

    source: int
    at: float


@dataclass(frozen=True)
class LinkCut:
    """Cut the link from node ``source`` to its next node at ``at`` seconds, for ``duration`` seconds.

    A ``silent`` cut drops the bytes without closing anything, like a pulled
    cable: the nodes notice only because acknowledgements stop coming.
    """

    source: int
    at: float
    duration: float
    silent: bool = False


class SimNetwork:
    """The in-memory network: who listens, which links are cut, and how long each link delays.

    ``delays[(a, b)]`` delays every write on the connection that node ``a``
    dialed to node ``b`` (both ways). :meth:`cut` severs that connection
    (:meth:`silence` makes it lose every byte without a sign) and refuses new
    ones until :meth:`restore`.
    """

    def __init__(self) -> None:
        self._listeners: dict[int, tuple[trio.Nursery, Callable[[trio.abc.Stream], Awaitable[None]]]] = {}
        self._streams: dict[tuple[int, int], list[_SimStream]] = collections.defaultdict(list)
        self.blocked: set[tuple[int, int]] = set()
        self.delays: dict[tuple[int, int], float] = {}
        self.bytes_sent = 0
        self.cuts = 0
        self.stalls: dict[tuple[int, int], list[_SimStream]] = {}

    def transport(self, node_id: int) -> _SimTransport:
        """The transport node ``node_id`` uses."""
        return _SimTransport(self, node_id)

    def cut(self, source: int, target: int) -> None:
        """Sever the connection ``source`` -> ``target`` and refuse new ones until :meth:`restore`."""
        self.blocked.add((source, target))
        self.cuts += 1
        for stream in self._streams.pop((source, target), []):
            stream.sever()

    def silence(self, source: int, target: int) -> None:
        """Make the connection ``source`` -> ``target`` lose every byte, silently, and refuse new ones."""
        self.blocked.add((source, target))
        self.cuts += 1
        for stream in self._streams.pop((source, target), []):
            stream.silent = True

    def stall(self, source: int, target: int) -> None:
        """Stop ``target``'s reads on its connection from ``source`` (:class:`ReadStall`)."""
        stalled = [s for s in self._streams.get((source, target), []) if s.accepted and not s.cut]
        for stream in stalled:
            stream.stalled = trio.Event()
        self.stalls[source, target] = stalled

    def _accepted_wrote(self, stream: _SimStream) -> None:
        # The acceptor answers a newer connection: its greeting is out, so
        # the stalled reader of the older one may read again.
        for old in self.stalls.pop(stream._link, []) if stream.stalled is None else []:
            if old is not stream:
                old.stalled.set()
                old.stalled = None

    def restore(self, source: int, target: int) -> None:
        """Allow ``source`` to connect to ``target`` again."""
        self.blocked.discard((source, target))

    async def _connect(self, source: int, target: NodeAddress) -> trio.abc.Stream:
        key = (source, target.id)
        if key in self.blocked or target.id not in self._listeners:
            raise ConnectionRefusedError(f"node {target.id} is not reachable from node {source}")
        left, right = trio.testing.memory_stream_pair()
        ours, theirs = _SimStream(left, self, key, False), _SimStream(right, self, key, True)
        self._streams[key] = [s for s in self._streams[key] if not (s.cut or s.silent)] + [ours, theirs]
        nursery, handler = self._listeners[target.id]
        nursery.start_soon(handler, theirs)
        return ours


class _SimTransport:
    def __init__(self, network: SimNetwork, node_id: int) -> None:
        self._network = network
        self._node_id = node_id

    async def connect(self, node: NodeAddress) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        return await self._network._connect(self._node_id, node)

    async def serve(self, node, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._network._listeners[node.id] = (nursery, handler)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                del self._network._listeners[node.id]


@dataclass
class RingMonitor:
    """Check the ring's invariants at every step of every node core.

    - at most one token per direction per epoch: a token of an epoch is
      injected once, by that view's monitor, and afterwards only moves from
      its holder, over one link, to one node (who takes it may be any node:
      the ring closes around dead ones);
    - a node sends only while it holds its direction's token;
    - each message is delivered at most once, at its destination, across
      crashes and restarts, and comes back to its origin at most once;
    - the ring ends once: once a node has taken the finalization command,
      no node injects tokens or starts a finalization again (a node 0
      restarted after the end used to close a ring of its own and
      finalize it: a second end).

    Raises :class:`InvariantViolation` from inside the offending node.

    Args:
        size: the ring's size (ids 0..size-1, clockwise in id order).
        epoch_of: the current epoch of a node's core (the epoch of the
            event the core reports).
    """

    size: int
    epoch_of: Callable[[int], int] = lambda node: 1
    holder: dict[tuple[Direction, int], int | None] = field(default_factory=dict)
    on_wire: dict[tuple[Direction, int], bool] = field(default_factory=dict)
    injected: set[tuple[Direction, int]] = field(default_factory=set)
    _injecting: dict[tuple[Direction, int], int] = field(default_factory=dict)
    delivered: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    returned: dict[str, int] = field(default_factory=collections.Counter)
    undeliverable: dict[str, int] = field(default_factory=collections.Counter)
    sent: dict[str, Message] = field(default_factory=dict)
    token_passes: int = 0
    message_hops: int = 0
    views: int = 0
    finalized: list[int] = field(default_factory=list)
    refinalized: list[tuple[int, Direction]] = field(default_factory=list)
    ended: int | None = None
    """The first node that took the finalization command: the ring is over."""
    """Finalization commands sent again over a new link (who, which way)."""
    closed: trio.Event = field(default_factory=trio.Event)
    """Set when the ring first closed (the first view's tokens were injected)."""

    @property
    def hops(self) -> int:
        """Frames moved from one node to the next: token passes plus message hops."""
        return self.token_passes + self.message_hops

    def holders(self, direction: Direction) -> set[int]:
        """The nodes holding (or having parked) a token of ``direction``, any epoch."""
        return {node for (d, _), node in self.holder.items() if d is direction and node is not None}

    def crashed(self, node: int) -> None:
        """``node`` died: the tokens it held are gone."""
        for key, holder in self.holder.items():
            if holder == node:
                self.holder[key] = None

    def __call__(self, event: str, node: int, detail: object) -> None:
        direction, payload = detail
        if event == "view":
            self.views += 1
            _, _, old = payload
            for d in Direction:  # the node forgets the tokens of its old view
                if self.holder.get((d, old)) == node:
                    self.holder[d, old] = None
            return
        epoch = self.epoch_of(node)
        key = (direction, epoch)
        if event == "inject" or (event == "finalize" and payload is None):  # (None: node 0 starts it)
            if self.ended is not None:
                raise InvariantViolation(f"node {node} {'injected tokens' if event == 'inject' else 'finalized again'} after the ring ended at node {self.ended}")
        if event == "inject":
            if key in self.injected:
                raise InvariantViolation(f"a second {direction.label} token injected in epoch {epoch} (node {node})")
            self.injected.add(key)
            self._injecting[key] = node
            self.closed.set()
        elif event == "token-in":
            if self._injecting.get(key) == node:
                del self._injecting[key]
            elif key not in self.injected:
                raise InvariantViolation(f"{direction.label} token of epoch {epoch} appeared at node {node}")
            elif not self.on_wire.get(key) or self.holder.get(key) is not None:
                raise InvariantViolation(f"a second {direction.label} token of epoch {epoch} arrived at node {node}")
            self.on_wire[key] = False
            self.holder[key] = node
        elif event == "token-out":
            if self.holder.get(key) != node:
                raise InvariantViolation(f"node {node} passed a {direction.label} token it does not hold")
            self.holder[key] = None
            self.on_wire[key] = True
            self.token_passes += 1
        elif event == "send":
            if self.holder.get(key) != node:
                raise InvariantViolation(f"node {node} sent {direction.label} without the token")
            self.sent[payload.uid] = payload
            self.message_hops += 1
        elif event == "forward":
            self.message_hops += 1
        elif event == "deliver":
            if payload.destination != node:
                raise InvariantViolation(f"message {payload.uid} for {payload.destination} delivered at {node}")
            self.delivered[payload.uid].append(node)
            if len(self.delivered[payload.uid]) > 1:
                raise InvariantViolation(f"message {payload.uid} delivered twice")
        elif event == "return":
            if payload.origin != node:
                raise InvariantViolation(f"message {payload.uid} of {payload.origin} returned at {node}")
            self.returned[payload.uid] += 1
            if self.returned[payload.uid] > 1:
                raise InvariantViolation(f"message {payload.uid} returned twice")
        elif event == "undeliverable":
            self.undeliverable[payload.uid] += 1
            if self.undeliverable[payload.uid] > 1 or self.returned[payload.uid]:
                raise InvariantViolation(f"message {payload.uid} given up twice, or after it came back")
        elif event == "finalize":
            self.finalized.append(node)
            if payload is not None and self.ended is None:
                self.ended = node
        elif event == "refinalize":
            self.refinalized.append((node, direction))


@dataclass(frozen=True)
class Crash:
    """Kill node ``node`` at ``at`` seconds (its connections close, as after ``kill -9``); start it again after ``down_for``.

    ``down_for`` None: it stays dead, killed at ``at`` but not before the
    ring first closed and every running node has seen it (a node killed
    before that is waited for, not bypassed: ``docs/protocol/ring.md``,
    "Limits"; a cut can delay the first closure by a handshake timeout).
    A node restarted once node 0 has finished finds the ring over: it
    finishes if a neighbour still there sends it the finalization
    command, or gives up after ``--connect-timeout`` (:attr:`SimResult.late`).
    A restarted node has the same
    messages and the same journal (in memory here), as ``trionet ring join``
    given the same files.
    """

    node: int
    at: float
    down_for: float | None = 5.0
    secret: bytes | None = None
    """The restarted process's secret instead of the ring's (an intruder at the node's address)."""


class MemoryJournal:
    """A journal that survives a simulated crash: :class:`~trionet.ring.journal_file.JournalFile` without the file."""

    def __init__(self) -> None:
        self.journal = Journal()
        self.records: list[str] = []

    def append(self, line: str) -> None:
        self.records.append(line)


@dataclass
class SimResult:
    """What a simulated run produced."""

    summaries: dict[int, Summary]
    monitor: RingMonitor
    network: SimNetwork
    nodes: dict[int, RingNode]
    elapsed: float
    undelivered: dict[int, list[str]] = field(default_factory=dict)
    late: set[int] = field(default_factory=set)
    """Nodes restarted after node 0 had finished that gave up (nobody was left to tell them the ring was over), never having finished."""


async def simulate(
    size: int,
    messages: Mapping[int, Sequence[tuple[int, str]]],
    *,
    start_delays: Mapping[int, float] | None = None,
    link_delays: Mapping[int, float] | None = None,
    cuts: Sequence[LinkCut] = (),
    stalls: Sequence[ReadStall] = (),
    crashes: Sequence[Crash] = (),
    stop_at: float | None = None,
    options: NodeOptions | None = None,
    node_options: Mapping[int, NodeOptions] | None = None,
    time_limit: float = 3600.0,
    secret: bytes | None = None,
    secrets: Mapping[int, bytes | None] | None = None,
) -> SimResult:
    """Run a ring of ``size`` nodes (ids 0..size-1) to completion over in-memory links.

    Args:
        size: number of nodes.
        messages: each node's ``(destination, text)`` list.
        start_delays: seconds before each node starts (any order, any delay).
        link_delays: per node, the delay of every write on its link to the next node.
        cuts: link outages to apply.
        stalls: readers to stall (:class:`ReadStall`).
        crashes: nodes to kill, and maybe start again (:class:`Crash`).
        stop_at: ask node 0 to stop at this time (as SIGINT would).
        options: node timing; the defaults suit a simulation.
        node_options: timing of particular nodes, instead of ``options``.
        time_limit: fail if the ring has not finished by then.
        secret: the ring's shared secret (every connection and reconnection
            then runs the authenticated handshake), or None.
        secrets: a particular node's secret instead (an intruder's wrong one).

    Raises:
        InvariantViolation: an invariant broke (from the node where it did).
        trio.TooSlowError: the ring did not finish within ``time_limit``.
    """
    config = RingConfig.local(size, ports=range(1, size + 1))
    network = SimNetwork()
    nodes: dict[int, RingNode] = {}
    monitor = RingMonitor(size, lambda node: nodes[node].core.epoch)
    options = options or NodeOptions(connect_timeout=120.0, seed=size)
    for source, delay in (link_delays or {}).items():
        network.delays[source, (source + 1) % size] = delay
    journals = {i: MemoryJournal() for i in range(size)}
    undelivered: dict[int, list[str]] = {i: [] for i in range(size)}

    class _Lines(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

    def make_node(i: int, secret_override: bytes | None = None) -> RingNode:
        numbered = [(k, dest, text) for k, (dest, text) in enumerate(messages.get(i, ()), 1)]
        journal = journals[i]
        return RingNode(
            config,
            i,
            messages=list(journal.journal.unsent(numbered)),
            transport=network.transport(i),
            options=(node_options or {}).get(i) or NodeOptions(**{**options.__dict__, "seed": (options.seed or 0) * 1000 + i}),
            observer=monitor,
            secret=secret_override or (secrets or {}).get(i, secret),
            journal=journal,
            undelivered=_Lines(),
        )

    summaries: dict[int, Summary] = {}
    created = {i: trio.Event() for i in range(size)}
    scopes: dict[int, trio.CancelScope] = {}
    late_nodes: set[int] = set()
    started = trio.current_time()

    async def run_node(i: int, delay: float, secret_override: bytes | None = None, restart: bool = False) -> None:
        await trio.sleep(delay)
        late = restart and nodes[0].core.finished  # the ring is over: it may find nobody
        node = nodes[i] = make_node(i, secret_override)
        created[i].set()
        with trio.CancelScope() as scope:
            scopes[i] = scope
            try:
                summary = await node.run()
                summaries.setdefault(i, summary)  # a restart after it finished has nothing more to say
            except* RingError:
                if late:
                    if i not in summaries:  # (else it had finished, in its first life)
                        late_nodes.add(i)
                elif secret_override is None:
                    raise
                # An intruder gives up: nobody lets it in.
        if node._undelivered is not None:
            undelivered[i] += node._undelivered

    async def apply_crash(crash: Crash, ring_nursery: trio.Nursery) -> None:
        await trio.sleep(crash.at)
        if crash.down_for is None:
            # Not before every running node has seen the ring (the doc's limit:
            # a node killed before that is waited for, not bypassed).
            await monitor.closed.wait()
            while not all(nodes[i].core.ring_seen for i in scopes):
                await trio.sleep(0.05)
        if crash.node not in scopes or crash.node in summaries:
            return  # not started yet, or already finished
        scopes.pop(crash.node).cancel()
        if nodes[crash.node].summary is not None:  # it had finished, and only lingered for its neighbours
            summaries.setdefault(crash.node, nodes[crash.node].summary)
        monitor.crashed(crash.node)
        if crash.down_for is not None:
            ring_nursery.start_soon(run_node, crash.node, crash.down_for, crash.secret, True)

    async def apply_cut(cut: LinkCut) -> None:
        await trio.sleep(cut.at)
        (network.silence if cut.silent else network.cut)(cut.source, (cut.source + 1) % size)
        await trio.sleep(cut.duration)
        network.restore(cut.source, (cut.source + 1) % size)

    async def apply_stall(stall: ReadStall) -> None:
        await trio.sleep(stall.at)
        network.stall(stall.source, (stall.source + 1) % size)

    async def stop_later() -> None:
        await trio.sleep(stop_at)
        await created[0].wait()  # (a late start: it is asked as soon as it runs)
        nodes[0].request_stop()

    with trio.fail_after(time_limit):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as ring_nursery:
                for i in range(size):
                    ring_nursery.start_soon(run_node, i, (start_delays or {}).get(i, 0.0))
                for crash in crashes:
                    nursery.start_soon(apply_crash, crash, ring_nursery)
                for cut in cuts:
                    nursery.start_soon(apply_cut, cut)
                for stall in stalls:
                    nursery.start_soon(apply_stall, stall)
                if stop_at is not None:
                    nursery.start_soon(stop_later)
            nursery.cancel_scope.cancel()
    return SimResult(summaries, monitor, network, nodes, trio.current_time() - started, undelivered, late_nodes)
