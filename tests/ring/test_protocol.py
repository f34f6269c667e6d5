"""The sans-IO ring: the frame codec (round trip and fuzz) and the node core's state machine.

The link state's rules are in ``test_link_state.py``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.framing import EOF, NEED_DATA
from trionet.ring.core import Deliver, Finished, NodeCore, Returned, Send
from trionet.ring.frames import (
    NONCE_BYTES,
    PROOF_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    Direction,
    Finalize,
    FrameDecoder,
    Hello,
    Message,
    Probe,
    Reject,
    RemoteProtocolError,
    Role,
    Stop,
    StopRequest,
    Token,
    decode_frame,
    encode_frame,
)

from .strategies import data_frames, directions, u32, u64

CW, CCW = Direction.CW, Direction.CCW
link_frames = st.one_of(
    st.builds(
        Hello, u32, st.sampled_from(list(Role)), u32, st.integers(1, 2**64 - 1), st.booleans(),
        st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES),
    ),
    st.builds(Auth, st.binary(min_size=PROOF_BYTES, max_size=PROOF_BYTES)),
    st.builds(Ack, u64),
    st.builds(Reject, st.text(max_size=100).filter(lambda s: len(s.encode()) <= 1000)),
    st.just(Stop()),
    st.just(Bye()),
)


@given(frame=data_frames, seq=st.integers(1, 2**64 - 1), epoch=u32)
def test_data_frames_round_trip(frame, seq, epoch):
    wire = encode_frame(frame, seq=seq, epoch=epoch)
    assert int.from_bytes(wire[:4], "big") == len(wire) - 4
    received = decode_frame(wire[4:])
    assert (received.frame, received.seq, received.epoch) == (frame, seq, epoch)


@given(frame=link_frames)
def test_link_frames_round_trip(frame):
    assert decode_frame(encode_frame(frame)[4:]).frame == frame


@given(frames=st.lists(st.tuples(data_frames, st.integers(1, 1000)), max_size=8), cuts=st.lists(st.integers(0, 400)))
def test_decoder_reassembles_frames_split_anywhere(frames, cuts):
    wire = b"".join(encode_frame(f, seq=s) for f, s in frames)
    decoder = FrameDecoder()
    got = []
    points = sorted({c for c in cuts if c < len(wire)} | {0, len(wire)})
    for start, end in zip(points, points[1:]):
        decoder.receive_data(wire[start:end])
        while (event := decoder.next_event()) is not NEED_DATA:
            got.append((event.frame, event.seq))
    decoder.receive_data(b"")
    assert decoder.next_event() is EOF
    assert got == frames


def _assert_exact(received, payload: bytes) -> None:
    """A decoded frame is exactly what was sent: encoding it again gives the same payload.

    Except a ``REJECT`` whose reason was not valid UTF-8 (decoded with
    replacement characters): that one must at least be stable.
    """
    again = encode_frame(received.frame, seq=received.seq, epoch=received.epoch)[4:]
    if type(received.frame) is Reject and again != payload:
        assert not _utf8(payload[14:]) and decode_frame(again) == received
    else:
        assert again == payload


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_decode_exactly_or_raise_a_remote_error(data):
    decoder = FrameDecoder(max_frame=256)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    for _ in range(len(data) + 2):
        try:
            event = decoder.next_event()
        except RemoteProtocolError:
            continue  # a bad frame is consumed (or the stream truncated): go on
        if event is EOF:
            return
        assert event is not NEED_DATA  # after EOF every call gives an answer
        again = encode_frame(event.frame, seq=event.seq, epoch=event.epoch)[4:]
        assert decode_frame(again) == event  # what came out is a frame that survives its own round trip
    raise AssertionError("the decoder never reached EOF")


@settings(max_examples=300)
@given(junk=st.binary(max_size=100), oversized=st.booleans())
def test_a_refused_frame_leaves_the_decoder_in_step_with_the_stream(junk, oversized):
    # One frame of random bytes (or one longer than allowed), then a good
    # frame: the junk decodes exactly or is refused with RemoteProtocolError,
    # and either way the good frame after it comes out intact.
    good = encode_frame(Message(CW, 0, 1, 7, "after"), seq=3)
    body = bytes([PROTOCOL_VERSION]) + junk + (bytes(300) if oversized else b"")
    decoder = FrameDecoder(max_frame=256)
    decoder.receive_data(len(body).to_bytes(4, "big") + body + good)
    try:
        event = decoder.next_event()
    except RemoteProtocolError:
        pass
    else:
        assert not oversized
        _assert_exact(event, body)
    assert decoder.next_event() == decode_frame(good[4:])
    assert decoder.next_event() is NEED_DATA


@settings(max_examples=500)
@given(
    kind=st.integers(0, 12),
    epoch=st.sampled_from([0, 1, 2**32 - 1]),
    seq=st.sampled_from([0, 1, 2**64 - 1]),
    body=st.one_of(
        st.binary(max_size=60),
        # Bodies of the exact sizes of the frame types (ack, token, message, finalize, hello...).
        st.sampled_from([0, 4, 6, 8, 18, 20, 29, 32, 50]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    ),
)
def test_random_payloads_decode_exactly_or_raise_remote_error(kind, epoch, seq, body):
    # A valid header over a random body, so that every frame type's decoder
    # is reached: what it accepts must be exactly what was sent.
    payload = struct.pack(">BBIQ", PROTOCOL_VERSION, kind, epoch, seq) + body
    try:
        received = decode_frame(payload)
    except RemoteProtocolError:
        return
    _assert_exact(received, payload)


@given(
    version=st.integers(0, 3),
    epoch=u32,
    seq=st.integers(0, 3),
    direction=st.integers(0, 3),
    fields=st.tuples(u32, u32, u64),
    delivered=st.integers(0, 3),
    text=st.binary(max_size=20),
)
def test_message_payloads_decode_exactly_or_are_refused(version, epoch, seq, direction, fields, delivered, text):
    # Messages are decoded and encoded with their own one-piece layouts:
    # whatever decode_frame accepts must be exactly what was sent
    # (re-encoding gives the same bytes), the rest a RemoteProtocolError.
    payload = struct.pack(">BBIQBIIQB", version, 6, epoch, seq, direction, *fields, delivered) + text
    try:
        received = decode_frame(payload)
    except RemoteProtocolError:
        assert version != PROTOCOL_VERSION or seq == 0 or direction > 1 or delivered > 1 or not _utf8(text)
        return
    assert isinstance(received.frame, Message)
    assert encode_frame(received.frame, seq=received.seq, epoch=received.epoch)[4:] == payload


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_version_and_bad_fields_are_rejected():
    wire = encode_frame(Token(CW), seq=1)[4:]
    with pytest.raises(RemoteProtocolError, match="protocol version 1, this node speaks 3"):
        decode_frame(bytes([1]) + wire[1:])  # a node from before the handshake's proofs
    with pytest.raises(RemoteProtocolError, match="with link sequence 0"):
        decode_frame(wire[:6] + bytes(8) + wire[14:])
    with pytest.raises(RemoteProtocolError, match="bad frame"):
        decode_frame(wire[:-1] + b"\x07")  # busy flag must be 0 or 1
    with pytest.raises(RemoteProtocolError, match="longer than"):
        decoder = FrameDecoder(max_frame=10)
        decoder.receive_data(encode_frame(Message(CW, 0, 1, 1, "x" * 50), seq=1))
        decoder.next_event()


# --- node core ---------------------------------------------------------------------


def sends(actions):
    return [(a.direction, a.frame) for a in actions if isinstance(a, Send)]


def inject(node0: NodeCore):
    """Node 0's start: the probe goes out; when it is back, the tokens go in."""
    assert sends(node0.start()) == [(CW, Probe())]
    assert node0.start() == []  # one probe only
    return node0.receive(Probe())


