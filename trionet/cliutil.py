"""Command-line helpers shared by the services: common options and the server runner.

Every ``serve`` command takes the same ``--host``, ``--log-level`` and
``--grace`` options and shuts down the same way on SIGINT/SIGTERM, so they are
defined once here.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import trio
from prometheus_client import CollectorRegistry

from trionet import log
from trionet.addresses import format_address, parse_host_port
from trionet.errors import leaves
from trionet.metrics import new_registry, serve_metrics, summary_lines
from trionet.serving import ListenError

T = TypeVar("T")

__all__ = [
    "describe_os_error",
    "count_option",
    "distinct_ports",
    "grace_option",
    "host_option",
    "log_level_option",
    "metrics_option",
    "port_option",
    "seconds_option",
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


def seconds_option(
    flag: str,
    *,
    default: float | None,
    help: str,
    minimum: float = 0,
    whole: bool = False,
    positive: bool = False,
    dest: str | None = None,
) -> Callable:
    """A duration option, the same everywhere: metavar ``SECONDS``, the default shown, at least ``minimum``.

    Args:
        flag: ``--name``.
        default: seconds; None for an option that is off unless given, or
            whose default depends on other options (the help says which).
        help: what it bounds; say what 0 means where 0 is allowed.
        minimum: the smallest value accepted.
        whole: whole seconds only (a TTL).
        positive: more than ``minimum``, not equal to it (a timeout where 0 means nothing sensible).
        dest: the parameter's name, when not derived from ``flag``.
    """
    kind = click.IntRange(int(minimum), min_open=positive) if whole else click.FloatRange(minimum, min_open=positive)
    names = (flag,) if dest is None else (flag, dest)
    return click.option(
        *names, type=kind, default=default, show_default=default is not None, metavar="SECONDS", help=help
    )


def count_option(flag: str, *, default: int | None, unit: str, help: str, minimum: int = 0) -> Callable:
    """A whole-number limit, the same everywhere: metavar ``unit`` (BYTES, N, ...), the default shown.

    A default of None is not shown (the help says what it is instead).
    """
    return click.option(
        flag, type=click.IntRange(minimum), default=default, show_default=default is not None, metavar=unit, help=help
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


async def _run_until_signal(
    main: Callable[[], Awaitable[T]],
    *,
    on_stop: Callable[[int], None],
    on_reload: Callable[[], None] | None,
    on_report: Callable[[], None],
) -> T:
    """Run ``await main()`` while handling signals; return what ``main`` returns.

    SIGINT/SIGTERM call ``on_stop(signum)`` (a second one cancels everything
    at once), SIGHUP ``on_reload()`` when given, SIGUSR1 ``on_report()``.
    """
    wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1] + ([signal.SIGHUP] if on_reload is not None else [])
    with trio.open_signal_receiver(*wanted) as signals:
        async with trio.open_nursery() as nursery:

            async def _watch() -> None:
                stops = 0
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        on_reload()
                    elif signum == signal.SIGUSR1:
                        on_report()
                    else:
                        stops += 1
                        if stops == 1:
                            on_stop(signum)
                        else:
                            nursery.cancel_scope.cancel()

            nursery.start_soon(_watch)
            result = await main()
            nursery.cancel_scope.cancel()
    return result


def serve_until_signal(
    name: str,
    main: Callable[[], Awaitable[T]],
    *,
    shutdown: Callable[[float], None],
    grace: float | None = None,
    reload: Callable[[], None] | None = None,
    expected: tuple[type[BaseException], ...] = (),
    registry: CollectorRegistry | None = None,
    metrics: tuple[str, int] | None = None,
) -> T:
    """The body of every ``trionet ... serve`` and ``ring join`` command: run a service until a signal.

    Runs ``await main()`` in ``trio.run``. The first SIGINT or SIGTERM is
    logged and calls ``shutdown(grace)`` (stop accepting, let work in hand
    finish within ``grace`` seconds); a second one cancels everything.
    SIGHUP calls ``reload()`` when one is given. SIGUSR1 logs every figure of
    ``registry`` as one block, as dnsmasq does.

    Args:
        name: the service, for the log (``trionet.NAME``).
        main: starts and runs the service, e.g. ``functools.partial(server.serve, host, port)``.
        shutdown: called with ``grace`` on the first stop signal.
        grace: seconds running requests may take at shutdown; None where the
            service decides itself (the ring finalizes).
        reload: called on SIGHUP; without it SIGHUP keeps its default action.
        expected: exception types that are the service's own start-up or run
            failures (a ring that cannot form, say): shown as one line.
        registry: the service's metrics (:mod:`trionet.metrics`); a process-only one when None.
        metrics: ``(host, port)`` to serve ``registry`` at ``/metrics`` (``--metrics``).

    Returns:
        What ``main`` returned, after a graceful shutdown.

    Error handling:
        A failure people hit at start (the port in use, an address that is
        not local, a low port without privileges; see
        :func:`describe_os_error`) and every ``expected`` exception become a
        one-line ``click.ClickException`` (exit status 1), however deeply
        trio's nurseries grouped them. Anything else, and everything under
        ``--log-level debug``, keeps its traceback.
    """
    logger = log.get_logger(name)
    registry = registry if registry is not None else new_registry()

    def _on_stop(signum: int) -> None:
        detail = f" (grace {grace:.1f}s)" if grace is not None else ""
        logger.info("%s: shutting down%s", signal.Signals(signum).name, detail)
        shutdown(grace if grace is not None else 0.0)

    def _on_reload() -> None:
        logger.info("SIGHUP: reloading")
        reload()

    def _on_report() -> None:
        logger.info("SIGUSR1: figures\n%s", "\n".join("    " + line for line in summary_lines(registry)))

    async def _main() -> T:
        async with trio.open_nursery() as nursery:
            if metrics is not None:
                await nursery.start(functools.partial(serve_metrics, registry, *metrics, logger=logger))
            result = await _run_until_signal(
                main, on_stop=_on_stop, on_reload=_on_reload if reload else None, on_report=_on_report
            )
            nursery.cancel_scope.cancel()
        return result

    try:
        return trio.run(_main)
    except (OSError, BaseExceptionGroup, *expected) as exc:
        found = list(leaves(exc))
        if logger.isEnabledFor(logging.DEBUG) or not all(isinstance(e, (OSError, *expected)) for e in found):
            raise
        lines = dict.fromkeys(describe_os_error(e) if isinstance(e, OSError) else str(e) for e in found)
        raise click.ClickException("; ".join(lines)) from None


def metrics_option(fn: Callable) -> Callable:
    """``--metrics HOST:PORT``: serve Prometheus metrics at ``http://HOST:PORT/metrics``."""
    return click.option(
        "--metrics",
        metavar="HOST:PORT",
        callback=_parse_host_port,
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free one, logged). "
        "SIGUSR1 logs the same figures either way.",
    )(fn)


