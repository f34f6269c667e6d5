"""What one request-answer round trip costs a server in CPU, by the way it waits for the request.

One client (another process) sends a 60-byte request and waits for an
80-byte answer, over loopback TCP, ``--round-trips`` times; the server
answers each with constant bytes, so what is measured is the wait, the
wake-up and the two system calls, nothing of SQL. The server's process
CPU (user + system, ``os.times``) is divided by the round trips. Ways:

- ``task``: the connection's own trio task, ``receive_some`` then
  ``send_all`` (what a trio server does without trionet's ready loop);
- ``ready-task``: the connection parked in :class:`trionet.serving.ReadyLoop`
  running as a trio task (``thread=False``: what the loop is under a
  MockClock, and what it was before session 9);
- ``ready-thread``: the same ReadyLoop in its own thread (the default);
- ``epoll-thread``: a bare ``epoll.poll`` / ``os.read`` / ``os.write`` loop
  in a thread, no trio at all: the floor for Python on this machine.

Rounds alternate the ways; each figure is the median over rounds
[lowest-highest]. Wall time per round trip includes the client's own
Python, the same for every way.

Usage: PYTHONPATH=. python3 tools/bench_wake.py [--round-trips 20000] [--rounds 5]
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trionet.serving import ReadyLoop  # noqa: E402

REQUEST = b"q" * 60
ANSWER = b"a" * 80
WAYS = ("task", "ready-task", "ready-thread", "epoll-thread")


def client(port: int, count: int) -> None:
    """The load: ``count`` round trips on one connection (run in a process of its own)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            sock.sendall(REQUEST)
            sock.recv(1000)


def _load(port: int, count: int) -> tuple[float, float]:
    """Run the client against ``port``; this process's CPU seconds and the wall seconds it took."""
    before, start = os.times(), time.perf_counter()
    subprocess.run([sys.executable, __file__, "--client", str(port), "--round-trips", str(count)], check=True)
    after, wall = os.times(), time.perf_counter() - start
    return (after.user - before.user) + (after.system - before.system), wall


def run_trio(way: str, count: int) -> tuple[float, float]:
    """``task``, ``ready-task`` or ``ready-thread``: a trio server, measured from a thread so trio stays idle."""

    async def main() -> tuple[float, float]:
        ready = ReadyLoop(thread=way == "ready-thread")
        async with trio.open_nursery() as nursery:
            await nursery.start(ready.run)
            listener = trio.socket.socket()
            await listener.bind(("127.0.0.1", 0))
            listener.listen()

            async def connection(sock) -> None:
                fd = sock.fileno()
                if way == "task":
                    with sock:
                        while await sock.recv(65536):
                            await sock.send(ANSWER)
                    return
                out = bytearray()

                def serve() -> bool:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        return True
                    out.extend(ANSWER)
                    return bool(data)

                with sock:
                    await ready.park(sock, serve, out)

            async def accept() -> None:
                sock, _ = await listener.accept()
                nursery.start_soon(connection, sock)

            nursery.start_soon(accept)
            figures = await trio.to_thread.run_sync(_load, listener.getsockname()[1], count)
            nursery.cancel_scope.cancel()
        listener.close()
        return figures

    return trio.run(main)


def run_epoll_thread(count: int) -> tuple[float, float]:
    """``epoll-thread``: the smallest Python loop that can serve the same client."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            sock, _ = listener.accept()
            with sock, select.epoll() as epoll:
                sock.setblocking(False)
                epoll.register(sock.fileno(), select.EPOLLIN)
                while True:
                    for fd, _ in epoll.poll(-1, 64):
                        try:
                            data = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        if not data:
                            return
                        os.write(fd, ANSWER)

        server = threading.Thread(target=serve)
        server.start()
        figures = _load(listener.getsockname()[1], count)
        server.join()
        return figures


@click.command()
@click.option("--round-trips", type=int, default=20_000, show_default=True, help="Round trips per way and round.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Rounds, each way once per round.")
@click.option("--client", "client_port", type=int, default=None, hidden=True)
def main(round_trips: int, rounds: int, client_port: int | None) -> None:
    """Print the server's CPU µs per round trip for each way of waiting, and the wall µs per round trip."""
    if client_port is not None:
        client(client_port, round_trips)
        return
    cpu: dict[str, list[float]] = {way: [] for way in WAYS}
    wall: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            seconds, elapsed = run_epoll_thread(round_trips) if way == "epoll-thread" else run_trio(way, round_trips)
            cpu[way].append(seconds / round_trips * 1e6)
            wall[way].append(elapsed / round_trips * 1e6)
    print(f"{round_trips} round trips x {rounds} rounds; server CPU and wall µs per round trip, median [range]")
    for way in WAYS:
        print(
            f"{way:13s} CPU {statistics.median(cpu[way]):5.1f} [{min(cpu[way]):.1f}-{max(cpu[way]):.1f}]"
            f"   wall {statistics.median(wall[way]):5.1f} [{min(wall[way]):.1f}-{max(wall[way]):.1f}]"
        )


if __name__ == "__main__":
    main()
