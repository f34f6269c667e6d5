"""``trionet ring`` commands: ``join`` runs one node, ``stop`` asks node 0 to finalize, ``status`` asks every node, ``demo`` shows a local ring."""

from __future__ import annotations

import functools
import sys

import click
import trio

from trionet.addresses import parse_host_port
from trionet.cliutil import (
    log_level_option,
    metrics_option,
    seconds_option,
    serve_until_signal,
)
from trionet.ring.config import (
    ConfigError,
    count_messages,
    is_loopback,
    iter_numbered_messages,
    load_config,
    load_secret,
)
from trionet.ring.core import Summary
from trionet.ring.journal import JournalError
from trionet.ring.journal_file import open_deliveries, resume
from trionet.ring.metrics import ring_registry
from trionet.ring.node import (
    NodeOptions,
    RingError,
    RingNode,
    request_status,
    request_stop,
)
from trionet.ring.status import render_json, render_table, status_entries

__all__ = ["demo", "join", "ring", "status", "stop"]


@click.group()
def ring() -> None:
    """A logical token ring across hosts with two counter-rotating tokens.

    \b
    Every node runs 'trionet ring join' with the same ring file. Node 0 puts
    one token on the ring in each direction once the ring is closed; a node
    sends one message from its file per token visit, and every message goes
    all the way round and back to its sender. When every file has been sent
    and nothing is in flight, node 0 sends the finalization command round the
    ring and every node exits. See docs/protocol/ring.md.
    """


_config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="RING.toml",
    help="The ring file: [[node]] tables with id, host and port, in clockwise order. Same file on every node.",
)
_secret_option = click.option(
    "--secret-file",
    "secret_path",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    default=None,
    help=(
        "The ring's shared secret (the file's bytes, surrounding whitespace ignored; e.g. 'openssl rand -hex 32'). "
        "Every link and every stop or status request must prove it (HMAC-SHA256 challenge-response), so a process "
        "without it cannot join, pose as a neighbour, finalize, inject or stop. Same file on every node; "
        "keep it mode 600. Refused if empty."
    ),
)


def _read_secret(path: str | None) -> bytes | None:
    if path is None:
        return None
    secret, warning = load_secret(path)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return secret


