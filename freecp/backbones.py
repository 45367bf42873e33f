"""What the segmenter and the encoder need of a CLIP model, as Protocols.

``ClipBackbone`` (``freecp.clip.model``) is the real one; tests and benchmarks put stand-ins in
its place (a simulated world, call counters, random text vectors). Typing against these
Protocols, not the class, says exactly which members a stand-in must have; they are
``runtime_checkable`` so a test can check each stand-in against them. Torch is only named here.
``check_backbone`` refuses a backbone built to compute other outputs than the settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from freecp.clip.model import DenseOutput
    from freecp.settings import SegmentSettings


@runtime_checkable
class Backbone(Protocol):
    """The image side the segmenter runs: dense window features and attention, crop embeddings."""

    model_key: str      # names the weights; part of every run key
    patch_size: int     # pixels per patch side
    logit_scale: float  # CLIP's softmax temperature

    def dense_forward(self, windows: torch.Tensor) -> DenseOutput: ...

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """The text side the encoder runs into the embedding store."""

    text_key: str  # the store keeps vectors per text key: model key and float order (``freecp.text_keys``)
    embed_dim: int

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor: ...


# What a backbone is built to compute that the settings also name (and the run key hashes).
BACKBONE_SETTINGS = ("variant", "protocol", "float_order")


def check_backbone(backbone: Backbone, settings: SegmentSettings) -> None:
    """ValueError, in one line, when the backbone computes another variant, protocol or float
    order than the settings name: the run key hashes the settings, so they must be what runs.
    Stand-in backbones without these attributes are taken as they are."""
    wrong = [(name, getattr(backbone, name), getattr(settings, name)) for name in BACKBONE_SETTINGS
             if getattr(backbone, name, getattr(settings, name)) != getattr(settings, name)]
    if wrong:
        differences = "; ".join(f"{name.replace('_', ' ')} {have!r}, the settings ask for {want!r}"
                                for name, have, want in wrong)
        fix = ", ".join(f"{name}={want!r}" for name, _, want in wrong)
        raise ValueError(f"the backbone runs {differences}: create it with {fix} (freecp.build.create_backbone)")
