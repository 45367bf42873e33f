"""Which task failures are worth a retry: a server or bucket that was briefly away, never bad input."""

from __future__ import annotations

from typing import Any

from freecp.describe.client import LLMUnavailableError
from freecp.stores.descriptions import DescriptionCacheError
from freecp.stores.embeddings import EmbeddingStoreError
from freecp.stores.fs import StoreError

# Store errors that say what is in the store, not that it was unreachable.
PERMANENT_STORE_ERRORS: tuple[type[BaseException], ...] = (EmbeddingStoreError, DescriptionCacheError)

# Only these are worth a retry: a server, bucket or connection that was briefly away. Everything
# else (a bad setting is a ValueError, a missing file, weights not on this machine, a store written
# by another model, a broken prompt, and any error a bad input raises, such as the RuntimeError of
# a convolution on a too-small image) fails the same way again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    StoreError,
    LLMUnavailableError,
)


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task failed on a transient error."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, PERMANENT_STORE_ERRORS)
