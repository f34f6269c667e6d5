"""Every record type: cached and served on the DNS port and the line protocol; ANY per RFC 8482."""

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trionet.names as names
from trionet.names import protocol
from trionet.names.answer import Answer, InvalidType, parse_type

ZONE = {
    ("mx.test", "MX"): ["10 mail.test.", "20 mail2.test."],
    ("txt.test", "TXT"): ['"v=spf1 -all"', '"two words" "and | a bar"'],
    ("_sip._tcp.test", "SRV"): ["10 60 5060 sip.test."],
    ("test", "NS"): ["ns1.test.", "ns2.test."],
    ("test", "SOA"): ["ns.test. admin.test. 7 3600 600 86400 60"],
    ("caa.test", "CAA"): ['0 issue "letsencrypt.org"'],
    ("svc.test", "HTTPS"): ['1 . alpn="h2,h3"'],
    ("9.2.0.192.in-addr.arpa", "PTR"): ["nine.test."],
    ("private.test", "TYPE65280"): ["\\# 4 0a000001"],
}


def _zone(upstream) -> None:
    for (name, rdtype), rdatas in ZONE.items():
        upstream.add(name, rdtype, *rdatas, ttl=300)
    upstream.cnames["mail-alias.test"] = (100, "mx.test")


def _rdatas(rdtype: str, texts) -> set:
    return {dns.rdata.from_text(dns.rdataclass.IN, rdtype, text) for text in texts}


# --- sans-IO: type names and the line protocol's records --------------------------


def test_type_names_as_dnspython_spells_them():
    assert parse_type("mx") == "MX" and parse_type("TYPE15") == "MX" and parse_type("https") == "HTTPS"
    assert parse_type("TYPE65280") == "TYPE65280" and parse_type("any") == "ANY"
    for bad in ("AXFR", "IXFR", "OPT", "TSIG", "TYPE0", "NOPE", "TYPE70000"):
        with pytest.raises(InvalidType):
            parse_type(bad)


def test_address_answers_keep_their_old_lines():
    a = Answer("www.test", "A", "ok", ("192.0.2.1", "192.0.2.2"), 42, "cache")
    assert protocol.encode_answer(a) == b"ok www.test A 42 cache 192.0.2.1 192.0.2.2\n"
    ns = Answer("test", "NS", "ok", ("ns1.test.", "ns2.test."), 5, "dns")
    assert protocol.encode_answer(ns) == b"ok test NS 5 dns ns1.test. ns2.test.\n"
    mx = Answer("mx.test", "MX", "ok", ("10 mail.test.", "20 mail2.test."), 5, "dns")
    assert protocol.encode_answer(mx) == b"ok mx.test MX 5 dns 10 mail.test. | 20 mail2.test.\n"
    txt = Answer("t.test", "TXT", "ok", ('"a | b"',), 5, "dns")
    assert protocol.encode_answer(txt) == b'ok t.test TXT 5 dns "a \\124 b"\n'


_names = st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4).map(
    lambda labels: ".".join(labels) + "."
)
_strings = st.binary(max_size=40)


def _quoted(data: bytes) -> str:
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in data) + '"'


_rdata_texts = st.one_of(
    st.tuples(st.just("MX"), st.builds(lambda p, n: f"{p} {n}", st.integers(0, 65535), _names)),
    st.tuples(st.just("TXT"), st.lists(_strings, min_size=1, max_size=3).map(lambda ss: " ".join(map(_quoted, ss)))),
    st.tuples(
        st.just("SRV"),
        st.builds(lambda a, b, c, n: f"{a} {b} {c} {n}", st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535), _names),
    ),
    st.tuples(st.just("CAA"), st.builds(lambda f, v: f"{f} issue {_quoted(v)}", st.integers(0, 255), _strings)),
    st.tuples(st.just("TYPE65280"), st.binary(min_size=1, max_size=30).map(lambda b: f"\\# {len(b)} {b.hex()}")),
    st.tuples(st.just("PTR"), _names),
    st.tuples(st.just("A"), st.ip_addresses(v=4).map(str)),
)


