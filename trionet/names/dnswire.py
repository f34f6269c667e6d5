"""Sans-IO DNS message handling for the DNS-over-TCP port: parse queries, build responses.

:func:`parse_query` turns one message (the payload of one length-prefixed
frame, RFC 1035 4.2.2) into a :class:`DnsQuery`, or into the bytes of an
error response when the message cannot be served:

- FORMERR: not a DNS message, a response instead of a query, not exactly
  one question, trailing bytes, a broken EDNS record;
- NOTIMP: an opcode other than QUERY, or a meta type (AXFR, IXFR, ...; ANY
  is answered, per RFC 8482: see :func:`~trionet.names.answer.any_answer`);
- REFUSED: a class other than IN;
- BADVERS: an EDNS version other than 0 (RFC 6891 6.1.3).

Every response to a query with one well-formed OPT record carries our OPT
record (RFC 6891 7), errors included; two OPT records are FORMERR.

On a connection (TCP, TLS) :func:`parse_stream_query` and
:func:`add_stream_options` add what RFC 7828 and RFC 7830 ask: the
edns-tcp-keepalive option (the idle timeout) in the answer to a query that
carried it, FORMERR for one that carried it with a value, and, over TLS,
the answer padded to a multiple of :data:`PADDING_BLOCK` bytes when the
query carried a padding option (RFC 8467 4.1).

:func:`build_response` turns an :class:`~trionet.names.answer.Answer` into
the response bytes: the CNAME chain then the records in the answer section,
the SOA in the authority section for a negative answer (RFC 2308), AA set
for hosts-file answers, SERVFAIL for an upstream failure.

The common case (a plain query, with or without one EDNS OPT record) is
parsed and answered with ``struct`` alone; anything else goes through
dnspython's full parser, which checks every section. Both paths give the
same result, and the tests compare them.
"""

from __future__ import annotations

import functools
import socket
import struct
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from trionet.names.answer import Answer, record_type

__all__ = [
    "BADVERS",
    "KEEPALIVE_OPTION",
    "PADDING_BLOCK",
    "PADDING_OPTION",
    "DnsQuery",
    "EDNS_PAYLOAD",
    "FORMERR",
    "NOERROR",
    "NOTIMP",
    "NXDOMAIN",
    "PLAIN_UDP_LIMIT",
    "REFUSED",
    "SERVFAIL",
    "add_stream_options",
    "build_error",
    "build_refused",
    "build_response",
    "keepalive_units",
    "parse_query",
    "parse_stream_query",
    "truncate",
    "udp_limit",
]

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
"""An extended rcode (RFC 6891 6.1.3): its upper 8 bits go in the OPT record."""
EDNS_PAYLOAD = 1232
"""The UDP payload size we announce in EDNS (the 2020 DNS flag day value)."""
PLAIN_UDP_LIMIT = 512
"""The largest UDP response to a query without EDNS (RFC 1035 4.2.1)."""
KEEPALIVE_OPTION = 11
"""The EDNS option code of edns-tcp-keepalive (RFC 7828)."""
PADDING_OPTION = 12
"""The EDNS option code of padding (RFC 7830)."""
PADDING_BLOCK = 468
"""Padded responses are a multiple of this many bytes (RFC 8467 4.1, the Block-Length Padding strategy)."""

