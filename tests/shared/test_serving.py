"""The shared trio layer: the send watchdog and the idle watch (under the mock clock), direct socket I/O, the ready loop."""

from __future__ import annotations

import contextlib
import socket

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trionet.framing import EOF
from trionet.serving import IdleWatch, SendWatchdog


async def test_send_watchdog_cancels_a_stuck_send(autojump_clock):
    sender, receiver = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    watchdog = SendWatchdog(timeout=10)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(watchdog.watch, scope)
            started = trio.current_time()
            await watchdog.send(sender, b"nobody reads this")
        nursery.cancel_scope.cancel()
    assert watchdog.stalled and scope.cancelled_caught
    assert 5 <= trio.current_time() - started <= 10


async def test_send_watchdog_leaves_a_slow_but_steady_reader_alone(autojump_clock):
    sender, receiver = trio.testing.lockstep_stream_pair()
    watchdog = SendWatchdog(timeout=10)

    async def slow_reader() -> None:
        while await receiver.receive_some(1):
            await trio.sleep(4)  # each send waits 4 s: slow, never stuck for 5

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(watchdog.watch, scope)
            nursery.start_soon(slow_reader)
            for _ in range(20):
                await watchdog.send(sender, b"x")
        nursery.cancel_scope.cancel()
    assert not watchdog.stalled and not scope.cancelled_caught


async def test_direct_socket_io_reads_and_sends_without_waiting_when_it_can():
    from trionet.framing import LengthPrefixFramer
    from trionet.serving import DirectSocketIO

    left, right = trio.socket.socketpair()
    ours, theirs = trio.SocketStream(left), trio.SocketStream(right)
    async with ours, theirs:
        io = DirectSocketIO(ours)
        framer = LengthPrefixFramer(2, 100)
        assert io.direct and not io.read_ready(framer)  # nothing has arrived
        await theirs.send_all(b"\x00\x03abc")
        with trio.fail_after(5):
            await io.wait(framer)
        assert io.read_ready(framer) and framer.next_payload() == b"abc"
        assert io.send_now(b"hello") == b""
        assert await theirs.receive_some(100) == b"hello"
        rest = b""
        sent = 0
        while not rest:  # nobody reads: the socket's buffer fills, and the rest is handed back
            rest = io.send_now(b"x" * 65536)
            sent += 65536 - len(rest)
        assert 0 < len(rest) <= 65536
        while sent:  # the peer reads it all
            sent -= len(await theirs.receive_some(sent))
        await theirs.send_eof()
        while io.read_ready(framer) is False:
            await io.wait(framer)
        assert framer.next_event() is EOF


async def test_direct_socket_io_leaves_other_streams_to_their_own_methods():
    from trionet.framing import LengthPrefixFramer
    from trionet.serving import DirectSocketIO

    ours, theirs = trio.testing.memory_stream_pair()
    io = DirectSocketIO(ours)
    framer = LengthPrefixFramer(2, 100)
    assert not io.direct and not io.read_ready(framer) and io.send_now(b"data") == b"data"
    await theirs.send_all(b"\x00\x01z")
    await io.wait(framer)  # the stream's own receive_some
    assert framer.next_payload() == b"z"


async def test_idle_watch_ends_a_wait_at_its_deadline_even_one_set_while_it_slept(autojump_clock):
    idle = IdleWatch()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(idle.watch, scope, 5)
            idle.deadline = trio.current_time() + 300  # a long timeout first (outside a transaction)
            await trio.sleep(12)
            idle.deadline = None  # a request came
            await trio.sleep(1)
            started = trio.current_time()
            idle.deadline = started + 7  # the next wait has a shorter one (in a transaction)
            await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    assert idle.expired and scope.cancelled_caught
    assert abs(trio.current_time() - started - 7) < 1e-6


