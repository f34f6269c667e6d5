"""The SQL protocol core without I/O: requests, replies, values, and fuzzed input."""

from __future__ import annotations

import json
import math
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trionet.framing import EOF, NEED_DATA
from trionet.sql import Database, SqlError, protocol
from trionet.sql.protocol import (
    _REQUEST_FIELDS,
    BadRequest,
    Request,
    ServerProtocol,
    _has_lone_surrogate,
    _parse_auth,
    decode_value,
    parse_request,
)

sqlite_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)


def test_bare_line_is_sql():
    assert parse_request(b"  SELECT 1  ") == Request(id=None, sql="SELECT 1", bare=True)


def test_blank_line_is_ignored():
    assert parse_request(b"   \t") is None


def test_json_request_with_positional_and_named_params():
    req = parse_request(b'{"id": 7, "sql": "SELECT ?", "params": [1, 2.0, "x", null, {"$blob": "AAE="}]}')
    assert req == Request(id=7, sql="SELECT ?", params=(1, 2.0, "x", None, b"\x00\x01"))
    assert isinstance(req.params[1], float)
    req = parse_request(b'{"sql": "SELECT :a", "params": {":a": {"$real": "-Infinity"}}}')
    assert req.params == {"a": -math.inf}


@pytest.mark.parametrize(
    "line, code, needle",
    [
        (b"{not json", "bad_request", "invalid JSON"),
        (b"[1, 2]", "bad_request", "must be an object"),  # starts with '[': still SQL? no: see below
        (b'{"sql": 5}', "bad_request", "'sql'"),
        (b'{"sql": "SELECT 1", "parms": []}', "bad_request", "unknown field(s): parms"),
        (b'{"sql": "SELECT 1", "params": 5}', "bad_request", "'params'"),
        (b'{"sql": "SELECT 1", "params": [[1]]}', "bad_param", "not a value"),
        (b'{"sql": "SELECT 1", "params": [{"$blob": "!!"}]}', "bad_param", "base64"),
        (b'{"sql": "SELECT 1", "max_rows": -1}', "bad_request", "max_rows"),
        (b'{"id": [1], "sql": "SELECT 1"}', "bad_request", "'id'"),
        (b"\xff\xfe SELECT", "bad_request", "UTF-8"),
    ],
)
def test_bad_requests_get_a_reason(line, code, needle):
    if line.startswith(b"["):
        # Only '{' opens a JSON request; anything else is SQL for SQLite to judge.
        assert parse_request(line) == Request(id=None, sql="[1, 2]", bare=True)
        return
    bad = parse_request(line)
    assert isinstance(bad, BadRequest)
    assert bad.code == code and needle in bad.message
    assert bad.code in protocol.ERROR_CODES


def test_request_id_is_echoed_even_when_the_rest_is_wrong():
    bad = parse_request(b'{"id": "abc", "sql": ""}')
    assert bad == BadRequest("abc", "bad_request", "'sql' must be a non-empty string")


@given(st.lists(sqlite_values, max_size=8), st.one_of(st.none(), st.integers(0, 10), st.text(max_size=5)))
def test_request_round_trip(values, req_id):
    line = protocol.encode_request("SELECT ?", values, id=req_id)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    req = parse_request(line[:-1])
    assert req.id == req_id
    assert req.params == tuple(values)
    assert [type(v) for v in req.params] == [type(v) for v in values]


@given(st.lists(st.tuples(sqlite_values, sqlite_values), max_size=10))
def test_rows_round_trip_keeps_storage_classes(rows):
    reply = protocol.parse_reply(protocol.encode_rows(3, rows)[:-1])
    assert reply == protocol.Rows(3, [tuple(r) for r in rows])
    for sent, got in zip(rows, reply.rows):
        assert [type(v) for v in sent] == [type(v) for v in got]


