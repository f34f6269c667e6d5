"""The SQL examples run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sql"


def test_quickstart_example_runs(quake_db):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(quake_db)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "events, first, last: (2000," in result.stdout
    assert "code 'read_only'" in result.stdout


def test_streaming_example_runs_against_a_server(server_process, quake_db):
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0")
    port = server.wait_listening()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "streaming.py"), str(port)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "streamed 2000 rows" in result.stdout
    assert "1995: " in result.stdout
