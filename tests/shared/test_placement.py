"""trionet.placement: the plan of a look, the shared board, and connections passed between workers."""

from __future__ import annotations

import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trionet.placement import (
    GONE,
    MAX_HANDOVER_BYTES,
    SLACK,
    LoadBoard,
    Placer,
    clear,
    next_tick,
    plan,
    receive_handoffs,
    wanted,
)


def test_two_client_threads_on_two_cpus_are_grouped_in_one_look():
    # Worker 0 serves 8 connections of thread A (CPU 0) and 8 of B (CPU 1); worker 1 the same.
    loads, wants = [16, 16], [[8, 8], [8, 8]]
    assert clear(loads, wants)
    assert plan(loads, wants) == [[0, 8], [8, 0]]


def test_one_thread_with_many_connections_is_not_a_clear_look():
    # Every connection's client is on CPU 0: grouping would put all 32 on worker 0.
    assert not clear([16, 16], [[16, 0], [16, 0]])
    # And the plan alone would keep the workers even: one move.
    assert plan([16, 16], [[0, 0], [16, 0]]) == [[0, 0], [1, 0]]


def test_a_worker_gone_or_draining_takes_and_moves_nothing():
    loads, wants = [16, GONE, 16], [[0, 4, 4], [0, 0, 0], [4, 4, 0]]
    moves = plan(loads, wants)
    assert moves[0][1] == moves[2][1] == 0
    assert moves[1] == [0, 0, 0]
    assert not clear([16, GONE], [[8, 8], [0, 0]])  # one live worker: nothing to group


def test_an_unknown_cpu_wants_no_worker():
    assert wanted(-1, 2) is None
    assert wanted(3, 2) == 1


def test_ticks_are_shared_moments():
    assert next_tick(10.0) == 20  # (0.5 s apart)
    assert next_tick(10.01) == 21
    assert next_tick(10.0, 1.0) == 22


