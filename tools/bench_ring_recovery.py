"""Recovery after ``kill -9`` (``bench_ring.py --crash`` part b), this tree against a baseline tree, interleaved.

Each version's own ``tools/bench_ring.py`` runs its ``crash_recovery``
(4 ``_node`` processes of that version, node 2 killed, seconds to the first
complete circle of each token in the new epoch). Versions and timeouts
alternate, and their order flips every round, so both see the same load.

Usage: ``python3 tools/bench_ring_recovery.py --baseline DIR [--rounds 5] [--failure-timeouts 1,3]``,
where DIR holds the baseline's files (``git archive main | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parents[1]


def _load(root: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, root / "tools" / "bench_ring.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(root))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a directory holding the baseline's files")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--failure-timeouts", default="1,3")
    args = parser.parse_args()
    versions = {"before": _load(args.baseline.resolve(), "bench_before"), "after": _load(HERE, "bench_after")}
    timeouts = [float(t) for t in args.failure_timeouts.split(",")]
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    print("load average at the start:", os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = list(versions) if i % 2 == 0 else list(versions)[::-1]
            for timeout in timeouts if i % 2 == 0 else timeouts[::-1]:
                for label in order:
                    workdir = Path(tmp) / f"{label}-{i}-{timeout:g}"
                    workdir.mkdir()
                    cw, ccw = versions[label].crash_recovery(4, 2, timeout, workdir)
                    results.setdefault((label, timeout), []).append((cw, ccw))
                    print(f"round {i} F={timeout:g} {label}: cw {cw:.2f} s, ccw {ccw:.2f} s", flush=True)
    print("load average at the end:", os.getloadavg())
    print()
    print("| --failure-timeout | before | after | target |")
    print("| ---: | ---: | ---: | ---: |")
    for timeout in timeouts:
        cells = []
        for label in versions:
            cw = [r[0] for r in results[label, timeout]]
            cells.append(f"{statistics.median(cw):.2f} s [{min(cw):.2f}-{max(cw):.2f}]")
        print(f"| {timeout:g} s | {cells[0]} | {cells[1]} | ≤ {timeout + 1:g} s |")


if __name__ == "__main__":
    main()
