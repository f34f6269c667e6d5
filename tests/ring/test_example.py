"""examples/ring runs as documented (on free ports instead of 7500-7504)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from trionet.ring.demo import free_ports

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ring"


def test_example_ring_runs_with_run_sh(tmp_path):
    ring_dir = tmp_path / "ring"
    shutil.copytree(EXAMPLE, ring_dir)
    config = ring_dir / "ring.toml"
    ports = iter(free_ports(5))
    config.write_text(re.sub(r"port = \d+", lambda _: f"port = {next(ports)}", config.read_text()))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "TRIONET_RING": f"{sys.executable} -m trionet ring", "OUT": str(out)}
    result = subprocess.run(["bash", str(ring_dir / "run.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    sent = {
        i: [line for line in (EXAMPLE / f"messages-{i}.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
        for i in range(5)
    }
    delivered = [json.loads(line) for i in range(5) for line in (out / f"deliveries-{i}.jsonl").read_text().splitlines()]
    assert len(delivered) == sum(len(lines) for lines in sent.values())
    for d in delivered:  # each at its destination, with the text its origin's file gave it
        assert f"{d['destination']} {d['text']}" in sent[d["origin"]]
