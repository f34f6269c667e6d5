"""``trionet names`` commands: ``serve`` runs the name server, ``query`` asks it."""

from __future__ import annotations

import functools
import ipaddress
import json
import sys

import click
import trio

from trionet import log
from trionet.cliutil import (
    count_option,
    distinct_ports,
    grace_option,
    host_option,
    log_level_option,
    metrics_option,
    port_option,
    seconds_option,
    serve_until_signal,
)
from trionet.names import client as names_client
from trionet.names import protocol as names_protocol
from trionet.names.answer import InvalidType, parse_type
from trionet.names.dnswire import EDNS_PAYLOAD
from trionet.names.metrics import names_registry
from trionet.names.protocol import DEFAULT_PORT
from trionet.names.resolver import parse_upstream, system_upstreams
from trionet.names.server import DEFAULT_DNS_PORT, NamesConfig, NamesServer
from trionet.tls import server_tls_options

__all__ = ["names"]


@click.group()
def names() -> None:
    """A name server: hosts file, DNS-backed cache, a client limit, a backlog and a quota.

    \b
      trionet names serve   run the server (line protocol; DNS over TCP, UDP and, with a certificate, TLS)
      trionet names query   ask a running server for names, on one connection

    Try it: 'trionet names serve --hosts examples/names/hosts' in one terminal,
    then 'trionet names query gateway.lan www.example.com' or 'nc 127.0.0.1 7402'.
    """


