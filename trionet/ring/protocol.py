"""Sans-IO core of the ring: the frame codec, the reliable link state and the node state machine.

Nothing here awaits, opens a socket or reads a clock: the trio layer
(:mod:`trionet.ring.node`) and the simulation harness (:mod:`trionet.ring.sim`)
feed bytes and frames in, pass the current time where it matters, and carry
out the actions that come back. ``docs/protocol/ring.md`` describes every
frame and every exchange.

Three layers, each one class:

- the codec (:func:`encode_frame`, :class:`FrameDecoder`): length-prefixed
  (4 bytes, :class:`~trionet.framing.LengthPrefixFramer`), versioned binary
  frames;
- :class:`LinkState`: one direction-pair link between neighbours, made
  reliable across reconnects with per-link sequence numbers, cumulative
  acknowledgements, resending and de-duplication;
- :class:`NodeCore`: the token logic of one node, for both directions.

The node core's rules, in one place:

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
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from trionet.framing import LengthPrefixFramer, Oversized, TruncatedFrame

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "NONCE_BYTES",
    "PROOF_BYTES",
    "Ack",
    "Auth",
    "Bye",
    "Deliver",
    "Direction",
    "Finalize",
    "Finished",
    "FrameDecoder",
    "Hello",
    "LinkState",
    "LocalProtocolError",
    "Message",
    "NodeCore",
    "Probe",
    "Received",
    "Reject",
    "RemoteProtocolError",
    "Returned",
    "Role",
    "Send",
    "Stop",
    "StopRequest",
    "Summary",
    "Token",
    "decode_frame",
    "encode_frame",
]

PROTOCOL_VERSION = 2
"""Version 2 added the nonce and ``secured`` flag to ``HELLO`` and the ``AUTH`` frame."""
NONCE_BYTES = 32
"""The random challenge each side puts in its ``HELLO``."""
PROOF_BYTES = 32
"""An HMAC-SHA256 proof, in ``AUTH`` (:mod:`trionet.ring.handshake`)."""
MAX_FRAME = 1 << 20
"""The largest frame payload accepted (message texts are limited far below it)."""


class RemoteProtocolError(Exception):
    """The peer sent bytes that are not a valid frame, or broke the link rules; drop the connection."""


class LocalProtocolError(Exception):
    """This node was asked to do something the protocol forbids (a bug in the caller)."""


class Direction(enum.IntEnum):
    """Which way a token or message travels: clockwise follows the ring file's order."""

    CW = 0
    CCW = 1

    @property
    def label(self) -> str:
        """``cw`` or ``ccw``, as in the deliveries file."""
        return "cw" if self is Direction.CW else "ccw"


class Role(enum.IntEnum):
    """What the connecting side is, in a :class:`Hello`."""

    PREDECESSOR = 0
    """The dialer is the acceptor's previous node; the link carries cw one way and ccw the other."""
    SUCCESSOR = 1
    """The acceptor's answer: it is the dialer's next node."""
    CONTROL = 2
    """A ``trionet ring stop`` client; a :class:`Stop` frame follows."""


# --- frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every connection, from both sides.

    ``recv_next`` is the next link sequence number the sender expects from its
    peer: everything below it arrived, so the peer drops those frames and
    resends the rest. ``secured`` says whether the sender has the ring's
    shared secret; ``nonce`` is its fresh random challenge, which the peer's
    proof must cover (:mod:`trionet.ring.handshake`).
    """

    node_id: int
    role: Role
    ring: int
    recv_next: int
    secured: bool = False
    nonce: bytes = bytes(NONCE_BYTES)

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_BYTES:
            raise LocalProtocolError(f"a nonce is {NONCE_BYTES} bytes, not {len(self.nonce)}")


@dataclass(frozen=True, slots=True)
class Auth:
    """A side's handshake proof: HMAC-SHA256 over both greetings (:func:`~trionet.ring.handshake.make_proof`)."""

    proof: bytes

    def __post_init__(self) -> None:
        if len(self.proof) != PROOF_BYTES:
            raise LocalProtocolError(f"a proof is {PROOF_BYTES} bytes, not {len(self.proof)}")


@dataclass(frozen=True, slots=True)
class Ack:
    """Every link frame with a sequence number up to ``ack`` arrived."""

    ack: int


@dataclass(frozen=True, slots=True)
class Reject:
    """The handshake failed; ``reason`` says why and the sender closes."""

    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    """The sender is done with this link (it has finished); the receiver need not wait for it."""