def _parse_host_port(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; for example 127.0.0.1:9401") from None


def describe_os_error(exc: OSError) -> str:
    """One line for a start-up failure: what went wrong, and what to try.

    A :class:`~trionet.serving.ListenError` names the address it could not
    listen on.
    """
    where = f"cannot listen on {format_address(exc.address)}" if isinstance(exc, ListenError) else "error"
    hint = _HINTS.get(exc.errno or 0)
    if isinstance(exc, socket.gaierror) or isinstance(exc.__cause__, socket.gaierror):
        hint = "the host name does not resolve: give an IP address such as 127.0.0.1 or 0.0.0.0"
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" + (f"; {hint}" if hint else "")


_HINTS = {
    errno.EADDRINUSE: "another process listens there: stop it, or choose another port (0 picks a free one)",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's: use 127.0.0.1 (this machine only), "
    "0.0.0.0 (every interface) or an address of one of its interfaces",
    errno.EACCES: "ports below 1024 need root (or CAP_NET_BIND_SERVICE): choose a port of 1024 or more",
    errno.EPERM: "ports below 1024 need root (or CAP_NET_BIND_SERVICE): choose a port of 1024 or more",
}


def distinct_ports(**ports: int) -> None:
    """Fail with a usage error when two of the named ``--OPTION`` ports are the same non-zero port."""
    seen: dict[int, str] = {}
    for option, port in ports.items():
        flag = "--" + option.replace("_", "-")
        if port and port in seen:
            raise click.UsageError(f"{seen[port]} and {flag} are both {port}: each port needs its own number")
        seen.setdefault(port, flag)