def test_probe_travels_clockwise_and_tokens_follow_only_when_it_is_back():
    node0, node2 = NodeCore(0, (0, 2)), NodeCore(2, (0, 2))
    assert sends(node2.start()) == []
    assert sends(node2.receive(Probe())) == [(CW, Probe())]
    assert not node0.started
    assert sends(inject(node0)) == [(CW, Token(CW)), (CCW, Token(CCW))]
    assert node0.receive(Probe()) == []  # a view's tokens are injected once


def test_token_visit_send_forward_deliver_return():
    ring = (0, 1, 2)
    node1 = NodeCore(1, ring, [(2, "hi")])
    node2 = NodeCore(2, ring)
    node0 = NodeCore(0, ring)
    # Node 0 has nothing: the tokens pass on at once.
    assert sends(inject(node0)) == [(CW, Token(CW)), (CCW, Token(CCW))]
    # Node 1 sends its message clockwise and keeps the token.
    [(d, msg)] = sends(node1.receive(Token(CW)))
    assert d is CW and (msg.origin, msg.destination, msg.text, msg.delivered) == (1, 2, "hi", False)
    assert node1.holding[CW] is not None and node1.in_flight[CW] == msg
    # Node 2 delivers and forwards it marked delivered.
    actions = node2.receive(msg)
    assert isinstance(actions[0], Deliver) and sends(actions) == [(CW, Message(CW, 1, 2, 1, "hi", True))]
    # Node 0 forwards; back at node 1 the outcome is recorded and the token passes on, marked busy.
    [(_, back)] = sends(node0.receive(sends(actions)[0][1]))
    actions = node1.receive(back, now=5.0)
    assert isinstance(actions[0], Returned) and actions[0].message.delivered
    assert sends(actions) == [(CW, Token(CW, 0, busy=True))]
    assert node1.in_flight[CW] is None and node1.holding[CW] is None


