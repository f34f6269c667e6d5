"""The server's connection rules, without sockets or a clock: admission, idle, shutdown, row caps, query time."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from trionet.sql import protocol, rules


def _bye(frame: bytes) -> protocol.Bye:
    return protocol.parse_reply(frame.rstrip(b"\n"))


def test_admission_refuses_only_the_connection_over_the_limit():
    assert rules.admission_bye(2, max_connections=2) is None
    bye = _bye(rules.admission_bye(3, max_connections=2))
    assert bye.code == "busy" and "2 connections" in bye.reason


def test_the_shutdown_bye_has_its_code():
    assert _bye(rules.SHUTDOWN_BYE) == protocol.Bye("server shutting down", "shutdown")


def test_a_request_running_at_shutdown_is_interrupted_before_the_grace_ends():
    assert rules.shutdown_interrupt_at(now=100.0, grace_deadline=110.0) == 109.0  # a second before
    assert rules.shutdown_interrupt_at(now=100.0, grace_deadline=101.0) == 100.5  # half of a short grace


def test_idle_check_closes_a_quiet_connection_with_the_right_bye():
    policy = rules.IdlePolicy(idle_timeout=300, idle_transaction_timeout=60)
    wake, bye = policy.check(now=100.0, last_active=50.0, busy=False, in_transaction=False)
    assert bye is None and wake == 160.0  # the shorter limit: it may open a transaction meanwhile
    wake, bye = policy.check(now=111.0, last_active=50.0, busy=False, in_transaction=True)
    assert _bye(bye).code == "idle_transaction" and "rolled back" in _bye(bye).reason
    assert policy.check(now=1000.0, last_active=50.0, busy=True, in_transaction=True)[1] is None  # busy: never idle
    assert _bye(policy.check(now=350.0, last_active=50.0, busy=False, in_transaction=False)[1]).code == "idle"
    assert rules.IdlePolicy(0, 0).check(now=1e9, last_active=0.0, busy=False, in_transaction=True) == (math.inf, None)


def test_the_idle_rule_without_a_clock():
    policy = rules.IdlePolicy(idle_timeout=300, idle_transaction_timeout=60)
    assert policy.deadline(10.0, in_transaction=False)[:2] == (310.0, "idle")
    assert policy.deadline(10.0, in_transaction=True)[:2] == (70.0, "idle_transaction")
    assert rules.IdlePolicy(30, 60).deadline(0.0, True)[:2] == (30.0, "idle")  # the shorter wins
    assert rules.IdlePolicy(0, 0).deadline(0.0, True)[0] == math.inf


@given(
    server_cap=st.integers(0, 50),
    request_cap=st.none() | st.integers(0, 50),
    batch=st.integers(1, 10),
    total=st.integers(0, 120),
)
def test_row_cap_sends_exactly_the_smaller_cap_and_marks_a_cut(server_cap, request_cap, batch, total):
    cap = rules.RowCap(server_cap, request_cap, batch)
    caps = [c for c in (server_cap or None, request_cap) if c is not None]  # the server's 0 is no cap
    expected = min([total, *caps])
    produced = 0
    sent: list[int] = []
    while True:
        want = cap.want()
        assert 1 <= want <= batch
        rows = [(i,) for i in range(produced, min(total, produced + want))]
        produced += len(rows)
        sent += [r[0] for r in cap.take(rows)]
        if cap.truncated or produced == total:
            break
    assert sent == list(range(expected)) and cap.sent == expected
    assert cap.truncated == (expected < total)


def test_the_work_clock_counts_only_what_is_spent():
    clock = rules.WorkClock(query_timeout=1.0)
    assert clock.deadline(begun=10.0) == 11.0
    clock.spend(0.75)
    assert clock.deadline(begun=50.0) == 50.25  # a long wait between calls costs nothing
    assert rules.WorkClock(0).deadline(begun=5.0) == math.inf
