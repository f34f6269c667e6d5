"""Each node on its own host: a ring of ``trionet ring join`` processes, one Linux network namespace each.

The test builds its own little network and removes it afterwards: a
namespace holding a bridge, and one namespace per node joined to the bridge
by a veth pair, with an address in 10.213.X.0/24 that exists only inside that
namespace. Nothing is configured in the test runner's own namespace.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
import trio

from .conftest import RingProcess, read_deliveries, write_ring

pytestmark = pytest.mark.slow

NODES = 5


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"trnprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"'ip netns add' failed: {result.stderr.strip() or result.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def namespaces(require_capability):
    """Create the bridge namespace and one namespace per node; yield ``[(ns, address)]``; delete them all."""
    reason = _netns_unavailable()
    require_capability(reason and f"network namespaces unavailable: {reason}")
    tag = f"trn{os.getpid() % 100000}"
    subnet = random.randrange(1, 250)
    hub = f"{tag}hub"
    created: list[str] = []
    try:
        _ip("netns", "add", hub)
        created.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        nodes = []
        for i in range(NODES):
            ns = f"{tag}n{i}"
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", hub, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"v{i}", "up")
            address = f"10.213.{subnet}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            nodes.append((ns, address))
        yield nodes
    finally:
        for ns in reversed(created):  # deleting a namespace deletes its end of each veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in leftover for ns in created), leftover


def _join_in(namespaces, i, ring_cmd, config, tmp_path, secret, *extra):
    argv = ["ip", "netns", "exec", namespaces[i][0], *ring_cmd, "join", "--config", str(config), "--id", str(i)]
    argv += ["--messages", str(tmp_path / f"m{i}.txt"), "--deliveries", str(tmp_path / f"d{i}.jsonl")]
    return argv + ["--connect-timeout", "30", "--secret-file", str(secret), *extra]


def _secret(tmp_path):
    secret = tmp_path / "ring.secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    return secret


async def test_ring_across_network_namespaces(tmp_path, ring_cmd, namespaces):
    # Every node listens on the same port: they are on different hosts.
    config = write_ring(tmp_path / "ring.toml", [(i, addr, 7500) for i, (_, addr) in enumerate(namespaces)])
    per_node = 20
    for i in range(NODES):
        (tmp_path / f"m{i}.txt").write_text("".join(f"{(i + k) % NODES} from {i} #{k}\n" for k in range(per_node)))
    # Non-loopback addresses: a node refuses to listen there without the
    # ring's secret; passing one also proves the handshake across hosts.
    secret = _secret(tmp_path)
    order = random.sample(range(NODES), NODES)
    procs = {}
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(90):
                for i in order:
                    procs[i] = await RingProcess.start(nursery, _join_in(namespaces, i, ring_cmd, config, tmp_path, secret))
                codes = {i: await p.wait() for i, p in procs.items()}
        finally:
            for p in procs.values():
                p.kill()
            nursery.cancel_scope.cancel()
    for i, p in procs.items():
        assert codes[i] == 0, p.output
    # The neighbours really were reached at their namespace addresses.
    for i, p in procs.items():
        nxt = namespaces[(i + 1) % NODES][1]
        assert f"connected to node {(i + 1) % NODES} at {nxt}:7500" in p.stderr.decode(), p.output
    records = [r for i in range(NODES) for r in read_deliveries(tmp_path / f"d{i}.jsonl")]
    assert len(records) == len({r["id"] for r in records}) == NODES * per_node
    assert f"{NODES} node(s), {NODES * per_node} message(s) sent, {NODES * per_node} delivered, 0 never sent" in procs[0].stdout.decode()


async def test_a_link_taken_down_and_back_within_the_failure_timeout_loses_nothing(tmp_path, ring_cmd, namespaces):
    """Node 2's host loses its link for a moment shorter than F: TCP carries on, nobody is bypassed, nothing is lost."""
    config = write_ring(tmp_path / "ring.toml", [(i, addr, 7500) for i, (_, addr) in enumerate(namespaces)])
    per_node = 60
    for i in range(NODES):
        (tmp_path / f"m{i}.txt").write_text("".join(f"{(i + k) % NODES} from {i} #{k}\n" for k in range(per_node)))
    secret = _secret(tmp_path)
    extra = ["--failure-timeout", "3", "--undeliverable-after", "30"]
    ns2 = namespaces[2][0]
    procs = {}
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(90):
                for i in range(NODES):
                    procs[i] = await RingProcess.start(nursery, _join_in(namespaces, i, ring_cmd, config, tmp_path, secret, *extra))
                await procs[0].wait_for_stderr("injecting the cw and ccw tokens")
                while not all((tmp_path / f"d{i}.jsonl").exists() and (tmp_path / f"d{i}.jsonl").stat().st_size for i in range(NODES)):
                    await trio.sleep(0.05)  # polling files the nodes write: there is no event to wait on
                _ip("-n", ns2, "link", "set", "eth0", "down")
                assert all(p.process.returncode is None for p in procs.values())  # the cut hits a running ring
                delivered_before = sum(len(read_deliveries(tmp_path / f"d{i}.jsonl")) for i in range(NODES))
                await trio.sleep(0.5)  # the outage itself (a sixth of F), not a wait for a server
                _ip("-n", ns2, "link", "set", "eth0", "up")
                codes = {i: await p.wait() for i, p in procs.items()}
        finally:
            for p in procs.values():
                p.kill()
            nursery.cancel_scope.cancel()
    for i, p in procs.items():
        assert codes[i] == 0, p.output
        assert "bypassing" not in p.stderr.decode(), p.output  # a live node is not closed out for a short cut
    records = [r for i in range(NODES) for r in read_deliveries(tmp_path / f"d{i}.jsonl")]
    assert delivered_before < len(records)  # messages were still on their way when the link went down
    assert len(records) == len({r["id"] for r in records}) == NODES * per_node
    assert f"{NODES * per_node} message(s) sent, {NODES * per_node} delivered, 0 never sent" in procs[0].stdout.decode()
