"""Sans-IO rules of a connection's opening: the exchange's steps (:class:`Opening`), the greeting checks, the HMAC-SHA256 proofs.

Every connection to a node opens the same way (``docs/protocol/ring.md``,
"The handshake"): the side that connected (the *dialer*: the previous node,
or a ``trionet ring stop`` client) sends ``HELLO`` with a fresh random nonce;
the side that accepted answers ``HELLO`` with its own nonce and ``AUTH``, its
proof; the dialer checks that proof and answers with its own ``AUTH``. Only
then does either side use the connection.

A proof is ``HMAC-SHA256(secret, label || side || ring digest || dialer's
greeting || acceptor's greeting)``, each greeting with its nonce. So:

- each side's proof covers the *other* side's fresh nonce: a recorded proof
  is worthless on a later connection (replay);
- the side (``dialer``/``acceptor``) is in the proof, and so are both node
  ids and the dialer's role (predecessor or control): a node cannot be made
  to produce, as an acceptor, a proof that an attacker could use as a dialer
  (reflection), nor a stop client's proof be used for a link;
- the ring digest (SHA-256 of the ring file's nodes) is in it: nodes of
  another ring file with the same secret cannot join;
- proofs are compared with :func:`hmac.compare_digest`.

Without a secret the same exchange runs with an empty key: it proves
nothing, and the greeting's ``secured`` flag says so, so that a node with a
secret refuses a node without one with a message naming the problem.

:class:`Opening` runs one end of that exchange: the node feeds it each
frame received and sends the bytes it returns, until it has either accepted
the peer or refused it with a reason. Every decision of the exchange (which
frame comes next, what makes a greeting or a proof unacceptable, when to
answer with ``REJECT``, who may stop the ring) is made here.

Nothing here reads a clock, a socket or a random source: nonces and the
secret are passed in.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Callable

from trionet.ring.frames import (
    PROOF_BYTES,
    Ack,
    Auth,
    Hello,
    LocalProtocolError,
    Received,
    Reject,
    Role,
    StatusReply,
    StatusRequest,
    Stop,
    encode_frame,
)

__all__ = ["Opening", "Side", "check_greeting", "check_proof", "make_proof"]

_LABEL = b"trionet ring v3 handshake proof\0"
_GREETING = struct.Struct(">IBIQBQQ")  # node_id, role, ring, recv_next, secured, session, peer_session (then the nonce)


class Side(enum.Enum):
    """Which end of the connection a proof comes from."""

    DIALER = b"dialer\0"
    ACCEPTOR = b"acceptor\0"


def _greeting_bytes(hello: Hello) -> bytes:
    return _GREETING.pack(
        hello.node_id, hello.role, hello.ring, hello.recv_next, hello.secured, hello.session, hello.peer_session
    ) + hello.nonce


def make_proof(secret: bytes, side: Side, dialer: Hello, acceptor: Hello, digest: bytes) -> bytes:
    """Return ``side``'s proof for the connection whose greetings were ``dialer`` and ``acceptor``.

    Args:
        secret: the ring's shared secret (``b""`` on a ring without one).
        side: who proves.
        dialer: the greeting the connecting side sent.
        acceptor: the greeting the accepting side answered.
        digest: the ring file's digest (:attr:`~trionet.ring.config.RingConfig.digest`).

    Returns:
        :data:`~trionet.ring.frames.PROOF_BYTES` bytes.
    """
    transcript = b"".join((_LABEL, side.value, digest, _greeting_bytes(dialer), _greeting_bytes(acceptor)))
    return hmac.new(secret, transcript, hashlib.sha256).digest()


def check_proof(
    event: Received, *, secret: bytes, side: Side, dialer: Hello, acceptor: Hello, digest: bytes
) -> str | None:
    """Check the frame that must carry ``side``'s proof; return why it fails, or None when it is good.

    ``event`` is the frame received after the greetings: an ``AUTH`` whose
    proof must equal :func:`make_proof` for ``side`` (compared in constant
    time), or a ``REJECT`` from a peer that refused ours.
    """
    frame = event.frame
    peer = dialer.node_id if side is Side.DIALER else acceptor.node_id
    if isinstance(frame, Reject):
        return f"node {peer} refused the connection: {frame.reason}"
    if not isinstance(frame, Auth):
        return f"expected the proof of node {peer}, got {type(frame).__name__}"
    expected = make_proof(secret, side, dialer, acceptor, digest)
    if not hmac.compare_digest(frame.proof, expected):
        return f"node {peer} failed to prove it knows the ring's secret (a different --secret-file?)"
    return None


def check_greeting(
    event: Received,
    *,
    role: Role,
    node_id: int,
    ring: int,
    secured: bool,
    me: str,
    peer: str | None = None,
) -> str | None:
    """Check a peer's ``HELLO``; return why it is refused, or None when it is acceptable.

    Args:
        event: the first frame from the peer (a ``REJECT`` is reported as such).
            Its epoch is the highest the peer has seen: information, not a check
            (a restarted node knows none; the views sort epochs out: ``core.py``).
        role: the role the greeting must have.
        node_id: the id it must carry (the previous node, the next node, or,
            for a stop client, the node it wants); None: any node of the ring
            (the acceptor then asks its ``admit`` callback).
        ring: this node's ring-file fingerprint.
        secured: whether this side has a secret; both sides must agree.
        me: who checks, for the messages (``node 3``, ``this client``).
        peer: who the peer is, for the messages; ``node N`` from its greeting by default.
    """
    hello = event.frame
    if isinstance(hello, Reject):
        return f"node {node_id} refused the connection: {hello.reason}"
    if not isinstance(hello, Hello) or hello.role is not role:
        got = f"a {hello.role.name.lower()} greeting" if isinstance(hello, Hello) else type(hello).__name__
        return f"expected a {role.name.lower()} greeting, got {got}"
    peer = peer or f"node {hello.node_id}"
    if hello.ring != ring:
        return f"the ring files differ ({peer} and {me} list other nodes)"
    if node_id is not None and hello.node_id != node_id:
        if role is Role.PREDECESSOR:
            return f"{me} accepts only its previous node {node_id}, not node {hello.node_id}"
        if role is Role.CONTROL and me == f"node {node_id}":
            return f"this is {me}, not node {hello.node_id}"
        return f"expected node {node_id}, the peer is node {hello.node_id}"
    if hello.secured and not secured:
        return f"{peer} has a shared secret and {me} has none: give both the same --secret-file"
    if secured and not hello.secured:
        return f"{me} requires the ring's shared secret and {peer} has none: give both the same --secret-file"
    return None


assert PROOF_BYTES == hashlib.sha256().digest_size


class _Step(enum.Enum):
    GREETING = "greeting"  # waiting for the peer's HELLO
    PROOF = "proof"  # waiting for the peer's AUTH
    STOP = "stop"  # a control client proved the secret: waiting for its STOP or STATUS
    DONE = "done"


class Opening:
    """One end of one connection's handshake (sans-IO): frames in, bytes to send out, then an outcome.

    Build it with :meth:`dialer` or :meth:`acceptor`; send :meth:`start`'s
    bytes; then feed each frame received to :meth:`receive` and send what
    it returns, until :attr:`finished`. Then either :attr:`refused` holds
    the reason the peer was refused (or refused us), or :attr:`peer` holds
    its accepted greeting (and, for an acceptor, :attr:`stop_requested` says
    it was a ``trionet ring stop`` client whose ``STOP`` was accepted).

    An acceptor answers every refusal with ``REJECT`` (unless the peer's own
    frame was one); a dialer answers a bad proof with ``REJECT``, and a bad
    greeting by closing (it has said nothing beyond its own greeting).
    """

    def __init__(
        self,
        side: Side,
        *,
        node_id: int,
        ring: int,
        digest: bytes,
        secret: bytes | None,
        epoch: int,
        nonce: bytes,
        me: str,
    ) -> None:
        self.side = side
        self._node_id = node_id
        self._ring = ring
        self._digest = digest
        self._secured = secret is not None
        self._key = secret or b""  # without a secret the proofs use an empty key and prove nothing
        self._epoch = epoch
        self._nonce = nonce
        self._me = me
        self._step = _Step.GREETING
        self._mine: Hello | None = None
        self._expect: dict[Role, int] = {}
        self._link: Callable[[Hello], tuple[int, int, int]] = lambda peer: (1, 0, 0)
        self._admit: Callable[[int, int], str | None] | None = None
        self.peer_epoch = 0
        """The highest epoch the peer has seen (its greeting's header)."""
        self._stops = False
        self._status: Callable[[], StatusReply] | None = None
        self._control = False
        self.peer: Hello | None = None
        """The peer's greeting, once accepted (its ``recv_next`` tells where to resume)."""
        self.refused: str | None = None
        """Why the handshake failed, once it did (either side refused)."""
        self.stop_requested = False
        """Acceptor: the peer was a stop client, proved the secret, and its ``STOP`` was accepted."""
        self.status_requested = False
        """Acceptor: the peer was a status client, proved the secret, and was answered."""

    @classmethod
    def dialer(
        cls,
        *,
        node_id: int,
        role: Role,
        peer_id: int,
        recv_next: int,
        me: str,
        session: int = 0,
        peer_session: int = 0,
        **common,
    ) -> Opening:
        """The connecting end: a node dialing its next node (``PREDECESSOR``) or a stop client (``CONTROL``).

        Args:
            node_id: the dialer's id (for a stop client, the node it asks).
            role: the dialer's role.
            peer_id: the node it must reach.
            recv_next: the next link frame the dialer expects (1 for a stop client).
            me: who dials, in messages (``node 3``, ``this client``).
            session: the dialer's link session; peer_session: the peer's as last seen.
            common: ``ring``, ``digest``, ``secret``, ``epoch`` and ``nonce``.
        """
        self = cls(Side.DIALER, node_id=node_id, me=me, **common)
        self._mine = Hello(node_id, role, self._ring, recv_next, self._secured, self._nonce, session, peer_session)
        answer = Role.CONTROL if role is Role.CONTROL else Role.SUCCESSOR
        self._expect = {answer: peer_id}
        self._control = role is Role.CONTROL
        return self

    @classmethod
    def acceptor(
        cls,
        *,
        node_id: int,
        previous: int,
        recv_next: Callable[[], int] | None = None,
        accepts_stop: bool,
        status: Callable[[], StatusReply] | None = None,
        admit: Callable[[int, int], str | None] | None = None,
        link: Callable[[Hello], tuple[int, int, int]] | None = None,
        **common,
    ) -> Opening:
        """The accepting end: node ``node_id``, which takes its ``previous`` node and stop clients.

        Args:
            node_id: this node's id.
            previous: the only node that may connect as ``PREDECESSOR``
                (unless ``admit`` is given).
            recv_next: read when the greeting is answered: the next link
                frame this node expects from its previous node.
            admit: ``admit(node_id, epoch)`` decides instead of ``previous``
                (``epoch``: the greeting's): None to take that node as
                predecessor, else why not (bypass:
                :func:`trionet.ring.membership.admits`).
            link: ``link(hello)`` gives ``(recv_next, session, peer_session)``
                to answer the predecessor's greeting with
                (:meth:`~trionet.ring.link.LinkState.answer`); instead of ``recv_next``.
            accepts_stop: whether a proven stop client's ``STOP`` is
                accepted (node 0 only; others refuse it, naming node 0).
            status: called when a proven control client sends ``STATUS``:
                the reply to send. None: such a request is refused.
            common: ``ring``, ``digest``, ``secret``, ``epoch`` and ``nonce``.
        """
        self = cls(Side.ACCEPTOR, node_id=node_id, me=f"node {node_id}", **common)
        self._expect = {Role.PREDECESSOR: None if admit else previous, Role.CONTROL: node_id}
        self._admit = admit
        if link is not None:
            self._link = link
        elif recv_next is not None:
            self._link = lambda peer: (recv_next(), 0, 0)
        self._stops = accepts_stop
        self._status = status
        return self

    @property
    def finished(self) -> bool:
        """True once the peer was accepted or the handshake failed."""
        return self._step is _Step.DONE

    @property
    def resumes(self) -> bool:
        """Once accepted: the link continues its sequence state (the acceptor's decision, echoed)."""
        mine, peer = self._mine, self.peer
        if self.side is Side.ACCEPTOR:
            return mine.peer_session != 0 and mine.peer_session == peer.session
        return peer.peer_session != 0 and peer.peer_session == mine.session

    @property
    def control(self) -> bool:
        """True when the peer greeted as a stop client (acceptor), or this end is one (dialer), accepted or not."""
        return self._control

    def start(self) -> bytes:
        """The bytes that open the connection: the dialer's greeting; nothing for an acceptor."""
        return encode_frame(self._mine, epoch=self._epoch) if self.side is Side.DIALER else b""

    def receive(self, event: Received) -> bytes:
        """Take the next frame from the peer; return the bytes to send in reply (maybe none).

        Raises:
            LocalProtocolError: called after :attr:`finished`.
        """
        if self._step is _Step.GREETING:
            return self._on_greeting(event)
        if self._step is _Step.PROOF:
            return self._on_proof(event)
        if self._step is _Step.STOP:
            return self._on_stop(event)
        raise LocalProtocolError("the handshake is over")

    def _on_greeting(self, event: Received) -> bytes:
        frame = event.frame
        role = next(iter(self._expect))
        if self.side is Side.ACCEPTOR and isinstance(frame, Hello) and frame.role in self._expect:
            role = frame.role
            self._control = role is Role.CONTROL
        reason = check_greeting(
            event, role=role, node_id=self._expect[role], ring=self._ring,
            secured=self._secured, me=self._me, peer="the stop client" if self.side is Side.ACCEPTOR and role is Role.CONTROL else None,
        )
        if not reason and self._admit is not None and role is Role.PREDECESSOR:
            reason = self._admit(frame.node_id, event.epoch)
        if reason:
            # A dialer has said nothing but its greeting: it just closes.
            return self._refuse(reason, event, answer=self.side is Side.ACCEPTOR)
        self.peer = frame
        self.peer_epoch = event.epoch
        self._step = _Step.PROOF
        if self.side is Side.DIALER:
            return b""
        mine_role = Role.CONTROL if role is Role.CONTROL else Role.SUCCESSOR
        recv_next, session, peer_session = (1, 0, 0) if role is Role.CONTROL else self._link(frame)
        self._mine = Hello(
            self._node_id, mine_role, self._ring, recv_next, self._secured, self._nonce, session, peer_session
        )
        return encode_frame(self._mine, epoch=self._epoch) + self._proof()

    def _on_proof(self, event: Received) -> bytes:
        peer_side = Side.ACCEPTOR if self.side is Side.DIALER else Side.DIALER
        dialer, acceptor = (self._mine, self.peer) if self.side is Side.DIALER else (self.peer, self._mine)
        reason = check_proof(
            event, secret=self._key, side=peer_side, dialer=dialer, acceptor=acceptor, digest=self._digest
        )
        if reason:
            return self._refuse(reason, event, answer=True)
        if self.side is Side.DIALER:
            self._step = _Step.DONE
            return self._proof()
        self._step = _Step.STOP if self.peer.role is Role.CONTROL else _Step.DONE
        return b""

    def _on_stop(self, event: Received) -> bytes:
        if isinstance(event.frame, StatusRequest):
            if self._status is None:
                return self._refuse(f"node {self._node_id} does not answer status requests", event, answer=True)
            self.status_requested = True
            self._step = _Step.DONE
            return encode_frame(self._status())
        if not isinstance(event.frame, Stop):
            return self._refuse(f"expected STOP or STATUS, got {type(event.frame).__name__}", event, answer=True)
        if not self._stops:
            return self._refuse(f"node {self._node_id} is not node 0; send stop to node 0", event, answer=True)
        self.stop_requested = True
        self._step = _Step.DONE
        return encode_frame(Ack(0))

    def _proof(self) -> bytes:
        dialer, acceptor = (self._mine, self.peer) if self.side is Side.DIALER else (self.peer, self._mine)
        return encode_frame(Auth(make_proof(self._key, self.side, dialer, acceptor, self._digest)))

    def _refuse(self, reason: str, event: Received, *, answer: bool) -> bytes:
        self.refused = reason
        self._step = _Step.DONE
        if answer and not isinstance(event.frame, Reject):
            return encode_frame(Reject(reason))
        return b""
