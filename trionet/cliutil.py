"""Command-line helpers shared by the services: common options and the server runner.

Every ``serve`` command takes the same ``--host``, ``--log-level`` and
``--grace`` options and shuts down the same way on SIGINT/SIGTERM, so they are
defined once here.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import click
import trio

from trionet import log
from trionet.serving import TCPService, format_address

__all__ = [
    "grace_option",
    "host_option",
    "log_level_option",
    "port_option",
    "run_until_signal",
    "serve_until_signal",
]


def log_level_option(fn: Callable) -> Callable:
    """Add ``--log-level`` and configure logging before the command runs."""

    def _callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
        log.configure(value)
        return value

    return click.option(
        "--log-level",
        type=click.Choice(log.LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        expose_value=False,
        is_eager=True,
        callback=_callback,
        help="How much to log on stderr. 'info' logs one line per connection opened and closed.",
    )(fn)


def host_option(default: str = "127.0.0.1", *, serving: bool = False) -> Callable:
    """``--host``: the address to listen on (servers) or to connect to (clients)."""
    help_text = (
        "Address to listen on. 127.0.0.1 accepts local clients only; 0.0.0.0 accepts any IPv4 client."
        if serving
        else "Address of the server."
    )
    return click.option("--host", default=default, show_default=True, help=help_text)


def port_option(default: int, *, serving: bool = False) -> Callable:
    """``--port``: the TCP port to listen on (servers) or to connect to (clients)."""
    help_text = "TCP port to listen on; 0 picks a free one." if serving else "TCP port of the server."
    return click.option(
        "--port", type=click.IntRange(0, 65535), default=default, show_default=True, help=help_text
    )


def grace_option(fn: Callable) -> Callable:
    """``--grace SECONDS``: how long running requests may finish at shutdown."""
    return click.option(
        "--grace",
        type=click.FloatRange(0),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help="On SIGINT or SIGTERM, stop accepting and give running requests this long to finish.",
    )(fn)


async def run_until_signal(main: Callable, *, on_signal: Callable[[int], None]) -> None:
    """Run ``await main(task_status=...)`` and call ``on_signal(signum)`` on SIGINT/SIGTERM.

    A second signal cancels everything at once. Returns when ``main`` returns.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def _watch() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        on_signal(signum)
                    else:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(_watch)
            await main()
            nursery.cancel_scope.cancel()


def serve_until_signal(service: TCPService, host: str, port: int, grace: float, *, backlog=None) -> None:
    """Run ``service`` on ``host``:``port`` until SIGINT or SIGTERM, then drain it within ``grace``.

    This is the body of every ``trionet ... serve`` command; it returns
    normally after a graceful shutdown, so the command exits 0.
    """
    logger = log.get_logger(service.name)

    def _on_signal(signum: int) -> None:
        logger.info("%s: shutting down (grace %.1fs)", signal.Signals(signum).name, grace)
        service.shutdown(grace)

    async def _main() -> None:
        await run_until_signal(
            lambda: service.serve(host, port, backlog=backlog), on_signal=_on_signal
        )

    try:
        trio.run(_main)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {format_address((host, port))}: {exc.strerror or exc}")
