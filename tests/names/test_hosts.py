"""The hosts-file parser and name table (sans-IO), with hypothesis on generated files."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.names.hosts import parse_hosts

EXAMPLE = """\
# comment line
127.0.0.1 localhost
10.0.0.1\tGateway.LAN.\tgw   # trailing comment, tabs, upper case, trailing dot
10.0.0.2 files.lan nas
10.0.0.3 files.lan
fd00::2  files.lan
fd00::9  v6only.lan
not-an-ip bad.lan
10.0.0.4
10.0.0.5 bad..name
   # indented comment

10.0.0.6 dup.lan
10.0.0.6 dup.lan
"""


def test_example_file():
    table, warnings = parse_hosts(EXAMPLE, "/tmp/hosts")
    assert table.lookup("gateway.lan", "A").records == ("10.0.0.1",)
    assert table.lookup("gw", "A").records == ("10.0.0.1",)
    assert table.lookup("files.lan", "A").records == ("10.0.0.2", "10.0.0.3")
    assert table.lookup("files.lan", "AAAA").records == ("fd00::2",)
    assert table.lookup("nas", "A").records == ("10.0.0.2",)
    assert table.lookup("dup.lan", "A").records == ("10.0.0.6",)
    # Known name, no address of the type: NODATA, not "unknown".
    nodata = table.lookup("v6only.lan", "A")
    assert nodata.status == "nodata" and nodata.source == "hosts"
    assert table.lookup("gw", "MX").status == "nodata"
    assert table.lookup("nowhere.lan", "A") is None
    # Reverse answers give the canonical name.
    assert table.lookup("1.0.0.10.in-addr.arpa", "PTR").records == ("gateway.lan.",)
    v6 = ipaddress.ip_address("fd00::2").reverse_pointer
    assert table.lookup(v6, "PTR").records == ("files.lan.",)
    assert table.lookup("9.9.9.10.in-addr.arpa", "PTR") is None
    assert [(w.lineno, w.path) for w in warnings] == [(8, "/tmp/hosts"), (9, "/tmp/hosts"), (10, "/tmp/hosts")]
    assert "not an IP address" in str(warnings[0]) and str(warnings[0]).startswith("/tmp/hosts:8:")
    assert "bad.lan" not in table


_alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
_label = st.builds(
    lambda a, mid, b: a + mid + b,
    st.sampled_from(_alnum),
    st.text(_alnum + "-_", max_size=6),
    st.sampled_from(["", *_alnum]),
)
_name = st.lists(_label, min_size=1, max_size=3).map(".".join)
_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(lambda a: a.exploded if a.packed[0] % 2 else str(a))
_entry = st.tuples(st.one_of(_v4, _v6), st.lists(_name, min_size=1, max_size=4, unique=True))
_space = st.sampled_from([" ", "\t", "  ", " \t "])


@st.composite
def _hosts_files(draw):
    entries = draw(st.lists(_entry, max_size=12))
    lines = []
    for address, names in entries:
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# just a comment", "   ", "\t# indented"])))
        shown = [n.upper() if draw(st.booleans()) else n for n in names]
        shown = [n + "." if draw(st.booleans()) else n for n in shown]
        line = draw(st.sampled_from(["", " ", "\t"])) + address
        for n in shown:
            line += draw(_space) + n
        if draw(st.booleans()):
            line += draw(_space) + "# comment with 1.2.3.4 and names"
        lines.append(line)
    return entries, "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@given(_hosts_files())
@settings(max_examples=100, deadline=None)
def test_generated_files_match_a_model(case):
    entries, text = case
    table, warnings = parse_hosts(text)
    assert warnings == []
    model: dict[str, dict[int, list[str]]] = {}
    reverse: dict[str, str] = {}
    canonical: dict[str, str] = {}
    for address, names in entries:
        ip = ipaddress.ip_address(address)
        reverse.setdefault(str(ip), names[0])
        for name in names:
            canonical.setdefault(name, names[0])
            family = model.setdefault(name, {4: [], 6: []})[ip.version]
            if str(ip) not in family:
                family.append(str(ip))
    assert sorted(table.names()) == sorted(model)
    for name, families in model.items():
        for version, rdtype in ((4, "A"), (6, "AAAA")):
            answer = table.lookup(name, rdtype)
            if families[version]:
                assert answer.status == "ok" and list(answer.records) == families[version]
            else:
                assert answer.status == "nodata"
        assert table.canonical(name) == canonical[name]
    for address, name in reverse.items():
        ptr = ipaddress.ip_address(address).reverse_pointer
        assert table.lookup(ptr, "PTR").records == (name + ".",)


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_without_raising(text):
    table, warnings = parse_hosts(text, "f")
    lines = text.splitlines()
    for warning in warnings:
        assert 1 <= warning.lineno <= len(lines)
        assert str(warning).startswith(f"f:{warning.lineno}:")
    for name in table.names():
        assert name == name.lower() and not name.endswith(".")


def test_a_linked_wire_cache_is_emptied_with_its_parent():
    from trionet.names.hostswire import HostsWireCache

    tcp = HostsWireCache()
    udp = tcp.linked()
    tcp.remember(b"\x00\x01query", b"\x00\x01answer")
    udp.remember(b"\x00\x02query", b"\x00\x02cut")
    assert udp.get(b"query") == b"cut" and tcp.get(b"query") == b"answer"
    tcp.clear()  # the table changed
    assert udp.get(b"query") is None and len(tcp) == 0
    tcp.unlink(udp)
    udp.remember(b"\x00\x02query", b"\x00\x02cut")
    tcp.clear()
    assert udp.get(b"query") == b"cut"  # no longer linked
