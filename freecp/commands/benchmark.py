"""``freecp benchmark``: segment a benchmark's validation split with its preset and score it beside
the published numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from freecp.commands import exits, options as opt
from freecp.commands.progress import progress_bars
from freecp.commands.segment import print_summary
from freecp.commands.text import shown
from freecp.evaluate import DATASET_LAYOUTS
from freecp.jobs import SegmentJob

console = Console(stderr=True, soft_wrap=True)


@opt.with_jobs(job=SegmentJob)
def benchmark(
    data_root: Annotated[Path, typer.Argument(help="The dataset's root folder in its standard layout.")],
    dataset: Annotated[str, typer.Option("--dataset", help=f"One of: {', '.join(DATASET_LAYOUTS)}.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: masks/, records, benchmark.json and .md.")],
    limit: Annotated[
        Optional[int], typer.Option("--limit", min=1, help="Only the split's first N images (a partial score).")
    ] = None,
    compare_ap_texts: Annotated[Optional[str], typer.Option(
        "--compare-ap-texts", help="An ablation: one run per AP text control, comma-separated (e.g. "
        "descriptions,names,random), each in its own subfolder of OUT; one table of all.")] = None,
    compare_pamr: Annotated[bool, typer.Option(
        "--compare-pamr", help="An ablation: every run once without and once with PAMR.")] = False,
    *,
    job: SegmentJob,
) -> None:
    """Segment exactly DATA_ROOT's validation split with the dataset's preset, score it as
    mmsegmentation does and compare with the paper; resumes like `freecp segment`. With
    --compare-ap-texts / --compare-pamr, one run per combination and one table of all of them.
    Exits 1 if any image failed."""
    from freecp.benchmark import REPORT_JSON, REPORT_MARKDOWN, BenchmarkError, find_split, run_benchmark
    from freecp.build import build_segmenter
    from freecp.clip import WeightsUnavailableError
    from freecp.evaluate import EvaluationError
    from freecp.layout import DiskFullError, UnwritableOutputError
    from freecp.stores.fs import StoreError, StoreUnusableError
    from freecp.vocab import VocabularyError, load_vocabulary

    try:
        split = find_split(data_root, dataset, limit)
        settings = job.overrides.settings(split.layout.name)
        ablation = compare_ap_texts is not None or compare_pamr
        if ablation:
            controls = compare_ap_texts.split(",") if compare_ap_texts else []
            reports, failed, table = _run_ablation(job, split, settings, controls, compare_pamr, out)
        else:
            with opt.build_feedback(job, console) as on_progress:
                segmenter = build_segmenter(load_vocabulary(split.layout.name), job, settings, on_progress=on_progress)
            with progress_bars() as on_progress:
                report, summary = run_benchmark(segmenter, split, out, job.clip.weights, on_progress)
    except DiskFullError as err:
        _error(err, exits.DISK_FULL)
    except (StoreUnusableError, UnwritableOutputError) as err:
        _error(err, exits.STORAGE)
    except (BenchmarkError, EvaluationError, VocabularyError, WeightsUnavailableError, StoreError,
            FileNotFoundError, ValueError) as err:
        _error(err, exits.BAD_INPUT)
    if ablation:
        _print_ablation(reports)
        console.print(f"table: {table}; each run's report in its subfolder")
        if failed:
            raise typer.Exit(exits.SOME_FAILED)
        return
    print_summary(summary, out)
    _print_comparison(report)
    console.print(f"report: {out / REPORT_MARKDOWN} (per class) and {out / REPORT_JSON}")
    if summary.failed:
        raise typer.Exit(1)


def _error(err: BaseException, code: int) -> None:
    console.print(f"[red]error:[/] {shown(str(err))}")
    raise typer.Exit(code) from None


def _print_comparison(report: dict) -> None:
    """This run's scores above the published mIoU of every method on the same benchmark."""
    metrics, published = report["metrics"], report["published"]
    table = Table(title=f"{report['dataset']}: {report['images_scored']} of {report['images_in_split']} images")
    for column in ("", "mIoU", "mAcc", "aAcc"):
        table.add_column(column)
    table.add_row(f"this run ({report['method'] or 'no published method'})",
                  *(f"{metrics[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc")))
    for method, miou in published["all_methods"].items():
        style = "bold" if method == published["method"] else None
        table.add_row(f"published: {method}", f"{miou:.1f}", "", "", style=style)
    console.print(table)
    for note in report["caveats"]:
        console.print(f"[yellow]note:[/] {note}")


def _run_ablation(job: SegmentJob, split, settings, controls: list[str], both_pamr: bool,
                  out: Path) -> tuple[list[dict], bool, Path]:
    """One benchmark run per combination (``freecp.benchmark.ablation_runs``), each in its own
    subfolder of ``out``: the reports, whether any image failed, and the table's file."""
    from freecp.benchmark import ablation_runs, run_benchmark, write_ablation
    from freecp.build import build_segmenter
    from freecp.vocab import load_vocabulary

    reports, failed = [], False
    for folder, run_settings in ablation_runs(settings, controls, both_pamr):
        console.print(f"run {folder}")
        with opt.build_feedback(job, console) as on_progress:
            segmenter = build_segmenter(load_vocabulary(split.layout.name), job, run_settings, on_progress=on_progress)
        with progress_bars() as on_progress:
            report, summary = run_benchmark(segmenter, split, out / folder, job.clip.weights, on_progress)
        reports.append(report)
        failed = failed or bool(summary.failed)
    return reports, failed, write_ablation(out, reports)


def _print_ablation(reports: list[dict]) -> None:
    """The runs of an ablation as rows of one table."""
    from freecp.benchmark import ABLATION_COLUMNS, RANDOM_WEIGHTS_WARNING, ablation_rows

    first = reports[0]
    table = Table(title=f"{first['dataset']}: ablation ({first['model']})")
    for column in ABLATION_COLUMNS:
        table.add_column(column)
    for row in ablation_rows(reports):
        table.add_row(*row)
    console.print(table)
    if first["random_weights"]:
        console.print(f"[yellow]note:[/] {RANDOM_WEIGHTS_WARNING}")


def benchmark_table(
    runs: Annotated[list[Path], typer.Argument(help="Benchmark output folders, or folders holding them.")],
) -> None:
    """The eight-benchmark table of finished `freecp benchmark` runs above the published rows (markdown)."""
    from freecp.benchmark import BenchmarkError, find_reports, render_table

    try:
        table = render_table(find_reports(runs))
    except (BenchmarkError, OSError, ValueError) as err:
        _error(err, exits.BAD_INPUT)
    typer.echo(table, nl=False)


def register(app: typer.Typer) -> None:
    """Add ``freecp benchmark`` and ``freecp benchmark-table``."""
    app.command(name="benchmark")(benchmark)
    app.command(name="benchmark-table")(benchmark_table)
