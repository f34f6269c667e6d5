#!/usr/bin/env python3
"""Benchmark ``trionet ring``: throughput and hop latency on loopback, a bare relay baseline, RSS, simulator speed.

For each ring size (default 3, 8 and 32 ``trionet ring join`` processes on
127.0.0.1):

- **throughput**: every node sends ``--messages`` messages to random
  destinations; messages delivered per second from the first send to the last
  return (each node reports its own wall-clock times);
- **hop latency**: only node 0 sends (``--latency-messages`` messages); the
  median round trip it measures, divided by the ring size (the median, so
  that preemption by other processes on a shared machine does not dominate);
- **baseline**: in the same run, a chain of the same number of minimal trio
  TCP relay processes (read a length-prefixed frame, write it to the next
  relay, no acks, no tokens) closed into a ring; a driver sends a frame of the
  same size round it and measures the median round trip, divided by the size.

Then: peak RSS per node (``ru_maxrss``) of a 3-node ring with message files
of N and 10N lines (files are streamed, so it should stay flat), and the
simulator's speed in hops per second (``trionet.ring.sim`` under a mock clock).

Usage::

    python tools/bench_ring.py                 # the full run recorded in docs/benchmarks.md
    python tools/bench_ring.py --quick         # a smaller run to check it works
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trionet.ring.demo import free_ports  # noqa: E402
from trionet.ring.sim import simulate  # noqa: E402

TEXT = "benchmark message " + "x" * 30  # about the size of a chat line


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


RING_COMMAND = [sys.executable, "-m", "trionet", "ring"]


def run_ring(size: int, per_node: dict[int, int], workdir: Path) -> list[dict]:
    """Run a ring of ``size`` join processes to finalization; return each node's stats."""
    ports = free_ports(size)
    config = workdir / f"ring{size}.toml"
    config.write_text("".join(f'[[node]]\nid = {i}\nhost = "127.0.0.1"\nport = {ports[i]}\n\n' for i in range(size)))
    rng = random.Random(size)
    procs = []
    for i in range(size):
        messages = workdir / f"m{size}-{i}.txt"
        with open(messages, "w") as fh:
            for _ in range(per_node.get(i, 0)):
                fh.write(f"{rng.randrange(size)} {TEXT}\n")
        stats = workdir / f"stats{size}-{i}.json"
        argv = [*RING_COMMAND, "join", "--config", str(config), "--id", str(i), "--messages", str(messages)]
        argv += ["--stats", str(stats), "--log-level", "warning", "--connect-timeout", "120"]
        log = open(workdir / f"log{size}-{i}.txt", "w")
        procs.append((subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=log), stats, log))
    results = []
    for proc, stats, log in procs:
        code = proc.wait(timeout=1800)
        log.close()
        if code != 0:
            raise SystemExit(f"a ring node exited {code}: {Path(log.name).read_text()[-2000:]}")
        results.append(json.loads(stats.read_text()))
    return results


def ring_throughput(size: int, messages: int, workdir: Path) -> float:
    stats = run_ring(size, {i: messages for i in range(size)}, workdir)
    start = min(s["first_send"] for s in stats if s["first_send"])
    end = max(s["last_return"] for s in stats if s["last_return"])
    return size * messages / (end - start)


def ring_hop_latency(size: int, messages: int, workdir: Path) -> float:
    stats = run_ring(size, {0: messages}, workdir)
    return stats[0]["round_trip_median"] / size


# --- the baseline: a chain of bare trio relays ------------------------------------


async def _relay(listen_port: int, next_port: int) -> None:
    listeners = await trio.open_tcp_listeners(listen_port, host="127.0.0.1")
    outbound = None
    for _ in range(200):
        try:
            outbound = await trio.open_tcp_stream("127.0.0.1", next_port)
            break
        except OSError:
            await trio.sleep(0.05)
    inbound = await listeners[0].accept()
    async with inbound, outbound:
        buf = bytearray()
        while True:
            data = await inbound.receive_some(65536)
            if not data:
                return
            buf += data
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                n = 4 + int.from_bytes(buf[:4], "big")
                frame, buf[:] = bytes(buf[:n]), buf[n:]
                await outbound.send_all(frame)


