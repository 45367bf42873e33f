"""The library's log records (loggers under ``freecp``) in the Prefect run's logs.

The library logs through ``logging.getLogger("freecp....")`` and knows nothing of Prefect.
While a flow declared with ``**LIBRARY_LOG_HOOKS`` runs, one Prefect ``APILogHandler`` is
attached to the ``freecp`` logger, so those records reach the server with the run (and task run)
they came from, as ``PREFECT_LOGGING_EXTRA_LOGGERS=freecp`` would, without that setting having to
be made on every worker. Outside flow runs nothing is attached: library calls in plain Python
never try to talk to a Prefect API.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from uuid import UUID

from prefect.logging.handlers import APILogHandler

LIBRARY_LOGGER = "freecp"
_lock = threading.Lock()
_runs: set[UUID] = set()  # flow runs of this process that are routing (subflows nest)
_handler: APILogHandler | None = None


def _attach(flow: Any, flow_run: Any, state: Any) -> None:
    global _handler
    with _lock:
        _runs.add(flow_run.id)
        if _handler is None:
            library = logging.getLogger(LIBRARY_LOGGER)
            _handler = APILogHandler(level=logging.INFO)
            library.addHandler(_handler)
            if library.level == logging.NOTSET:
                library.setLevel(logging.INFO)


def _detach(flow: Any, flow_run: Any, state: Any) -> None:
    global _handler
    with _lock:
        _runs.discard(flow_run.id)
        if not _runs and _handler is not None:
            logging.getLogger(LIBRARY_LOGGER).removeHandler(_handler)
            _handler = None


# Attach when a run starts, detach however it ends.
LIBRARY_LOG_HOOKS: dict[str, list] = {
    "on_running": [_attach],
    **{end: [_detach] for end in ("on_completion", "on_failure", "on_crashed", "on_cancellation")},
}
