"""What ``trionet ring status`` prints (pure): one entry per node from the nodes' answers, as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping

from trionet.ring.frames import StatusReply

__all__ = ["FIELDS", "render_json", "render_table", "status_entries"]

FIELDS = ("id", "alive", "epoch", "cw_token", "ccw_token", "sent", "delivered", "waiting", "undelivered")
"""The keys of every entry, in the table's column order (an unreachable node's entry adds ``error``)."""


def status_entries(answers: Mapping[int, StatusReply | str]) -> list[dict]:
    """One entry per node, in ``answers``' order (the ring's).

    Args:
        answers: by node id, its :class:`StatusReply`, or why it gave none.

    Returns:
        Dicts with :data:`FIELDS`: ``cw_token``/``ccw_token`` hold the node's
        id when it holds that token (node 0: also when parked), else ``"-"``.
        A node without an answer is ``alive: false``, its other fields
        ``"-"``, and ``error`` says why.
    """
    entries = []
    for node_id, answer in answers.items():
        if isinstance(answer, StatusReply):
            entries.append(
                {
                    "id": node_id,
                    "alive": True,
                    "epoch": answer.epoch,
                    "cw_token": node_id if answer.holds_cw else "-",
                    "ccw_token": node_id if answer.holds_ccw else "-",
                    "sent": answer.sent,
                    "delivered": answer.delivered,
                    "waiting": answer.waiting,
                    "undelivered": answer.undelivered,
                }
            )
        else:
            entry: dict = {key: "-" for key in FIELDS}
            entry.update(id=node_id, alive=False, error=answer)
            entries.append(entry)
    return entries


def render_json(entries: list[dict]) -> str:
    """The entries as a JSON list of objects."""
    return json.dumps(entries)


def render_table(entries: list[dict]) -> str:
    """The entries as an aligned text table, then one line per unreachable node saying why."""
    rows = [list(FIELDS)] + [[_cell(entry[key]) for key in FIELDS] for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(FIELDS))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [f"node {entry['id']}: {entry['error']}" for entry in entries if not entry["alive"]]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)