def _upstream(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]):
    try:
        return [parse_upstream(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@names.command()
@click.option(
    "--hosts",
    "hosts_path",
    type=click.Path(dir_okay=False),
    default="/etc/hosts",
    show_default=True,
    help="Hosts file (hosts(5) format) answered first; reloaded when it changes and on SIGHUP.",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="HOST[:PORT]",
    callback=_upstream,
    help="DNS server asked for names not in the hosts file, tried in order (repeatable). "
    "[default: the nameservers in /etc/resolv.conf]",
)
@host_option(serving=True)
@port_option(DEFAULT_PORT, serving=True)
@click.option(
    "--dns-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_DNS_PORT,
    show_default=True,
    help="Port for standard DNS, over TCP and (unless --no-dns-udp) UDP on the same number; "
    "0 picks a free one for both.",
)
@click.option(
    "--dot-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Also serve DNS over TLS (RFC 7858) on this port, with --tls-cert and --tls-key; 0 picks a free one "
    "(logged). Its clients count in --limit with the other ports, under the same quota and timeouts; "
    "the TLS handshake comes first, within --tls-handshake-timeout, and holds no slot. [default: off]",
)
@server_tls_options
@click.option(
    "--dns-udp/--no-dns-udp",
    "dns_udp",
    default=True,
    show_default=True,
    help="Also answer DNS over UDP on --dns-port. UDP is not admitted: --limit, --quota and the "
    "timeouts do not apply; an answer too big for the client is truncated (TC) so it asks again over TCP.",
)
@click.option(
    "--edns-udp-size",
    type=click.IntRange(512, 65535),
    default=EDNS_PAYLOAD,
    show_default=True,
    metavar="BYTES",
    help="Largest UDP answer, even to a client that announces more in EDNS (512 without EDNS).",
)
@click.option(
    "--log-queries",
    is_flag=True,
    default=False,
    help="Log one line per query, whatever --log-level says (like dnsmasq's log-queries): "
    "'query CLIENT TRANSPORT NAME TYPE SOURCE RCODE MILLISECONDS'.",
)
@count_option(
    "--udp-lookups",
    default=256,
    unit="QUERIES",
    minimum=1,
    help="UDP queries waiting for an upstream at once, all clients together; past it queries are dropped "
    "unanswered (hosts and cache answers need no wait and are never dropped for this).",
)
@count_option(
    "--udp-rate",
    default=100,
    unit="ANSWERS",
    help="UDP answers per second to one client address (an IPv6 client: its /64), in bursts of as many; "
    "past it queries are dropped unanswered. 0 for no limit.",
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Clients served at once, both ports counted together; the others wait in line.",
)
@click.option(
    "--quota",
    type=click.IntRange(0),
    default=4,
    show_default=True,
    help="Queries each admitted client may make before the server closes its connection; 0 for no quota.",
)
@click.option(
    "--backlog",
    type=click.IntRange(0),
    default=64,
    show_default=True,
    help="Clients that may wait in line for a slot; more are told 'busy' and closed.",
)
@count_option(
    "--per-address",
    default=8,
    unit="N",
    help="Slots plus places in line one client address may hold (an IPv6 client: its /64); "
    "more are told 'bye busy per-address ...' (REFUSED on the DNS port). 0 for no limit.",
)
@seconds_option(
    "--wait-timeout",
    default=60.0,
    help="Turn away a client still in line after this long ('bye wait-timeout'; REFUSED on the DNS port); "
    "0 for never.",
)
@seconds_option(
    "--idle-timeout",
    default=30.0,
    help="Close an admitted client that sends nothing for this long; 0 for never.",
)
@seconds_option(
    "--session-timeout",
    default=60.0,
    help="Close an admitted client this long after its admission, whatever its quota left "
    "('bye session-timeout'): the quota is for a burst. 0 for never.",
)
@count_option(
    "--cache-size",
    default=10_000,
    unit="ANSWERS",
    minimum=1,
    help="Answers kept in the cache; the least recently used goes first.",
)
@seconds_option(
    "--min-ttl",
    default=0,
    whole=True,
    help="Keep cached answers at least this long, whatever their TTL.",
)
@seconds_option(
    "--max-ttl",
    default=86_400,
    whole=True,
    help="Keep cached answers at most this long, whatever their TTL.",
)
@seconds_option(
    "--upstream-timeout",
    default=2.0,
    minimum=0.01,
    help="Wait this long for one upstream before trying the next.",
)
@seconds_option(
    "--serve-stale",
    default=0.0,
    help="While every upstream fails, answer from an expired cache entry up to this long past its TTL "
    "(with TTL 30 and source 'stale', RFC 8767) instead of SERVFAIL; it is refreshed when an upstream "
    "answers again. 0 for never.",
)
@count_option(
    "--max-upstream-lookups",
    default=1000,
    unit="NAMES",
    minimum=1,
    help="Names looked up upstream at once (a name asked again meanwhile joins its lookup); a new one past it "
    "is answered SERVFAIL at once, saying the server is busy. Background refreshes of cached names asked for "
    "in the last tenth of their TTL (prefetch) count too, and are skipped when it is reached.",
)
@count_option(
    "--listen-backlog",
    default=None,
    unit="CONNECTIONS",
    minimum=1,
    help="The kernel's queue of connections not yet accepted (listen(2)). [default: trio's, the system maximum]",
)
@grace_option
@metrics_option
@log_level_option
def serve(
    hosts_path: str,
    upstreams,
    host: str,
    port: int,
    dns_port: int,
    dot_port: int | None,
    tls,
    dns_udp: bool,
    edns_udp_size: int,
    log_queries: bool,
    udp_lookups: int,
    udp_rate: int,
    limit: int,
    quota: int,
    backlog: int,
    per_address: int,
    wait_timeout: float,
    idle_timeout: float,
    session_timeout: float,
    cache_size: int,
    min_ttl: int,
    max_ttl: int,
    upstream_timeout: float,
    serve_stale: float,
    max_upstream_lookups: int,
    listen_backlog: int | None,
    grace: float,
    metrics: tuple[str, int] | None,
) -> None:
    """Run the name server: a line protocol on --port, DNS over TCP and UDP on --dns-port, DNS over TLS on --dot-port.

    Lookups go to the hosts file, then the cache, then the upstream DNS
    servers. At most --limit clients are served at once; up to --backlog more
    wait in line (line clients are told their place), at most --wait-timeout
    seconds; each admitted client may ask --quota queries within
    --session-timeout seconds. One client address holds at most --per-address
    slots and places in line together. The bound ports are logged at start,
    so '--port 0 --dns-port 0' works.
    """
    if min_ttl > max_ttl:
        raise click.BadParameter("--min-ttl is larger than --max-ttl", param_hint="--min-ttl")
    distinct_ports(port=port, dns_port=dns_port, dot_port=dot_port or 0)
    if dot_port is not None and tls is None:
        raise click.UsageError("--dot-port serves DNS over TLS: give it --tls-cert FILE and --tls-key FILE")
    if tls is not None and dot_port is None:
        raise click.UsageError("--tls-cert and --tls-key are for DNS over TLS: give --dot-port PORT too")
    logger = log.get_logger("names")
    if log_queries:
        log.get_logger("names.queries").setLevel("INFO")  # asked for by name: shown whatever --log-level says
    upstreams = list(upstreams) or system_upstreams()
    if not upstreams:
        logger.warning("no upstream DNS server: names not in %s will get SERVFAIL", hosts_path)
    config = NamesConfig(
        limit=limit,
        quota=quota,
        backlog=backlog,
        per_address=per_address,
        wait_timeout=wait_timeout,
        idle_timeout=idle_timeout,
        session_timeout=session_timeout,
        cache_size=cache_size,
        min_ttl=min_ttl,
        max_ttl=max_ttl,
        upstream_timeout=upstream_timeout,
        max_upstream_lookups=max_upstream_lookups,
        serve_stale=serve_stale,
        udp=dns_udp,
        edns_udp_size=edns_udp_size,
        udp_lookups=udp_lookups,
        udp_rate=udp_rate,
        log_queries=log_queries,
    )
    try:
        with open(hosts_path, "rb"):
            pass  # read for real by the server; here only to fail early with one line
    except OSError as exc:
        raise click.ClickException(
            f"cannot read the hosts file {hosts_path}: {exc.strerror or exc}; give a readable file with --hosts"
        ) from None
    server = NamesServer(config, upstreams=upstreams, hosts_path=hosts_path, tls=tls)
    logger.info(
        "limit %d, quota %s, backlog %d, per address %s, upstreams %s",
        limit,
        quota or "none",
        backlog,
        per_address or "no limit",
        ", ".join(str(u) for u in upstreams) or "none",
    )

    serve_until_signal(
        "names",
        functools.partial(server.serve, host, port, dns_port, dot_port=dot_port, listen_backlog=listen_backlog),
        shutdown=server.shutdown,
        grace=grace,
        reload=server.request_reload,
        registry=names_registry(server),
        metrics=metrics,
    )


class _RecordType(click.ParamType):
    """A record type name as dnspython spells it (``mx`` gives ``MX``), see :func:`~trionet.names.answer.parse_type`."""

    name = "type"

    def convert(self, value, param, ctx) -> str:
        try:
            return parse_type(value)
        except InvalidType as exc:
            self.fail(str(exc), param, ctx)


@names.command()
@host_option()
@port_option(DEFAULT_PORT)
@click.option(
    "--type",
    "rdtype",
    type=_RecordType(),
    default=None,
    metavar="TYPE",
    help="Record type to ask for, any case: A, AAAA, MX, TXT, SRV, NS, SOA, CAA, HTTPS, PTR, ..., "
    "TYPEnnn for a numbered one, or ANY (answered with one HINFO record, RFC 8482). "
    "[default: A; PTR for an IP address]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="'json' prints one JSON object per answer (name, type, status, records (also as addresses), ttl, source, latency_ms).",
)
@click.option(
    "--reconnect/--no-reconnect",
    default=False,
    show_default=True,
    help="When the server ends the session at its quota, connect again (and wait in line) for the names left.",
)
@seconds_option(
    "--timeout",
    default=10.0,
    help="Give up connecting after this long (waiting in line is not counted).",
)
@click.argument("names_", metavar="NAME...", nargs=-1, required=True)
def query(host: str, port: int, rdtype: str | None, fmt: str, reconnect: bool, timeout: float, names_) -> None:
    """Ask a names server for each NAME (or IP address) on one connection.

    Each answer is printed with its source (hosts, cache or dns) and latency.
    Exits 0 when every name got an answer (NXDOMAIN counts as an answer),
    1 when some were left unanswered, 2 on a usage error.
    """
    def note(text: str) -> None:
        click.echo(text, err=True)

    async def main() -> list[str]:
        left = list(names_)
        session = 0
        while left:
            session += 1

            def on_wait(place: int) -> None:
                note(f"waiting for a slot: place {place} in line")

            try:
                async with names_client.connect(host, port, on_wait=on_wait, connect_timeout=timeout) as conn:
                    if conn.welcome.waited >= 0.001:
                        note(f"admitted after waiting {conn.welcome.waited:.3f}s")
                    while left:
                        name = left[0]
                        kind = rdtype
                        if kind is None:
                            kind = "PTR" if _is_address(name) else "A"
                        answer = await conn.resolve(name, kind)
                        left.pop(0)
                        _print_answer(answer, fmt)
                    await conn.quit()
            except names_client.QuotaReached as exc:
                note(f"quota reached: {exc.message}")
                if left:
                    note(f"unanswered: {' '.join(left)}")
                    if reconnect:
                        note("reconnecting for the rest")
                        continue
                return left
            except names_client.NamesConnectionError as exc:
                note(f"error: {exc}")
                if left:
                    note(f"unanswered: {' '.join(left)}")
                return left
        return left

    left = trio.run(main)
    sys.exit(1 if left else 0)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _print_answer(answer: names_client.Resolved, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(answer.to_json()))
        return
    latency = f"{answer.latency * 1000:.1f}ms"
    if answer.ok:
        data = names_protocol.encode_records(answer.rdtype, answer.addresses)
    else:
        data = f"{answer.status.upper()}: {answer.message}"
    click.echo(f"{answer.name} {answer.rdtype} {data}  (ttl {answer.ttl}s, source {answer.source}, {latency})")