async def _driver(size: int, ports: list[int], rounds: int) -> float:
    listeners = await trio.open_tcp_listeners(ports[0], host="127.0.0.1")
    for _ in range(200):
        try:
            outbound = await trio.open_tcp_stream("127.0.0.1", ports[1 % size])
            break
        except OSError:
            await trio.sleep(0.05)
    inbound = await listeners[0].accept()
    payload = struct.pack(">BBIQ", 1, 6, 1, 1) + TEXT.encode()
    frame = len(payload).to_bytes(4, "big") + payload
    samples = []
    async with outbound:
        for _ in range(rounds):
            started = time.perf_counter()
            await outbound.send_all(frame)
            got = b""
            while len(got) < len(frame):
                got += await inbound.receive_some(65536)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) / size


def relay_hop_latency(size: int, rounds: int) -> float:
    """Mean hop latency of a ring of ``size`` processes: a driver and ``size - 1`` bare relays."""
    ports = free_ports(size)
    relays = [
        subprocess.Popen(
            [sys.executable, __file__, "_relay", str(ports[i]), str(ports[(i + 1) % size])], env=_env()
        )
        for i in range(1, size)
    ]
    try:
        return trio.run(_driver, size, ports, rounds)
    finally:
        for proc in relays:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- RSS and the simulator -----------------------------------------------------------


def ring_rss(size: int, messages: int, workdir: Path) -> float:
    stats = run_ring(size, {i: messages for i in range(size)}, workdir)
    return max(s["max_rss_kib"] for s in stats) / 1024


def simulator_hops_per_second(size: int, messages: int) -> tuple[float, int]:
    rng = random.Random(1)
    plan = {i: [(rng.randrange(size), TEXT) for _ in range(messages)] for i in range(size)}
    started = time.perf_counter()
    result = trio.run(lambda: simulate(size, plan), clock=trio.testing.MockClock(autojump_threshold=0))
    elapsed = time.perf_counter() - started
    return result.monitor.hops / elapsed, result.monitor.hops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,8,32", help="ring sizes, comma-separated")
    parser.add_argument("--messages", type=int, default=200, help="messages per node for the throughput run")
    parser.add_argument("--latency-messages", type=int, default=200, help="messages node 0 sends for hop latency")
    parser.add_argument("--rss-messages", type=int, default=1000, help="lines per message file (N; then 10N)")
    parser.add_argument("--repeat", type=int, default=3, help="latency runs per size (the best counts)")
    parser.add_argument("--quick", action="store_true", help="a small run: sizes 3,8; fewer messages")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.messages, args.latency_messages, args.rss_messages, args.repeat = "3,8", 30, 30, 200, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"trio {trio.__version__}, {platform.platform()}")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: python tools/bench_ring.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| nodes | delivered msg/s | ring hop latency | bare relay hop | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size in sizes:
            rate = ring_throughput(size, args.messages, workdir)
            # Best of --repeat, ring and relay interleaved, so that load from
            # other processes on the machine hits both alike.
            hops, bases = [], []
            for _ in range(args.repeat):
                hops.append(ring_hop_latency(size, args.latency_messages, workdir))
                bases.append(relay_hop_latency(size, args.latency_messages))
            hop, base = min(hops), min(bases)
            print(f"| {size} | {rate:,.0f} | {hop * 1e6:,.0f} µs | {base * 1e6:,.0f} µs | {hop / base:.2f}x |", flush=True)
        print()
        small = ring_rss(3, args.rss_messages, workdir)
        large = ring_rss(3, args.rss_messages * 10, workdir)
        print(f"peak RSS per node, 3 nodes: {small:.1f} MiB with {args.rss_messages} lines per file, "
              f"{large:.1f} MiB with {args.rss_messages * 10} ({(large / small - 1) * 100:+.1f}%)")
    rates = [simulator_hops_per_second(32, 5) for _ in range(3)]
    best = max(rates)
    print(f"simulator: {best[0]:,.0f} hops/s (32 nodes, 5 messages each, {best[1]:,} hops, best of 3, "
          f"median {statistics.median(r[0] for r in rates):,.0f})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_relay":
        trio.run(_relay, int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
