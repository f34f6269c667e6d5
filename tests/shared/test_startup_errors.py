"""Start-up failures people hit are one line on stderr with what to try, for every service (issue 11)."""

from __future__ import annotations

import errno
import socket

import pytest

from trionet.cliutil import describe_os_error
from trionet.serving import ListenError


@pytest.fixture
def busy_port():
    """A port some other socket listens on for the whole test (no pick-and-release race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _one_error_line(result) -> str:
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "serve", "--pg-port", "0"],
        ["names", "serve", "--dns-port", "0"],
    ],
    ids=["sql", "names"],
)
def test_a_port_in_use_is_one_line_with_a_hint(trionet_cmd, busy_port, args):
    result = trionet_cmd(*args, "--port", str(busy_port))
    assert result.returncode == 1
    line = _one_error_line(result)
    assert line.startswith(f"Error: cannot listen on 127.0.0.1:{busy_port}: Address already in use; ")
    assert "choose another port (0 picks a free one)" in line


def test_the_names_dns_port_in_use_is_named(trionet_cmd, busy_port):
    result = trionet_cmd("names", "serve", "--port", "0", "--dns-port", str(busy_port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy_port}" in _one_error_line(result)


def test_a_ring_node_whose_port_is_in_use_is_one_line(trionet_cmd, busy_port, tmp_path):
    ring = tmp_path / "ring.toml"
    ring.write_text(f'[[node]]\nid = 0\nhost = "127.0.0.1"\nport = {busy_port}\n')
    result = trionet_cmd("ring", "join", "--config", str(ring), "--id", "0")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert f"127.0.0.1:{busy_port}" in line and "Address already in use" in line


def test_an_address_that_is_not_local_is_one_line(trionet_cmd):
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind() fails at once, nothing is sent.
    # (--insecure-no-auth: a non-loopback --host needs it, or --users, to get as far as bind().)
    result = trionet_cmd("sql", "serve", "--host", "192.0.2.1", "--port", "0", "--pg-port", "0", "--insecure-no-auth")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "cannot listen on 192.0.2.1:0" in line and "not one of this machine's" in line


def test_the_same_port_twice_is_a_usage_error(trionet_cmd):
    result = trionet_cmd("names", "serve", "--port", "7777", "--dns-port", "7777")
    assert result.returncode == 2
    assert "--port and --dns-port are both 7777" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_logging_keeps_the_traceback(trionet_cmd, busy_port):
    result = trionet_cmd("sql", "serve", "--pg-port", "0", "--port", str(busy_port), "--log-level", "debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "Address already in use" in result.stderr


@pytest.mark.parametrize(
    ("err", "hint"),
    [
        (errno.EACCES, "ports below 1024 need root"),
        (errno.EPERM, "ports below 1024 need root"),
        (errno.EADDRINUSE, "choose another port"),
        (errno.EADDRNOTAVAIL, "not one of this machine's"),
    ],
)
def test_each_error_gets_its_hint(err, hint):
    exc = ListenError(OSError(err, "reason"), "sql", ("127.0.0.1", 80))
    line = describe_os_error(exc)
    assert line.startswith("cannot listen on 127.0.0.1:80: reason; ")
    assert hint in line


def test_a_name_that_does_not_resolve_gets_its_hint():
    cause = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    exc = ListenError(cause, "sql", ("nowhere.invalid", 7401))
    exc.__cause__ = cause
    assert describe_os_error(exc) == (
        "cannot listen on nowhere.invalid:7401: Name or service not known; "
        "the host name does not resolve: give an IP address such as 127.0.0.1 or 0.0.0.0"
    )