async def test_idle_watch_leaves_a_loop_that_keeps_getting_requests_alone(autojump_clock):
    idle = IdleWatch()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(idle.watch, scope, 5)
            for _ in range(100):
                idle.deadline = trio.current_time() + 5
                await trio.sleep(4.9)
                idle.deadline = None
                await trio.sleep(3)  # busy with a request: no deadline however long it takes
        nursery.cancel_scope.cancel()
    assert not idle.expired and not scope.cancelled_caught


def _socketpair():
    """Plain sockets (synchronous send and recv, as a ReadyLoop's serve() uses them), not blocking."""
    left, right = socket.socketpair()
    left.setblocking(False)
    return left, right


async def _parked_pair(ready, serve, nursery):
    """A socketpair whose first end a task parks in ``ready``; returns (theirs, the task's results)."""
    left, right = _socketpair()
    results: list = []

    async def task() -> None:
        try:
            results.append(await ready.park(left, serve))
        except Exception as exc:
            results.append(exc)
        finally:
            left.close()

    nursery.start_soon(task)
    await trio.testing.wait_all_tasks_blocked()
    return right, results


async def test_ready_loop_serves_parked_sockets_in_batches_without_waking_their_tasks():
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=False)  # a task: wait_all_tasks_blocked() means it has served
    seen: list[bytes] = []
    socks = {}

    def server(name):
        def serve() -> bool:
            data = socks[name].recv(100)
            seen.append(data)
            return data != b"bye"  # hand the connection back on "bye"

        return serve

    async with trio.open_nursery() as nursery:
        await nursery.start(ready.run)
        pairs = {}
        for name in ("a", "b", "c"):
            left, right = _socketpair()
            socks[name] = left
            results: list = []

            async def task(left=left, name=name, results=results) -> None:
                results.append(await ready.park(left, server(name)))

            nursery.start_soon(task)
            pairs[name] = (right, results)
        await trio.testing.wait_all_tasks_blocked()
        assert ready.parked == 3
        for name, (right, _) in pairs.items():
            right.send(name.encode())
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(seen) == [b"a", b"b", b"c"] and ready.served == 3
        assert ready.batches == 1  # three sockets, one wake-up of the loop
        assert all(results == [] for _, results in pairs.values())  # no task woke up
        pairs["b"][0].send(b"bye")
        await trio.testing.wait_all_tasks_blocked()
        assert pairs["b"][1] == [True] and ready.parked == 2  # handed back, out of the set
        nursery.cancel_scope.cancel()
    for sock in socks.values():
        sock.close()
    for right, _ in pairs.values():
        right.close()


async def test_ready_loop_hands_serves_exception_to_the_parked_task():
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=False)

    def serve() -> bool:
        raise ConnectionResetError("reset by peer")

    async with trio.open_nursery() as nursery:
        await nursery.start(ready.run)
        theirs, results = await _parked_pair(ready, serve, nursery)
        theirs.send(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert len(results) == 1 and isinstance(results[0], ConnectionResetError)
        assert ready.parked == 0
        nursery.cancel_scope.cancel()  # the loop itself carried on
    theirs.close()


async def test_a_cancelled_parked_task_leaves_the_set_at_once():
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=False)
    calls: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ready.run)
        left, right = _socketpair()
        with trio.CancelScope() as scope:
            nursery.start_soon(lambda: trio.sleep(0))  # something else runs meanwhile
            scope.cancel()
            await ready.park(left, lambda: calls.append(1) or True)
        assert scope.cancelled_caught and ready.parked == 0
        right.send(b"late")  # readable now, but nobody is parked on it
        await trio.testing.wait_all_tasks_blocked()
        assert calls == []
        nursery.cancel_scope.cancel()
    left.close()
    right.close()


