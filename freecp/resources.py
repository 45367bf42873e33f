"""The folders that ship with freecp (vocabularies, prompts, sample photos, description caches,
model configs).

In a checkout they are the top-level ``vocab/``, ``prompts/``, ``samples/`` and ``descriptions/``
folders, where a user reads and edits them; ``freecp/vocabularies``, ``freecp/prompts``,
``freecp/samples`` and ``freecp/descriptions`` are links to them, so the same names resolve inside the package in a checkout, an editable
install and a wheel (which carries the files themselves). ``importlib.resources`` finds them
wherever freecp is installed, never relative to the current directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

VOCABULARIES = "vocabularies"
PROMPTS = "prompts"
SAMPLES = "samples"
DESCRIPTIONS = "descriptions"  # description caches made for shipped vocabularies, one folder each
MODEL_CONFIGS = "clip/model_configs"


def shipped(folder: str) -> Path:
    """The installed location of one shipped folder (a real directory: freecp is never zipped)."""
    return Path(str(resources.files("freecp").joinpath(folder)))


def sample_images() -> Path:
    """The folder of sample photos that ``freecp segment`` can run on without any dataset."""
    return shipped(SAMPLES)


def shipped_description_cache(vocab_name: str) -> Path | None:
    """The description cache made for the shipped vocabulary ``vocab_name`` (read only), or None."""
    folder = shipped(DESCRIPTIONS) / vocab_name
    return folder if vocab_name.isidentifier() and folder.is_dir() else None
