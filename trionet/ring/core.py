"""The token logic of one ring node (sans-IO): frames in, the actions to carry out back.

:class:`NodeCore` never awaits, opens a socket or reads a clock: the trio
layer (:mod:`trionet.ring.node`) and the test simulation feed it the data
frames that arrive, pass the current time where it matters, and carry out
the :class:`Send`, :class:`Deliver`, :class:`Returned` and :class:`Finished`
actions it returns. ``docs/protocol/ring.md`` describes every exchange.

The rules, in one place:

- node 0 sends a probe clockwise; when it comes back every link has been up,
  the ring is closed, and node 0 injects one token per direction; a node sends at most one message per
  token visit, in the token's direction, and holds the token until that
  message comes back to it; a node with nothing to send passes the token at
  once;
- a message is forwarded by every node; its destination delivers it and sets
  ``delivered``; its origin records the outcome and passes the token on;
- a message naming a node outside the ring is refused (a protocol error for
  the link that brought it); a message that comes to its origin but is not
  the one that origin has in flight is dropped: so no frame goes round more
  than once;
- each token carries a ``busy`` flag: a node sets it when it sends on that
  visit or still has messages left. Node 0 clears it at the start of each
  round, and when a token comes back clean it keeps ("parks") it. A clean round
  proves every message file is exhausted and nothing is in flight in that
  direction; once both tokens are parked, node 0 sends ``Finalize``;
- on a stop request node 0 parks each token as it comes back (after its own
  message, if any, has returned), then finalizes the same way;
- ``Finalize`` travels clockwise; each node adds its counters, forwards it and
  finishes; node 0 finishes when it comes back.

Surviving crashes (``docs/protocol/ring.md``, "Crashes"):

- the node holds a *view* ``(epoch, monitor)``; :meth:`NodeCore.propose`
  starts a better one and sends its :class:`Probe`; a probe of a better
  view is adopted (tokens held are forgotten, the message in flight goes
  back to the queue) and forwarded; when its own probe comes back the
  monitor injects the tokens of that epoch, once;
- a data frame of another epoch than the node's is dropped;
- the monitor keeps the rounds (node 0 once it is the monitor, which it
  makes itself whenever it can); a monitor other than node 0 pauses a
  clean token instead of parking it;
- every node remembers what was delivered to it and delivers nothing
  twice; a message that comes back undelivered is sent again on later
  visits until ``undeliverable_after``, then reported :class:`Undeliverable`;
- the ring ends once: a node that has the finalization command sends it
  again on a link that starts again (:meth:`NodeCore.link_reset`), drops a
  second copy, and no longer greets with an epoch once it has finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from trionet.ring.frames import (
    DataFrame,
    Direction,
    Finalize,
    LocalProtocolError,
    Message,
    Probe,
    RemoteProtocolError,
    StatusReply,
    StopRequest,
    Token,
)

__all__ = ["Action", "Deliver", "Finished", "NodeCore", "Returned", "Send", "Summary", "Undeliverable"]


class Send(NamedTuple):
    """Send ``frame`` to the next node in ``direction``, as a frame of ring epoch ``epoch``, after ``pause`` seconds."""

    direction: Direction
    frame: DataFrame
    epoch: int = 1
    pause: float = 0.0


@dataclass(frozen=True, slots=True)
class Deliver:
    """``message`` reached its destination (this node): write the deliveries line."""

    message: Message


@dataclass(frozen=True, slots=True)
class Returned:
    """This node's ``message`` came back; ``round_trip`` is in the caller's time unit."""

    message: Message
    round_trip: float


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """This node's ``message`` could not be delivered for ``undeliverable_after``: record it, with ``reason``."""

    message: Message
    reason: str


@dataclass(frozen=True, slots=True)
class Summary:
    """What a node did, printed when it finishes; ``ring`` holds the ring-wide totals at node 0."""

    node_id: int
    sent: int
    delivered: int
    forwarded: int
    unsent: int
    requested: bool
    ring: Finalize | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """The finalization command passed this node: flush, report ``summary``, and exit."""

    summary: Summary


