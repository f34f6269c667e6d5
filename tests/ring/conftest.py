"""Helpers for the ring tests: ring files, message files, and real ``trionet ring join`` processes.

Ports: a ring file names every node's port before any node starts, so ring
tests cannot have their nodes bind port 0 and report it; they take ports
from :func:`trionet.ring.demo.free_ports`, whose docstring says why reusing
a port checked free is safe enough there (random, below the ephemeral range,
and a collision fails loudly). Listeners that need no fixed port bind 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trionet.ring.config import NodeAddress, RingConfig

__all__ = ["RingProcess", "read_deliveries", "ring_command", "write_ring"]


def ring_command() -> list[str]:
    """The command line that runs ``trionet ring``, as a user types it."""
    return [sys.executable, "-m", "trionet", "ring"]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_repo_root()) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def ring_cmd() -> list[str]:
    return ring_command()


def write_ring(path: Path, nodes: list[tuple[int, str, int]]) -> Path:
    """Write a ring file listing ``(id, host, port)`` in clockwise order."""
    path.write_text(RingConfig(tuple(NodeAddress(i, h, p) for i, h, p in nodes)).to_toml())
    return path


def read_deliveries(path: Path) -> list[dict]:
    """The JSON lines of a deliveries file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class RingProcess:
    """One ``trionet ring join`` process whose output is collected as it comes.

    Use inside a nursery: ``proc = await RingProcess.start(nursery, argv)``.
    """

    def __init__(self, process: trio.Process, argv: list[str]) -> None:
        self.process = process
        self.argv = argv
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._grew = trio.Event()

    @classmethod
    async def start(cls, nursery: trio.Nursery, argv: list[str]) -> RingProcess:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=_repo_root()
        )
        self = cls(process, argv)
        nursery.start_soon(self._pump, process.stdout, self.stdout)
        nursery.start_soon(self._pump, process.stderr, self.stderr)
        return self

    async def _pump(self, stream, buffer: bytearray) -> None:
        async with stream:
            while chunk := await stream.receive_some(65536):
                buffer += chunk
                self._grew.set()
                self._grew = trio.Event()

    async def wait_for_stderr(self, text: str) -> None:
        """Return once ``text`` has appeared on the process's stderr (fails if it exits first)."""
        while text.encode() not in self.stderr:
            if self.process.returncode is not None:
                raise AssertionError(f"exited {self.process.returncode} before {text!r}: {self.stderr.decode()}")
            with trio.move_on_after(0.5):  # also notice an exit without new output
                await self._grew.wait()

    async def wait(self) -> int:
        """Wait for the exit (bound it with ``trio.fail_after``) and return the exit code."""
        code = await self.process.wait()
        await trio.sleep(0)  # let the pumps take the last bytes
        return code

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    @property
    def output(self) -> str:
        return f"$ {' '.join(self.argv[1:])}\n[stdout]\n{self.stdout.decode()}\n[stderr]\n{self.stderr.decode()[-3000:]}"
