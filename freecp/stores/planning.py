"""Planning an encode: what a vocabulary (with its descriptions) needs from the store, and what
of that the store lacks. The store only compares and writes; ``freecp.encoding`` fills the gaps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from freecp.stores.fs import StoreRoot
from freecp.stores.manifest import ClassPlan, Manifest, read_manifest
from freecp.stores.shards import stored_hashes
from freecp.stores.summaries import EncodeSummary
from freecp.stores.vector_keys import CLASS, DESCRIPTION, DESCRIPTION_MEAN, KINDS, mean_hash, model_folder, text_hash
from freecp.vocab import Vocabulary


@dataclass
class EncodePlan:
    """What encoding a vocabulary needs: the store's manifest, the plans and the missing texts
    (``freecp.encoding`` encodes them; the store only compares and writes)."""

    vocab: Vocabulary
    key: str
    folder: str
    recorded: Manifest | None
    plans: list[ClassPlan]
    class_texts: dict[str, str]
    new_classes: dict[str, str]
    new_descriptions: dict[str, str]
    all_descriptions: set[str]
    new_means: list[ClassPlan]

    def manifest(self, dim: int) -> Manifest:
        vocab = self.vocab
        return Manifest(vocab.name, vocab.content_hash, vocab.has_background, self.key, dim, tuple(self.plans),
                        datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def summary(self, store: str, manifest_written: bool, seconds: float,
                model_loaded: bool = True) -> EncodeSummary:
        return EncodeSummary(
            store=store, model_key=self.key, vocabulary=self.vocab.name, vocab_hash=self.vocab.content_hash,
            classes_encoded=len(self.new_classes), classes_reused=len(self.class_texts) - len(self.new_classes),
            descriptions_encoded=len(self.new_descriptions),
            descriptions_reused=len(self.all_descriptions) - len(self.new_descriptions),
            described_classes=sum(p.description_mean is not None for p in self.plans),
            manifest_written=manifest_written, seconds=seconds, model_loaded=model_loaded,
        )


def plan_encode(root: StoreRoot, vocab: Vocabulary, key: str, dim: int | None,
                descriptions: dict[str, list[str]] | None) -> EncodePlan:
    """Compare what ``vocab`` (with ``descriptions``) needs with what the store at ``root`` holds."""
    folder = model_folder(key)
    recorded = read_manifest(root, folder, vocab, key, dim)
    present = {kind: stored_hashes(root, folder, kind, key, dim) for kind in KINDS}
    plans, description_texts = plan_classes(vocab, descriptions, recorded)
    class_texts = {text_hash(t, CLASS): t for t in vocab.queries}
    return EncodePlan(
        vocab=vocab, key=key, folder=folder, recorded=recorded, plans=plans, class_texts=class_texts,
        new_classes={h: t for h, t in class_texts.items() if h not in present[CLASS]},
        new_descriptions={h: t for h, t in description_texts.items() if h not in present[DESCRIPTION]},
        all_descriptions={h for p in plans for h in p.description_hashes},
        new_means=[p for p in plans
                   if p.description_mean and p.description_mean not in present[DESCRIPTION_MEAN]],
    )


def plan_classes(vocab: Vocabulary, descriptions: dict[str, list[str]] | None,
                 recorded: Manifest | None) -> tuple[list[ClassPlan], dict[str, str]]:
    """Per class, the hashes it needs; plus every description text the plan uses, by hash.

    A foreground class that ``descriptions`` does not name keeps the descriptions ``recorded``
    lists for it, so a run without descriptions never erases earlier ones.
    """
    descriptions = descriptions or {}
    foreground = set(vocab.foreground_indices)
    texts: dict[str, str] = {}
    plans = []
    for k, entry in enumerate(vocab.classes):
        queries = tuple(text_hash(n, CLASS) for n in entry.names)
        given = [t for t in descriptions.get(entry.name, []) if t.strip()] if k in foreground else []
        if given:
            hashes = tuple(text_hash(t, DESCRIPTION) for t in given)
            texts.update(zip(hashes, given))
            plans.append(ClassPlan(entry.names, queries, hashes, mean_hash(hashes)))
        elif recorded is not None and recorded.classes[k].description_mean:
            kept = recorded.classes[k]
            plans.append(ClassPlan(entry.names, queries, kept.description_hashes, kept.description_mean))
        else:
            plans.append(ClassPlan(entry.names, queries))
    return plans, texts


def unique_means(plans: list[ClassPlan]) -> list[ClassPlan]:
    """One plan per distinct description list (several classes may share one average)."""
    unique: dict[str, ClassPlan] = {}
    for plan in plans:
        unique.setdefault(plan.description_mean, plan)
    return list(unique.values())
