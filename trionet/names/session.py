"""The rules of one names session, sans-IO: its stages, what it keeps while waiting, quota, deadlines, bye reasons.

Both ports follow the same rules, so they live here once, with time passed
in (as h11's ``_state.py`` says of itself: everything that decides what
happens next lives here). The trio layer (:mod:`trionet.names.server`) moves
bytes and time between the sockets and a :class:`Session`:

- *waiting*: :meth:`Session.keep` takes what the client sends while it
  waits for a slot, and says whether to read on, stop reading (the
  :data:`WAIT_BUFFER` cap, or a half-closed client that still wants its
  answers) or drop the client from the line (it left before asking
  anything);
- *admitted*: :meth:`Session.read_deadline` says how long to wait for the
  next request and why the session ends if none comes, :meth:`Session.count`
  and :meth:`Session.after_answer` apply the quota and the session deadline;
- *closing*: :attr:`Session.ending` is the bye reason, :meth:`Session.bye`
  the sentence that goes with it.

:class:`SessionRules` holds the limits themselves. A client turned away
before admission is told so with a :class:`Refused` (its bye reason and
sentence: :func:`busy_message`, :func:`share_message`,
:func:`wait_timeout_message`).

Example::

    rules = SessionRules(quota=4, idle_timeout=30, session_timeout=60)
    deadline, reason = rules.read_deadline(admitted=10.0, now=12.0)  # (42.0, "idle-timeout")
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass

from trionet.framing import EOF, NEED_DATA, TruncatedFrame

__all__ = [
    "DNS_CLOSE_WAIT",
    "REFUSE_WAIT",
    "STUCK_SEND_NO_IDLE",
    "WAIT_BUFFER",
    "Keep",
    "Refused",
    "Session",
    "SessionRules",
    "Stage",
    "busy_message",
    "share_message",
    "wait_timeout_message",
]

WAIT_BUFFER = 64 * 1024
"""Bytes of input kept from a client while it waits; beyond that it is not read until admitted."""

STUCK_SEND_NO_IDLE = 30.0
"""Seconds a send may stay blocked when there is no idle timeout (otherwise: the idle timeout)."""

DNS_CLOSE_WAIT = 1.0
"""Seconds a DNS client that used its quota (or its session time) has to close first before the server closes."""

REFUSE_WAIT = 1.0
"""Seconds a turned-away DNS client that sent no query yet has to send one, to be answered REFUSED."""


@dataclass(frozen=True, slots=True)
class SessionRules:
    """How much one admitted client may do; each limit ``0`` for none.

    Attributes:
        quota: requests answered before the session ends (``quota-reached``).
        idle_timeout: seconds without a request before it ends (``idle-timeout``).
        session_timeout: seconds after admission before it ends
            (``session-timeout``): the quota is meant for a burst, so a client
            that spreads its queries out cannot keep its slot for
            ``quota * idle_timeout`` seconds.
    """

    quota: int = 0
    idle_timeout: float = 0.0
    session_timeout: float = 0.0

    @property
    def stuck_send(self) -> float:
        """Seconds one send may stay blocked before the client counts as not reading."""
        return self.idle_timeout or STUCK_SEND_NO_IDLE

    def session_deadline(self, admitted: float) -> float:
        """When a session admitted at ``admitted`` ends, at the latest (``inf`` for never)."""
        return admitted + self.session_timeout if self.session_timeout > 0 else math.inf

    def read_deadline(self, admitted: float, now: float) -> tuple[float, str]:
        """Until when to wait for the next request from ``now``, and the bye reason if none comes.

        Returns:
            ``(deadline, reason)``: the earlier of the idle and the session
            deadline, with ``idle-timeout`` or ``session-timeout``; ``(inf, "")``
            when neither limit is set.
        """
        idle = now + self.idle_timeout if self.idle_timeout > 0 else math.inf
        session = self.session_deadline(admitted)
        if session <= idle:
            return session, "session-timeout" if session < math.inf else ""
        return idle, "idle-timeout"

    def end_reason(self, answered: int, admitted: float, now: float) -> str:
        """Why the session is over after ``answered`` requests at ``now``: a bye reason, or ``""``.

        The quota comes first: a session that used its quota at its deadline
        reached its quota.
        """
        if self.quota and answered >= self.quota:
            return "quota-reached"
        if now >= self.session_deadline(admitted):
            return "session-timeout"
        return ""


class Stage(enum.Enum):
    """Where a session is: in line, served, or on its way out."""

    WAITING = "waiting"
    ADMITTED = "admitted"
    CLOSING = "closing"


class Keep(enum.Enum):
    """What to do after :meth:`Session.keep` took a read made while waiting."""

    READ_MORE = "read more"
    STOP_READING = "stop reading"
    """The cap is reached, or the client half-closed after asking: keep its place, read nothing more."""
    LEAVE_LINE = "leave the line"
    """The client closed before asking anything: it is gone."""


class Refused(Exception):
    """The client is turned away before it is admitted: ``reason`` is the bye reason, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def busy_message(limit: int, waiting: int) -> str:
    """The ``bye busy`` sentence when every slot is taken and the waiting room is full."""
    return f"all {limit} slots are busy and {waiting} client(s) are waiting; try again later"


