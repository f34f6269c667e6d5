"""The SQL examples run as documented."""

from __future__ import annotations

import socket
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
    server = server_process("sql", "serve", "--db", str(quake_db), "--port", "0", "--pg-port", "0")
    port = server.wait_listening()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "streaming.py"), "--port", str(port)], capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "streamed 2000 rows" in result.stdout
    assert "1995: " in result.stdout


def test_streaming_example_explains_when_no_server_runs():
    with socket.socket() as sock:  # a port nothing listens on while the example runs
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "streaming.py"), "--port", str(port)], capture_output=True, text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}" in result.stderr
    assert f"trionet sql serve --port {port}" in result.stderr
    assert "Traceback" not in result.stderr
