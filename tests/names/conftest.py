"""Fixtures for the names tests: a local upstream DNS server and a names server factory.

No test leaves 127.0.0.1: :class:`FakeUpstream` answers a test zone (``test``)
over UDP and TCP with chosen TTLs, NXDOMAIN and NODATA with an SOA, slow,
dropped and SERVFAIL names, and counts every query it receives.
"""

from __future__ import annotations

import collections
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio

from trionet.names.hosts import parse_hosts
from trionet.names.resolver import Upstream
from trionet.names.server import NamesConfig, NamesServer

HOSTS = """\
# the test hosts file
127.0.0.1       localhost
10.0.0.1        gateway.lan gw      # the router
10.0.0.2\tprinter.lan\tprinter
10.0.0.3        multi.lan
10.0.0.4        multi.lan
fd00::5         v6only.lan
10.0.0.6        both.lan
fd00::6         both.lan
"""

SOA_TEXT = "ns.test. admin.test. 1 3600 600 86400 {minimum}"


class FakeUpstream:
    """A tiny authoritative-and-recursive DNS server for the zone ``test``."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.cnames: dict[str, tuple[int, str]] = {}
        self.slow: dict[str, float] = {}
        self.drop: set[str] = set()
        self.truncate_udp: set[str] = set()  # names answered over UDP with TC and no records
        self.servfail: set[str] = set()
        self.soa_ttl = 3600
        self.soa_minimum = 60
        self.follow_cnames = True
        self.extra_authority: list[dns.rrset.RRset] = []
        """Put before the SOA of every negative answer (a lying or broken upstream)."""
        self.held: dict[str, trio.Event] = {}
        """Names whose answer waits until the test sets the event (after their delay in ``slow``)."""
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.address: tuple[str, int] | None = None

    @property
    def upstream(self) -> Upstream:
        assert self.address is not None
        return Upstream(self.address[0], self.address[1])

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = 300) -> None:
        self.records[(name, rdtype)] = (ttl, list(rdatas))

    def respond(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.counts[(name, rdtype)] += 1
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        current = name
        for _ in range(10):
            if (current, rdtype) in self.records:
                ttl, rdatas = self.records[(current, rdtype)]
                response.answer.append(dns.rrset.from_text_list(current + ".", ttl, "IN", rdtype, rdatas))
                return response
            if current in self.cnames and rdtype != "CNAME":
                ttl, target = self.cnames[current]
                response.answer.append(dns.rrset.from_text(current + ".", ttl, "IN", "CNAME", target + "."))
                current = target
                if not self.follow_cnames:
                    return response
                continue
            break
        exists = any(n == current for n, _ in self.records) or current in self.cnames
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.extend(self.extra_authority)
        response.authority.append(
            dns.rrset.from_text("test.", self.soa_ttl, "IN", "SOA", SOA_TEXT.format(minimum=self.soa_minimum))
        )
        return response

    def _delay(self, query: dns.message.Message) -> float | None:
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        if name in self.drop:
            self.counts[(name, dns.rdatatype.to_text(query.question[0].rdtype))] += 1
            return None
        return self.slow.get(name, 0.0)

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock, listener = await self._bind()
        with sock, listener:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_tcp, listener, nursery)
                task_status.started(self.address)
                while True:
                    data, peer = await sock.recvfrom(65535)
                    nursery.start_soon(self._answer_udp, sock, data, peer)

    async def _bind(self):
        # UDP and TCP on the same free port: the UDP port's TCP twin may be
        # taken by some connection's ephemeral port, so try a few.
        for _ in range(50):
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            listener = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            try:
                await sock.bind(("127.0.0.1", 0))
                await listener.bind(sock.getsockname())
            except OSError:
                sock.close()
                listener.close()
                continue
            listener.listen(16)
            self.address = sock.getsockname()
            return sock, listener
        raise RuntimeError("no free UDP+TCP port pair")

    async def _answer_udp(self, sock, data: bytes, peer) -> None:
        query = dns.message.from_wire(data)
        delay = self._delay(query)
        if delay is None:
            return
        await trio.sleep(delay)
        await self.release(query)
        response = self.respond(query)
        if query.question[0].name.to_text(omit_final_dot=True).lower() in self.truncate_udp:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
        await sock.sendto(response.to_wire(), peer)

    async def release(self, query: dns.message.Message) -> None:
        """Wait until the test lets the answer to ``query`` go (see :attr:`held`)."""
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        if name in self.held:
            await self.held[name].wait()

    async def _serve_tcp(self, listener, nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(self._answer_tcp, trio.SocketStream(conn))

    async def _answer_tcp(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            query = dns.message.from_wire(data[2:])
            if self._delay(query) is None:
                return
            await self.release(query)
            wire = self.respond(query).to_wire()
            await stream.send_all(struct.pack("!H", len(wire)) + wire)


def default_zone(up: FakeUpstream) -> None:
    up.add("www.test", "A", "192.0.2.1", ttl=300)
    up.add("www.test", "AAAA", "2001:db8::1", ttl=300)
    up.add("short.test", "A", "192.0.2.2", ttl=5)
    up.add("multi.test", "A", "192.0.2.3", "192.0.2.4", ttl=120)
    up.add("target.test", "A", "192.0.2.10", ttl=600)
    up.cnames["alias.test"] = (100, "target.test")
    up.cnames["alias2.test"] = (50, "alias.test")
    up.add("slow.test", "A", "192.0.2.20", ttl=300)
    up.slow["slow.test"] = 0.3
    up.drop.add("dropped.test")
    up.servfail.add("broken.test")
    up.add("2.2.0.192.in-addr.arpa", "PTR", "short.test.", ttl=300)


@pytest.fixture
async def upstream(nursery) -> FakeUpstream:
    up = FakeUpstream()
    default_zone(up)
    await nursery.start(up.serve)
    return up


@pytest.fixture
def start_names(nursery, upstream):
    """``server, addrs = await start_names(limit=3, ...)``: a names server on free ports."""

    async def start(hosts: str = HOSTS, upstreams=None, hosts_path=None, **config):
        config.setdefault("upstream_timeout", 0.5)
        table = None if hosts_path else parse_hosts(hosts)[0]
        server = NamesServer(
            NamesConfig(**config),
            upstreams=[upstream.upstream] if upstreams is None else upstreams,
            table=table,
            hosts_path=hosts_path,
        )
        addrs = await nursery.start(server.serve, "127.0.0.1", 0, 0)
        return server, addrs

    return start


def memory_transport(up: FakeUpstream):
    """A resolver transport that asks ``up`` in memory, so tests can run under the mock clock."""

    async def transport(query: dns.message.Message, upstream, timeout: float) -> dns.message.Message:
        delay = up._delay(query)
        if delay is None:
            await trio.sleep_forever()  # dropped: the resolver's timeout ends this
        await trio.sleep(delay)
        await up.release(query)
        return dns.message.from_wire(up.respond(query).to_wire())

    return transport


class ServerSide(trio.abc.HalfCloseableStream):
    """The server's end of an in-memory connection: counts what the server read, and can be reset."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.received = 0
        """Bytes the server has read so far."""
        self._reset = False
        self._receiving: trio.CancelScope | None = None

    def reset(self) -> None:
        """Make the server's reads fail as on a TCP reset (the pending one at once)."""
        self._reset = True
        if self._receiving is not None:
            self._receiving.cancel()

    async def receive_some(self, max_bytes=None) -> bytes:
        if not self._reset:
            with trio.CancelScope() as self._receiving:
                data = await self._stream.receive_some(max_bytes)
                self.received += len(data)
                return data
        raise trio.BrokenResourceError("connection reset by the test")

    async def send_all(self, data) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class MemoryClient:
    """The client end of an in-memory connection to a names server handler; ``server_side`` is the other end."""

    def __init__(self, stream, server_side: ServerSide | None = None) -> None:
        from trionet.names.protocol import ClientLineProtocol

        self.stream = stream
        self.server_side = server_side
        self.proto = ClientLineProtocol()

    async def send(self, line: str) -> None:
        await self.stream.send_all(line.encode() + b"\n")

    async def next(self):
        from trionet.serving import receive_event

        return await receive_event(self.stream, self.proto)