@given(
    st.integers(2, 5).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 40), min_size=n, max_size=n),
            st.lists(st.lists(st.integers(0, 20), min_size=n, max_size=n), min_size=n, max_size=n),
        )
    )
)
def test_a_plan_never_moves_more_than_want_and_never_overfills(case):
    loads, wants = case
    n = len(loads)
    # A worker cannot want more than it serves.
    wants = [[min(w, loads[i]) for w in row] for i, row in enumerate(wants)]
    for i in range(n):
        while sum(wants[i]) > loads[i]:
            j = max(range(n), key=lambda k: wants[i][k])
            wants[i][j] -= 1
    moves = plan(loads, wants)
    share = -(-sum(loads) // n) + SLACK
    for w in range(n):
        assert moves[w][w] == 0
        for t in range(n):
            assert 0 <= moves[w][t] <= wants[w][t]
    for t in range(n):
        leaving = sum(wants[t][u] for u in range(n) if u != t)
        arriving = sum(moves[w][t] for w in range(n))
        # What stays in t plus what arrives is at most an even share plus the slack
        # (or nothing arrives: t already holds more than that).
        assert arriving == 0 or loads[t] - leaving + arriving <= share


def test_the_board_keeps_each_look_apart():
    board = LoadBoard(["sql", "pg"], 2)
    try:
        assert board.loads("pg") == [GONE, GONE]
        board.set("pg", 0, 5)
        board.set("sql", 1, 2)
        assert board.loads("pg") == [5, GONE]
        assert board.loads("sql") == [GONE, 2]
        board.set_wants("pg", 1, 7, [3, 1])
        assert board.wants("pg", 7) == [[0, 0], [3, 1]]
        assert board.wants("pg", 8) == [[0, 0], [0, 0]]  # an older look's row counts as nothing
        board.gone(0)
        assert board.loads("pg")[0] == GONE
    finally:
        board.close()


def test_a_placer_moves_only_in_a_clear_look_and_only_its_share():
    board = LoadBoard(["pg"], 2)
    try:
        zero, one = (Placer(board, "pg", index, []) for index in (0, 1))
        zero.publish(2)
        one.publish(2)
        for placer, targets in ((zero, [0, 1]), (one, [0, 1])):
            for target in targets:
                placer.note(40, target)
        assert zero.decide(40, 0) == "stay"
        assert zero.decide(40, 1) == "move"
        assert zero.decide(40, 1) == "stay"  # the plan had one move to worker 1, taken
        assert zero.decide(40, None) == "again"
        # A look where both want worker 0 is not clear: nobody moves, all look again.
        for placer in (zero, one):
            placer.note(41, 0)
            placer.note(41, 0)
        assert one.decide(41, 0) == "again"
    finally:
        board.close()


def test_hand_over_refuses_a_state_too_big():
    board = LoadBoard(["pg"], 2)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        placer = Placer(board, "pg", 0, [None, a])
        with socket.socket() as sock:
            assert not placer.hand_over(1, sock, b"x" * (MAX_HANDOVER_BYTES + 1))
            assert placer.hand_over(1, sock, b"{}")
        assert placer.moved_out == 1
        data, fds, _, _ = socket.recv_fds(b, 1024, 4)
        assert data == b"pg\0{}" and len(fds) == 1
        socket.socket(fileno=fds[0]).close()
    finally:
        board.close()
        a.close()
        b.close()


class _Taker:
    def __init__(self) -> None:
        self.taken: list[tuple[socket.socket, bytes]] = []

    def take(self, sock: socket.socket, state: bytes) -> None:
        self.taken.append((sock, state))


async def test_handed_connections_reach_their_port_and_strays_are_closed():
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    taker = _Taker()
    left, right = socket.socketpair()
    stray_left, stray_right = socket.socketpair()
    try:
        socket.send_fds(sender, [b"pg\0state"], [left.fileno()])
        socket.send_fds(sender, [b"nosuchport\0x"], [stray_left.fileno()])
        stray_left.close()
        with trio.move_on_after(1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_handoffs, receiver, {"pg": taker})
                while len(taker.taken) < 1:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        ((sock, state),) = taker.taken
        assert state == b"state"
        sock.sendall(b"hello")
        assert right.recv(5) == b"hello"  # the same connection, through the passed descriptor
        sock.close()
        # The stray's descriptor was closed: its peer reads EOF.
        stray_right.settimeout(2)
        assert stray_right.recv(1) == b""
    finally:
        for s in (receiver, sender, left, right, stray_right):
            s.close()


@pytest.mark.parametrize("serving", [True, False])
async def test_a_service_serves_a_moved_connection_with_its_state_or_closes_it(nursery, serving):
    import logging

    from trionet.serving import TCPService

    seen: list[bytes | None] = []

    async def handler(conn):
        seen.append(conn.handed)
        await conn.stream.send_all(b"served")

    service = TCPService("test", handler, logging.getLogger("test"))
    if serving:
        await nursery.start(service.serve, "127.0.0.1", 0)
    left, right = socket.socketpair()
    with right:
        service.take(left, b"state")
        right.settimeout(5)
        data = await trio.to_thread.run_sync(right.recv, 16)
    if serving:
        assert data == b"served" and seen == [b"state"]
        assert service.accepted_total == 0  # counted where it was accepted
    else:
        assert data == b"" and seen == []


def test_a_burst_of_new_connections_shares_its_first_look():
    board = LoadBoard(["pg"], 2)
    try:
        placer = Placer(board, "pg", 0, [])
        first = placer.first_look(100.2)
        assert first == next_tick(100.2, 1.0)
        # A pool opened over more than a tick, each connection soon after the one before.
        assert [placer.first_look(t) for t in (100.5, 100.9, 101.3)] == [first] * 3
        assert placer.first_look(105.0) == next_tick(105.0, 1.0)  # a new burst
    finally:
        board.close()