Action = Send | Deliver | Returned | Finished | Undeliverable


class _Queue:
    """The node's message file as a one-item-lookahead stream."""

    def __init__(self, messages: Iterable[tuple]) -> None:
        self._it: Iterator[tuple] = iter(messages)
        self._head: tuple | None = None
        self._done = False

    def peek(self) -> tuple | None:
        if self._head is None and not self._done:
            self._head = next(self._it, None)
            self._done = self._head is None
        return self._head

    def pop(self) -> tuple:
        head = self.peek()
        assert head is not None
        self._head = None
        return head

    def drain(self) -> int:
        count = int(self.peek() is not None)
        self._head = None
        if not self._done:
            count += sum(1 for _ in self._it)
            self._done = True
        return count


@dataclass
class NodeCore:
    """The token logic of one node, both directions; every method returns the actions to carry out.

    Args:
        node_id: this node's id.
        ring: the ids in clockwise order.
        messages: ``(destination, text)`` pairs, consumed one per token visit,
            numbered 1, 2, 3... as sent; or ``(msg_id, destination, text)``
            triples whose ids are stable across restarts (the line numbers of
            the messages file), which the journal (:mod:`trionet.ring.journal`)
            needs to recognise a message it has seen.
        observer: called as ``observer(event, node_id, detail)`` at each token
            and message step; the simulation checks its invariants with it,
            the demo draws with it. Events: ``token-in``, ``token-out``,
            ``token-park``, ``send``, ``forward``, ``deliver``, ``return``,
            ``drop``, ``finalize``, ``skip`` (delivered before), and for
            views: ``propose``, ``view`` (``(epoch, monitor, old epoch)``),
            ``inject`` (before its ``token-in``), ``drop-probe``, ``stale``
            (a frame of another epoch dropped), ``retry`` (came back
            undelivered), ``undeliverable``.
        delivered_before: ``delivered_before(origin, msg_id)`` is True for a
            message this node delivered in an earlier run (its journal:
            :mod:`trionet.ring.journal`); such a message is marked delivered
            and forwarded as usual, but not delivered again (no
            :class:`Deliver`; counted in :attr:`already_delivered`). Asked
            only at the message's destination, never per hop.
        to_send: how many messages ``messages`` holds, for :meth:`status`
            (it is read lazily and cannot tell); by default its ``len()``
            when it has one, else 0. A node restarted from its journal
            starts with ``sent`` at the messages an earlier run saw return
            (not in ``messages`` any more); they are added here, so that
            ``to_send - sent`` is what is left.
        undeliverable_after: seconds (of the ``now`` passed in) after its
            first sending that a message still coming back undelivered is
            given up (:class:`Undeliverable`).
        idle_pause: seconds a monitor other than node 0 keeps a token that
            came back clean, so that an idle ring without node 0 does not spin.
        probe_timeout: seconds after which a view this node proposed and
            whose probe has not come back is proposed again, higher
            (:meth:`probe_overdue`): the probe was lost with a node that
            died, or waits for a node that is not there.

    Error handling: a frame this node cannot make sense of (a token while it
    already holds that direction's token, a message or stop request naming a
    node outside the ring) raises :class:`RemoteProtocolError`; the link
    layer's de-duplication makes the first impossible between correct nodes,
    and :meth:`is_transit` raises for the second before the frame is taken.
    A message that comes back to this node but is not the one it has in
    flight (it never sent it, or it was already returned) is dropped and
    counted in :attr:`dropped`, so it cannot circulate again.
    """

    node_id: int
    ring: tuple[int, ...]
    messages: Iterable[tuple[int, str] | tuple[int, int, str]] = ()
    observer: Callable[[str, int, object], None] | None = None
    to_send: int | None = None
    delivered_before: Callable[[int, int], bool] | None = None
    undeliverable_after: float = 30.0
    idle_pause: float = 1.0
    probe_timeout: float = 6.0
    epoch: int = 0
    monitor: int | None = None
    max_epoch: int = 0
    ring_seen: bool = False
    undelivered: int = 0
    stale: int = 0
    resent: int = 0
    sent: int = 0
    delivered: int = 0
    forwarded: int = 0
    returned: int = 0
    dropped: int = 0
    already_delivered: int = 0
    tokens_seen: list[int] = field(default_factory=lambda: [0, 0])  # by Direction: every token that came in
    started: bool = False
    finished: bool = False
    stopping: bool = False
    holding: dict[Direction, Token | None] = field(default_factory=lambda: {d: None for d in Direction})
    in_flight: dict[Direction, Message | None] = field(default_factory=lambda: {d: None for d in Direction})
    parked: dict[Direction, Token | None] = field(default_factory=lambda: {d: None for d in Direction})
    _sent_at: dict[Direction, float] = field(default_factory=dict)
    _first_sent: dict[int, float] = field(default_factory=dict)  # msg_id -> when first sent
    _retry: deque[tuple[int, int, str]] = field(default_factory=deque)  # sent, not back delivered: again
    _delivered_ids: set[tuple[int, int]] = field(default_factory=set)
    _absent_since: dict[int, float] = field(default_factory=dict)  # destination -> first undelivered return
    _injected: int = 0
    _proposed_at: float = 0.0
    _queue: _Queue = field(init=False)
    _finalize_sent: bool = False
    _finalize_frame: Finalize | None = None  # the command this node sent or forwarded, to repeat on a new link
    _probe_sent: bool = False
    _unsent: int = 0
    _final_sent: int = 0
    _members: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.ring = tuple(self.ring)
        if self.node_id not in self.ring:
            raise LocalProtocolError(f"node {self.node_id} is not in the ring")
        self._members = frozenset(self.ring)
        if self.to_send is None:
            self.to_send = len(self.messages) if hasattr(self.messages, "__len__") else 0
        self.to_send += self.sent  # sent by earlier runs (the journal's returns), no longer in messages
        self._queue = _Queue(self.messages)

    @property
    def is_leader(self) -> bool:
        """True for node 0, which finalizes (and injects the first tokens)."""
        return self.node_id == 0

    @property
    def keeps_rounds(self) -> bool:
        """True for the monitor of the current view: it counts rounds, clears ``busy``, parks or pauses."""
        return self.monitor == self.node_id

    @property
    def finalizing(self) -> bool:
        """True once the finalization command was sent (node 0) or seen (any node)."""
        return self._finalize_sent or self.finished

    def is_transit(self, frame: DataFrame) -> bool:
        """True for a frame that only passes through this node, which the node may repeat at once.

        As a Token Ring station repeats the frames of others and the token
        when it has nothing to send: a message neither from nor to this node,
        and a token arriving at a node (not node 0) that has no message to
        send and does not hold that token already. :meth:`receive` would only
        forward either (and count it), so the node may do that from the task
        that read it; why frames keep their order then is argued where that
        happens (:meth:`trionet.ring.node.RingNode._read_frames`).

        Raises:
            RemoteProtocolError: a message whose origin or destination, or a
                stop request whose origin, is not in the ring. The link that
                brought it treats this as a protocol error (it drops that
                connection); checking here costs two set lookups per hop.
        """
        kind = type(frame)
        if kind is Message:
            origin, destination = frame.origin, frame.destination
            if origin not in self._members or destination not in self._members:
                raise RemoteProtocolError(self._outsider(frame))
            return origin != self.node_id and destination != self.node_id
        if kind is StopRequest and frame.origin not in self._members:
            raise RemoteProtocolError(f"stop request from node {frame.origin}, which is not in the ring")
        if kind is Token:
            self.tokens_seen[frame.direction] += 1  # every frame comes here first: one count per token visit
            return (
                not self.is_leader
                and self.monitor != self.node_id
                and not self.finished
                and self.holding[frame.direction] is None
                and not self.has_pending()
            )
        return False

    def prefetch(self) -> None:
        """Read the next message of the file ahead (the node calls this after acting on a frame).

        So that reading and checking a line is not on the token's path: when
        the token comes, the message is ready.
        """
        self._queue.peek()

    def has_pending(self) -> bool:
        """True while this node has messages to send: from its file, or to send again."""
        return bool(self._retry) or self._queue.peek() is not None

    def status(self, epoch: int) -> StatusReply:
        """This node as ``trionet ring status`` shows it: tokens held (or parked), counters, messages left.

        Args:
            epoch: the ring epoch this node runs in.
        """
        holds = [self.holding[d] is not None or self.parked[d] is not None for d in Direction]
        waiting = max((self.to_send or 0) - self.sent, 0) + len(self._retry)
        return StatusReply(
            self.node_id, epoch, holds[0], holds[1], self.sent, self.delivered, waiting, self.undelivered
        )

    # --- inputs ---------------------------------------------------------------

    def start(self, now: float = 0.0) -> list[Action]:
        """Node 0 checks that the ring is closed: it proposes the first view (others: nothing).

        Its :class:`Probe` goes round clockwise; a link carries a frame only
        while it is up, so when the probe comes back every link of the ring
        has been established; node 0 then injects the tokens.
        """
        if self._probe_sent or not self.is_leader:
            return []
        self._probe_sent = True
        return self.propose(now)

    def note_epoch(self, epoch: int, ring: bool = False) -> None:
        """An epoch was seen (a greeting, a frame): the next proposal must be above it.

        ``ring``: it proves a ring has existed (a token of it, or a peer's
        greeting, which names an epoch only once its node saw a ring).
        """
        if epoch > self.max_epoch:
            self.max_epoch = epoch
        if ring and epoch >= 1:
            self.ring_seen = True

    @property
    def announced_epoch(self) -> int:
        """The epoch this node's greetings carry: the highest seen, once it has seen a ring (else 0).

        0 again once it has finished: the ring it vouched for is over, and a
        node restarted after the end that reaches it must not take it for a
        live ring (it would close a ring of its own around the nodes gone).
        """
        return self.max_epoch if self.ring_seen and not self.finished else 0

    def propose(self, now: float = 0.0) -> list[Action]:
        """Start a new view ``(highest epoch seen + 1, this node)``: adopt it, send its probe clockwise.

        The node layer calls this when a link of this node was reset (a new
        or restarted neighbour) once a ring has existed; node 0 at the start.
        """
        if self.finalizing:
            return []  # the ring is ending: no new view (its tokens would never be parked)
        epoch = self.next_epoch()
        self._proposed_at = now
        actions = self._adopt(epoch, self.node_id)
        self._note("propose", Direction.CW, epoch)
        return actions + [Send(Direction.CW, Probe(self.node_id), epoch)]

    def probe_overdue(self, now: float) -> bool:
        """True when this node's own view has waited ``probe_timeout`` for its probe: propose again."""
        return (
            self.monitor == self.node_id
            and self._injected != self.epoch
            and not self.finalizing
            and now - self._proposed_at >= self.probe_timeout
        )

    def next_epoch(self) -> int:
        """The epoch this node would propose: the first above every epoch seen that is *its own*.

        Epochs are dealt out by place in the ring file: the node at place
        ``r`` (0-based) of ``n`` proposes only epochs ``k * n + r + 1``. So two
        nodes never propose the same epoch, and an epoch names one view
        (one monitor) even when a partition lets each side close its own ring.
        """
        n, r = len(self.ring), self.ring.index(self.node_id) + 1
        epoch = (self.max_epoch // n) * n + r
        return epoch if epoch > self.max_epoch else epoch + n

    def _adopt(self, epoch: int, monitor: int) -> list[Action]:
        """Enter view ``(epoch, monitor)``: forget the tokens, take back the messages in flight."""
        self.note_epoch(epoch)
        old = self.epoch
        self.epoch, self.monitor = epoch, monitor
        for d in Direction:
            self.holding[d] = None
            self.parked[d] = None
            msg = self.in_flight[d]
            if msg is not None:
                self.in_flight[d] = None
                self._sent_at.pop(d, None)
                self._retry.appendleft((msg.msg_id, msg.destination, msg.text))
        self._note("view", Direction.CW, (epoch, monitor, old))
        return []

    def _on_probe(self, probe: Probe, epoch: int, now: float) -> list[Action]:
        self.note_epoch(epoch)
        if self.finalizing:
            return []
        mine = (self.epoch, -(self.monitor if self.monitor is not None else 1 << 33))
        theirs = (epoch, -probe.monitor)
        if theirs > mine:
            self._adopt(epoch, probe.monitor)
            if self.is_leader and self._probe_sent:
                # Node 0 finalizes, so it keeps the rounds: it takes the monitor's part.
                return self.propose(now)
            return [Send(Direction.CW, probe, epoch)]
        if theirs == mine and probe.monitor == self.node_id and self._injected != epoch:
            self._injected = epoch
            return self._inject(now)
        self._note("drop-probe", Direction.CW, (epoch, probe.monitor))
        return []

    def _inject(self, now: float) -> list[Action]:
        first = not self.started
        self.started = True
        self.ring_seen = True
        if self.stopping and first:
            return self._finalize()
        actions: list[Action] = []
        for direction in Direction:
            self._note("inject", direction, self.epoch)
            self._note("token-in", direction)
            actions += self._visit(Token(direction), now)
        return actions

    def request_stop(self, now: float = 0.0) -> list[Action]:
        """Finalize gracefully: node 0 parks each token as it comes back; others ask node 0."""
        if self.finished or self.stopping:
            return []
        if not self.is_leader:
            return [Send(Direction.CW, StopRequest(self.node_id), self.epoch)]
        self.stopping = True
        if not self.started:
            return []
        actions: list[Action] = []
        for direction in Direction:
            token = self.holding[direction]
            if token is not None and self.in_flight[direction] is None:
                actions += self._park(token)
        return actions + self._maybe_finalize()

    def receive(self, frame: DataFrame, now: float = 0.0, epoch: int | None = None) -> list[Action]:
        """Handle one data frame that arrived from a neighbour, sent in ring epoch ``epoch`` (None: this node's).

        A token or message of another epoch than this node's is dropped
        (counted in :attr:`stale`): it belongs to a view that is over.
        """
        if epoch is not None and epoch != self.epoch:
            if type(frame) is Probe:
                return self._on_probe(frame, epoch, now)
            if type(frame) in (Token, Message):
                self.note_epoch(epoch, ring=True)
                self.stale += 1
                self._note("stale", frame.direction, frame)
                return []
        if isinstance(frame, Message):
            return self._on_message(frame, now)
        if isinstance(frame, Token):
            return self._on_token(frame, now)
        if isinstance(frame, Finalize):
            return self._on_finalize(frame)
        if isinstance(frame, StopRequest):
            if frame.origin not in self._members:
                raise RemoteProtocolError(f"stop request from node {frame.origin}, which is not in the ring")
            if self.is_leader:
                return self.request_stop(now)
            if frame.origin == self.node_id:
                return []  # it went round without meeting node 0 (down): nobody can finalize now
            return [Send(Direction.CW, frame, self.epoch)]
        if isinstance(frame, Probe):
            return self._on_probe(frame, self.epoch if epoch is None else epoch, now)
        raise LocalProtocolError(f"not a data frame: {frame!r}")

    # --- tokens -----------------------------------------------------------------

    def _on_token(self, token: Token, now: float) -> list[Action]:
        d = token.direction
        if self.holding[d] is not None or self.parked[d] is not None:
            raise RemoteProtocolError(f"a second {d.label} token arrived at node {self.node_id}")
        if self.finished:
            raise RemoteProtocolError(f"{d.label} token after finalization")
        self._note("token-in", d)
        self.ring_seen = True
        if self.keeps_rounds:
            # The token is back at the monitor: one round is complete.
            if self.is_leader and (self.stopping or not token.busy):
                return self._park(token) + self._maybe_finalize()
            clean = not token.busy
            token = Token(d, token.round + 1, busy=False)
            if clean and not self.has_pending():
                # Not node 0: nobody may finalize; keep the idle ring from spinning.
                return self._pass(token, self.idle_pause)
        return self._visit(token, now)

    def _visit(self, token: Token, now: float) -> list[Action]:
        d = token.direction
        if not (self.is_leader and self.stopping) and self.has_pending():
            if self._retry:
                msg_id, dest, text = self._retry.popleft()
                self.resent += 1
            else:
                item = self._queue.pop()
                self.sent += 1
                if len(item) == 3:  # numbered: the id is stable across restarts (its line number)
                    msg_id, dest, text = item
                else:
                    (dest, text), msg_id = item, self.sent
                self._first_sent[msg_id] = now
            msg = Message(d, self.node_id, dest, msg_id, text)
            self.holding[d] = Token(d, token.round, True)
            self.in_flight[d] = msg
            self._sent_at[d] = now
            self._note("send", d, msg)
            return [Send(d, msg, self.epoch)]
        # (Frames are built directly, not with dataclasses.replace: this is
        # the per-hop path, and replace() costs several times more.)
        return self._pass(Token(d, token.round, token.busy or self.has_pending()))

    def _pass(self, token: Token, pause: float = 0.0) -> list[Action]:
        d = token.direction
        self.holding[d] = None
        if self.is_leader and self.stopping and self.keeps_rounds:
            return self._park(token) + self._maybe_finalize()
        self._note("token-out", d)
        return [Send(d, token, self.epoch, pause)]

    def _park(self, token: Token) -> list[Action]:
        self.holding[token.direction] = None
        self.parked[token.direction] = token
        self._note("token-park", token.direction)
        return []

    def _maybe_finalize(self) -> list[Action]:
        if self._finalize_sent or any(self.parked[d] is None for d in Direction):
            return []
        return self._finalize()

    def _final_counts(self) -> tuple[int, int]:
        """``(sent, never sent)`` at the end: each message of the file counted once.

        A message waiting to be sent again (taken back by a new view, or
        back undelivered) when the ring ends went out at least once: it
        counts as sent, not as never sent (before, it was in both, and
        ``sent + unsent`` exceeded the file).
        """
        return self.sent, self._queue.drain()

    def _finalize(self) -> list[Action]:
        self._finalize_sent = True
        sent, unsent = self._final_counts()
        fin = Finalize(self.stopping, sent, self.delivered, unsent, 1)
        self._final_sent, self._unsent = sent, unsent
        self._finalize_frame = fin
        self._note("finalize", Direction.CW)
        return [Send(Direction.CW, fin, self.epoch)]

    # --- messages ---------------------------------------------------------------

    def _outsider(self, msg: Message) -> str:
        return f"message {msg.uid} to node {msg.destination} names a node that is not in the ring"

    def _on_message(self, msg: Message, now: float) -> list[Action]:
        d = msg.direction
        if msg.origin not in self._members or msg.destination not in self._members:
            raise RemoteProtocolError(self._outsider(msg))
        self.ring_seen = True  # messages exist only once a view's tokens were injected
        mine = self.in_flight[d]
        from_here = msg.origin == self.node_id
        if from_here and (mine is None or mine[:5] != msg[:5]):
            # Not the message this node has in flight: never sent by it, or
            # already back. Dropped here, at its origin, it cannot go round again.
            self.dropped += 1
            self._note("drop", d, msg)
            return []
        actions: list[Action] = []
        if msg.destination == self.node_id and not msg.delivered:
            msg = Message(d, msg.origin, msg.destination, msg.msg_id, msg.text, True)
            key = (msg.origin, msg.msg_id)
            if key in self._delivered_ids or (
                self.delivered_before is not None and self.delivered_before(msg.origin, msg.msg_id)
            ):
                self.already_delivered += 1
                self._note("skip", d, msg)
            else:
                self._delivered_ids.add(key)
                self.delivered += 1
                self._note("deliver", d, msg)
                actions.append(Deliver(msg))
        if not from_here:
            self.forwarded += 1
            self._note("forward", d, msg)
            actions.append(Send(d, msg, self.epoch))
            return actions
        self.in_flight[d] = None
        sent_at = self._sent_at.pop(d)
        if msg.delivered:
            self.returned += 1
            self._absent_since.pop(msg.destination, None)
            self._first_sent.pop(msg.msg_id, None)
            self._note("return", d, msg)
            actions.append(Returned(msg, now - sent_at))
        elif now - min(
            self._first_sent.get(msg.msg_id, now), self._absent_since.setdefault(msg.destination, now)
        ) >= self.undeliverable_after:
            # (Counted from when this message was first sent, or its destination
            # was first missed, whichever is earlier: one wait per dead node, not per message.)
            self._first_sent.pop(msg.msg_id, None)
            self.undelivered += 1
            self._note("undeliverable", d, msg)
            reason = (
                f"node {msg.destination} was not in the ring for {self.undeliverable_after:g}s"
                if msg.destination != self.node_id else "never came back delivered"
            )
            actions.append(Undeliverable(msg, reason))
        else:
            # Its destination is not in the ring (down, or not back yet): again on a later visit.
            self._retry.append((msg.msg_id, msg.destination, msg.text))
            self._note("retry", d, msg)
            token = self.holding[d]
            # Hold the token a moment: until its destination is back the ring would resend it at full speed.
            return actions + self._pass(Token(d, token.round, True), self.idle_pause)
        token = self.holding[d]
        assert token is not None  # held since the message was sent
        return actions + self._pass(token)

    # --- finalization -------------------------------------------------------------

    def link_reset(self, direction: Direction) -> list[Action]:
        """The link that carries ``direction`` away from this node started again (a new or restarted neighbour).

        While the ring is ending, the neighbour may lack the finalization
        command: the copy in flight on the old link was dropped with it, or
        the neighbour was down when the command passed. So a node that has
        sent or forwarded the command sends it again on a new link to its
        successor, and a node that has finished sends it back on a new link
        to its predecessor (a node restarted after the command passed it).
        A node that has the command already drops the copy (:meth:`_on_finalize`).
        Otherwise a reset link makes a new view (:meth:`propose`).
        """
        fin = self._finalize_frame
        if fin is None or (direction is Direction.CCW and not self.finished):
            return []
        self._note("refinalize", direction, fin)
        return [Send(direction, fin, self.epoch)]

    def _on_finalize(self, fin: Finalize) -> list[Action]:
        if self.finished:
            # A copy sent again over a new link (link_reset): the ring has ended here already.
            self._note("drop-finalize", Direction.CW, fin)
            return []
        self.finished = True
        if self.is_leader:
            summary = Summary(self.node_id, self._final_sent, self.delivered, self.forwarded, self._unsent, fin.requested, fin)
            self._note("finalize", Direction.CW, fin)
            if self._finalize_frame is None:  # restarted after sending it: its first life's command came back
                self._finalize_frame = fin
            return [Finished(summary)]
        sent, unsent = self._final_counts()
        total = Finalize(
            fin.requested, fin.sent + sent, fin.delivered + self.delivered, fin.unsent + unsent, fin.nodes + 1
        )
        self._note("finalize", Direction.CW, total)
        self._finalize_frame = total
        summary = Summary(self.node_id, sent, self.delivered, self.forwarded, unsent, fin.requested)
        return [Send(Direction.CW, total, self.epoch), Finished(summary)]

    def _note(self, event: str, direction: Direction, detail: object = None) -> None:
        if self.observer is not None:
            self.observer(event, self.node_id, (direction, detail))
