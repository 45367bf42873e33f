"""Which activation a CLIP build needs: QuickGELU (OpenAI's) or GELU (open_clip's default).

open_clip's ``ViT-B-16`` config uses GELU, while OpenAI's weights were trained with QuickGELU;
a state dict alone does not say which activation trained it. For a checkpoint FILE the first
rule that applies decides (README, "CLIP weights"):

1. an explicit choice (``quick_gelu=True/False``; ``--quick-gelu/--no-quick-gelu``);
2. a model name whose config leaves no doubt: it states QuickGELU (``ViT-B-16-quickgelu``), or
   open_clip has no QuickGELU twin of it;
3. a TorchScript archive (the form of every ``.pt`` file OpenAI published) -> QuickGELU;
4. an ``open_clip_config.json`` beside the file (the Hugging Face hub layout) -> its ``quick_gelu``;
5. a known checkpoint, by content digest (``KNOWN_CHECKPOINTS``) -> its activation;
6. otherwise the build is refused with a message that lists these options.

A pretrained tag needs no rule: open_clip's registry records the activation of each tag.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import open_clip.factory
import torch

QUICKGELU_SUFFIX = "-quickgelu"
TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

# Content digest (see ``content_digest``) -> (quick_gelu, what the file is).
KNOWN_CHECKPOINTS: dict[str, tuple[bool, str]] = {
    "dbbfd9b5336b0806c969bdb8dd3e2b89ad345f4a114e1578471884f3b9ccfabe":
        (True, "the parity fixtures' random ViT-B-16-quickgelu weights (make_weights.py --seed 0)"),
}


class AmbiguousActivationError(ValueError):
    """Nothing tells whether a checkpoint needs QuickGELU or GELU; the user must say."""


@dataclass(frozen=True)
class Activation:
    """The activation chosen for a build, the architecture it makes, and why."""

    quick_gelu: bool
    architecture: str  # the open_clip config built, e.g. "ViT-B-16-quickgelu"
    reason: str


def config_quick_gelu(model_name: str) -> bool:
    """Whether the named open_clip config itself uses QuickGELU."""
    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def architecture_name(model_name: str, quick_gelu: bool) -> str:
    """The name of the config a build really has: the model name, or its twin of the other activation."""
    if quick_gelu == config_quick_gelu(model_name):
        return model_name
    if quick_gelu:
        return model_name + QUICKGELU_SUFFIX
    base = model_name.removesuffix(QUICKGELU_SUFFIX)
    return base if base != model_name else model_name + "-gelu"


def tag_activation(model_name: str, tag: str, quick_gelu: bool | None) -> Activation:
    """A pretrained tag's activation from open_clip's registry; an explicit choice must agree."""
    trained_quick = bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", config_quick_gelu(model_name)))
    if quick_gelu is not None and quick_gelu != trained_quick:
        raise ValueError(f"{model_name}/{tag} was trained with {'QuickGELU' if trained_quick else 'GELU'}; "
                         f"drop --{'no-' if trained_quick else ''}quick-gelu")
    return Activation(trained_quick, architecture_name(model_name, trained_quick),
                      f"open_clip's registry for the tag {tag!r}")


def checkpoint_activation(model_name: str, path: Path, quick_gelu: bool | None) -> Activation:
    """Decide the activation for a checkpoint file by the module's rules, cheapest first."""
    if quick_gelu is not None:
        return Activation(quick_gelu, architecture_name(model_name, quick_gelu),
                          f"asked for {'QuickGELU' if quick_gelu else 'GELU'}")
    own = config_quick_gelu(model_name)
    if own or model_name + QUICKGELU_SUFFIX not in open_clip.list_models():
        return Activation(own, model_name, f"the {model_name} config")
    if is_torchscript_archive(path):
        return Activation(True, architecture_name(model_name, True), "an OpenAI TorchScript archive")
    config = path.parent / "open_clip_config.json"
    if config.is_file():
        stated = bool(json.loads(config.read_text()).get("model_cfg", {}).get("quick_gelu", False))
        return Activation(stated, architecture_name(model_name, stated), f"{config.name} beside the file")
    known = KNOWN_CHECKPOINTS.get(content_digest(load_state_dict(path)))
    if known is not None:
        return Activation(known[0], architecture_name(model_name, known[0]), f"known checkpoint: {known[1]}")
    raise AmbiguousActivationError(
        f"cannot tell whether {path} needs QuickGELU or GELU: {model_name} exists with both. "
        f"Say which: --quick-gelu (OpenAI's weights and their copies) or --no-quick-gelu "
        f"(open_clip's own GELU trainings, e.g. LAION); or --model {model_name}{QUICKGELU_SUFFIX}; "
        f"or keep the file in its Hugging Face folder beside open_clip_config.json.")


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold compiled code (``<name>/code/``); plain ``torch.save`` files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a TorchScript archive's, or via open_clip's loader."""
    if is_torchscript_archive(path):
        with warnings.catch_warnings():  # torch deprecates TorchScript; OpenAI's files are in it all the same
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        return {k: v for k, v in state.items() if k not in TORCHSCRIPT_EXTRA_KEYS}
    return open_clip.factory.load_state_dict(str(path))


def content_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys and each tensor's float32 bytes: independent of the file format
    and name (the digest ``make_weights.py`` prints)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