@pytest.fixture
def memory_names(nursery):
    """``server = await memory_names(...)``, then ``await server_client(server)``: no sockets, mock clock friendly."""
    from trionet.serving import Connection

    async def start(hosts: str = HOSTS, up: FakeUpstream | None = None, **config):
        if up is None:
            up = FakeUpstream()
            default_zone(up)
        config.setdefault("upstream_timeout", 1.0)
        server = NamesServer(
            NamesConfig(**config), upstreams=[Upstream("memory", 53)], table=parse_hosts(hosts)[0],
            transport=memory_transport(up),
        )
        server.fake_upstream = up

        started = trio.Event()

        async def run() -> None:
            async with server.running():
                started.set()
                await trio.sleep_forever()

        nursery.start_soon(run)
        await started.wait()

        async def connect(kind: str = "line", peer: str = "memory") -> MemoryClient:
            client, server_stream = trio.testing.memory_stream_pair()
            server_side = ServerSide(server_stream)
            service = server.line_service if kind == "line" else server.dns_service
            handler = server.handle_line if kind == "line" else server.handle_dns
            conn = Connection(stream=server_side, peer=peer, service=service)  # peer: the per-address key

            async def serve_one() -> None:
                try:
                    await handler(conn)
                except* (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    await trio.aclose_forcefully(server_side)

            nursery.start_soon(serve_one)
            return MemoryClient(client, server_side)

        server.connect_memory = connect
        return server

    return start


@pytest.fixture
async def tcp():
    """``stream = await tcp(addr)``: a TCP connection closed when the test ends."""
    streams = []

    async def open_stream(addr) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(*addr)
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        await trio.aclose_forcefully(stream)