def test_one_message_per_visit_and_busy_flag():
    node = NodeCore(1, (0, 1), [(0, "a"), (0, "b")])
    [(_, msg)] = sends(node.receive(Token(CCW)))
    actions = node.receive(replace_delivered(msg))
    # Still one message left: the token leaves (one message per visit), busy.
    assert sends(actions) == [(CCW, Token(CCW, busy=True))]
    assert node.has_pending()


def replace_delivered(msg: Message) -> Message:
    return Message(msg.direction, msg.origin, msg.destination, msg.msg_id, msg.text, True)


def test_node0_parks_clean_tokens_and_finalizes_when_both_are_clean():
    node = NodeCore(0, (0, 1))
    inject(node)
    # A busy round is not enough: a new round starts.
    assert sends(node.receive(Token(CW, 0, busy=True))) == [(CW, Token(CW, 1, busy=False))]
    # A clean cw round parks the cw token; nothing else happens until ccw is clean too.
    assert node.receive(Token(CW, 1, busy=False)) == []
    assert node.parked[CW] is not None
    [(d, fin)] = sends(node.receive(Token(CCW, 0, busy=False)))
    assert d is CW and isinstance(fin, Finalize) and not fin.requested
    [finished] = node.receive(Finalize(False, 3, 3, 0, 2))
    assert isinstance(finished, Finished) and finished.summary.ring.nodes == 2


def test_other_nodes_add_their_counters_forward_finalize_and_finish():
    node = NodeCore(4, (0, 4), [(0, "never sent"), (4, "nor this")])
    actions = node.receive(Finalize(True, 5, 4, 1, 1))
    assert sends(actions) == [(CW, Finalize(True, 5, 4, 3, 2))]
    assert isinstance(actions[-1], Finished) and actions[-1].summary.unsent == 2
    # A second copy (sent again over a new link, NodeCore.link_reset) is dropped: the ring ended here already.
    assert node.receive(Finalize()) == []


def test_the_finalization_command_is_sent_again_on_a_new_link():
    # Node 4 forwarded the command; its successor changes (the old one died
    # with the copy in flight): the new one gets it. A predecessor that
    # connects anew (restarted after the command passed it) gets it back.
    node = NodeCore(4, (0, 2, 4))
    [(_, fin)] = sends(node.receive(Finalize(False, 1, 1, 0, 2)))
    assert sends(node.link_reset(CW)) == [(CW, fin)]
    assert sends(node.link_reset(CCW)) == [(CCW, fin)]
    # Before the command, a reset link is a matter of views, not of this.
    assert NodeCore(2, (0, 2, 4)).link_reset(CW) == []


