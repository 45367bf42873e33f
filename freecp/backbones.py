"""What the segmenter and the encoder need of a CLIP model, as Protocols.

``ClipBackbone`` (``freecp.clip.model``) is the real one; tests and benchmarks put stand-ins in
its place (a simulated world, call counters, random text vectors). Typing against these
Protocols, not the class, says exactly which members a stand-in must have; they are
``runtime_checkable`` so a test can check each stand-in against them. Torch is only named here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from freecp.clip.model import DenseOutput


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
