"""The folders that ship with freecp (vocabularies, prompts, sample photos, model configs).

In a checkout they are the top-level ``vocab/``, ``prompts/`` and ``samples/`` folders, where a
user reads and edits them; ``freecp/vocabularies``, ``freecp/prompts`` and ``freecp/samples``
are links to them, so the same names resolve inside the package in a checkout, an editable
install and a wheel (which carries the files themselves). ``importlib.resources`` finds them
wherever freecp is installed, never relative to the current directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

VOCABULARIES = "vocabularies"
PROMPTS = "prompts"
SAMPLES = "samples"
MODEL_CONFIGS = "clip/model_configs"


def shipped(folder: str) -> Path:
    """The installed location of one shipped folder (a real directory: freecp is never zipped)."""
    return Path(str(resources.files("freecp").joinpath(folder)))


def sample_images() -> Path:
    """The folder of sample photos that ``freecp segment`` can run on without any dataset."""
    return shipped(SAMPLES)
