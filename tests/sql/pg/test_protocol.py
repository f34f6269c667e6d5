"""The sans-IO core: framing, the startup phase, skip-until-Sync, bounds, and any bytes at all."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.framing import EOF, NEED_DATA
from trionet.sql.pg import messages as m
from trionet.sql.pg.protocol import (
    MAX_STARTUP_BYTES,
    EncryptionRefused,
    PgServerProtocol,
    PortalRun,
    ProtocolViolation,
)

from .conftest import startup_packet, typed


def events(proto: PgServerProtocol) -> list:
    out = []
    while (event := proto.next_event()) is not NEED_DATA:
        out.append(event)
        if event is EOF:
            break
    return out


def started(**kw) -> PgServerProtocol:
    proto = PgServerProtocol(**kw)
    proto.receive_data(startup_packet(user="u", database="d"))
    assert isinstance(proto.next_event(), m.StartupMessage)
    return proto


def test_startup_message_byte_by_byte():
    proto = PgServerProtocol()
    packet = startup_packet(user="alice", database="quakes", application_name="psql")
    for i in range(len(packet) - 1):
        proto.receive_data(packet[i : i + 1])
        assert proto.next_event() is NEED_DATA
    proto.receive_data(packet[-1:])
    event = proto.next_event()
    assert event == m.StartupMessage(3, 0, {"user": "alice", "database": "quakes", "application_name": "psql"})
    assert not proto.in_startup


def test_ssl_request_is_refused_and_startup_follows():
    proto = PgServerProtocol()
    proto.receive_data(struct.pack("!ii", 8, 80877103))
    assert proto.next_event() == m.SslRequest()
    assert proto.send(EncryptionRefused()) == b"N"
    proto.receive_data(struct.pack("!ii", 8, 80877104))
    assert proto.next_event() == m.GssEncRequest()
    proto.receive_data(startup_packet(user="u"))
    assert isinstance(proto.next_event(), m.StartupMessage)


def test_cancel_request_ends_the_connection():
    proto = PgServerProtocol()
    proto.receive_data(struct.pack("!iiii", 16, 80877102, 1234, 5678) + b"more junk")
    assert proto.next_event() == m.CancelRequest(1234, 5678)
    assert proto.next_event() is EOF


def test_protocol_2_is_refused():
    proto = PgServerProtocol()
    proto.receive_data(struct.pack("!ii", 9, 2 << 16) + b"\0")
    event = proto.next_event()
    assert isinstance(event, ProtocolViolation) and "2.0" in event.message
    assert proto.next_event() is EOF


def test_startup_length_out_of_range():
    for length in (0, 4, 7, MAX_STARTUP_BYTES + 1, -5, 2**31 - 1):
        proto = PgServerProtocol()
        proto.receive_data(struct.pack("!i", length) + b"\0" * 8)
        assert isinstance(proto.next_event(), ProtocolViolation), length


def test_truncated_startup_is_eof():
    proto = PgServerProtocol()
    proto.receive_data(startup_packet(user="u")[:-3])
    assert proto.next_event() is NEED_DATA
    proto.receive_data(b"")
    assert proto.next_event() is EOF


def test_extended_messages_decode():
    proto = started()
    bind_body = (
        b"p\0s\0" + struct.pack("!hh", 1, 1) + struct.pack("!h", 2)
        + struct.pack("!i", 4) + struct.pack("!i", 7) + struct.pack("!i", -1)
        + struct.pack("!hh", 1, 0)
    )
    proto.receive_data(
        typed(b"P", b"s\0select $1\0" + struct.pack("!hi", 1, 23))
        + typed(b"B", bind_body)
        + typed(b"D", b"Pp\0")
        + typed(b"E", b"p\0" + struct.pack("!i", 10))
        + typed(b"C", b"Ss\0")
        + typed(b"H")
        + typed(b"S")
        + typed(b"X")
    )
    assert events(proto) == [
        m.Parse("s", "select $1", (23,)),
        m.Bind("p", "s", (1,), (struct.pack("!i", 7), None), (0,)),
        m.Describe("P", "p"),
        m.Execute("p", 10),
        m.Close("S", "s"),
        m.Flush(),
        m.Sync(),
        m.Terminate(),
        EOF,
    ]


def test_error_in_extended_batch_skips_to_sync():
    proto = started()
    proto.receive_data(typed(b"P", b"\0bad\0\0\0") + typed(b"B", b"\0\0" + b"\0" * 6) + typed(b"E", b"\0\0\0\0\0") + typed(b"S") + typed(b"Q", b"select 1\0"))
    assert isinstance(proto.next_event(), m.Parse)
    proto.send(m.ErrorResponse("42601", "syntax error"))
    assert proto.next_event() == m.Sync()  # Bind and Execute skipped
    assert proto.next_event() == m.Query("select 1")


def test_error_after_simple_query_skips_nothing():
    proto = started()
    proto.receive_data(typed(b"Q", b"bad\0") + typed(b"Q", b"select 1\0"))
    assert proto.next_event() == m.Query("bad")
    proto.send(m.ErrorResponse("42601", "syntax error"))
    assert proto.next_event() == m.Query("select 1")


def test_message_over_the_limit_is_refused_before_buffering():
    proto = started(max_message_bytes=1000)
    proto.receive_data(b"Q" + struct.pack("!i", 1 << 30))
    event = proto.next_event()
    assert isinstance(event, ProtocolViolation) and "1000" in event.message
    proto.receive_data(b"x" * 5000)
    assert proto.buffered == 0
    assert proto.next_event() is EOF


def test_length_under_four_is_a_violation():
    proto = started()
    proto.receive_data(b"Q" + struct.pack("!i", 3))
    assert isinstance(proto.next_event(), ProtocolViolation)


def test_malformed_body_is_a_violation():
    proto = started()
    proto.receive_data(typed(b"Q", b"no terminator"))
    assert isinstance(proto.next_event(), ProtocolViolation)
    proto = started()
    proto.receive_data(typed(b"B", b"\0\0" + struct.pack("!hh", 1, 7) + b"\0\0\0\0"))
    assert isinstance(proto.next_event(), ProtocolViolation)


def test_unknown_type_is_reported():
    proto = started()
    proto.receive_data(typed(b"z", b"abc"))
    assert proto.next_event() == m.UnexpectedMessage("z")


_EVENT_TYPES = tuple(
    getattr(m, name) for name in m.__all__ if isinstance(getattr(m, name), type) and name != "MessageError"
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12), st.booleans(), st.booleans())
def test_any_bytes_give_events_or_a_violation(chunks, after_startup, end):
    limit = 256
    proto = PgServerProtocol(max_message_bytes=limit)
    if after_startup:
        proto.receive_data(startup_packet(user="u"))
        assert isinstance(proto.next_event(), m.StartupMessage)
    for chunk in chunks:
        proto.receive_data(chunk)
        assert proto.buffered <= max(limit, MAX_STARTUP_BYTES) + len(chunk)
        while True:
            event = proto.next_event()
            assert event is NEED_DATA or event is EOF or isinstance(event, (ProtocolViolation, *_EVENT_TYPES))
            if event is NEED_DATA or event is EOF:
                break
            if isinstance(event, m.Parse):
                proto.send(m.ErrorResponse("XX000", "x"))
    if end:
        proto.receive_data(b"")
        for _ in range(len(b"".join(chunks)) + 2):
            event = proto.next_event()
            if event is EOF:
                break
            assert event is not NEED_DATA
        else:
            raise AssertionError("no EOF after the end of stream")


# --- PortalRun: a whole unnamed-portal round trip at once ----------------------------


def _parse(sql: str, name: str = "", oids: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack(f"!h{len(oids)}i", len(oids), *oids)
    return typed(b"P", body)


def _bind(*values: bytes | None, statement: str = "", portal: str = "", results: tuple[int, ...] = ()) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!hh", 0, len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return typed(b"B", body + struct.pack(f"!h{len(results)}h", len(results), *results))


def _describe_portal(name: str = "") -> bytes:
    return typed(b"D", b"P" + name.encode() + b"\0")


def _execute(max_rows: int = 0, portal: str = "") -> bytes:
    return typed(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


SYNC = typed(b"S")


_MESSAGES = [
    _parse("select $1"),
    _parse("select 1", name="s"),
    _bind(b"1"),
    _bind(b"1", statement="s"),
    _bind(b"1", statement="bad"),
    _bind(portal="p"),
    _describe_portal(),
    _describe_portal("p"),
    typed(b"D", b"S\0"),
    _execute(),
    _execute(2),
    _execute(portal="p"),
    SYNC,
    typed(b"H"),
    typed(b"Q", b"select 1\0"),
    typed(b"B", b"\0"),  # malformed: a protocol violation
]


def _events(data: bytes, cuts: list[int], coalesce: bool) -> list:
    """Every message, as the executor would see it; an error is answered after each Bind of statement "bad"."""
    proto = PgServerProtocol(coalesce=coalesce)
    proto.receive_data(startup_packet(user="u"))
    assert isinstance(proto.next_event(), m.StartupMessage)
    seen = []
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    for piece in pieces:
        proto.receive_data(piece)
        while True:
            event = proto.next_event()
            if event is NEED_DATA or event is EOF:
                break
            for part in proto.expand(event) if type(event) is PortalRun else [event]:
                seen.append(part)
                if type(part) is m.Bind and part.statement == "bad":
                    proto.send(m.ErrorResponse("XX000", "x"))
    return seen


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_MESSAGES), max_size=14), st.lists(st.integers(0, 400), max_size=4))
def test_coalescing_changes_no_message_and_no_skip(messages, cuts):
    data = b"".join(messages)
    cuts = sorted(c for c in cuts if c < len(data))
    assert _events(data, cuts, coalesce=True) == _events(data, cuts, coalesce=False)


def test_a_whole_run_comes_as_one_event():
    proto = PgServerProtocol(coalesce=True)
    proto.receive_data(startup_packet(user="u"))
    proto.next_event()
    proto.receive_data(_bind(b"7", statement="s") + _describe_portal() + _execute() + SYNC)
    run = proto.next_event()
    assert type(run) is PortalRun and run.count == 4 and run.describe and run.parse is None
    assert run.bind.statement == "s" and run.bind.params == (b"7",)
    assert proto.next_event() is NEED_DATA
    # A named portal is not a run: the messages come one by one.
    proto.receive_data(_bind(portal="p") + _execute(portal="p") + SYNC)
    assert type(proto.next_event()) is m.Bind


# What pgbench -M prepared (libpq's PQexecPrepared) sends for every transaction, byte for byte (captured).
PGBENCH_RUN = (
    b"B\x00\x00\x00\x19\x00P_0\x00\x00\x00\x00\x01\x00\x00\x00\x043073\x00\x01\x00\x00"
    b"D\x00\x00\x00\x06P\x00E\x00\x00\x00\t\x00\x00\x00\x00\x00S\x00\x00\x00\x04"
)


def _one_by_one(data: bytes) -> list:
    proto = started()
    proto.receive_data(data)
    return events(proto)


@given(st.sampled_from([PGBENCH_RUN, PGBENCH_RUN.replace(b"D\x00\x00\x00\x06P\x00", b"")]))
def test_libpq_runs_come_as_one_event_holding_the_same_messages(data):
    proto = started(coalesce=True)
    proto.receive_data(data)
    [run] = events(proto)
    assert type(run) is PortalRun and run.messages() == _one_by_one(data)
    assert proto.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20), st.integers(0, 60))
def test_a_libpq_tail_after_other_bytes_gives_the_messages_one_by_one(junk, cut):
    # The tail alone says nothing: whatever comes before it is framed as usual.
    data = junk + PGBENCH_RUN[cut:]
    coalesced = started(coalesce=True)
    coalesced.receive_data(data)
    seen = []
    for event in events(coalesced):
        seen.extend(coalesced.expand(event) if type(event) is PortalRun else [event])
    assert seen == _one_by_one(data)


def _bind_body(portal, statement, formats, params, results) -> bytes:
    body = portal + b"\0" + statement + b"\0" + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return body + struct.pack(f"!h{len(results)}h", len(results), *results)


_NAMES = st.sampled_from([b"", b"P_0", b"s", b"\xff", "é".encode()])
_CODES = st.lists(st.sampled_from([0, 1, 2, -1, 256]), max_size=3)
_BIND_BODIES = st.builds(
    _bind_body, _NAMES, _NAMES, _CODES, st.lists(st.none() | st.binary(max_size=6), max_size=3), _CODES
)


def _decoded(decode, body: bytes):
    try:
        return decode(body)
    except m.MessageError as exc:
        return ("MessageError", str(exc))


@settings(max_examples=500, deadline=None)
@given(_BIND_BODIES, st.integers(-3, 3), st.binary(max_size=3))
def test_bind_decoder_equals_the_checked_one(body, cut, extra):
    # Well-formed bodies, cut short or with bytes more: same Bind or the same error.
    if cut < 0:
        body = body[:cut]
    elif cut > 0:
        body += extra
    assert _decoded(m._decode_bind, body) == _decoded(m._decode_bind_checked, body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_bind_decoder_equals_the_checked_one_on_any_bytes(body):
    assert _decoded(m._decode_bind, body) == _decoded(m._decode_bind_checked, body)


# --- the last Bind's memo: a repeat is read as its constant parts and one value ----------


_LIBPQ_TAILS = [b"D\0\0\0\x06P\0" + _execute() + SYNC, _execute() + SYNC]


def _libpq_run(body: bytes, tail: bytes) -> bytes:
    return typed(b"B", body) + tail


def _corrupted(body: bytes, at: int, byte: int) -> bytes:
    at %= len(body) + 1
    return body[:at] + bytes([byte]) + body[at + 1 :]


_VALID_CODES = st.lists(st.sampled_from([0, 1]), max_size=3)
_ONE_VALUE_BODIES = st.builds(
    lambda statement, formats, value, results: _bind_body(b"", statement, formats, [value], results),
    st.sampled_from([b"", b"P_0", b"s", "é".encode()]),
    _VALID_CODES,
    st.binary(max_size=6),
    _VALID_CODES,
)


@st.composite
def _first_and_then(draw):
    """A one-value Bind body, and a next one: the same but for its value (maybe cut or changed), or any other."""
    statement = draw(st.sampled_from([b"", b"P_0", b"s", "é".encode()]))
    formats, results = draw(_VALID_CODES), draw(_VALID_CODES)
    first = _bind_body(b"", statement, formats, [draw(st.binary(max_size=6))], results)
    again = _bind_body(b"", statement, formats, [draw(st.none() | st.binary(max_size=6))], results)
    then = draw(
        st.sampled_from([again, again + b"\0", again[:-1]])
        | st.builds(_corrupted, st.just(again), st.integers(0, 40), st.integers(0, 255))
        | _ONE_VALUE_BODIES
        | _BIND_BODIES
    )
    return first, then


@settings(max_examples=1000, deadline=None)
@given(_first_and_then(), st.sampled_from(_LIBPQ_TAILS), st.sampled_from(_LIBPQ_TAILS))
def test_a_bind_after_a_remembered_one_reads_as_on_a_fresh_connection(bodies, first_tail, then_tail):
    # The first run leaves its Bind's constant parts remembered; what the
    # next run gives may not depend on them.
    first, then = bodies
    remembered = started(coalesce=True)
    remembered.receive_data(_libpq_run(first, first_tail))
    assert all(type(event) is PortalRun for event in events(remembered))  # the connection goes on
    fresh = started(coalesce=True)
    data = _libpq_run(then, then_tail)
    remembered.receive_data(data)
    fresh.receive_data(data)
    assert events(remembered) == events(fresh)
    assert remembered.buffered == fresh.buffered


def test_a_repeated_libpq_bind_gives_its_own_value_each_time():
    proto = started(coalesce=True)
    for value in (b"1", b"22", b"", b"333", b"4"):
        proto.receive_data(_libpq_run(_bind_body(b"", b"P_0", [0], [value], [0]), _LIBPQ_TAILS[0]))
        [run] = events(proto)
        assert run.bind == m.Bind("", "P_0", (0,), (value,), (0,)) and run.describe
    # A NULL value, or another statement, is decoded as usual.
    proto.receive_data(_libpq_run(_bind_body(b"", b"P_0", [0], [None], [0]), _LIBPQ_TAILS[1]))
    [run] = events(proto)
    assert run.bind == m.Bind("", "P_0", (0,), (None,), (0,)) and not run.describe
    proto.receive_data(_libpq_run(_bind_body(b"", b"s", [0], [b"5"], [0]), _LIBPQ_TAILS[1]))
    [run] = events(proto)
    assert run.bind == m.Bind("", "s", (0,), (b"5",), (0,))


def _query_read_by_reader(body: bytes):
    # The layout read field by field, as the other messages are: what _decode_query must give.
    r = m._Reader(body)
    query = m.Query(r.cstring())
    r.end()
    return query


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=12)
    | st.builds(lambda text, rest: text.encode() + b"\0" + rest, st.text(max_size=8), st.binary(max_size=2))
)
def test_query_decoder_equals_the_reader(body):
    assert _decoded(lambda b: m.decode_message("Q", b), body) == _decoded(_query_read_by_reader, body)
