"""``freecp segment``: segment an image or a folder into masks, overlays and records."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from freecp.commands import options as opt
from freecp.commands.options import DEFAULT_STORE  # noqa: F401  (the flows import it from here)

console = Console(stderr=True, soft_wrap=True)


@opt.with_segmentation_options
def segment(
    images: Path = typer.Argument(..., help="An image file or a folder (searched recursively)."),
    vocab: str = typer.Option(..., "--vocab", help="Shipped vocabulary name (voc21, ade150, ...) or a file."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/, overlays/, records.parquet."),
    *,
    options: opt.SegmentationOptions,
) -> None:
    """Segment IMAGES against a vocabulary; exits 1 if any image failed."""
    from freecp.clip import WeightsUnavailableError
    from freecp.pipeline import segment_folder
    from freecp.stores.fs import StoreError
    from freecp.vocab import VocabularyError, load_vocabulary

    try:
        vocabulary = load_vocabulary(vocab)
        settings = options.settings(vocabulary.name)
        if not images.exists():
            raise FileNotFoundError(f"{images} does not exist")
        segmenter = options.open_segmenter(vocabulary, settings, console)
        summary = segment_folder(segmenter, images, out)
    except (VocabularyError, WeightsUnavailableError, StoreError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(1)


def print_summary(summary, out: Path) -> None:
    """The run's counts, the classes found and removed most often, and every failure, on stderr."""
    done, skipped, failed = summary.count("done"), summary.count("skipped"), summary.count("failed")
    table = Table(title=f"freecp segment -> {out}")
    table.add_column("images")
    table.add_column("done")
    table.add_column("skipped")
    table.add_column("failed")
    table.add_column("s / image")
    table.add_row(str(len(summary.records)), str(done), str(skipped), str(failed),
                  f"{summary.seconds / max(done, 1):.2f}")
    console.print(table)
    if summary.top_classes():
        console.print("classes found most often: " + ", ".join(f"{c} ({n})" for c, n in summary.top_classes(8)))
    if summary.top_removed():
        console.print("removed by purification most often: "
                      + ", ".join(f"{c} ({n})" for c, n in summary.top_removed(8)))
    for record in summary.failed:
        console.print(f"[red]failed[/] {record.path}: {record.error}")
    if summary.threads is not None:
        console.print(f"threads: {summary.threads.line()}")
    console.print(f"records: {summary.index}")


def register(app: typer.Typer) -> None:
    """Add ``freecp segment``."""
    app.command(name="segment")(segment)
