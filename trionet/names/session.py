"""The time and count rules of one admitted names session, sans-IO: quota, idle timeout, session timeout.

Both ports follow the same rules, so they live here once, with time passed
in. The trio layer asks :meth:`SessionRules.read_deadline` how long it may
wait for the next request (and what to say if none comes), and
:meth:`SessionRules.end_reason` whether the session is over after a request.

Example::

    rules = SessionRules(quota=4, idle_timeout=30, session_timeout=60)
    deadline, reason = rules.read_deadline(admitted=10.0, now=12.0)  # (42.0, "idle-timeout")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SessionRules"]


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
