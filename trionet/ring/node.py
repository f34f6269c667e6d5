"""The trio layer of a ring node (I/O only): a listener, a dialer, a reader per connection, two token tasks.

Per node, under one nursery:

- the *listener* accepts the previous node's connection (and ``trionet ring
  stop`` clients); the *dialer* keeps a connection to the next node, with
  exponential backoff and jitter; every connection, either way, first runs
  the handshake, whose every step is decided by a sans-IO
  :class:`~trionet.ring.handshake.Opening` (this module only carries its
  bytes and supplies the nonces);
- a :class:`~trionet.ring.neighbour.Neighbour` for each neighbour holds the
  current connection, writes to it a frame at a time, acknowledges what
  arrived, and resends after a reconnect what was lost;
- one *reader* per connection (:meth:`RingNode._read_frames`, the per-hop
  path) passes a frame that only passes through straight on to the other
  link, and hands every other data frame to the token task of its
  direction; its docstring says which task writes to which socket and why
  frames keep their order;
- two *token tasks*, one per direction, feed those frames to the shared
  :class:`~trionet.ring.core.NodeCore` and carry out what it returns.

Every rule that decides what happens next is in the sans-IO modules
(:mod:`~trionet.ring.core`, :mod:`~trionet.ring.link`,
:mod:`~trionet.ring.handshake`); nothing here measures: benchmarks attach
the hooks of :mod:`trionet.ring.stats`. Connections come from a
:class:`~trionet.ring.transport.Transport`: TCP for real nodes, in-memory
streams for the test simulation (``tests/ring/sim.py``), so both run this
same code.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import trio

from trionet.framing import EOF, NEED_DATA
from trionet.log import get_logger
from trionet.ring.config import NodeAddress, RingConfig
from trionet.ring.core import Deliver, Finished, NodeCore, Returned, Send, Summary, Undeliverable
from trionet.ring.frames import (
    NONCE_BYTES,
    DataFrame,
    Direction,
    Finalize,
    FrameDecoder,
    Hello,
    Message,
    Probe,
    Reject,
    RemoteProtocolError,
    Role,
    StatusReply,
    StatusRequest,
    Stop,
    encode_frame,
)
from trionet.ring.handshake import Opening, Side
from trionet.ring.journal_file import JournalFile
from trionet.ring.link import Arrival
from trionet.ring.membership import admits, candidates
from trionet.ring.neighbour import EPOCH, LINK_ERRORS, Neighbour
from trionet.ring.transport import TcpTransport, Transport
from trionet.serving import RECEIVE_CHUNK, receive_event

__all__ = ["NodeOptions", "RingError", "RingNode", "request_status", "request_stop"]

log = get_logger("ring")

NEW, DUPLICATE, ACKED, HEARTBEAT = Arrival.NEW, Arrival.DUPLICATE, Arrival.ACKED, Arrival.HEARTBEAT  # read once per frame


_LINK_ERRORS = LINK_ERRORS


class RingError(Exception):
    """The node cannot go on (a neighbour never appeared, the ring files differ); exit non-zero."""


@dataclass(frozen=True)
class NodeOptions:
    """Timing of one node; every field has a ``trionet ring join`` option or a sane default.

    Attributes:
        connect_timeout: seconds a link to a neighbour may stay down (at
            startup or after a drop) before the node gives up.
        handshake_timeout: seconds to connect and exchange greetings.
        backoff_initial: first delay between connection attempts, in seconds.
        backoff_max: the delay doubles after each failure up to this.
        ack_delay: seconds an acknowledgement may wait, so it leaves the
            forwarding path and several frames share one.
        ack_timeout: a frame unacknowledged this long (seconds) means the
            connection died silently; it is closed and re-established.
        finish_grace: after finishing, the longest wait (seconds) for the
            previous node to close its connection, in case it must reconnect
            to learn that its finalization command arrived.
        seed: seeds the backoff jitter (the simulation passes one).
        failure_timeout: seconds of silence (no frame, no heartbeat) after
            which a neighbour is suspected dead and bypassed; heartbeats go
            out every third of it on an idle link.
        undeliverable_after: seconds after its first sending that a message
            whose destination is not in the ring is given up (``--undelivered``).
    """

    connect_timeout: float = 60.0
    handshake_timeout: float = 10.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    ack_delay: float = 0.2
    ack_timeout: float = 5.0
    finish_grace: float = 10.0
    seed: int | None = None
    failure_timeout: float = 3.0
    undeliverable_after: float = 30.0


class _Rejected(Exception):
    """The neighbour refused our greeting."""


class RingNode:
    """One node of the ring, run with ``await node.run()`` (or ``nursery.start(node.run)``).

    Args:
        config: the ring.
        node_id: this node's id.
        messages: ``(destination, text)`` pairs to send, consumed lazily.
        deliveries: a text file for the deliveries JSON lines, or None.
        transport: TCP by default.
        options: timing.
        observer: passed to :class:`~trionet.ring.core.NodeCore`.
        listen: ``(host, port)`` to listen on instead of the ring file's
            address (behind NAT or a proxy, or 0.0.0.0).
        secret: the ring's shared secret: every connection must prove it
            (:mod:`trionet.ring.handshake`). None: no secret, for a ring on
            loopback; such a node refuses nodes that have one, and the reverse.
        journal: the exactly-once journal (:mod:`trionet.ring.journal`), or
            None. With one, a return is recorded before the token moves on,
            a delivery before its line is written, and a message delivered
            here before (by this or an earlier run) is not delivered again
            (the core asks :meth:`~trionet.ring.journal.Journal.was_delivered`).
            ``messages`` should then be numbered (line numbers as ids) and
            already stripped of returned ones (:meth:`~trionet.ring.journal.Journal.unsent`).
            The node's counters carry on from the journal: messages it saw
            return count as sent, messages it delivered as delivered, so the
            ring's final tally and ``ring status`` count each message once
            however often a node restarted.
        to_send: how many messages ``messages`` holds, for ``trionet ring
            status`` (:meth:`~trionet.ring.core.NodeCore.status`).
        undelivered: a text file for the JSON lines of the messages given
            up (``--undelivered``), or None.

    Error handling: :meth:`run` raises :class:`RingError` when a neighbour
    stays unreachable longer than ``options.connect_timeout`` before any ring
    existed; link failures are repaired without losing or repeating a frame,
    and once a ring has existed a dead neighbour is bypassed instead
    (``docs/protocol/ring.md``, "Crashes").
    """

    def __init__(
        self,
        config: RingConfig,
        node_id: int,
        *,
        messages: Iterable[tuple[int, str]] = (),
        deliveries: IO[str] | None = None,
        transport: Transport | None = None,
        options: NodeOptions | None = None,
        observer: Callable[[str, int, object], None] | None = None,
        listen: tuple[str, int] | None = None,
        secret: bytes | None = None,
        journal: JournalFile | None = None,
        to_send: int | None = None,
        undelivered: IO[str] | None = None,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError("an empty secret; pass None for a ring without one")
        self.config = config
        self._secret = secret  # None: a ring without one (the handshake then proves nothing: handshake.py)
        self.me = config.node(node_id)
        self.listen = NodeAddress(node_id, *listen) if listen else self.me
        self.prev, self.next = config.neighbours(node_id)
        self.options = options or NodeOptions()
        self.transport = transport or TcpTransport()
        delivered_before = journal.journal.was_delivered if journal is not None else None
        self.core = NodeCore(
            node_id, config.ids, messages, observer, to_send, delivered_before,
            undeliverable_after=self.options.undeliverable_after, idle_pause=self.options.failure_timeout / 3,
            probe_timeout=2 * self.options.failure_timeout,
            sent=len(journal.journal.returned) if journal is not None else 0,
            delivered=len(journal.journal.delivered) if journal is not None else 0,
        )
        if journal is not None:  # a restart proposes above every epoch it took part in (even if all were down)
            self.core.note_epoch(journal.journal.epoch)
        self._deliveries = deliveries
        self._undelivered = undelivered
        self._journal = journal
        self._rng = random.Random(self.options.seed)
        # The next node's link brings ccw frames; the previous node's brings cw frames.
        acks = dict(
            ack_delay=self.options.ack_delay, ack_timeout=self.options.ack_timeout,
            failure_timeout=self.options.failure_timeout,
        )
        self.next_link = Neighbour(f"link {node_id}->{self.next.id}", self.next, Direction.CCW, **acks)
        self.prev_link = Neighbour(f"link {self.prev.id}->{node_id}", self.prev, Direction.CW, **acks)
        # By direction (a tuple index, cheaper than a dict of enum keys on the hop path):
        self._link_to = (self.next_link, self.prev_link)  # where frames of the direction go
        # Unbuffered: a reader hands a frame over only when that direction's token task takes it.
        cw, ccw = trio.open_memory_channel[tuple[DataFrame, int]](0), trio.open_memory_channel[tuple[DataFrame, int]](0)
        self._hand_over = (cw[0], ccw[0])
        self._token_inbox = (cw[1], ccw[1])
        self._failing: dict[int, float] = {}  # candidate successor -> when its failures began
        self._retry_by = math.inf  # when the candidate that stopped the last round becomes suspected
        self._stop_requested = trio.Event()
        self._finalize_forwarded = trio.Event()
        self.finished = trio.Event()
        self.summary: Summary | None = None

    @property
    def frames_received(self) -> int:
        """Data frames received from both neighbours (not counting duplicates)."""
        return self.prev_link.state.ack + self.next_link.state.ack

    def request_stop(self) -> None:
        """Finalize gracefully (node 0), or ask node 0 to (any other node). Safe to call twice."""
        self._stop_requested.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> Summary:
        """:meth:`run` under the name every trionet service has (``serve`` / ``shutdown``)."""
        return await self.run(task_status=task_status)

    def shutdown(self, grace: float = 0.0) -> None:
        """Stop as a service stops: :meth:`request_stop` (a ring ends by node 0's finalization, not a timer)."""
        self.request_stop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> Summary:
        """Join the ring and run until the finalization command has passed; return this node's summary.

        ``task_status.started()`` is called once the listener is up.

        Raises:
            RingError: a neighbour stayed unreachable for ``connect_timeout``.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.serve, self.listen, self._on_incoming)
            task_status.started()
            nursery.start_soon(self._dial_loop)
            nursery.start_soon(self._token_task, Direction.CW)
            nursery.start_soon(self._token_task, Direction.CCW)
            nursery.start_soon(self._watch_link, self.next_link)
            nursery.start_soon(self._watch_link, self.prev_link)
            nursery.start_soon(self._wait_stop)
            nursery.start_soon(self._start)
            nursery.start_soon(self._close_next_when_done)
            nursery.start_soon(self._watch_view)
            await self.finished.wait()
            self.next_link.flush_acks()
            self.prev_link.flush_acks()
            # Leave once the finalization command we forwarded is acknowledged
            # (the link watchdog bounds this wait); every other frame has
            # arrived already, or node 0 could not have finalized.
            with trio.move_on_after(self.options.connect_timeout):
                await self.next_link.wait_drained()
            await self.next_link.close()
            # Stay a little for the previous node: should the ack of its
            # command be lost with a connection, it reconnects and learns from
            # our greeting that the command arrived. It says BYE when done,
            # so this normally ends at once.
            with trio.move_on_after(self.options.finish_grace):
                await self.prev_link.peer_done.wait()
            nursery.cancel_scope.cancel()
        assert self.summary is not None
        return self.summary

    # --- the pass-through path, the token tasks and the actions of the core ------

    async def _read_frames(self, link: Neighbour, decoder: FrameDecoder, stream: trio.abc.Stream) -> None:
        """Read ``link``'s connection until it ends; pass each new frame through, or hand it to a token task.

        The per-hop path. A frame that only passes through this node
        (another node's message, a token this node does not take:
        :meth:`~trionet.ring.core.NodeCore.is_transit`) is written on to the
        other link by this task at once, as a Token Ring station repeats
        frames; any other data frame goes to the token task of its direction
        over an unbuffered channel. A token task in between would add a pass
        of trio's event loop to the hop, about half of it (``docs/benchmarks.md``).

        Which task owns which socket: this task is the only reader of
        ``link``'s connection (:meth:`~trionet.ring.neighbour.Neighbour.run_connection` runs it once per
        connection). Writes to a link's connection come from this reader of
        the *other* link (passing through), from the token task of the
        link's outgoing direction, and from the link's own ack task; each
        writes whole frames while holding that link's write semaphore
        (:meth:`~trionet.ring.neighbour.Neighbour.send`), so frames never interleave on a socket, and a
        write cancelled half way restarts that link's connection rather
        than leave half a frame on it.

        Why order is kept: frames of one direction reach the other link
        either through this task or through that direction's token task,
        and one can overtake the other only where the protocol allows it.
        A transit message never has its direction's token near it (its
        origin holds that token until the message returns); a token passed
        through never has a message of its direction near it (none is in
        flight when a node passes the token without sending); ``Probe`` and
        ``Finalize`` travel only when no message or token does. Only a
        ``StopRequest`` can be overtaken, which is harmless.

        A frame is marked received (no longer accepted when resent) only
        once it is safely on its way: for a frame passed through, before
        the write, because :meth:`~trionet.ring.neighbour.Neighbour.send` has numbered and queued it for
        resending before its first checkpoint; for a frame handed over, once
        the token task took it.

        Raises:
            RemoteProtocolError: the peer broke a link or node rule
                (:meth:`~trionet.ring.link.LinkState.receive`,
                :meth:`~trionet.ring.core.NodeCore.is_transit`); the link
                drops this connection and waits for the next.
        """
        state = link.state
        core = self.core
        hand_over = self._hand_over[state.incoming]
        link_to = self._link_to
        current_time = trio.current_time
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                decoder.receive_data(await stream.receive_some(RECEIVE_CHUNK))
                link.last_heard = current_time()
                continue
            if event is EOF:
                return
            frame, seq, epoch = event
            arrival = state.receive(frame, seq, epoch)
            if arrival is NEW:
                # (is_transit first: it refuses a message naming a node outside the ring, in any epoch.)
                if core.is_transit(frame) and epoch == core.epoch:
                    state.mark_received(seq)
                    link.passed_through += 1
                    for send in core.receive(frame, current_time()):  # one Send, for a transit frame
                        await link_to[send.direction].send(send.frame, send.epoch)
                else:
                    item = (frame, epoch)
                    try:
                        hand_over.send_nowait(item)  # the token task is usually waiting: no yield
                    except trio.WouldBlock:
                        await hand_over.send(item)
                    state.mark_received(seq)
                link.want_ack(urgent=type(frame) is Finalize)  # its sender waits for that ack to exit
            elif arrival is DUPLICATE:
                link.want_ack(urgent=type(frame) is Finalize)
            elif arrival is ACKED:
                link.acked()
            elif arrival is HEARTBEAT:
                pass
            else:  # BYE
                link.peer_done.set()
                return

    async def _token_task(self, direction: Direction) -> None:
        """The token task of one direction: act on each frame of it that a reader hands over.

        That is every frame of the direction but those only passing through
        (:meth:`_read_frames`).
        """
        receive = self._token_inbox[direction].receive  # the send side is never closed
        core = self.core
        while True:
            frame, epoch = await receive()
            view = (core.epoch, core.monitor)
            try:
                actions = core.receive(frame, trio.current_time(), epoch)
            except RemoteProtocolError as exc:
                # Impossible between correct nodes (the links de-duplicate):
                # a second token or a stranger's message means the ring is broken.
                raise RingError(f"node {self.me.id}: protocol violation: {exc}") from None
            if type(frame) is Probe and (core.epoch, core.monitor) != view:
                log.info("node %d: epoch %d, monitor node %d", self.me.id, core.epoch, core.monitor)
            elif type(frame) is Probe and frame.monitor == self.me.id and any(type(a.frame) is not Probe for a in actions if type(a) is Send):
                log.info("node %d: the ring is closed in epoch %d; injecting the cw and ccw tokens", self.me.id, epoch)
            await self._perform(actions)
            core.prefetch()  # off the token's path, before the next frame comes

    async def _watch_view(self) -> None:
        # A view this node proposed whose probe never came back (lost with a
        # node that died, or waiting for one that is not there): again, higher.
        while True:
            await trio.sleep(self.options.failure_timeout)
            if self.core.probe_overdue(trio.current_time()):
                log.info("node %d: no answer to epoch %d; proposing epoch %d", self.me.id, self.core.epoch, self.core.next_epoch())
                await self._perform(self.core.propose(trio.current_time()))

    async def _start(self) -> None:
        if self.core.is_leader:
            log.info("node 0: checking that the ring is closed (a probe goes round clockwise)")
            await self._perform(self.core.start(trio.current_time()))

    async def _close_next_when_done(self) -> None:
        # Once the next node has the finalization command, this node has
        # nothing more to say to it; closing tells it so. Not node 0, until
        # the command is back (run() closes it then): should a node die with
        # the command before passing it on, after the nodes before it left,
        # node 0 is the one left to repair the ring; it keeps dialing its
        # successor, bypasses the nodes gone, and sends the command again on
        # the new link (NodeCore.link_reset).
        if self.core.is_leader:
            return
        await self._finalize_forwarded.wait()
        with trio.move_on_after(self.options.connect_timeout):
            await self.next_link.wait_drained()
        await self.next_link.close()

    async def _wait_stop(self) -> None:
        await self._stop_requested.wait()
        if self.core.is_leader:
            log.info("node 0: stop requested; finalizing once the tokens are back")
        else:
            log.info("node %d: stop requested; asking node 0", self.me.id)
        await self._perform(self.core.request_stop(trio.current_time()))

    async def _perform(self, actions: list) -> None:
        journal = self._journal
        if journal is not None and self.core.epoch > journal.journal.epoch:
            # A view proposed or adopted: recorded before its probe goes on (journal "E").
            journal.append(journal.journal.on_epoch(self.core.epoch))
        for action in actions:
            if type(action) is Send:
                frame = action.frame
                if action.pause:
                    await trio.sleep(action.pause)
                await self._link_to[action.direction].send(frame, action.epoch)
                if type(frame) is Finalize:
                    self._finalize_forwarded.set()
            elif isinstance(action, Deliver):
                self._write_delivery(action.message)
            elif isinstance(action, Returned):
                if self._journal is not None:  # before the token that follows it moves on
                    self._journal.append(self._journal.journal.on_return(action.message.msg_id))
            elif isinstance(action, Undeliverable):
                self._write_undelivered(action)
            elif isinstance(action, Finished):
                if self._deliveries is not None:
                    self._deliveries.flush()
                self.summary = action.summary
                self.finished.set()

    def _write_delivery(self, msg: Message) -> None:
        journal = self._journal
        if journal is not None:
            record = journal.journal.on_delivery(msg.origin, msg.msg_id)
            if record is None:  # the core asked the journal first; kept as a last guard
                return
            journal.append(record)
        if self._deliveries is None:
            return
        record = {
            "id": msg.uid,
            "origin": msg.origin,
            "destination": msg.destination,
            "direction": msg.direction.label,
            "text": msg.text,
        }
        self._deliveries.write(json.dumps(record, ensure_ascii=False) + "\n")
        if journal is not None:
            self._deliveries.flush()  # the journal says delivered: the line must not stay in a buffer

    def _write_undelivered(self, action: Undeliverable) -> None:
        msg = action.message
        log.warning("node %d: message %s to node %d is undeliverable: %s", self.me.id, msg.uid, msg.destination, action.reason)
        if self._undelivered is not None:
            record = {
                "id": msg.uid, "origin": msg.origin, "destination": msg.destination, "text": msg.text,
                "reason": action.reason,
            }
            self._undelivered.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._undelivered.flush()
        if self._journal is not None:  # done with it: a restart must not send it again
            self._journal.append(self._journal.journal.on_return(msg.msg_id))

    # --- connections -------------------------------------------------------------

    def _opening_args(self) -> dict:
        """What every handshake of this node shares, with a fresh nonce (its only randomness)."""
        return dict(
            ring=self.config.fingerprint, digest=self.config.digest, secret=self._secret,
            epoch=self.core.announced_epoch, nonce=secrets.token_bytes(NONCE_BYTES),
        )

    @property
    def bypassing(self) -> bool:
        """True once a ring has existed (this node saw a token, or a neighbour had): dead neighbours are then bypassed."""
        return self.core.ring_seen

    async def _dial_loop(self) -> None:
        """Keep a successor: the ring-file next node, or, once a ring existed, the first live one after it.

        See ``docs/protocol/ring.md`` ("Bypass"): candidates are tried in
        ring order, one attempt each, then the round starts again after a
        backoff; while the successor is not the first candidate, the closer
        ones are tried again every failure timeout.
        """
        link = self.next_link
        backoff = self.options.backoff_initial
        found: tuple | None = None
        while not link.closed:
            if found is None:
                found = await self._try_candidates(self._candidates())
            if found is None:
                # Backing off, but not past the moment the candidate that stopped
                # the round becomes suspected: the bypass is tried then, not up
                # to a backoff later (that added up to 1.5 s to a recovery).
                delay = backoff * self._rng.uniform(0.5, 1.0)
                retry_by, self._retry_by = self._retry_by, math.inf
                await trio.sleep_until(min(trio.current_time() + delay, retry_by))
                backoff = min(backoff * 2, self.options.backoff_max)
                continue
            backoff = self.options.backoff_initial
            target, stream, hello, resume, decoder = found
            found = None
            if target.id != link.peer.id:
                log.warning("node %d: next node is now node %d (bypassing %s)", self.me.id, target.id, self._skipped(target.id))
            else:
                log.info("node %d: connected to node %d at %s", self.me.id, target.id, target.address)
            closer: list[tuple] = []
            async with trio.open_nursery() as nursery:
                if self.bypassing and target.id != self._candidates()[0]:
                    nursery.start_soon(self._look_closer, target.id, closer)
                await link.run_connection(
                    stream, hello, functools.partial(self._read_frames, link, decoder), peer=target,
                    resume=resume, on_ready=functools.partial(self._link_ready, link),
                )
                nursery.cancel_scope.cancel()
            if closer:
                found = closer[0]
                continue
            if link.closed:
                return
            # Once finalizing, the next node leaving is expected.
            level = logging.DEBUG if self.core.finalizing else logging.WARNING
            log.log(level, "node %d: lost the link to node %d (%s); reconnecting", self.me.id, target.id, link.last_error)

    def _candidates(self) -> list[int]:
        if not self.bypassing:
            return [self.next.id]
        return candidates(self.config.ids, self.me.id)

    def _skipped(self, target: int) -> str:
        ids = self._candidates()
        skipped = ids[: ids.index(target)] if target in ids else []
        return ", ".join(f"node {i}" for i in skipped) or "nobody"

    async def _try_candidates(self, ids: list[int]) -> tuple | None:
        """One attempt at each of ``ids`` in order; the first that completes the handshake, or None.

        A candidate is passed over only once it has been failing for the
        failure timeout (suspected dead): a short cut or a restart in
        progress does not make the ring close around a live node.
        """
        link = self.next_link
        for node_id in ids:
            target = self.config.node(node_id)
            try:
                stream, hello, resume, decoder = await self._dial_once(target)
            except (*_LINK_ERRORS, trio.TooSlowError, _Rejected) as exc:
                link.last_error = str(exc) or type(exc).__name__
                log.debug("node %d: cannot reach node %d: %s", self.me.id, node_id, link.last_error)
                suspected_at = self._failing.setdefault(node_id, trio.current_time()) + self.options.failure_timeout
                if trio.current_time() < suspected_at:
                    self._retry_by = suspected_at
                    return None  # not suspected yet: try it again after a backoff
                continue
            self._failing.pop(node_id, None)
            return target, stream, hello, resume, decoder
        return None

    async def _look_closer(self, current: int, found: list[tuple]) -> None:
        """While the successor is a farther node, try the closer ones every failure timeout; switch to one that answers."""
        while True:
            await trio.sleep(self.options.failure_timeout)
            ids = self._candidates()
            result = await self._try_candidates(ids[: ids.index(current)] if current in ids else ids)
            if result is not None:
                found.append(result)
                self.next_link.drop_connection(f"node {result[0].id}, closer, is back")
                return

    async def _link_ready(self, link: Neighbour, reset: bool) -> None:
        """A link is up; if it started again (a new or restarted neighbour), propose a new view.

        Once the ring is ending, the neighbour gets the finalization command
        instead, should it lack it (:meth:`~trionet.ring.core.NodeCore.link_reset`).
        """
        if not reset:
            return
        if self.core.finalizing:
            await self._perform(self.core.link_reset(Direction.CW if link is self.next_link else Direction.CCW))
        elif self.bypassing:
            log.info("node %d: a link changed; proposing epoch %d", self.me.id, self.core.next_epoch())
            await self._perform(self.core.propose(trio.current_time()))

    async def _dial_once(self, target: NodeAddress) -> tuple[trio.abc.Stream, Hello, bool, FrameDecoder]:
        """Connect to ``target`` and run the dialer's half of the handshake (:class:`Opening`).

        Raises:
            _Rejected: the node refused us, is not the node we wanted,
                or failed to prove the secret (nothing was sent to it then
                but our greeting and a ``REJECT``).
        """
        recv_next, session, peer_session = self.next_link.state.greeting(target.id)
        opening = Opening.dialer(
            node_id=self.me.id, role=Role.PREDECESSOR, peer_id=target.id,
            recv_next=recv_next, session=session, peer_session=peer_session, me=f"node {self.me.id}",
            **self._opening_args(),
        )
        timeout = self.options.handshake_timeout
        if self.bypassing:
            timeout = min(timeout, self.options.failure_timeout)
        with trio.fail_after(timeout):
            stream = await self.transport.connect(target)
            try:
                decoder = FrameDecoder()
                await _run_opening(opening, stream, decoder)
                if opening.refused:
                    raise _Rejected(f"{target.address}: {opening.refused}")
                self.core.note_epoch(opening.peer_epoch, ring=True)
                return stream, opening.peer, opening.resumes, decoder
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    def _admit(self, dialer: int, epoch: int) -> str | None:
        """Whether to take ``dialer`` as predecessor (:func:`~trionet.ring.membership.admits`).

        ``epoch`` is the dialer's greeting's: one above 0 says a ring exists
        (the dialer saw it), so this node may take a bypassing predecessor
        even before a token reached it.
        """
        # (Noted for good only once the dialer proved the secret: _on_incoming.)
        if not (self.bypassing or epoch >= 1) and dialer != self.prev.id:
            return f"node {self.me.id} accepts only its previous node {self.prev.id}, not node {dialer}"
        link = self.prev_link
        # A link down a short while may be a short cut: its node has that long to come back. Half the
        # failure timeout: the dialer has waited the whole of it for that node already, and both ends noticed
        # the same death at about the same moment; the whole of it made the dialer's first try lose the race
        # about half the time, and wait a backoff (up to 2 s) to try again.
        alive = link.up or trio.current_time() - link.down_since < self.options.failure_timeout / 2
        return admits(self.config.ids, self.me.id, dialer, link.state.peer, alive)

    async def _on_incoming(self, stream: trio.abc.Stream) -> None:
        """Run the acceptor's half of the handshake (:class:`Opening`), then hand the connection to its link.

        A connection that fails any check gets a ``REJECT`` naming why and
        is closed; it never reaches the link, so it cannot replace the
        previous node's working connection nor send it a frame. A stop
        client that proves the secret gets its ``STOP`` carried out (node 0)
        and an ``ACK``.
        """
        decoder = FrameDecoder()
        opening = Opening.acceptor(
            node_id=self.me.id, previous=self.prev.id, accepts_stop=self.core.is_leader,
            status=lambda: self.core.status(self.core.epoch), admit=self._admit,
            link=self._answer, **self._opening_args(),
        )
        try:
            with trio.fail_after(self.options.handshake_timeout):
                if not await _run_opening(opening, stream, decoder, on_stop=self._stop_asked):
                    return  # closed before greeting: a port probe
        except (*_LINK_ERRORS, trio.TooSlowError) as exc:
            log.debug("node %d: handshake failed: %s", self.me.id, exc)
            await trio.aclose_forcefully(stream)
            return
        if opening.refused:
            what = "a control request (stop or status)" if opening.control else "a connection"
            log.warning("node %d: refused %s: %s", self.me.id, what, opening.refused)
            if not opening.control and not self.prev_link.up:  # shown should the previous node never get through
                self.prev_link.last_error = f"refused a connection: {opening.refused}"
            return
        if opening.control:
            return
        self.core.note_epoch(opening.peer_epoch, ring=True)
        peer = self.config.node(opening.peer.node_id)
        if peer.id != self.prev_link.peer.id:
            log.warning("node %d: previous node is now node %d", self.me.id, peer.id)
        else:
            log.info("node %d: node %d connected", self.me.id, peer.id)
        link = self.prev_link
        await link.run_connection(
            stream, opening.peer, functools.partial(self._read_frames, link, decoder), peer=peer,
            resume=opening.resumes, on_ready=functools.partial(self._link_ready, link),
        )

    def _answer(self, hello: Hello) -> tuple[int, int, int]:
        return self.prev_link.state.answer(hello.node_id, hello.session, hello.peer_session)

    def _stop_asked(self) -> None:
        log.info("node 0: stop asked by a client")
        self.request_stop()

    async def _watch_link(self, link: Neighbour) -> None:
        timeout = self.options.connect_timeout
        while True:
            await link.wait_up(False)
            with trio.move_on_after(timeout if timeout > 0 else math.inf) as waited:
                await link.wait_up(True)
            # After finalization only the command's own acknowledgement matters.
            owed = not self.core.finalizing or (link is self.next_link and link.state.unacked and not link.closed)
            if waited.cancelled_caught and owed and not self.bypassing:
                raise RingError(
                    f"node {self.me.id}: no link with node {link.peer.id} at {link.peer.address} "
                    f"for {timeout:g}s (last error: {link.last_error})"
                )
            if waited.cancelled_caught and not owed:
                return


async def _run_opening(
    opening: Opening, stream: trio.abc.Stream, decoder: FrameDecoder, on_stop: Callable[[], None] | None = None
) -> bool:
    """Carry ``opening``'s bytes both ways until it is finished; False if a dialer closed before a word.

    ``on_stop`` is called when a stop client's ``STOP`` is accepted, before
    the ``ACK`` goes out.

    Raises:
        trio.BrokenResourceError: the peer closed in the middle of the handshake.
    """
    out = opening.start()
    if out:
        await stream.send_all(out)
    first = True
    while not opening.finished:
        event = await receive_event(stream, decoder)
        if event is EOF:
            if first and opening.side is Side.ACCEPTOR:
                return False
            raise trio.BrokenResourceError("closed during the handshake")
        first = False
        out = opening.receive(event)
        if opening.stop_requested and on_stop is not None:
            on_stop()
        if out:
            await stream.send_all(out)
    return True


async def request_stop(
    config: RingConfig,
    *,
    secret: bytes | None = None,
    timeout: float = 10.0,
    transport: Transport | None = None,
    node_id: int = 0,
) -> None:
    """Ask node 0 of ``config`` to finalize the ring; return once it has agreed.

    The request runs the links' handshake (``HELLO`` with role control, both
    proofs) before ``STOP``: with a secret, only a holder of it can stop the ring.

    Args:
        config: the ring file.
        secret: the ring's shared secret, or None for a ring without one.
        timeout: seconds to wait for the whole exchange.
        transport: TCP by default.
        node_id: the node to ask (only node 0 agrees; for tests).

    Raises:
        RingError: the node cannot be reached, failed to prove the secret, or refused.
    """
    await _control_request(config, node_id, Stop(), secret=secret, timeout=timeout, transport=transport)


async def request_status(
    config: RingConfig,
    *,
    secret: bytes | None = None,
    timeout: float = 5.0,
    transport: Transport | None = None,
) -> dict[int, StatusReply | str]:
    """Ask every node of ``config`` for its status, all at once.

    Each request runs the same handshake as :func:`request_stop` (role
    control, both proofs), then ``STATUS``.

    Args:
        config: the ring file.
        secret: the ring's shared secret, or None for a ring without one.
        timeout: seconds each node has for the whole exchange.
        transport: TCP by default.

    Returns:
        By node id, in ring order: the node's :class:`StatusReply`, or why
        there is none (unreachable, refused, no answer in time).
    """
    results: dict[int, StatusReply | str] = {node.id: "" for node in config.nodes}

    async def ask(node_id: int) -> None:
        try:
            reply = await _control_request(
                config, node_id, StatusRequest(), secret=secret, timeout=timeout, transport=transport
            )
        except RingError as exc:
            results[node_id] = str(exc)
            return
        if isinstance(reply, StatusReply) and reply.node_id == node_id:
            results[node_id] = reply
        else:
            results[node_id] = f"node {node_id} answered {type(reply).__name__}, not its status"

    async with trio.open_nursery() as nursery:
        for node in config.nodes:
            nursery.start_soon(ask, node.id)
    return results


async def _control_request(
    config: RingConfig,
    node_id: int,
    request: Stop | StatusRequest,
    *,
    secret: bytes | None,
    timeout: float,
    transport: Transport | None,
) -> object:
    """Run a control client's handshake with node ``node_id``, send ``request``, return the answer frame.

    Raises:
        RingError: the node cannot be reached, failed to prove the secret,
            refused, closed without an answer or took longer than ``timeout``.
    """
    node = config.node(node_id)
    transport = transport or TcpTransport()
    opening = Opening.dialer(
        node_id=node.id, role=Role.CONTROL, peer_id=node.id, recv_next=1, me="this client",
        ring=config.fingerprint, digest=config.digest, secret=secret, epoch=EPOCH,
        nonce=secrets.token_bytes(NONCE_BYTES),
    )
    try:
        with trio.fail_after(timeout):
            stream = await transport.connect(node)
            async with stream:
                decoder = FrameDecoder()
                await _run_opening(opening, stream, decoder)
                if opening.refused:
                    raise RingError(f"node {node.id} at {node.address}: {opening.refused}")
                await stream.send_all(encode_frame(request))
                event = await receive_event(stream, decoder)
    except trio.TooSlowError:
        raise RingError(f"no answer from node {node.id} at {node.address} within {timeout:g}s") from None
    except _LINK_ERRORS as exc:
        raise RingError(f"cannot reach node {node.id} at {node.address}: {exc}") from None
    if event is EOF:
        raise RingError(f"node {node.id} at {node.address} closed the connection without an answer")
    if isinstance(event.frame, Reject):
        raise RingError(f"node {node.id} at {node.address} refused: {event.frame.reason}")
    return event.frame
