"""The SQL server's rules for one connection, without I/O or a clock of their own.

What the trio shell (:mod:`trionet.sql.server`) must decide, it asks here,
passing the time in:

- :func:`admission_bye`: whether a new connection is over ``max_connections``,
  and the ``bye busy`` it gets instead of ``hello``;
- :class:`IdlePolicy`: when a silent connection is closed, and with which bye
  (``idle``, or ``idle_transaction`` when it holds a transaction open);
- :func:`shutdown_interrupt_at`: when a request still running at shutdown is
  interrupted, so that its client gets the answer and the ``bye shutdown``
  before the grace period ends;
- :class:`RowCap`: how many rows to ask SQLite for, and where a result is cut
  by ``max_rows``;
- :class:`WorkClock`: the ``--query-timeout`` account, which counts only the
  seconds SQLite works for the request (not the time its client takes to
  read, nor the wait for a statement thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trionet.sql.protocol import encode_bye

__all__ = [
    "SHUTDOWN_BYE",
    "IdlePolicy",
    "RowCap",
    "WorkClock",
    "admission_bye",
    "over_connection_limit",
    "shutdown_interrupt_at",
]

SHUTDOWN_BYE = encode_bye("server shutting down", "shutdown")
"""The last frame of every connection the server closes at shutdown."""


def over_connection_limit(open_connections: int, max_connections: int) -> bool:
    """Whether a new connection is one too many (both fronts ask; each says so in its own protocol).

    Args:
        open_connections: connections open now, this new one included.
        max_connections: the server's ``--max-connections``.
    """
    return open_connections > max_connections


def admission_bye(open_connections: int, max_connections: int) -> bytes | None:
    """The NDJSON ``bye busy`` for a connection over the limit, or None to serve it (:func:`over_connection_limit`)."""
    if not over_connection_limit(open_connections, max_connections):
        return None
    return encode_bye(f"the server has {max_connections} connections, its limit; try again later", "busy")


def shutdown_interrupt_at(now: float, grace_deadline: float) -> float:
    """When to interrupt a request that is still running at shutdown.

    Shortly before the grace period ends (a second before, or half of what is
    left when that is less), so that the client still gets its answer
    (``interrupted``) and the ``bye``, not a bare close.
    """
    return grace_deadline - min(1.0, (grace_deadline - now) / 2)


@dataclass(frozen=True, slots=True)
class IdlePolicy:
    """When the server closes a connection that sends nothing.

    Args:
        idle_timeout: seconds a connection may wait between requests; 0 for ever.
        idle_transaction_timeout: the same while it holds a transaction open
            (and with it, on a read-write server, perhaps the write lock); 0 for ever.
    """

    idle_timeout: float = 300.0
    idle_transaction_timeout: float = 60.0

    def deadline(self, last_active: float, in_transaction: bool) -> tuple[float, str, str]:
        """When a connection quiet since ``last_active`` is closed: ``(time, bye code, reason)``.

        The time is ``math.inf`` when no limit applies.
        """
        if in_transaction and self.idle_transaction_timeout > 0:
            limit = self.idle_transaction_timeout
            if not (0 < self.idle_timeout < limit):
                return (
                    last_active + limit,
                    "idle_transaction",
                    f"a transaction was left open and idle for {limit:g}s; it was rolled back",
                )
        if self.idle_timeout > 0:
            return last_active + self.idle_timeout, "idle", f"no request for {self.idle_timeout:g}s"
        return math.inf, "idle", ""

    @property
    def recheck(self) -> float:
        """Seconds a watcher may sleep without looking: the shorter limit (a
        connection may open a transaction, or start and end a request, meanwhile)."""
        return min((t for t in (self.idle_timeout, self.idle_transaction_timeout) if t > 0), default=math.inf)

    def check(self, now: float, last_active: float, busy: bool, in_transaction: bool) -> tuple[float, bytes | None]:
        """Look at a connection now: ``(when to look again, the bye to close it with now, or None)``.

        A connection running a request (``busy``) is never idle.
        """
        wake = now + self.recheck
        if busy:
            return wake, None
        deadline, code, reason = self.deadline(last_active, in_transaction)
        if now >= deadline:
            return now, encode_bye(reason, code)
        return min(wake, deadline), None


class RowCap:
    """How many rows one request may get: the server's ``max_rows`` and the request's, the smaller.

    Args:
        server_max_rows: the server's cap; 0 for none.
        request_max_rows: the request's own ``max_rows``, or None.
        batch_rows: rows per batch.
    """

    __slots__ = ("batch_rows", "cap", "sent", "truncated")

    def __init__(self, server_max_rows: int, request_max_rows: int | None, batch_rows: int) -> None:
        # None is "no cap". A request's max_rows of 0 asks for no rows at all
        # (the columns only); it must not lift the server's cap.
        cap = server_max_rows or None
        if request_max_rows is not None and (cap is None or request_max_rows < cap):
            cap = request_max_rows
        self.cap: int | None = cap
        self.batch_rows = batch_rows
        self.sent = 0
        self.truncated = False

    def want(self) -> int:
        """Rows to ask SQLite for next: one past the cap, so that a cut result is known to be cut."""
        if self.cap is None:
            return self.batch_rows
        left = self.cap - self.sent + 1  # >= 1: take() never sends more than the cap
        return left if left < self.batch_rows else self.batch_rows

    def take(self, rows: list[tuple]) -> list[tuple]:
        """The part of ``rows`` that may be sent; sets :attr:`truncated` when the cap cut them."""
        if self.cap is not None and self.sent + len(rows) > self.cap:
            rows = rows[: self.cap - self.sent]
            self.truncated = True
        self.sent += len(rows)
        return rows


class WorkClock:
    """The ``--query-timeout`` account of one request: seconds SQLite may still work on it.

    Args:
        query_timeout: seconds in all; 0 for no limit.
    """

    __slots__ = ("left",)

    def __init__(self, query_timeout: float) -> None:
        self.left = query_timeout or math.inf

    def deadline(self, begun: float) -> float:
        """When a call into SQLite that begins at ``begun`` must be interrupted."""
        return begun + self.left

    def spend(self, seconds: float) -> None:
        """Count ``seconds`` that SQLite worked on the request."""
        self.left -= seconds
