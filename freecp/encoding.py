"""The encode step as one function: a vocabulary (and its cached descriptions) into an embedding store.

The CLI and the Prefect encode flow both call ``encode`` with an ``EncodeJob``; it opens the store and reads
the descriptions before loading the CLIP model, so a bad URL fails in a second, not after the load.
When the store already holds every text, the model is never built and torch never imported: the
decision needs only the manifest, the stored hashes and the model key the store remembers for
this weights request (``freecp.clip.keys``; the first run of a request builds the model once).
"""

from __future__ import annotations

from freecp.clip.keys import weights_request
from freecp.jobs import ClipModel, EncodeJob
from freecp.progress import ProgressCallback
from freecp.stores.descriptions import DescriptionCache
from freecp.stores.embeddings import EmbeddingStore, EncodeSummary
from freecp.vocab import Vocabulary


def encode(vocab: Vocabulary, job: EncodeJob, on_progress: ProgressCallback | None = None) -> EncodeSummary:
    """``encode_vocabulary`` for an ``EncodeJob`` (the CLI, the flows and Python callers alike)."""
    clip = job.clip
    return encode_vocabulary(vocab, store=job.store, model=clip.model, pretrained=clip.pretrained,
                             clip_checkpoint=clip.clip_checkpoint, descriptions=job.descriptions, device=clip.device,
                             on_progress=on_progress, batch_size=job.batch_size, quick_gelu=clip.quick_gelu)


def encode_vocabulary(vocab: Vocabulary, *, store: str = EncodeJob.store, model: str = ClipModel.model,
                      pretrained: str | None = ClipModel.pretrained, clip_checkpoint: str | None = None,
                      descriptions: str | None = None, device: str = ClipModel.device,
                      on_progress: ProgressCallback | None = None, batch_size: int = EncodeJob.batch_size,
                      quick_gelu: bool | None = None) -> EncodeSummary:
    """Encode every text ``vocab`` needs that the store lacks; returns counts encoded and reused.

    ``descriptions`` is a description cache URL; the vocabulary's cached descriptions are
    encoded too, and each class's average becomes its AP target. ``batch_size`` is texts per
    forward pass of the text tower. ``quick_gelu`` picks the activation of a checkpoint
    (None: detect, see ``freecp.clip.activation``).
    """
    embeddings = EmbeddingStore(store, batch_size=batch_size)
    texts = DescriptionCache(descriptions).descriptions_for(vocab) if descriptions else None
    request = weights_request(model, pretrained, clip_checkpoint, quick_gelu=quick_gelu)
    key = embeddings.key_for(request)
    summary = embeddings.up_to_date(vocab, key, texts) if key is not None else None
    if summary is not None:
        return summary
    from freecp.clip.model import load_backbone

    backbone = load_backbone(model, pretrained=pretrained, checkpoint=clip_checkpoint, device=device,
                             quick_gelu=quick_gelu)
    summary = embeddings.ensure(vocab, backbone, texts, on_progress=on_progress)
    embeddings.remember_key(request, backbone.model_key)
    return summary
