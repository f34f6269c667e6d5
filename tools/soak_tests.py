#!/usr/bin/env python3
"""Run the test suite N times in a row with CPU hogs beside it, and report every failure.

A test that leans on a real-clock window passes on an idle machine and
flakes on a busy one; this is the busy one. Each hog is a process spinning
one core for the whole run (``--hogs``, default 1 on this 2-core machine).

Usage::

    python3 tools/soak_tests.py --runs 10            # the check recorded for issue 15
    python3 tools/soak_tests.py --runs 3 -- tests/names -x

Exits 0 when every run passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="suite runs in a row")
    parser.add_argument("--hogs", type=int, default=1, help="CPU-spinning processes beside the suite")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    failures: list[str] = []
    try:
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                cwd=ROOT, capture_output=True, text=True,
            )  # fmt: skip
            summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
            print(f"run {run}: exit {result.returncode} in {time.perf_counter() - started:.0f} s: {summary}", flush=True)
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
            failures += [f"run {run}: {name}" for name in failed]
            if result.returncode != 0 and not failed:
                failures.append(f"run {run}: exit {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    finally:
        for hog in hogs:
            hog.terminate()
    print(f"{args.runs - len({f.split(':')[0] for f in failures})} of {args.runs} runs passed with {args.hogs} hog(s)")
    for failure in failures:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
