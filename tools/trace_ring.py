#!/usr/bin/env python3
"""Where a frame's time goes in a ring: wire time and time inside each node, from timestamps.

Runs a 3-node ``trionet ring join`` ring on loopback in which only node 0
sends (as the hop-latency part of ``tools/bench_ring.py``), with every read
and every write of the ring's sockets timestamped. To keep the shipped code
free of tracing, each tree under test is copied to a temporary directory and
the copy's ``EagerSocketStream`` gets two timestamp lines (after ``os.read``,
before ``os.write``); the trees are run in turn, ``--rounds`` times, so that
this host's load hits them alike.

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
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trionet.ring.config import RingConfig  # noqa: E402
from trionet.ring.demo import free_ports  # noqa: E402
from bench_ring import TEXT  # noqa: E402  (the same messages as the benchmark)

_TRACE_SETUP = (
    "import time as _trace_time, atexit as _trace_atexit\n"
    "_TRACE = []\n"
    "_trace_atexit.register(lambda: open(os.environ['TRACE_OUT'], 'w').write("
    "'\\n'.join(' '.join(map(str, e)) for e in _TRACE)))\n"
)
_READ = "                    data = os.read(self._fileno(), max_bytes)\n"
_WRITE = "                    written = os.write(fd, remaining)\n"
# (time, R/W, frame type, direction) of the first frame in the buffer; the
# header is 4 + 14 bytes, the direction is the first field of a token or message.
_READ_TRACE = (
    "                    _TRACE.append((_trace_time.perf_counter_ns(), 'R', *((data[5], data[18]) "
    "if len(data) > 18 else (-1, -1))))\n"
)
_WRITE_TRACE = (
    "                    _TRACE.append((_trace_time.perf_counter_ns(), 'W', *((remaining[5], remaining[18]) "
    "if len(remaining) > 18 else (-1, -1))))\n"
)
TOKEN, MESSAGE = 5, 6


def traced_copy(tree: Path, dest: Path) -> Path:
    """Copy ``tree``'s package to ``dest`` with timestamps at EagerSocketStream's reads and writes."""
    shutil.copytree(tree / "trionet", dest / "trionet")
    serving = dest / "trionet" / "serving.py"
    source = serving.read_text()
    if _READ not in source or _WRITE not in source or "\nimport os\n" not in source:
        raise SystemExit(f"{tree}: EagerSocketStream does not have the lines this tool instruments")
    source = source.replace("\nimport os\n", "\nimport os\n" + _TRACE_SETUP, 1)
    source = source.replace(_READ, _READ + _READ_TRACE, 1).replace(_WRITE, _WRITE_TRACE + _WRITE, 1)
    serving.write_text(source)
    return dest


def run_ring(tree: Path, workdir: Path, messages: int) -> dict[int, list[tuple[int, str, int, int]]]:
    """Run the 3-node ring from ``tree``; return each node's trace."""
    size = 3
    ports = free_ports(size)
    config = workdir / "ring.toml"
    config.write_text(RingConfig.local(size, ports=ports).to_toml())
    rng = random.Random(size)
    procs = []
    for i in range(size):
        lines = workdir / f"m{i}.txt"
        lines.write_text("".join(f"{rng.randrange(size)} {TEXT}\n" for _ in range(messages if i == 0 else 0)))
        env = dict(os.environ, PYTHONPATH=str(tree), TRACE_OUT=str(workdir / f"trace{i}"))
        argv = [sys.executable, "-m", "trionet", "ring", "join", "--config", str(config), "--id", str(i)]
        argv += ["--messages", str(lines), "--log-level", "warning", "--connect-timeout", "60"]
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
        copies = {name: traced_copy(Path(path).resolve(), Path(tmp) / name) for name, path in trees.items()}
        for _ in range(args.rounds):
            for name, copy in copies.items():
                workdir = Path(tempfile.mkdtemp(dir=tmp))
                results[name].append(analyse(run_ring(copy, workdir, args.messages)))
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
