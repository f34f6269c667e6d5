"""The reliable link's sans-IO rules: sequencing, resending, and the checks on every frame received.

Every frame a node receives after the handshake goes through
:meth:`LinkState.receive`: these tests show what it refuses (another ring
epoch, the wrong direction, a gap, a handshake frame) and what it lets
through, without a socket.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionet.framing import NEED_DATA
from trionet.ring.frames import (
    Ack,
    Auth,
    Bye,
    Direction,
    FrameDecoder,
    Hello,
    Message,
    Reject,
    RemoteProtocolError,
    Role,
    Stop,
    Token,
    decode_frame,
    encode_frame,
)
from trionet.ring.link import Arrival, LinkState

from .strategies import data_frames, directions

CW, CCW = Direction.CW, Direction.CCW


def test_link_resends_unacknowledged_frames_after_reconnect():
    sender, receiver = LinkState(), LinkState()
    frames = [Token(CW), Message(CW, 0, 1, 1, "a"), Message(CW, 0, 1, 2, "b")]
    wires = [sender.wrap(f) for f in frames]
    # The first frame arrives and is acked; the connection drops before the others.
    first = decode_frame(wires[0][4:])
    assert receiver.receive(*first) is Arrival.NEW
    receiver.mark_received(first.seq)
    resend = sender.on_connect(receiver.recv_next)
    assert resend == wires[1] + wires[2]
    decoder = FrameDecoder()
    decoder.receive_data(resend + wires[1])  # frame 2 sent twice: once before the cut, once after
    seen = []
    while (event := decoder.next_event()) is not NEED_DATA:
        if receiver.receive(*event) is Arrival.NEW:
            receiver.mark_received(event.seq)
            seen.append(event.frame)
    assert seen == frames[1:]
    assert receiver.duplicates == 1
    sender.on_ack(receiver.ack)
    assert not sender.unacked


def test_link_rejects_gaps_and_bogus_acks():
    link = LinkState()
    with pytest.raises(RemoteProtocolError, match="before frame 1"):
        link.receive(Token(CW), 2, 1)
    with pytest.raises(RemoteProtocolError, match="never sent"):
        link.on_ack(1)
    link.wrap(Token(CW))
    link.wrap(Token(CW))
    with pytest.raises(RemoteProtocolError, match="never sent"):
        link.on_connect(4)  # the peer claims a frame we never sent
    link.on_ack(1)
    with pytest.raises(RemoteProtocolError, match="peer expects frame 1 but the oldest"):
        link.on_connect(1)  # the peer lost a frame it had acknowledged (it restarted)


# --- the checks on every frame ---------------------------------------------------------


def test_a_frame_of_another_ring_epoch_passes_the_link_for_the_node_to_drop():
    # Epochs change while links live on (a new view after a crash elsewhere):
    # the link sequences the frame; the node core drops it (test_crash_core).
    link = LinkState(epoch=1, incoming=CW)
    wire = encode_frame(Token(CW), seq=1, epoch=2)
    assert link.receive(*decode_frame(wire[4:])) is Arrival.NEW
    link.mark_received(1)
    assert link.receive(Token(CW), 1, 1) is Arrival.DUPLICATE


def _handshake(dialer: LinkState, acceptor: LinkState, d: int, a: int) -> tuple[tuple, tuple]:
    """Greet both ways as the handshake does, and connect both ends: their ``(resend, reset)``."""
    recv_next, session, seen = dialer.greeting(a)
    answer = acceptor.answer(d, session, seen)
    resume = answer[2] == session  # the dialer reads the acceptor's decision in its echo
    return (
        dialer.connect(a, answer[1], resume, answer[0]),
        acceptor.connect(d, session, answer[2] != 0, recv_next),
    )


def test_sessions_decide_between_resume_and_reset():
    a, b = LinkState(incoming=CCW, peer=2), LinkState(incoming=CW, peer=1)
    queued = a.wrap(Token(CW))  # queued before the first connection: kept on first contact
    assert _handshake(a, b, 1, 2) == ((queued, False), (b"", False))
    b.mark_received(1)
    a.on_ack(1)
    # A reconnect with both states intact resumes.
    assert _handshake(a, b, 1, 2) == ((b"", False), (b"", False))
    # b restarts: a new state, a new session. Both ends reset, and agree on it.
    a.wrap(Token(CW))
    b = LinkState(incoming=CW, peer=1)
    assert _handshake(a, b, 1, 2) == ((b"", True), (b"", True))
    assert not a.unacked and a.next_seq == 1 and b.recv_next == 1
    # Then they resume again.
    assert _handshake(a, b, 1, 2) == ((b"", False), (b"", False))
    # a restarts: the same.
    a = LinkState(incoming=CCW, peer=2)
    assert _handshake(a, b, 1, 2) == ((b"", True), (b"", True))
    # A new peer (bypass) always resets, and greets as a fresh state until then.
    c = LinkState(incoming=CW, peer=0)
    assert a.greeting(3)[0] == 1 and a.greeting(3)[2] == 0 and a.peer == 2
    assert _handshake(a, c, 1, 3)[0][1] is True and a.peer == 3 and c.peer == 1


def test_an_answer_decided_before_another_connection_finished_still_agrees():
    # Two connections overlap: the acceptor answered the second before the
    # first one connected. Its answer (its decision) stands for both ends.
    a, b = LinkState(incoming=CCW, peer=2), LinkState(incoming=CW, peer=1)
    first = a.greeting(2)
    first_answer = b.answer(1, first[1], first[2])
    a.connect(2, first_answer[1], first_answer[2] == first[1], first_answer[0])
    second = a.greeting(2)
    second_answer = b.answer(1, second[1], second[2])  # b has not connected the first yet
    b.connect(1, first[1], first_answer[2] != 0, first[0])  # now it has
    resend_a, reset_a = a.connect(2, second_answer[1], second_answer[2] == second[1], second_answer[0])
    resend_b, reset_b = b.connect(1, second[1], second_answer[2] != 0, second[0])
    assert reset_a == reset_b


def test_a_stale_greeting_resumes_rather_than_resets():
    # b answered a first connection but never read a's proof (its reader
    # stalled), so it never learned a's session; a finished that connection
    # and sent a frame on it, which b never read. a's next greeting names
    # b's session: b resumes (it read nothing, so a resends from 1), where a
    # reset made a needless new view (found by the stop simulation: 21 views in a ring without a crash).
    a, b = LinkState(incoming=CCW, peer=2), LinkState(incoming=CW, peer=1)
    first = a.greeting(2)
    first_answer = b.answer(1, first[1], first[2])
    a.connect(2, first_answer[1], first_answer[2] == first[1], first_answer[0])
    lost = a.wrap(Token(CW))
    second = a.greeting(2)
    second_answer = b.answer(1, second[1], second[2])
    assert second_answer[2] == second[1]  # resume
    assert a.connect(2, second_answer[1], True, second_answer[0]) == (lost, False)
    assert b.connect(1, second[1], True, second[0]) == (b"", False)
    # A restarted b (a new session) still resets.
    b = LinkState(incoming=CW, peer=1)
    assert b.answer(1, a.greeting(2)[1], a.greeting(2)[2])[2] == 0


@pytest.mark.parametrize("kind", ["token", "message"])
def test_a_token_or_message_of_the_other_direction_is_refused(kind):
    # The previous node's link carries clockwise traffic only; a
    # counter-clockwise token there would be a second ccw token in the ring.
    link = LinkState(epoch=1, incoming=CW)
    frame = Token(CCW) if kind == "token" else Message(CCW, 0, 1, 1, "x")
    with pytest.raises(RemoteProtocolError, match="ccw frame on a link that carries cw"):
        link.receive(*decode_frame(encode_frame(frame, seq=1)[4:]))
    assert link.recv_next == 1
    assert link.receive(frame._replace(direction=CW), 1, 1) is Arrival.NEW


@given(frame=data_frames, epoch=st.integers(0, 3), incoming=directions, seq=st.integers(1, 3), seen=st.integers(1, 3))
def test_every_data_frame_is_checked_for_direction_and_place(frame, epoch, incoming, seq, seen):
    link = LinkState(epoch=1, incoming=incoming)
    link.recv_next = seen  # frames before ``seen`` arrived already
    wrong_direction = type(frame) in (Token, Message) and frame.direction is not incoming
    if wrong_direction or seq > seen:
        with pytest.raises(RemoteProtocolError):
            link.receive(frame, seq, epoch)
        assert (link.recv_next, link.duplicates) == (seen, 0)
    elif seq < seen:
        assert link.receive(frame, seq, epoch) is Arrival.DUPLICATE and link.duplicates == 1
    else:
        assert link.receive(frame, seq, epoch) is Arrival.NEW and link.recv_next == seen  # marked by the caller


@pytest.mark.parametrize(
    "frame",
    [Hello(1, Role.PREDECESSOR, 0, 1), Auth(bytes(32)), Reject("no"), Stop()],
    ids=lambda f: type(f).__name__,
)
def test_a_handshake_frame_after_the_handshake_is_refused(frame):
    with pytest.raises(RemoteProtocolError, match="after the handshake"):
        LinkState(incoming=CW).receive(frame, 0, 1)


def test_acks_and_bye_after_the_handshake():
    link = LinkState(incoming=CW)
    link.wrap(Token(CCW))
    assert link.receive(Ack(1), 0, 1) is Arrival.ACKED and not link.unacked
    with pytest.raises(RemoteProtocolError, match="never sent"):
        link.receive(Ack(2), 0, 1)
    assert link.receive(Bye(), 0, 1) is Arrival.BYE
