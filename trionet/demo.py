"""``trionet demo``: start each service in-process on free loopback ports and run a short session.

Each service contributes a part: a module ``trionet.<service>.demo`` with
``async def run_demo(console)``. The parts run one after the other in one
trio run, so a newcomer sees every service working in a few seconds.
"""

from __future__ import annotations

import importlib
import time

import click
import trio
from rich.console import Console

__all__ = ["PARTS", "demo", "run_demo"]

PARTS = ("sql", "names", "ring")


async def run_demo(console: Console, parts: tuple[str, ...] = PARTS) -> None:
    """Run the demo parts in order, printing to ``console``."""
    for name in parts:
        module = importlib.import_module(f"trionet.{name}.demo")
        console.rule(f"[bold]trionet {name}")
        started = time.perf_counter()
        await module.run_demo(console)
        console.print(f"[dim]trionet {name}: demo finished in {time.perf_counter() - started:.2f}s[/dim]")


@click.command()
@click.option(
    "--only",
    type=click.Choice(PARTS),
    multiple=True,
    help="Run only this part (repeatable). Default: every part.",
)
def demo(only: tuple[str, ...]) -> None:
    """Start the services locally and run a short scripted session against each.

    Everything runs in this process on free ports of 127.0.0.1: nothing is
    left running afterwards, and nothing leaves this machine.
    """
    from trionet import log

    log.configure("warning")
    console = Console(highlight=False)
    parts = tuple(p for p in PARTS if p in only) if only else PARTS
    trio.run(run_demo, console, parts)
