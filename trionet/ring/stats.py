"""What a benchmark or a trace measures at a ring node, by watching it from outside its code path.

The node itself carries no sample lists and no timestamps. A tool attaches:

- :class:`NodeStats` as the node core's observer (:meth:`NodeStats.attach`):
  the core calls it at each step it takes, and it notes the CPU time at the
  node's first step, and the round trip of each of the node's messages as
  the core sees it (from the token's visit that sent it to its return), with
  wall-clock times of the first send and the last return so that processes
  can be compared;
- :class:`StampedStream` as the transport's stream (``TcpTransport(stream=
  log.stream)``, one :class:`StreamLog` per node): it is the ring's
  :class:`~trionet.ring.transport.EagerSocketStream` that also keeps the
  time of every read and write with the bytes, decoded into frames only
  when the run is over (:meth:`StreamLog.frames`).

With a stream log attached, :meth:`NodeStats.report` adds the round trips
measured at the links, from writing a message to reading it back, as a bare
relay's driver measures them (``tools/bench_ring.py``).

:func:`run_measured` runs a node and notes the CPU time when it finishes;
:meth:`NodeStats.report` is the JSON ``tools/bench_ring.py`` reads.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Iterator

import trio

from trionet.framing import NEED_DATA
from trionet.ring.core import Summary
from trionet.ring.frames import Direction, FrameDecoder, Message, Received
from trionet.ring.node import RingNode
from trionet.ring.transport import EagerSocketStream

__all__ = ["NodeStats", "StampedStream", "StreamLog", "link_round_trips", "run_measured"]

MAX_SAMPLES = 10_000
"""Round trips kept for the medians (the first ones); counts and totals cover them all."""


class NodeStats:
    """A node core's observer that measures CPU and round trips; see the module docstring.

    Args:
        round_trips: time this node's messages. False for a node that only
            forwards: then the observer stops watching after the node's
            first step (it sets the core's observer back to None), so that
            it costs nothing per hop.

    Attributes:
        cpu_first: process CPU seconds at the node's first step.
        cpu_finished: process CPU seconds when the finalization passed (:func:`run_measured`).
        first_send: wall-clock time of the first message sent, or None.
        last_return: wall-clock time of the last message back, or None.
    """

    def __init__(self, round_trips: bool = True) -> None:
        self._watch_all = round_trips
        self.node: RingNode | None = None
        self.round_trips = 0
        self.round_trip_total = 0.0
        self.round_trip_samples: list[float] = []
        self.cpu_first: float | None = None
        self.cpu_finished: float | None = None
        self.first_send: float | None = None
        self.last_return: float | None = None
        self._sent_at: dict[Direction, float] = {}

    def attach(self, node: RingNode) -> None:
        """Observe ``node``'s core from now on (in place of any other observer)."""
        self.node = node
        node.core.observer = self

    def __call__(self, event: str, node_id: int, detail: object) -> None:
        """The core's observer: ``event`` at node ``node_id``, ``detail`` is ``(direction, payload)``."""
        if self.cpu_first is None:
            self.cpu_first = time.process_time()
            if not self._watch_all:
                self.node.core.observer = None  # forwarding only: nothing more to note until the end
                return
        direction = detail[0]
        if event == "send":
            self._sent_at[direction] = time.perf_counter()
            if self.first_send is None:
                self.first_send = time.time()
        elif event == "return":
            round_trip = time.perf_counter() - self._sent_at.pop(direction)
            self.round_trips += 1
            self.round_trip_total += round_trip
            if len(self.round_trip_samples) < MAX_SAMPLES:
                self.round_trip_samples.append(round_trip)
            self.last_return = time.time()

    def report(self, node: RingNode, log: StreamLog | None = None) -> dict:
        """The measurements as a JSON-able dict (the keys ``tools/bench_ring.py`` reads).

        Args:
            node: the node measured, after its run.
            log: its stream log, if its transport had one: adds the round
                trips measured at the links.
        """
        link_samples = link_round_trips(log, node.me.id) if log is not None else []
        return {
            "node": node.me.id,
            "round_trips": self.round_trips,
            "round_trip_total": self.round_trip_total,
            "round_trip_median": statistics.median(self.round_trip_samples) if self.round_trip_samples else None,
            "link_round_trip_median": statistics.median(link_samples) if link_samples else None,
            "first_send": self.first_send,
            "last_return": self.last_return,
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "frames_received": node.frames_received,
            "cpu_busy": (self.cpu_finished or 0.0) - (self.cpu_first or 0.0),
        }


class StreamLog:
    """The timestamped reads and writes of every stream a node's transport opened.

    Pass :meth:`stream` as ``TcpTransport(stream=...)``. Each read and each
    write costs one ``perf_counter_ns`` and one list append; at most
    ``limit`` of them are kept per stream.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.streams: list[StampedStream] = []

    def stream(self, socket_stream: trio.SocketStream) -> StampedStream:
        """Wrap a connected socket stream (the transport's ``stream`` hook)."""
        stamped = StampedStream(socket_stream, self.limit)
        self.streams.append(stamped)
        return stamped

    def frames(self) -> Iterator[tuple[int, str, Received]]:
        """Every complete frame read (``"R"``) or written (``"W"``), with the time in ns of the read or write that completed it, in time order."""
        found: list[tuple[int, str, Received]] = []
        for stamped in self.streams:
            for op in "RW":
                decoder = FrameDecoder()
                for stamp, kind, data in stamped.events:
                    if kind != op:
                        continue
                    decoder.receive_data(data)
                    while (event := decoder.next_event()) is not NEED_DATA:
                        found.append((stamp, op, event))
        found.sort(key=lambda item: item[0])
        return iter(found)


class StampedStream(EagerSocketStream):
    """An :class:`~trionet.ring.transport.EagerSocketStream` that keeps ``(ns, "R"|"W", bytes)`` of each call."""

    def __init__(self, stream: trio.SocketStream, limit: int) -> None:
        super().__init__(stream)
        self.events: list[tuple[int, str, bytes]] = []
        self._limit = limit

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await super().receive_some(max_bytes)
        if len(self.events) < self._limit:
            self.events.append((time.perf_counter_ns(), "R", data))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if len(self.events) < self._limit:
            self.events.append((time.perf_counter_ns(), "W", bytes(data)))
        await super().send_all(data)


def link_round_trips(log: StreamLog, node_id: int) -> list[float]:
    """Seconds from writing each of node ``node_id``'s messages to reading it back, from a stream log."""
    written: dict[tuple[int, int], int] = {}
    samples: list[float] = []
    for stamp, op, event in log.frames():
        frame = event.frame
        if type(frame) is not Message or frame.origin != node_id:
            continue
        key = (frame.direction, frame.msg_id)
        if op == "W":
            written.setdefault(key, stamp)  # a resend after a reconnect keeps the first write
        elif key in written:
            samples.append((stamp - written.pop(key)) / 1e9)
    return samples[:MAX_SAMPLES]


async def run_measured(node: RingNode, stats: NodeStats) -> Summary:
    """Run ``node`` to its end with ``stats`` attached; note the CPU time once the finalization has passed.

    Raises:
        RingError: as :meth:`~trionet.ring.node.RingNode.run`.
    """
    stats.attach(node)

    async def stamp_finish() -> None:
        await node.finished.wait()
        stats.cpu_finished = time.process_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stamp_finish)
        return await node.run()
