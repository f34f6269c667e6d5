"""``trionet ring demo`` and the ring's part of ``trionet demo``: real nodes on loopback, drawn with rich."""

from __future__ import annotations

import io

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
