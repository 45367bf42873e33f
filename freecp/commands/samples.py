"""``freecp samples``: where the shipped sample photos are, for a first run without a dataset."""

from __future__ import annotations

import typer

from freecp.resources import sample_images


def samples() -> None:
    """Print the folder of the shipped sample photos (try: freecp segment "$(freecp samples)" ...)."""
    typer.echo(str(sample_images()))


def register(app: typer.Typer) -> None:
    """Add ``freecp samples``."""
    app.command(name="samples")(samples)
