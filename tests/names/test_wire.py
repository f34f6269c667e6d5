"""The sans-IO protocol cores: the line protocol and DNS message handling, with hypothesis."""

import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.framing import EOF, NEED_DATA
from trionet.names import dnswire, protocol
from trionet.names.answer import Answer

# --- the line protocol -----------------------------------------------------------


def test_request_lines():
    assert protocol.parse_line(b"WWW.Example.COM.") == protocol.Query("www.example.com", "A", "www.example.com")
    assert protocol.parse_line(b"  www.example.com\taaaa ") == protocol.Query(
        "www.example.com", "AAAA", "www.example.com"
    )
    assert protocol.parse_line(b"10.0.0.1") == protocol.Query("10.0.0.1", "PTR", "1.0.0.10.in-addr.arpa")
    assert protocol.parse_line(b"fd00::1 ptr").qname.endswith(".ip6.arpa")
    assert protocol.parse_line(b"QUIT") == protocol.Quit()
    assert protocol.parse_line(b"   ") is None
    for bad in (b"a b c", b"www.example.com AXFR", b"www.example.com NOPE", b"x TYPE0", b"10.0.0.1 A", b"bad..name", b"\xff\xfe", b"x" * 64 + b".com"):
        assert isinstance(protocol.parse_line(bad), protocol.BadLine), bad


def test_reply_lines_round_trip():
    answer = Answer("www.test", "A", "ok", ("192.0.2.1", "192.0.2.2"), 42, "cache")
    line = protocol.encode_answer(answer)
    assert line == b"ok www.test A 42 cache 192.0.2.1 192.0.2.2\n"
    assert protocol.parse_reply(line[:-1]) == protocol.Reply("ok", "www.test", "A", 42, "cache", ("192.0.2.1", "192.0.2.2"))
    nx = protocol.parse_reply(protocol.encode_answer(Answer("x.test", "A", "nxdomain", ttl=60))[:-1])
    assert (nx.status, nx.ttl, nx.message) == ("nxdomain", 60, "no such name")
    assert protocol.parse_reply(protocol.encode_bad_request("what?")[:-1]).status == "bad-request"
    assert protocol.encode_wait(1, 1) == b"wait 1 the only slot is busy; you are next\n"
    assert protocol.encode_wait(3, 2) == b"wait 3 all 2 slots are busy; 2 client(s) ahead of you\n"
    assert protocol.parse_reply(b"wait 3 all 2 slots are busy; 2 client(s) ahead of you") == protocol.Wait(
        3, "all 2 slots are busy; 2 client(s) ahead of you"
    )
    assert protocol.parse_reply(protocol.encode_bye("quota-reached", "done")[:-1]) == protocol.Bye(
        "quota-reached", "done"
    )
    welcome = protocol.parse_reply(protocol.encode_welcome(quota=4, idle_timeout=30, waited=1.5)[:-1])
    assert welcome == protocol.Welcome(4, 30.0, 1.5)


def test_oversized_line_is_reported_once_and_skipped():
    proto = protocol.ServerLineProtocol(max_line=100)
    proto.receive_data(b"x" * 5000)
    proto.receive_data(b"y" * 5000 + b"\nwww.test\n")
    assert isinstance(proto.next_event(), protocol.BadLine)
    assert proto.next_event() == protocol.Query("www.test", "A", "www.test")
    assert proto.next_event() is NEED_DATA
    proto.receive_data(b"")
    assert proto.next_event() is EOF


@given(st.lists(st.binary(min_size=1, max_size=200), max_size=10))
@settings(max_examples=200, deadline=None)
def test_any_bytes_give_requests_or_bad_lines(chunks):
    proto = protocol.ServerLineProtocol(max_line=64)
    for chunk in chunks:
        proto.receive_data(chunk)
    # Whatever came before, the decoder reads the next line normally.
    proto.receive_data(b"\nwww.test\n")
    proto.receive_data(b"")
    events = []
    for _ in range(10_000):
        event = proto.next_event()
        if event is EOF:
            break
        assert isinstance(event, (protocol.Query, protocol.Quit, protocol.BadLine))
        events.append(event)
    else:
        raise AssertionError("no EOF")
    assert events[-1] == protocol.Query("www.test", "A", "www.test")


