"""``trionet ring demo``: a live view of a local ring on loopback, tokens and deliveries as they move.

Every node is a real :class:`~trionet.ring.node.RingNode` over TCP on
127.0.0.1, all in this process. Each write is slowed down by ``pace`` seconds
so the eye can follow the two tokens; the protocol itself is untouched.

With ``kill``, one node's task is cancelled mid-run, which closes its
listener and connections as a ``kill -9`` of its process would (the kernel
closes a killed process's sockets alike). The view then shows the crash, its
neighbours bypassing it, the new epoch and the regenerated tokens, and the
messages to the dead node given up, until node 0 finalizes the smaller ring.
With ``restart_after`` as well, the node is started again after that many
seconds, as ``ring join`` with the same arguments would: from its journal and
deliveries file (in a temporary directory), so it sends again nothing whose
return it saw and delivers nothing twice; it rejoins between its neighbours.
Node 0 can be killed only so, since finalization is node 0's alone.
"""

from __future__ import annotations

import collections
import logging
import random
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trionet.log import get_logger
from trionet.ring.config import NodeAddress, RingConfig
from trionet.ring.core import Summary
from trionet.ring.frames import Direction, Message
from trionet.ring.journal_file import open_deliveries, resume
from trionet.ring.node import NodeOptions, RingNode
from trionet.ring.transport import TcpTransport

__all__ = ["DemoView", "free_ports", "run_demo", "run_ring_demo"]

_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports free on ``host`` right now.

    They are drawn below the kernel's ephemeral range, so that the nodes' own
    outgoing connections (which take ephemeral ports) cannot take one of them
    before its node starts listening.

    Why not let each node bind port 0 and report it: a ring file lists every
    node's address before any node starts (each dials the next from it), so
    the ports must be known first. The port is checked free and released,
    then bound again by its node: between the two, only another process that
    binds a fixed port in the same place could take it. Ports are drawn at
    random from about 12 000 (no ephemeral port, no sequence shared between
    concurrent test runs), so such a collision is rare, and it shows as a
    node that cannot listen ("address already in use"), never as a wrong result.
    """
    low = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            ephemeral_low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = max(ephemeral_low - 1, low + 1000)
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(low, high)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


class _PacedStream(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream, pace: float) -> None:
        self._inner, self._pace = inner, pace

    async def send_all(self, data) -> None:
        await trio.sleep(self._pace)
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _PacedTransport(TcpTransport):
    def __init__(self, pace: float) -> None:
        super().__init__()
        self._pace = pace

    async def connect(self, node: NodeAddress) -> trio.abc.Stream:
        return _PacedStream(await super().connect(node), self._pace)

    async def serve(self, node, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async def paced(stream: trio.abc.Stream) -> None:
            await handler(_PacedStream(stream, self._pace))

        await super().serve(node, paced, task_status=task_status)


@dataclass
class DemoView:
    """What the live view shows, updated by every node core's observer."""

    size: int
    holder: dict[Direction, int | None] = field(default_factory=lambda: {d: None for d in Direction})
    carrying: dict[Direction, Message | None] = field(default_factory=lambda: {d: None for d in Direction})
    counts: dict[int, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    deliveries: collections.deque = field(default_factory=lambda: collections.deque(maxlen=8))
    position: dict[Direction, int | None] = field(default_factory=lambda: {d: None for d in Direction})
    finalized: list[int] = field(default_factory=list)
    epoch: dict[int, int] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)
    restarted: set[int] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    delivered_uids: collections.Counter = field(default_factory=collections.Counter)
    first_delivery: trio.Event = field(default_factory=trio.Event)
    given_up: int = 0
    _epochs_told: set[int] = field(default_factory=set)
    _retried: set[str] = field(default_factory=set)

    def note(self, line: str) -> None:
        """Add a line to the ring events panel (crashes, bypasses, epochs)."""
        self.events.append(line)

    def __call__(self, event: str, node: int, detail: object) -> None:
        direction, payload = detail
        if event == "view":
            epoch, monitor, _old = payload
            self.epoch[node] = epoch
            if epoch not in self._epochs_told and epoch > 1:  # epoch 1: the ring's start
                self._epochs_told.add(epoch)
                self.note(f"[yellow]epoch {epoch}[/yellow]: node {node} enters it, monitor node {monitor}")
        elif event == "inject" and payload > 1:
            self.note(f"node {node} regenerates the {direction.label} token in epoch {payload}")
        elif event == "retry" and payload.uid not in self._retried:
            self._retried.add(payload.uid)  # once: it retries until its destination is back, or gives up
            self.note(f"node {node} will send {payload.uid} again (lost with a dead node, or its destination is down)")
        elif event == "undeliverable":
            self.given_up += 1
            self.note(f"[red]{payload.uid}[/red] to node {payload.destination} given up: undeliverable")
        if event in ("token-in", "token-park"):
            self.holder[direction] = node
            self.position[direction] = node
        elif event == "token-out":
            self.holder[direction] = None
        elif event == "send":
            self.counts[node]["sent"] += 1
            self.carrying[direction] = payload
        elif event == "forward":
            self.counts[node]["forwarded"] += 1
            self.position[direction] = node
        elif event == "deliver":
            self.counts[node]["delivered"] += 1
            self.deliveries.appendleft(payload)
            self.delivered_uids[payload.uid] += 1
            self.first_delivery.set()
        elif event == "return":
            self.carrying[direction] = None
        elif event == "finalize":
            self.finalized.append(node)

    def render(self, final: bool = False) -> Group:
        """The ring as a table (one row per node), the latest deliveries, and the ring events.

        Args:
            final: the run is over: every ring event in order, not only the latest.
        """
        table = Table(title=f"ring of {self.size} nodes", expand=False)
        for name in ("node", "epoch", "cw token", "ccw token", "sent", "delivered", "forwarded"):
            table.add_column(name, justify="left" if "token" in name else "right")
        for i in range(self.size):
            c = self.counts[i]
            if i in self.killed:
                dead = Text("✗ killed", style="bold red")
                table.add_row(str(i), "-", dead, dead, str(c["sent"]), str(c["delivered"]), str(c["forwarded"]))
                continue
            marks = []
            for d, colour in ((Direction.CW, "cyan"), (Direction.CCW, "magenta")):
                if self.holder[d] == i:
                    carried = self.carrying[d]
                    label = f"● {'waits for ' + carried.uid if carried else 'held'}"
                    marks.append(Text(label, style=f"bold {colour}"))
                elif self.carrying[d] is not None and self.position[d] == i:
                    marks.append(Text(f"✉ {self.carrying[d].uid} passing", style=colour))
                else:
                    marks.append(Text(""))
            epoch = str(self.epoch.get(i, "-"))
            name = f"{i} ↻" if i in self.restarted else str(i)
            table.add_row(name, epoch, marks[0], marks[1], str(c["sent"]), str(c["delivered"]), str(c["forwarded"]))
        lines = [
            f"[green]{m.uid}[/green] {m.origin}→{m.destination} ({m.direction.label}): {m.text}" for m in self.deliveries
        ]
        status = f"finalization command passed {len(set(self.finalized))} node(s)" if self.finalized else "running"
        parts = [table, Panel("\n".join(lines) or "(none yet)", title="latest deliveries")]
        if self.events and final:
            parts.append(Panel("\n".join(self.events), title="ring events"))
        elif self.events:
            parts.append(Panel("\n".join(reversed(self.events[-12:])), title="ring events (latest first)"))
        return Group(*parts, Text(status))


