"""What a PostgreSQL connection carries when it moves to another worker, and when it may move.

A connection moves (:mod:`trionet.placement`) only between two exchanges,
when everything it holds can be written down: its backend key, its
settings (the StartupMessage's and every ``SET``), its prepared
statements (their text, parameter types and the columns a Describe
announced: the new worker parses them again, without a word to the
client). It
stays where it is while anything else would be lost: TLS (the session's
keys are in this process), a transaction block or a failed one, a portal, a
statement running, answers not sent yet, bytes of a message read but not
whole, an extended-query batch before its Sync, or an SQLite connection
that may hold state of its own (temporary objects, a PRAGMA's setting:
:meth:`Session.holds_state <trionet.sql.session.Session.holds_state>`).
Bytes the client sent that were not read yet stay in the socket and go
with it.

Sans-IO: :func:`capture` reads a connection's state, :meth:`Handover.encode`
and :meth:`Handover.decode` turn it into bytes and back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["Handover", "capture"]

_VERSION = 1


@dataclass(frozen=True)
class Handover:
    """A moving connection's state.

    Attributes:
        pid, secret: its BackendKeyData (a CancelRequest names them).
        settings: :meth:`Settings.snapshot <trionet.sql.pg.session.Settings.snapshot>`.
        statements: its prepared statements (the unnamed one too): (name, text, parameter
            type OIDs, and the columns a Describe announced as (name, OID)
            pairs, or None): the columns stay what the client was told.
    """

    pid: int
    secret: int
    settings: dict
    statements: tuple[tuple[str, str, tuple[int, ...], tuple[tuple[str, int], ...] | None], ...]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": _VERSION,
                "pid": self.pid,
                "secret": self.secret,
                "settings": self.settings,
                "statements": [
                    [name, sql, list(oids), None if columns is None else [list(c) for c in columns]]
                    for name, sql, oids, columns in self.statements
                ],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Handover:
        """Raises ValueError for anything but what :meth:`encode` wrote (another version included)."""
        try:
            raw = json.loads(data)
            if raw["v"] != _VERSION:
                raise ValueError(f"handover version {raw['v']!r}")
            statements = tuple(
                (
                    str(name),
                    str(sql),
                    tuple(int(oid) for oid in oids),
                    None if columns is None else tuple((str(c), int(o)) for c, o in columns),
                )
                for name, sql, oids, columns in raw["statements"]
            )
            return cls(int(raw["pid"]), int(raw["secret"]), dict(raw["settings"]), statements)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed handover: {exc!r}") from None


def capture(st, secret: int, *, encrypted: bool) -> Handover | None:
    """The :class:`Handover` of connection ``st`` (an executor's ``ConnState``) now, or None if it must stay."""
    if (
        encrypted
        or st.out
        or st.portals
        or st.running is not None
        or st.busy
        or st.txn.failed
        or not st.proto.at_rest
        or st.session.in_transaction
        or st.session.holds_state()
    ):
        return None
    statements = tuple(
        (name, p.source, tuple(p.param_oids), None if p.columns is None else tuple((c.name, c.oid) for c in p.columns))
        for name, p in st.statements.items()
    )
    return Handover(st.pid, secret, st.settings.snapshot(), statements)
