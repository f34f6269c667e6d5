"""The shared TLS layer: contexts with clear errors, and a bounded handshake before the handler."""

from __future__ import annotations

import logging
import socket
import ssl

import click
import pytest
import trio
from click.testing import CliRunner

from trionet.serving import TCPService
from trionet.tls import TLSConfigError, TLSServerConfig, client_context, server_context, server_tls_options


async def _echo_once(conn) -> None:
    await conn.stream.send_all(b"hello " + await conn.stream.receive_some(100))


async def test_a_tls_service_talks_tls_to_a_verifying_client(tls_files, nursery):
    cert, key, ca_file = tls_files
    service = TCPService("test", _echo_once, logging.getLogger("test"), tls=TLSServerConfig(server_context(cert, key), cert, key))
    [(host, port)] = await nursery.start(service.serve, "127.0.0.1", 0)
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=client_context(ca_file))
    await stream.send_all(b"tls")
    assert await stream.receive_some(100) == b"hello tls"
    assert await stream.receive_some(100) == b""  # a clean close_notify, not a truncated stream
    await stream.aclose()


async def test_a_stalled_handshake_is_dropped_and_never_reaches_the_handler(tls_files, nursery):
    cert, key, _ = tls_files
    called = []

    async def handler(conn) -> None:
        called.append(conn)

    config = TLSServerConfig(server_context(cert, key), cert, key, handshake_timeout=0.3)
    service = TCPService("test", handler, logging.getLogger("test"), tls=config)
    [(host, port)] = await nursery.start(service.serve, "127.0.0.1", 0)
    plain = await trio.open_tcp_stream(host, port)  # connects, never says hello
    with trio.fail_after(5):
        assert await plain.receive_some(100) == b""  # the server hung up
    junk = await trio.open_tcp_stream(host, port)
    await junk.send_all(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
    with trio.fail_after(5):
        while await junk.receive_some(100):
            pass
    await plain.aclose()
    await junk.aclose()
    assert called == [] and service.tls_failures_total == 2


def test_bad_files_are_named_in_one_line(tls_files, tls_ca, tmp_path):
    cert, key, ca_file = tls_files
    with pytest.raises(TLSConfigError, match="--tls-cert .*missing.pem: no such file"):
        server_context(str(tmp_path / "missing.pem"), key)
    other_key = tmp_path / "other.pem"
    tls_ca.issue_cert("example.org").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TLSConfigError, match="the key must belong to the certificate"):
        server_context(cert, str(other_key))
    with pytest.raises(TLSConfigError, match="--tls-ca .*no such file"):
        client_context(str(tmp_path / "nope.pem"))


def test_the_flags_go_together(tls_files):
    cert, key, _ = tls_files
    seen = []

    @click.command()
    @server_tls_options
    def cmd(tls):
        seen.append(tls)

    runner = CliRunner()
    assert runner.invoke(cmd, []).exit_code == 0 and seen[-1] is None
    result = runner.invoke(cmd, ["--tls-cert", cert])
    assert result.exit_code == 2 and "--tls-key is missing" in result.output
    assert runner.invoke(cmd, ["--tls-cert", cert, "--tls-key", key]).exit_code == 0
    assert isinstance(seen[-1].context, ssl.SSLContext)


class _RecordingSocket:
    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))


@pytest.mark.parametrize("key_type", ["RSA", "ECDSA"])
def test_server_end_point_is_the_certificate_hash_scramp_and_libpq_compute(tmp_path, key_type):
    import trustme
    from scramp.core import CBindData

    from trionet.tls import server_end_point

    kind = getattr(trustme.KeyType, key_type)
    cert = trustme.CA(key_type=kind).issue_cert("127.0.0.1", key_type=kind)
    path = tmp_path / "cert.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))  # the key first, then the chain: the first CERTIFICATE counts
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    assert server_end_point(str(path)) == CBindData.from_der(der).data
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n")
    assert server_end_point(str(tmp_path / "junk.pem")) is None
    assert server_end_point(str(tmp_path / "missing.pem")) is None


async def test_the_handshake_ends_with_an_immediate_ack(tls_files, nursery):
    """The client's request behind its Finished is not held 40 ms by Nagle waiting for a delayed ACK."""
    from trionet.tls import handshake

    cert, key, ca_file = tls_files
    client_end, server_end = trio.testing.memory_stream_pair()
    server_end.socket = _RecordingSocket()  # what a SocketStream has; recorded instead of set
    client = trio.SSLStream(client_end, client_context(ca_file), server_hostname="localhost")
    nursery.start_soon(client.do_handshake)
    tls = await handshake(server_end, server_context(cert, key), timeout=5)
    quickack = getattr(socket, "TCP_QUICKACK", None)  # Linux's; elsewhere nothing is set
    assert server_end.socket.options == ([(socket.IPPROTO_TCP, quickack, 1)] if quickack else [])
    await trio.aclose_forcefully(tls)
    await trio.aclose_forcefully(client)


async def test_the_server_tls_transport_waits_for_room_and_reports_a_reset(tls_files, nursery):
    """Records larger than the socket buffers are sent whole; a client's reset is a broken stream, not a hang."""
    import struct

    from trionet.tls import EagerSocketStream

    cert, key, ca_file = tls_files
    size = 16_000_000  # more than loopback's socket buffers hold (4 to 6 MB at most): the server must wait for room
    outcomes: list[str] = []
    done = trio.Event()

    async def handler(conn) -> None:
        try:
            assert isinstance(conn.stream.transport_stream, EagerSocketStream)
            assert await conn.stream.receive_some(10) == b"go"
            await conn.stream.send_all(b"x" * size)
            await conn.stream.receive_some(10)  # the client resets instead of sending
        except trio.BrokenResourceError:
            outcomes.append("broken")
        finally:
            done.set()

    service = TCPService("test", handler, logging.getLogger("test"), tls=TLSServerConfig(server_context(cert, key), cert, key))
    [(host, port)] = await nursery.start(service.serve, "127.0.0.1", 0)
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=client_context(ca_file))
    await stream.send_all(b"go")
    received = 0
    with trio.fail_after(10):
        while received < size:
            received += len(await stream.receive_some(65536))
        raw = stream.transport_stream.socket
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        raw.close()
        await done.wait()
    assert received == size and outcomes == ["broken"]
