"""The sans-IO handshake: greetings and proofs, their checks, and their parsing (no sockets)."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.framing import NEED_DATA
from trionet.ring.config import RingConfig
from trionet.ring.handshake import Opening, Side, check_greeting, check_proof, make_proof
from trionet.ring.frames import (
    NONCE_BYTES,
    PROOF_BYTES,
    PROTOCOL_VERSION,
    Auth,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Received,
    Reject,
    RemoteProtocolError,
    Role,
    Stop,
    decode_frame,
    encode_frame,
)

RING = RingConfig.local(3, ports=[1, 2, 3])
SECRET = b"correct horse battery staple"
nonces = st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)


def hello(node_id: int, role: Role, *, secured: bool = True, nonce: bytes | None = None, recv_next: int = 1) -> Hello:
    return Hello(node_id, role, RING.fingerprint, recv_next, secured, nonce or secrets.token_bytes(NONCE_BYTES))


def proof_event(secret: bytes, side: Side, dialer: Hello, acceptor: Hello, digest: bytes = RING.digest) -> Received:
    return Received(Auth(make_proof(secret, side, dialer, acceptor, digest)))


def check(event: Received, dialer: Hello, acceptor: Hello, side: Side = Side.DIALER, secret: bytes = SECRET):
    return check_proof(event, secret=secret, side=side, dialer=dialer, acceptor=acceptor, digest=RING.digest)


def test_good_proofs_pass_both_ways():
    dialer, acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    assert check(proof_event(SECRET, Side.DIALER, dialer, acceptor), dialer, acceptor, Side.DIALER) is None
    assert check(proof_event(SECRET, Side.ACCEPTOR, dialer, acceptor), dialer, acceptor, Side.ACCEPTOR) is None
    assert len(make_proof(SECRET, Side.DIALER, dialer, acceptor, RING.digest)) == PROOF_BYTES


def test_a_wrong_secret_fails():
    dialer, acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    reason = check(proof_event(b"guess", Side.DIALER, dialer, acceptor), dialer, acceptor)
    assert reason == "node 2 failed to prove it knows the ring's secret (a different --secret-file?)"
    # Without a secret (empty key) a node cannot pass as one that has it either.
    assert check(proof_event(b"", Side.DIALER, dialer, acceptor), dialer, acceptor) is not None


def test_a_replayed_proof_fails_on_a_new_connection():
    # An eavesdropper records a whole good handshake and replays the dialer's
    # side; the acceptor's fresh nonce makes the old proof worthless.
    dialer, old_acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    recorded = proof_event(SECRET, Side.DIALER, dialer, old_acceptor)
    new_acceptor = hello(0, Role.SUCCESSOR)
    assert check(recorded, dialer, new_acceptor) is not None
    # Likewise an acceptor's proof recorded earlier does not answer a new dialer nonce.
    recorded = proof_event(SECRET, Side.ACCEPTOR, dialer, old_acceptor)
    assert check(recorded, hello(2, Role.PREDECESSOR), old_acceptor, Side.ACCEPTOR) is not None


def test_a_reflected_proof_fails():
    # An attacker who gets a node to prove as acceptor over the attacker's
    # chosen nonces cannot pass that proof off as the dialer's.
    dialer, acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    reflected = proof_event(SECRET, Side.ACCEPTOR, dialer, acceptor)
    assert check(reflected, dialer, acceptor, Side.DIALER) is not None


@pytest.mark.parametrize(
    "change",
    [
        lambda h: Hello(h.node_id + 1, h.role, h.ring, h.recv_next, h.secured, h.nonce),
        lambda h: Hello(h.node_id, Role.CONTROL, h.ring, h.recv_next, h.secured, h.nonce),
        lambda h: Hello(h.node_id, h.role, h.ring ^ 1, h.recv_next, h.secured, h.nonce),
        lambda h: Hello(h.node_id, h.role, h.ring, h.recv_next + 1, h.secured, h.nonce),
        lambda h: Hello(h.node_id, h.role, h.ring, h.recv_next, h.secured, bytes(NONCE_BYTES)),
    ],
    ids=["node id", "role", "ring", "recv_next", "nonce"],
)
def test_a_proof_covers_every_field_of_both_greetings(change):
    dialer, acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    good = proof_event(SECRET, Side.DIALER, dialer, acceptor)
    assert check(good, change(dialer), acceptor) is not None
    assert check(good, dialer, change(acceptor)) is not None


def test_a_proof_covers_the_ring_file():
    dialer, acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    other_ring = RingConfig.local(3, ports=[1, 2, 4]).digest
    assert check(proof_event(SECRET, Side.DIALER, dialer, acceptor, other_ring), dialer, acceptor) is not None


def test_a_reject_or_another_frame_instead_of_a_proof():
    dialer, acceptor = hello(2, Role.PREDECESSOR), hello(0, Role.SUCCESSOR)
    assert check(Received(Reject("no")), dialer, acceptor) == "node 2 refused the connection: no"
    assert check(Received(dialer), dialer, acceptor) == "expected the proof of node 2, got Hello"


def greet(frame, *, epoch=1, role=Role.PREDECESSOR, node_id=2, secured=True, me="node 0", peer=None):
    return check_greeting(
        Received(frame, 0, epoch), role=role, node_id=node_id, ring=RING.fingerprint, secured=secured,
        me=me, peer=peer,
    )


def test_greeting_checks():
    assert greet(hello(2, Role.PREDECESSOR)) is None
    assert greet(hello(1, Role.PREDECESSOR)) == "node 0 accepts only its previous node 2, not node 1"
    assert greet(hello(2, Role.CONTROL)) == "expected a predecessor greeting, got a control greeting"
    # The epoch is what the peer has seen (a restarted node knows none): information, not a check.
    assert greet(hello(2, Role.PREDECESSOR), epoch=7) is None
    assert "ring files differ" in greet(Hello(2, Role.PREDECESSOR, RING.fingerprint ^ 1, 1, True))
    assert greet(Reject("busy")) == "node 2 refused the connection: busy"
    assert greet(hello(0, Role.CONTROL), role=Role.CONTROL, node_id=3, me="node 3") == "this is node 3, not node 0"
    # Both sides must agree on having a secret; the message says which lacks it.
    assert greet(hello(2, Role.PREDECESSOR, secured=False)) == (
        "node 0 requires the ring's shared secret and node 2 has none: give both the same --secret-file"
    )
    assert greet(hello(2, Role.PREDECESSOR), secured=False) == (
        "node 2 has a shared secret and node 0 has none: give both the same --secret-file"
    )
    stop = greet(hello(0, Role.CONTROL, secured=False), role=Role.CONTROL, node_id=0, peer="the stop client")
    assert stop == "node 0 requires the ring's shared secret and the stop client has none: give both the same --secret-file"


def test_nonces_and_proofs_have_one_size():
    with pytest.raises(LocalProtocolError):
        Hello(0, Role.PREDECESSOR, 0, 1, True, b"short")
    with pytest.raises(LocalProtocolError):
        Auth(b"x" * (PROOF_BYTES + 1))


# --- parsing -----------------------------------------------------------------------


@given(frame=st.builds(Hello, st.integers(0, 2**32 - 1), st.sampled_from(list(Role)), st.integers(0, 2**32 - 1),
                       st.integers(1, 2**64 - 1), st.booleans(), nonces))
def test_greetings_round_trip(frame):
    assert decode_frame(encode_frame(frame)[4:]).frame == frame


@settings(max_examples=300)
@given(kind=st.sampled_from([1, 11]), body=st.binary(max_size=80), seq=st.sampled_from([0, 0, 1]))
def test_random_greeting_and_proof_bodies_decode_exactly_or_are_refused(kind, body, seq):
    # HELLO is type 1, AUTH type 11: a body of the wrong size, a flag other
    # than 0/1, a role out of range, recv_next 0, or a sequence number is a
    # RemoteProtocolError, never another exception; what decodes re-encodes
    # to the same bytes.
    payload = bytes([PROTOCOL_VERSION, kind]) + (1).to_bytes(4, "big") + seq.to_bytes(8, "big") + body
    try:
        received = decode_frame(payload)
    except RemoteProtocolError:
        return
    assert seq == 0 and isinstance(received.frame, Hello if kind == 1 else Auth)
    assert encode_frame(received.frame)[4:] == payload


@given(data=st.binary(max_size=200), cut=st.integers(0, 200))
def test_a_handshake_stream_split_anywhere_decodes_or_is_refused(data, cut):
    wire = encode_frame(hello(2, Role.PREDECESSOR)) + encode_frame(Auth(bytes(PROOF_BYTES))) + data
    decoder = FrameDecoder(max_frame=256)
    for chunk in (wire[:cut], wire[cut:]):
        if chunk:  # an empty chunk would mean the peer closed
            decoder.receive_data(chunk)
    decoder.receive_data(b"")
    frames = []
    try:
        while (event := decoder.next_event()) is not NEED_DATA and isinstance(event, Received):
            frames.append(type(event.frame))
    except RemoteProtocolError:
        pass
    assert frames[:2] == [Hello, Auth]


# --- Opening: a whole handshake, both ends, no sockets ------------------------------------


def _frames(data: bytes) -> list[Received]:
    decoder = FrameDecoder()
    if not data:
        return []
    decoder.receive_data(data)
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def _common(secret=SECRET, ring=RING):
    return dict(ring=ring.fingerprint, digest=ring.digest, secret=secret, epoch=1, nonce=secrets.token_bytes(NONCE_BYTES))


def _dialer(secret=SECRET, role=Role.PREDECESSOR, node_id=2, peer_id=0, **kw):
    me = "this client" if role is Role.CONTROL else f"node {node_id}"
    return Opening.dialer(node_id=node_id, role=role, peer_id=peer_id, recv_next=5, me=me, **_common(secret, **kw))


def _acceptor(secret=SECRET, accepts_stop=True, recv_next=7, **kw):
    return Opening.acceptor(
        node_id=0, previous=2, recv_next=lambda: recv_next, accepts_stop=accepts_stop, **_common(secret, **kw)
    )


def _talk(dialer: Opening, acceptor: Opening, then: bytes = b"") -> None:
    """Carry bytes between the two ends until neither has more to say (h11's fake link)."""
    to_acceptor, to_dialer = dialer.start(), b""
    while to_acceptor or to_dialer:
        for event in _frames(to_acceptor):
            if not acceptor.finished:
                to_dialer += acceptor.receive(event)
        to_acceptor = b""
        for event in _frames(to_dialer):
            if not dialer.finished:
                to_acceptor += dialer.receive(event)
        to_dialer = b""
        if dialer.finished and not dialer.refused and then:
            to_acceptor, then = to_acceptor + then, b""


@pytest.mark.parametrize("secret", [SECRET, None], ids=["secret", "no secret"])
def test_two_openings_accept_each_other_and_say_where_to_resume(secret):
    dialer, acceptor = _dialer(secret), _acceptor(secret)
    _talk(dialer, acceptor)
    assert dialer.finished and acceptor.finished and not dialer.refused and not acceptor.refused
    assert (acceptor.peer.node_id, acceptor.peer.recv_next) == (2, 5)
    assert (dialer.peer.node_id, dialer.peer.recv_next) == (0, 7)
    assert not acceptor.control and not acceptor.stop_requested


@pytest.mark.parametrize(
    "dialer_secret, acceptor_secret, refuser, reason",
    [
        # The acceptor proves first, so with two different secrets the dialer finds out.
        (b"guess", SECRET, "dialer", "node 0 failed to prove"),
        (SECRET, b"guess", "dialer", "node 0 failed to prove"),
        (None, SECRET, "acceptor", "node 0 requires the ring's shared secret and node 2 has none"),
        (SECRET, None, "acceptor", "node 2 has a shared secret and node 0 has none"),
    ],
)
def test_an_opening_without_the_secret_is_refused_with_a_reason_on_both_ends(
    dialer_secret, acceptor_secret, refuser, reason
):
    dialer, acceptor = _dialer(dialer_secret), _acceptor(acceptor_secret)
    _talk(dialer, acceptor)
    assert dialer.finished and acceptor.finished
    assert reason in (acceptor.refused if refuser == "acceptor" else dialer.refused)
    assert dialer.refused and acceptor.refused  # the refused end learns why from the REJECT
    assert acceptor.peer is None or refuser == "dialer"  # the acceptor never took a link it refused


def test_only_the_previous_node_and_stop_clients_are_accepted():
    stranger = _dialer(node_id=1)  # node 1 is not node 0's previous node
    acceptor = _acceptor()
    _talk(stranger, acceptor)
    assert "accepts only its previous node 2, not node 1" in acceptor.refused
    other_ring = _dialer(ring=RingConfig.local(3, ports=[1, 2, 4]))
    acceptor = _acceptor()
    _talk(other_ring, acceptor)
    assert "the ring files differ" in acceptor.refused


@pytest.mark.parametrize("accepts_stop", [True, False], ids=["node 0", "another node"])
def test_a_stop_client_is_heard_by_node_0_only_after_its_proof(accepts_stop):
    client, acceptor = _dialer(role=Role.CONTROL, node_id=0), _acceptor(accepts_stop=accepts_stop)
    _talk(client, acceptor, then=encode_frame(Stop()))
    assert not client.refused and acceptor.control
    assert acceptor.stop_requested is accepts_stop
    assert (acceptor.refused is None) is accepts_stop
    # Without the secret the STOP is never reached; nor from another ring.
    client, acceptor = _dialer(b"guess", role=Role.CONTROL, node_id=0), _acceptor()
    _talk(client, acceptor, then=encode_frame(Stop()))
    assert not acceptor.stop_requested and "failed to prove" in acceptor.refused
    client, acceptor = _dialer(role=Role.CONTROL, node_id=0, ring=RingConfig.local(3, ports=[1, 2, 4])), _acceptor()
    _talk(client, acceptor, then=encode_frame(Stop()))
    assert "the ring files differ" in acceptor.refused
    assert acceptor.control  # refused as a stop client, not as a link (node.py logs it so)


@settings(max_examples=200)
@given(
    first=st.sampled_from(["hello", "wrong role", "reject", "auth", "stop"]),
    second=st.sampled_from(["good proof", "bad proof", "reject", "hello", "stop"]),
)
def test_an_acceptor_takes_a_peer_only_after_a_good_greeting_and_a_good_proof(first, second):
    acceptor = _acceptor()
    theirs = hello(2, Role.PREDECESSOR if first != "wrong role" else Role.SUCCESSOR)
    frames = {"hello": theirs, "wrong role": theirs, "reject": Reject("no"), "auth": Auth(bytes(32)), "stop": Stop()}
    replies = _frames(acceptor.receive(Received(frames[first], 0, 1)))
    if first != "hello":
        assert acceptor.finished and acceptor.refused and acceptor.peer is None
        assert [type(r.frame) for r in replies] == ([] if first == "reject" else [Reject])
        return
    mine = replies[0].frame
    proofs = {
        "good proof": Auth(make_proof(SECRET, Side.DIALER, theirs, mine, RING.digest)),
        "bad proof": Auth(make_proof(SECRET, Side.ACCEPTOR, theirs, mine, RING.digest)),  # a reflected one
        "reject": Reject("no"), "hello": theirs, "stop": Stop(),
    }
    acceptor.receive(Received(proofs[second], 0, 1))
    assert acceptor.finished
    assert (acceptor.refused is None) is (second == "good proof")
    with pytest.raises(LocalProtocolError):
        acceptor.receive(Received(Stop(), 0, 1))
