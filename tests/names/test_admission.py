"""The course's rule: --limit clients at once, a FIFO waiting room, a quota, an idle timeout.

Real sockets and the real clock, except the idle-timeout tests, which use
in-memory streams under the mock clock.
"""

import trio
import trio.testing

from trionet.framing import EOF
from trionet.names import protocol
from trionet.serving import receive_event


class LineClient:
    """A raw line-protocol client that records when things happened."""

    def __init__(self, stream: trio.SocketStream, name: str) -> None:
        self.stream = stream
        self.name = name
        self.proto = protocol.ClientLineProtocol()
        self.places: list[int] = []
        self.admitted_at: float | None = None
        self.closed_at: float | None = None

    @classmethod
    async def open(cls, tcp, addr, name: str = "") -> "LineClient":
        return cls(await tcp(addr), name)

    async def next(self):
        return await receive_event(self.stream, self.proto)

    async def wait_admitted(self) -> protocol.Welcome | protocol.Bye:
        while True:
            event = await self.next()
            if isinstance(event, protocol.Wait):
                self.places.append(event.place)
                continue
            if isinstance(event, protocol.Welcome):
                self.admitted_at = trio.current_time()
            return event

    async def ask(self, line: str):
        await self.stream.send_all(line.encode() + b"\n")
        return await self.next()


async def test_ten_clients_limit_three_fifo_quota(start_names, tcp):
    server, addrs = await start_names(limit=3, quota=4, backlog=20, per_address=0)  # ten clients, one address
    clients = []
    for i in range(10):
        client = await LineClient.open(tcp, addrs.line, f"c{i}")
        first = await client.next()  # each one is in line before the next connects
        if isinstance(first, protocol.Wait):
            client.places.append(first.place)
        else:
            assert isinstance(first, protocol.Welcome)
            client.admitted_at = trio.current_time()
        clients.append(client)
    assert [c.places[:1] for c in clients] == [[], [], [], [1], [2], [3], [4], [5], [6], [7]]
    assert server.admission.in_use == 3 and server.admission.waiting == 7

    most = 0

    async def monitor() -> None:
        nonlocal most
        while True:
            most = max(most, server.admission.in_use)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor)
        # Serve one session at a time, oldest first: each quota close must admit
        # exactly the oldest waiter, at once (a wrong choice leaves it waiting
        # and fail_after fires).
        admitted = clients[:3]
        waiting = clients[3:]
        while admitted:
            client = admitted.pop(0)
            for name in ("gateway.lan", "www.test", "printer", "10.0.0.1"):
                reply = await client.ask(name)
                assert isinstance(reply, protocol.Reply) and reply.status == "ok", reply
            bye = await client.next()
            assert isinstance(bye, protocol.Bye) and bye.reason == "quota-reached"
            assert await client.next() is EOF  # a clean close: EOF after the bye, no reset
            await client.stream.aclose()
            if waiting:
                oldest = waiting.pop(0)
                with trio.fail_after(10):
                    assert isinstance(await oldest.wait_admitted(), protocol.Welcome)
                admitted.append(oldest)
                assert server.admission.in_use == 3
                assert server.admission.waiting == len(waiting)
        nursery.cancel_scope.cancel()
    assert most == 3
    # The last one in line was told each step forward.
    assert clients[9].places == [7, 6, 5, 4, 3, 2, 1]
    assert server.admission.admitted_total == 10


async def test_the_next_client_is_admitted_at_quota_before_the_first_one_closes(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=2)
    first = await server.connect_memory()
    assert isinstance(await first.next(), protocol.Welcome)
    second = await server.connect_memory()
    assert await second.next() == protocol.Wait(1, "the only slot is busy; you are next")
    await first.send("gw")
    assert (await first.next()).status == "ok"
    await first.send("printer")
    assert (await first.next()).status == "ok"
    assert (await first.next()).reason == "quota-reached"
    start = trio.current_time()
    # `first` keeps its connection open; the slot must be handed over anyway, at once
    # (not after the LINGER seconds the server gives `first` to close).
    assert isinstance(await second.next(), protocol.Welcome)
    assert trio.current_time() == start
    await second.send("gw")
    assert (await second.next()).status == "ok"


async def test_wait_lines_on_the_wire(start_names, tcp):
    _server, addrs = await start_names(limit=2, quota=0)
    holders = [await tcp(addrs.line) for _ in range(2)]
    for holder in holders:
        assert isinstance(await receive_event(holder, protocol.ClientLineProtocol()), protocol.Welcome)
    waiters = [await tcp(addrs.line) for _ in range(2)]
    assert await _raw_line(waiters[0]) == b"wait 1 all 2 slots are busy; you are next\n"
    assert await _raw_line(waiters[1]) == b"wait 2 all 2 slots are busy; 1 client(s) ahead of you\n"