def test_node0_sends_the_command_again_forward_only_until_it_is_back():
    node = NodeCore(0, (0, 1))
    inject(node)
    node.receive(Token(CW, 0, busy=False))
    [(_, fin)] = sends(node.receive(Token(CCW, 0, busy=False)))
    assert sends(node.link_reset(CW)) == [(CW, fin)]
    assert node.link_reset(CCW) == []  # its predecessor has not had it yet: it comes round
    node.receive(fin)
    assert sends(node.link_reset(CCW)) == [(CCW, fin)]


def test_node0_restarted_after_sending_the_command_finishes_when_it_comes_back():
    # Its first life sent the command; the ring carried it round; the last
    # node sends it again over the new link to the restarted node 0.
    node = NodeCore(0, (0, 1))
    [finished] = node.receive(Finalize(False, 3, 3, 0, 2))
    assert isinstance(finished, Finished) and finished.summary.ring.nodes == 2


def test_stop_waits_for_the_message_in_flight():
    node = NodeCore(0, (0, 1), [(1, "x"), (1, "y")])
    [(_, msg), (_, ccw_msg)] = sends(inject(node))
    assert node.request_stop() == []  # both tokens wait for their messages
    assert sends(node.receive(replace_delivered(msg))) == []  # cw parked
    [(_, fin)] = sends(node.receive(replace_delivered(ccw_msg)))
    assert fin.requested and fin.sent == 2


def test_stop_elsewhere_travels_to_node0():
    node = NodeCore(2, (0, 1, 2))
    assert sends(node.request_stop()) == [(CW, StopRequest(2))]
    assert sends(node.receive(StopRequest(1))) == [(CW, StopRequest(1))]


def test_only_frames_the_node_does_not_act_on_are_transit():
    ring = (0, 1, 2, 3)
    idle, sender, node0 = NodeCore(1, ring), NodeCore(2, ring, [(3, "hi")]), NodeCore(0, ring)
    # Another node's message passes through; one from or to this node does not.
    assert idle.is_transit(Message(CW, 2, 3, 1, "x"))
    assert not idle.is_transit(Message(CW, 2, 1, 1, "x"))
    assert not idle.is_transit(Message(CW, 1, 3, 1, "x"))
    # A token passes through a node with nothing to send, not one with a message waiting, and never node 0.
    assert idle.is_transit(Token(CW)) and idle.is_transit(Token(CCW, 4, busy=True))
    assert not sender.is_transit(Token(CW))
    assert not node0.is_transit(Token(CW))
    # A node holding a token (its message in flight) must see a second one: not transit, a protocol error.
    [(_, msg)] = sends(sender.receive(Token(CW)))
    assert not sender.has_pending() and not sender.is_transit(Token(CW)) and sender.is_transit(Token(CCW))
    # Control frames always reach the token tasks.
    assert not any(idle.is_transit(f) for f in (Probe(), Finalize(), StopRequest(3)))
    # After finalization a token is a protocol error, so it is not transit either.
    idle.receive(Finalize())
    assert not idle.is_transit(Token(CW))
    # What receive() does with a transit frame: forward it unchanged, count it.
    other = NodeCore(1, ring)
    assert sends(other.receive(Token(CW, 2))) == [(CW, Token(CW, 2))]
    assert sends(other.receive(msg)) == [(CW, msg)] and other.forwarded == 1 and other.delivered == 0


def test_a_second_token_is_a_protocol_error():
    node = NodeCore(1, (0, 1, 2), [(0, "x")])
    node.receive(Token(CW))
    with pytest.raises(RemoteProtocolError, match="second cw token"):
        node.receive(Token(CW))


