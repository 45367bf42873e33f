"""Progress bars on stderr for the commands, fed by the library's ``ProgressCallback``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from freecp.commands.text import safe
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


@contextmanager
def library_log_lines(logger: str, console: Console) -> Iterator[None]:
    """Print the INFO lines of a library logger (e.g. "starting a local LLM server") on ``console``
    while the block runs; the library itself only logs."""
    handler = _ConsoleHandler(console)
    library = logging.getLogger(logger)
    previous, propagates = library.level, library.propagate
    library.addHandler(handler)
    library.propagate = False  # printed here, not a second time by the command's own warning handler
    if library.getEffectiveLevel() > logging.INFO:
        library.setLevel(logging.INFO)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(previous)
        library.propagate = propagates


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(safe(record.getMessage()), markup=False, highlight=False)
