"""Text embeddings of a vocabulary: class-name queries (80 templates) and description averages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from freecp.templates import IMAGENET_TEMPLATES
from freecp.vocab import Vocabulary


@dataclass
class ClassEmbeddings:
    """Everything the segmenter needs from the text side, for one vocabulary and one model.

    ``queries[q]`` embeds name q of ``vocab.queries`` and belongs to class ``query_class[q]``.
    ``descriptions[k]`` is class k's averaged description embedding where ``described[k]``;
    elsewhere AP falls back to the class-name embedding (see ``crop_targets``).
    """

    queries: torch.Tensor        # [Q, D]
    query_class: torch.Tensor    # [Q] long
    descriptions: torch.Tensor | None  # [K, D]
    described: torch.Tensor      # [K] bool
    source: str                  # where the vectors came from ("computed", "store", ...)
    description_counts: torch.Tensor | None = None  # [K] texts behind each average (None: not known)

    def class_name_embeddings(self, num_classes: int) -> torch.Tensor:
        """One embedding per class: the renormalised mean of its query embeddings [K, D]."""
        sums = torch.zeros(num_classes, self.queries.shape[1]).index_add_(0, self.query_class, self.queries)
        return F.normalize(sums, dim=-1)

    def crop_targets(self, num_classes: int) -> torch.Tensor:
        """Per class, the embedding AP scores crops against: descriptions, else the class name."""
        names = self.class_name_embeddings(num_classes)
        if self.descriptions is None:
            return names
        return torch.where(self.described[:, None], self.descriptions, names)


def average_embeddings(vectors: torch.Tensor) -> torch.Tensor:
    """Average unit vectors [n, D] (as ``encode_texts`` returns them) and renormalise: the CLIP
    way to pool several texts into one, in the reference's order of operations (normalising the
    rows once more would move some by a float32 step)."""
    return F.normalize(vectors.mean(dim=0), dim=-1)


def encode_class_names(backbone, names: list[str], batch_size: int = 256) -> torch.Tensor:
    """One embedding per name: all 80 templated prompts of all names go through one batched pass."""
    prompts = [template.format(name) for name in names for template in IMAGENET_TEMPLATES]
    encoded = backbone.encode_texts(prompts, batch_size=batch_size)
    per_name = encoded.reshape(len(names), len(IMAGENET_TEMPLATES), -1).mean(dim=1)
    return F.normalize(per_name, dim=-1)


def embed_vocabulary(backbone, vocab: Vocabulary,
                     descriptions: dict[str, list[str]] | None = None) -> ClassEmbeddings:
    """Compute a vocabulary's embeddings directly (no store): class names, then descriptions."""
    queries = encode_class_names(backbone, vocab.queries)
    described = torch.zeros(len(vocab), dtype=torch.bool)
    counts = torch.zeros(len(vocab), dtype=torch.long)
    desc_matrix = None
    if descriptions:
        lists = {k: descriptions.get(vocab.classes[k].name, []) for k in vocab.foreground_indices}
        lists = {k: texts for k, texts in lists.items() if texts}
        if lists:
            vectors = backbone.encode_texts([text for texts in lists.values() for text in texts])
            desc_matrix = torch.zeros(len(vocab), vectors.shape[1])
            for k, chunk in zip(lists, vectors.split([len(texts) for texts in lists.values()])):
                desc_matrix[k] = average_embeddings(chunk)  # every text of the list, repeats included
            described[list(lists)] = True
            counts[list(lists)] = torch.tensor([len(texts) for texts in lists.values()])
    return ClassEmbeddings(
        queries=queries,
        query_class=torch.tensor(vocab.query_class, dtype=torch.long),
        descriptions=desc_matrix,
        described=described,
        source="computed",
        description_counts=counts,
    )
