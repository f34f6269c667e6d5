"""The exactly-once journal of a ring node (sans-IO): what to skip after a restart, what to record.

A node started again with the same ``--messages`` and ``--deliveries``
files must not send again a message whose return it already saw, nor
deliver again a message it already delivered. Messages have stable ids
for that: ``(origin, msg_id)``, where ``msg_id`` is the line number of the
message in its origin's messages file (:func:`trionet.ring.config.iter_numbered_messages`).

The journal is a text file of records, one per line, each written (and
fsync'd, by the shell: :class:`trionet.ring.journal_file.JournalFile`)
before the node acts on it:

- ``R MSG_ID``: this node's message on line ``MSG_ID`` came back; never send it again;
- ``D ORIGIN MSG_ID``: the message ``ORIGIN-MSG_ID`` was delivered here; never again;
- ``E EPOCH``: the highest ring epoch this node has proposed or adopted,
  written before its probe goes on; a restarted node proposes above it, so
  an epoch names one view even after every node was down at once (the
  restarted ring starts again from the journals, not from epoch 1).

``R`` and ``D`` are written only where the node already does work for the message
(its return at the origin, its delivery at the destination), never per hop.
A line cut short by a crash (no final newline) is ignored: its record was
not complete, so the act it announced had not happened yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["Journal", "JournalError"]


class JournalError(Exception):
    """A journal line that is complete but is not a record (the file is not a journal)."""


@dataclass
class Journal:
    """What a node has done for good: its returned messages and the messages delivered to it.

    Attributes:
        returned: ids (line numbers) of this node's messages that came back.
        delivered: ``(origin, msg_id)`` of the messages delivered to this node.
        epoch: the highest epoch recorded (``E`` records), 0 if none.
    """

    returned: set[int] = field(default_factory=set)
    delivered: set[tuple[int, int]] = field(default_factory=set)
    epoch: int = 0

    @classmethod
    def parse(cls, data: str, source: str = "<journal>") -> Journal:
        """Read a journal's text.

        Raises:
            JournalError: ``source:line: reason`` for a complete line that is
                not a record. An incomplete last line is skipped.
        """
        journal = cls()
        lines = data.split("\n")
        for lineno, line in enumerate(lines[:-1], 1):  # the last piece has no newline: incomplete or empty
            fields = line.split()
            try:
                if len(fields) == 2 and fields[0] == "R":
                    journal.returned.add(int(fields[1]))
                    continue
                if len(fields) == 3 and fields[0] == "D":
                    journal.delivered.add((int(fields[1]), int(fields[2])))
                    continue
                if len(fields) == 2 and fields[0] == "E":
                    journal.epoch = max(journal.epoch, int(fields[1]))
                    continue
            except ValueError:
                pass
            if fields:
                raise JournalError(f"{source}:{lineno}: not a journal record: {line[:40]!r}")
        return journal

    def keep_delivered(self, lines: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """Forget the ``D`` records whose deliveries line is missing; return them.

        ``lines`` are the ``(origin, msg_id)`` of the deliveries file's lines.
        A ``D`` record is written before its line, so a record without a line
        means the node died between the two: within the record's ``fsync``
        (the record was already in the kernel's page cache and outlives a
        ``kill -9``), or before the line reached the file. The message was not
        delivered; forgetting the record lets it be delivered once when it
        comes again (a line without a record cannot happen).
        """
        missing = self.delivered - set(lines)
        self.delivered -= missing
        return missing

    def unsent(self, messages: Iterable[tuple[int, int, str]]) -> Iterator[tuple[int, int, str]]:
        """The ``(msg_id, destination, text)`` messages still to send: those whose return was not seen."""
        returned = self.returned
        for message in messages:
            if message[0] not in returned:
                yield message

    def was_delivered(self, origin: int, msg_id: int) -> bool:
        """True for a message already delivered here (:class:`~trionet.ring.core.NodeCore` skips it)."""
        return (origin, msg_id) in self.delivered

    def on_return(self, msg_id: int) -> str:
        """Record that this node's message ``msg_id`` came back; return the line to append."""
        self.returned.add(msg_id)
        return f"R {msg_id}\n"

    def on_delivery(self, origin: int, msg_id: int) -> str | None:
        """Record a delivery; return the line to append, or None if it was delivered already (skip it)."""
        key = (origin, msg_id)
        if key in self.delivered:
            return None
        self.delivered.add(key)
        return f"D {origin} {msg_id}\n"

    def on_epoch(self, epoch: int) -> str | None:
        """Record ``epoch`` if it is above every one recorded; return the line to append, or None."""
        if epoch <= self.epoch:
            return None
        self.epoch = epoch
        return f"E {epoch}\n"