@given(st.lists(_rdata_texts, min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_records_survive_the_line_protocol(items, ttl):
    """Any records of one type go out on one line and come back as the same rdata."""
    rdtype = items[0][0]
    rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, text) for kind, text in items if kind == rdtype]
    records = tuple(rdata.to_text() for rdata in rdatas)
    line = protocol.encode_answer(Answer("x.test", rdtype, "ok", records, ttl, "dns"))
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    reply = protocol.parse_reply(line[:-1])
    assert (reply.status, reply.rdtype, reply.ttl) == ("ok", rdtype, ttl)
    assert reply.records == records  # as the server had them
    assert [dns.rdata.from_text(dns.rdataclass.IN, rdtype, text) for text in reply.records] == rdatas
    shown = line.decode().split(" ", 5)[5].rstrip("\n")  # what nc shows: valid presentation text too
    if rdtype not in ("A", "PTR"):
        shown_records = shown.split(" | ")
        assert [dns.rdata.from_text(dns.rdataclass.IN, rdtype, text) for text in shown_records] == rdatas


@given(st.text(max_size=30))
def test_any_type_word_is_a_query_or_a_bad_request(word):
    parsed = protocol.parse_line(f"x.test {word}".encode())
    if isinstance(parsed, protocol.Query):
        value = dns.rdatatype.from_text(parsed.rdtype)  # a type dnspython can ask for
        assert parsed.rdtype == dns.rdatatype.to_text(value)
    else:
        assert parsed is None or isinstance(parsed, protocol.BadLine) or isinstance(parsed, protocol.Quit)


# --- against a server, with the fake upstream ---------------------------------------


@pytest.mark.parametrize("ask", [dns.asyncquery.udp, dns.asyncquery.tcp], ids=["udp", "tcp"])
async def test_every_type_is_fetched_once_then_served_from_the_cache(start_names, upstream, ask):
    _zone(upstream)
    server, addrs = await start_names(quota=0)
    for (name, rdtype), texts in ZONE.items():
        for round_ in range(2):
            query = dns.message.make_query(name, rdtype, use_edns=0)
            response = await ask(query, addrs.dns[0], port=addrs.dns[1], timeout=5)
            assert response.rcode() == dns.rcode.NOERROR, (name, rdtype)
            rrset = response.find_rrset(response.answer, query.question[0].name, dns.rdataclass.IN, query.question[0].rdtype)
            assert set(rrset) == _rdatas(rdtype, texts), (name, rdtype)
            assert (rrset.ttl == 300) if round_ == 0 else (rrset.ttl <= 300)
        assert upstream.counts[(name, rdtype)] == 1, (name, rdtype)
    # A CNAME chain that ends in MX records.
    chained = await ask(dns.message.make_query("mail-alias.test", "MX"), addrs.dns[0], port=addrs.dns[1], timeout=5)
    assert [rrset.rdtype for rrset in chained.answer] == [dns.rdatatype.CNAME, dns.rdatatype.MX]
    assert set(chained.answer[1]) == _rdatas("MX", ZONE[("mx.test", "MX")])
    # NODATA for a type the name lacks: cached with the SOA (RFC 2308).
    for _ in range(2):
        nodata = await ask(dns.message.make_query("mx.test", "CAA"), addrs.dns[0], port=addrs.dns[1], timeout=5)
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    assert upstream.counts[("mx.test", "CAA")] == 1


async def test_the_line_protocol_shows_every_type(start_names, upstream):
    _zone(upstream)
    _server, addrs = await start_names(quota=0)
    async with names.connect(*addrs.line) as conn:
        for (name, rdtype), texts in ZONE.items():
            answer = await conn.resolve(name, rdtype)
            assert answer.status == "ok" and answer.rdtype == rdtype, answer
            assert _rdatas(rdtype, answer.records) == _rdatas(rdtype, texts)
        any_ = await conn.resolve("mx.test", "ANY")
        assert (any_.status, any_.rdtype, any_.source, any_.records) == ("ok", "ANY", "rfc8482", ('"RFC8482" ""',))
        ptr = await conn.resolve("192.0.2.9")
        assert ptr.records == ("nine.test.",)
    assert upstream.counts[("mx.test", "ANY")] == 0