_word = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="="), min_size=1, max_size=12)
_sentence = st.lists(_word, min_size=1, max_size=5).map(" ".join)
_replies = st.one_of(
    st.builds(
        protocol.Reply,
        st.just("ok"), _word, st.sampled_from(["A", "AAAA", "PTR"]), st.integers(0, 2**31), st.sampled_from(["hosts", "cache", "dns"]),
        st.lists(_word, min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        protocol.Reply,
        st.sampled_from(["nxdomain", "nodata", "servfail", "bad-request"]), _word, _word, st.integers(0, 2**31), _word,
        st.just(()), _sentence,
    ),
    st.builds(protocol.Welcome, st.integers(0, 10**6), st.integers(0, 10**4).map(float), st.integers(0, 10**6).map(lambda ms: ms / 1000), st.integers(0, 10**4).map(float)),
    st.builds(protocol.Wait, st.integers(1, 10**6), _sentence),
    st.builds(protocol.Bye, st.sampled_from(protocol.BYE_REASONS), _sentence),
)


def _encode(reply) -> bytes:
    """A reply line written out by hand, to check the parser against (not the server's encoders)."""
    if isinstance(reply, protocol.Reply):
        data = reply.records if reply.status == "ok" else (reply.message,)
        words = [reply.status, reply.name, reply.rdtype, str(reply.ttl), reply.source, *data]
    elif isinstance(reply, protocol.Welcome):
        words = ["welcome", f"quota={reply.quota}", f"idle-timeout={reply.idle_timeout:g}",
                 f"session-timeout={reply.session_timeout:g}", f"waited={reply.waited:.3f}"]
    elif isinstance(reply, protocol.Wait):
        words = ["wait", str(reply.place), reply.message]
    else:
        words = ["bye", reply.reason, reply.message]
    return " ".join(words).encode()


@given(st.lists(_replies, min_size=1, max_size=5), st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_replies_round_trip_through_the_client_decoder_in_any_chunks(replies, chunk):
    wire = b"".join(_encode(reply) + b"\r\n" for reply in replies)
    proto = protocol.ClientLineProtocol()
    got = []
    for i in range(0, len(wire), chunk):
        proto.receive_data(wire[i : i + chunk])
        while (event := proto.next_event()) is not NEED_DATA:
            got.append(event)
    proto.receive_data(b"")
    assert proto.next_event() is EOF
    assert got == replies


@given(st.binary(max_size=300).filter(lambda line: b"\n" not in line))
@settings(max_examples=400, deadline=None)
def test_a_line_that_is_not_a_reply_raises_only_its_error_and_the_decoder_goes_on(line):
    try:
        parsed = protocol.parse_reply(line)
    except protocol.RemoteProtocolError as exc:
        parsed = exc
    else:
        assert isinstance(parsed, (protocol.Reply, protocol.Welcome, protocol.Wait, protocol.Bye))
        assert line.split(b" ", 1)[0].decode() in ("ok", "nxdomain", "nodata", "servfail", "bad-request", "welcome", "wait", "bye")
    proto = protocol.ClientLineProtocol()
    proto.receive_data(line + b"\nbye quit goodbye\n")
    if line.rstrip(b"\r").strip():  # (a blank line is skipped)
        try:
            first = proto.next_event()
        except protocol.RemoteProtocolError as exc:
            assert isinstance(parsed, protocol.RemoteProtocolError), exc
        else:
            assert first == parsed
    assert proto.next_event() == protocol.Bye("quit", "goodbye")
    assert proto.next_event() is NEED_DATA


# --- DNS messages ----------------------------------------------------------------


def _query(name="www.test", rdtype="A", **kw) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def test_plain_and_edns_queries_parse_the_same_on_both_paths():
    for kw in ({}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}):
        wire = _query("WWW.Test.", "AAAA", **kw)
        fast = dnswire.parse_query(wire)
        slow = dnswire._parse_slow(wire)
        assert fast == slow
        assert (fast.qname, fast.rdtype, fast.rd, fast.edns) == ("www.test", "AAAA", True, bool(kw))


def test_response_carries_chain_records_and_flags():
    wire = _query("alias.test", "A", use_edns=0)
    query = dnswire.parse_query(wire)
    answer = Answer("alias.test", "A", "ok", ("192.0.2.10",), 77, "cache", "target.test", (("alias.test", "target.test"),))
    response = dns.message.from_wire(dnswire.build_response(query, answer))
    assert response.id == dns.message.from_wire(wire).id
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.flags & dns.flags.AA
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype), r.ttl) for r in response.answer] == [
        ("alias.test.", "CNAME", 77),
        ("target.test.", "A", 77),
    ]
    assert response.edns == 0
    hosts = Answer("gw.lan", "A", "ok", ("10.0.0.1",), 0, "hosts")
    assert dns.message.from_wire(dnswire.build_response(dnswire.parse_query(_query("gw.lan")), hosts)).flags & dns.flags.AA


