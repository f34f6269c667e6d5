"""The names example runs as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "names" / "resolve.py"


def test_resolve_example_runs():
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "gw          A    ok       10.0.0.1" in result.stdout
    assert "printer.lan." in result.stdout
    assert "ended the session at the quota of 4" in result.stdout
    assert "DNS over TCP: gateway.lan. 0 IN A 10.0.0.1" in result.stdout
