"""The journal's file (I/O only): read it at start, append a record and fsync it before acting."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trionet.ring.journal import Journal

__all__ = ["JournalFile", "delivery_lines", "journal_path"]


def journal_path(deliveries: str | Path) -> Path:
    """Where the journal of a node with this deliveries file lives: ``DELIVERIES.journal``."""
    return Path(f"{deliveries}.journal")


def delivery_lines(deliveries: str | Path) -> set[tuple[int, int]]:
    """The ``(origin, msg_id)`` of the complete records of a deliveries file (none if it is missing).

    A line that is not a delivery record (one cut short by a crash) names
    no delivery.
    """
    found = set()
    try:
        text = Path(deliveries).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return found
    for line in text.splitlines():
        try:
            origin, _, msg_id = json.loads(line)["id"].partition("-")
            found.add((int(origin), int(msg_id)))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


class JournalFile:
    """A node's journal on disk: :attr:`journal` holds what it says, :meth:`append` adds to it durably.

    Args:
        path: the journal file; created if missing, appended to otherwise.

    Raises:
        OSError: the file cannot be read or opened for appending.
        trionet.ring.journal.JournalError: it holds a line that is not a record.

    Resource handling: the file stays open until :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        self.journal = Journal.parse(text, str(self.path))
        self._fh = open(self.path, "a", encoding="utf-8")
        if text and not text.endswith("\n"):
            # A record cut short by a crash ("R 1" of "R 12"): cut it off, so
            # that the next record's newline cannot complete it into a wrong one.
            self._fh.truncate(len(text[: text.rfind("\n") + 1].encode("utf-8")))

    def append(self, line: str) -> None:
        """Write ``line`` and fsync it: once this returns, the record survives a crash.

        A few milliseconds at most on a local disk, once per return or
        delivery (never per hop), so it runs on the caller's thread.
        """
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
