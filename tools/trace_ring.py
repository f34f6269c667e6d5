#!/usr/bin/env python3
"""Where a frame's time goes in a ring: wire time and time inside each node, from timestamps.

Runs a 3-node ring on loopback in which only node 0 sends (as the
hop-latency part of ``tools/bench_ring.py``), with every read and every
write of the ring's sockets timestamped. The shipped code carries no
tracing: each node is ``bench_ring.py``'s measured node (``_node --trace``),
the same :class:`~trionet.ring.node.RingNode` as ``trionet ring join``, whose
transport wraps its sockets in :class:`~trionet.ring.stats.StampedStream`
(one time and one list append per read or write; frames are decoded after
the run). Several trees can be compared; they are run in turn, ``--rounds``
times, so that this host's load hits them alike. A tree must have
:mod:`trionet.ring.stats` (the hook) to be traced.

Reported per tree (medians over rounds of each round's median):

- **wire**: a frame written by one node to the same frame read by the next
  (kernel, process wake-up, trio's run loop up to the read);
- **in-node**: a frame read by a node to the next frame written by it in the
  same direction; for the forwarding nodes (1, 2) and for node 0, split by
  what came in and what went out (a message forwarded, a token passed on,
  a token taken to send a message, a returned message and the token after
  it);
- **link round trip**: node 0 writing a message to reading it back.

Usage::

    python tools/trace_ring.py                          # this checkout
    python tools/trace_ring.py before=../old after=.    # compare two checkouts, interleaved
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_ring import TEXT, write_local_ring  # noqa: E402  (the same messages and ring files as the benchmark)

TOKEN, MESSAGE = 5, 6


def run_ring(tree: Path, workdir: Path, messages: int) -> dict[int, list[tuple[int, str, int, int]]]:
    """Run the 3-node ring from ``tree`` with traced sockets; return each node's trace."""
    if not (tree / "trionet" / "ring" / "stats.py").exists():
        raise SystemExit(f"{tree}: no trionet/ring/stats.py, the hook this tool traces with")
    size = 3
    config = write_local_ring(workdir / "ring.toml", size)
    rng = random.Random(size)
    procs = []
    for i in range(size):
        lines = workdir / f"m{i}.txt"
        lines.write_text("".join(f"{rng.randrange(size)} {TEXT}\n" for _ in range(messages if i == 0 else 0)))
        argv = [sys.executable, str(tree / "tools" / "bench_ring.py"), "_node", str(config), str(i), str(lines)]
        argv += [str(workdir / f"stats{i}.json"), "none", "--trace", str(workdir / f"trace{i}")]
        env = dict(os.environ, PYTHONPATH=str(tree))
        procs.append(subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"a ring node exited {proc.returncode}: {err.decode()[-2000:]}")
    traces = {}
    for i in range(size):
        rows = (line.split() for line in (workdir / f"trace{i}").read_text().splitlines())
        traces[i] = [(int(t), op, int(kind), int(d)) for t, op, kind, d in rows]
    return traces


def analyse(traces: dict[int, list[tuple[int, str, int, int]]]) -> dict[str, float]:
    """Median wire and in-node times (µs) of one run."""
    size = len(traces)
    data = {(i, op, d): [(t, k) for t, o, k, dd in traces[i] if o == op and dd == d and k in (TOKEN, MESSAGE)]
            for i in range(size) for op in "RW" for d in (0, 1)}
    following = lambda i, d: (i + 1) % size if d == 0 else (i - 1) % size  # noqa: E731
    found: dict[str, list[int]] = {}
    name = {TOKEN: "token", MESSAGE: "message"}
    for i in range(size):
        for d in (0, 1):
            # The k-th frame written towards the next node is the k-th it reads (TCP keeps order).
            for (written, _), (read, _) in zip(data[i, "W", d], data[following(i, d), "R", d]):
                found.setdefault("wire", []).append(read - written)
            writes = data[i, "W", d]
            j = 0
            for read, kind in data[i, "R", d]:
                while j < len(writes) and writes[j][0] < read:
                    j += 1
                if j < len(writes):
                    where = "node 0" if i == 0 else "nodes 1-2"
                    found.setdefault(f"in-node, {where}: {name[kind]} in, {name[writes[j][1]]} out", []).append(
                        writes[j][0] - read
                    )
    for d in (0, 1):
        sent = [t for t, k in data[0, "W", d] if k == MESSAGE]
        back = [t for t, k in data[0, "R", d] if k == MESSAGE]
        found.setdefault("link round trip at node 0", []).extend(b - s for s, b in zip(sent, back))
    return {key: statistics.median(values) / 1000 for key, values in found.items() if len(values) >= 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", default=[f"this={ROOT}"], help="NAME=PATH of checkouts to compare")
    parser.add_argument("--rounds", type=int, default=5, help="runs per tree, interleaved")
    parser.add_argument("--messages", type=int, default=400, help="messages node 0 sends per run")
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) if "=" in spec else (spec, spec) for spec in args.trees)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, path in trees.items():
                workdir = Path(tempfile.mkdtemp(dir=tmp))
                results[name].append(analyse(run_ring(Path(path).resolve(), workdir, args.messages)))
    keys = sorted({k for runs in results.values() for run in runs for k in run})
    print(f"3-node ring, node 0 sends {args.messages} messages; medians (µs) over {args.rounds} interleaved runs")
    print()
    print("| | " + " | ".join(trees) + " |")
    print("| --- |" + " ---: |" * len(trees))
    for key in keys:
        cells = [statistics.median(run[key] for run in runs if key in run) for runs in results.values()]
        print(f"| {key} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
