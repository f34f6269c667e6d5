"""Real ``trionet ring join`` processes on loopback: random start order, link cuts by a proxy, stop on demand."""

from __future__ import annotations

import random
import re
import signal

import pytest
import trio
from click.testing import CliRunner

from trionet.ring.cli import ring
from trionet.ring.demo import free_ports

from .conftest import RingProcess, read_deliveries, write_ring

pytestmark = pytest.mark.slow


class CuttingProxy:
    """A TCP relay in front of one node; :meth:`cut` drops every connection through it (both ways)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self.cuts = 0
        self.bytes = 0
        self._scopes: set[trio.CancelScope] = set()
        self._moved = trio.Event()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        self.connections += 1
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream)
                    nursery.start_soon(self._pump, upstream, client)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._scopes.discard(scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
            self.bytes += len(data)
            self._moved.set()
            self._moved = trio.Event()
        raise trio.BrokenResourceError("closed")

    async def wait_bytes(self, total: int) -> None:
        while self.bytes < total:
            await self._moved.wait()

    def cut(self) -> None:
        self.cuts += 1
        for scope in list(self._scopes):
            scope.cancel()


def make_messages(tmp_path, ids, per_node, seed):
    rng = random.Random(seed)
    paths = {}
    for i in ids:
        path = tmp_path / f"messages-{i}.txt"
        path.write_text("".join(f"{rng.choice(ids)} msg {k} from {i}: {'x' * rng.randrange(40)}\n" for k in range(per_node)))
        paths[i] = path
    return paths


def join_argv(ring_cmd, config, i, tmp_path, messages=None, *extra):
    argv = [*ring_cmd, "join", "--config", str(config), "--id", str(i)]
    argv += ["--deliveries", str(tmp_path / f"deliveries-{i}.jsonl"), "--connect-timeout", "30"]
    if messages is not None:
        argv += ["--messages", str(messages[i])]
    return argv + list(extra)


def ring_totals(stdout: str) -> tuple[int, int, int, str]:
    match = re.search(r"ring finalized \((.*?)\): \d+ node\(s\), (\d+) message\(s\) sent, (\d+) delivered, (\d+) never sent", stdout)
    assert match, stdout
    how, sent, delivered, unsent = match.groups()
    return int(sent), int(delivered), int(unsent), how


async def test_five_processes_in_random_order_survive_link_cuts(tmp_path, ring_cmd):
    ids = [0, 1, 2, 3, 4]
    per_node = 150
    ports = free_ports(6)
    rng = random.Random()
    async with trio.open_nursery() as nursery:
        # Node 3's address in the ring file is the proxy; node 3 listens behind it.
        proxy = CuttingProxy(ports[5])
        proxy_port = await nursery.start(proxy.serve)
        addresses = [(i, "127.0.0.1", proxy_port if i == 3 else ports[i]) for i in ids]
        config = write_ring(tmp_path / "ring.toml", addresses)
        messages = make_messages(tmp_path, ids, per_node, seed=rng.random())
        procs = {}
        with trio.fail_after(90):
            for i in rng.sample(ids, len(ids)):
                extra = ["--listen", f"127.0.0.1:{ports[5]}"] if i == 3 else []
                procs[i] = await RingProcess.start(nursery, join_argv(ring_cmd, config, i, tmp_path, messages, *extra))
                await trio.sleep(rng.uniform(0, 0.3))  # staggered starts on purpose, not to wait for readiness
            for k in range(3):
                await proxy.wait_bytes(8_000 * (k + 1))  # the ring moves about 70 kB through it
                proxy.cut()
            codes = {i: await p.wait() for i, p in procs.items()}
        nursery.cancel_scope.cancel()
    for i, p in procs.items():
        assert codes[i] == 0, p.output
    assert proxy.cuts == 3 and proxy.connections >= 4, (proxy.cuts, proxy.connections)
    total = per_node * len(ids)
    sent, delivered, unsent, how = ring_totals(procs[0].stdout.decode())
    assert (sent, delivered, unsent, how) == (total, total, 0, "the ring was quiescent")
    seen = set()
    for i in ids:
        for record in read_deliveries(tmp_path / f"deliveries-{i}.jsonl"):
            assert record["destination"] == i and record["direction"] in ("cw", "ccw")
            assert record["id"] not in seen, f"{record['id']} delivered twice"
            seen.add(record["id"])
    assert len(seen) == total
    # Each message was sent once, in file order per origin.
    for i in ids:
        lines = messages[i].read_text().splitlines()
        texts = {int(r["id"].split("-")[1]): r["text"] for j in ids for r in read_deliveries(tmp_path / f"deliveries-{j}.jsonl") if r["origin"] == i}
        assert [texts[n] for n in sorted(texts)] == [line.split(" ", 1)[1].strip() for line in lines]


@pytest.mark.parametrize("how", ["stop-command", "sigint-node-0", "sigterm-node-2"])
async def test_stop_on_demand_finalizes_gracefully(tmp_path, ring_cmd, how):
    ids = [0, 1, 2]
    per_node = 3000
    ports = free_ports(3)
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    messages = make_messages(tmp_path, ids, per_node, seed=how)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            procs = {i: await RingProcess.start(nursery, join_argv(ring_cmd, config, i, tmp_path, messages)) for i in ids}
            await procs[0].wait_for_stderr("injecting the cw and ccw tokens")
            if how == "stop-command":
                result = await trio.run_process([*ring_cmd, "stop", "--config", str(config)], capture_stdout=True, capture_stderr=True, check=False)
                assert result.returncode == 0, result.stderr
                assert b"is finalizing the ring" in result.stdout
            elif how == "sigint-node-0":
                procs[0].process.send_signal(signal.SIGINT)
            else:
                procs[2].process.send_signal(signal.SIGTERM)
            codes = {i: await p.wait() for i, p in procs.items()}
        nursery.cancel_scope.cancel()
    for i, p in procs.items():
        assert codes[i] == 0, p.output
    sent, delivered, unsent, reason = ring_totals(procs[0].stdout.decode())
    assert reason == "on request"
    assert sent == delivered and sent + unsent == per_node * len(ids)
    assert unsent > 0  # it really stopped early
    records = [r for i in ids for r in read_deliveries(tmp_path / f"deliveries-{i}.jsonl")]
    assert len(records) == len({r["id"] for r in records}) == delivered
    for i, p in procs.items():
        assert re.search(rf"node {i}: sent \d+, delivered to it \d+, forwarded \d+, never sent \d+", p.stdout.decode())


async def test_a_node_whose_neighbours_never_appear_exits_nonzero(tmp_path, ring_cmd):
    ports = free_ports(3)
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in range(3)])
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            proc = await RingProcess.start(nursery, [*ring_cmd, "join", "--config", str(config), "--id", "1", "--connect-timeout", "1"])
            code = await proc.wait()
    assert code == 1, proc.output
    assert re.search(r"Error: node 1: no link with node [02] at 127\.0\.0\.1:\d+ for 1s", proc.stderr.decode()), proc.output


def test_bad_files_are_reported_before_joining(tmp_path):
    config = write_ring(tmp_path / "ring.toml", [(0, "127.0.0.1", 1), (5, "127.0.0.1", 2)])
    messages = tmp_path / "m.txt"
    messages.write_text("5 fine\n\n7 to nowhere\n")
    runner = CliRunner()
    result = runner.invoke(ring, ["join", "--config", str(config), "--id", "0", "--messages", str(messages)])
    assert result.exit_code == 1
    assert f"Error: {messages}:3: destination 7 is not in the ring (ids: 0, 5)" in result.output
    result = runner.invoke(ring, ["join", "--config", str(config), "--id", "3"])
    assert result.exit_code == 1 and "node 3 is not in the ring" in result.output
    bad = write_ring(tmp_path / "bad.toml", [(1, "127.0.0.1", 1)])
    result = runner.invoke(ring, ["join", "--config", str(bad), "--id", "1"])
    assert result.exit_code == 1 and "there is no node 0" in result.output


def test_stop_without_node0_running_fails_clearly(tmp_path):
    port = free_ports(1)[0]
    config = write_ring(tmp_path / "ring.toml", [(0, "127.0.0.1", port)])
    result = CliRunner().invoke(ring, ["stop", "--config", str(config), "--timeout", "2"])
    assert result.exit_code == 1 and f"cannot reach node 0 at 127.0.0.1:{port}" in result.output


@pytest.mark.parametrize("size", [1, 2])
async def test_rings_of_one_and_two_processes(tmp_path, ring_cmd, size):
    ports = free_ports(size)
    ids = list(range(size))
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    messages = make_messages(tmp_path, ids, 5, seed=size)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            procs = {i: await RingProcess.start(nursery, join_argv(ring_cmd, config, i, tmp_path, messages)) for i in ids}
            codes = {i: await p.wait() for i, p in procs.items()}
    for i, p in procs.items():
        assert codes[i] == 0, p.output
    assert ring_totals(procs[0].stdout.decode()) == (5 * size, 5 * size, 0, "the ring was quiescent")
    records = [r for i in ids for r in read_deliveries(tmp_path / f"deliveries-{i}.jsonl")]
    assert sorted(r["id"] for r in records) == sorted(f"{i}-{n}" for i in ids for n in range(1, 6))


async def test_a_node_started_again_appends_to_its_deliveries_file(tmp_path, ring_cmd):
    # Issue 9: a restarted node truncated its deliveries file (13,792 records
    # fell to 11,289). Records of earlier runs stay; a last line cut short by
    # a crash is ended before the new records.
    port = free_ports(1)[0]
    config = write_ring(tmp_path / "ring.toml", [(0, "127.0.0.1", port)])
    messages = make_messages(tmp_path, [0], 4, seed=9)
    deliveries = tmp_path / "deliveries-0.jsonl"
    deliveries.write_text('{"id": "from-an-earlier-run"}')  # no final newline
    for run in (1, 2):
        # Without its journal the node forgets what it did: this test is
        # about the file being appended to (test_journal.py: about the journal).
        (tmp_path / "deliveries-0.jsonl.journal").unlink(missing_ok=True)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                proc = await RingProcess.start(nursery, join_argv(ring_cmd, config, 0, tmp_path, messages))
                assert await proc.wait() == 0, proc.output
    ids = [r["id"] for r in read_deliveries(deliveries)]
    assert ids[0] == "from-an-earlier-run"
    assert sorted(ids[1:5]) == sorted(ids[5:]) == [f"0-{n}" for n in range(1, 5)]  # one run after the other