@pytest.mark.parametrize("ask", [dns.asyncquery.udp, dns.asyncquery.tcp], ids=["udp", "tcp"])
async def test_any_gets_one_synthesized_hinfo_record(start_names, upstream, ask):
    """RFC 8482 4.2: no upstream query, one small HINFO answer, hosts names included."""
    _server, addrs = await start_names(quota=0)
    for name in ("www.test", "gw", "nope.test"):
        response = await ask(dns.message.make_query(name, "ANY"), addrs.dns[0], port=addrs.dns[1], timeout=5)
        assert response.rcode() == dns.rcode.NOERROR
        (rrset,) = response.answer
        assert rrset.rdtype == dns.rdatatype.HINFO and rrset.ttl == 3600
        assert (rrset[0].cpu, rrset[0].os) == (b"RFC8482", b"")
        assert upstream.counts[(name, "ANY")] == 0


async def _dig(*args: str) -> str:
    with trio.fail_after(20):
        result = await trio.run_process(["dig", "+short", "+tries=1", *args], capture_stdout=True, capture_stderr=True)
    return result.stdout.decode()


@pytest.mark.requires_tool("dig", "dnsutils")
async def test_dig_asks_for_several_types(start_names, upstream):
    _zone(upstream)
    _server, addrs = await start_names(quota=0)
    where = ["-p", str(addrs.dns[1]), f"@{addrs.dns[0]}"]
    assert sorted((await _dig(*where, "mx.test", "MX")).split("\n")) == ["", "10 mail.test.", "20 mail2.test."]
    assert (await _dig(*where, "+tcp", "_sip._tcp.test", "SRV")).strip() == "10 60 5060 sip.test."
    assert '"two words" "and | a bar"' in await _dig(*where, "txt.test", "TXT")
    assert (await _dig(*where, "caa.test", "CAA")).strip() == '0 issue "letsencrypt.org"'
    assert (await _dig(*where, "+tcp", "svc.test", "HTTPS")).strip() == '1 . alpn="h2,h3"'
    assert (await _dig(*where, "private.test", "TYPE65280")).strip() == "\\# 4 0A000001"
    assert (await _dig(*where, "-x", "192.0.2.9")).strip() == "nine.test."
    assert (await _dig(*where, "www.test", "ANY")).strip() == '"RFC8482" ""'


async def test_names_query_takes_any_type_name(start_names, upstream):
    import json
    import sys

    _zone(upstream)
    _server, addrs = await start_names(quota=0)
    base = [sys.executable, "-m", "trionet", "names", "query", "--port", str(addrs.line[1])]
    with trio.fail_after(30):
        result = await trio.run_process([*base, "--type", "mx", "mx.test"], capture_stdout=True, capture_stderr=True)
        line = result.stdout.decode()
        data, _, rest = line.partition("  (")
        assert rest.startswith("ttl 300s, source dns")
        assert data.startswith("mx.test MX ") and set(data[len("mx.test MX ") :].split(" | ")) == set(ZONE[("mx.test", "MX")])
        result = await trio.run_process(
            [*base, "--format", "json", "--type", "TYPE16", "txt.test"], capture_stdout=True, capture_stderr=True
        )
        answer = json.loads(result.stdout)
        assert answer["type"] == "TXT" and sorted(answer["records"]) == sorted(ZONE[("txt.test", "TXT")])  # "|" back
        bad = await trio.run_process([*base, "--type", "AXFR", "mx.test"], capture_stderr=True, check=False)
        assert bad.returncode == 2 and b"AXFR is not a type a resolver answers" in bad.stderr
