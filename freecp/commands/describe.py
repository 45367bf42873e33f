"""Placeholder until this command group is written."""

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
