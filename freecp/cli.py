"""The ``freecp`` command: one Typer app; each command group lives in ``freecp/commands``.

Command modules import the library (torch, pyarrow, the LLM client) inside their functions, so
``freecp --help``, ``--version`` and a mistyped option answer without loading it.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from freecp import __version__
from freecp.commands import benchmark, describe, encode, evaluate, samples, segment, stopping
from freecp.commands.text import TerminalLogHandler

app = typer.Typer(
    name="freecp",
    help="Training-free open-vocabulary segmentation with FreeCP class purification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (segment, benchmark, evaluate, describe, encode, samples):
    module.register(app)
for group in (app, *(info.typer_instance for info in app.registered_groups)):
    for info in group.registered_commands:
        info.callback = stopping.stops_cleanly(info.callback)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"freecp {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Training-free open-vocabulary segmentation with FreeCP class purification."""


def main() -> None:
    stopping.install()
    logging.getLogger("freecp").addHandler(TerminalLogHandler())
    app()