class _EventLog(logging.Handler):
    """Feeds the ring's bypass and lost-link log lines into the view's events panel."""

    def __init__(self, view: DemoView) -> None:
        super().__init__(logging.WARNING)
        self._view = view

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "undeliverable" not in text:  # the view notes those itself
            self._view.note(text)


async def run_ring_demo(
    console: Console,
    *,
    nodes: int = 5,
    messages_per_node: int = 4,
    pace: float = 0.05,
    seed: int | None = None,
    kill: int | None = None,
    restart_after: float | None = None,
    failure_timeout: float = 1.0,
    undeliverable_after: float = 3.0,
) -> dict[int, Summary]:
    """Run a local ring of ``nodes`` nodes with generated messages and show it live on ``console``.

    Args:
        kill: a node id whose task is cancelled once the first message has
            been delivered, as if its process had been killed; the ring
            closes around it. Node 0 only with ``restart_after``: it alone
            finalizes the ring.
        restart_after: with ``kill``, start the node again after this many
            seconds, from its journal; it rejoins the ring.
        failure_timeout: with ``kill``, the nodes' ``--failure-timeout``.
        undeliverable_after: with ``kill``, the nodes' ``--undeliverable-after``:
            how long messages to the dead node wait before they are given up.

    Returns:
        Each surviving node's summary once node 0 has finalized.

    Raises:
        ValueError: ``kill`` is not a node of the ring, is 0 without
            ``restart_after``, or leaves fewer than two nodes.
    """
    if kill is not None and not 0 <= kill < nodes:
        raise ValueError(f"--kill takes a node id from 0 to {nodes - 1}")
    if kill == 0 and restart_after is None:
        raise ValueError("node 0 finalizes the ring: --kill 0 needs --restart-after, so that it comes back")
    if kill is not None and nodes < 3:
        raise ValueError("--kill needs at least 3 nodes, so that two remain")
    rng = random.Random(seed)
    config = RingConfig.local(nodes, ports=free_ports(nodes))
    view = DemoView(nodes)
    transport = _PacedTransport(pace)
    # The demo's links authenticate as a real ring's do, with a secret that
    # lives only in this process.
    secret = secrets.token_bytes(32)
    options = NodeOptions(connect_timeout=10.0, backoff_initial=0.01, backoff_max=0.2)
    if kill is not None:
        options = NodeOptions(
            connect_timeout=10.0, backoff_initial=0.01, backoff_max=0.2,
            failure_timeout=failure_timeout, undeliverable_after=undeliverable_after,
        )
    plans = {
        i: [
            (number, rng.randrange(nodes), f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} from {i}")
            for number in range(1, messages_per_node + 1)
        ]
        for i in range(nodes)
    }
    # The restarted node's journal and deliveries file, as ``ring join --deliveries`` keeps them.
    scratch = tempfile.TemporaryDirectory(prefix="trionet-ring-demo-") if restart_after is not None else None
    files = Path(scratch.name) if scratch is not None else None

    def make_node(i: int) -> tuple[RingNode, list]:
        """Node ``i`` as ``ring join`` makes it: with a journal and a deliveries file when it may restart."""
        if files is None or i != kill:
            return RingNode(config, i, messages=plans[i], transport=transport, options=options,
                            observer=view, secret=secret), []  # fmt: skip
        resumed = resume(i, files / f"deliveries-{i}.jsonl", plans[i], len(plans[i]))
        for note in resumed.notes:
            view.note(note)
        deliveries = open_deliveries(files / f"deliveries-{i}.jsonl")
        node = RingNode(
            config, i, messages=resumed.messages, to_send=resumed.to_send, deliveries=deliveries,
            journal=resumed.journal, transport=transport, options=options, observer=view, secret=secret,
        )  # fmt: skip
        return node, [deliveries, resumed.journal]

    summaries: dict[int, Summary] = {}
    scopes = {i: trio.CancelScope() for i in range(nodes)}

    async def run_node(i: int) -> None:
        node, to_close = make_node(i)
        try:
            with scopes[i]:
                summaries[i] = await node.run()
        finally:
            for fh in to_close:
                fh.close()

    async def kill_node(victim: int) -> None:
        await view.first_delivery.wait()
        scopes[victim].cancel()  # its listener and connections close, as a killed process's do
        view.killed.add(victim)
        view.note(
            f"[bold red]node {victim} killed[/bold red]: its neighbours take it for dead when it refuses "
            f"connections or after {failure_timeout:g} s of silence"
        )
        if restart_after is None:
            return
        await trio.sleep(restart_after)
        scopes[victim] = trio.CancelScope()
        view.killed.discard(victim)
        view.restarted.add(victim)
        view.note(
            f"[bold green]node {victim} restarted[/bold green] with the same arguments: it reads its journal "
            f"and rejoins between its neighbours"
        )
        ring_nursery.start_soon(run_node, victim)

    # The node's bypass and lost-link warnings go to the events panel instead
    # of the terminal, which the live view owns.
    ring_log = get_logger("ring")
    handler = _EventLog(view)
    saved = (ring_log.level, ring_log.propagate)
    if kill is not None:
        ring_log.addHandler(handler)
        ring_log.setLevel(logging.WARNING)
        ring_log.propagate = False
    try:
        with Live(view.render(), console=console, refresh_per_second=12, transient=False) as live:
            async with trio.open_nursery() as nursery:
                async with trio.open_nursery() as ring_nursery:
                    for i in rng.sample(range(nodes), nodes):  # any start order works
                        ring_nursery.start_soon(run_node, i)
                    if kill is not None:
                        ring_nursery.start_soon(kill_node, kill)

                    async def refresh() -> None:
                        while True:
                            live.update(view.render())
                            await trio.sleep(1 / 12)

                    nursery.start_soon(refresh)
                nursery.cancel_scope.cancel()
            live.update(view.render(final=True))
    finally:
        if scratch is not None:
            scratch.cleanup()
        if kill is not None:
            ring_log.removeHandler(handler)
            ring_log.setLevel(saved[0])
            ring_log.propagate = saved[1]
    console.print()
    ring = summaries[0].ring
    if ring is not None:
        console.print(
            f"node 0 finalized: {ring.sent} message(s) sent, {ring.delivered} delivered, "
            f"{ring.unsent} never sent, across {ring.nodes} node(s)"
        )
    if kill is not None and restart_after is not None:
        twice = sum(1 for count in view.delivered_uids.values() if count > 1)
        console.print(
            f"node {kill} was killed and restarted after {restart_after:g} s; it rejoined the ring "
            f"({view.given_up} message(s) given up as undeliverable, {twice} delivered twice)"
        )
    elif kill is not None:
        console.print(
            f"node {kill} was killed; the ring closed around it and finished without it "
            f"({view.given_up} message(s) to it given up as undeliverable)"
        )
    return summaries


async def run_demo(console: Console) -> None:
    """The ``trionet demo`` part: a 5-node ring on loopback, a few seconds long."""
    await run_ring_demo(console, nodes=5, messages_per_node=3, pace=0.02)