@dataclass(frozen=True, slots=True)
class Stop:
    """From ``trionet ring stop`` to node 0: finalize now (gracefully)."""


# The frames and actions of every hop (Token, Message, Received, Send) are
# named tuples rather than frozen dataclasses: as immutable, but built about
# three times faster, which shows on the per-hop path (docs/benchmarks.md).


class Token(NamedTuple):
    """The right to send in one direction; ``round`` counts trips through node 0."""

    direction: Direction
    round: int = 0
    busy: bool = False


class Message(NamedTuple):
    """A message going round the ring; ``(origin, msg_id)`` is unique in the ring."""

    direction: Direction
    origin: int
    destination: int
    msg_id: int
    text: str
    delivered: bool = False

    @property
    def uid(self) -> str:
        """The ring-wide message id, ``ORIGIN-N``."""
        return f"{self.origin}-{self.msg_id}"


@dataclass(frozen=True, slots=True)
class Finalize:
    """Node 0's finalization command, with ring-wide totals added by each node it passed."""

    requested: bool = False
    sent: int = 0
    delivered: int = 0
    unsent: int = 0
    nodes: int = 0


@dataclass(frozen=True, slots=True)
class StopRequest:
    """A stop asked at another node, travelling clockwise to node 0."""

    origin: int


LinkFrame = Hello | Auth | Ack | Reject | Stop | Bye


@dataclass(frozen=True, slots=True)
class Probe:
    """Node 0's ring-closure check: each node forwards it clockwise once both its links are up."""


DataFrame = Token | Message | Finalize | StopRequest | Probe

_HEADER = struct.Struct(">BBIQ")  # version, type, epoch, link sequence (0: not a data frame)
_T_HELLO, _T_ACK, _T_REJECT, _T_STOP, _T_TOKEN, _T_MESSAGE, _T_FINALIZE, _T_STOPREQ, _T_PROBE, _T_BYE, _T_AUTH = range(
    1, 12
)
_HELLO = struct.Struct(f">IBIQB{NONCE_BYTES}s")
_AUTH = struct.Struct(f">{PROOF_BYTES}s")
_ACK = struct.Struct(">Q")
_TOKEN = struct.Struct(">BIB")
_MESSAGE = struct.Struct(">BIIQB")
_FINALIZE = struct.Struct(">BQQQI")
_STOPREQ = struct.Struct(">I")
_MESSAGE_PAYLOAD = struct.Struct(">" + _HEADER.format[1:] + _MESSAGE.format[1:])  # header + fields
_MESSAGE_FRAME = struct.Struct(">I" + _MESSAGE_PAYLOAD.format[1:])  # length prefix + the above
_TOKEN_FRAME = struct.Struct(">I" + _HEADER.format[1:] + _TOKEN.format[1:])
_DATA_KINDS = frozenset((_T_TOKEN, _T_MESSAGE, _T_FINALIZE, _T_STOPREQ, _T_PROBE))


class Received(NamedTuple):
    """A decoded frame: ``seq`` is its link sequence number (0 for link frames)."""

    frame: LinkFrame | DataFrame
    seq: int = 0
    epoch: int = 0


