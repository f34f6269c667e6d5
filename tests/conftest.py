"""Fixtures every service's tests share: running the real ``trionet`` command as a user would."""

from __future__ import annotations

import logging
import os
import queue
import re
import importlib.util
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import settings

# In CI (.ci/run sets CI=true) hypothesis draws the same examples every run:
# a landing is not decided by the luck of one draw. Locally each run draws
# fresh examples, and tools/soak_tests.py runs the suite many times to look
# for the rare case; a failure found there gets its own @example.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServerProcess:
    """A ``trionet ... serve`` subprocess whose log is read as it is written.

    The bound port is learned from the server's own "listening on HOST:PORT"
    log line, so servers run with ``--port 0``: no fixed ports, no sleeps.
    """

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trionet", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """Block until a log line matches ``pattern``; fail if the process exits first."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output}") from None
            if line is None:
                raise AssertionError(f"process exited before {pattern!r}:\n{self.output}")
            if match := regex.search(line):
                return match

    def wait_listening(self) -> int:
        return int(self.wait_for(_LISTENING.pattern).group(2))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self.proc.stdout.close()


@pytest.fixture(autouse=True)
def _trionet_logger_restored():
    """Put the ``trionet`` logger back as it was after every test.

    A command run in-process (click's ``CliRunner``) calls
    ``trionet.log.configure``, which stops propagation to the root logger
    and points the handler at the runner's stream: without this, a later
    test's ``caplog`` sees nothing (the SQL login tests failed in the whole
    suite after the names and TLS tests, and passed alone).
    """
    logger = logging.getLogger("trionet")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def scrape_metrics():
    """``scrape(port)``: ``GET /metrics`` from a server's metrics port, as ``(sample name, sorted labels) -> value``."""
    return _scrape_metrics


def _scrape_metrics(port: int) -> dict[tuple, float]:
    import socket

    from prometheus_client.parser import text_string_to_metric_families

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture
def server_process():
    """Start ``trionet ARGS...`` processes; they are killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict | None = None) -> ServerProcess:
        proc = ServerProcess(list(args), env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def run_trionet(*args: str, input: str | None = None, timeout: float = 60, env: dict | None = None):
    """Run ``python -m trionet ARGS`` to completion and return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "trionet", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def trionet_cmd():
    """``trionet_cmd("sql", "query", ...)`` runs the real command and returns its result."""
    return run_trionet


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(missing: str | None) -> None:
    """Stop a test whose tool or capability is missing (``missing`` says which and why).

    On a developer's machine the test is skipped, with the reason shown by
    ``-ra``. In CI (``CI=true``) it fails instead: `.ci/run` installs every
    tool the suite needs, so a missing one means the run lost a test and must
    not turn green.
    """
    if missing is None:
        return
    if _in_ci():
        pytest.fail(f"{missing} (CI=true: a missing tool or capability fails the run)", pytrace=False)
    pytest.skip(missing)



def pytest_runtest_setup(item: pytest.Item) -> None:
    """The markers that say what a test needs from the machine.

    ``@pytest.mark.requires_tool("dig", "dnsutils")``: that command on PATH.
    ``@pytest.mark.requires_module("psycopg", ...)``: those Python packages,
    which the ``test`` extra installs (a test module imports them inside
    ``try``, so that a developer without them still collects the rest).
    """
    for mark in item.iter_markers("requires_tool"):
        name, package = mark.args
        require(None if shutil.which(name) else f"{name} is not installed (Debian package: {package})")
    for mark in item.iter_markers("requires_module"):
        missing = [name for name in mark.args if importlib.util.find_spec(name) is None]
        require(f"{', '.join(missing)} not installed (pip install -e '.[test]')" if missing else None)


@pytest.fixture
def require_capability():
    """``require_capability(reason_or_None)``: skip when ``reason`` is set (fail under CI=true)."""
    return require


async def _http_get(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n") -> bytes:
    import trio

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                answer += data
    return answer


@pytest.fixture
def http_get():
    """``answer = await http_get(port[, request])``: one HTTP exchange with 127.0.0.1:PORT, read to the close."""
    return _http_get


@pytest.fixture(scope="session")
def tls_ca():
    """A certificate authority made for this test run (trustme): never a checked-in key."""
    import trustme

    return trustme.CA()


@pytest.fixture
def tls_files(tls_ca, tmp_path):
    """``(cert, key, ca)``: PEM files of a certificate for 127.0.0.1/localhost and the CA that signed it."""
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    paths = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    tls_ca.cert_pem.write_to_path(str(paths[2]))
    return tuple(str(p) for p in paths)
