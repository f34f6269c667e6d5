"""The journal's file (I/O only): read it at start, append a record and fsync it before acting."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from trionet.ring.journal import Journal, JournalError

__all__ = ["JournalFile", "Resumed", "delivery_lines", "journal_path", "open_deliveries", "resume"]


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


def open_deliveries(path: str | Path) -> IO[str]:
    """Open the deliveries file for appending, so that a restarted node never loses earlier records.

    A last line cut short by a crash is ended first, so the new records start
    on a line of their own.
    """
    fh = open(path, "a", encoding="utf-8")
    if fh.tell() > 0:
        with open(path, "rb") as raw:
            raw.seek(-1, 2)
            if raw.read(1) != b"\n":
                fh.write("\n")
    return fh


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


@dataclass
class Resumed:
    """What a node starts with, after its journal has been read (:func:`resume`).

    Attributes:
        journal: the open journal, to pass to the node (close it after the run).
        messages: the node's messages less those whose return the journal saw.
        to_send: how many of them there are.
        notes: lines for the operator: what the journal says was done before.
    """

    journal: JournalFile
    messages: Iterator[tuple[int, int, str]]
    to_send: int
    notes: list[str] = field(default_factory=list)


def resume(
    node_id: int, deliveries: str | Path, messages: Iterable[tuple[int, int, str]], total: int
) -> Resumed:
    """Open the journal beside ``deliveries`` and take out of ``messages`` what an earlier run finished.

    Args:
        node_id: the node, for the notes.
        deliveries: the node's deliveries file; its journal is ``DELIVERIES.journal``.
        messages: ``(msg_id, destination, text)``, the whole message file, numbered.
        total: how many messages that is.

    Raises:
        JournalError: the journal cannot be opened or holds a line that is not
            a record, or the deliveries file cannot be read (the message says which).
    """
    path = journal_path(deliveries)
    try:
        journal = JournalFile(path)
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc.strerror}") from None
    try:
        lines = delivery_lines(deliveries)
    except OSError as exc:
        journal.close()
        raise JournalError(f"{deliveries}: cannot read the deliveries file: {exc.strerror}") from None
    notes = [
        f"node {node_id}: journal {path}: message {origin}-{msg_id} is recorded as delivered but has "
        f"no line in {deliveries} (the node died in between): it will be delivered when it comes again"
        for origin, msg_id in sorted(journal.journal.keep_delivered(lines))
    ]
    done = journal.journal
    if done.returned or done.delivered:
        notes.append(
            f"node {node_id}: journal {path}: {len(done.returned)} message(s) already sent "
            f"and returned (skipped), {len(done.delivered)} already delivered here"
        )
    # Returned ids are line numbers of this node's own file, so all of them count.
    return Resumed(journal, done.unsent(messages), max(total - len(done.returned), 0), notes)