def test_negative_response_has_the_soa():
    query = dnswire.parse_query(_query("nope.test"))
    answer = Answer("nope.test", "A", "nxdomain", (), 42, "dns", soa=("test", "ns.test. admin.test. 1 2 3 4 60"))
    response = dns.message.from_wire(dnswire.build_response(query, answer))
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA and response.authority[0].ttl == 42
    fail = dns.message.from_wire(dnswire.build_response(query, Answer("nope.test", "A", "servfail")))
    assert fail.rcode() == dns.rcode.SERVFAIL and fail.id == response.id


def test_errors():
    def rcode(wire: bytes) -> int:
        result = dnswire.parse_query(wire)
        assert isinstance(result, bytes)
        return dns.message.from_wire(result).rcode() if len(result) >= 12 else -1

    assert rcode(b"\x12\x34garbage!") == dns.rcode.FORMERR
    assert dnswire.parse_query(b"\x12")[:2] == b"\x00\x00"
    assert dnswire.parse_query(b"\x12\x34")[:2] == b"\x12\x34"
    notify = dns.message.make_query("www.test", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert rcode(notify.to_wire()) == dns.rcode.NOTIMP
    assert rcode(_query("www.test", "AXFR")) == dns.rcode.NOTIMP
    assert rcode(_query("www.test", "IXFR")) == dns.rcode.NOTIMP
    assert isinstance(dnswire.parse_query(_query("www.test", "ANY")), dnswire.DnsQuery)  # RFC 8482: answered
    assert rcode(_query("www.test", "A") + b"\x00") == dns.rcode.FORMERR  # trailing byte
    response = dns.message.make_response(dns.message.make_query("www.test", "A"))
    assert rcode(response.to_wire()) == dns.rcode.FORMERR
    two = bytearray(_query())
    two[4:6] = struct.pack("!H", 2)
    assert rcode(bytes(two)) == dns.rcode.FORMERR
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert rcode(chaos.to_wire()) == dns.rcode.REFUSED


def test_edns_errors_carry_our_opt_record():
    """RFC 6891: BADVERS for an unknown version, an OPT in every answer to an EDNS query, FORMERR for two OPTs."""
    future = dns.message.make_query("www.test", "A", use_edns=1)
    badvers = dns.message.from_wire(dnswire.parse_query(future.to_wire()))
    assert (badvers.id, badvers.rcode(), badvers.edns) == (future.id, dns.rcode.BADVERS, 0)
    assert badvers.question == future.question
    for query, expected in (
        (dns.message.make_query("www.test", "AXFR", use_edns=0), dns.rcode.NOTIMP),
        (dns.message.make_query("version.bind", "TXT", rdclass="CH", use_edns=0), dns.rcode.REFUSED),
    ):
        response = dns.message.from_wire(dnswire.parse_query(query.to_wire()))
        assert (response.rcode(), response.edns, response.payload) == (expected, 0, dnswire.EDNS_PAYLOAD)
    plain = dns.message.from_wire(dnswire.parse_query(_query("www.test", "AXFR")))
    assert plain.rcode() == dns.rcode.NOTIMP and plain.edns == -1  # no OPT to a query without one
    query = _query("www.test", "A", use_edns=0)
    two_opts = bytearray(query + query[-11:])
    two_opts[10:12] = struct.pack("!H", 2)
    assert dns.message.from_wire(dnswire.parse_query(bytes(two_opts))).rcode() == dns.rcode.FORMERR
    # An extra additional record sends the query down dnspython's path: its OPT is answered there too.
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH", use_edns=0)
    chaos.additional.append(dns.rrset.from_text("extra.test.", 0, "IN", "TXT", "x"))
    slow = dns.message.from_wire(dnswire.parse_query(chaos.to_wire()))
    assert slow.rcode() == dns.rcode.REFUSED and slow.edns == 0


@given(st.binary(max_size=120))
@settings(max_examples=400, deadline=None)
def test_any_bytes_give_a_query_or_an_error_response(wire):
    result = dnswire.parse_query(wire)
    if isinstance(result, bytes):
        assert len(result) >= 12
        assert result[:2] == (wire[:2] if len(wire) >= 2 else b"\x00\x00")
        assert result[2] & 0x80  # QR
        rcode = dns.message.from_wire(result).rcode()  # every error response is itself well formed
        assert rcode in (dnswire.FORMERR, dnswire.NOTIMP, dnswire.REFUSED, dnswire.BADVERS)
    else:
        assert isinstance(result, dnswire.DnsQuery)
        dnswire.build_response(result, Answer(result.qname, result.rdtype, "nxdomain"))


_labels = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=20),
        # the fast path's own alphabet, and a dot inside a label, which it must leave to dnspython
        st.text(alphabet="aZ9-_.", min_size=1, max_size=20).map(str.encode),
    ),
    min_size=0,
    max_size=4,
)


