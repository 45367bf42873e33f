"""Model keys: the name a CLIP model's text vectors are stored under, computed without torch.

A key names the weights, not the code: ``<model>/<pretrained tag>``, ``<model>/file-<hash>`` for a
local checkpoint, ``<model>/random-seed<n>`` for seeded random weights. ``load_backbone`` and
``freecp encode``'s up-to-date check both call ``model_key``, so a store that already holds a
vocabulary is recognised without building (or importing) the model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from freecp.clip.errors import WeightsUnavailableError
from freecp.weights import is_random

HASH_CHUNK = 1 << 20


def model_key(model_name: str, pretrained: str | None = "openai", checkpoint: str | Path | None = None,
              seed: int = 0) -> str:
    """The store key of a model built from these arguments (a checkpoint wins over the tag).

    Raises ``WeightsUnavailableError`` for a checkpoint file that does not exist.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"checkpoint file {path} does not exist")
        return f"{model_name}/file-{file_hash(path)}"
    if is_random(pretrained):
        return f"{model_name}/random-seed{seed}"
    return f"{model_name}/{pretrained}"


def file_hash(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256, read in chunks (checkpoints are large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
