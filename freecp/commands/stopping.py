"""Ctrl-C and SIGTERM end every command alike: what was done is kept (a segment run writes its
index), one line says so, and the exit status tells which it was (130 Ctrl-C, 143 SIGTERM, as a
shell reports a process those signals ended).

SIGTERM is what Kubernetes, systemd, Docker and Prefect's cancellation send; ``install`` turns it
into ``Terminated``, a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C runs for it too.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from freecp.commands.exits import INTERRUPTED, TERMINATED


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def install() -> None:
    """Make SIGTERM raise ``Terminated`` in the main thread (the commands' entry point calls this)."""
    signal.signal(signal.SIGTERM, raise_terminated)


def exit_code(err: KeyboardInterrupt) -> int:
    return TERMINATED if isinstance(err, Terminated) else INTERRUPTED


def stopped(err: KeyboardInterrupt) -> str:
    """How the one line names the stop."""
    return "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"


def stops_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with Ctrl-C and SIGTERM ending it in one line and 130 or 143, for commands that
    have nothing of their own to say when stopped (Typer would print "Aborted!" and exit 1)."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as err:
            Console(stderr=True).print(f"{stopped(err)}: stopped before the end", highlight=False)
            raise typer.Exit(exit_code(err)) from None
    return run
