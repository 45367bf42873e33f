"""``freecp eval`` and ``freecp eval-dataset``: score predicted label maps, print JSON to stdout."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from freecp.commands.text import shown
from freecp.evaluate import (
    DATASET_LAYOUTS,
    IGNORE_INDEX,
    EvaluationError,
    class_names_of,
    evaluate_dataset,
    evaluate_folders,
    rounded_for_json,
)
from freecp.vocab import VocabularyError

_stderr = Console(stderr=True)

AllowMissing = Annotated[
    bool,
    typer.Option("--allow-missing", help="Score the images that have predictions instead of refusing."),
]


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``eval-dataset`` to the app."""
    app.command(name="eval")(eval_folders)
    app.command(name="eval-dataset")(eval_dataset)


def eval_folders(
    pred_dir: Annotated[Path, typer.Argument(help="Predicted label maps (or a `freecp segment` output folder).")],
    gt_dir: Annotated[Path, typer.Argument(help="Ground-truth label maps; paired by relative path without extension.")],
    num_classes: Annotated[int, typer.Option("--num-classes", min=1, help="Number of classes.")],
    ignore_index: Annotated[int, typer.Option("--ignore-index", help="Ground-truth value to skip.")] = IGNORE_INDEX,
    reduce_zero_label: Annotated[
        bool, typer.Option("--reduce-zero-label", help="Ground truth 0 is ignored and other labels shift down by one.")
    ] = False,
    class_names: Annotated[
        Optional[str], typer.Option("--class-names", help="Vocabulary name or file naming the classes in label order.")
    ] = None,
    allow_missing: AllowMissing = False,
) -> None:
    """mIoU, mAcc and aAcc (percent, as mmsegmentation computes them) of a prediction folder."""
    with _user_errors():
        names = class_names_of(class_names) if class_names else None
        with _progress() as progress:
            result = evaluate_folders(
                pred_dir, gt_dir, num_classes, ignore_index, reduce_zero_label, names, allow_missing, progress
            )
    _print(result)


def eval_dataset(
    pred_dir: Annotated[Path, typer.Argument(help="Masks written by `freecp segment DATA_ROOT/<image dir>`.")],
    data_root: Annotated[Path, typer.Argument(help="The dataset's root folder in its standard layout.")],
    dataset: Annotated[str, typer.Option("--dataset", help=f"One of: {', '.join(DATASET_LAYOUTS)}.")],
    all_annotations: Annotated[
        bool, typer.Option("--all-annotations", help="Score every annotation, ignoring the split list.")
    ] = False,
    allow_missing: AllowMissing = False,
) -> None:
    """mIoU on a standard benchmark (VOC, Context, COCO-Object, COCO-Stuff, ADE20K, Cityscapes)."""
    with _user_errors():
        with _progress() as progress:
            result = evaluate_dataset(pred_dir, data_root, dataset, not all_annotations, allow_missing, progress)
    _print(result)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a bad input into one line on stderr and exit code 1, without a traceback."""
    try:
        yield
    except (EvaluationError, VocabularyError) as err:
        _stderr.print(f"error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (stdout stays pure JSON) fed by the evaluator's callback."""
    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=_stderr, transient=True, disable=not _stderr.is_terminal,
    ) as bar:
        task = bar.add_task("scoring", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _print(result: dict) -> None:
    """JSON on stdout, numbers rounded as mmseg prints them, NaN as null; the same numbers as a
    per-class table on stderr, for a person (stdout stays pure JSON)."""
    rounded = rounded_for_json(result)
    typer.echo(json.dumps(rounded, indent=2, ensure_ascii=False))
    _stderr.print(_class_table(rounded))


def _class_table(result: dict) -> Table:
    """One row per class (IoU and Acc in percent, "-" where the ground truth never has the class)."""
    table = Table(title=f"mIoU {_cell(result['mIoU'])}   mAcc {_cell(result['mAcc'])}   aAcc {_cell(result['aAcc'])}")
    for header in ("#", "class", "IoU", "Acc", "pixels"):
        table.add_column(header, justify="left" if header == "class" else "right")
    for row in result["per_class"]:
        table.add_row(str(row["index"]), shown(str(row["name"])), _cell(row["IoU"]), _cell(row["Acc"]),
                      str(row["pixels"]))
    return table


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
