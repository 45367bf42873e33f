"""The 80 prompt templates of CLIP's ImageNet zero-shot evaluation (Radford et al., 2021).

They come from open_clip (``OPENAI_IMAGENET_TEMPLATES``, written there as functions of the class
name) and are turned into ``str.format`` templates. Each class name is put into every template;
the 80 embeddings are averaged (ALGORITHM.md s.1). ``TEMPLATE_SET_HASH`` is part of every
class-name key in the embedding store, so a change here (or in open_clip's list) re-encodes
class names instead of reading vectors made from other prompts.

open_clip's list is read from its file, not imported through the package: ``import open_clip``
loads torch (seconds), and the store needs the templates where torch must not load (``freecp
encode`` deciding that a vocabulary is up to date). The file is plain data, no imports.
"""

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

OPEN_CLIP_TEMPLATES_MODULE = "open_clip.zero_shot_metadata"


def _zero_shot_metadata() -> ModuleType:
    """open_clip's ``zero_shot_metadata`` module, without importing the ``open_clip`` package."""
    if OPEN_CLIP_TEMPLATES_MODULE in sys.modules:
        return sys.modules[OPEN_CLIP_TEMPLATES_MODULE]
    package = importlib.util.find_spec("open_clip")  # finds the package without running it
    if package is None or not package.submodule_search_locations:
        raise ImportError("open_clip is not installed (pip install open_clip_torch)")
    location = Path(next(iter(package.submodule_search_locations))) / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("freecp_open_clip_zero_shot_metadata", location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{}") for template in _zero_shot_metadata().OPENAI_IMAGENET_TEMPLATES)

TEMPLATE_SET_HASH: str = hashlib.sha256("\n".join(IMAGENET_TEMPLATES).encode()).hexdigest()[:16]
