"""Where a vector lives in the embedding store: its kind, its key and its model's folder.

Every stored vector is found by a text hash of its kind and text, never by position, so writers
that run at the same time agree on keys without talking to each other. The text key of a model
(``<model key>|text-<order>``) is ``freecp.text_keys``'s; this module turns it into a folder.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Sequence

from freecp.templates import TEMPLATE_SET_HASH

CLASS = "class"
DESCRIPTION = "description"
DESCRIPTION_MEAN = "description_mean"
KINDS = (CLASS, DESCRIPTION, DESCRIPTION_MEAN)

MODELS_DIR = "models"
MANIFESTS_DIR = "vocabularies"


def text_hash(text: str, kind: str) -> str:
    """Key of one stored vector. Class rows depend on the prompt templates, so their hash does too."""
    salt = TEMPLATE_SET_HASH if kind == CLASS else ""
    payload = json.dumps([kind, salt, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def mean_hash(description_hashes: Sequence[str]) -> str:
    """Key of the average of an ordered list of descriptions (order changes the float sum)."""
    return text_hash(",".join(description_hashes), DESCRIPTION_MEAN)


def model_dir(model_key: str) -> str:
    """A readable directory name for a model key that is safe as a path and collision-free."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key).strip("._-")[:60] or "model"
    return f"{readable}-{hashlib.sha256(model_key.encode('utf-8')).hexdigest()[:8]}"


def model_folder(model_key: str) -> str:
    """The folder of one model's shards and manifests, relative to the store root."""
    return posixpath.join(MODELS_DIR, model_dir(model_key))
