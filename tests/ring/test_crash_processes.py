"""Real ``trionet ring join`` processes killed with SIGKILL: the ring closes around them.

Node 0 killed and restarted with the same arguments rejoins and finalizes.
(Every other restart is in the simulation: tests/ring/test_sim.py.)
"""

from __future__ import annotations

import json
import re

import pytest
import trio

from trionet.ring.demo import free_ports

from .conftest import RingProcess, read_deliveries, write_ring
from .test_processes import join_argv, make_messages, ring_totals

pytestmark = pytest.mark.slow

FAST = ["--failure-timeout", "0.5", "--undeliverable-after", "3"]


def _argv(ring_cmd, config, i, tmp_path, messages):
    return join_argv(ring_cmd, config, i, tmp_path, messages, *FAST, "--undelivered", str(tmp_path / f"undelivered-{i}.jsonl"))


async def _traffic_everywhere(tmp_path, ids):
    """Return once every node has delivered something: the ring is running (messages went round)."""
    while not all((tmp_path / f"deliveries-{i}.jsonl").exists() and (tmp_path / f"deliveries-{i}.jsonl").stat().st_size for i in ids):
        await trio.sleep(0.05)  # polling files the nodes write: there is no event to wait on


def _undelivered(tmp_path, i):
    path = tmp_path / f"undelivered-{i}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_once(tmp_path, ids, messages, *, dead=()):
    """Nothing delivered twice; every message of a live node delivered, or given up because its destination died."""
    delivered = {}
    for i in ids:
        for record in read_deliveries(tmp_path / f"deliveries-{i}.jsonl"):
            assert record["destination"] == i
            assert record["id"] not in delivered, f"{record['id']} delivered twice"
            delivered[record["id"]] = record
    given_up = {r["id"]: r for i in ids for r in _undelivered(tmp_path, i)}
    for r in given_up.values():
        assert r["destination"] in dead and set(r) >= {"id", "origin", "destination", "text", "reason"}
    for i in ids:
        if i in dead:
            continue
        for n, line in enumerate(messages[i].read_text().splitlines(), 1):
            uid = f"{i}-{n}"
            assert uid in delivered or uid in given_up, f"{uid} ({line[:20]}) neither delivered nor given up"
    return delivered, given_up


@pytest.mark.parametrize("victims", [[2], [2, 3]], ids=["middle node", "two neighbours"])
async def test_kill_9_of_middle_nodes_closes_the_ring_around_them(tmp_path, ring_cmd, victims):
    ids = [0, 1, 2, 3, 4]
    ports = free_ports(len(ids))
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    messages = make_messages(tmp_path, ids, 60, seed=len(victims))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(90):
            procs = {i: await RingProcess.start(nursery, _argv(ring_cmd, config, i, tmp_path, messages)) for i in ids}
            await procs[0].wait_for_stderr("injecting the cw and ccw tokens")
            await _traffic_everywhere(tmp_path, ids)
            for victim in victims:
                procs[victim].kill()  # SIGKILL: no goodbye, its sockets just close
            live = [i for i in ids if i not in victims]
            codes = {i: await procs[i].wait() for i in live}
            for victim in victims:
                await procs[victim].wait()
        nursery.cancel_scope.cancel()
    for i in live:
        assert codes[i] == 0, procs[i].output
    assert "bypassing node 2" in procs[1].stderr.decode(), procs[1].output
    _check_once(tmp_path, ids, messages, dead=victims)
    _, _, unsent, how = ring_totals(procs[0].stdout.decode())
    assert how == "the ring was quiescent" and unsent == 0



def _delivered_count(tmp_path, ids):
    return sum(len(read_deliveries(tmp_path / f"deliveries-{i}.jsonl")) for i in ids)


@pytest.mark.parametrize("when", ["at once", "after the bypass"])
async def test_kill_9_of_node_0_then_restart_finalizes_once_it_is_back(tmp_path, ring_cmd, when):
    """Node 0 dies: the others go on without it; restarted with the same arguments, it rejoins and finalizes."""
    ids = [0, 1, 2, 3, 4]
    ports = free_ports(len(ids))
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    messages = make_messages(tmp_path, ids, 60, seed=5)
    # Messages to node 0 wait for it (the default 30 s, not FAST's 3: a loaded machine may restart it slowly).
    argv = {i: _argv(ring_cmd, config, i, tmp_path, messages) + ["--undeliverable-after", "30"] for i in ids}
    async with trio.open_nursery() as nursery:
        with trio.fail_after(90):
            procs = {i: await RingProcess.start(nursery, argv[i]) for i in ids}
            await procs[0].wait_for_stderr("injecting the cw and ccw tokens")
            await _traffic_everywhere(tmp_path, ids)
            first = procs[0]
            first.kill()
            await first.wait()
            if when == "after the bypass":
                await procs[4].wait_for_stderr("bypassing node 0")
                before = _delivered_count(tmp_path, ids[1:])
                while _delivered_count(tmp_path, ids[1:]) == before:  # the ring without node 0 delivers
                    await trio.sleep(0.05)  # polling files the nodes write: there is no event to wait on
            procs[0] = await RingProcess.start(nursery, argv[0])
            codes = {i: await procs[i].wait() for i in ids}
        nursery.cancel_scope.cancel()
    for i in ids:
        assert codes[i] == 0, procs[i].output
    assert "ring finalized" not in first.stdout.decode()
    _check_once(tmp_path, ids, messages)  # nothing twice; every message delivered (node 0 came back)
    sent, delivered, unsent, how = ring_totals(procs[0].stdout.decode())
    assert how == "the ring was quiescent" and unsent == 0, procs[0].output
    # Node 0's counters carried on from its journal: each message counted once, whichever run sent it.
    assert sent == delivered == 5 * 60, procs[0].output