def _generic(obj) -> bytes:
    """A frame as a plain json.dumps writes it: what the server's pre-encoded frames must equal, byte for byte."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


_ids = st.one_of(st.none(), st.integers(-(2**70), 2**70), st.text(max_size=8))


@given(
    _ids,
    st.lists(st.text(max_size=6), max_size=4),
    st.lists(st.tuples(sqlite_values | st.floats(), sqlite_values), max_size=4),
    st.integers(0, 10**6),
    st.booleans(),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.floats(0, 1e7),
)
def test_fast_frames_are_the_generic_encoders_bytes(req_id, columns, rows, count, truncated, rowid, ms):
    assert protocol.encode_columns(req_id, columns) == _generic({"id": req_id, "type": "columns", "columns": columns})
    encoded = [[protocol.encode_value(v) for v in row] for row in rows]
    assert protocol.encode_rows(req_id, rows) == _generic({"id": req_id, "type": "rows", "rows": encoded})
    done = protocol.encode_done(
        req_id, rows=count, truncated=truncated, changes=count // 2, last_insert_rowid=rowid, elapsed_ms=ms
    )
    assert done == _generic(
        {"id": req_id, "type": "done", "rows": count, "truncated": truncated, "changes": count // 2,
         "last_insert_rowid": rowid, "ms": round(ms, 3)}
    )  # fmt: skip


def _no_fast_scan(text, idx):
    raise StopIteration(idx)


@given(st.dictionaries(st.sampled_from(["id", "sql", "params", "max_rows", "x"]), _ids | st.lists(sqlite_values)))
def test_fast_parse_answers_as_json_loads_does(obj):
    # The reference is the parser with its fast scanner refused: json.loads alone.
    line = json.dumps(obj, default=lambda b: {"$blob": "AA=="}).encode()
    for variant in (line, line + b" {}", line[:-1], line.replace(b"{", b"[", 1)):
        got = parse_request(variant)
        with mock.patch.object(protocol, "_scan_json", _no_fast_scan):
            assert got == parse_request(variant)


def test_non_finite_reals_survive():
    line = protocol.encode_rows(None, [(math.inf, -math.inf)])
    assert b"Infinity" in line and b"NaN" not in line
    json.loads(line)  # still strict JSON
    assert protocol.parse_reply(line[:-1]).rows == [(math.inf, -math.inf)]


def test_server_protocol_pipelined_and_oversized():
    proto = ServerProtocol(max_request_bytes=40)
    proto.receive_data(b'SELECT 1\n{"id":1,"sql":"SELECT 2"}\n' + b"x" * 100 + b"\nSELECT 3\n")
    events = []
    while (e := proto.next_event()) is not NEED_DATA:
        events.append(e)
    assert events[0] == Request(None, "SELECT 1", bare=True)
    assert events[1] == Request(1, "SELECT 2")
    assert events[2].code == "request_too_large"
    assert events[3] == Request(None, "SELECT 3", bare=True)
    proto.receive_data(b"")
    assert proto.next_event() is EOF


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in zip(points, points[1:])]


_SELECT_1 = protocol.encode_request("SELECT 1", id=1)

garbage_lines = st.binary(max_size=150).map(lambda b: b.replace(b"\n", b""))
request_lines = st.builds(
    lambda sql, values, req_id: protocol.encode_request(sql, values, id=req_id)[:-1],
    st.text(min_size=1, max_size=20).filter(lambda t: "\n" not in t and t.strip()),
    st.lists(sqlite_values, max_size=3),
    st.none() | st.integers(-5, 5) | st.text(max_size=3),
)


@given(st.lists(garbage_lines | request_lines, max_size=8), st.integers(1, 200), st.lists(st.integers(0, 3000)))
def test_server_protocol_answers_every_line_in_order_however_it_is_cut(lines, limit, cuts):
    """Each line becomes exactly the event parse_request makes of it (or request_too_large), in order,
    whatever the chunking; afterwards the core still parses a good request."""
    proto = ServerProtocol(max_request_bytes=limit)
    data = b"".join(line + b"\n" for line in lines) + _SELECT_1
    for chunk in _chunks(data, cuts):
        proto.receive_data(chunk)
    events = []
    while (event := proto.next_event()) is not NEED_DATA:
        events.append(event)
    expected = []
    for line in [*lines, _SELECT_1[:-1]]:
        line = line[:-1] if line.endswith(b"\r") else line  # CRLF is a line end too
        if len(line) > limit:
            expected.append(BadRequest(None, "request_too_large", f"request longer than {limit} bytes; it was skipped"))
        elif (parsed := parse_request(line)) is not None:
            expected.append(parsed)
    assert events == expected
    for event in events:
        if isinstance(event, BadRequest):
            assert event.code in protocol.ERROR_CODES
    if len(_SELECT_1) - 1 <= limit:
        assert events[-1] == Request(1, "SELECT 1")  # the state is still usable after any garbage
    proto.receive_data(b"")
    assert proto.next_event() is EOF


reply_lines = st.one_of(
    st.builds(protocol.encode_rows, st.integers(0, 9), st.lists(st.tuples(sqlite_values, sqlite_values), max_size=3)),
    st.builds(protocol.encode_columns, st.integers(0, 9), st.lists(st.text(max_size=5), max_size=3)),
    st.builds(protocol.encode_error, st.none() | st.integers(0, 9), st.sampled_from(sorted(protocol.ERROR_CODES)),
              st.text(max_size=20)),
    st.builds(protocol.encode_bye, st.text(max_size=20), st.sampled_from(sorted(protocol.BYE_CODES))),
).map(lambda line: line[:-1])


@given(st.lists(garbage_lines | reply_lines, max_size=8), st.lists(st.integers(0, 3000)))
def test_client_protocol_round_trips_replies_and_refuses_garbage_line_by_line(lines, cuts):
    """A reply frame comes back as its event; anything else raises RemoteProtocolError for that
    line alone, and the next frame still parses."""
    proto = protocol.ClientProtocol()
    bye = protocol.encode_bye("end", "shutdown")
    for chunk in _chunks(b"".join(line + b"\n" for line in lines) + bye, cuts):
        proto.receive_data(chunk)
    for line in lines:
        if not line.strip():
            continue  # blank lines are skipped
        try:
            expected = protocol.parse_reply(line)
        except protocol.RemoteProtocolError:
            with pytest.raises(protocol.RemoteProtocolError):
                proto.next_event()
        else:
            assert proto.next_event() == expected
    assert proto.next_event() == protocol.Bye("end", "shutdown")
    assert proto.next_event() is NEED_DATA


@given(st.binary(max_size=300))
def test_client_parser_answers_garbage_with_its_error_or_a_frame_event(data):
    try:
        event = protocol.parse_reply(data)
    except protocol.RemoteProtocolError:
        return
    assert isinstance(
        event, (protocol.Hello, protocol.Columns, protocol.Rows, protocol.Done, protocol.ErrorReply, protocol.Bye)
    )


def test_client_protocol_reads_a_whole_answer():
    proto = protocol.ClientProtocol()
    proto.receive_data(
        protocol.encode_hello(read_only=True, max_rows=5, max_request_bytes=10, query_timeout=1.0)
        + protocol.encode_columns(1, ["a"])
        + protocol.encode_rows(1, [(b"\x01",)])
        + protocol.encode_done(1, rows=1, truncated=False, changes=0, last_insert_rowid=None, elapsed_ms=0.5)
    )
    kinds = [type(proto.next_event()).__name__ for _ in range(4)]
    assert kinds == ["Hello", "Columns", "Rows", "Done"]
    assert proto.next_event() is NEED_DATA


def test_an_integer_too_long_for_python_is_a_bad_request():
    # Python refuses int literals of more than 4300 digits with a plain ValueError.
    bad = parse_request(b'{"sql": "SELECT ?", "params": [' + b"7" * 5000 + b"]}")
    assert isinstance(bad, BadRequest) and bad.code == "bad_request" and "4300" in bad.message


@pytest.mark.parametrize("where", ['"id": "\\ud800", "sql": "SELECT 1"', '"sql": "SELECT \\udfff"',
                                   '"sql": "SELECT ?", "params": ["a\\udbff"]', '"sql": "SELECT :a", "params": {"a": "\\ud800"}'])
def test_a_lone_surrogate_is_a_bad_request(where):
    bad = parse_request(b"{" + where.encode() + b"}")
    assert isinstance(bad, BadRequest) and bad.code == "bad_request" and "surrogate" in bad.message
    protocol.encode_error(bad.id, bad.code, bad.message)  # the reply itself can be written


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.floats(), st.integers(), st.text(st.characters(codec=None), max_size=20),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
)
_json_values = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
_sql_text = st.text(st.characters(codec=None), min_size=1, max_size=20) | st.text(
    st.characters(categories=["Cs"]), min_size=1, max_size=2
)
_requests = st.fixed_dictionaries(
    {},
    optional={
        "id": _json_values, "sql": _sql_text | _json_values, "params": _json_values, "max_rows": _json_values,
        "x": _json_values,
    },
)


@given(_requests, st.booleans(), st.sampled_from([1, 4300, 4301, 20_000]))
def test_no_json_request_line_breaks_the_server_core(obj, big_int, digits):
    """Whatever a JSON line holds, the core answers with a Request or a precise BadRequest."""
    line = json.dumps(obj, ensure_ascii=True)
    if big_int:  # an integer literal perhaps longer than Python's int/str limit
        obj.pop("params", None)
        line = json.dumps(obj, ensure_ascii=True)[:-1] + ("," if obj else "") + '"params": [' + "9" * digits + "]}"
    proto = ServerProtocol(max_request_bytes=1 << 16)
    proto.receive_data(line.encode() + b"\n")
    proto.receive_data(b"")
    events = []
    while (event := proto.next_event()) is not EOF:
        events.append(event)
    assert len(events) == 1
    (event,) = events
    if isinstance(event, BadRequest):
        assert event.code in protocol.ERROR_CODES
        protocol.encode_error(event.id, event.code, event.message).decode("utf-8")
    else:
        assert isinstance(event, Request)
        event.sql.encode("utf-8")  # SQLite can take it
        values = event.params.values() if isinstance(event.params, dict) else (event.params or ())
        for value in values:
            if isinstance(value, str):
                value.encode("utf-8")
        protocol.encode_error(event.id, "sql_error", "x")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=_requests, big_int=st.booleans())
def test_every_parsed_request_gets_a_precise_answer_from_a_session(quake_db, obj, big_int):
    """Parsed requests, run as the server runs them: an answer or a stable error code, never 'internal'."""
    if big_int:
        obj["params"] = [2**70]
    obj.setdefault("sql", "SELECT ?, :a, typeof(?)")
    event = parse_request(json.dumps(obj).encode())
    if not isinstance(event, Request):
        return
    session = Database(quake_db).open_session()
    try:
        session.execute(event.sql, event.params, 10)
    except SqlError as exc:
        assert exc.code in protocol.ERROR_CODES and exc.code != "internal", exc
    finally:
        session.close()


# --- the fast paths against the general ones -----------------------------------

# The request parser's rules without its fast paths: the oracle the fast one
# is held to. The parser of main at 67ce1b5 with only json.loads and
# isinstance checks (no scanner call, no type tests, no direct slot writes).


def reference_parse_request(line: bytes):
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRequest(None, "bad_request", f"request is not valid UTF-8 (byte {exc.start})")
    stripped = text.strip()
    if not stripped:
        return None
    if not stripped.startswith("{"):
        return Request(id=None, sql=stripped, bare=True)
    try:
        obj = json.loads(stripped)
    except RecursionError:
        return BadRequest(None, "bad_request", "invalid JSON: nested too deeply")
    except ValueError as exc:
        return BadRequest(None, "bad_request", f"invalid JSON: {str(exc)[:200]}")
    if not isinstance(obj, dict):
        return BadRequest(None, "bad_request", "a JSON request must be an object")
    if "\\u" in stripped and _has_lone_surrogate(obj):
        return BadRequest(None, "bad_request", "a string holds a lone surrogate (\\ud800-\\udfff): not Unicode text")
    req_id = obj.get("id")
    if not (req_id is None or isinstance(req_id, (str, int)) and not isinstance(req_id, bool)):
        return BadRequest(None, "bad_request", "'id' must be a string, an integer or null")
    if not _REQUEST_FIELDS.issuperset(obj):
        if obj.get("type") == "auth":
            return _parse_auth(obj)
        unknown = sorted(set(obj) - _REQUEST_FIELDS)
        return BadRequest(req_id, "bad_request", f"unknown field(s): {', '.join(unknown)}")
    sql = obj.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        return BadRequest(req_id, "bad_request", "'sql' must be a non-empty string")
    max_rows = obj.get("max_rows")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
        return BadRequest(req_id, "bad_request", "'max_rows' must be a non-negative integer")
    raw_params = obj.get("params")
    try:
        if raw_params is None:
            params = None
        elif isinstance(raw_params, list):
            params = tuple(decode_value(v) for v in raw_params)
        elif isinstance(raw_params, dict):
            params = {}
            for key, value in raw_params.items():
                params[key.lstrip(":@$")] = decode_value(value)
        else:
            return BadRequest(req_id, "bad_request", "'params' must be an array or an object")
    except ValueError as exc:
        return BadRequest(req_id, "bad_param", str(exc))
    return Request(id=req_id, sql=sql, params=params, max_rows=max_rows)


_request_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
    st.sampled_from(["", " ", "\t\n", "\u3000", "\x1c", "SELECT 1", " SELECT 2 "]),
)  # fmt: skip
_json_params = st.one_of(
    _request_scalars,
    st.lists(
        _request_scalars | st.sampled_from([{"$blob": "AAE="}, {"$blob": "!"}, {"$real": "NaN"}, [1], {}]), max_size=4
    ),
    st.dictionaries(
        st.sampled_from([":a", "@b", "$c", "d", ""]), _request_scalars | st.just({"$blob": "AA=="}), max_size=3
    ),
)
_request_objects = st.dictionaries(
    st.sampled_from(["id", "sql", "params", "max_rows", "type", "data", "x"]), _json_params, max_size=5
) | st.fixed_dictionaries(  # mostly good requests, the fast path's whole way
    {"sql": st.text(min_size=1, max_size=8)},
    optional={
        "id": _request_scalars, "params": _json_params, "max_rows": st.none() | st.integers(-2, 5) | st.booleans(),
    },
)


def _same_event(got, want) -> bool:
    # == on the params too: nan != nan, so compare their JSON-ish reprs.
    return type(got) is type(want) and repr(got) == repr(want)


@given(_request_objects | _requests, st.sampled_from([b"", b" ", b"\t", b"\r"]))
def test_fast_request_parse_gives_the_reference_parsers_events(obj, pad):
    """parse_request's type tests and direct slot writes give what the isinstance-based parser gave."""
    line = pad + json.dumps(obj).encode() + pad
    got, want = parse_request(line), reference_parse_request(line)
    assert _same_event(got, want), (line, got, want)