@given(_labels, st.sampled_from(["A", "AAAA", "PTR", "MX", "TXT"]), st.booleans(), st.integers(0, 65535))
@settings(max_examples=200, deadline=None)
def test_fast_path_agrees_with_dnspython(labels, rdtype, edns, msg_id):
    name = dns.name.Name([*labels, b""])
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    query.id = msg_id
    wire = query.to_wire()
    fast = dnswire.parse_query(wire)
    assert fast == dnswire._parse_slow(wire)
    answer = Answer(fast.qname, rdtype, "nodata", ttl=5)
    response = dns.message.from_wire(dnswire.build_response(fast, answer))
    assert response.id == msg_id and response.question[0].name == name


# Request-shaped lines: names, addresses (scoped, mapped, malformed), types and
# separators, glued together the way a confused or hostile client might.
_words = st.one_of(
    st.sampled_from(
        ["gw", ".", "*", "-", "a/b", "quit", "exit", "ptr", "A", "aaaa", "ns", "CNAME", "MX", "any",
         "10.0.0.1", "1.2.3", "0x7f.1", "::1", "fe80::1%eth0", "fe80::1%", "::ffff:1.2.3.4", "1.2.3.4%x",
         "[::1]", "2001:db8::1/64", "a..b", "x" * 64, "é.test", "\x00", "ｇｗ"]
    ),
    st.from_regex(r"\A[0-9a-fA-F:.%a-z]{1,40}\Z"),
    st.text(max_size=30),
)
_separators = st.sampled_from([" ", "\t", "  ", "\x0b", "\u00a0", "\u2028", "\x1c", "\r"])


