"""What a PostgreSQL connection carries to another worker, and when it must stay (trionet.sql.pg.handover)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionet.sql import Database
from trionet.sql.pg.handover import Handover, capture
from trionet.sql.pg.protocol import PgServerProtocol
from trionet.sql.pg.session import PreparedStatement, Settings, TransactionRule
from trionet.sql.pg.statements import Command

_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**31 - 1),
    st.dictionaries(_text, _text, max_size=5),
    st.lists(
        st.tuples(
            _text,
            _text,
            st.lists(st.integers(0, 2**32 - 1), max_size=4).map(tuple),
            st.none() | st.lists(st.tuples(_text, st.integers(0, 2**32 - 1)), max_size=4).map(tuple),
        ),
        max_size=4,
    ).map(tuple),
)
def test_a_handover_reads_back_as_it_was_written(pid, secret, values, statements):
    settings = {"user": "u", "database": "d", "values": values, "defaults": values}
    handover = Handover(pid, secret, settings, statements)
    assert Handover.decode(handover.encode()) == handover


@pytest.mark.parametrize(
    "data", [b"", b"junk", b"[]", b'{"v": 2}', b'{"v": 1, "pid": 1}', b'{"v":1,"pid":"x","secret":1,"settings":{},"statements":[]}']
)
def test_a_malformed_handover_is_a_value_error(data):
    with pytest.raises(ValueError):
        Handover.decode(data)


def test_settings_come_back_as_they_were_set():
    settings = Settings({"user": "ann", "database": "quakes", "application_name": "app"}, read_only=True)
    settings.set("DateStyle", "ISO, MDY")
    back = Settings.restore(Handover(1, 2, settings.snapshot(), ()).settings)
    assert (back.user, back.database) == ("ann", "quakes")
    assert back.status_messages() == settings.status_messages()
    assert back.snapshot() == settings.snapshot()


def _conn_state(session, **changes):
    proto = PgServerProtocol(started=True)
    fields = dict(
        out=bytearray(),
        portals={},
        running=None,
        busy=False,
        txn=TransactionRule(),
        proto=proto,
        session=session,
        settings=Settings({"user": "u"}, read_only=True),
        pid=7,
        statements={"s1": PreparedStatement("select 1", None, Command("sql"), (23,))},
        conn=SimpleNamespace(requests=3),
    )
    fields.update(changes)
    return SimpleNamespace(**fields)


@pytest.fixture
def session(quake_db):
    database = Database(quake_db)
    session = database.open_session()
    yield session
    session.close()


def test_a_connection_between_two_exchanges_can_move(session):
    handover = capture(_conn_state(session), 99, encrypted=False)
    assert handover is not None
    assert (handover.pid, handover.secret) == (7, 99)
    assert handover.statements == (("s1", "select 1", (23,), None),)


@pytest.mark.parametrize(
    "changes",
    [
        {"out": bytearray(b"unsent")},
        {"portals": {"p": object()}},
        {"running": object()},
        {"busy": True},
        {"txn": TransactionRule(failed=True)},
    ],
    ids=["answers not sent", "a portal", "a statement running", "busy", "a failed transaction"],
)
def test_a_connection_with_something_half_done_stays(session, changes):
    assert capture(_conn_state(session, **changes), 1, encrypted=False) is None


def test_tls_a_message_in_part_or_a_batch_before_its_sync_stays(session):
    assert capture(_conn_state(session), 1, encrypted=True) is None
    proto = PgServerProtocol(started=True)
    proto.receive_data(b"Q\0\0")  # a part of a message
    assert capture(_conn_state(session, proto=proto), 1, encrypted=False) is None
    proto = PgServerProtocol(started=True)
    proto.receive_data(b"P\0\0\0\x08\0\0\0\0")  # Parse, no Sync yet
    proto.next_event()
    assert not proto.at_rest
    assert capture(_conn_state(session, proto=proto), 1, encrypted=False) is None


def test_a_session_with_state_of_its_own_stays(session):
    assert not session.holds_state()
    # What the server itself puts in the temporary schema (a view to describe a statement) is gone at once.
    from trionet.sql.pg.describe import declared_types

    assert declared_types(session.connection, "select mag from quakes") == ["REAL"]
    assert not session.holds_state()
    session.execute("begin", [], 10, 10**6, 10**6)
    assert capture(_conn_state(session), 1, encrypted=False) is None  # in a transaction block
    session.execute("rollback", [], 10, 10**6, 10**6)
    session.execute("create temp table scratch(x)", [], 10, 10**6, 10**6)
    assert session.holds_state()
    assert capture(_conn_state(session), 1, encrypted=False) is None


def test_a_session_that_ran_a_pragma_stays(session):
    session.execute("pragma cache_size", [], 10, 10**6, 10**6)
    assert session.holds_state()


async def _moved_in(server, state: bytes) -> bytes:
    """Hand ``server`` one end of a socket pair as a connection moved from another worker; what its client reads."""
    import socket

    import trio

    ours, theirs = socket.socketpair()
    with ours:
        server.service.take(theirs, state)
        ours.settimeout(5)
        chunks = []
        while chunk := await trio.to_thread.run_sync(ours.recv, 4096):
            chunks.append(chunk)
            if b"Z\0\0\0\x05" in chunk:  # (ReadyForQuery: it is being served)
                break
        return b"".join(chunks)


async def test_a_moved_connection_over_the_limit_is_refused_and_a_bad_state_closed(nursery, quake_db):
    from trionet.sql.pg.config import PgConfig
    from trionet.sql.pg.server import PgServer

    server = PgServer(Database(quake_db), PgConfig(max_connections=1))
    await nursery.start(server.serve, "127.0.0.1", 0)
    settings = Settings({"user": "u", "database": "quakes"}, read_only=True).snapshot()
    good = Handover(1000, 7, settings, (("s", "select 1", (), None),)).encode()
    # The first fits and is served: a Sync is answered with ReadyForQuery.
    import socket

    import trio

    ours, theirs = socket.socketpair()
    with ours:
        server.service.take(theirs, good)
        ours.sendall(b"S\0\0\0\x04")
        ours.settimeout(5)
        assert await trio.to_thread.run_sync(ours.recv, 64) == b"Z\0\0\0\x05I"
        # The second is one over max_connections: FATAL 53300, as a new one would get.
        refused = await _moved_in(server, good)
        assert b"53300" in refused and b"too many clients" in refused
    # A state that does not decode: closed without a word.
    assert await _moved_in(server, b"not a handover") == b""
