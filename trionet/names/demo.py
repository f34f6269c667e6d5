"""The names part of ``trionet demo``: five clients race for three slots with a quota of four.

Everything runs in this process on free ports of 127.0.0.1: a small upstream
DNS server for the zone ``example`` (so nothing leaves the machine), a names
server with ``--limit 3 --quota 4`` over ``examples/names/hosts``, and five
clients started a few milliseconds apart. The output shows who waited, at
which place, when each was admitted, and where each answer came from.
"""

from __future__ import annotations

import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio
from rich.console import Console
from rich.table import Table

import trionet.names as names
from trionet.names.hosts import parse_hosts
from trionet.names.resolver import Upstream
from trionet.names.server import NamesConfig, NamesServer

__all__ = ["DEMO_ZONE", "run_demo", "serve_demo_upstream"]

_HOSTS = Path(__file__).resolve().parents[2] / "examples" / "names" / "hosts"
_FALLBACK_HOSTS = "10.0.0.1 gateway.lan gw\n10.0.0.2 printer.lan printer\n10.0.0.10 files.lan nas\n"

DEMO_ZONE = {
    "www.example": ("A", "192.0.2.80", 300),
    "mail.example": ("A", "192.0.2.25", 60),
    "api.example": ("A", "192.0.2.44", 30),
}
"""The demo upstream's names: name -> (type, address, TTL)."""

_UPSTREAM_DELAY = 0.15  # seconds, so that a real lookup is visibly slower than the cache


def _answer(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    record = DEMO_ZONE.get(name)
    if record and dns.rdatatype.to_text(question.rdtype) == record[0]:
        response.answer.append(dns.rrset.from_text(name + ".", record[2], "IN", record[0], record[1]))
    else:
        if record is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(
            dns.rrset.from_text("example.", 60, "IN", "SOA", "ns.example. admin.example. 1 3600 600 86400 60")
        )
    return response


async def serve_demo_upstream(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer :data:`DEMO_ZONE` over UDP on a free port of 127.0.0.1 until cancelled."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname())
        async with trio.open_nursery() as nursery:
            while True:
                data, peer = await sock.recvfrom(4096)

                async def reply(data: bytes = data, peer=peer) -> None:
                    await trio.sleep(_UPSTREAM_DELAY)
                    await sock.sendto(_answer(dns.message.from_wire(data)).to_wire(), peer)

                nursery.start_soon(reply)


async def run_demo(console: Console) -> None:
    """Start an upstream and a names server, race five clients for three slots, print what happened."""
    hosts_text = _HOSTS.read_text() if _HOSTS.exists() else _FALLBACK_HOSTS
    table, _ = parse_hosts(hosts_text, str(_HOSTS))
    config = NamesConfig(limit=3, quota=4, backlog=10, idle_timeout=10)
    start = time.perf_counter()

    def clock() -> str:
        return f"{time.perf_counter() - start:6.3f}s"

    async with trio.open_nursery() as nursery:
        upstream = await nursery.start(serve_demo_upstream)
        server = NamesServer(config, upstreams=[Upstream(*upstream)], table=table)
        addrs = await nursery.start(server.serve, "127.0.0.1", 0, 0)
        console.print(
            f"names server on {addrs.line[0]}:{addrs.line[1]} (DNS over TCP on port {addrs.dns[1]}), "
            f"limit {config.limit}, quota {config.quota}; {len(table)} names from {_HOSTS.name}, "
            f"the rest from a local upstream for '.example'"
        )
        wishes = {
            "alice": ["gateway.lan", "www.example", "printer", "10.0.0.1"],
            "bob": ["www.example", "mail.example", "files.lan", "nas"],
            "carol": ["mail.example", "api.example", "gw", "nosuch.example"],
            "dave": ["www.example", "api.example", "printer.lan", "mail.example"],
            "erin": ["files.lan AAAA", "www.example", "api.example", "gateway.lan", "printer"],
        }
        rows = []

        async def client(who: str, queries: list[str]) -> None:
            arrived = clock()
            places: list[int] = []

            def on_wait(place: int) -> None:
                places.append(place)
                console.print(f"{clock()}  [yellow]{who:<5}[/] waits, place {place} in line")

            sources = []
            async with names.connect(*addrs.line, on_wait=on_wait) as conn:
                admitted = clock()
                console.print(f"{admitted}  [green]{who:<5}[/] admitted after {conn.welcome.waited:.3f}s")
                for query in queries:
                    name, _, rdtype = query.partition(" ")
                    try:
                        answer = await conn.resolve(name, rdtype or "A")
                    except names.QuotaReached:
                        console.print(f"{clock()}  [red]{who:<5}[/] quota reached: '{query}' left unanswered")
                        sources.append("(quota)")
                        break
                    data = " ".join(answer.addresses) if answer.ok else answer.status.upper()
                    console.print(
                        f"{clock()}  {who:<5} {answer.name} {answer.rdtype} -> {data} "
                        f"[dim](source {answer.source}, ttl {answer.ttl}s, {answer.latency * 1000:.1f} ms)[/]"
                    )
                    sources.append(answer.source)
                    await trio.sleep(0.05)  # think time, so that the others wait visibly
                if conn.bye is not None:
                    console.print(f"{clock()}  [magenta]{who:<5}[/] server says: {conn.bye.reason}")
            rows.append((who, arrived, ", ".join(map(str, places)) or "-", admitted, " ".join(sources)))

        async with trio.open_nursery() as clients:
            for who, queries in wishes.items():
                clients.start_soon(client, who, queries)
                await trio.sleep(0.01)  # a defined arrival order

        result = Table(title="five clients, three slots, four queries each")
        for column in ("client", "arrived", "places in line", "admitted", "answer sources"):
            result.add_column(column)
        for row in sorted(rows, key=lambda r: r[1]):
            result.add_row(*row)
        console.print(result)
        stats = server.resolver.stats
        console.print(
            f"upstream queries: {stats.upstream_queries} for {stats.flights} distinct misses "
            f"({stats.merged} merged with a query already in flight); cache holds {len(server.cache)} answers"
        )
        server.shutdown(1.0)
        nursery.cancel_scope.cancel()
