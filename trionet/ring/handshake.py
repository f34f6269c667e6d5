"""Sans-IO rules of a connection's opening: the greeting checks and the HMAC-SHA256 challenge-response.

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

Nothing here reads a clock, a socket or a random source: nonces and the
secret are passed in.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct

from trionet.ring.frames import PROOF_BYTES, Auth, Hello, Received, Reject, Role

__all__ = ["Side", "check_greeting", "check_proof", "make_proof"]

_LABEL = b"trionet ring v2 handshake proof\0"
_GREETING = struct.Struct(">IBIQB")  # node_id, role, ring, recv_next, secured (then the nonce)


class Side(enum.Enum):
    """Which end of the connection a proof comes from."""

    DIALER = b"dialer\0"
    ACCEPTOR = b"acceptor\0"


def _greeting_bytes(hello: Hello) -> bytes:
    return _GREETING.pack(hello.node_id, hello.role, hello.ring, hello.recv_next, hello.secured) + hello.nonce


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
    epoch: int,
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
        epoch: this node's ring epoch.
        role: the role the greeting must have.
        node_id: the id it must carry (the previous node, the next node, or,
            for a stop client, the node it wants).
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
    if event.epoch != epoch:
        return f"ring epoch {event.epoch}, {me} is at {epoch}"
    if hello.ring != ring:
        return f"the ring files differ ({peer} and {me} list other nodes)"
    if hello.node_id != node_id:
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
