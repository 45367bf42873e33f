"""The 80 prompt templates of CLIP's ImageNet zero-shot evaluation (Radford et al., 2021).

They come from open_clip (``OPENAI_IMAGENET_TEMPLATES``, written there as functions of the class
name) and are turned into ``str.format`` templates. Each class name is put into every template;
the 80 embeddings are averaged (ALGORITHM.md s.1). ``TEMPLATE_SET_HASH`` is part of every
class-name key in the embedding store, so a change here (or in open_clip's list) re-encodes
class names instead of reading vectors made from other prompts.
"""

import hashlib

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)

TEMPLATE_SET_HASH: str = hashlib.sha256("\n".join(IMAGENET_TEMPLATES).encode()).hexdigest()[:16]
