"""``trionet ring demo`` and the ring's part of ``trionet demo``: real nodes on loopback, drawn with rich."""

from __future__ import annotations

import io

import pytest

from click.testing import CliRunner
from rich.console import Console

from trionet.ring.cli import ring
from trionet.ring.demo import run_demo, run_ring_demo


async def test_demo_ring_finalizes_and_shows_deliveries():
    out = io.StringIO()
    summaries = await run_ring_demo(Console(file=out, width=100), nodes=4, messages_per_node=3, pace=0.0, seed=7)
    assert sorted(summaries) == [0, 1, 2, 3]
    ring = summaries[0].ring
    assert (ring.nodes, ring.sent, ring.delivered, ring.unsent) == (4, 12, 12, 0)
    text = out.getvalue()
    assert "latest deliveries" in text and "node 0 finalized: 12 message(s) sent, 12 delivered" in text


async def test_trionet_demo_part_runs():
    out = io.StringIO()
    await run_demo(Console(file=out, width=100))
    assert "node 0 finalized: 15 message(s) sent, 15 delivered, 0 never sent, across 5" in out.getvalue()


def test_listen_option_is_checked(tmp_path):
    config = tmp_path / "ring.toml"
    config.write_text('[[node]]\nid = 0\nhost = "127.0.0.1"\nport = 7500\n')
    result = CliRunner().invoke(ring, ["join", "--config", str(config), "--id", "0", "--listen", "nowhere"])
    assert result.exit_code == 2 and "expected HOST:PORT, got 'nowhere'" in result.output


async def test_demo_kill_shows_the_crash_the_bypass_and_the_new_epoch_then_finalizes():
    out = io.StringIO()
    summaries = await run_ring_demo(
        Console(file=out, width=120), nodes=4, messages_per_node=3, pace=0.0, seed=7,
        kill=2, failure_timeout=0.5, undeliverable_after=1.5,
    )
    assert sorted(summaries) == [0, 1, 3]  # node 2 was killed: no summary
    ring = summaries[0].ring
    assert ring.nodes == 3 and ring.unsent == 0
    text = out.getvalue()
    assert "node 2 killed" in text and "✗ killed" in text
    assert "bypassing node 2" in text and "previous node is now node 1" in text
    assert "regenerates the cw token in epoch" in text and "regenerates the ccw token in epoch" in text
    assert "node 2 was killed; the ring closed around it and finished without it" in text
    assert "node 0 finalized" in text


@pytest.mark.parametrize("victim", [0, 2])
async def test_demo_kill_and_restart_rejoins_and_delivers_every_message_once(victim):
    """A killed node started again from its journal rejoins; node 0 so killed finalizes once it is back."""
    out = io.StringIO()
    summaries = await run_ring_demo(
        Console(file=out, width=120), nodes=4, messages_per_node=3, pace=0.0, seed=7,
        kill=victim, restart_after=0.3, failure_timeout=0.5, undeliverable_after=20,
    )
    assert sorted(summaries) == [0, 1, 2, 3]  # the restarted node finished with the others
    ring = summaries[0].ring
    # The restarted node's counters carry on from its journal: the tally counts every message once.
    assert (ring.nodes, ring.sent, ring.delivered, ring.unsent) == (4, 12, 12, 0)
    text = " ".join(out.getvalue().split())  # (rich wraps lines)
    assert f"node {victim} killed" in text and f"node {victim} restarted" in text
    assert f"node {victim} was killed and restarted after 0.3 s; it rejoined the ring" in text
    assert "0 message(s) given up as undeliverable, 0 delivered twice" in text


async def test_demo_kill_refuses_node_0_without_a_restart_and_strangers():
    for kill, nodes, why in ((0, 4, "needs --restart-after"), (4, 4, "from 0 to 3"), (1, 2, "at least 3 nodes")):
        with pytest.raises(ValueError, match=why):
            await run_ring_demo(Console(file=io.StringIO()), nodes=nodes, kill=kill)


def test_demo_kill_help_and_checks():
    result = CliRunner().invoke(ring, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--kill ID" in result.output and "--failure-timeout" in result.output and "new epoch" in result.output
    result = CliRunner().invoke(ring, ["demo", "--nodes", "3", "--kill", "3"])
    assert result.exit_code == 2 and "node 3 is not in a ring of 3" in result.output
    result = CliRunner().invoke(ring, ["demo", "--kill", "0"])
    assert result.exit_code == 2 and "killing it needs --restart-after" in result.output
    result = CliRunner().invoke(ring, ["demo", "--restart-after", "1"])
    assert result.exit_code == 2 and "give --kill ID too" in result.output
