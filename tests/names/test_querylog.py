"""--log-queries: one line per query on every transport, with client, name, type, source, rcode and time."""

import logging
import re

import dns.asyncquery
import dns.message
import pytest
import trio

import trionet.names
from trionet.names import dnswire
from trionet.names.answer import Answer
from trionet.names.querylog import answer_rcode, error_rcode, query_line

LINE = re.compile(r"query (\S+) (line|tcp|udp) (\S+) (\S+) (hosts|cache|dns|-) ([A-Z]+) (\d+\.\d)ms")


def test_the_line_format():
    assert query_line("127.0.0.1:5", "udp", "gw", "A", "hosts", "NOERROR", 0.0123) == (
        "query 127.0.0.1:5 udp gw A hosts NOERROR 12.3ms"
    )
    assert answer_rcode(Answer("x", "A", "nodata")) == "NOERROR"
    assert answer_rcode(Answer("x", "A", "nxdomain")) == "NXDOMAIN"
    future = dns.message.make_query("gw", "A", use_edns=1)
    assert error_rcode(dnswire.parse_query(future.to_wire())) == "BADVERS"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def query_log():
    """The query log's records, caught by a handler of its own: ``trionet.log.configure`` stops propagation."""
    logger = logging.getLogger("trionet.names.queries")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def _queries(query_log) -> list[tuple[str, ...]]:
    with trio.fail_after(5):
        while True:
            found = [LINE.fullmatch(r.getMessage()) for r in query_log.records]
            if len(found) >= 6:
                return sorted(m.groups()[1:6] for m in found)
            await trio.sleep(0.01)


async def test_one_line_per_query_on_every_transport(start_names, query_log):
    _server, addrs = await start_names(quota=0, log_queries=True)
    host, port = addrs.dns
    await dns.asyncquery.udp(dns.message.make_query("gw", "A"), host, port=port, timeout=5)
    await dns.asyncquery.udp(dns.message.make_query("www.test", "AAAA"), host, port=port, timeout=5)
    await dns.asyncquery.tcp(dns.message.make_query("gw", "A"), host, port=port, timeout=5)
    await dns.asyncquery.tcp(dns.message.make_query("www.test", "AAAA"), host, port=port, timeout=5)
    await dns.asyncquery.tcp(dns.message.make_query("nope.test", "A"), host, port=port, timeout=5)
    async with trionet.names.connect(*addrs.line) as client:
        await client.resolve("printer")
    assert await _queries(query_log) == sorted([
        ("udp", "gw", "A", "hosts", "NOERROR"),
        ("udp", "www.test", "AAAA", "dns", "NOERROR"),
        ("tcp", "gw", "A", "hosts", "NOERROR"),
        ("tcp", "www.test", "AAAA", "cache", "NOERROR"),
        ("tcp", "nope.test", "A", "dns", "NXDOMAIN"),
        ("line", "printer", "A", "hosts", "NOERROR"),
    ])


async def test_no_lines_unless_asked(start_names, query_log):
    _server, addrs = await start_names(quota=0)
    await dns.asyncquery.udp(dns.message.make_query("gw", "A"), addrs.dns[0], port=addrs.dns[1], timeout=5)
    await dns.asyncquery.tcp(dns.message.make_query("gw", "A"), addrs.dns[0], port=addrs.dns[1], timeout=5)
    assert not query_log.records