async def _raw_line(stream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            data += await stream.receive_some(1)
    return data


async def test_waiting_room_bound_turns_clients_away(start_names, tcp):
    server, addrs = await start_names(limit=1, backlog=2)
    holder = await LineClient.open(tcp, addrs.line)
    assert isinstance(await holder.next(), protocol.Welcome)
    waiting = [await LineClient.open(tcp, addrs.line) for _ in range(2)]
    for i, client in enumerate(waiting, start=1):
        assert (await client.next()).place == i
    turned_away = await LineClient.open(tcp, addrs.line)
    bye = await turned_away.next()
    assert isinstance(bye, protocol.Bye) and bye.reason == "busy"
    assert await turned_away.next() is EOF
    assert server.admission.waiting == 2 and server.admission.turned_away == 1


async def test_a_waiting_client_that_disconnects_leaves_the_line(start_names, tcp):
    server, addrs = await start_names(limit=1, quota=0)
    holder = await LineClient.open(tcp, addrs.line)
    assert isinstance(await holder.next(), protocol.Welcome)
    b = await LineClient.open(tcp, addrs.line)
    assert (await b.next()).place == 1
    c = await LineClient.open(tcp, addrs.line)
    assert (await c.next()).place == 2
    await b.stream.aclose()
    with trio.fail_after(10):
        assert (await c.next()).place == 1  # told it moved up
    assert server.admission.waiting == 1
    assert (await holder.ask("quit")).reason == "quit"
    with trio.fail_after(10):
        assert isinstance(await c.wait_admitted(), protocol.Welcome)


async def test_both_ports_share_the_limit(start_names, tcp):
    import dns.message

    from trionet.framing import LengthPrefixFramer, encode_length_prefixed

    server, addrs = await start_names(limit=1, quota=0)
    dns_stream = await tcp(addrs.dns)
    framer = LengthPrefixFramer(2, 65535)
    await dns_stream.send_all(encode_length_prefixed(dns.message.make_query("gw", "A").to_wire(), 2))
    await receive_event(dns_stream, framer)  # answered: this client holds the only slot
    line = await LineClient.open(tcp, addrs.line)
    assert (await line.next()).place == 1
    await dns_stream.aclose()
    with trio.fail_after(10):
        assert isinstance(await line.wait_admitted(), protocol.Welcome)


async def test_a_turned_away_dns_client_gets_refused(start_names, tcp):
    import dns.message
    import dns.rcode

    from trionet.framing import LengthPrefixFramer, encode_length_prefixed

    server, addrs = await start_names(limit=1, backlog=0)
    holder = await LineClient.open(tcp, addrs.line)
    assert isinstance(await holder.next(), protocol.Welcome)
    stream = await tcp(addrs.dns)
    await stream.send_all(encode_length_prefixed(dns.message.make_query("gw", "A").to_wire(), 2))
    framer = LengthPrefixFramer(2, 65535)
    frame = await receive_event(stream, framer)
    assert dns.message.from_wire(frame.payload).rcode() == dns.rcode.REFUSED
    assert await receive_event(stream, framer) is EOF


# --- idle timeout, under the mock clock ----------------------------------------------


async def test_idle_client_is_closed_and_the_next_admitted(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, idle_timeout=30)
    idle = await server.connect_memory()
    assert isinstance(await idle.next(), protocol.Welcome)
    waiting = await server.connect_memory()
    assert isinstance(await waiting.next(), protocol.Wait)
    start = trio.current_time()
    await idle.send("gw")
    await idle.next()
    await trio.sleep(20)
    await idle.send("printer")  # activity resets the timer
    await idle.next()
    bye = await idle.next()
    assert bye.reason == "idle-timeout"
    assert trio.current_time() - start == 20 + 30
    welcome = await waiting.next()
    assert isinstance(welcome, protocol.Welcome) and welcome.waited == 50
    assert await idle.next() is EOF


async def test_idle_dns_client_is_closed(autojump_clock, memory_names):
    server = await memory_names(limit=1, quota=0, idle_timeout=10)
    client = await server.connect_memory("dns")
    start = trio.current_time()
    assert await client.stream.receive_some() == b""
    assert trio.current_time() - start == 10
    assert server.admission.in_use == 0


class _LockstepServerEnd(trio.abc.HalfCloseableStream):
    """The server's end of a lockstep pair (a send blocks until the client reads it), with a no-op EOF."""

    def __init__(self, stream) -> None:
        self._stream = stream

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        await self._stream.aclose()


async def test_a_dns_client_that_stops_reading_loses_its_slot(autojump_clock, memory_names):
    """An answer whose send stays blocked for the idle timeout (the stuck-send limit) ends the session."""
    import dns.message

    from trionet.framing import encode_length_prefixed
    from trionet.serving import Connection

    server = await memory_names(limit=1, quota=0, idle_timeout=10)
    client_end, server_end = trio.testing.lockstep_stream_pair()
    conn = Connection(stream=_LockstepServerEnd(server_end), peer="reader", service=server.dns_service)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_dns, conn)
        query = dns.message.make_query("gw.lan", "A").to_wire()
        await client_end.send_all(encode_length_prefixed(query, 2))  # read by the server; its answer is never read
        assert server.admission.in_use == 1
        waiting = await server.connect_memory()
        assert isinstance(await waiting.next(), protocol.Wait)
        welcome = await waiting.next()
        # Looked at every idle_timeout / 2 seconds: blocked at two looks in a row, so cut within 5 to 10 s.
        assert isinstance(welcome, protocol.Welcome) and 5 <= welcome.waited <= 10
        await client_end.aclose()


