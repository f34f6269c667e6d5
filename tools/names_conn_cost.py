#!/usr/bin/env python3
"""What one short DNS connection costs ``trionet names``: server CPU, scheduler rounds and task steps per connection.

Runs a :class:`~trionet.names.server.NamesServer` in this process (the
course's ``--limit 3 --quota 4``, the generated hosts file of
``tools/bench_names.py``) under a trio Instrument, and a client in a child
process that opens ``--connections`` connections one after the other, each
sending 4 queries in one write, reading the 4 answers and closing (over TCP,
or TLS with a trustme certificate, ECDSA P-256, for ``--tls``). It prints
the server's CPU time (user and system, from ``getrusage``), the scheduler
rounds (trio's ``before_io_wait``), the task steps and the tasks started,
each per connection. Unlike queries per second these hardly move with the
rest of the machine's load; the scheduler rounds and task steps do not move
at all, which makes them the figure to compare two versions by.

The trionet measured is the one on ``sys.path``: to compare an older
checkout, run this file with ``PYTHONPATH=DIR`` (a ``git archive`` of it).

Usage::

    python3 tools/names_conn_cost.py                     # TCP
    python3 tools/names_conn_cost.py --tls --connections 500
    PYTHONPATH=/tmp/base python3 tools/names_conn_cost.py --tls
"""

from __future__ import annotations

import argparse
import functools
import resource
import socket
import ssl
import struct
import sys
import tempfile
import time
from pathlib import Path

QUERIES = 4
"""Queries per connection: the course's quota."""


class _Count:
    """A trio Instrument counting scheduler rounds, task steps and tasks started."""

    def __init__(self) -> None:
        self.rounds = self.steps = self.tasks = 0

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1

    def before_task_step(self, task) -> None:
        self.steps += 1

    def task_spawned(self, task) -> None:
        self.tasks += 1


def client(port: int, tls_ca: str | None, connections: int) -> None:
    """The child process: ``connections`` connections one after the other, 4 queries each."""
    import dns.message

    context = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
    wires = [dns.message.make_query(f"host-{i:05d}.bench.lan", "A").to_wire() for i in range(QUERIES)]
    payload = b"".join(struct.pack("!H", len(w)) + w for w in wires)
    started = time.perf_counter()
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(payload)
        buffered, answers = b"", 0
        while answers < QUERIES:
            data = sock.recv(65536)
            if not data:
                sys.exit("the server closed before answering")
            buffered += data
            while len(buffered) >= 2 and len(buffered) >= 2 + struct.unpack("!H", buffered[:2])[0]:
                buffered = buffered[2 + struct.unpack("!H", buffered[:2])[0] :]
                answers += 1
        sock.close()
    print(f"{connections / (time.perf_counter() - started):.0f}")


def measure(args: argparse.Namespace) -> None:
    import trio

    from trionet.names.server import NamesConfig, NamesServer
    from trionet.tls import TLSServerConfig, server_context

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_names import write_certificate, write_inputs

    count = _Count()
    with tempfile.TemporaryDirectory(prefix="names-conn-cost-") as tmpdir:
        tmp = Path(tmpdir)
        hosts, _queries, _names = write_inputs(tmp, 1000)
        cert, key, ca_file = write_certificate(tmp)

        async def main() -> None:
            tls = TLSServerConfig(server_context(str(cert), str(key)), str(cert), str(key))
            config = NamesConfig(limit=3, quota=QUERIES, backlog=1000, per_address=0, udp_rate=0)
            server = NamesServer(config, hosts_path=str(hosts), tls=tls)
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(functools.partial(server.serve, "127.0.0.1", 0, 0, dot_port=0))
                port = addresses.dot[1] if args.tls else addresses.dns[1]
                service = server.dot_service if args.tls else server.dns_service
                before = (count.rounds, count.steps, count.tasks, resource.getrusage(resource.RUSAGE_SELF))
                argv = [sys.executable, __file__, "--client", str(port), "--connections", str(args.connections)]
                if args.tls:
                    argv += ["--ca", str(ca_file)]
                done = await trio.run_process(argv, capture_stdout=True)
                after = resource.getrusage(resource.RUSAGE_SELF)
                n = service.accepted_total
                user = (after.ru_utime - before[3].ru_utime) / n * 1e6
                system = (after.ru_stime - before[3].ru_stime) / n * 1e6
                print(
                    f"{'DoT' if args.tls else 'TCP'}: {n} connections, {done.stdout.decode().strip()} per second; "
                    f"per connection: server CPU {user + system:.0f} us (user {user:.0f}, system {system:.0f}), "
                    f"scheduler rounds {(count.rounds - before[0]) / n:.1f}, task steps {(count.steps - before[1]) / n:.1f}, "
                    f"tasks started {(count.tasks - before[2]) / n:.1f}"
                )
                nursery.cancel_scope.cancel()

        trio.run(main, instruments=[count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tls", action="store_true", help="DNS over TLS (the --dot-port) instead of TCP")
    parser.add_argument("--connections", type=int, default=2000, help="connections, one after the other (default 2000)")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.ca, args.connections)
    else:
        measure(args)


if __name__ == "__main__":
    main()
