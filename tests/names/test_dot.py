"""DNS over TLS (RFC 7858) on --dot-port, and the EDNS options of connections (RFC 7828 keepalive, RFC 7830 padding).

The certificates come from trustme; every server listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
import subprocess
import sys

import dns.asyncquery
import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import trio
from click.testing import CliRunner

from trionet.cli import main as trionet_cli
from trionet.framing import EOF, LengthPrefixFramer, encode_length_prefixed
from trionet.names.hosts import parse_hosts
from trionet.names.metrics import names_registry
from trionet.names.server import NamesConfig, NamesServer
from trionet.serving import receive_event
from trionet.tls import TLSServerConfig, server_context

from .conftest import HOSTS

KEEPALIVE, PADDING = dns.edns.OptionType.KEEPALIVE, dns.edns.OptionType.PADDING


@pytest.fixture
def client_ssl(tls_ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    context.set_alpn_protocols(["dot"])
    return context


@pytest.fixture
def start_dot(nursery, upstream, tls_files):
    """``server, addrs = await start_dot(limit=1, ...)``: a names server with a DoT port, on free ports."""

    async def start(handshake_timeout: float = 10.0, **config):
        config.setdefault("upstream_timeout", 0.5)
        cert, key, _ = tls_files
        tls = TLSServerConfig(server_context(cert, key), cert, key, handshake_timeout)
        server = NamesServer(
            NamesConfig(**config), upstreams=[upstream.upstream], table=parse_hosts(HOSTS)[0], tls=tls
        )
        addrs = await nursery.start(functools.partial(server.serve, dot_port=0), "127.0.0.1", 0, 0)
        return server, addrs

    return start


@pytest.fixture
async def streams():
    """``await streams.tls(addr, context)`` / ``await streams.tcp(addr)``: closed when the test ends."""

    class Streams:
        opened: list[trio.abc.Stream] = []

        async def tcp(self, addr) -> trio.SocketStream:
            stream = await trio.open_tcp_stream(*addr)
            self.opened.append(stream)
            return stream

        async def tls(self, addr, context) -> trio.SSLStream:
            stream = await trio.open_ssl_over_tcp_stream(*addr, ssl_context=context)  # verifies 127.0.0.1
            self.opened.append(stream)
            await stream.do_handshake()
            return stream

    holder = Streams()
    holder.opened = []
    yield holder
    for stream in holder.opened:
        await trio.aclose_forcefully(stream)


async def _ask(stream, query: dns.message.Message) -> dns.message.Message:
    return dns.message.from_wire(await _ask_wire(stream, query))


async def _ask_wire(stream, query: dns.message.Message) -> bytes:
    with trio.fail_after(10):  # a client left waiting for a slot fails here, not by hanging
        await stream.send_all(encode_length_prefixed(query.to_wire(), 2))
        return (await receive_event(stream, LengthPrefixFramer(2, 65535))).payload


async def _wait_until(predicate) -> None:
    """Poll the server's own figures (a real socket's arrival cannot be awaited from here)."""
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


def _option(response: dns.message.Message, code) -> bytes | None:
    for option in response.options:
        if option.otype == code:
            return option.to_wire()
    return None


# --- DoT with real clients --------------------------------------------------------------


async def test_dnspython_query_tls_with_the_trustme_ca(start_dot, client_ssl):
    server, addrs = await start_dot(quota=0)
    host, port = addrs.dot

    def ask(name: str, rdtype: str) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        return dns.query.tls(query, host, port=port, timeout=5, ssl_context=client_ssl, server_hostname="localhost")

    hosts = await trio.to_thread.run_sync(ask, "gateway.lan", "A")
    assert hosts.rcode() == dns.rcode.NOERROR and hosts.answer[0][0].to_text() == "10.0.0.1"
    upstream = await trio.to_thread.run_sync(ask, "www.test", "AAAA")
    assert upstream.answer[0][0].to_text() == "2001:db8::1"
    assert server.dot_service.accepted_total == 2 and server.dns_service.accepted_total == 0


async def test_alpn_dot_is_offered(start_dot, client_ssl, streams):
    server, addrs = await start_dot(quota=0)
    stream = await streams.tls(addrs.dot, client_ssl)
    assert stream.selected_alpn_protocol() == "dot"
    response = await _ask(stream, dns.message.make_query("gw", "A"))
    assert response.answer[0][0].to_text() == "10.0.0.1"


@pytest.mark.requires_tool("kdig", "knot-dnsutils")
async def test_kdig_over_tls_pads_and_is_told_the_keepalive(start_dot, tls_files):
    server, addrs = await start_dot(quota=0, idle_timeout=12.5)
    _, _, ca_file = tls_files
    argv = [
        "kdig", "+tls", f"+tls-ca={ca_file}", "+tls-hostname=localhost", "+ednsopt=11",
        "-p", str(addrs.dot[1]), "@127.0.0.1",
    ]  # fmt: skip
    with trio.fail_after(20):
        done = await trio.run_process([*argv, "gateway.lan"], capture_stdout=True, capture_stderr=True)
    out = done.stdout.decode()
    assert ";; TLS session" in out and "10.0.0.1" in out and "NOERROR" in out
    # kdig pads its queries over TLS, so the answer is padded to 468 bytes.
    assert "PADDING:" in out and ";; Received 468 B" in out
    assert "Option (11): 007D" in out  # 12.5 s in units of 100 ms
    with trio.fail_after(20):
        done = await trio.run_process([*argv, "www.test", "AAAA"], capture_stdout=True, capture_stderr=True)
    assert "2001:db8::1" in done.stdout.decode()


@pytest.mark.requires_tool("dig", "dnsutils")
async def test_dig_tcp_keepalive_shows_the_idle_timeout(start_dot):
    server, addrs = await start_dot(quota=0, idle_timeout=12.5)
    with trio.fail_after(20):
        done = await trio.run_process(
            ["dig", "+tcp", "+keepalive", "-p", str(addrs.dns[1]), "@127.0.0.1", "gw"],
            capture_stdout=True,
            capture_stderr=True,
        )
    out = done.stdout.decode()
    assert "TCP KEEPALIVE: 12.5 secs" in out and "10.0.0.1" in out


# --- admission: TCP and TLS counted together; the handshake holds no slot -------------


async def test_tls_and_tcp_share_the_limit(start_dot, client_ssl, streams):
    server, addrs = await start_dot(limit=1, quota=0)
    holder = await streams.tls(addrs.dot, client_ssl)
    assert (await _ask(holder, dns.message.make_query("gw", "A"))).answer  # the TLS client holds the slot
    waiter = await streams.tcp(addrs.dns)
    query = dns.message.make_query("printer", "A")
    await waiter.send_all(encode_length_prefixed(query.to_wire(), 2))
    await _wait_until(lambda: server.admission.waiting == 1)
    assert server.admission.in_use == 1
    await holder.aclose()  # the slot comes free: the TCP client is admitted and answered
    with trio.fail_after(10):
        frame = await receive_event(waiter, LengthPrefixFramer(2, 65535))
    assert dns.message.from_wire(frame.payload).answer[0][0].to_text() == "10.0.0.2"


async def test_tcp_holds_the_slot_and_a_tls_client_waits(start_dot, client_ssl, streams):
    server, addrs = await start_dot(limit=1, quota=0)
    holder = await streams.tcp(addrs.dns)
    assert (await _ask(holder, dns.message.make_query("gw", "A"))).answer
    waiter = await streams.tls(addrs.dot, client_ssl)  # the handshake is done before admission
    await waiter.send_all(encode_length_prefixed(dns.message.make_query("printer", "A").to_wire(), 2))
    await _wait_until(lambda: server.admission.waiting == 1)
    await holder.aclose()
    with trio.fail_after(10):
        frame = await receive_event(waiter, LengthPrefixFramer(2, 65535))
    assert dns.message.from_wire(frame.payload).answer[0][0].to_text() == "10.0.0.2"


async def test_per_address_share_counts_tls_clients_by_address(start_dot, client_ssl, streams):
    server, addrs = await start_dot(limit=3, quota=0, per_address=1)
    holder = await streams.tls(addrs.dot, client_ssl)
    assert (await _ask(holder, dns.message.make_query("gw", "A"))).answer
    second = await streams.tcp(addrs.dns)  # same address, other port: past its share of 1
    assert (await _ask(second, dns.message.make_query("gw", "A"))).rcode() == dns.rcode.REFUSED


async def test_a_stalled_handshake_never_holds_a_slot(start_dot, client_ssl, streams):
    server, addrs = await start_dot(limit=1, quota=0, handshake_timeout=0.5)
    stalled = await streams.tcp(addrs.dot)  # connects, never says hello
    junk = await streams.tcp(addrs.dot)
    await junk.send_all(b"\x00\x1c" + bytes(28))  # a DNS-over-TCP frame, not a TLS hello
    # Meanwhile clients on both ports are admitted at once: the slot is free.
    tcp_client = await streams.tcp(addrs.dns)
    assert (await _ask(tcp_client, dns.message.make_query("gw", "A"))).answer
    assert server.admission.waiting == 0
    await tcp_client.aclose()
    tls_client = await streams.tls(addrs.dot, client_ssl)
    assert (await _ask(tls_client, dns.message.make_query("gw", "A"))).answer
    assert server.admission.waiting == 0 and server.admission.in_use == 1
    await tls_client.aclose()
    with trio.fail_after(10):
        for stream in (stalled, junk):  # both dropped: the junk at once, the silent one at the timeout
            while await stream.receive_some(100):
                pass
    await _wait_until(lambda: server.dot_service.tls_failures_total == 2)
    assert server.dot_service.accepted_total == 1  # only the real client became a connection
    figures = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in names_registry(server).collect()
        for sample in metric.samples
    }
    assert figures[("trionet_names_tls_handshake_failures_total", ())] == 2
    assert figures[("trionet_connections_total", (("listener", "names-dot"),))] == 1


async def test_a_tls_client_at_its_quota_gets_close_notify(start_dot, client_ssl, streams, caplog):
    caplog.set_level(logging.INFO, "trionet")
    server, addrs = await start_dot(quota=2)
    stream = await streams.tls(addrs.dot, client_ssl)
    framer = LengthPrefixFramer(2, 65535)
    queries = [dns.message.make_query("gw", "A"), dns.message.make_query("www.test", "A")]
    await stream.send_all(b"".join(encode_length_prefixed(q.to_wire(), 2) for q in queries))
    for _ in queries:
        assert dns.message.from_wire((await receive_event(stream, framer)).payload).answer
    with trio.fail_after(10):
        assert await receive_event(stream, framer) is EOF  # a clean TLS close, not a reset
    await _wait_until(lambda: "names-dot connection closed" in caplog.text)
    assert "internal error" not in caplog.text


async def test_a_client_leaving_without_close_notify_just_left(start_dot, client_ssl, streams, caplog):
    caplog.set_level(logging.INFO, "trionet")
    server, addrs = await start_dot(quota=0)
    polite = await streams.tls(addrs.dot, client_ssl)
    assert (await _ask(polite, dns.message.make_query("gw", "A"))).answer
    await polite.aclose()  # close_notify, then FIN
    abrupt = await streams.tls(addrs.dot, client_ssl)
    assert (await _ask(abrupt, dns.message.make_query("gw", "A"))).answer
    await trio.aclose_forcefully(abrupt)  # FIN without close_notify, as dig +tls does
    await _wait_until(lambda: server.endings["left"] == 2)
    await _wait_until(lambda: caplog.text.count("names-dot connection closed: ") == 2)
    assert "closed by peer" not in caplog.text


# --- EDNS on connections ----------------------------------------------------------------


async def test_keepalive_tells_the_idle_timeout_on_tcp_and_tls(start_dot, client_ssl, streams):
    server, addrs = await start_dot(quota=0, idle_timeout=7.25)
    asking = dns.message.make_query("gw", "A", use_edns=0, options=[dns.edns.GenericOption(KEEPALIVE, b"")])
    for stream in (await streams.tcp(addrs.dns), await streams.tls(addrs.dot, client_ssl)):
        response = await _ask(stream, asking)
        assert _option(response, KEEPALIVE) == (72).to_bytes(2, "big")  # 7.25 s, rounded down to 100 ms
        upstream = dns.message.make_query("www.test", "A", use_edns=0, options=asking.options)
        assert _option(await _ask(stream, upstream), KEEPALIVE) == (72).to_bytes(2, "big")
        plain = await _ask(stream, dns.message.make_query("gw", "A", use_edns=0))
        assert plain.edns == 0 and _option(plain, KEEPALIVE) is None  # not asked: not told


async def test_keepalive_with_a_value_is_formerr_on_tcp_and_ignored_on_udp(start_dot, streams):
    server, addrs = await start_dot(quota=0)
    bad = dns.message.make_query("gw", "A", use_edns=0, options=[dns.edns.GenericOption(KEEPALIVE, b"\x00\x64")])
    tcp_answer = await _ask(await streams.tcp(addrs.dns), bad)
    assert tcp_answer.rcode() == dns.rcode.FORMERR and tcp_answer.edns == 0
    udp_answer = await dns.asyncquery.udp(bad, addrs.dns[0], port=addrs.dns[1], timeout=5)
    assert udp_answer.rcode() == dns.rcode.NOERROR and _option(udp_answer, KEEPALIVE) is None


async def test_padding_over_tls_only(start_dot, client_ssl, streams):
    server, addrs = await start_dot(quota=0)
    tls = await streams.tls(addrs.dot, client_ssl)
    tcp = await streams.tcp(addrs.dns)
    for name, rdtype in [("gw", "A"), ("multi.lan", "A"), ("www.test", "AAAA"), ("nope.test", "A")]:
        query = dns.message.make_query(name, rdtype, use_edns=0, pad=128)
        padded = await _ask_wire(tls, query)
        assert len(padded) % 468 == 0
        response = dns.message.from_wire(padded)
        assert _option(response, PADDING) is not None and response.question == query.question
        plain = dns.message.from_wire(await _ask_wire(tcp, query))
        assert _option(plain, PADDING) is None and plain.answer == response.answer
    # Without a padding option in the query, no padding, even over TLS.
    unpadded = await _ask_wire(tls, dns.message.make_query("gw", "A", use_edns=0))
    assert _option(dns.message.from_wire(unpadded), PADDING) is None and len(unpadded) % 468 != 0


async def test_two_opt_records_are_formerr_over_tls(start_dot, client_ssl, streams):
    server, addrs = await start_dot(quota=0)
    wire = bytearray(dns.message.make_query("gw", "A", use_edns=0).to_wire())
    opt = bytes(wire[-11:])
    wire[11] = 2  # ARCOUNT 2, and a second OPT record after the first
    stream = await streams.tls(addrs.dot, client_ssl)
    await stream.send_all(encode_length_prefixed(bytes(wire) + opt, 2))
    frame = await receive_event(stream, LengthPrefixFramer(2, 65535))
    assert dns.message.from_wire(frame.payload).rcode() == dns.rcode.FORMERR


# --- the command line ----------------------------------------------------------------------


def test_dot_port_needs_a_certificate_and_a_certificate_needs_the_port(tls_files, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 gw\n")
    runner = CliRunner()
    base = ["names", "serve", "--hosts", str(hosts), "--port", "0", "--dns-port", "0"]
    result = runner.invoke(trionet_cli, [*base, "--dot-port", "0"])
    assert result.exit_code == 2 and "--dot-port serves DNS over TLS: give it --tls-cert" in result.output
    cert, key, _ = tls_files
    result = runner.invoke(trionet_cli, [*base, "--tls-cert", cert, "--tls-key", key])
    assert result.exit_code == 2 and "give --dot-port PORT too" in result.output
    result = runner.invoke(trionet_cli, [*base, "--dot-port", "0", "--tls-cert", cert])
    assert result.exit_code == 2 and "--tls-key is missing" in result.output


@pytest.mark.slow
@pytest.mark.requires_tool("kdig", "knot-dnsutils")
async def test_the_real_command_serves_dot(upstream, tls_files, tmp_path):
    cert, key, ca_file = tls_files
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.0.1 alpha.lan\n")
    process = await trio.lowlevel.open_process(
        [
            sys.executable, "-m", "trionet", "names", "serve", "--port", "0", "--dns-port", "0",
            "--dot-port", "0", "--tls-cert", cert, "--tls-key", key, "--tls-handshake-timeout", "2",
            "--hosts", str(hosts), "--upstream", f"{upstream.address[0]}:{upstream.address[1]}",
            "--log-level", "info", "--log-queries",
        ],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    log = bytearray()
    try:
        with trio.fail_after(20):
            while not (found := re.search(rb"names-dot listening on 127\.0\.0\.1:(\d+)", log)):
                chunk = await process.stderr.receive_some()
                assert chunk, log.decode(errors="replace")
                log += chunk
        argv = ["kdig", "+tls", f"+tls-ca={ca_file}", "+tls-hostname=localhost", "-p", found[1].decode()]
        with trio.fail_after(20):
            done = await trio.run_process([*argv, "@127.0.0.1", "alpha.lan"], capture_stdout=True)
        assert "10.9.0.1" in done.stdout.decode()
        with trio.fail_after(20):
            while not re.search(rb"query 127\.0\.0\.1:\d+ tls alpha\.lan A hosts NOERROR", log):
                log += await process.stderr.receive_some()
    finally:
        process.terminate()
        with trio.fail_after(15):
            await process.wait()
        await process.stderr.aclose()
    assert process.returncode == 0
