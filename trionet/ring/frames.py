"""The ring's frames and their codec: what each frame holds, and its bytes on the wire.

Every frame is length-prefixed (4 bytes: :func:`~trionet.framing.encode_length_prefixed`
and :class:`~trionet.framing.LengthPrefixFramer`), then versioned:
``version, type, epoch, link sequence`` and the type's fields
(``docs/protocol/ring.md`` describes each). :func:`encode_frame` builds the
bytes; :class:`FrameDecoder` turns bytes into :class:`Received` frames
(h11's shape: ``receive_data``, ``next_event``). Pure: no I/O, no clock.

The frames of every hop (:class:`Token`, :class:`Message`) are named tuples
and are packed and unpacked with one precomputed ``struct`` each: they are
on the per-hop path (``docs/benchmarks.md``).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

from trionet.framing import (
    LengthPrefixFramer,
    Oversized,
    TruncatedFrame,
    encode_length_prefixed,
)

__all__ = [
    "MAX_FRAME",
    "NONCE_BYTES",
    "PROOF_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Bye",
    "DataFrame",
    "Direction",
    "Finalize",
    "FrameDecoder",
    "Heartbeat",
    "Hello",
    "LinkFrame",
    "LocalProtocolError",
    "Message",
    "Probe",
    "Received",
    "Reject",
    "RemoteProtocolError",
    "Role",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "StopRequest",
    "Token",
    "decode_frame",
    "encode_frame",
]

PROTOCOL_VERSION = 3
"""Version 2 added the nonce and ``secured`` flag to ``HELLO`` and the ``AUTH`` frame; version 3 the
link sessions in ``HELLO``, the monitor in ``PROBE`` and ``HEARTBEAT`` (surviving crashes)."""
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
    """A ``trionet ring stop`` or ``status`` client; a :class:`Stop` or :class:`StatusRequest` follows."""


# --- frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every connection, from both sides.

    ``recv_next`` is the next link sequence number the sender expects from its
    peer: everything below it arrived, so the peer drops those frames and
    resends the rest. ``secured`` says whether the sender has the ring's
    shared secret; ``nonce`` is its fresh random challenge, which the peer's
    proof must cover (:mod:`trionet.ring.handshake`). ``session`` names the
    sender's link state, ``peer_session`` the peer's as last seen (0: never):
    the link resumes only when both match (:meth:`~trionet.ring.link.LinkState.resumes`).
    """

    node_id: int
    role: Role
    ring: int
    recv_next: int
    secured: bool = False
    nonce: bytes = bytes(NONCE_BYTES)
    session: int = 0
    peer_session: int = 0

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
class Heartbeat:
    """The sender is alive: sent on a link that has carried nothing for a while (failure detection)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """From ``trionet ring stop`` to node 0: finalize now (gracefully)."""


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """From ``trionet ring status`` to any node, after the handshake: describe yourself."""


@dataclass(frozen=True, slots=True)
class StatusReply:
    """A node's answer to :class:`StatusRequest`.

    ``holds_cw``/``holds_ccw``: the node holds (or, node 0, has parked) that
    direction's token; ``waiting``: messages of its file not sent yet;
    ``undelivered``: messages it knows were not delivered (always 0 until
    failure detection existed; now the messages it recorded as undeliverable).
    """

    node_id: int
    epoch: int
    holds_cw: bool
    holds_ccw: bool
    sent: int
    delivered: int
    waiting: int
    undelivered: int = 0


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


LinkFrame = Hello | Auth | Ack | Reject | Stop | Bye | StatusRequest | StatusReply | Heartbeat


@dataclass(frozen=True, slots=True)
class Probe:
    """A proposed view, going round clockwise: ``monitor`` proposed it, the frame's epoch is its epoch.

    When it comes back to its monitor the ring is closed under that view and
    the monitor injects the tokens (:class:`~trionet.ring.core.NodeCore`).
    """

    monitor: int = 0


DataFrame = Token | Message | Finalize | StopRequest | Probe

_PREFIX = 4  # bytes of the length prefix
_HEADER = struct.Struct(">BBIQ")  # version, type, epoch, link sequence (0: not a data frame)
(
    _T_HELLO, _T_ACK, _T_REJECT, _T_STOP, _T_TOKEN, _T_MESSAGE, _T_FINALIZE, _T_STOPREQ, _T_PROBE, _T_BYE, _T_AUTH,
    _T_STATUS, _T_STATUS_REPLY, _T_HEARTBEAT,
) = range(1, 15)
_HELLO = struct.Struct(f">IBIQBQQ{NONCE_BYTES}s")
_PROBE = struct.Struct(">I")
_AUTH = struct.Struct(f">{PROOF_BYTES}s")
_ACK = struct.Struct(">Q")
_TOKEN = struct.Struct(">BIB")
_MESSAGE = struct.Struct(">BIIQB")
_FINALIZE = struct.Struct(">BQQQI")
_STOPREQ = struct.Struct(">I")
_STATUS_REPLY = struct.Struct(">IIBQQQQ")  # node, epoch, tokens held (bit 0 cw, bit 1 ccw), sent, delivered, waiting, undelivered
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
    # Messages and tokens, the per-hop frames, in one pack each, the length
    # prefix included (the same bytes encode_length_prefixed would give, at a
    # third of the cost); a data frame without a sequence number falls
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
        body = _HELLO.pack(
            frame.node_id, frame.role, frame.ring, frame.recv_next, frame.secured, frame.session,
            frame.peer_session, frame.nonce,
        )
    elif isinstance(frame, Auth):
        kind, body = _T_AUTH, _AUTH.pack(frame.proof)
    elif isinstance(frame, Finalize):
        body = _FINALIZE.pack(frame.requested, frame.sent, frame.delivered, frame.unsent, frame.nodes)
        kind = _T_FINALIZE
    elif isinstance(frame, StopRequest):
        kind, body = _T_STOPREQ, _STOPREQ.pack(frame.origin)
    elif isinstance(frame, Probe):
        kind, body = _T_PROBE, _PROBE.pack(frame.monitor)
    elif isinstance(frame, Reject):
        kind, body = _T_REJECT, frame.reason.encode("utf-8")[:1000]
    elif isinstance(frame, Stop):
        kind, body = _T_STOP, b""
    elif isinstance(frame, Bye):
        kind, body = _T_BYE, b""
    elif isinstance(frame, Heartbeat):
        kind, body = _T_HEARTBEAT, b""
    elif isinstance(frame, StatusRequest):
        kind, body = _T_STATUS, b""
    elif isinstance(frame, StatusReply):
        kind = _T_STATUS_REPLY
        held = int(frame.holds_cw) | int(frame.holds_ccw) << 1
        body = _STATUS_REPLY.pack(
            frame.node_id, frame.epoch, held, frame.sent, frame.delivered, frame.waiting, frame.undelivered
        )
    else:
        raise LocalProtocolError(f"not a ring frame: {frame!r}")
    return encode_length_prefixed(_HEADER.pack(PROTOCOL_VERSION, kind, epoch, seq) + body, _PREFIX)


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
            node_id, role, ring, recv_next, secured, session, peer_session, nonce = _exact(_HELLO, payload)
            if recv_next < 1:
                raise ValueError("recv_next must be at least 1")
            frame = Hello(node_id, Role(role), ring, recv_next, _flag(secured), nonce, session, peer_session)
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
        elif kind == _T_PROBE:
            (monitor,) = _exact(_PROBE, payload)
            frame = Probe(monitor)
        elif kind in (_T_STOP, _T_BYE, _T_STATUS, _T_HEARTBEAT):
            if len(payload) != _HEADER.size:
                raise ValueError("frame with a body")
            frame = {_T_STOP: Stop, _T_BYE: Bye, _T_STATUS: StatusRequest, _T_HEARTBEAT: Heartbeat}[kind]()
        elif kind == _T_STATUS_REPLY:
            node_id, epoch_, held, sent, delivered, waiting, undelivered = _exact(_STATUS_REPLY, payload)
            if held > 3:
                raise ValueError(f"tokens byte {held}")
            frame = StatusReply(node_id, epoch_, bool(held & 1), bool(held & 2), sent, delivered, waiting, undelivered)
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
        self._framer = LengthPrefixFramer(_PREFIX, max_frame)

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