def test_a_message_this_node_did_not_send_is_dropped_at_its_origin():
    # A forged or stale message naming this node as origin: dropped, not
    # delivered, not forwarded, and not a crash of the node.
    node = NodeCore(1, (0, 1))
    assert node.receive(Message(CW, 1, 0, 9, "?", True)) == []
    assert node.receive(Message(CW, 1, 1, 9, "to myself")) == []  # not even delivered
    assert (node.dropped, node.delivered, node.forwarded) == (2, 0, 0)
    # One with the id of the message in flight but another text is not it either.
    sender = NodeCore(1, (0, 1), [(0, "real")])
    [(_, real)] = sends(sender.receive(Token(CW)))
    assert sender.receive(real._replace(text="forged", delivered=True)) == []
    assert [type(a) for a in sender.receive(real._replace(delivered=True))] == [Returned, Send]
    assert sender.receive(real._replace(delivered=True)) == []  # a second return: dropped
    assert sender.dropped == 2 and sender.returned == 1


@pytest.mark.parametrize("origin, destination", [(999, 0), (0, 999), (999, 999)])
def test_a_message_naming_a_node_outside_the_ring_is_refused(origin, destination):
    # Refused by is_transit, which the link calls on every data frame before
    # anything else (so the link drops the connection), and by receive().
    for me in (0, 1, 2):
        node = NodeCore(me, (0, 1, 2))
        msg = Message(CW, origin, destination, 1, "evil")
        with pytest.raises(RemoteProtocolError, match="not in the ring"):
            node.is_transit(msg)
        with pytest.raises(RemoteProtocolError, match="not in the ring"):
            node.receive(msg)
        assert node.delivered == node.forwarded == 0
    with pytest.raises(RemoteProtocolError, match="not in the ring"):
        NodeCore(1, (0, 1, 2)).is_transit(StopRequest(999))


@settings(max_examples=200)
@given(
    size=st.integers(1, 6),
    start=st.integers(0, 5),
    origin=st.integers(0, 7),
    destination=st.integers(0, 7),
    direction=directions,
    delivered=st.booleans(),
)
def test_no_injected_message_goes_round_more_than_once(size, start, origin, destination, direction, delivered):
    # A message no node sent, put on the ring at any node: it is refused at
    # once (a node outside the ring) or dropped by its origin within one
    # round; it is never forwarded past its origin.
    ring = tuple(range(size))
    nodes = {i: NodeCore(i, ring) for i in ring}
    step = 1 if direction is CW else -1
    at, frame, hops = start % size, Message(direction, origin, destination, 7, "injected", delivered), 0
    if origin not in ring or destination not in ring:
        with pytest.raises(RemoteProtocolError):
            nodes[at].is_transit(frame)
        return
    while True:
        out = sends(nodes[at].receive(frame))
        if not out:
            break
        [(_, frame)] = out
        hops += 1
        assert hops < size, "the message passed its origin"
        at = (at + step) % size
    assert at == origin and nodes[origin].dropped == 1
    assert sum(n.delivered for n in nodes.values()) <= 1


def test_ring_of_one_sends_to_itself():
    node = NodeCore(0, (0,), [(0, "me")])
    [(_, msg), (_, ccw)] = sends(inject(node))
    assert ccw == Token(CCW)
    actions = node.receive(msg)  # back at once: delivered and returned in one step
    assert [type(a) for a in actions] == [Deliver, Returned, Send]
    node.receive(Token(CCW))  # ccw came back clean: parked
    assert node.parked[CCW] is not None
    [(_, tok)] = sends(node.receive(Token(CW, 0, True)))
    assert tok == Token(CW, 1, False)
    [(_, fin)] = sends(node.receive(tok))
    assert isinstance(fin, Finalize)


def test_a_stop_before_the_ring_closes_finalizes_without_tokens():
    node = NodeCore(0, (0, 1), [(1, "never sent")])
    node.start()
    assert node.request_stop() == []
    [(d, fin)] = sends(node.receive(Probe()))
    assert d is CW and fin == Finalize(True, 0, 0, 1, 1)
    assert node.holding == {CW: None, CCW: None}
