"""The ``freecp`` command: one Typer app; each command group lives in ``freecp/commands``."""

from __future__ import annotations

import typer

from freecp.commands import benchmark, describe, encode, evaluate, segment

app = typer.Typer(
    name="freecp",
    help="Training-free open-vocabulary segmentation with FreeCP class purification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (segment, benchmark, evaluate, describe, encode):
    module.register(app)


def main() -> None:
    app()
