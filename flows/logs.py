"""The library's log records (loggers under ``freecp``) in the Prefect run's logs.

The library logs through ``logging.getLogger("freecp....")`` and knows nothing of Prefect.
While a flow declared with ``**LIBRARY_LOG_HOOKS`` runs, one Prefect ``APILogHandler`` is
attached to the ``freecp`` logger of the flow's process, so those records reach the server with
the run (and task run) they came from, as ``PREFECT_LOGGING_EXTRA_LOGGERS=freecp`` would,
without that setting having to be made on every worker. Tasks that may run in another process
(a Dask worker) wrap their body in ``library_logs()``, which attaches the same handler there
for the task's duration. Records from the task runner's threads carry their task run's context;
a thread the library starts itself (the read-ahead and write-behind of ``segment_folder``, not
used by the flows) has none, and Prefect drops its records with a warning. Outside flow runs
nothing is attached: library calls in plain Python never try to talk to a Prefect API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from prefect.logging.handlers import APILogHandler

LIBRARY_LOGGER = "freecp"
_lock = threading.Lock()
_runs: set[UUID] = set()  # flow runs of this process that are routing (subflows nest)
_users = 0                # flow runs and tasks of this process that need the handler now
_handler: APILogHandler | None = None


def _acquire() -> None:
    global _handler, _users
    with _lock:
        _users += 1
        if _handler is None:
            library = logging.getLogger(LIBRARY_LOGGER)
            _handler = APILogHandler(level=logging.INFO)
            library.addHandler(_handler)
            if library.level == logging.NOTSET:
                library.setLevel(logging.INFO)


def _release() -> None:
    global _handler, _users
    with _lock:
        _users -= 1
        if not _users and _handler is not None:
            logging.getLogger(LIBRARY_LOGGER).removeHandler(_handler)
            _handler = None


@contextmanager
def library_logs() -> Iterator[None]:
    """Route the library's records to Prefect while the block runs (in whatever process)."""
    _acquire()
    try:
        yield
    finally:
        _release()


def _attach(flow: Any, flow_run: Any, state: Any) -> None:
    with _lock:
        starting = flow_run.id not in _runs
        _runs.add(flow_run.id)
    if starting:
        _acquire()


def _detach(flow: Any, flow_run: Any, state: Any) -> None:
    with _lock:
        ending = flow_run.id in _runs
        _runs.discard(flow_run.id)
    if ending:
        _release()


# Attach when a run starts, detach however it ends.
LIBRARY_LOG_HOOKS: dict[str, list] = {
    "on_running": [_attach],
    **{end: [_detach] for end in ("on_completion", "on_failure", "on_crashed", "on_cancellation")},
}
