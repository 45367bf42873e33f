"""Progress bars on stderr for the commands, fed by the library's ``ProgressCallback``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from freecp.progress import ProgressCallback


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressCallback]:
    """A callback that draws one bar per step it is told about (silent when disabled)."""
    display = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
    tasks: dict[str, TaskID] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = display.add_task(what, total=total)
        display.update(tasks[what], completed=done, total=total)

    with display:
        yield report
