"""SessionRules, the sans-IO quota and time rules of an admitted session."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.names.session import SessionRules


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
