"""Weights requests: what a run asked the CLIP layer for, named without torch.

A model key (``ClipBackbone.model_key``) names what ``freecp.build.create_backbone`` built; since checkpoint
activation detection (``freecp.clip.activation``) it depends on open_clip's configs and registry,
and for some files on their tensors, so it cannot be worked out without torch. A *request*
can: the model name, the tag (or the checkpoint file's content hash), the seed, the activation
choice, the float order (the text tower's path), and the freecp and open_clip versions whose
rules turn a request into a key. The embedding store remembers which text key
(``freecp.text_keys``) each request was resolved to (``EmbeddingStore.remember_key``),
so ``freecp encode`` re-run on an encoded vocabulary decides without building (or importing) the model.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import freecp
from freecp.clip.errors import WeightsUnavailableError
from freecp.jobs import ClipModel
from freecp.settings import SegmentSettings
from freecp.weights import is_random

HASH_CHUNK = 1 << 20


def weights_request(clip: ClipModel, float_order: str = SegmentSettings.float_order, seed: int = 0) -> str:
    """The request ``create_backbone(clip, float_order=..., seed=...)`` makes, as one string (a
    checkpoint wins over the tag; the device is left out: it does not change the vectors' key).

    The float order is part of it: it picks the text tower's path, so the text key it resolves to.

    Raises ``WeightsUnavailableError`` for a checkpoint file that does not exist.
    """
    if clip.clip_checkpoint is not None:
        path = Path(clip.clip_checkpoint).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"checkpoint file {path} does not exist")
        weights = f"file-{file_hash(path)}"
    else:
        weights = f"random-seed{seed}" if is_random(clip.pretrained) else f"tag-{clip.pretrained}"
    return (f"{clip.model}|{weights}|quick_gelu={clip.quick_gelu}|float_order={float_order}"
            f"|freecp {freecp.__version__}|open_clip {_open_clip_version()}")


def file_hash(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256, read in chunks (checkpoints are large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _open_clip_version() -> str:
    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "unknown"
