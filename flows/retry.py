"""Which task failures are worth a retry: a server or bucket that was briefly away, not bad input."""

from __future__ import annotations

from typing import Any

from freecp.clip import WeightsUnavailableError
from freecp.describe.prompts import PromptError
from freecp.stores.embeddings import MissingEmbeddingsError, ModelMismatchError

# A retry cannot fix these: the same input fails the same way (a bad vocabulary or setting is a
# ValueError, a missing folder, weights not on this machine, a store written by another model
# or lacking texts under --no-encode, a broken prompt template).
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    WeightsUnavailableError,
    MissingEmbeddingsError,
    ModelMismatchError,
    PromptError,
)


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the task failed on a permanent error."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, PERMANENT_ERRORS)
