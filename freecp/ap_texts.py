"""What ambiguity purification scores crops against (``SegmentSettings.ap_texts``), in one place.

``descriptions`` (the method): each class's averaged LLM descriptions, the class name where it
has none. ``names``: the class names only. ``random``: a control in the manner of WaffleCLIP
(Roth et al., ICCV 2023): per class, as many descriptors as it has descriptions, each
"a photo of a {name}, which has {two random words}.", with words drawn from a fixed list by a
generator seeded from the class name, so every run draws the same ones. If the random control
scores like the descriptions, the descriptions carry no information beyond the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

import torch

from freecp.clip.text import ClassEmbeddings, average_embeddings
from freecp.settings import check_choice
from freecp.vocab import Vocabulary

# Plain words with no particular visual class behind them, the pool random descriptors draw from.
RANDOM_WORDS = (
    "absolute", "account", "actual", "advice", "agreement", "almost", "amount", "ancient", "answer", "anyway",
    "approach", "argument", "average", "balance", "basis", "belief", "benefit", "bottom", "brief", "budget",
    "career", "certain", "chance", "choice", "claim", "common", "concept", "content", "context", "course",
    "credit", "current", "debate", "decision", "degree", "detail", "effort", "energy", "entire", "event",
    "evidence", "example", "extent", "factor", "feature", "final", "focus", "former", "future", "general",
    "growth", "habit", "history", "idea", "impact", "income", "initial", "issue", "journey", "labour",
    "manner", "matter", "measure", "memory", "method", "minor", "moment", "motion", "natural", "notion",
    "option", "origin", "output", "partial", "period", "policy", "portion", "possible", "practice", "process",
    "purpose", "quality", "quarter", "random", "range", "reason", "record", "region", "result", "routine",
    "sample", "scale", "season", "sense", "series", "signal", "simple", "source", "status", "subject",
    "support", "system", "theory", "topic", "total", "typical", "unit", "usual", "value", "version",
)
RANDOM_SEED = "freecp-ap-random-v1"  # part of each class's seed: change it to draw other words


def random_descriptors(name: str, count: int) -> list[str]:
    """``count`` seeded random-word descriptors of ``name`` (the same on every run and machine)."""
    rng = random.Random(hashlib.sha256(f"{RANDOM_SEED}|{name}".encode()).digest())
    return [f"a photo of a {name}, which has {rng.choice(RANDOM_WORDS)} {rng.choice(RANDOM_WORDS)}."
            for _ in range(count)]


def for_ap_texts(embeddings: ClassEmbeddings, vocab: Vocabulary, choice: str, backbone) -> ClassEmbeddings:
    """``embeddings`` with the description averages that ``choice`` asks AP to use.

    ``random`` encodes its descriptors with ``backbone``'s text tower and needs to know how many
    descriptions each class has (``ClassEmbeddings.description_counts``).
    """
    check_choice("ap_texts", choice)
    if choice == "descriptions":
        return embeddings
    if choice == "names":
        return dataclasses.replace(embeddings, descriptions=None,
                                   described=torch.zeros_like(embeddings.described))
    counts = embeddings.description_counts
    if counts is None:
        raise ValueError("random AP texts need the number of descriptions per class, which these embeddings lack")
    wanted = {k: int(counts[k]) for k in vocab.foreground_indices if int(counts[k]) > 0}
    described = torch.zeros_like(embeddings.described)
    if not wanted:
        return dataclasses.replace(embeddings, descriptions=None, described=described)
    texts = [text for k, n in wanted.items() for text in random_descriptors(vocab.classes[k].name, n)]
    vectors = backbone.encode_texts(texts)
    means = torch.zeros(len(vocab), vectors.shape[1])
    for k, chunk in zip(wanted, vectors.split(list(wanted.values()))):
        means[k] = average_embeddings(chunk)
    described[list(wanted)] = True
    return dataclasses.replace(embeddings, descriptions=means, described=described)
