"""The ``trionet`` command: one click group, a subgroup per service, and ``demo``."""

from __future__ import annotations

import click

from trionet import __version__

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trionet")
def main() -> None:
    """trionet: three network services built on trio.

    \b
      trionet sql     an SQL server over SQLite (the 1995-2015 U.S. earthquake catalogue)
      trionet names   a name server: hosts file, DNS cache, 3 clients at once, a quota each
      trionet ring    a token ring across hosts with two counter-rotating tokens
      trionet demo    start the services locally and run a short session against each

    Run 'trionet COMMAND --help' for the options of each command.
    """


def _register() -> None:
    from trionet.demo import demo
    from trionet.names.cli import names
    from trionet.ring.cli import ring
    from trionet.sql.cli import sql

    main.add_command(sql)
    main.add_command(names)
    main.add_command(ring)
    main.add_command(demo)


_register()
