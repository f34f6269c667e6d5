#!/usr/bin/env python3
"""Benchmark ``trionet ring``: throughput and hop latency on loopback, bare relay baselines, RSS, simulator speed.

For each ring size (default 3, 8 and 32 ``trionet ring join`` processes on
127.0.0.1):

- **throughput**: every node sends ``--messages`` messages to random
  destinations; messages delivered per second from the first send to the last
  return (each node reports its own wall-clock times);
- **hop latency**: only node 0 sends (``--latency-messages`` messages); the
  median round trip of its messages from being written to its link to being
  read back, divided by the ring size (the median, so that preemption by
  other processes on a shared machine does not dominate). That is where a
  relay's driver measures too; the round trip as node 0's core sees it (from
  the token's arrival to the message back at the token task, so including
  node 0's own work at both ends) is shown beside it;
- **baselines**: in the same run, interleaved with the ring, a chain of the
  same number of minimal trio TCP relay processes (read a length-prefixed
  frame, write it to the next relay, no acks, no tokens) closed into a ring;
  a driver keeps one frame of the same size going round (and, for the
  "each way" baseline, one the other way too: the ring's traffic) and
  measures the median round trip, divided by the size. The relays and their
  driver use the same stream as ring links (``EagerSocketStream``), so the
  ratio compares the ring's work with a relay's and not two socket layers;
  a relay on trio's plain ``SocketStream`` is reported beside them;
- **CPU per frame** at a forwarding process, ring node or relay, from its
  first frame to its last.

Latencies are the median of ``--repeat`` interleaved rounds (ring, relays);
a ratio is the median of the ratios within each round, so that load on a
shared host, which comes and goes over seconds, hits both sides of a ratio.

Then: peak RSS per node (``ru_maxrss``) of a 3-node ring with message files
of N and 10N lines (files are streamed, so it should stay flat), and the
simulator's speed in hops per second (``tests/ring/sim.py`` under a mock clock).

Each ring node is a process of this script (``_node``) that builds the same
:class:`~trionet.ring.node.RingNode` as ``trionet ring join`` and attaches
the measuring hooks of :mod:`trionet.ring.stats` (the node's code carries
none). Run against a tree without that module (before it existed), it falls
back to ``trionet ring join --stats``, that tree's hidden option, so that
one version of this script measures both.

Usage::

    python tools/bench_ring.py --repeat 7      # the full run recorded in docs/benchmarks.md
    python tools/bench_ring.py --quick         # a smaller run to check it works
    python tools/bench_ring.py --crash --sizes 3,8 --repeat 5   # crashes (below)

With ``--crash`` it measures instead, each against a baseline in the same run,
interleaved: (a) hop latency with the links' shared secret (``--secret-file``)
against without; (b) the time from ``kill -9`` of a node of 4 to the first
complete circle of each token in the new epoch, at each ``--failure-timeouts``
value; (c) delivered messages per second of a run through a ``kill -9`` and a
restart of one node against the same run without.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trionet.ring.config import RingConfig  # noqa: E402
from trionet.ring.demo import free_ports  # noqa: E402

HOOKS = (ROOT / "trionet" / "ring" / "stats.py").exists()
"""Whether the tree under test has :mod:`trionet.ring.stats` (else: ``join --stats``)."""
if HOOKS:
    from trionet.ring.transport import EagerSocketStream  # noqa: E402
else:
    from trionet.serving import EagerSocketStream  # noqa: E402

TEXT = "benchmark message " + "x" * 30  # about the size of a chat line
SECRET = bytes(range(32))  # the shared secret of the --secret-file runs (what join reads from the file)


def write_local_ring(path: Path, size: int) -> Path:
    """Write a ring file of ``size`` nodes on free ports of 127.0.0.1 to ``path``; return ``path``."""
    path.write_text(RingConfig.local(size, ports=free_ports(size)).to_toml())
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


RING_COMMAND = [sys.executable, "-m", "trionet", "ring"]


def run_ring(
    size: int, per_node: dict[int, int], workdir: Path, measure: str = "all", extra: tuple[str, ...] = ()
) -> list[dict]:
    """Run a ring of ``size`` node processes to finalization; return each node's stats.

    ``measure``: ``all`` times every node's messages; ``latency`` times node
    0's, at its core and at its links, and lets the other nodes forward
    unwatched; ``none`` only reports CPU and memory.
    """
    config = write_local_ring(workdir / f"ring{size}.toml", size)
    rng = random.Random(size)
    procs = []
    for i in range(size):
        messages = workdir / f"m{size}-{i}.txt"
        with open(messages, "w") as fh:
            for _ in range(per_node.get(i, 0)):
                fh.write(f"{rng.randrange(size)} {TEXT}\n")
        stats = workdir / f"stats{size}-{i}.json"
        if HOOKS:
            watch = "all" if measure == "all" or (measure == "latency" and i == 0) else "none"
            argv = [sys.executable, __file__, "_node", str(config), str(i), str(messages), str(stats), watch]
            argv += ["--links"] if measure == "latency" and i == 0 else []
            argv += list(extra)
        else:
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


def ring_hop_latency(
    size: int, messages: int, workdir: Path, secret: bool = False
) -> tuple[float, float, float]:
    """Median hop latency at the links and as node 0's core sees it (round trips / size), and the
    forwarding nodes' mean CPU per frame. ``secret``: the links authenticate (``--secret-file``)."""
    extra = ("--secret", SECRET.hex()) if secret else ()
    stats = run_ring(size, {0: messages}, workdir, "latency", extra)
    cpu = statistics.mean(s["cpu_busy"] / s["frames_received"] for s in stats[1:] if s["frames_received"])
    return stats[0]["link_round_trip_median"] / size, cpu, stats[0]["round_trip_median"] / size


