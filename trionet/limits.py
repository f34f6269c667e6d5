"""Admission control shared by the services: a capacity limit with a bounded FIFO waiting room.

:class:`AdmissionLimit` lets at most ``limit`` holders in at once (a
:class:`trio.CapacityLimiter` does the counting and the fair, first-come
first-served hand-off). Whoever arrives while every slot is taken joins a
waiting room of at most ``backlog`` places, learns its place in line (and
every later change of it) through a callback, and is admitted the moment a
slot frees, in arrival order. A waiter that is cancelled (its client went
away) leaves the line at once, and the places behind it move up.

Nothing here knows about sockets: the caller decides what "being told your
place" means (a line of text, nothing at all) and when a waiter has gone.

Example::

    room = AdmissionLimit(3, backlog=10)
    async with room.admit(on_wait=tell_client_their_place) as ticket:
        ...  # at most 3 tasks are here at once
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

__all__ = ["AdmissionLimit", "Ticket", "WaitingRoomFull"]


class WaitingRoomFull(Exception):
    """Every slot is taken and the waiting room holds ``backlog`` waiters already."""

    def __init__(self, limit: int, backlog: int) -> None:
        super().__init__(f"all {limit} slots are taken and {backlog} client(s) are already waiting")
        self.limit = limit
        self.backlog = backlog


@dataclass(eq=False)
class Ticket:
    """One holder's passage through an :class:`AdmissionLimit`.

    Attributes:
        arrived: when :meth:`AdmissionLimit.admit` was entered (trio time).
        place_on_arrival: place in line on arrival, 1 being next; 0 when
            admitted at once.
        admitted: when the slot was granted (trio time); None while waiting.
    """

    arrived: float
    place_on_arrival: int = 0
    admitted: float | None = None

    @property
    def waited(self) -> float:
        """Seconds spent in the waiting room (so far, while still waiting)."""
        end = self.admitted if self.admitted is not None else trio.current_time()
        return end - self.arrived


OnWait = Callable[[int], Awaitable[None]]


class AdmissionLimit:
    """At most ``limit`` holders at once; up to ``backlog`` more wait their turn in FIFO order.

    Args:
        limit: how many holders may be admitted at once (at least 1).
        backlog: how many may wait; ``None`` for no bound, ``0`` for no
            waiting room at all (a full limit turns everyone away).
    """

    def __init__(self, limit: int, backlog: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if backlog is not None and backlog < 0:
            raise ValueError("backlog must be None or at least 0")
        self._limiter = trio.CapacityLimiter(limit)
        self.backlog = backlog
        self._line: list[Ticket] = []
        self._moved = trio.Event()
        self.admitted_total = 0
        """How many holders have been admitted since creation."""
        self.turned_away = 0
        """How many arrivals found the waiting room full."""

    @property
    def limit(self) -> int:
        """How many holders may be admitted at once."""
        return int(self._limiter.total_tokens)

    @property
    def in_use(self) -> int:
        """How many holders are admitted now."""
        return self._limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        """How many holders are in the waiting room now."""
        return len(self._line)

    def place(self, ticket: Ticket) -> int:
        """Return ``ticket``'s place in line (1 is next), or 0 if it is not waiting."""
        try:
            return self._line.index(ticket) + 1
        except ValueError:
            return 0

    @asynccontextmanager
    async def admit(self, *, on_wait: OnWait | None = None) -> AsyncIterator[Ticket]:
        """Wait for a slot (in FIFO order) and hold it for the body of the ``async with``.

        The same as :meth:`enter` then :meth:`leave`, which see.
        """
        ticket = await self.enter(on_wait=on_wait)
        try:
            yield ticket
        finally:
            self.leave(ticket)

    def try_enter(self) -> Ticket | None:
        """Take a free slot now if there is one (and nobody waits for it); else return None.

        Never waits and never joins the line. Every ticket returned must be
        given back with :meth:`leave`.
        """
        ticket = Ticket(arrived=trio.current_time())
        try:
            self._limiter.acquire_on_behalf_of_nowait(ticket)
        except trio.WouldBlock:
            return None
        ticket.admitted = ticket.arrived
        self.admitted_total += 1
        return ticket

    async def enter(self, *, on_wait: OnWait | None = None) -> Ticket:
        """Wait for a slot, in FIFO order, and return the ticket that holds it.

        Every ticket returned must be given back with :meth:`leave`.

        Args:
            on_wait: ``await on_wait(place)`` is called when the caller has to
                wait, with its place in line (1 is next), and again each time
                that place changes. If it raises (the client cannot be told
                because it is gone), the caller leaves the line and the
                exception propagates.

        Raises:
            WaitingRoomFull: no slot is free and the waiting room is full.
                Raised before any waiting, so the caller can answer "busy" at once.

        Error handling: a waiter that is cancelled, or whose ``on_wait``
        raises, leaves the line and never holds a slot. ``on_wait`` errors
        arrive inside an ``ExceptionGroup``.
        """
        ticket = Ticket(arrived=trio.current_time())
        try:
            self._limiter.acquire_on_behalf_of_nowait(ticket)
        except trio.WouldBlock:
            if self.backlog is not None and len(self._line) >= self.backlog:
                self.turned_away += 1
                raise WaitingRoomFull(self.limit, self.backlog) from None
            self._line.append(ticket)
            ticket.place_on_arrival = len(self._line)
            try:
                await self._wait(ticket, on_wait)
            finally:
                self._line.remove(ticket)
                self._moved.set()
                self._moved = trio.Event()
        ticket.admitted = trio.current_time()
        self.admitted_total += 1
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Give back the slot ``ticket`` holds; the first waiter is admitted at once.

        Raises:
            RuntimeError: ``ticket`` holds no slot (it was given back already).
        """
        self._limiter.release_on_behalf_of(ticket)

    async def _wait(self, ticket: Ticket, on_wait: OnWait | None) -> None:
        acquired = False
        try:
            async with trio.open_nursery() as nursery:
                if on_wait is not None:
                    nursery.start_soon(self._report_place, ticket, on_wait)
                await self._limiter.acquire_on_behalf_of(ticket)
                acquired = True
                nursery.cancel_scope.cancel()
        except BaseException:
            # Cancelled (or the report failed) after the hand-off: give the
            # slot back rather than leak it.
            if acquired:
                self._limiter.release_on_behalf_of(ticket)
            raise

    async def _report_place(self, ticket: Ticket, on_wait: OnWait) -> None:
        told = 0
        while True:
            moved = self._moved
            place = self.place(ticket)
            if place and place != told:
                await on_wait(place)
                told = place
            if moved is self._moved:
                await moved.wait()