def encode_frame(frame: LinkFrame | DataFrame, *, seq: int = 0, epoch: int = 1) -> bytes:
    """Return the wire bytes of ``frame``, length prefix included.

    Data frames (token, message, finalize, stop request) need a link sequence
    number ``seq`` >= 1; link frames have none.

    Raises:
        LocalProtocolError: a data frame without a sequence number, or the reverse.
    """
    # Messages and tokens, the per-hop frames, in one pack each (length
    # prefix, header, fields); a data frame without a sequence number falls
    # through to the check below.
    kind = type(frame)
    if kind is Message and seq > 0:
        text = frame.text.encode("utf-8")
        head = _MESSAGE_FRAME.pack(
            _MESSAGE_FRAME.size - 4 + len(text), PROTOCOL_VERSION, _T_MESSAGE, epoch, seq,
            frame.direction, frame.origin, frame.destination, frame.msg_id, frame.delivered,
        )
        return head + text
    if kind is Token and seq > 0:
        return _TOKEN_FRAME.pack(
            _TOKEN_FRAME.size - 4, PROTOCOL_VERSION, _T_TOKEN, epoch, seq, frame.direction, frame.round, frame.busy
        )
    if isinstance(frame, (Token, Message, Finalize, StopRequest, Probe)) != (seq > 0):
        raise LocalProtocolError(f"{type(frame).__name__} with link sequence {seq}")
    if isinstance(frame, Ack):
        kind, body = _T_ACK, _ACK.pack(frame.ack)
    elif isinstance(frame, Hello):
        kind = _T_HELLO
        body = _HELLO.pack(frame.node_id, frame.role, frame.ring, frame.recv_next, frame.secured, frame.nonce)
    elif isinstance(frame, Auth):
        kind, body = _T_AUTH, _AUTH.pack(frame.proof)
    elif isinstance(frame, Finalize):
        body = _FINALIZE.pack(frame.requested, frame.sent, frame.delivered, frame.unsent, frame.nodes)
        kind = _T_FINALIZE
    elif isinstance(frame, StopRequest):
        kind, body = _T_STOPREQ, _STOPREQ.pack(frame.origin)
    elif isinstance(frame, Probe):
        kind, body = _T_PROBE, b""
    elif isinstance(frame, Reject):
        kind, body = _T_REJECT, frame.reason.encode("utf-8")[:1000]
    elif isinstance(frame, Stop):
        kind, body = _T_STOP, b""
    elif isinstance(frame, Bye):
        kind, body = _T_BYE, b""
    else:
        raise LocalProtocolError(f"not a ring frame: {frame!r}")
    payload = _HEADER.pack(PROTOCOL_VERSION, kind, epoch, seq) + body
    return len(payload).to_bytes(4, "big") + payload


def decode_frame(payload: bytes) -> Received:
    """Decode one frame payload (without its length prefix).

    Raises:
        RemoteProtocolError: wrong version, unknown type, wrong length, or a
            field out of range.
    """
    if len(payload) < _HEADER.size:
        raise RemoteProtocolError(f"frame of {len(payload)} bytes is shorter than the header")
    version, kind, epoch, seq = _HEADER.unpack_from(payload)
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"protocol version {version}, this node speaks {PROTOCOL_VERSION}")
    if (kind in _DATA_KINDS) != (seq > 0):
        raise RemoteProtocolError(f"frame type {kind} with link sequence {seq}")
    try:
        # Fields are unpacked in place (no copy of the body), the per-hop types first.
        if kind == _T_MESSAGE:
            direction, origin, dest, msg_id, delivered = _MESSAGE.unpack_from(payload, _HEADER.size)
            text = payload[_MESSAGE_PAYLOAD.size :].decode("utf-8")
            frame = Message(_direction(direction), origin, dest, msg_id, text, _flag(delivered))
        elif kind == _T_TOKEN:
            direction, rnd, busy = _exact(_TOKEN, payload)
            frame = Token(_direction(direction), rnd, _flag(busy))
        elif kind == _T_ACK:
            (ack,) = _exact(_ACK, payload)
            frame = Ack(ack)
        elif kind == _T_HELLO:
            node_id, role, ring, recv_next, secured, nonce = _exact(_HELLO, payload)
            if recv_next < 1:
                raise ValueError("recv_next must be at least 1")
            frame = Hello(node_id, Role(role), ring, recv_next, _flag(secured), nonce)
        elif kind == _T_AUTH:
            (proof,) = _exact(_AUTH, payload)
            frame = Auth(proof)
        elif kind == _T_FINALIZE:
            requested, sent, delivered, unsent, nodes = _exact(_FINALIZE, payload)
            frame = Finalize(_flag(requested), sent, delivered, unsent, nodes)
        elif kind == _T_STOPREQ:
            (origin,) = _exact(_STOPREQ, payload)
            frame = StopRequest(origin)
        elif kind == _T_REJECT:
            frame = Reject(payload[_HEADER.size :].decode("utf-8", "replace"))
        elif kind in (_T_STOP, _T_PROBE, _T_BYE):
            if len(payload) != _HEADER.size:
                raise ValueError("frame with a body")
            frame = {_T_STOP: Stop, _T_PROBE: Probe, _T_BYE: Bye}[kind]()
        else:
            raise RemoteProtocolError(f"unknown frame type {kind}")
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise RemoteProtocolError(f"bad frame of type {kind}: {exc}") from None
    return Received(frame, seq, epoch)


def _exact(layout: struct.Struct, payload: bytes) -> tuple:
    """Unpack the body after the header, which must be exactly ``layout``'s size."""
    if len(payload) != _HEADER.size + layout.size:
        raise ValueError(f"body of {len(payload) - _HEADER.size} bytes, expected {layout.size}")
    return layout.unpack_from(payload, _HEADER.size)


