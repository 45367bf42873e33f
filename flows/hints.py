"""Error messages worded for a Prefect run: its remedies name deployment parameters, not CLI flags."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from freecp.clip.errors import PREFECT_PARAMETER_NAMES, WeightsUnavailableError


@contextmanager
def prefect_wording() -> Iterator[None]:
    """Re-raise missing CLIP weights with ``--param clip_checkpoint=...`` / ``--param pretrained=none``."""
    try:
        yield
    except WeightsUnavailableError as err:
        raise err.reworded(PREFECT_PARAMETER_NAMES) from None