_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_HEADER = struct.Struct("!HHHHHH")
_RR_TAIL = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPTION = struct.Struct("!HH")  # EDNS option code, length
_TYPE_OPT = 41
_SIMPLE_NAME = b".abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_TYPE_TEXT: dict[int, str] = {}


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One query to answer.

    Attributes:
        id: the message ID, copied into the response.
        rd: the client's recursion-desired flag, copied into the response.
        qname: the name asked, normalized (lower case, no trailing dot).
        rdtype: the type asked, as text (``A``, ``TYPE65280`` for unknown ones).
        question: the question section as received, echoed back unchanged.
        edns: whether the query carried EDNS (the response then does too).
        udp_size: the UDP payload size the client's OPT record announced
            (0 without EDNS); see :func:`udp_limit`.
        keepalive: the length of the query's edns-tcp-keepalive option, -1
            without one (a client must send it empty, RFC 7828 3.2.1).
        padding: whether the query carried a padding option (RFC 7830).
    """

    id: int
    rd: bool
    qname: str
    rdtype: str
    question: bytes
    edns: bool = False
    udp_size: int = 0
    keepalive: int = -1
    padding: bool = False


def _header(msg_id: int, flags: int, rcode: int, qd: int, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return _HEADER.pack(msg_id, flags | rcode, qd, an, ns, ar)


def build_error(wire: bytes, rcode: int, query: DnsQuery | None = None, *, edns: bool = False) -> bytes:
    """Return an error response (``rcode``) to the message ``wire``.

    The ID, opcode and RD flag are copied from whatever part of the header
    arrived (ID 0 when not even two bytes did); the question is echoed when
    ``query`` has it. Our OPT record is added when ``query`` had EDNS, or
    ``edns`` is true; an extended rcode (``BADVERS``) needs it.
    """
    msg_id = int.from_bytes(wire[:2], "big") if len(wire) >= 2 else 0
    flags = (int.from_bytes(wire[2:4], "big") & 0x7900) if len(wire) >= 4 else 0  # opcode and RD
    flags |= _QR | _RA
    if query is not None:
        edns = query.edns
    opt = _opt(rcode >> 4) if edns else b""
    if query is None:
        return _header(msg_id, flags, rcode & 0xF, 0, 0, 0, 1 if edns else 0) + opt
    return _header(msg_id, flags, rcode & 0xF, 1, 0, 0, 1 if edns else 0) + query.question + opt


def _opt(extended_rcode: int = 0) -> bytes:
    return b"\x00" + _RR_TAIL.pack(_TYPE_OPT, EDNS_PAYLOAD, extended_rcode << 24, 0)


def _read_name(wire: bytes, offset: int) -> tuple[list[bytes], int]:
    """Read an uncompressed name starting at ``offset``; return its labels and the next offset."""
    labels = []
    total = 1
    while True:
        length = wire[offset]  # IndexError when truncated
        offset += 1
        if length == 0:
            return labels, offset
        if length > 63:
            raise ValueError("compressed or extended label in the question")
        label = wire[offset : offset + length]
        if len(label) != length:
            raise ValueError("truncated label")
        total += length + 1
        if total > 255:
            raise ValueError("name longer than 255 bytes")
        labels.append(label)
        offset += length


def _name_text(labels: list[bytes]) -> str:
    if not labels:
        return "."
    text = b".".join(labels)
    # Only letters, digits, - and _ (one test for the whole name; the dots
    # counted, so a label holding a dot of its own takes dnspython's way).
    if not text.translate(None, _SIMPLE_NAME) and text.count(b".") == len(labels) - 1:
        return text.decode("ascii").lower()
    return dns.name.Name(labels).to_text(omit_final_dot=True).lower()


def _type_text(qtype: int) -> str:
    """``dns.rdatatype.to_text``, remembered: it builds an enum member per call."""
    text = _TYPE_TEXT.get(qtype)
    if text is None:
        text = _TYPE_TEXT[qtype] = dns.rdatatype.to_text(qtype)
    return text


def _check_type(wire: bytes, qtype: int, qclass: int, edns: bool) -> bytes | None:
    if qclass != dns.rdataclass.IN:
        return build_error(wire, REFUSED, edns=edns)
    if (dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY) or qtype == 0:
        return build_error(wire, NOTIMP, edns=edns)
    return None


def parse_query(wire: bytes) -> DnsQuery | bytes:
    """Parse one DNS message; return the query, or the bytes of an error response to send instead."""
    if len(wire) < 12:
        return build_error(wire, FORMERR)
    msg_id, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
    if flags & _QR:
        return build_error(wire, FORMERR)
    if (flags >> 11) & 0xF != dns.opcode.QUERY:
        return build_error(wire, NOTIMP)
    if qd != 1:
        return build_error(wire, FORMERR)
    if an == 0 and ns == 0 and ar <= 1:
        try:
            labels, offset = _read_name(wire, 12)
            qtype, qclass = struct.unpack_from("!HH", wire, offset)
            offset += 4
            question = wire[12:offset]
            edns = False
            udp_size = 0
            keepalive, padding = -1, False
            if ar == 1:
                # Only an OPT record at the root is read here; anything else
                # (TSIG, a bad OPT) takes the full parser below.
                if wire[offset] != 0:
                    raise ValueError("not an OPT record")
                rtype, udp_size, ttl, rdlen = _RR_TAIL.unpack_from(wire, offset + 1)
                if rtype != _TYPE_OPT or (ttl >> 16) & 0xFF != 0:
                    raise ValueError("not an OPT record of version 0")
                offset += 1 + _RR_TAIL.size
                if rdlen:
                    keepalive, padding = _read_options(wire, offset, offset + rdlen)
                offset += rdlen
                edns = True
            if offset != len(wire):
                raise ValueError("trailing bytes")
        except (ValueError, IndexError, struct.error):
            pass  # let the full parser decide, and word the error
        else:
            refused = _check_type(wire, qtype, qclass, edns)
            if refused is not None:
                return refused
            return DnsQuery(
                msg_id,
                bool(flags & _RD),
                _name_text(labels),
                _type_text(qtype),
                question,
                edns,
                udp_size,
                keepalive,
                padding,
            )
    return _parse_slow(wire)


def _parse_slow(wire: bytes) -> DnsQuery | bytes:
    try:
        message = dns.message.from_wire(wire)
    except dns.message.BadEDNS:
        return build_error(wire, FORMERR)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return build_error(wire, FORMERR)
    if len(message.question) != 1:
        return build_error(wire, FORMERR)
    rrset = message.question[0]
    question = rrset.name.to_wire() + struct.pack("!HH", rrset.rdtype, rrset.rdclass)
    if message.edns > 0:
        unknown = DnsQuery(message.id, bool(message.flags & _RD), "", "", question, True)
        return build_error(wire, BADVERS, unknown)
    refused = _check_type(wire, rrset.rdtype, rrset.rdclass, message.edns >= 0)
    if refused is not None:
        return refused
    qname = rrset.name.to_text(omit_final_dot=True).lower() or "."
    keepalive, padding = -1, False
    for option in message.options:
        if option.otype == KEEPALIVE_OPTION:
            keepalive = len(option.to_wire())
        elif option.otype == PADDING_OPTION:
            padding = True
    return DnsQuery(
        message.id,
        bool(message.flags & _RD),
        qname,
        _type_text(rrset.rdtype),
        question,
        message.edns >= 0,
        message.payload if message.edns >= 0 else 0,
        keepalive,
        padding,
    )


def _read_options(wire: bytes, offset: int, end: int) -> tuple[int, bool]:
    """Walk the options of an OPT record's data; return (keepalive length or -1, padding seen).

    Raises ``struct.error`` or ``ValueError`` when an option runs past the
    record (the full parser then words the FORMERR).
    """
    keepalive, padding = -1, False
    while offset < end:
        code, length = _OPTION.unpack_from(wire, offset)
        offset += 4
        if code == KEEPALIVE_OPTION:
            keepalive = length
        elif code == PADDING_OPTION:
            padding = True
        offset += length
    if offset != end:
        raise ValueError("an EDNS option runs past its record")
    return keepalive, padding


@functools.lru_cache(maxsize=4096)
def _name_wire(text: str) -> bytes:
    if text in (".", ""):
        return b"\x00"
    if "\\" not in text:
        labels = text.rstrip(".").split(".")
        try:
            encoded = [label.encode("ascii") for label in labels]
        except UnicodeEncodeError:
            encoded = None
        if encoded is not None and all(0 < len(label) < 64 for label in encoded):
            return b"".join(bytes([len(label)]) + label for label in encoded) + b"\x00"
    return dns.name.from_text(text).to_wire()


@functools.lru_cache(maxsize=4096)
def _rdata_wire(rdtype: str, text: str) -> bytes:
    if rdtype == "A":
        return socket.inet_pton(socket.AF_INET, text)
    if rdtype == "AAAA":
        return socket.inet_pton(socket.AF_INET6, text)
    if rdtype in ("PTR", "CNAME", "NS"):
        return _name_wire(text)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)
    return rdata.to_wire()


def _rr(owner: bytes, rdtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + _RR_TAIL.pack(rdtype, dns.rdataclass.IN, ttl, len(rdata)) + rdata


def build_response(query: DnsQuery, answer: Answer) -> bytes:
    """Return the response to ``query`` carrying ``answer``.

    The answer's owner names are written in full except the first, which
    points at the question (compression pointer to offset 12).
    """
    flags = _QR | _RA | (_RD if query.rd else 0) | (_AA if answer.source == "hosts" else 0)
    if answer.status == "servfail":
        return build_error(_HEADER.pack(query.id, flags & _RD, 0, 0, 0, 0), SERVFAIL, query)
    rcode = NXDOMAIN if answer.status == "nxdomain" else NOERROR
    ttl = max(0, answer.ttl)
    records = []
    owner = b"\xc0\x0c"
    for _alias, target in answer.chain:
        target_wire = _name_wire(target)
        records.append(_rr(owner, dns.rdatatype.CNAME, ttl, target_wire))
        owner = target_wire
    if answer.status == "ok":
        type_text = record_type(answer.rdtype)  # HINFO for ANY (RFC 8482)
        rdtype = dns.rdatatype.from_text(type_text)
        for text in answer.records:
            records.append(_rr(owner, rdtype, ttl, _rdata_wire(type_text, text)))
    authority = b""
    if answer.soa is not None and answer.status != "ok":
        zone, soa_text = answer.soa
        authority = _rr(_name_wire(zone), dns.rdatatype.SOA, ttl, _rdata_wire("SOA", soa_text))
    head = _header(query.id, flags, rcode, 1, len(records), 1 if authority else 0, 1 if query.edns else 0)
    return b"".join([head, query.question, *records, authority, _opt() if query.edns else b""])


def build_refused(wire: bytes) -> bytes:
    """The REFUSED answer to the message ``wire`` (a client turned away before admission).

    A message that is not a query it could have had answered gets its own
    error instead (FORMERR, NOTIMP, ...), as it would once admitted.
    """
    parsed = parse_query(wire)
    if isinstance(parsed, bytes):
        return parsed
    return build_error(wire, REFUSED, parsed)


def udp_limit(query: DnsQuery, ceiling: int = EDNS_PAYLOAD) -> int:
    """The largest UDP response ``query`` may get, in bytes (RFC 6891 6.2.3, 6.2.5).

    512 without EDNS; with EDNS, the size the client announced, at least 512
    (a smaller announcement is read as 512) and at most ``ceiling`` (the
    server's ``--edns-udp-size``).
    """
    if not query.edns:
        return PLAIN_UDP_LIMIT
    return max(PLAIN_UDP_LIMIT, min(query.udp_size, max(ceiling, PLAIN_UDP_LIMIT)))


def truncate(query: DnsQuery, response: bytes, limit: int) -> bytes:
    """Return ``response`` if it fits in ``limit`` bytes, else its truncated form with TC set.

    The truncated form keeps the header's ID, flags and rcode, and the
    question; its answer, authority and additional sections are empty but
    for our OPT record when the query had EDNS. A client that gets it
    retries over TCP (RFC 1035 4.2.1, RFC 7766 5). It is at most
    12 + 259 + 11 bytes, so it always fits in 512.
    """
    if len(response) <= limit:
        return response
    msg_id, flags = struct.unpack_from("!HH", response)
    head = _HEADER.pack(msg_id, flags | _TC, 1, 0, 0, 1 if query.edns else 0)
    return head + query.question + (_opt() if query.edns else b"")


# --- connections: edns-tcp-keepalive and padding ------------------------------------


def parse_stream_query(wire: bytes) -> DnsQuery | bytes:
    """:func:`parse_query` for a message that came over a connection (TCP or TLS).

    Also FORMERR: an edns-tcp-keepalive option with a value, which only a
    server may send (RFC 7828 3.2.1). Over UDP the option is ignored
    (RFC 7828 3.3.1), so :func:`parse_query` lets it pass.
    """
    parsed = parse_query(wire)
    if type(parsed) is DnsQuery and parsed.keepalive > 0:
        return build_error(wire, FORMERR, parsed)
    return parsed


def keepalive_units(idle_timeout: float) -> int:
    """The edns-tcp-keepalive TIMEOUT for ``idle_timeout`` seconds: units of 100 ms (RFC 7828 3.1).

    Rounded down, so the client never counts on more than the server
    keeps; no idle timeout (0) is the largest value the field holds, 6553.5 s.
    """
    if idle_timeout <= 0:
        return 0xFFFF
    return min(0xFFFF, int(idle_timeout * 10))


def add_stream_options(query: DnsQuery, response: bytes, keepalive: int, pad: bool) -> bytes:
    """Add a connection's EDNS options to ``response``, the answer to ``query``, as the query asked.

    - edns-tcp-keepalive with the value ``keepalive`` (from
      :func:`keepalive_units`) when the query carried the option: the
      client learns how long the server keeps an idle connection open
      (RFC 7828 3.3.2; a query without it gets none, as from unbound);
    - padding, when ``pad`` (the connection is encrypted) and the query
      carried a padding option: zeros that make the whole message a multiple
      of :data:`PADDING_BLOCK` bytes (RFC 7830 4, RFC 8467 4.1). A message
      that cannot grow that far within 65535 bytes is sent unpadded.

    ``response`` must come from this module (its OPT record, empty, is the
    last record); one without an OPT (a query without EDNS) is returned
    unchanged, as options live only in the OPT record.
    """
    if not query.edns or response[-11:-8] != b"\x00\x00\x29" or response[-2:] != b"\x00\x00":
        return response
    options = b""
    if query.keepalive == 0:
        options = _OPTION.pack(KEEPALIVE_OPTION, 2) + keepalive.to_bytes(2, "big")
    if pad and query.padding:
        unpadded = len(response) + len(options) + _OPTION.size
        size = -(-unpadded // PADDING_BLOCK) * PADDING_BLOCK
        if size <= 0xFFFF:
            options += _OPTION.pack(PADDING_OPTION, size - unpadded) + bytes(size - unpadded)
    if not options:
        return response
    return response[:-2] + len(options).to_bytes(2, "big") + options