async def test_a_slow_trickle_is_cut_at_the_idle_timeout(autojump_clock, memory_names):
    server = await memory_names(limit=2, quota=0, idle_timeout=5)
    slow = await server.connect_memory()
    assert isinstance(await slow.next(), protocol.Welcome)

    async def trickle() -> None:
        try:
            for _ in range(100):
                await slow.stream.send_all(b"x")  # never a newline
                await trio.sleep(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        assert (await slow.next()).reason == "idle-timeout"
        nursery.cancel_scope.cancel()
    assert trio.current_time() < 10


async def test_shutdown_says_bye_to_admitted_and_waiting_clients(start_names, tcp):
    server, addrs = await start_names(limit=1, quota=0)
    admitted = await LineClient.open(tcp, addrs.line)
    assert isinstance(await admitted.next(), protocol.Welcome)
    waiting = await LineClient.open(tcp, addrs.line)
    assert isinstance(await waiting.next(), protocol.Wait)
    server.shutdown(5)
    with trio.fail_after(10):
        for client in (admitted, waiting):
            bye = await client.next()
            assert isinstance(bye, protocol.Bye) and bye.reason == "shutdown"
            assert await client.next() is EOF


async def test_dns_quota_frees_the_slot_at_once_and_lets_the_client_close_first(autojump_clock, memory_names):
    import dns.message

    from trionet.framing import LengthPrefixFramer, encode_length_prefixed
    from trionet.names.server import DNS_CLOSE_WAIT

    server = await memory_names(limit=1, quota=2, idle_timeout=30)
    client = await server.connect_memory("dns")
    queries = [dns.message.make_query(name, "A") for name in ("gw", "printer")]
    await client.stream.send_all(b"".join(encode_length_prefixed(q.to_wire(), 2) for q in queries))
    framer = LengthPrefixFramer(2, 65535)
    for _ in queries:
        await receive_event(client.stream, framer)
    start = trio.current_time()
    nxt = await server.connect_memory()
    assert isinstance(await nxt.next(), protocol.Welcome)  # the slot was given back at once
    assert trio.current_time() == start
    # The quota's client may close first (RFC 7766); if it stays silent the server closes.
    assert await receive_event(client.stream, framer) is EOF
    assert trio.current_time() - start == DNS_CLOSE_WAIT


async def test_a_waiting_client_is_read_only_up_to_64_kib(autojump_clock, memory_names):
    from trionet.names.server import WAIT_BUFFER
    from trionet.serving import RECEIVE_CHUNK

    server = await memory_names(limit=1, quota=0, idle_timeout=0, session_timeout=0, wait_timeout=0)
    holder = await server.connect_memory()
    assert isinstance(await holder.next(), protocol.Welcome)
    waiter = await server.connect_memory()
    assert isinstance(await waiter.next(), protocol.Wait)
    await waiter.stream.send_all(b"x" * (1 << 20))  # a megabyte while it waits (one over-long line)
    await trio.testing.wait_all_tasks_blocked()
    # Read up to the cap (one read may cross it), then no more: the rest stays with TCP.
    assert WAIT_BUFFER <= waiter.server_side.received < WAIT_BUFFER + RECEIVE_CHUNK
    await holder.send("quit")
    assert (await holder.next()).reason == "quit"
    assert isinstance(await waiter.next(), protocol.Welcome)
    await waiter.stream.send_all(b"\ngw\n")  # the end of the long line, and a request
    with trio.fail_after(100):
        bad, good = await waiter.next(), await waiter.next()  # once admitted, the rest is read
    assert bad.status == "bad-request" and "longer than 1024 bytes" in bad.message
    assert good.status == "ok" and good.records == ("10.0.0.1",)
    assert waiter.server_side.received == (1 << 20) + 4
