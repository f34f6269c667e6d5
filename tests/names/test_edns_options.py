"""The EDNS options of connections, sans-IO: edns-tcp-keepalive (RFC 7828) and padding (RFC 7830, RFC 8467)."""

import dns.edns
import dns.message
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.names import dnswire
from trionet.names.answer import Answer

KEEPALIVE, PADDING, COOKIE = dns.edns.OptionType.KEEPALIVE, dns.edns.OptionType.PADDING, dns.edns.OptionType.COOKIE

_options = st.lists(
    st.one_of(
        st.just(dns.edns.GenericOption(KEEPALIVE, b"")),
        st.just(dns.edns.GenericOption(KEEPALIVE, b"\x00\x64")),
        st.binary(max_size=40).map(lambda data: dns.edns.GenericOption(PADDING, bytes(len(data)))),
        st.binary(min_size=8, max_size=8).map(lambda data: dns.edns.GenericOption(COOKIE, data)),
        st.binary(max_size=10).map(lambda data: dns.edns.GenericOption(65001, data)),
    ),
    max_size=4,
)


def _option(message: dns.message.Message, code) -> bytes | None:
    for option in message.options:
        if option.otype == code:
            return option.to_wire()
    return None


@given(_options)
@settings(max_examples=200, deadline=None)
def test_fast_path_reads_the_options_as_dnspython_does(options):
    wire = dns.message.make_query("gw.lan", "A", use_edns=0, options=options).to_wire()
    fast = dnswire.parse_query(wire)
    assert fast == dnswire._parse_slow(wire)
    codes = [option.otype for option in options]
    assert fast.padding == (PADDING in codes)
    keepalives = [len(o.to_wire()) for o in options if o.otype == KEEPALIVE]
    assert fast.keepalive == (keepalives[-1] if keepalives else -1)


def test_an_option_running_past_its_record_is_formerr():
    wire = bytearray(dns.message.make_query("gw", "A", use_edns=0, options=[dns.edns.GenericOption(12, b"")]).to_wire())
    wire[-1] = 9  # the padding option claims 9 bytes it does not have
    error = dns.message.from_wire(dnswire.parse_query(bytes(wire)))
    assert error.rcode() == dns.rcode.FORMERR


def test_keepalive_with_a_value_is_formerr_only_on_connections():
    query = dns.message.make_query("gw", "A", use_edns=0, options=[dns.edns.GenericOption(KEEPALIVE, b"\x00\x64")])
    wire = query.to_wire()
    assert isinstance(dnswire.parse_query(wire), dnswire.DnsQuery)  # UDP: ignored (RFC 7828 3.3.1)
    error = dns.message.from_wire(dnswire.parse_stream_query(wire))
    assert error.rcode() == dns.rcode.FORMERR and error.edns == 0 and error.id == query.id


def test_keepalive_units():
    assert dnswire.keepalive_units(30) == 300
    assert dnswire.keepalive_units(12.34) == 123  # rounded down: never promise more than is kept
    assert dnswire.keepalive_units(0) == 0xFFFF  # no idle timeout: the most the field can say
    assert dnswire.keepalive_units(1e9) == 0xFFFF


def _answer(count: int) -> Answer:
    records = tuple(f"10.0.{i // 256}.{i % 256}" for i in range(count))
    return Answer("gw.lan", "A", "ok" if records else "nodata", records, ttl=60, source="hosts")


@given(st.integers(0, 300), st.booleans(), st.booleans(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_padding_and_keepalive_as_asked(records, keepalive, padding, tls):
    options = []
    if keepalive:
        options.append(dns.edns.GenericOption(KEEPALIVE, b""))
    if padding:
        options.append(dns.edns.GenericOption(PADDING, b""))
    query = dnswire.parse_query(dns.message.make_query("gw.lan", "A", use_edns=0, options=options).to_wire())
    plain = dnswire.build_response(query, _answer(records))
    wire = dnswire.add_stream_options(query, plain, 123, tls)
    response = dns.message.from_wire(wire)
    assert response.answer == dns.message.from_wire(plain).answer and response.edns == 0
    assert _option(response, KEEPALIVE) == ((123).to_bytes(2, "big") if keepalive else None)
    if padding and tls:
        assert len(wire) % dnswire.PADDING_BLOCK == 0 and len(wire) - len(plain) < dnswire.PADDING_BLOCK + 10
        assert set(_option(response, PADDING)) <= {0}  # zeros
    else:
        assert _option(response, PADDING) is None
    if not options:
        assert wire is plain


def test_padding_that_would_pass_65535_bytes_is_left_out():
    query = dnswire.parse_query(
        dns.message.make_query("gw.lan", "A", use_edns=0, options=[dns.edns.GenericOption(PADDING, b"")]).to_wire()
    )
    plain = dnswire.build_response(query, _answer(4093))  # 16 bytes a record
    assert 65520 - 4 < len(plain) <= 65535  # no room for the option's 4 bytes below 65520, the last multiple
    assert dnswire.add_stream_options(query, plain, 0, True) is plain
    smaller = dnswire.build_response(query, _answer(4092))
    assert len(smaller) + 4 <= 65520
    assert len(dnswire.add_stream_options(query, smaller, 0, True)) == 65520  # the largest multiple of 468


def test_no_options_without_edns_or_on_an_error():
    bare = dnswire.parse_query(dns.message.make_query("gw.lan", "A").to_wire())
    plain = dnswire.build_response(bare, _answer(1))
    assert dnswire.add_stream_options(bare, plain, 300, True) is plain
    asked = dnswire.parse_query(
        dns.message.make_query("gw.lan", "A", use_edns=0, options=[dns.edns.GenericOption(KEEPALIVE, b"")]).to_wire()
    )
    servfail = dnswire.build_response(asked, Answer("gw.lan", "A", "servfail", message="no"))
    told = dns.message.from_wire(dnswire.add_stream_options(asked, servfail, 300, False))
    assert told.rcode() == dns.rcode.SERVFAIL and _option(told, KEEPALIVE) == (300).to_bytes(2, "big")