@given(st.binary(max_size=80) | st.text(max_size=40).map(str.encode))
def test_fast_request_parse_matches_the_reference_on_any_bytes(line):
    assert _same_event(parse_request(line), reference_parse_request(line))


def test_a_parsed_request_is_the_frozen_dataclass_it_always_was():
    import dataclasses

    req = parse_request(b'{"id": 3, "sql": "SELECT ?", "params": [1], "max_rows": 2}')
    assert type(req) is Request and req == Request(3, "SELECT ?", (1,), 2)
    assert hash(req) == hash(Request(3, "SELECT ?", (1,), 2)) and req.bare is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.sql = "DROP TABLE t"


@given(
    _ids,
    st.lists(st.text(max_size=6), max_size=4),
    st.lists(st.tuples(sqlite_values | st.floats(), sqlite_values), max_size=4),
)
def test_encode_result_is_the_columns_then_the_rows_frame(req_id, columns, rows):
    expected = protocol.encode_columns(req_id, columns) + (protocol.encode_rows(req_id, rows) if rows else b"")
    assert protocol.encode_result(req_id, columns, rows) == expected


def test_the_columns_frame_follows_the_names_not_the_list_it_came_in():
    names = ["a", "b"]
    assert protocol.encode_columns(1, names) == b'{"id":1,"type":"columns","columns":["a","b"]}\n'
    names.append("c")  # the same list, changed: the remembered shape must not answer for it
    assert protocol.encode_columns(1, names) == b'{"id":1,"type":"columns","columns":["a","b","c"]}\n'
    assert protocol.encode_columns(1, ["a", "b"]) == b'{"id":1,"type":"columns","columns":["a","b"]}\n'
    assert protocol.encode_columns(1, []) == b'{"id":1,"type":"columns","columns":[]}\n'


@given(st.floats(0, 1e13) | st.floats() | st.sampled_from([0.0, -0.0, 5e-4, 0.0015, 2.5e-4, 1e12, 999999999999.9995]))
def test_the_done_frames_ms_is_reprs_text_of_the_rounded_value(ms):
    assert protocol._json_ms(ms) == repr(round(ms, 3))
