"""Command-line options made from the job specs' fields (``freecp.jobs``), and what a segmenting
command shows while its segmenter is built.

``with_jobs(job=SegmentJob)`` gives a command one Typer option per leaf field of the spec, with
the field's type, default, help and bounds, and calls it with the rebuilt spec: the options are
declared once, in the spec, for the CLI and the flows alike.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, get_args

import typer
from rich.console import Console

from freecp.commands.progress import progress_bars
from freecp.flatten import JobField, signed, with_job_parameters
from freecp.jobs import SegmentJob
from freecp.progress import ProgressCallback


def typer_option(f: JobField) -> inspect.Parameter:
    """A spec field as a keyword-only Typer option (``--name``, or the field's own flag)."""
    declared = [f.flag] if f.flag else [f"--{f.name.replace('_', '-')}"]
    info = typer.Option(*declared, help=f.help, min=f.minimum, max=f.maximum, envvar=f.envvar)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                             annotation=Annotated[f.annotation, info])


# Old option names kept for one release, hidden from --help: the old name, the field it sets.
RENAMED = {"backbone": "variant"}


def with_jobs(**specs: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give the decorated command every field of each spec as an option (see the module docstring),
    and the old names of renamed ones (``RENAMED``), which set the field with a one-line notice."""
    flatten = with_job_parameters(specs, typer_option)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        command = flatten(fn)
        signature = inspect.signature(command)
        renamed = {old: new for old, new in RENAMED.items() if new in signature.parameters}
        if not renamed:
            return command

        def with_old_names(*args: Any, **values: Any) -> Any:
            for old, new in renamed.items():
                given = values.pop(old)
                if given is not None:
                    typer.echo(f"warning: --{old} is deprecated and goes in the next release; "
                               f"use --{new.replace('_', '-')}", err=True)
                    values[new] = given
            return command(*args, **values)

        old_options = [inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            get_args(signature.parameters[new].annotation)[0] | None,  # the new option's type, unwrapped
            typer.Option(f"--{old}", hidden=True)]) for old, new in renamed.items()]
        return signed(with_old_names, command,
                      signature.replace(parameters=[*signature.parameters.values(), *old_options]))

    return decorate


@contextmanager
def build_feedback(job: SegmentJob, console: Console) -> Iterator[ProgressCallback]:
    """What a user sees while ``freecp.build.build_segmenter`` runs in this block: progress bars
    for any encoding (the callback yielded), and random weights announced once, on ``console``,
    instead of as a Python warning."""
    with warnings.catch_warnings(), progress_bars() as on_progress:
        warnings.simplefilter("ignore")  # the random-weights warning is printed once, below
        yield on_progress
    if job.clip.weights.random:
        console.print("[yellow]warning: random CLIP weights: the masks are meaningless (tests only)[/]")