async def test_a_restarted_node_with_a_wrong_secret_is_closed_out_and_carries_no_frame(tmp_path, ring_cmd):
    """Node 2 is killed and a process with another secret takes its address: the ring closes around it."""
    ids = [0, 1, 2, 3, 4]
    ports = free_ports(len(ids))
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    messages = make_messages(tmp_path, ids, 60, seed=11)
    good, wrong = tmp_path / "secret", tmp_path / "wrong-secret"
    good.write_text("the ring's secret\n")
    wrong.write_text("another secret\n")
    good.chmod(0o600)
    wrong.chmod(0o600)
    argv = {i: _argv(ring_cmd, config, i, tmp_path, messages) + ["--secret-file", str(good)] for i in ids}
    intruder_argv = [*argv[2][: argv[2].index("--secret-file")], "--secret-file", str(wrong)]
    async with trio.open_nursery() as nursery:
        with trio.fail_after(90):
            procs = {i: await RingProcess.start(nursery, argv[i]) for i in ids}
            await procs[0].wait_for_stderr("injecting the cw and ccw tokens")
            await _traffic_everywhere(tmp_path, ids)
            procs[2].kill()
            await procs[2].wait()
            lines_of_2 = (tmp_path / "deliveries-2.jsonl").read_bytes()
            intruder = await RingProcess.start(nursery, intruder_argv)
            live = [0, 1, 3, 4]
            codes = {i: await procs[i].wait() for i in live}
            intruder.kill()
            await intruder.wait()
        nursery.cancel_scope.cancel()
    for i in live:
        assert codes[i] == 0, procs[i].output
    assert "bypassing node 2" in procs[1].stderr.decode(), procs[1].output
    assert "failed to prove it knows the ring's secret" in procs[1].stderr.decode() + intruder.stderr.decode()
    # The intruder never completed a handshake: no link, no epoch, no frame, no delivery.
    said = intruder.stderr.decode()
    assert "connected" not in said and "epoch" not in said and "injecting" not in said, intruder.output
    assert (tmp_path / "deliveries-2.jsonl").read_bytes() == lines_of_2
    _check_once(tmp_path, ids, messages, dead=[2])
    _, _, unsent, how = ring_totals(procs[0].stdout.decode())
    assert how == "the ring was quiescent" and unsent == 0


async def test_a_middle_node_restarted_with_its_journal_does_not_deliver_again(tmp_path, ring_cmd):
    """Node 2 is killed after delivering, restarted with the same arguments: what it delivered stays delivered once."""
    ids = [0, 1, 2, 3, 4]
    ports = free_ports(len(ids))
    config = write_ring(tmp_path / "ring.toml", [(i, "127.0.0.1", ports[i]) for i in ids])
    messages = make_messages(tmp_path, ids, 60, seed=13)
    argv = {i: _argv(ring_cmd, config, i, tmp_path, messages) + ["--undeliverable-after", "30"] for i in ids}
    deliveries_2 = tmp_path / "deliveries-2.jsonl"
    async with trio.open_nursery() as nursery:
        with trio.fail_after(90):
            procs = {i: await RingProcess.start(nursery, argv[i]) for i in ids}
            await procs[0].wait_for_stderr("injecting the cw and ccw tokens")
            await _traffic_everywhere(tmp_path, ids)
            first = procs[2]
            first.kill()
            await first.wait()
            before = deliveries_2.read_text()
            procs[2] = await RingProcess.start(nursery, argv[2])
            codes = {i: await procs[i].wait() for i in ids}
        nursery.cancel_scope.cancel()
    for i in ids:
        assert codes[i] == 0, procs[i].output
    kept = len(read_deliveries(deliveries_2)) - len(before.splitlines())
    # The journal it restarts with names exactly the deliveries of its first run (a record without its line is dropped).
    journal_says = re.search(r"(\d+) already delivered here", procs[2].stderr.decode())
    assert journal_says and int(journal_says[1]) == len({json.loads(line)["id"] for line in before.splitlines()}), procs[2].output
    assert kept >= 0
    assert deliveries_2.read_text().startswith(before)  # appended to, never rewritten
    _check_once(tmp_path, ids, messages)  # nothing twice; everything delivered
    # Its counters carry on from the journal: both runs' deliveries, each once.
    both_runs = len(read_deliveries(deliveries_2))
    assert procs[2].stdout.decode().startswith("node 2: sent 60,") and f"delivered to it {both_runs}," in procs[2].stdout.decode()
    sent, delivered, unsent, how = ring_totals(procs[0].stdout.decode())
    assert how == "the ring was quiescent" and unsent == 0
    assert sent == delivered == 5 * 60, procs[0].output

def test_join_help_names_the_crash_options():
    from click.testing import CliRunner

    from trionet.ring.cli import ring

    result = CliRunner().invoke(ring, ["join", "--help"])
    assert result.exit_code == 0
    for option in ("--failure-timeout", "--undeliverable-after", "--undelivered"):
        assert option in result.output
    text = " ".join(result.output.split())  # (click wraps the help text)
    assert "default: 3.0;" in text and "default: 30.0;" in text