def share_message(key: object, per_key: int) -> str:
    """The ``bye busy`` sentence when the client's address holds its ``--per-address`` share."""
    return (
        f"per-address: {key} already has {per_key} connection(s) served or waiting, "
        "the most one address may have; try again when one has closed"
    )


def wait_timeout_message(timeout: float) -> str:
    """The ``bye wait-timeout`` sentence."""
    return f"no slot came free within {timeout:g} seconds; try again later"


class Session:
    """One client's way through the server: waiting, admitted, closing.

    Args:
        rules: the quota and the timeouts.
        wait_buffer: bytes of input kept while waiting.

    Attributes:
        stage: the :class:`Stage`.
        pending: requests (and a final ``EOF``) received while waiting, to
            be answered in order once admitted.
        kept: bytes read while waiting.
        answered: requests counted against the quota.
        admitted_at: when the slot was granted (None before).
        ending: why the session ends, a bye reason (``""`` while it goes on).
    """

    __slots__ = ("_quota", "admitted_at", "answered", "ending", "kept", "pending", "rules", "stage", "wait_buffer")

    def __init__(self, rules: SessionRules, wait_buffer: int = WAIT_BUFFER) -> None:
        self.rules = rules
        self.wait_buffer = wait_buffer
        self.stage = Stage.WAITING
        self.pending: collections.deque = collections.deque()
        self.kept = 0
        self.answered = 0
        self.admitted_at: float | None = None
        self.ending = ""
        self._quota = rules.quota

    # --- waiting ---------------------------------------------------------------

    def keep(self, data: bytes, decoder) -> Keep:
        """Take ``data`` read from a waiting client (``b""``: it closed its side).

        ``decoder`` is the port's sans-IO decoder (a line protocol or a DNS
        framer); the requests it yields are kept in :attr:`pending`.

        Returns:
            :attr:`Keep.READ_MORE` until :attr:`wait_buffer` bytes are kept;
            then :attr:`Keep.STOP_READING` (TCP holds back the rest). A
            client that closes after asking something keeps its place
            (:attr:`Keep.STOP_READING`, with ``EOF`` queued after its
            requests); one that closes before asking anything
            :attr:`Keep.LEAVE_LINE`.
        """
        decoder.receive_data(data)
        self.kept += len(data)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                break
            if event is EOF or type(event) is TruncatedFrame:
                if not self.pending:
                    return Keep.LEAVE_LINE
                self.pending.append(EOF)
                return Keep.STOP_READING
            self.pending.append(event)
        return Keep.READ_MORE if self.kept < self.wait_buffer else Keep.STOP_READING

    def admit(self, now: float) -> None:
        """The client got a slot at ``now``."""
        self.stage = Stage.ADMITTED
        self.admitted_at = now

    # --- admitted --------------------------------------------------------------

    def read_deadline(self, now: float) -> tuple[float, str]:
        """Until when to wait for the next request, and the bye reason if none comes (see :class:`SessionRules`)."""
        return self.rules.read_deadline(self.admitted_at, now)

    def session_deadline(self) -> float:
        """When this session ends at the latest (``inf`` for never)."""
        return self.rules.session_deadline(self.admitted_at)

    def count(self) -> bool:
        """Count one request against the quota; True (and :attr:`ending` set) when that used it up.

        The DNS port calls this once per message, so it stays this small.
        """
        self.answered += 1
        if self._quota and self.answered >= self._quota:
            self.end("quota-reached")
            return True
        return False

    def after_answer(self, now: float) -> str:
        """Count one answered request at ``now``; the bye reason if the session ends with it, else ``""``."""
        self.answered += 1
        reason = self.rules.end_reason(self.answered, self.admitted_at, now)
        if reason:
            self.end(reason)
        return reason

    # --- closing ---------------------------------------------------------------

    def end(self, reason: str) -> None:
        """End the session for ``reason`` (a bye reason).

        The first reason given stays, except ``shutdown``: a server that is
        shutting down closes at once, without waiting for a DNS client that
        used its quota to close first.
        """
        if not self.ending or reason == "shutdown":
            self.ending = reason
        self.stage = Stage.CLOSING

    def close(self) -> None:
        """The connection is closing, for :attr:`ending` or because the client left (``ending`` empty)."""
        self.stage = Stage.CLOSING

    @property
    def lets_client_close_first(self) -> bool:
        """True when a DNS client should get :data:`DNS_CLOSE_WAIT` seconds to close first (RFC 7766 6.2.3).

        That is when the client may be counting its own queries: it used its
        quota, or its session time ran out between two of them.
        """
        return self.ending in ("quota-reached", "session-timeout")

    def bye(self, reason: str | None = None) -> str:
        """The sentence of the ``bye`` line for ``reason`` (default: :attr:`ending`)."""
        reason = reason or self.ending
        rules = self.rules
        if reason == "quota-reached":
            return f"{self.answered} queries answered, the quota of this server; connect again for more"
        if reason == "idle-timeout":
            return f"no query for {rules.idle_timeout:g} seconds; goodbye"
        if reason == "session-timeout":
            return (
                f"admitted {rules.session_timeout:g} seconds ago, the longest a session may last; "
                "connect again for more"
            )
        if reason == "shutdown":
            return "the server is shutting down"
        if reason == "quit":
            return "goodbye"
        raise ValueError(f"no bye sentence for {reason!r}")