@given(st.lists(st.tuples(_words, _separators), min_size=1, max_size=4))
@settings(max_examples=500, deadline=None)
def test_every_request_line_gets_one_precise_reply(parts):
    from trionet.names.hosts import parse_hosts

    line = "".join(word + sep for word, sep in parts).encode("utf-8", "surrogatepass")
    parsed = protocol.parse_line(line)  # must not raise
    table = parse_hosts("10.0.0.1 gw\nfe80::1 link\n")[0]
    if parsed is None or isinstance(parsed, protocol.Quit):
        return
    if isinstance(parsed, protocol.BadLine):
        reply = protocol.encode_bad_request(parsed.message)
    else:
        # Whatever the parser lets through can be looked up and asked upstream.
        dns.message.make_query(parsed.qname, parsed.rdtype)
        answer = table.lookup(parsed.qname, parsed.rdtype) or Answer(parsed.qname, parsed.rdtype, "nxdomain")
        reply = protocol.encode_answer(answer, parsed.name)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    assert isinstance(protocol.parse_reply(reply[:-1]), protocol.Reply)


def test_a_scoped_ipv6_address_is_a_bad_request():
    bad = protocol.parse_line(b"fe80::1%eth0")
    assert isinstance(bad, protocol.BadLine) and "scope" in bad.message
    assert isinstance(protocol.parse_line(b"fe80::1%eth0 PTR"), protocol.BadLine)


def test_a_turned_away_client_gets_refused_or_its_own_error():
    query = dns.message.make_query("gw", "A")
    refused = dns.message.from_wire(dnswire.build_refused(query.to_wire()))
    assert (refused.id, refused.rcode(), refused.question[0].name.to_text()) == (query.id, dns.rcode.REFUSED, "gw.")
    notify = dns.message.make_query("gw", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(dnswire.build_refused(notify.to_wire())).rcode() == dns.rcode.NOTIMP
    assert dnswire.build_refused(b"\x12\x34junk")[:2] == b"\x12\x34"


# --- truncation for UDP (RFC 1035 4.2.1, RFC 6891 6.2.5) ------------------------------


def test_udp_limit_follows_rfc_6891():
    query = dnswire.parse_query(dns.message.make_query("a.test", "A").to_wire())
    assert dnswire.udp_limit(query, 1232) == 512
    edns = dnswire.parse_query(dns.message.make_query("a.test", "A", use_edns=0, payload=4096).to_wire())
    assert (edns.udp_size, dnswire.udp_limit(edns, 1232), dnswire.udp_limit(edns, 9000)) == (4096, 1232, 4096)
    tiny = dnswire.parse_query(dns.message.make_query("a.test", "A", use_edns=0, payload=100).to_wire())
    assert dnswire.udp_limit(tiny, 1232) == 512


@given(
    st.integers(0, 200),
    st.booleans(),
    st.integers(0, 65535),
    st.integers(0, 5000),
    st.sampled_from(["ok", "nxdomain", "servfail"]),
)
def test_truncate_fits_the_limit_and_keeps_the_question(count, edns, payload, ceiling, status):
    made = dns.message.make_query("some.long-name.example.test", "A", use_edns=0 if edns else False, payload=payload)
    query = dnswire.parse_query(made.to_wire())
    assert query.edns == edns
    records = tuple(f"10.{i // 256}.{i % 256}.1" for i in range(count)) if status == "ok" else ()
    response = dnswire.build_response(query, Answer("some.long-name.example.test", "A", status, records, 60, "hosts"))
    limit = dnswire.udp_limit(query, ceiling)
    assert 512 <= limit <= max(512, min(ceiling, payload if edns else 512))
    wire = dnswire.truncate(query, response, limit)
    assert len(wire) <= limit
    message = dns.message.from_wire(wire)
    original = dns.message.from_wire(response)
    assert message.id == query.id and message.question == original.question
    assert message.rcode() == original.rcode() and message.edns == original.edns
    if len(response) <= limit:
        assert wire == response
    else:
        assert message.flags == original.flags | dns.flags.TC
        assert not message.answer and not message.authority
