"""The encode step: the texts a vocabulary needs, through the CLIP text tower, into an embedding store.

The store (``freecp.stores.embeddings``) says what is missing and writes vectors; this module
runs the model over the missing texts and turns stored vectors back into tensors. The CLI and
the Prefect encode flow both call ``encode`` with an ``EncodeJob``; it opens the store and reads
the descriptions before loading the CLIP model, so a bad URL fails in a second, not after the load.
When the store already holds every text, the model is never built and torch never imported: the
decision needs only the manifest, the stored hashes and the model key the store remembers for
this weights request (``freecp.clip.keys``; the first run of a request builds the model once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from freecp.backbones import TextEncoder
from freecp.clip.keys import weights_request
from freecp.jobs import EncodeJob
from freecp.progress import ProgressCallback
from freecp.resources import shipped_description_cache
from freecp.settings import check_float_order
from freecp.stores.descriptions import DescriptionCache
from freecp.stores.embeddings import CLASS, DESCRIPTION, EmbeddingStore, EncodeSummary, unique_means
from freecp.templates import IMAGENET_TEMPLATES
from freecp.text_keys import float_order_of
from freecp.vocab import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch loads only where vectors are computed or become tensors
    import torch

    from freecp.clip.text import ClassEmbeddings


def encode(vocab: Vocabulary, job: EncodeJob = EncodeJob(), on_progress: ProgressCallback | None = None) -> EncodeSummary:
    """Encode every text ``vocab`` needs that ``job.store`` lacks; returns counts encoded and reused.

    The CLI, the flows and Python callers alike. ``job.descriptions`` is a description cache URL;
    the vocabulary's cached descriptions are encoded too, and each class's average becomes its AP
    target. ``job.float_order`` picks the text tower's path, and with it the key the vectors are
    stored under (``freecp.text_keys``).
    """
    check_float_order(job.float_order)
    embeddings = EmbeddingStore(job.store)
    texts = DescriptionCache(job.descriptions).descriptions_for(vocab) if job.descriptions else None
    request = weights_request(job.clip, job.float_order)
    key = embeddings.key_for(request)
    summary = embeddings.up_to_date(vocab, key, texts) if key is not None else None
    if summary is not None:
        return summary
    embeddings.root.check_writable()  # a store that refuses writes fails now, not after the encoding
    from freecp.build import create_backbone

    backbone = create_backbone(job.clip, float_order=job.float_order)
    summary = ensure_encoded(embeddings, vocab, backbone, texts, on_progress=on_progress, batch_size=job.batch_size)
    embeddings.remember_key(request, backbone.text_key)
    return summary


def shipped_descriptions(vocab: Vocabulary) -> dict[str, list[str]] | None:
    """The descriptions freecp ships for ``vocab`` when it is a shipped vocabulary that has a
    description cache (``samples``, so the first command's AP scores crops against descriptions
    offline), else None."""
    folder = shipped_description_cache(vocab.name)
    if folder is None or vocab.content_hash != load_vocabulary(vocab.name).content_hash:
        return None
    return DescriptionCache(str(folder)).descriptions_for(vocab)


def ensure_encoded(store: EmbeddingStore, vocab: Vocabulary, backbone: TextEncoder,
                   descriptions: dict[str, list[str]] | None = None, on_progress: ProgressCallback | None = None,
                   batch_size: int = EncodeJob.batch_size) -> EncodeSummary:
    """Encode what ``vocab`` needs and ``store`` lacks with ``backbone``, then write the manifest.

    ``descriptions`` maps a class name to its description texts (see ``EmbeddingStore.plan``).
    ``on_progress(what, done, total)`` is called after each encoded chunk.
    """
    from freecp.clip.text import average_embeddings, encode_class_names
    import torch

    started = time.monotonic()
    dim = int(backbone.embed_dim)
    plan = store.plan(vocab, backbone.text_key, dim, descriptions)
    if (plan.new_classes or plan.new_descriptions) and (bare := store.unrecorded_twin(plan.key)):
        log.warning("%s holds vectors of %s from a text tower nobody recorded (written before float orders "
                    "were); they are not reused: encoding %s once under float order %r", store.url, bare,
                    vocab.name, float_order_of(plan.key))
    writer = store.writer(plan, dim)
    fresh: dict[str, np.ndarray] = {}
    names_per_call = max(1, round(batch_size / len(IMAGENET_TEMPLATES)))
    for hashes, texts in _chunks("class names", plan.new_classes, names_per_call, on_progress):
        writer.add(CLASS, hashes, texts, _numpy(encode_class_names(backbone, texts, batch_size=batch_size)))
    for hashes, texts in _chunks("descriptions", plan.new_descriptions, batch_size, on_progress):
        vectors = _numpy(backbone.encode_texts(texts, batch_size=batch_size))
        writer.add(DESCRIPTION, hashes, texts, vectors)
        fresh.update(zip(hashes, vectors))
    if plan.new_means:
        vectors = store.stored_descriptions(plan, dim, fresh)
        means = unique_means(plan.new_means)
        writer.add_means(means, [_numpy(average_embeddings(torch.from_numpy(
            np.stack([vectors[h] for h in p.description_hashes])))) for p in means])
    writer.flush()
    return store.finish(plan, dim, started)


def load_embeddings(store: EmbeddingStore, vocab: Vocabulary, backbone_or_text_key: TextEncoder | str,
                    description_counts: bool = False) -> ClassEmbeddings:
    """The vocabulary's query and description matrices from ``store``, as the segmenter's tensors
    (no encoding); a text key alone (``freecp.text_keys``) skips the dimension check.
    ``description_counts`` also reads how many descriptions each average has (for the random AP
    control, ``freecp.ap_texts``)."""
    import torch

    from freecp.clip.text import ClassEmbeddings

    if isinstance(backbone_or_text_key, str):
        key, dim = backbone_or_text_key, None
    else:
        key, dim = backbone_or_text_key.text_key, int(backbone_or_text_key.embed_dim)
    stored = store.load_vectors(vocab, key, dim)
    return ClassEmbeddings(
        queries=torch.from_numpy(stored.queries),
        query_class=torch.tensor(vocab.query_class, dtype=torch.long),
        descriptions=None if stored.descriptions is None else torch.from_numpy(stored.descriptions),
        described=torch.from_numpy(stored.described),
        source="store",
        description_counts=torch.tensor(store.description_counts(vocab, key)) if description_counts else None,
    )


def _numpy(vectors: torch.Tensor) -> np.ndarray:
    return vectors.detach().float().cpu().contiguous().numpy()


def _chunks(label: str, texts: dict[str, str], size: int,
            on_progress: ProgressCallback | None) -> Iterator[tuple[list[str], list[str]]]:
    """The texts to encode in chunks of ``size`` (hashes, texts), reporting each one done."""
    items = list(texts.items())
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield [h for h, _ in chunk], [t for _, t in chunk]
        if on_progress is not None:
            on_progress(f"encoding {label}", start + len(chunk), len(items))
