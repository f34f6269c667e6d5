#!/usr/bin/env python3
"""Benchmark ``trionet names`` against dnsmasq and unbound: cached-hit queries per second over DNS over TCP and UDP.

Every server answers the same generated hosts file (``--names`` entries), so
every query is a hit that needs no upstream. Two scenarios, from issue 3:

- ``course``: ``trionet names serve --limit 3 --quota 4``; load from 3
  concurrent connections, 4 queries per connection (each connection is
  closed after its 4th answer and a new one opened);
- ``open``: ``--limit 64 --quota 0``; 32 connections, 99 queries each;
- ``udp`` (issue 13): the same server as ``open``, asked over UDP by
  ``dnsperf`` (no ``-m tcp``) with 32 queries outstanding (``-q 32``). UDP
  has no connection and no quota; trionet runs with ``--udp-rate 0``
  (every query comes from 127.0.0.1). dnsperf only: the trio generator
  speaks TCP.

trionet runs with ``--per-address 0`` in both: every load connection comes
from 127.0.0.1.

The load comes from ``dnsperf`` (Debian package ``dnsperf``) when it is
installed: ``dnsperf -m tcp -c CLIENTS -O num-queries-per-conn=N``. Without
it, a trio load generator in this file does the same (each connection keeps
up to ``--window`` queries outstanding; it shares the CPU with the servers,
so its figures are lower). dnsmasq (``dnsmasq-base``) and unbound
(``unbound``) are measured in the same run when installed, as the baseline.

Usage::

    python3 tools/bench_names.py                 # both scenarios, every server found
    python3 tools/bench_names.py --duration 20 --scenario open --generator trio

Prints a Markdown table, ready for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import trio

REPO = Path(__file__).resolve().parents[1]
"""The checkout whose ``trionet`` is measured as ``trionet``."""

SCENARIOS = {
    # name: (trionet --limit, --quota, load clients, queries per connection)
    "course": (3, 4, 3, 4),
    "open": (64, 0, 32, 99),
    "udp": (64, 0, 1, 0),  # one dnsperf client; per_conn 0: datagrams, no connections
}
UDP_OUTSTANDING = 32
"""Queries dnsperf keeps outstanding in the udp scenario (``-q``)."""


@dataclass
class Result:
    server: str
    scenario: str
    generator: str
    qps: float
    answered: int
    lost: int
    avg_latency_ms: float
    command: str
    spread: tuple[float, float] = (0.0, 0.0)


def free_port() -> int:
    """A port free for both TCP and UDP right now (the servers bind both)."""
    for _ in range(100):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def write_inputs(directory: Path, count: int) -> tuple[Path, Path, list[str]]:
    names = [f"host-{i:05d}.bench.lan" for i in range(count)]
    hosts = directory / "hosts"
    hosts.write_text("".join(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256} {n}\n" for i, n in enumerate(names)))
    queries = directory / "queries.txt"
    queries.write_text("".join(f"{n} A\n" for n in names))
    return hosts, queries, names


def wait_until_answers(port: int, name: str, timeout: float = 15.0) -> None:
    """Poll with a TCP query until the server answers (servers here print no ready line)."""
    query = dns.message.make_query(name, "A")
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=1)
            if response.rcode() == dns.rcode.NOERROR and response.answer:
                return
        except (OSError, dns.exception.DNSException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers {name} on port {port}")
        time.sleep(0.1)


@contextlib.contextmanager
def running(argv: list[str], port: int, probe: str, **kwargs):
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    try:
        try:
            wait_until_answers(port, probe)
        except RuntimeError:
            process.kill()
            _, err = process.communicate(timeout=5)
            raise RuntimeError(f"{argv[0]} did not start: {err.decode(errors='replace')[-2000:]}") from None
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def trionet_server(hosts: Path, port: int, limit: int, quota: int, _tmp: Path, upstream: int | None = None):
    line_port = free_port()
    while line_port == port:  # a port just closed may come back at once; the server refuses the same two
        line_port = free_port()
    argv = [
        sys.executable, "-m", "trionet", "names", "serve",
        *(["--hosts", str(hosts)] if upstream is None else []),
        "--dns-port", str(port), "--port", str(line_port),
        "--limit", str(limit), "--quota", str(quota), "--backlog", "1000",
        # All the load comes from 127.0.0.1: the per-address share (issue 9,
        # default 8) would refuse 24 of the open scenario's 32 connections.
        "--per-address", "0",
        # ...and the UDP rate limit (default 100 answers/s per address) would drop most of the udp scenario.
        "--udp-rate", "0",
        "--upstream", f"127.0.0.1:{upstream or 9}", "--log-level", "warning",
    ]
    # The checkout this tool belongs to, whatever the working directory
    # (``python -m`` puts the working directory first on sys.path).
    return argv, {"env": dict(os.environ, PYTHONPATH=str(REPO)), "cwd": str(REPO)}


def dnsmasq_server(hosts: Path, port: int, limit: int, quota: int, tmp: Path, upstream: int | None = None):
    argv = [
        shutil.which("dnsmasq") or "dnsmasq",
        "--keep-in-foreground", "--no-resolv", "--no-hosts",
        f"--addn-hosts={hosts}" if upstream is None else f"--server=127.0.0.1#{upstream}",
        f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
        "--cache-size=10000", "--user=root", "--group=root", "--pid-file=",
        "--conf-file=/dev/null",
        # One forked process per TCP connection, 20 at most by default: the
        # open scenario's 32 clients would stall in the listen queue.
        f"--max-tcp-connections={max(limit, 64)}",
    ]
    return argv, {}


def unbound_server(
    hosts: Path, port: int, limit: int, quota: int, tmp: Path, upstream: int | None = None, *, ttl: int = 0, name: str = "unbound"
):
    lines = [
        "server:",
        f"  interface: 127.0.0.1@{port}",
        f"  port: {port}",
        "  do-daemonize: no", '  username: ""', '  chroot: ""', f'  directory: "{tmp}"',
        '  pidfile: ""', "  use-syslog: no", "  verbosity: 0", "  num-threads: 1",
        "  incoming-num-tcp: 128", "  do-ip6: no", "  access-control: 127.0.0.0/8 allow",
        '  module-config: "iterator"',
    ]
    if upstream is None:
        lines.append('  local-zone: "bench.lan." static')
        for line in hosts.read_text().splitlines():
            address, host = line.split()
            lines.append(f'  local-data: "{host}. {ttl} IN A {address}"')
    else:
        lines += ["  do-not-query-localhost: no", "forward-zone:", '  name: "bench.lan."', f"  forward-addr: 127.0.0.1@{upstream}"]
    conf = tmp / f"{name}.conf"
    conf.write_text("\n".join(lines) + "\n")
    return [shutil.which("unbound") or "unbound", "-d", "-c", str(conf)], {}


SERVERS = {"trionet": trionet_server, "dnsmasq": dnsmasq_server, "unbound": unbound_server}


def start_upstream(hosts: Path, tmp: Path, stack: contextlib.ExitStack, probe: str) -> int:
    """The ``--answers cache`` upstream: an unbound serving every name with TTL 3600; returns its port."""
    if not shutil.which("unbound"):
        sys.exit("--answers cache needs unbound as the upstream (Debian: apt-get install unbound)")
    port = free_port()
    argv, kwargs = unbound_server(hosts, port, 0, 0, tmp, ttl=3600, name="upstream")
    stack.enter_context(running(argv, port, probe, **kwargs))
    return port


def warm_up(port: int, queries: Path) -> None:
    """Ask every name once over UDP, so the measured queries are cache hits."""
    subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "1", "-q", "32"],
        capture_output=True, timeout=120, check=False,
    )


def server_command(server: str, *args):
    """``trionet@DIR`` is trionet run from another checkout (``PYTHONPATH=DIR``), for before/after runs."""
    if server.startswith("trionet@"):
        argv, kwargs = trionet_server(*args)
        checkout = os.path.abspath(server.partition("@")[2])
        # Run from there too: ``python -m`` puts the working directory first on sys.path.
        return argv, {**kwargs, "env": dict(os.environ, PYTHONPATH=checkout), "cwd": checkout}
    return SERVERS[server](*args)


def available(server: str) -> bool:
    return server == "trionet" or server.startswith("trionet@") or shutil.which(server) is not None


def run_dnsperf(port: int, queries: Path, clients: int, per_conn: int, duration: float) -> tuple[Result, str]:
    if per_conn:
        argv = [
            "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-m", "tcp", "-d", str(queries),
            "-l", str(duration), "-c", str(clients), "-O", f"num-queries-per-conn={per_conn}",
        ]
    else:  # UDP
        argv = [
            "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
            "-l", str(duration), "-c", str(clients), "-q", str(UDP_OUTSTANDING),
        ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else float("nan")

    qps = number(r"Queries per second:\s+([\d.]+)")
    answered = int(number(r"Queries completed:\s+(\d+)"))
    lost = int(number(r"Queries lost:\s+(\d+)"))
    latency = number(r"Average Latency \(s\):\s+([\d.]+)") * 1000
    return Result("", "", "dnsperf", qps, answered, lost, latency, " ".join(argv)), out


async def _trio_load(port: int, names: list[str], clients: int, per_conn: int, duration: float, window: int):
    wires = []
    for i, name in enumerate(names):
        query = dns.message.make_query(name, "A")
        wire = query.to_wire()
        wires.append(wire[2:])  # the ID is set per query
    answered = lost = 0
    latency_total = 0.0
    deadline = trio.current_time() + duration

    async def connection(worker: int, counter: list[int]) -> None:
        nonlocal lost
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        sent: dict[int, float] = {}
        slots = trio.Semaphore(window)
        async with stream:

            async def sender() -> None:
                for _ in range(per_conn):
                    await slots.acquire()
                    counter[0] += 1
                    msg_id = counter[0] & 0xFFFF
                    body = struct.pack("!H", msg_id) + wires[counter[0] % len(wires)]
                    sent[msg_id] = trio.current_time()
                    await stream.send_all(struct.pack("!H", len(body)) + body)

            async def receiver() -> None:
                nonlocal answered, latency_total
                buf = b""
                got = 0
                while got < per_conn:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                        size = struct.unpack("!H", buf[:2])[0]
                        msg_id = struct.unpack("!H", buf[2:4])[0]
                        buf = buf[2 + size :]
                        started = sent.pop(msg_id, None)
                        if started is not None:
                            latency_total += trio.current_time() - started
                        answered += 1
                        got += 1
                        slots.release()

            with trio.move_on_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    await receiver()
                    nursery.cancel_scope.cancel()
            lost += len(sent)

    async def worker(index: int) -> None:
        counter = [index * 100_000]
        while trio.current_time() < deadline:
            try:
                await connection(index, counter)
            except OSError:
                await trio.sleep(0.01)

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(worker, index)
    elapsed = trio.current_time() - started
    return answered / elapsed, answered, lost, (latency_total / answered * 1000 if answered else float("nan"))


def run_trio_load(port, names, clients, per_conn, duration, window) -> Result:
    qps, answered, lost, latency = trio.run(_trio_load, port, names, clients, per_conn, duration, window)
    command = f"trio load generator: {clients} connections x {per_conn} queries, window {window}, {duration:g}s"
    return Result("", "", "trio", qps, answered, lost, latency, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--scenario", choices=["course", "open", "udp", "both", "all", "dot-course", "dot-open", "dot"],
                        default="all",
                        help="both = course and open; all = course, open and udp (default); "
                        "DNS over TLS against unbound: dot-course, dot-open, dot (both)")
    parser.add_argument("--generator", choices=["auto", "dnsperf", "trio"], default="auto",
                        help="load generator; auto = dnsperf when installed, else trio")
    parser.add_argument("--servers", default="trionet,dnsmasq,unbound",
                        help="comma-separated servers to measure, when installed (default: all three); "
                        "trionet@DIR runs trionet from the checkout DIR (a before/after comparison in one run)")
    parser.add_argument("--answers", choices=["hosts", "cache"], default="hosts",
                        help="hosts: every server answers from the generated hosts file (default); cache: every "
                        "server forwards to an upstream unbound (TTL 3600) and is warmed up first, so answers "
                        "come from its cache")
    parser.add_argument("--names", type=int, default=1000, help="entries in the generated hosts file (default 1000)")
    parser.add_argument("--window", type=int, default=8,
                        help="trio generator: queries outstanding per connection (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per server and scenario; the median is reported (default 3)")
    parser.add_argument("--base-checkout", metavar="DIR",
                        help="DoT scenarios: also measure the trionet package found in DIR (PYTHONPATH=DIR) as 'trionet-base'")
    args = parser.parse_args()
    if args.scenario.startswith("dot"):
        return dot_main(args)

    generator = args.generator
    if generator == "auto":
        generator = "dnsperf" if shutil.which("dnsperf") else "trio"
    if generator == "dnsperf" and not shutil.which("dnsperf"):
        sys.exit("dnsperf is not installed (Debian: apt-get install dnsperf)")
    scenarios = {"both": ["course", "open"], "all": ["course", "open", "udp"]}.get(args.scenario, [args.scenario])
    if generator == "trio" and "udp" in scenarios:
        print("# the trio generator speaks TCP only: udp scenario left out", file=sys.stderr)
        scenarios.remove("udp")
    servers = [s for s in args.servers.split(",") if s]
    missing = [s for s in servers if not available(s)]
    servers = [s for s in servers if available(s)]
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"# generator: {generator}; servers: {', '.join(servers)}"
          + (f" (not installed: {', '.join(missing)})" if missing else ""))

    results: list[Result] = []
    paired: dict[tuple[str, str], tuple[float, float, float] | None] = {}
    # The server's CPU time per answered query (its process and the children it
    # reaped: dnsmasq forks one per TCP connection), from /proc: far less
    # sensitive than queries/s to what else runs on the machine.
    cpu_per_query: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-names-") as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        hosts, queries, names = write_inputs(tmp, args.names)
        for scenario in scenarios:
            limit, quota, clients, per_conn = SCENARIOS[scenario]
            ports: dict[str, int] = {}
            argvs: dict[str, list[str]] = {}
            with contextlib.ExitStack() as servers_running:
                upstream = start_upstream(hosts, tmp, servers_running, names[0]) if args.answers == "cache" else None
                for server in servers:
                    port = free_port()
                    argv, kwargs = server_command(server, hosts, port, limit, quota, tmp, upstream)
                    pids[server] = servers_running.enter_context(running(argv, port, names[0], **kwargs)).pid
                    ports[server], argvs[server] = port, argv
                    if upstream is not None:
                        warm_up(port, queries)
                # Interleave the servers, so that a burst of load from elsewhere
                # on the machine does not land on one server only.
                runs: dict[str, list[Result]] = {server: [] for server in servers}
                for _ in range(args.repeat):
                    for server in servers:
                        used = cpu_seconds(pids[server], children=True)
                        if generator == "dnsperf":
                            result, _raw = run_dnsperf(ports[server], queries, clients, per_conn, args.duration)
                        else:
                            result = run_trio_load(ports[server], names, clients, per_conn, args.duration, args.window)
                        used = cpu_seconds(pids[server], children=True) - used
                        cpu_per_query[(scenario, server)].append(used / max(result.answered, 1) * 1e6)
                        runs[server].append(result)
                        print(f"# {scenario:<6} {server:<8} {result.qps:10.0f} q/s  lost {result.lost}", file=sys.stderr)
            for server in servers:
                if "dnsmasq" in runs:  # rounds are interleaved: compare each round with dnsmasq's own
                    ratios = sorted(r.qps / b.qps for r, b in zip(runs[server], runs["dnsmasq"]) if b.qps)
                    paired[(scenario, server)] = (ratios[len(ratios) // 2], ratios[0], ratios[-1]) if ratios else None
                ordered = sorted(runs[server], key=lambda r: r.qps)
                median = ordered[len(ordered) // 2]
                median.server, median.scenario = server, scenario
                median.spread = (ordered[0].qps, ordered[-1].qps)
                median.command = f"server: {' '.join(argvs[server])}\nload: {median.command}"
                results.append(median)

    print()
    print(f"Median of {args.repeat} run(s) of {args.duration:g}s each, servers interleaved; answers from {args.answers}.")
    print()
    print("The per-round ratio divides each round's figure by dnsmasq's in the same round (median, min - max).")
    print()
    print("| scenario | server | queries/s (median) | min - max | vs dnsmasq | per-round ratio | avg latency | lost "
          "| server CPU µs/query (median, min - max) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scenario in scenarios:
        base = next((r.qps for r in results if r.scenario == scenario and r.server == "dnsmasq"), None)
        for r in (r for r in results if r.scenario == scenario):
            ratio = f"{r.qps / base:.2f}x" if base else "-"
            rounds = paired.get((scenario, r.server))
            per_round = f"{rounds[0]:.2f}x ({rounds[1]:.2f} - {rounds[2]:.2f})" if rounds else "-"
            low, high = r.spread
            cpu = sorted(cpu_per_query[(scenario, r.server)])
            print(
                f"| {scenario} | {r.server} | {r.qps:,.0f} | {low:,.0f} - {high:,.0f} | {ratio} | {per_round} "
                f"| {r.avg_latency_ms:.2f} ms | {r.lost} | {cpu[len(cpu) // 2]:.0f} ({cpu[0]:.0f} - {cpu[-1]:.0f}) |"
            )
    print()
    for r in results:
        print(f"<!-- {r.scenario} / {r.server}\n{r.command}\n-->")



# --- DNS over TLS (issue 13): trionet's --dot-port against unbound's tls-port -------------

DOT_SCENARIOS = {
    # name: (trionet --limit, --quota, load clients, queries per connection), as the TCP ones
    "dot-course": (3, 4, 3, 4),
    "dot-open": (64, 0, 32, 99),
}
DOT_SERVERS = ("trionet", "unbound")  # dnsmasq has no DNS over TLS


def write_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A trustme CA and a certificate for 127.0.0.1 signed by it: ``(cert, key, ca)`` PEM files."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = directory / "dot-cert.pem", directory / "dot-key.pem", directory / "dot-ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def wait_until_answers_tls(port: int, name: str, ca_file: Path, timeout: float = 15.0) -> None:
    """Poll with a DNS-over-TLS query, verifying the certificate, until the server answers."""
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    query = dns.message.make_query(name, "A")
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = dns.query.tls(
                query, "127.0.0.1", port=port, timeout=1, ssl_context=context, server_hostname="127.0.0.1"
            )
            if response.rcode() == dns.rcode.NOERROR and response.answer:
                return
        except (OSError, dns.exception.DNSException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers {name} over TLS on port {port}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_dot(argv: list[str], port: int, probe: str, ca_file: Path, env: dict[str, str] | None = None):
    # A trionet runs from the checkout its PYTHONPATH names: ``python -m`` puts
    # the working directory first on sys.path, ahead of PYTHONPATH.
    cwd = env["PYTHONPATH"] if env and "PYTHONPATH" in env else None
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    try:
        try:
            wait_until_answers_tls(port, probe, ca_file)
        except RuntimeError:
            process.kill()
            _, err = process.communicate(timeout=5)
            raise RuntimeError(f"{argv[0]} did not start: {err.decode(errors='replace')[-2000:]}") from None
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def trionet_dot_server(hosts: Path, port: int, limit: int, quota: int, tmp: Path, cert: Path, key: Path):
    argv, _ = trionet_server(hosts, 0, limit, quota, tmp)
    # Only the DoT port is measured: the other two take whatever is free, so none collides with it.
    argv[argv.index("--port") + 1] = "0"
    return [*argv, "--dot-port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)]


def unbound_dot_server(hosts: Path, port: int, limit: int, quota: int, tmp: Path, cert: Path, key: Path):
    argv, _ = unbound_server(hosts, port, limit, quota, tmp)
    conf = tmp / "unbound.conf"
    lines = conf.read_text().splitlines()
    # The interface's port is the TLS port: unbound speaks TLS on it (and TLS only).
    lines[1:1] = [f"  tls-port: {port}", f'  tls-service-key: "{key}"', f'  tls-service-pem: "{cert}"']
    dot_conf = tmp / "unbound-dot.conf"
    dot_conf.write_text("\n".join(lines) + "\n")
    return [argv[0], "-d", "-c", str(dot_conf)]


def run_dnsperf_dot(port: int, queries: Path, clients: int, per_conn: int, duration: float) -> Result:
    argv = [
        "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-m", "dot", "-d", str(queries),
        "-l", str(duration), "-c", str(clients), "-O", f"num-queries-per-conn={per_conn}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else float("nan")

    return Result(
        "", "", "dnsperf", number(r"Queries per second:\s+([\d.]+)"), int(number(r"Queries completed:\s+(\d+)")),
        int(number(r"Queries lost:\s+(\d+)")), number(r"Average Latency \(s\):\s+([\d.]+)") * 1000, " ".join(argv),
    )  # fmt: skip


def dot_main(args: argparse.Namespace) -> None:
    """The DoT scenarios: dnsperf -m dot against trionet's --dot-port and unbound's tls-port, interleaved."""
    if not shutil.which("dnsperf"):
        sys.exit("the DoT scenarios need dnsperf (Debian: apt-get install dnsperf)")
    scenarios = ["dot-course", "dot-open"] if args.scenario == "dot" else [args.scenario]
    servers = [s for s in args.servers.split(",") if s in DOT_SERVERS and available(s)]
    factories = {"trionet": trionet_dot_server, "unbound": unbound_dot_server}
    envs: dict[str, dict[str, str] | None] = {server: None for server in servers}
    if "trionet" in envs:
        envs["trionet"] = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, wherever the tool runs from
    if args.base_checkout:
        # Another version of trionet (a `git archive` of an older commit, say),
        # measured in the same interleaved run: before and after, same noise.
        servers.insert(1, "trionet-base")
        factories["trionet-base"] = trionet_dot_server
        envs["trionet-base"] = {**os.environ, "PYTHONPATH": str(Path(args.base_checkout).resolve())}
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"# generator: dnsperf -m dot; servers: {', '.join(servers)}")
    results: list[Result] = []
    paired: dict[tuple[str, str], tuple[float, float, float] | None] = {}
    # The server's CPU time per answered query (its own process, from /proc):
    # far less sensitive than queries/s to what else runs on the machine.
    cpu_per_query: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    processes: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory(prefix="bench-names-dot-") as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        hosts, queries, names = write_inputs(tmp, args.names)
        cert, key, ca_file = write_certificate(tmp)
        for scenario in scenarios:
            limit, quota, clients, per_conn = DOT_SCENARIOS[scenario]
            ports: dict[str, int] = {}
            argvs: dict[str, list[str]] = {}
            with contextlib.ExitStack() as servers_running:
                for server in servers:
                    port = free_port()
                    argv = factories[server](hosts, port, limit, quota, tmp, cert, key)
                    processes[server] = servers_running.enter_context(
                        running_dot(argv, port, names[0], ca_file, envs[server])
                    )
                    ports[server], argvs[server] = port, argv
                runs: dict[str, list[Result]] = {server: [] for server in servers}
                for _ in range(args.repeat):
                    for server in servers:  # interleaved, as the TCP scenarios
                        before = cpu_seconds(processes[server].pid)
                        result = run_dnsperf_dot(ports[server], queries, clients, per_conn, args.duration)
                        used = cpu_seconds(processes[server].pid) - before
                        cpu_per_query[(scenario, server)].append(used / max(result.answered, 1) * 1e6)
                        runs[server].append(result)
                        print(f"# {scenario:<10} {server:<8} {result.qps:10.0f} q/s  lost {result.lost}", file=sys.stderr)
            for server in servers:
                if "unbound" in runs:  # rounds are interleaved: compare each round with unbound's own
                    ratios = sorted(r.qps / b.qps for r, b in zip(runs[server], runs["unbound"]) if b.qps)
                    paired[(scenario, server)] = (ratios[len(ratios) // 2], ratios[0], ratios[-1]) if ratios else None
                ordered = sorted(runs[server], key=lambda r: r.qps)
                median = ordered[len(ordered) // 2]
                median.server, median.scenario = server, scenario
                median.spread = (ordered[0].qps, ordered[-1].qps)
                median.command = f"server: {' '.join(argvs[server])}\nload: {median.command}"
                results.append(median)
    print()
    print(f"Median of {args.repeat} run(s) of {args.duration:g}s each, servers interleaved.")
    print()
    print("The per-round ratio divides each round's figure by unbound's in the same round (median, min - max).")
    print()
    print("| scenario | server | queries/s (median) | min - max | vs unbound | per-round ratio | avg latency | lost "
          "| server CPU µs/query (median, min - max) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scenario in scenarios:
        base = next((r.qps for r in results if r.scenario == scenario and r.server == "unbound"), None)
        for r in (r for r in results if r.scenario == scenario):
            ratio = f"{r.qps / base:.2f}x" if base else "-"
            rounds = paired.get((scenario, r.server))
            per_round = f"{rounds[0]:.2f}x ({rounds[1]:.2f} - {rounds[2]:.2f})" if rounds else "-"
            low, high = r.spread
            cpu = sorted(cpu_per_query[(scenario, r.server)])
            print(
                f"| {scenario} | {r.server} | {r.qps:,.0f} | {low:,.0f} - {high:,.0f} | {ratio} | {per_round} "
                f"| {r.avg_latency_ms:.2f} ms | {r.lost} | {cpu[len(cpu) // 2]:.0f} ({cpu[0]:.0f} - {cpu[-1]:.0f}) |"
            )
    print()
    for r in results:
        print(f"<!-- {r.scenario} / {r.server}\n{r.command}\n-->")



def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux /proc), in seconds.

    With ``children``, that of the children it has waited for too (a
    dnsmasq's TCP children, once their connection is over).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
