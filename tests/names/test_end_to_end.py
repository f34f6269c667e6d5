"""End to end: the real ``trionet names serve`` in a subprocess, asked by dig, kdig and ``trionet names query``."""

import json
import re
import signal
import subprocess
import sys

import pytest
import trio

pytestmark = pytest.mark.slow

LISTENING = re.compile(rb"(names|names-dns) listening on 127\.0\.0\.1:(\d+)")


async def _start_server(nursery, upstream, hosts_path, *args):
    process = await trio.lowlevel.open_process(
        [
            sys.executable, "-m", "trionet", "names", "serve",
            "--port", "0", "--dns-port", "0",
            "--hosts", str(hosts_path),
            "--upstream", f"{upstream.address[0]}:{upstream.address[1]}",
            *args,
        ],
        stderr=subprocess.PIPE,
    )
    ports: dict[str, int] = {}
    log = bytearray()
    try:
        with trio.fail_after(20):
            while len(ports) < 2:
                chunk = await process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"server exited: {log.decode(errors='replace')}")
                log += chunk
                for kind, port in LISTENING.findall(log):
                    ports[kind.decode()] = int(port)
    except BaseException:
        process.kill()  # never leave a server behind
        with trio.CancelScope(shield=True):
            await process.wait()
        raise

    async def drain() -> None:
        async for chunk in process.stderr:
            log.extend(chunk)

    nursery.start_soon(drain)
    return process, ports, log


async def _run(*argv) -> str:
    with trio.fail_after(20):
        result = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)
    return result.stdout.decode() + result.stderr.decode()


@pytest.mark.requires_tool("dig", "dnsutils")
@pytest.mark.requires_tool("kdig", "knot-dnsutils")
async def test_dig_kdig_and_query_against_the_real_server(nursery, upstream, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.0.1 alpha.lan alpha\n10.9.0.2 beta.lan\nthis line is bad\n")
    process, ports, log = await _start_server(
        nursery, upstream, hosts, "--quota", "0", "--log-level", "info", "--log-queries"
    )
    try:
        dns_port = str(ports["names-dns"])
        out = await _run("dig", "+tcp", "+short", "-p", dns_port, "@127.0.0.1", "alpha")
        assert out.strip() == "10.9.0.1"
        out = await _run("dig", "+tcp", "-p", dns_port, "@127.0.0.1", "www.test", "AAAA")
        assert "2001:db8::1" in out and "status: NOERROR" in out
        out = await _run("dig", "+tcp", "-p", dns_port, "@127.0.0.1", "nope.test")
        assert "status: NXDOMAIN" in out and "SOA" in out
        out = await _run("dig", "+tcp", "+short", "-p", dns_port, "@127.0.0.1", "-x", "10.9.0.2")
        assert out.strip() == "beta.lan."
        out = await _run("kdig", "+tcp", "-p", dns_port, "@127.0.0.1", "alias2.test", "A")
        assert "192.0.2.10" in out and "NOERROR" in out
        # Issue 13: plain dig (UDP) and kdig over UDP reach the same port number.
        out = await _run("dig", "+short", "+tries=1", "-p", dns_port, "@127.0.0.1", "alpha")
        assert out.strip() == "10.9.0.1"
        out = await _run("kdig", "+retry=0", "-p", dns_port, "@127.0.0.1", "www.test", "AAAA")
        assert "2001:db8::1" in out and "NOERROR" in out and "UDP" in out
        # --log-queries: one line per query, UDP and TCP alike.
        with trio.fail_after(10):
            while not re.search(rb"query 127\.0\.0\.1:\d+ udp www\.test AAAA cache NOERROR [\d.]+ms", log):
                await trio.sleep(0.05)
        assert re.search(rb"query 127\.0\.0\.1:\d+ tcp alpha A hosts NOERROR", log)

        out = await _run(
            sys.executable, "-m", "trionet", "names", "query", "--port", str(ports["names"]),
            "--format", "json", "alpha", "www.test", "www.test", "10.9.0.1",
        )
        answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [(a["name"], a["type"], a["source"]) for a in answers] == [
            ("alpha", "A", "hosts"),
            ("www.test", "A", "dns"),
            ("www.test", "A", "cache"),
            ("10.9.0.1", "PTR", "hosts"),
        ]
        assert answers[1]["addresses"] == ["192.0.2.1"] and answers[2]["ttl"] <= 300

        # A changed hosts file is picked up on SIGHUP, without dropping anyone.
        hosts.write_text("10.9.0.3 gamma.lan\n")
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            while b"1 name(s)" not in log.partition(b"SIGHUP: reloading")[2]:
                await trio.sleep(0.05)
        out = await _run("dig", "+tcp", "+short", "-p", dns_port, "@127.0.0.1", "gamma.lan")
        assert out.strip() == "10.9.0.3"
        assert b"hosts:3: " in log and b"line skipped" in log  # the bad line, by file and line
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await process.wait()
    assert process.returncode == 0


async def test_query_cli_at_the_quota_lists_the_rest_and_reconnects(nursery, upstream, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.0.1 a.lan\n10.9.0.2 b.lan\n10.9.0.3 c.lan\n")
    process, ports, log = await _start_server(nursery, upstream, hosts, "--quota", "2")
    try:
        base = [sys.executable, "-m", "trionet", "names", "query", "--port", str(ports["names"])]
        out = await _run(*base, "a.lan", "b.lan", "c.lan")
        assert "quota reached" in out and "unanswered: c.lan" in out
        out = await _run(*base, "--reconnect", "a.lan", "b.lan", "c.lan")
        assert "c.lan A 10.9.0.3" in out
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await process.wait()
