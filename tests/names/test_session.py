"""The sans-IO session core: SessionRules (quota and time rules) and Session (stages, waiting input, bye)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.framing import EOF, NEED_DATA, Frame, LengthPrefixFramer, encode_length_prefixed
from trionet.names import protocol
from trionet.names.session import (
    WAIT_BUFFER,
    Keep,
    Session,
    SessionRules,
    Stage,
    busy_message,
    share_message,
    wait_timeout_message,
)


def test_read_deadline_is_the_earlier_of_idle_and_session():
    rules = SessionRules(quota=4, idle_timeout=30, session_timeout=60)
    assert rules.read_deadline(admitted=100, now=100) == (130, "idle-timeout")
    assert rules.read_deadline(admitted=100, now=140) == (160, "session-timeout")
    assert rules.read_deadline(admitted=100, now=130) == (160, "session-timeout")  # a tie: the session ends
    assert SessionRules(idle_timeout=30).read_deadline(0, 1000) == (1030, "idle-timeout")
    assert SessionRules(session_timeout=60).read_deadline(0, 1000) == (60, "session-timeout")
    assert SessionRules().read_deadline(0, 1000) == (math.inf, "")


def test_end_reason():
    rules = SessionRules(quota=4, session_timeout=60)
    assert rules.end_reason(3, admitted=0, now=59.9) == ""
    assert rules.end_reason(3, admitted=0, now=60) == "session-timeout"
    assert rules.end_reason(4, admitted=0, now=60) == "quota-reached"  # the quota comes first
    assert SessionRules().end_reason(10**6, 0, 10**9) == ""


@given(
    st.integers(0, 5),
    st.floats(0, 100),
    st.floats(0, 100),
    st.floats(0, 1000),
    st.floats(0, 1000),
)
@settings(max_examples=300, deadline=None)
def test_a_session_never_outlives_its_timeouts(quota, idle, session, admitted, elapsed):
    rules = SessionRules(quota, idle, session)
    now = admitted + elapsed
    deadline, reason = rules.read_deadline(admitted, now)
    if idle:
        assert deadline <= now + idle
    if session:
        assert deadline <= admitted + session
        assert (rules.end_reason(0, admitted, now) == "session-timeout") == (now >= admitted + session)
    if deadline < math.inf:
        assert reason in ("idle-timeout", "session-timeout")
    else:
        assert not idle and not session and reason == ""


# --- Session: the stages, what a waiting client's input becomes, the quota and the bye ---------


def test_a_waiting_session_keeps_requests_until_the_cap():
    session = Session(SessionRules(quota=4), wait_buffer=10)
    proto = protocol.ServerLineProtocol()
    assert session.stage is Stage.WAITING
    assert session.keep(b"gw\npri", proto) is Keep.READ_MORE  # 6 bytes kept
    assert list(session.pending) == [protocol.Query("gw", "A", "gw")]
    assert session.keep(b"nter\n", proto) is Keep.STOP_READING  # 11 >= 10: read no more
    assert [q.name for q in session.pending] == ["gw", "printer"]
    assert session.kept == 11


def test_the_default_cap_is_64_kib():
    assert WAIT_BUFFER == 65536
    session = Session(SessionRules())
    proto = protocol.ServerLineProtocol()
    assert session.keep(b"x" * 65535, proto) is Keep.READ_MORE
    assert session.keep(b"x", proto) is Keep.STOP_READING


def test_a_client_that_closes_before_asking_leaves_the_line():
    session = Session(SessionRules())
    proto = protocol.ServerLineProtocol()
    assert session.keep(b"half a li", proto) is Keep.READ_MORE
    assert session.keep(b"", proto) is Keep.LEAVE_LINE  # a cut-off line is no request
    assert not session.pending


def test_a_client_that_half_closes_after_asking_keeps_its_place():
    session = Session(SessionRules())
    framer = LengthPrefixFramer(2, 65535)
    assert session.keep(encode_length_prefixed(b"\x12\x34query", 2), framer) is Keep.READ_MORE
    assert session.keep(b"", framer) is Keep.STOP_READING
    assert list(session.pending) == [Frame(b"\x12\x34query"), EOF]


def test_quota_and_session_deadline_after_each_answer():
    session = Session(SessionRules(quota=3, session_timeout=60))
    session.admit(100.0)
    assert session.stage is Stage.ADMITTED and session.session_deadline() == 160
    assert session.after_answer(101) == ""
    assert session.after_answer(159.9) == ""
    assert session.after_answer(160) == "quota-reached"  # the quota comes first
    assert session.stage is Stage.CLOSING and session.ending == "quota-reached"
    assert session.bye() == "3 queries answered, the quota of this server; connect again for more"
    assert session.lets_client_close_first

    late = Session(SessionRules(quota=3, session_timeout=60))
    late.admit(0)
    assert late.after_answer(60) == "session-timeout"
    assert late.bye() == "admitted 60 seconds ago, the longest a session may last; connect again for more"


def test_count_is_the_dns_ports_quota():
    session = Session(SessionRules(quota=2))
    session.admit(0)
    assert session.count() is False
    assert session.count() is True and session.ending == "quota-reached"
    unlimited = Session(SessionRules(quota=0))
    unlimited.admit(0)
    assert not any(unlimited.count() for _ in range(1000)) and unlimited.ending == ""


def test_the_first_reason_to_end_stays_but_shutdown_wins():
    session = Session(SessionRules(idle_timeout=30))
    session.admit(0)
    assert session.read_deadline(5) == (35, "idle-timeout")
    session.end("idle-timeout")
    session.end("session-timeout")
    assert session.ending == "idle-timeout" and session.bye() == "no query for 30 seconds; goodbye"
    assert not session.lets_client_close_first  # an idle client is closed at once
    quota = Session(SessionRules(quota=1))
    quota.admit(0)
    assert quota.count() and quota.lets_client_close_first
    quota.end("shutdown")  # the shutdown watcher, a moment later: no waiting for the client then
    assert quota.ending == "shutdown" and not quota.lets_client_close_first
    assert session.bye("shutdown") == "the server is shutting down"
    assert session.bye("quit") == "goodbye"


def test_refusal_sentences():
    assert busy_message(3, 64) == "all 3 slots are busy and 64 client(s) are waiting; try again later"
    assert share_message("127.0.0.2", 8) == (
        "per-address: 127.0.0.2 already has 8 connection(s) served or waiting, "
        "the most one address may have; try again when one has closed"
    )
    assert wait_timeout_message(60.0) == "no slot came free within 60 seconds; try again later"


@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(1, 200))
@settings(max_examples=300, deadline=None)
def test_what_a_waiting_session_keeps_is_what_one_decoder_would_read(chunks, cap):
    # Fed in any chunks, a waiting session keeps exactly the requests a
    # decoder reads from the same bytes, stops at the cap, and its decoder
    # goes on where the session stopped.
    session = Session(SessionRules(), wait_buffer=cap)
    proto = protocol.ServerLineProtocol(max_line=16)
    fed = b""
    for chunk in chunks:
        if not chunk:
            continue
        kept = session.keep(chunk, proto)
        fed += chunk
        assert session.kept == len(fed)
        if kept is Keep.STOP_READING:
            assert len(fed) >= cap
            break
        assert kept is Keep.READ_MORE and len(fed) < cap
    reference = protocol.ServerLineProtocol(max_line=16)
    if fed:  # (b"" would mean EOF)
        reference.receive_data(fed)
    expected = []
    while (event := reference.next_event()) is not NEED_DATA:
        expected.append(event)
    assert list(session.pending) == expected
    proto.receive_data(b"\nwww.test\n")
    events = []
    while (event := proto.next_event()) is not NEED_DATA:
        events.append(event)
    assert events[-1] == protocol.Query("www.test", "A", "www.test")
