"""CLIP backbones (open_clip) and text embeddings."""

from freecp.clip.model import ClipBackbone, DenseOutput, WeightsUnavailableError, load_backbone
from freecp.clip.text import ClassEmbeddings, average_embeddings, embed_vocabulary, encode_class_names

__all__ = [
    "ClassEmbeddings",
    "ClipBackbone",
    "DenseOutput",
    "WeightsUnavailableError",
    "average_embeddings",
    "embed_vocabulary",
    "encode_class_names",
    "load_backbone",
]