_DIRECTIONS = tuple(Direction)


def _direction(value: int) -> Direction:
    # A tuple lookup: Direction(value) goes through Enum.__new__ on every frame.
    if value > 1:
        raise ValueError(f"direction byte {value}")
    return _DIRECTIONS[value]


def _flag(value: int) -> bool:
    if value not in (0, 1):
        raise ValueError(f"flag byte {value}")
    return bool(value)


class FrameDecoder:
    """Bytes in, :class:`Received` frames out (h11's shape; works with ``serving.receive_event``).

    Raises:
        RemoteProtocolError: from :meth:`next_event`, for an invalid or
            oversized frame, or a connection closed mid-frame.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._framer = LengthPrefixFramer(4, max_frame)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` when it closed its side."""
        self._framer.receive_data(data)

    def next_event(self) -> Received | object:
        """Return the next :class:`Received`, :data:`NEED_DATA` or :data:`EOF`."""
        event = self._framer.next_payload()
        if type(event) is bytes:
            return decode_frame(event)
        if isinstance(event, Oversized):
            raise RemoteProtocolError(f"frame longer than {event.limit} bytes")
        if isinstance(event, TruncatedFrame):
            raise RemoteProtocolError(f"connection closed in the middle of a frame ({event.received} bytes)")
        return event


# --- the reliable link --------------------------------------------------------


class LinkState:
    """One end of a link between neighbours, kept across TCP reconnects.

    Outgoing data frames get consecutive sequence numbers and stay in
    :attr:`unacked` until the peer acknowledges them; after a reconnect,
    :meth:`on_connect` returns what must be sent again. Incoming data frames
    are checked with :meth:`classify`: a number already seen is a duplicate
    (the peer resent it because our ack was lost) and is dropped.

    Args:
        epoch: the ring epoch written in every frame.
    """

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch
        self.next_seq = 1
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.recv_next = 1
        self.resent = 0
        self.duplicates = 0

    def wrap(self, frame: DataFrame) -> bytes:
        """Number ``frame``, keep it until acknowledged, and return its bytes."""
        seq = self.next_seq
        self.next_seq += 1
        data = encode_frame(frame, seq=seq, epoch=self.epoch)
        self.unacked.append((seq, data))
        return data

    def on_ack(self, ack: int) -> None:
        """The peer has every frame up to ``ack``.

        Raises:
            RemoteProtocolError: ``ack`` names a frame never sent.
        """
        if ack >= self.next_seq:
            raise RemoteProtocolError(f"ack {ack} for a frame never sent (next is {self.next_seq})")
        while self.unacked and self.unacked[0][0] <= ack:
            self.unacked.popleft()

    def on_connect(self, peer_recv_next: int) -> bytes:
        """A new connection is up and the peer expects ``peer_recv_next``: return the bytes to resend."""
        self.on_ack(peer_recv_next - 1)
        if self.unacked and self.unacked[0][0] != peer_recv_next:
            raise RemoteProtocolError(
                f"peer expects frame {peer_recv_next} but the oldest unacknowledged one is {self.unacked[0][0]}"
            )
        self.resent += len(self.unacked)
        return b"".join(data for _, data in self.unacked)

    def classify(self, seq: int) -> bool:
        """Return True for the next expected frame, False for a duplicate.

        Raises:
            RemoteProtocolError: a gap: a later frame before an earlier one.
        """
        if seq < self.recv_next:
            self.duplicates += 1
            return False
        if seq > self.recv_next:
            raise RemoteProtocolError(f"frame {seq} arrived before frame {self.recv_next}")
        return True

    def mark_received(self, seq: int) -> None:
        """Frame ``seq`` (just classified as new) was handed to the node."""
        if seq != self.recv_next:
            raise LocalProtocolError(f"marking frame {seq} while expecting {self.recv_next}")
        self.recv_next += 1

    @property
    def ack(self) -> int:
        """The cumulative acknowledgement to send: the last frame received in order."""
        return self.recv_next - 1


# --- the node -------------------------------------------------------------------


class Send(NamedTuple):
    """Send ``frame`` to the next node in ``direction``."""

    direction: Direction
    frame: DataFrame


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


Action = Send | Deliver | Returned | Finished