@ring.command()
@_config_option
@click.option("--id", "node_id", required=True, type=click.IntRange(0), help="This node's id in the ring file.")
@click.option(
    "--messages",
    "messages_path",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Messages this node sends, one per line: 'DEST_ID TEXT...'. Blank lines and '#' comments are skipped.",
)
@click.option(
    "--deliveries",
    "deliveries_path",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help=(
        "Append one JSON line per message delivered to this node (id, origin, destination, direction, text). "
        "Never truncated: a node started again adds to its earlier records. A journal, FILE.journal, "
        "records what this node delivered and which of its messages came back, so a node started again "
        "with the same files never sends or delivers a message twice."
    ),
)
@seconds_option(
    "--connect-timeout",
    default=60.0,
    help=(
        "Before the ring first closes: give up (exit 1) when the next node stays unreachable this long. "
        "0: wait forever. (Once the ring has run, a dead neighbour is bypassed instead.)"
    ),
)
@seconds_option(
    "--failure-timeout",
    default=NodeOptions.failure_timeout,
    positive=True,
    help=(
        "A neighbour silent this long (no frame, no heartbeat; heartbeats go out every third of it) or refusing "
        "connections this long is taken for dead: the ring closes around it and its tokens are regenerated."
    ),
)
@seconds_option(
    "--undeliverable-after",
    default=NodeOptions.undeliverable_after,
    positive=True,
    help="A message whose destination is not in the ring is sent again until this long after its first sending, then given up.",
)
@click.option(
    "--undelivered",
    "undelivered_path",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Append one JSON line per message given up (id, origin, destination, text, reason).",
)
@seconds_option(
    "--handshake-timeout",
    default=NodeOptions.handshake_timeout,
    positive=True,
    help=(
        "A connection must complete the handshake (greetings and proofs) within this; a peer that stalls "
        "is dropped, so a silent connection holds nothing for longer."
    ),
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Listen here instead of on this node's address in the ring file (e.g. 0.0.0.0:7500 behind NAT).",
)
@_secret_option
@metrics_option
@click.option(
    "--insecure",
    is_flag=True,
    help=(
        "Listen on a non-loopback address without --secret-file: anyone who can reach the port can then "
        "join, finalize or stop the ring. Without this flag such a node refuses to start."
    ),
)
@log_level_option
def join(
    config_path: str,
    node_id: int,
    messages_path: str | None,
    deliveries_path: str | None,
    connect_timeout: float,
    failure_timeout: float,
    undeliverable_after: float,
    undelivered_path: str | None,
    handshake_timeout: float,
    listen: str | None,
    secret_path: str | None,
    metrics: tuple[str, int] | None,
    insecure: bool,
) -> None:
    """Run one node of the ring until node 0's finalization command has passed.

    Nodes may start in any order: each one listens on its own address and
    reconnects to its neighbours (with backoff) until the ring is closed.
    Every problem with the ring file or the message file is reported before
    the node joins. On SIGINT or SIGTERM node 0 finalizes gracefully (frames
    in flight complete first); any other node asks node 0 to. A second signal
    exits at once.

    Security: with --secret-file every connection (neighbour links and stop
    requests) proves the ring's shared secret before it is used. A node whose
    listening address is not loopback refuses to start without it, unless
    --insecure is given. Messages naming a node outside the ring are refused.

    The deliveries file is appended to, never truncated: a node started
    again adds to the records of its earlier runs. Next to it, the journal
    (DELIVERIES.journal, fsync'd before each act) makes restarts
    exactly-once: a message whose return this node saw is not sent again,
    one delivered here is not delivered again. A message's id is its line
    number in its sender's messages file, so keep those files unchanged
    between runs (append only).

    Crashes: a neighbour that dies (or fails the handshake) is bypassed
    after --failure-timeout; the tokens it held are regenerated under a new
    epoch, the messages it held are sent again by their senders and
    delivered once; a node started again with the same arguments joins
    between its neighbours. A message to a node that stays down is given up
    after --undeliverable-after and recorded in --undelivered. Finalization
    waits for node 0.

    Prints a summary when done: messages sent, delivered to this node,
    forwarded, and never sent. Exits 0 after a finalization, 1 on an error.
    """
    try:
        config = load_config(config_path)
        me = config.node(node_id)
        total = count_messages(messages_path, config.ids) if messages_path else 0
        secret = _read_secret(secret_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    listen_at = _parse_listen(listen) if listen else None
    listen_host = listen_at[0] if listen_at else me.host
    if secret is None and not insecure and not is_loopback(listen_host):
        where = f"[{listen_host}]" if ":" in listen_host else listen_host
        raise click.ClickException(
            f"node {node_id} would listen on {where}, which is not a loopback address: "
            f"give the ring's shared secret with --secret-file FILE (or --insecure to accept anyone)"
        )
    messages = iter_numbered_messages(messages_path, config.ids) if messages_path else ()
    journal, to_send = None, total
    if deliveries_path:
        try:
            resumed = resume(node_id, deliveries_path, messages, total)
        except JournalError as exc:
            raise click.ClickException(str(exc)) from None
        for note in resumed.notes:
            click.echo(note, err=True)
        journal, messages, to_send = resumed.journal, resumed.messages, resumed.to_send
    try:
        deliveries = open_deliveries(deliveries_path) if deliveries_path else None
    except OSError as exc:
        raise click.ClickException(f"{deliveries_path}: cannot write the deliveries file: {exc.strerror}") from None
    try:
        undelivered = open_deliveries(undelivered_path) if undelivered_path else None
    except OSError as exc:
        raise click.ClickException(f"{undelivered_path}: cannot write the undelivered file: {exc.strerror}") from None
    node = RingNode(
        config,
        node_id,
        messages=messages,
        deliveries=deliveries,
        options=NodeOptions(
            connect_timeout=connect_timeout, handshake_timeout=handshake_timeout, failure_timeout=failure_timeout,
            undeliverable_after=undeliverable_after,
        ),
        undelivered=undelivered,
        listen=listen_at,
        secret=secret,
        journal=journal,
        to_send=to_send,
    )
    click.echo(f"node {node_id}: joining a ring of {len(config.nodes)} with {to_send} message(s) to send", err=True)
    try:
        serve_until_signal(
            "ring",
            node.serve,
            shutdown=node.shutdown,
            expected=(RingError, ConfigError),
            registry=ring_registry(node),
            metrics=metrics,
        )
    finally:
        if deliveries is not None:
            deliveries.close()
        if undelivered is not None:
            undelivered.close()
        if journal is not None:
            journal.close()
    if node.summary is None:
        click.echo(f"node {node_id}: interrupted before the ring finalized", err=True)
        sys.exit(130)
    _print_summary(node.summary)


def _parse_listen(value: str) -> tuple[str, int]:
    try:
        return parse_host_port(value, allow_port_zero=False)  # the ring file names this port to the others
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None


def _print_summary(summary: Summary) -> None:
    click.echo(
        f"node {summary.node_id}: sent {summary.sent}, delivered to it {summary.delivered}, "
        f"forwarded {summary.forwarded}, never sent {summary.unsent}"
    )
    if summary.ring is not None:
        ring = summary.ring
        how = "on request" if ring.requested else "the ring was quiescent"
        click.echo(
            f"ring finalized ({how}): {ring.nodes} node(s), {ring.sent} message(s) sent, "
            f"{ring.delivered} delivered, {ring.unsent} never sent"
        )


@ring.command()
@_config_option
@click.option(
    "--timeout", type=click.FloatRange(0), default=10.0, show_default=True, metavar="SECONDS", help="How long to wait for node 0."
)
@_secret_option
@log_level_option
def stop(config_path: str, timeout: float, secret_path: str | None) -> None:
    """Ask node 0 to finalize the ring now, gracefully.

    Node 0 waits for the messages in flight to come back, then sends the
    finalization command round the ring; messages not yet sent stay unsent
    (each node reports how many). Returns once node 0 has agreed. A ring
    started with --secret-file accepts the request only with the same file.
    """
    try:
        config = load_config(config_path)
        secret = _read_secret(secret_path)
        trio.run(functools.partial(request_stop, config, secret=secret, timeout=timeout))
    except (ConfigError, RingError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"node 0 at {config.node(0).address} is finalizing the ring")


@ring.command()
@_config_option
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="A table for people, or a JSON list of objects (one per node) for scripts.",
)
@seconds_option(
    "--timeout",
    default=5.0,
    minimum=0.1,
    help="How long each node has to answer (all are asked at once); a node that does not is shown with alive false.",
)
@_secret_option
@log_level_option
def status(config_path: str, output_format: str, timeout: float, secret_path: str | None) -> None:
    """Ask every node of the ring file how it is doing, and print one entry per node.

    \b
    Each entry: id, alive, epoch, cw_token and ccw_token (the node's id when
    it holds that token, node 0 also when parked, else '-'), messages sent,
    delivered to it, waiting (still to send) and undelivered (0 for now).
    A node that cannot be reached, or refuses, is shown alive false, with why.
    A ring started with --secret-file answers only with the same file. Exits 0
    when every node answered, 1 otherwise.
    """
    try:
        config = load_config(config_path)
        secret = _read_secret(secret_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    entries = status_entries(trio.run(functools.partial(request_status, config, secret=secret, timeout=timeout)))
    click.echo(render_json(entries) if output_format == "json" else render_table(entries))
    if not all(entry["alive"] for entry in entries):
        sys.exit(1)


@ring.command()
@click.option("--nodes", type=click.IntRange(1, 64), default=5, show_default=True, help="How many nodes to run.")
@click.option(
    "--messages", "messages_per_node", type=click.IntRange(0), default=4, show_default=True, help="Messages per node."
)
@seconds_option(
    "--pace",
    default=0.05,
    help="Slow each network write by this much, so the tokens can be followed by eye.",
)
@click.option("--seed", type=int, default=None, help="Seed for the generated messages and start order.")
@click.option(
    "--kill",
    "kill_id",
    type=click.IntRange(0),
    default=None,
    metavar="ID",
    help=(
        "Kill node ID once the first message is delivered, and watch the ring recover: its neighbours "
        "bypass it, a new epoch starts, the tokens are regenerated, messages to it wait and are given up. "
        "Node 0 (which alone finalizes) only with --restart-after."
    ),
)
@seconds_option(
    "--restart-after",
    default=None,
    help="With --kill: start the node again this long after, from its journal, and watch it rejoin; "
    "it delivers nothing twice and sends nothing again that already came back.",
)
@seconds_option(
    "--failure-timeout",
    default=1.0,
    minimum=0.1,
    help="With --kill: silence after which a neighbour is taken for dead (as ring join's option).",
)
@seconds_option(
    "--undeliverable-after",
    default=None,
    help="With --kill: how long messages to the dead node wait before they are given up "
    "[default: 3; with --restart-after, that delay plus 10, so that they wait for its return].",
)
def demo(
    nodes: int,
    messages_per_node: int,
    pace: float,
    seed: int | None,
    kill_id: int | None,
    restart_after: float | None,
    failure_timeout: float,
    undeliverable_after: float | None,
) -> None:
    """Run a ring on loopback in this process and watch the tokens and deliveries live.

    Each node gets generated messages; the nodes start in a random order on
    free ports of 127.0.0.1. The view shows where each token is, which message
    it waits for, and the latest deliveries. Exits when node 0 has finalized.
    The links authenticate with a random secret that never leaves the process.

    With --kill ID, node ID stops dead mid-run (its task is cancelled, so its
    sockets close as a killed process's do). The view then shows, live, the
    crash, its neighbours bypassing it, the new epoch with its regenerated
    tokens, and the messages to it given up; node 0 then finalizes the ring
    without it. Example: trionet ring demo --nodes 5 --kill 2

    With --restart-after SECONDS as well, the killed node is started again,
    as ring join with the same arguments would be (from its journal and
    deliveries file), and rejoins between its neighbours; nothing is
    delivered twice. Node 0 can be killed so: the others go on without it,
    and it finalizes once it is back. Example: trionet ring demo --kill 0
    --restart-after 2
    """
    from rich.console import Console

    from trionet import log
    from trionet.ring.demo import run_ring_demo

    if kill_id is not None and kill_id >= nodes:
        raise click.BadParameter(f"node {kill_id} is not in a ring of {nodes} (ids 0 to {nodes - 1})", param_hint="--kill")
    if kill_id is not None and nodes < 3:
        raise click.BadParameter("needs at least 3 nodes, so that two remain", param_hint="--kill")
    if kill_id == 0 and restart_after is None:
        raise click.BadParameter(
            "node 0 finalizes the ring: killing it needs --restart-after, so that it comes back", param_hint="--kill"
        )
    if restart_after is not None and kill_id is None:
        raise click.BadParameter("restarts the node --kill names; give --kill ID too", param_hint="--restart-after")
    if undeliverable_after is None:
        undeliverable_after = 3.0 if restart_after is None else restart_after + 10.0
    log.configure("warning")
    trio.run(
        lambda: run_ring_demo(
            Console(highlight=False), nodes=nodes, messages_per_node=messages_per_node, pace=pace, seed=seed,
            kill=kill_id, restart_after=restart_after, failure_timeout=failure_timeout,
            undeliverable_after=undeliverable_after,
        )
    )
