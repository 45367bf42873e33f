"""``freecp store check URL [--quarantine]``: find (and move aside) store files no reader can use."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape


def store_check(
    url: Annotated[str, typer.Argument(help="Embedding store or description cache: a folder or s3:// URL.")],
    quarantine: Annotated[bool, typer.Option("--quarantine", help="Move each bad file to quarantine/ in the store.")]
    = False,
) -> None:
    """Read every file of an embedding store and of a description cache; exit 1 if any is bad
    (and still in place: without --quarantine)."""
    from freecp.stores.check import check_store
    from freecp.stores.fs import StoreError

    console = Console(stderr=True, soft_wrap=True)
    try:
        report = check_store(url, quarantine=quarantine)
    except (StoreError, OSError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    for bad in report.bad:
        moved = f" -> moved to {bad.quarantined_to}" if bad.quarantined_to else ""
        console.print(f"[red]bad[/] {escape(bad.path)}: {escape(bad.reason)}{escape(moved)}")
    for key in report.unrecorded:
        console.print(f"[yellow]unrecorded text path[/] {escape(key)}: vectors written before float orders were "
                      f"recorded, from a text tower nobody can name; no run reads them (segment and encode "
                      f"encode their texts once more under their float order); `freecp store ls` shows them")
    console.print(f"{report.url}: {report.checked} files checked, {len(report.bad)} bad"
                  + ("" if quarantine or not report.bad else "; run again with --quarantine to move them aside"))
    if report.bad and not quarantine:
        raise typer.Exit(1)


def register(store_app: typer.Typer) -> None:
    """Add ``freecp store check`` to the ``store`` command group."""
    store_app.command("check")(store_check)
