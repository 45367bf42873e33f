"""``freecp segment``: segment an image or a folder into masks, overlays and records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freecp.commands import options as opt

console = Console(stderr=True, soft_wrap=True)


@opt.with_segmentation_options
def segment(
    images: Path = typer.Argument(..., help="An image file or a folder (searched recursively)."),
    vocab: str = typer.Option(..., "--vocab", help="Shipped vocabulary name (voc21, ade150, ...) or a file."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/, overlays/, records.parquet."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks",
                                         help="Also read symlinks that lead outside IMAGES (default: left out)."),
    *,
    options: opt.SegmentationOptions,
) -> None:
    """Segment IMAGES against a vocabulary.

    Exit status: 0 all done, 1 some images failed, 2 bad options or inputs, 3 stopped because the
    output disk is full, 130 interrupted (the index of what was done is written in every case).
    """
    from freecp.device import DeviceError, parse_device
    from freecp.layout import LayoutError, prepare_output
    from freecp.vocab import VocabularyError, load_vocabulary

    try:  # everything the user can get wrong is checked here, before torch is imported
        vocabulary = load_vocabulary(vocab)
        settings = options.settings(vocabulary.name)
        options = dataclasses.replace(options, device=parse_device(options.device))
        if not images.exists():
            raise FileNotFoundError(f"{images} does not exist")
        if options.clip_checkpoint is not None and not options.clip_checkpoint.is_file():
            raise FileNotFoundError(f"--clip-checkpoint {options.clip_checkpoint} is not a file")
        prepare_output(out)
    except (VocabularyError, DeviceError, LayoutError, FileNotFoundError, ValueError, OSError) as err:
        _fail(err)
    _segment(images, out, vocabulary, settings, options, follow_symlinks)


def _fail(err: BaseException | str, code: int = 2) -> None:
    console.print(f"[red]error:[/] {escape(str(err))}")
    raise typer.Exit(code) from None


def _segment(images: Path, out: Path, vocabulary, settings, options: opt.SegmentationOptions,
             follow_symlinks: bool) -> None:
    """The heavy part: check the device, build the segmenter, run the folder, report."""
    from freecp.clip import WeightsUnavailableError
    from freecp.device import DeviceError, check_device
    from freecp.pipeline import DiskFullError, segment_folder
    from freecp.stores.fs import StoreError
    from freecp.vocab import VocabularyError

    try:
        check_device(options.device)
        segmenter = options.open_segmenter(vocabulary, settings, console)
        summary = segment_folder(segmenter, images, out, follow_symlinks=follow_symlinks)
    except (VocabularyError, DeviceError, WeightsUnavailableError, StoreError, FileNotFoundError, ValueError) as err:
        _fail(err)
    except DiskFullError as err:
        print_summary(err.summary, out)
        _fail(f"{err.strerror}: the run stopped; finished images are kept (see records above), the others "
              f"were not written. Free some space and run again to do the rest.", code=3)
    except KeyboardInterrupt as err:
        if hasattr(err, "summary"):
            print_summary(err.summary, out)
        _fail("interrupted: finished images are kept (see records above); run again to do the rest", code=130)
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
        console.print(f"[red]failed[/] {escape(record.path)}: {escape(record.error)}")
    if claimed := summary.count("claimed"):
        console.print(f"{claimed} images were being segmented by another run on this folder; it records them")
    if summary.outside_links:
        console.print(f"{len(summary.outside_links)} symlinks lead outside the images folder and were "
                      f"not followed (--follow-symlinks reads them): "
                      + ", ".join(escape(str(p)) for p in summary.outside_links[:5]))
    if summary.threads is not None:
        console.print(f"threads: {summary.threads.line()}")
    console.print(f"records: {summary.index if summary.index else 'NOT written (see the error above)'}")


def register(app: typer.Typer) -> None:
    """Add ``freecp segment``."""
    app.command(name="segment")(segment)
