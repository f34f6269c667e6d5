"""AdmissionLimit: at most `limit` inside, FIFO waiting room with places, leaving the line."""

from functools import partial

import pytest
import trio
import trio.testing

from trionet.limits import AdmissionLimit, WaitingRoomFull


async def test_fifo_admission_and_places(autojump_clock):
    room = AdmissionLimit(2, backlog=10)
    inside = 0
    most_inside = 0
    admitted: list[int] = []
    places: dict[int, list[int]] = {i: [] for i in range(7)}

    async def client(i: int) -> None:
        nonlocal inside, most_inside

        async def on_wait(place: int) -> None:
            places[i].append(place)

        async with room.admit(on_wait=on_wait) as ticket:
            admitted.append(i)
            inside += 1
            most_inside = max(most_inside, inside)
            assert ticket.admitted is not None
            await trio.sleep(1 + i / 100)  # distinct ends, so one slot frees at a time
            inside -= 1

    async with trio.open_nursery() as nursery:
        for i in range(7):
            nursery.start_soon(client, i)
            await trio.testing.wait_all_tasks_blocked()
    assert admitted == list(range(7))
    assert most_inside == 2
    assert places[0] == places[1] == []
    assert places[2] == [1]
    # Client 6 arrived fifth in line and moved up one place at a time.
    assert places[6] == [5, 4, 3, 2, 1]
    assert room.in_use == 0 and room.waiting == 0


async def test_waiting_room_full_is_refused_at_once():
    room = AdmissionLimit(1, backlog=1)
    async with room.admit():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(room.enter)
            await trio.testing.wait_all_tasks_blocked()
            assert room.waiting == 1
            with pytest.raises(WaitingRoomFull):
                await room.enter()
            assert room.turned_away == 1
            nursery.cancel_scope.cancel()
    assert room.in_use == 0 and room.waiting == 0


async def test_no_waiting_room():
    room = AdmissionLimit(1, backlog=0)
    async with room.admit():
        with pytest.raises(WaitingRoomFull):
            await room.enter()


async def test_a_waiter_that_leaves_frees_its_place(autojump_clock):
    room = AdmissionLimit(1)
    seen: list[tuple[str, int]] = []
    order: list[str] = []

    async def waiter(name: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)

            async def on_wait(place: int) -> None:
                seen.append((name, place))

            async with room.admit(on_wait=on_wait):
                order.append(name)

    first = await room.enter()
    async with trio.open_nursery() as nursery:
        b_scope = await nursery.start(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(waiter, "c")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [("b", 1), ("c", 2)]
        b_scope.cancel()  # b's client hung up
        await trio.testing.wait_all_tasks_blocked()
        assert seen[-1] == ("c", 1)
        assert room.waiting == 1
        room.leave(first)
    assert order == ["c"]
    assert room.in_use == 0


async def test_failing_on_wait_leaves_the_line():
    room = AdmissionLimit(1)

    async def on_wait(place: int) -> None:
        raise trio.BrokenResourceError("client gone")

    async with room.admit():
        with pytest.raises(BaseExceptionGroup) as info:
            await room.enter(on_wait=on_wait)
        assert info.group_contains(trio.BrokenResourceError)
        assert room.waiting == 0
    assert room.in_use == 0


async def test_cancel_at_the_hand_off_does_not_leak_the_slot():
    room = AdmissionLimit(1)
    first = await room.enter()
    got = []
    scope = trio.CancelScope()

    async def waiter() -> None:
        with scope:
            got.append(await room.enter(on_wait=lambda place: trio.sleep(0)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        room.leave(first)  # the slot goes to the waiter...
        scope.cancel()  # ...which is cancelled before it runs again
    for ticket in got:
        room.leave(ticket)
    assert room.in_use == 0, "a cancelled waiter kept its slot"


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        AdmissionLimit(0)
    with pytest.raises(ValueError):
        AdmissionLimit(1, backlog=-1)
    with pytest.raises(ValueError):
        AdmissionLimit(1, per_key=0)


async def test_try_enter_never_waits_and_never_jumps_the_line():
    room = AdmissionLimit(1)
    first = room.try_enter()
    assert first is not None and room.try_enter() is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(room.enter)
        await trio.testing.wait_all_tasks_blocked()
        room.leave(first)  # the slot goes to the waiter, not to a later try_enter
        assert room.try_enter() is None
        nursery.cancel_scope.cancel()


# --- the per-key share and the wait timeout ---------------------------------------


async def test_one_key_holds_at_most_its_share_of_slots_and_places():
    from trionet.limits import ShareExceeded

    room = AdmissionLimit(2, backlog=10, per_key=3)
    a1 = room.try_enter(key="a")
    a2 = await room.enter(key="a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(room.enter, key="a"))  # a's third: a place in line
        await trio.testing.wait_all_tasks_blocked()
        assert room.held_by("a") == 3 and room.waiting == 1
        with pytest.raises(ShareExceeded) as info:
            await room.enter(key="a")
        assert info.value.key == "a" and info.value.per_key == 3
        with pytest.raises(ShareExceeded):
            room.try_enter(key="a")
        # Another key still gets its place in line, and None counts against nobody.
        nursery.start_soon(partial(room.enter, key="b"))
        nursery.start_soon(room.enter)
        await trio.testing.wait_all_tasks_blocked()
        assert room.waiting == 3 and room.held_by("b") == 1 and room.over_share == 2
        nursery.cancel_scope.cancel()
    # Cancelled waiters gave their share back; leaving gives back the rest.
    assert room.held_by("a") == 2 and room.held_by("b") == 0
    room.leave(a1)
    room.leave(a2)
    assert room.held_by("a") == 0 and room.in_use == 0


async def test_no_share_without_per_key():
    room = AdmissionLimit(5)
    tickets = [await room.enter(key="a") for _ in range(5)]
    assert room.held_by("a") == 0
    for ticket in tickets:
        room.leave(ticket)


async def test_a_waiter_leaves_the_line_at_its_timeout(autojump_clock):
    from trionet.limits import WaitTimeout

    room = AdmissionLimit(1, per_key=5)
    first = await room.enter(key="x")
    places = []

    async def on_wait(place: int) -> None:
        places.append(place)

    start = trio.current_time()
    with pytest.raises(WaitTimeout) as info:
        await room.enter(key="x", timeout=60, on_wait=on_wait)
    assert trio.current_time() - start == 60 and info.value.timeout == 60
    assert places == [1] and room.waiting == 0 and room.timed_out == 1
    assert room.held_by("x") == 1  # only the slot it holds
    room.leave(first)
    # A waiter admitted in time keeps its slot and is not counted as timed out.
    async with trio.open_nursery() as nursery:
        holder = await room.enter()
        nursery.start_soon(partial(room.enter, timeout=60))
        await trio.sleep(59)
        room.leave(holder)
    assert room.in_use == 1 and room.timed_out == 1


def test_client_keys():
    from trionet.limits import client_key

    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("::ffff:127.0.0.2") == "127.0.0.2"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("memory") == "memory"
