"""``freecp segment``: segment an image or a folder into masks, overlays and records."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from freecp.commands import exits, options as opt, stopping
from freecp.commands.progress import progress_bars
from freecp.commands.text import shown
from freecp.jobs import FolderJob

console = Console(stderr=True, soft_wrap=True)


@opt.with_jobs(job=FolderJob)
def segment(
    images: Path = typer.Argument(..., help="An image file or a folder (searched recursively)."),
    vocab: str = typer.Option(..., "--vocab", help="Shipped vocabulary name (voc21, ade150, ...) or a file."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/, overlays/, records.parquet."),
    *,
    job: FolderJob,
) -> None:
    """Segment IMAGES against a vocabulary.

    Exit status: 0 all done, 1 some images failed, 2 bad options or inputs, 3 stopped because the
    output disk is full, 4 the output folder or the store cannot be used, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM); the index of what was done is written in every case.
    """
    from freecp.device import DeviceError, parse_device
    from freecp.layout import DiskFullError, LayoutError, UnwritableOutputError, prepare_output
    from freecp.stores.fs import StoreUnusableError, open_root
    from freecp.vocab import VocabularyError, load_vocabulary

    try:  # everything the user can get wrong is checked here, before torch is imported
        vocabulary = load_vocabulary(vocab)
        settings = job.segment.overrides.settings(vocabulary.name)
        clip = replace(job.segment.clip, device=parse_device(job.segment.clip.device))
        job = replace(job, segment=replace(job.segment, clip=clip))
        if not images.exists():
            raise FileNotFoundError(f"{images} does not exist")
        if clip.clip_checkpoint is not None and not Path(clip.clip_checkpoint).is_file():
            raise FileNotFoundError(f"--clip-checkpoint {clip.clip_checkpoint} is not a file")
        prepare_output(out)
        if job.segment.store is not None:
            open_root(job.segment.store)  # the bucket exists and answers these credentials
    except DiskFullError as err:
        _fail(err, code=exits.DISK_FULL)
    except (UnwritableOutputError, StoreUnusableError) as err:
        _fail(err, code=exits.STORAGE)
    except (VocabularyError, DeviceError, LayoutError, FileNotFoundError, ValueError, OSError) as err:
        _fail(err)
    _segment(images, out, vocabulary, settings, job)


def _fail(err: BaseException | str, code: int = exits.BAD_INPUT) -> None:
    console.print(f"[red]error:[/] {shown(str(err))}")
    raise typer.Exit(code) from None


def _segment(images: Path, out: Path, vocabulary, settings, job: FolderJob) -> None:
    """The heavy part: check the device, build the segmenter, run the folder, report."""
    from freecp.build import build_segmenter
    from freecp.clip import WeightsUnavailableError
    from freecp.device import DeviceError, check_device
    from freecp.pipeline import DiskFullError, segment_folder
    from freecp.stores.fs import StoreError, StoreUnusableError
    from freecp.vocab import VocabularyError

    try:
        check_device(job.segment.clip.device)
        with opt.build_feedback(job.segment, console) as on_progress:
            segmenter = build_segmenter(vocabulary, job.segment, settings, on_progress=on_progress)
        with progress_bars() as on_progress:
            summary = segment_folder(segmenter, images, out, on_progress, follow_symlinks=job.follow_symlinks)
    except StoreUnusableError as err:
        _fail(err, code=exits.STORAGE)
    except (VocabularyError, DeviceError, WeightsUnavailableError, StoreError, FileNotFoundError, ValueError) as err:
        _fail(err)
    except DiskFullError as err:
        print_summary(err.summary, out)
        _fail(f"{err.strerror}: the run stopped; finished images are kept (see records above), the others "
              f"were not written. Free some space and run again to do the rest.", code=exits.DISK_FULL)
    except KeyboardInterrupt as err:
        if hasattr(err, "summary"):
            print_summary(err.summary, out)
        _fail(f"{stopping.stopped(err)}: finished images are kept (see records above); run again to do the rest",
              code=stopping.exit_code(err))
    print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(exits.SOME_FAILED)


def print_summary(summary, out: Path) -> None:
    """The run's totals (``freecp.run_report``, as the flow's artifacts have them) on stderr."""
    from freecp.run_report import run_totals

    totals = run_totals([record.to_dict() for record in summary.records], top=8)
    table = Table(title=f"freecp segment -> {out}")
    for column in ("images", "done", "skipped", "failed", "s / image"):
        table.add_column(column)
    table.add_row(str(totals.images), *(str(totals.counts[s]) for s in ("done", "skipped", "failed")),
                  f"{totals.seconds_per_image:.2f}")
    console.print(table)
    if totals.top_classes:
        console.print("classes found most often: " + ", ".join(f"{shown(c)} ({n})" for c, n in totals.top_classes))
    if totals.top_removed:
        console.print("removed by purification most often: "
                      + ", ".join(f"{shown(c)} ({n})" for c, n in totals.top_removed))
    for path, error in totals.failures:
        console.print(f"[red]failed[/] {shown(path)}: {shown(error)}")
    if summary.outside_links:
        console.print(f"{len(summary.outside_links)} symlinks lead outside the images folder and were "
                      f"not followed (--follow-symlinks reads them): "
                      + ", ".join(shown(str(p)) for p in summary.outside_links[:5]))
    if summary.threads is not None:
        console.print(f"threads: {summary.threads.line()}")
    console.print(f"records: {summary.index if summary.index else 'NOT written (see the error above)'}")


def register(app: typer.Typer) -> None:
    """Add ``freecp segment``."""
    app.command(name="segment")(segment)