async def test_parked_tasks_go_on_alone_when_the_loop_stops_or_never_ran():
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=False)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as loop_nursery:
            await loop_nursery.start(ready.run)
            theirs, results = await _parked_pair(ready, lambda: True, nursery)
            loop_nursery.cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert results == [False] and ready.parked == 0  # woken: the task reads for itself
        theirs.close()
        # No loop running: park only waits until the socket is readable.
        theirs, results = await _parked_pair(ready, lambda: True, nursery)
        assert results == []
        theirs.send(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert results == [False]
        theirs.close()


async def test_a_service_with_parked_connections_still_drains_and_stops():
    import logging

    from trionet.serving import TCPService

    async def handler(conn) -> None:
        await conn.service.ready.park(conn.stream.socket, lambda: True)

    service = TCPService("test", handler, logging.getLogger("test"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            (address, *_) = await nursery.start(service.serve, "127.0.0.1", 0)
            clients = [await trio.open_tcp_stream(*address) for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            assert service.ready.parked == 3
            service.shutdown(grace=0.1)  # the grace deadline cancels the parked handlers
        assert service.ready.parked == 0 and not service.connections
    for client in clients:
        await client.aclose()


async def test_the_loop_yields_the_cpu_once_after_a_batch_it_answered_and_never_after_one_it_did_not(
    monkeypatch,
):
    # The clients its answers woke get the CPU before the loop looks again
    # (one bigger next batch); a batch that sent nothing gives nothing up.
    from trionet import serving

    calls: list[str] = []
    monkeypatch.setattr(serving, "_sched_yield", lambda: calls.append("yield"))
    ready = serving.ReadyLoop(thread=False)
    socks, peers, outs = {}, {}, {}

    def server(name):
        def serve() -> bool:
            socks[name].recv(100)
            calls.append("serve")
            if name != "quiet":
                outs[name] += b"answer " + name.encode()
            return True

        return serve, outs[name]

    with contextlib.ExitStack() as closing:
        for name in ("a", "b", "quiet"):
            socks[name], peers[name] = _socketpair()
            outs[name] = bytearray()
            closing.enter_context(socks[name])
            closing.enter_context(peers[name])
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            for name in socks:
                nursery.start_soon(ready.park, socks[name], *server(name))
            await trio.testing.wait_all_tasks_blocked()
            peers["a"].send(b"x")
            peers["b"].send(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert calls == ["serve", "serve", "yield"]
            assert peers["a"].recv(100) == b"answer a" and peers["b"].recv(100) == b"answer b"
            calls.clear()
            peers["quiet"].send(b"x")  # served, nothing to send
            await trio.testing.wait_all_tasks_blocked()
            assert calls == ["serve"]
            calls.clear()
            ready.yield_after_flush = False
            peers["a"].send(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert calls == ["serve"] and peers["a"].recv(100) == b"answer a"
            assert ready.parked == 3
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("batch_send", [True, False], ids=["one-system-call", "one-write-each"])
async def test_a_batch_is_served_first_and_its_answers_sent_together(monkeypatch, batch_send):
    # As the course's loop: handle every readable socket, then send the
    # queued replies; a socket that does not take its answer goes back to
    # its task with the rest, one whose peer is gone with the error.
    from trionet import serving
    from trionet.batchsend import BatchSender

    ready = serving.ReadyLoop(thread=False, batch_send=batch_send)
    calls: list[str] = []
    socks, peers, outs, results = {}, {}, {}, {}
    real_write, real_send = serving._write_some, BatchSender.send

    def write_some(sock, out):
        calls.append("write")
        return real_write(sock, out)

    def send(sender, items):
        calls.append(f"send {len(items)}")
        return real_send(sender, items)

    monkeypatch.setattr(serving, "_write_some", write_some)
    monkeypatch.setattr(BatchSender, "send", send)
    can_batch = BatchSender.open()
    if can_batch is not None:
        can_batch.close()

    def serve(name):
        def serve() -> bool:
            socks[name].recv(100)
            calls.append("serve")
            outs[name] += b"answer " + name.encode()
            return True

        return serve

    async with trio.open_nursery() as nursery:
        await nursery.start(ready.run)
        for name in "abc":
            socks[name], peers[name] = _socketpair()
            outs[name], results[name] = bytearray(), []

            async def task(name=name) -> None:
                try:
                    results[name].append(await ready.park(socks[name], serve(name), outs[name]))
                except Exception as exc:
                    results[name].append(exc)

            nursery.start_soon(task)
        await trio.testing.wait_all_tasks_blocked()
        with contextlib.suppress(BlockingIOError):
            while True:  # b: its peer reads nothing, the socket has no room left
                socks["b"].send(b"f" * 65536)
        for name in "abc":
            peers[name].send(b"x")
        peers["c"].close()  # c: its peer is gone
        await trio.testing.wait_all_tasks_blocked()
        batched = batch_send and can_batch is not None
        # Every serve first; then one system call for the three (or a write
        # each), and the two that did not take theirs try again alone.
        assert calls == ["serve"] * 3 + (["send 3", "write", "write"] if batched else ["write"] * 3)
        assert ready.batches == 1 and ready.batch_sends == batched
        assert results["a"] == [] and outs["a"] == b"" and peers["a"].recv(100) == b"answer a"
        assert results["b"] == [True] and outs["b"] == b"answer b"  # for its task to send, under its watchdog
        assert isinstance(results["c"][0], BrokenPipeError) and outs["c"] == b"answer c"
        assert ready.parked == 1
        nursery.cancel_scope.cancel()
    for sock in [*socks.values(), *peers.values()]:
        sock.close()


# --- the loop in its own thread (thread=True, trio's own clock) ---------------------------


async def _answer_of(peer: socket.socket) -> bytes:
    """What the loop sent back to ``peer`` (a client waiting for its answer)."""
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(peer)
    return peer.recv(100)


async def test_under_trios_clock_the_loop_is_a_thread_that_answers_without_waking_the_task():
    import threading

    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=True)
    mine, peer = _socketpair()
    peer.setblocking(False)
    threads: set[str] = set()
    results: list = []

    def serve() -> bool:
        data = mine.recv(100)
        threads.add(threading.current_thread().name)
        if data == b"bye":
            return False
        mine.send(data.upper())
        return True

    handed_back = trio.Event()

    async def task() -> None:
        results.append(await ready.park(mine, serve))
        handed_back.set()

    with mine, peer:
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            nursery.start_soon(task)
            await trio.testing.wait_all_tasks_blocked()
            assert ready.threaded
            for word in (b"one", b"two", b"three"):
                peer.send(word)
                assert await _answer_of(peer) == word.upper()
            assert results == []  # three answers, the task never woke
            assert threads == {"trionet ready loop"}
            peer.send(b"bye")
            with trio.fail_after(5):
                await handed_back.wait()  # the hand-back reaches the task through trio's token
            # Counted by now: an answer reaches the peer before the thread
            # counts its serve(), but the hand-back comes after the count.
            assert results == [True] and ready.parked == 0 and ready.served == 3
            nursery.cancel_scope.cancel()
        assert not ready.threaded  # run() returned only after its thread had ended


async def test_the_threads_batches_go_out_in_one_system_call_each_answer_to_its_own_client():
    # Eight clients ask at once, round after round: the thread finds several
    # ready per wake-up and sends their answers together (one io_submit
    # where Linux has it), and every client gets exactly its own answers.
    from trionet.batchsend import BatchSender
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=True)
    names = [b"c%d" % i for i in range(8)]
    socks, peers, outs = {}, {}, {}

    def server(name: bytes):
        def serve() -> bool:
            outs[name] += socks[name].recv(100) + b" for " + name + b";"
            return True

        return serve

    with contextlib.ExitStack() as closing:
        for name in names:
            socks[name], peers[name] = (closing.enter_context(s) for s in _socketpair())
            outs[name] = bytearray()
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            for name in names:
                nursery.start_soon(ready.park, socks[name], server(name), outs[name])
            await trio.testing.wait_all_tasks_blocked()
            for round_ in range(50):
                for name in names:
                    peers[name].send(b"r%d" % round_)
                for name in names:
                    expected = b"r%d for %s;" % (round_, name)
                    got = b""
                    while len(got) < len(expected):
                        got += await _answer_of(peers[name])
                    assert got == expected
            assert ready.parked == 8 and ready.served == 400
            can_batch = BatchSender.open()
            if can_batch is not None:
                can_batch.close()
                assert ready.batch_sends > 0  # some wake-ups found several clients ready
            nursery.cancel_scope.cancel()


async def test_a_cancellation_waits_for_the_serve_under_way_in_the_thread():
    # The task must never run while the loop's thread is inside its serve():
    # both would use the connection at once.
    import threading
    import time

    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=True)
    mine, peer = _socketpair()
    token = trio.lowlevel.current_trio_token()
    cancelling = threading.Event()
    inside: list[bool] = []
    seen_by_task: list = []

    with mine, peer, trio.CancelScope() as scope:

        def cancel() -> None:
            cancelling.set()
            scope.cancel()  # calls the park's abort, which waits for the lock

        def serve() -> bool:
            inside.append(True)
            mine.recv(100)
            token.run_sync_soon(cancel)
            cancelling.wait(5)
            time.sleep(0.05)  # inside serve() while the trio thread tries to cancel the task
            inside.append(False)
            return True

        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            try:
                peer.send(b"x")
                await ready.park(mine, serve)
            except trio.Cancelled:
                seen_by_task.append(list(inside))
                raise
            finally:
                nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert seen_by_task == [[True, False]]  # woken only once serve() had returned
    assert ready.parked == 0


async def test_the_threads_loop_hands_every_parked_task_back_when_it_stops():
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=True)
    results: list = []
    pairs = [_socketpair() for _ in range(3)]

    async def task(sock) -> None:
        results.append(await ready.park(sock, lambda: True))

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as loop_nursery:
            await loop_nursery.start(ready.run)
            for mine, _ in pairs:
                nursery.start_soon(task, mine)
            await trio.testing.wait_all_tasks_blocked()
            assert ready.parked == 3 and ready.threaded
            loop_nursery.cancel_scope.cancel()
    assert results == [False, False, False] and ready.parked == 0
    for mine, peer in pairs:
        mine.close()
        peer.close()


async def test_by_default_the_loop_is_a_thread_started_by_the_first_park():
    import threading

    from trionet.serving import ReadyLoop

    def loop_threads() -> int:
        return sum(t.name == "trionet ready loop" for t in threading.enumerate())

    ready = ReadyLoop()
    mine, peer = _socketpair()
    with mine, peer:
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            await trio.testing.wait_all_tasks_blocked()
            assert not ready.threaded and loop_threads() == 0  # a service that never parks has no thread
            nursery.start_soon(ready.park, mine, lambda: mine.send(mine.recv(100).upper()) > 0)
            await trio.testing.wait_all_tasks_blocked()
            assert ready.threaded
            peer.send(b"x")  # parked before the thread ran, served by it
            assert await _answer_of(peer) == b"X"
            assert loop_threads() == 1
            nursery.cancel_scope.cancel()
    # Counted once run() has returned, so its thread has ended: the answer
    # reaches the peer before the thread counts the serve() that sent it.
    assert ready.served == 1


async def test_give_way_lets_the_threads_loop_serve_between_two_steps_of_a_busy_task():
    # A task working through a client's pipeline checkpoints once per
    # request, which lets trio's other tasks run but not the loop's thread:
    # that one waits for the GIL, which a busy event loop gives up only every
    # switch interval (5 ms). give_way() hands it over when the set has work.
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=True)
    mine, peer = _socketpair()
    steps = 0
    served_at: list[int] = []

    def serve() -> bool:
        mine.recv(100)
        served_at.append(steps)
        return True

    with mine, peer:
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            nursery.start_soon(ready.park, mine, serve)
            await trio.testing.wait_all_tasks_blocked()
            waits = []  # steps from each send to its serve
            for sent in range(1, 21):
                peer.send(b"x")
                start = steps
                while len(served_at) < sent and steps < start + 5000:
                    ready.give_way()
                    await trio.lowlevel.checkpoint()
                    sum(range(2000))  # a request's work: tens of microseconds
                    steps += 1
                assert len(served_at) == sent
                waits.append(served_at[-1] - start)
            # Measured: 0 nearly always; without give_way, 100-640 steps each.
            # A few may wait longer when the machine does not run the thread
            # within give_way's 10 ms (a busy host): most must not.
            assert sum(wait <= 1 for wait in waits) >= 15, waits
            nursery.cancel_scope.cancel()


async def test_under_the_mock_clock_the_loop_stays_a_task(autojump_clock):
    from trionet.serving import ReadyLoop

    ready = ReadyLoop(thread=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(ready.run)
        assert not ready.threaded  # a thread would let the clock jump while it serves
        assert ready.now() == trio.current_time()
        nursery.cancel_scope.cancel()


def test_the_poll_window_grows_while_clients_come_back_soon_and_closes_when_they_do_not():
    from trionet.serving import poll_window

    limit = 200e-6

    def next_window(window: float, gap: float) -> float:
        # The loop's rule: a request within the window is found by polling
        # (the window stays); a later one is slept for, and adapts it.
        return window if gap <= window else poll_window(window, gap, limit)

    window, seen = 0.0, []
    for _ in range(4):  # a client that asks again 80 µs after each answer
        window = next_window(window, 80e-6)
        seen.append(window)
    assert seen == [limit / 4, limit / 2, limit / 2, limit / 2]  # found by polling from the third on
    seen = []
    for _ in range(3):  # then one that thinks for 5 ms between requests
        window = next_window(window, 5e-3)
        seen.append(window)
    assert seen == [limit / 4, limit / 8, 0.0]  # halved, and below an eighth: no polling at all
    assert poll_window(0.0, 10e-6, 0.0) == 0.0  # --busy-poll-us 0: never


@given(
    limit=st.floats(0, 0.01),
    steps=st.lists(st.tuples(st.booleans(), st.floats(0, 0.1)), max_size=30),
)
def test_the_poll_window_stays_within_its_limit(limit, steps):
    from trionet.serving import poll_window

    window = 0.0
    for slept, gap in steps:
        window = poll_window(window, window + gap if slept else gap, limit)
        assert 0.0 <= window <= limit
        if limit == 0.0:
            assert window == 0.0


@pytest.mark.parametrize(
    ("busy_poll", "idle_clients", "polls"),
    [(0.05, 0, True), (0.0, 0, False), (0.05, 4, False)],
    ids=["polling", "busy-poll-0", "more-than-POLL_MOST_PARKED"],
)
async def test_a_client_that_asks_again_at_once_finds_the_thread_still_polling(busy_poll, idle_clients, polls):
    # With polling, a client that sends its next request right after each
    # answer is served by the thread while it still polls: the wake-ups it
    # finds that way are counted in `polled`. Without it (--busy-poll-us 0),
    # or with more connections parked than POLL_MOST_PARKED, none are.
    from trionet.serving import POLL_MOST_PARKED, ReadyLoop

    assert idle_clients == 0 or idle_clients + 1 > POLL_MOST_PARKED
    ready = ReadyLoop(thread=True)
    ready.busy_poll = busy_poll  # 50 ms: far longer than a round trip, even on a loaded machine
    mine, peer = _socketpair()
    idle = [_socketpair() for _ in range(idle_clients)]

    def serve() -> bool:
        mine.send(mine.recv(100).upper())
        return True

    with mine, peer, contextlib.ExitStack() as stack:
        for pair in idle:
            for end in pair:
                stack.enter_context(end)
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            nursery.start_soon(ready.park, mine, serve)
            for theirs, _ in idle:
                nursery.start_soon(ready.park, theirs, lambda: True)  # never readable: they send nothing
            await trio.testing.wait_all_tasks_blocked()
            assert ready.parked == 1 + idle_clients
            for _ in range(30):
                peer.send(b"x")
                assert await _answer_of(peer) == b"X"
            nursery.cancel_scope.cancel()
    assert ready.served == 30
    if polls:
        assert ready.polled >= 20  # the first few grow the window; then nearly every one
    else:
        assert ready.polled == 0
