"""CLIP backbones (open_clip) and text embeddings.

Names are imported on first use (PEP 562), so the torch-free modules of this package
(``keys``, ``errors``) can be used without loading torch and open_clip.
"""

from importlib import import_module

_HOMES = {
    "ClassEmbeddings": "freecp.clip.text",
    "average_embeddings": "freecp.clip.text",
    "embed_vocabulary": "freecp.clip.text",
    "encode_class_names": "freecp.clip.text",
    "ClipBackbone": "freecp.clip.model",
    "DenseOutput": "freecp.clip.model",
    "WeightsUnavailableError": "freecp.clip.errors",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'freecp.clip' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