# --- crashes: recovery time, throughput through a crash and a restart -------------


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)  # a benchmark polling files, not a test


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _first_circle(arrivals: dict[int, list[tuple[float, int]]], after: float, old_epoch: int) -> float | None:
    """When one direction's token first completed a circle of the live nodes in an epoch above ``old_epoch``.

    ``arrivals``: by live node, its ``(time, epoch)`` token arrivals in that
    direction. A circle is complete at the second arrival, in the same epoch,
    at the node where the token of that epoch arrived first, once every live
    node has seen it: a full turn (and at most one hop more than a turn
    counted from the node that injected it).
    """
    best = None
    epochs = {e for rows in arrivals.values() for t, e in rows if t > after and e > old_epoch}
    for epoch in epochs:
        firsts = {n: [t for t, e in rows if t > after and e == epoch] for n, rows in arrivals.items()}
        if not all(firsts.values()):
            continue
        start_node = min(firsts, key=lambda n: firsts[n][0])
        seen_all = max(ts[0] for ts in firsts.values())
        again = [t for t in firsts[start_node][1:] if t >= seen_all]
        if again and (best is None or again[0] < best):
            best = again[0]
    return best


def crash_recovery(size: int, victim: int, failure_timeout: float, workdir: Path) -> tuple[float, float]:
    """Seconds from ``kill -9`` of node ``victim`` to each token's first complete circle in a new epoch (cw, ccw).

    Every live node sends a long stream of messages to the other live nodes
    (the victim sends none and is sent none), so the tokens never park and
    the ring does not finalize under the measurement. Each node process
    writes the wall-clock time and epoch of every token arrival; after the
    kill, once ``failure_timeout`` + 8 s have passed, every process is killed.
    """
    config = write_local_ring(workdir / f"crash{size}.toml", size)
    live = [i for i in range(size) if i != victim]
    rng = random.Random(victim)
    procs, event_files = [], {}
    for i in range(size):
        messages = workdir / f"cm{i}.txt"
        with open(messages, "w") as fh:
            for _ in range(0 if i == victim else 100_000):
                fh.write(f"{rng.choice([n for n in live if n != i])} {TEXT}\n")
        event_files[i] = workdir / f"events{i}.txt"
        event_files[i].write_text("")
        argv = [sys.executable, __file__, "_node", str(config), str(i), str(messages), str(workdir / "unused.json"),
                "none", "--failure-timeout", str(failure_timeout), "--events", str(event_files[i])]
        procs.append(subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        _wait_for(lambda: event_files[victim].stat().st_size > 0, 60, "the ring to run")
        time.sleep(1.0)  # the ring in its stride, messages in flight
        killed_at = time.time()
        procs[victim].kill()
        time.sleep(failure_timeout + 8)
    finally:
        _kill_all(procs)
    arrivals: dict[int, dict[int, list[tuple[float, int]]]] = {0: {}, 1: {}}
    old_epoch = 0
    for i in live:
        for line in event_files[i].read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # the last line, cut by the kill
            t, direction, epoch = float(parts[0]), int(parts[1]), int(parts[2])
            arrivals[direction].setdefault(i, []).append((t, epoch))
            if t <= killed_at:
                old_epoch = max(old_epoch, epoch)
    result = []
    for direction in (0, 1):
        done = _first_circle(arrivals[direction], killed_at, old_epoch)
        result.append(float("nan") if done is None else done - killed_at)
    return result[0], result[1]


def crash_restart_rate(size: int, victim: int, per_node: int, crash: bool, down: float, workdir: Path) -> tuple[float, int]:
    """Delivered messages per second of a run of ``trionet ring join`` processes to finalization, and duplicates.

    Every node but ``victim`` sends ``per_node`` messages to random nodes
    (the victim included); every node keeps a deliveries file (and so a
    journal). With ``crash``, the victim is killed with ``kill -9`` once it
    has delivered 20 messages, and started again with the same arguments
    ``down`` seconds later. The rate is all deliveries over the time from
    starting the processes to node 0's exit: startup counts in both runs.
    """
    run = workdir / f"rate-{int(crash)}-{time.monotonic_ns()}"
    run.mkdir()
    config = write_local_ring(run / "ring.toml", size)
    rng = random.Random(size)
    argvs = []
    for i in range(size):
        messages = run / f"m{i}.txt"
        with open(messages, "w") as fh:
            for _ in range(0 if i == victim else per_node):
                fh.write(f"{rng.choice([n for n in range(size) if n != i])} {TEXT}\n")
        argvs.append([*RING_COMMAND, "join", "--config", str(config), "--id", str(i), "--messages", str(messages),
                      "--deliveries", str(run / f"d{i}.jsonl"), "--failure-timeout", "1", "--log-level", "warning"])
    logs = [open(run / f"log{i}.txt", "w") for i in range(size)]
    started = time.perf_counter()
    procs = [subprocess.Popen(a, env=_env(), stdout=subprocess.DEVNULL, stderr=log) for a, log in zip(argvs, logs)]
    try:
        if crash:
            victim_file = run / f"d{victim}.jsonl"
            _wait_for(lambda: victim_file.exists() and victim_file.read_text().count("\n") >= 20, 60,
                      "the victim's deliveries")
            procs[victim].kill()
            procs[victim].wait()
            time.sleep(down)
            procs[victim] = subprocess.Popen(argvs[victim], env=_env(), stdout=subprocess.DEVNULL, stderr=logs[victim])
        code = procs[0].wait(timeout=300)
        elapsed = time.perf_counter() - started
        for proc in procs[1:]:
            proc.wait(timeout=60)
    finally:
        _kill_all(procs)
        for log in logs:
            log.close()
    if code != 0:
        raise SystemExit(f"node 0 exited {code}: {(run / 'log0.txt').read_text()[-2000:]}")
    ids = [json.loads(line)["id"] for i in range(size) for line in (run / f"d{i}.jsonl").read_text().splitlines()]
    if len(set(ids)) != (size - 1) * per_node:
        raise SystemExit(f"{len(set(ids))} distinct deliveries, expected {(size - 1) * per_node}")
    return len(set(ids)) / elapsed, len(ids) - len(set(ids))


def crash_main(args: argparse.Namespace) -> None:
    """The crash measurements: --secret-file hop latency, recovery time, throughput through a crash."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("(a) hop latency with --secret-file against without (only node 0 sends "
              f"{args.latency_messages} messages; interleaved, {args.repeat} rounds):")
        print()
        print("| nodes | without secret | with secret | ratio (secret / none) |")
        print("| ---: | ---: | ---: | ---: |")
        for size in [int(s) for s in args.sizes.split(",")]:
            runs: dict[bool, list[tuple[float, ...]]] = {False: [], True: []}
            for i in range(args.repeat):
                for secret in ((False, True) if i % 2 == 0 else (True, False)):
                    runs[secret].append(ring_hop_latency(size, args.latency_messages, workdir, secret))
            ratios = [s[0] / n[0] for s, n in zip(runs[True], runs[False])]
            print(f"| {size} | {_spread_us(runs[False])} | {_spread_us(runs[True])} | {_spread(ratios)} |", flush=True)
        print()
        print(f"(b) kill -9 of node 2 of 4 to the first complete circle of each token in the new epoch "
              f"({args.repeat} rounds per timeout, interleaved):")
        print()
        print("| --failure-timeout | cw token | ccw token | target |")
        print("| ---: | ---: | ---: | ---: |")
        timeouts = [float(t) for t in args.failure_timeouts.split(",")]
        recovery: dict[float, list[tuple[float, float]]] = {t: [] for t in timeouts}
        for i in range(args.repeat):
            for timeout in (timeouts if i % 2 == 0 else timeouts[::-1]):
                recovery[timeout].append(crash_recovery(4, 2, timeout, workdir))
                print(f"  round {i}, F={timeout:g}: cw {recovery[timeout][-1][0]:.2f} s, "
                      f"ccw {recovery[timeout][-1][1]:.2f} s", flush=True)
        for timeout in timeouts:
            cells = []
            for d in (0, 1):
                values = [r[d] for r in recovery[timeout]]
                cells.append(f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]")
            print(f"| {timeout:g} s | {cells[0]} | {cells[1]} | ≤ {timeout + 1:g} s |")
        print()
        print(f"(c) delivered msg/s, 4 nodes, nodes 0, 1, 3 send {args.crash_messages} each, start to node 0's exit; "
              f"crash: kill -9 of node 2, started again {args.down:g} s later (--failure-timeout 1); "
              f"{args.repeat} rounds, interleaved:")
        print()
        rates: dict[bool, list[float]] = {False: [], True: []}
        duplicates = 0
        for i in range(args.repeat):
            for crash in ((False, True) if i % 2 == 0 else (True, False)):
                rate, dup = crash_restart_rate(4, 2, args.crash_messages, crash, args.down, workdir)
                rates[crash].append(rate)
                duplicates += dup
        ratios = [c / s for c, s in zip(rates[True], rates[False])]
        print("| steady | crash and restart | ratio (crash / steady) | deliveries seen twice |")
        print("| ---: | ---: | ---: | ---: |")
        print(f"| {statistics.median(rates[False]):,.0f} msg/s [{min(rates[False]):,.0f}-{max(rates[False]):,.0f}] "
              f"| {statistics.median(rates[True]):,.0f} msg/s [{min(rates[True]):,.0f}-{max(rates[True]):,.0f}] "
              f"| {_spread(ratios)} | {duplicates} |")


# --- the baselines: a ring of bare trio relays ------------------------------------
#
# Each relay reads length-prefixed frames and writes them on unchanged: no
# parsing, acks, tokens or channels. ``eager`` wraps its sockets as ring links
# are wrapped (EagerSocketStream), else trio's plain SocketStream. With
# ``both`` it relays the other way too (frames from its next neighbour go to
# its previous one), which is the ring's traffic: one frame in flight in each
# direction at every moment.


async def _pump(inbound: trio.abc.ReceiveStream, outbound: trio.abc.SendStream, counter: list[float]) -> None:
    buf = bytearray()
    while True:
        data = await inbound.receive_some(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            n = 4 + int.from_bytes(buf[:4], "big")
            frame, buf[:] = bytes(buf[:n]), buf[n:]
            if counter[0] == 0:
                counter[1] = time.process_time()
            counter[0] += 1
            await outbound.send_all(frame)


def _wrap(stream: trio.SocketStream, eager: bool) -> trio.abc.HalfCloseableStream:
    return EagerSocketStream(stream) if eager else stream


async def _dial(port: int, eager: bool) -> trio.abc.HalfCloseableStream:
    for _ in range(400):
        try:
            return _wrap(await trio.open_tcp_stream("127.0.0.1", port), eager)
        except OSError:
            await trio.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


async def _relay(listen_port: int, next_port: int, both: bool, eager: bool) -> None:
    listeners = await trio.open_tcp_listeners(listen_port, host="127.0.0.1")
    to_next = await _dial(next_port, eager)
    from_prev = _wrap(await listeners[0].accept(), eager)
    counter = [0, 0.0]  # frames relayed, CPU time at the first one

    async def pump(inbound, outbound, nursery) -> None:
        await _pump(inbound, outbound, counter)
        nursery.cancel_scope.cancel()  # one side closed: close both, so the next relay sees EOF too

    async with from_prev, to_next, trio.open_nursery() as nursery:
        nursery.start_soon(pump, from_prev, to_next, nursery)
        if both:
            nursery.start_soon(pump, to_next, from_prev, nursery)
    # For the driver: CPU per frame relayed, from the first frame to the end.
    print(json.dumps({"frames": counter[0], "cpu": time.process_time() - counter[1]}), flush=True)


async def _driver(size: int, ports: list[int], rounds: int, both: bool, eager: bool) -> list[float]:
    """Play node 0: keep one frame going round clockwise (and, with ``both``, one anticlockwise)."""
    listeners = await trio.open_tcp_listeners(ports[0], host="127.0.0.1")
    to_next = await _dial(ports[1 % size], eager)
    from_prev = _wrap(await listeners[0].accept(), eager)
    payload = struct.pack(">BBIQ", 1, 6, 1, 1) + TEXT.encode()
    frame = len(payload).to_bytes(4, "big") + payload
    samples: list[float] = []

    async def circulate(out: trio.abc.SendStream, back: trio.abc.ReceiveStream) -> None:
        for _ in range(rounds):
            started = time.perf_counter()
            await out.send_all(frame)
            got = b""
            while len(got) < len(frame):
                got += await back.receive_some(65536)
            samples.append(time.perf_counter() - started)

    async with from_prev, to_next:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(circulate, to_next, from_prev)
            if both:
                nursery.start_soon(circulate, from_prev, to_next)
    return samples


def relay_hop_latency(size: int, rounds: int, both: bool = False, eager: bool = True) -> tuple[float, float]:
    """Median hop latency and CPU per frame of a ring of a driver and ``size - 1`` bare relays."""
    ports = free_ports(size)
    argv = [sys.executable, __file__, "_relay"]
    relays = [
        subprocess.Popen(
            [*argv, str(ports[i]), str(ports[(i + 1) % size]), str(int(both)), str(int(eager))],
            env=_env(), stdout=subprocess.PIPE, text=True,
        )
        for i in range(1, size)
    ]
    try:
        samples = trio.run(_driver, size, ports, rounds, both, eager)
    finally:
        reports = []
        for proc in relays:
            try:
                out, _ = proc.communicate(timeout=30)
                reports.append(json.loads(out))
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
    cpu = statistics.mean(r["cpu"] / r["frames"] for r in reports if r["frames"]) if reports else float("nan")
    return statistics.median(samples) / size, cpu


# --- a measured ring node -----------------------------------------------------------


def _node(argv: list[str]) -> None:
    """One ring node, as ``trionet ring join`` runs it, with :mod:`trionet.ring.stats` attached.

    ``--trace FILE`` writes every frame the node read or wrote, one line
    each: time (ns), ``R``/``W``, frame type (5 token, 6 message, 0 other),
    direction (-1 for none); ``tools/trace_ring.py`` reads it.
    """
    parser = argparse.ArgumentParser(prog="bench_ring.py _node")
    parser.add_argument("config_path")
    parser.add_argument("node_id", type=int)
    parser.add_argument("messages_path")
    parser.add_argument("stats_path")
    parser.add_argument("watch", choices=("all", "none"))
    parser.add_argument("--links", action="store_true", help="time this node's messages at its links too")
    parser.add_argument("--trace", metavar="FILE")
    parser.add_argument("--secret", metavar="HEX", help="the ring's shared secret, as --secret-file gives it")
    parser.add_argument("--failure-timeout", type=float, default=3.0)
    parser.add_argument(
        "--events", metavar="FILE",
        help="write 'wall-time direction epoch' for each token arrival, flushed at once, and no stats",
    )
    args = parser.parse_args(argv)
    from trionet.ring.frames import Message, Token
    from trionet.ring.config import iter_messages, load_config
    from trionet.ring.node import NodeOptions, RingNode
    from trionet.ring.stats import NodeStats, StreamLog, run_measured
    from trionet.ring.transport import TcpTransport

    config = load_config(args.config_path)
    log = StreamLog() if args.links or args.trace else None
    node = RingNode(
        config,
        args.node_id,
        messages=iter_messages(args.messages_path, config.ids),
        transport=TcpTransport(stream=log.stream) if log else None,
        options=NodeOptions(connect_timeout=120, failure_timeout=args.failure_timeout),
        secret=bytes.fromhex(args.secret) if args.secret else None,
    )
    if args.events:
        events = open(args.events, "w", buffering=1)  # one line each: the process is killed, not stopped

        def watch(event: str, node_id: int, detail: object) -> None:
            if event == "token-in":
                events.write(f"{time.time():.6f} {int(detail[0])} {node.core.epoch}\n")

        node.core.observer = watch
        trio.run(node.run)
        return
    stats = NodeStats(round_trips=args.watch == "all")
    trio.run(run_measured, node, stats)
    Path(args.stats_path).write_text(json.dumps(stats.report(node, log if args.links else None)))
    if args.trace:
        kinds = {Token: 5, Message: 6}
        with open(args.trace, "w") as fh:
            for stamp, op, event in log.frames():
                direction = getattr(event.frame, "direction", -1)
                fh.write(f"{stamp} {op} {kinds.get(type(event.frame), 0)} {int(direction)}\n")


# --- RSS and the simulator -----------------------------------------------------------


def _spread(values: list[float]) -> str:
    """A ratio as ``median [lowest-highest]`` over rounds."""
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def _spread_us(runs: list[tuple[float, ...]]) -> str:
    hops = [r[0] * 1e6 for r in runs]
    return f"{statistics.median(hops):,.0f} µs [{min(hops):,.0f}-{max(hops):,.0f}]"


def ring_rss(size: int, messages: int, workdir: Path) -> float:
    stats = run_ring(size, {i: messages for i in range(size)}, workdir, "none")
    return max(s["max_rss_kib"] for s in stats) / 1024


def simulator_hops_per_second(size: int, messages: int) -> tuple[float, int]:
    # Imported here: the simulation needs trio.testing, which imports pytest,
    # and the node processes started from this script must not carry that.
    import trio.testing

    if HOOKS:
        sys.path.insert(0, str(ROOT / "tests" / "ring"))
        from sim import simulate  # the test harness, tests/ring/sim.py
    else:
        from trionet.ring.sim import simulate
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
    parser.add_argument("--repeat", type=int, default=5, help="latency runs per size (the median counts)")
    parser.add_argument("--quick", action="store_true", help="a small run: sizes 3,8; fewer messages")
    parser.add_argument(
        "--crash", action="store_true",
        help="measure crashes instead: --secret-file hop latency, recovery after kill -9, msg/s through a restart",
    )
    parser.add_argument("--failure-timeouts", default="1,3", help="with --crash: the --failure-timeout values")
    parser.add_argument("--crash-messages", type=int, default=300, help="with --crash: messages per sending node")
    parser.add_argument("--down", type=float, default=1.0, help="with --crash: seconds the killed node stays down")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.messages, args.latency_messages, args.rss_messages, args.repeat = "3,8", 30, 30, 200, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"trio {trio.__version__}, {platform.platform()}")
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: python tools/bench_ring.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    if args.crash:
        crash_main(args)
        return
    latency_rows, cpu_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size in sizes:
            rate = ring_throughput(size, args.messages, workdir)
            # The ring and both relays interleaved, --repeat times (in turn
            # first and last, against drift), each ratio taken within one
            # round: this host's load comes and goes over seconds, and hits
            # the runs of one round alike. The figures are medians over rounds.
            # one/each: relays on the ring's own stream; plain: trio's SocketStream.
            kinds = ("ring", "one", "each", "plain")
            runs: dict[str, list[tuple[float, ...]]] = {k: [] for k in kinds}
            for i in range(args.repeat):
                order = kinds if i % 2 == 0 else kinds[1:] + kinds[:1]
                for kind in order:
                    if kind == "ring":
                        runs["ring"].append(ring_hop_latency(size, args.latency_messages, workdir))
                    else:
                        runs[kind].append(
                            relay_hop_latency(size, args.latency_messages, both=kind == "each", eager=kind != "plain")
                        )
            cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
            core_hop = statistics.median(r[2] for r in runs["ring"])
            ratios = {k: [r[0] / b[0] for r, b in zip(runs["ring"], runs[k])] for k in kinds[1:]}
            ratio = {k: _spread(v) for k, v in ratios.items()}
            latency_rows.append(
                f"| {size} | {rate:,.0f} | {_spread_us(runs['ring'])} | {_spread_us(runs['one'])} | {ratio['one']} "
                f"| {_spread_us(runs['each'])} | {ratio['each']} | {_spread_us(runs['plain'])} | {ratio['plain']} "
                f"| {core_hop * 1e6:,.0f} µs |"
            )
            cpu_rows.append(
                f"| {size} | {cpu['ring'] * 1e6:,.0f} µs | {cpu['one'] * 1e6:,.0f} µs | {cpu['each'] * 1e6:,.0f} µs "
                f"| {cpu['plain'] * 1e6:,.0f} µs | {cpu['ring'] / cpu['each']:.2f}x |"
            )
            print(f"  {size} nodes, per round: ring hop " + " ".join(f"{r[0] * 1e6:.0f}" for r in runs["ring"])
                  + " µs; ratio to the one-frame relay " + " ".join(f"{r:.2f}" for r in ratios["one"]), flush=True)
        print()
        print(f"Hop latency (median of {args.repeat} interleaved rounds [lowest-highest round]; each run's figure "
              "is a median; a ratio is the median of the rounds' ratios [their range]). Relays use the ring "
              "links' EagerSocketStream unless marked plain:")
        print()
        print("| nodes | delivered msg/s | ring hop | relay hop, one frame | ratio | relay hop, one frame each way "
              "| ratio | plain relay hop, one frame | ratio | ring hop as node 0's core sees it |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(latency_rows))
        print()
        print("CPU per frame at a forwarding process (from its first frame to its last):")
        print()
        print("| nodes | ring node | relay, one frame | relay, one frame each way | plain relay, one frame "
              "| ring / relay each way |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(cpu_rows))
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
    if len(sys.argv) > 1 and sys.argv[1] == "_node":
        _node(sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "_relay":
        trio.run(_relay, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1")
    else:
        main()