class _Queue:
    """The node's message file as a one-item-lookahead stream."""

    def __init__(self, messages: Iterable[tuple[int, str]]) -> None:
        self._it: Iterator[tuple[int, str]] = iter(messages)
        self._head: tuple[int, str] | None = None
        self._done = False

    def peek(self) -> tuple[int, str] | None:
        if self._head is None and not self._done:
            self._head = next(self._it, None)
            self._done = self._head is None
        return self._head

    def pop(self) -> tuple[int, str]:
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
        messages: ``(destination, text)`` pairs, consumed one per token visit.
        observer: called as ``observer(event, node_id, detail)`` at each token
            and message step; the simulation checks its invariants with it,
            the demo draws with it. Events: ``token-in``, ``token-out``,
            ``token-park``, ``send``, ``forward``, ``deliver``, ``return``,
            ``drop``, ``finalize``.

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
    messages: Iterable[tuple[int, str]] = ()
    observer: Callable[[str, int, object], None] | None = None
    sent: int = 0
    delivered: int = 0
    forwarded: int = 0
    returned: int = 0
    dropped: int = 0
    started: bool = False
    finished: bool = False
    stopping: bool = False
    holding: dict[Direction, Token | None] = field(default_factory=lambda: {d: None for d in Direction})
    in_flight: dict[Direction, Message | None] = field(default_factory=lambda: {d: None for d in Direction})
    parked: dict[Direction, Token | None] = field(default_factory=lambda: {d: None for d in Direction})
    _sent_at: dict[Direction, float] = field(default_factory=dict)
    _queue: _Queue = field(init=False)
    _finalize_sent: bool = False
    _probe_sent: bool = False
    _unsent: int = 0
    _members: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.ring = tuple(self.ring)
        if self.node_id not in self.ring:
            raise LocalProtocolError(f"node {self.node_id} is not in the ring")
        self._members = frozenset(self.ring)
        self._queue = _Queue(self.messages)

    @property
    def is_leader(self) -> bool:
        """True for node 0, which injects the tokens and finalizes."""
        return self.node_id == 0

    @property
    def finalizing(self) -> bool:
        """True once the finalization command was sent (node 0) or seen (any node)."""
        return self._finalize_sent or self.finished

    def is_transit(self, frame: DataFrame) -> bool:
        """True for a frame that only passes through this node, which the node repeats at once.

        As a Token Ring station repeats the frames of others and the token
        when it has nothing to send: a message neither from nor to this node,
        and a token arriving at a node (not node 0) that has no message to
        send and does not hold that token already. :meth:`receive` would only
        forward either (and count it), so the node may do that from the link
        that brought it rather than through a token task.

        Order is kept: on one link in one direction, a transit message never
        has that direction's token near it (its origin holds it), a repeated
        token never has a message of its direction near it (there is none in
        flight), and ``Probe`` and ``Finalize`` travel only when no message or
        token does; only a ``StopRequest`` can be overtaken, which is harmless.

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
            return (
                not self.is_leader
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
        """True while this node's message file has messages not yet sent."""
        return self._queue.peek() is not None

    # --- inputs ---------------------------------------------------------------

    def start(self, now: float = 0.0) -> list[Action]:
        """Node 0 checks that the ring is closed: it sends a :class:`Probe` clockwise (others: nothing).

        A link carries a frame only while it is up, so when the probe comes
        back every link of the ring has been established; node 0 then
        injects the tokens.
        """
        if self._probe_sent or not self.is_leader:
            return []
        self._probe_sent = True
        return [Send(Direction.CW, Probe())]

    def _inject(self, now: float) -> list[Action]:
        if self.started:
            raise RemoteProtocolError("the ring-closure probe came back twice")
        self.started = True
        if self.stopping:
            return self._finalize()
        actions: list[Action] = []
        for direction in Direction:
            self._note("token-in", direction)
            actions += self._visit(Token(direction), now)
        return actions

    def request_stop(self, now: float = 0.0) -> list[Action]:
        """Finalize gracefully: node 0 parks each token as it comes back; others ask node 0."""
        if self.finished or self.stopping:
            return []
        if not self.is_leader:
            return [Send(Direction.CW, StopRequest(self.node_id))]
        self.stopping = True
        if not self.started:
            return []
        actions: list[Action] = []
        for direction in Direction:
            token = self.holding[direction]
            if token is not None and self.in_flight[direction] is None:
                actions += self._park(token)
        return actions + self._maybe_finalize()

    def receive(self, frame: DataFrame, now: float = 0.0) -> list[Action]:
        """Handle one data frame that arrived from a neighbour."""
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
            return [Send(Direction.CW, frame)]
        if isinstance(frame, Probe):
            if self.is_leader:
                return self._inject(now)
            return [Send(Direction.CW, frame)]
        raise LocalProtocolError(f"not a data frame: {frame!r}")

    # --- tokens -----------------------------------------------------------------

    def _on_token(self, token: Token, now: float) -> list[Action]:
        d = token.direction
        if self.holding[d] is not None or self.parked[d] is not None:
            raise RemoteProtocolError(f"a second {d.label} token arrived at node {self.node_id}")
        if self.finished:
            raise RemoteProtocolError(f"{d.label} token after finalization")
        self._note("token-in", d)
        if self.is_leader:
            # The token is back at node 0: one round is complete.
            if self.stopping or not token.busy:
                return self._park(token) + self._maybe_finalize()
            token = Token(d, token.round + 1, busy=False)
        return self._visit(token, now)

    def _visit(self, token: Token, now: float) -> list[Action]:
        d = token.direction
        if not (self.is_leader and self.stopping) and self.has_pending():
            dest, text = self._queue.pop()
            self.sent += 1
            msg = Message(d, self.node_id, dest, self.sent, text)
            self.holding[d] = Token(d, token.round, True)
            self.in_flight[d] = msg
            self._sent_at[d] = now
            self._note("send", d, msg)
            return [Send(d, msg)]
        # (Frames are built directly, not with dataclasses.replace: this is
        # the per-hop path, and replace() costs several times more.)
        return self._pass(Token(d, token.round, token.busy or self.has_pending()))

    def _pass(self, token: Token) -> list[Action]:
        d = token.direction
        self.holding[d] = None
        if self.is_leader and self.stopping:
            return self._park(token) + self._maybe_finalize()
        self._note("token-out", d)
        return [Send(d, token)]

    def _park(self, token: Token) -> list[Action]:
        self.holding[token.direction] = None
        self.parked[token.direction] = token
        self._note("token-park", token.direction)
        return []

    def _maybe_finalize(self) -> list[Action]:
        if self._finalize_sent or any(self.parked[d] is None for d in Direction):
            return []
        return self._finalize()

    def _finalize(self) -> list[Action]:
        self._finalize_sent = True
        unsent = self._queue.drain()
        fin = Finalize(self.stopping, self.sent, self.delivered, unsent, 1)
        self._unsent = unsent
        self._note("finalize", Direction.CW)
        return [Send(Direction.CW, fin)]

    # --- messages ---------------------------------------------------------------

    def _outsider(self, msg: Message) -> str:
        return f"message {msg.uid} to node {msg.destination} names a node that is not in the ring"

    def _on_message(self, msg: Message, now: float) -> list[Action]:
        d = msg.direction
        if msg.origin not in self._members or msg.destination not in self._members:
            raise RemoteProtocolError(self._outsider(msg))
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
            self.delivered += 1
            self._note("deliver", d, msg)
            actions.append(Deliver(msg))
        if not from_here:
            self.forwarded += 1
            self._note("forward", d, msg)
            actions.append(Send(d, msg))
            return actions
        self.in_flight[d] = None
        self.returned += 1
        self._note("return", d, msg)
        actions.append(Returned(msg, now - self._sent_at.pop(d)))
        token = self.holding[d]
        assert token is not None  # held since the message was sent
        return actions + self._pass(token)

    # --- finalization -------------------------------------------------------------

    def _on_finalize(self, fin: Finalize) -> list[Action]:
        if self.finished:
            raise RemoteProtocolError(f"a second finalization command at node {self.node_id}")
        self.finished = True
        if self.is_leader:
            summary = Summary(self.node_id, self.sent, self.delivered, self.forwarded, self._unsent, fin.requested, fin)
            self._note("finalize", Direction.CW, fin)
            return [Finished(summary)]
        unsent = self._queue.drain()
        total = Finalize(
            fin.requested, fin.sent + self.sent, fin.delivered + self.delivered, fin.unsent + unsent, fin.nodes + 1
        )
        self._note("finalize", Direction.CW, total)
        summary = Summary(self.node_id, self.sent, self.delivered, self.forwarded, unsent, fin.requested)
        return [Send(Direction.CW, total), Finished(summary)]

    def _note(self, event: str, direction: Direction, detail: object = None) -> None:
        if self.observer is not None:
            self.observer(event, self.node_id, (direction, detail))
