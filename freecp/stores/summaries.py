"""What the embedding store reports: one encode run, the models and vocabularies it holds, and how
much of a vocabulary is encoded. Plain records, printed by the CLI and returned to the flows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncodeSummary:
    """What ``ensure`` did: per kind, how many distinct texts were encoded and how many reused."""

    store: str
    model_key: str
    vocabulary: str
    vocab_hash: str
    classes_encoded: int
    classes_reused: int
    descriptions_encoded: int
    descriptions_reused: int
    described_classes: int
    manifest_written: bool
    seconds: float
    model_loaded: bool = True  # False: the store held everything, so the model was never built

    @property
    def encoded(self) -> int:
        return self.classes_encoded + self.descriptions_encoded

    @property
    def reused(self) -> int:
        return self.classes_reused + self.descriptions_reused

    def line(self) -> str:
        return (f"{self.vocabulary} ({self.vocab_hash}) with {self.model_key} in {self.store}: "
                f"encoded {self.encoded} texts ({self.classes_encoded} class names, "
                f"{self.descriptions_encoded} descriptions), reused {self.reused} "
                f"({self.classes_reused} class names, {self.descriptions_reused} descriptions); "
                f"classes with descriptions: {self.described_classes}; {self.seconds:.1f} s"
                f"{'' if self.model_loaded else ' (up to date: model not loaded)'}")


@dataclass(frozen=True)
class ModelSummary:
    """One model in the store (``store ls``)."""

    model_key: str
    dim: int
    rows: dict[str, int]  # distinct texts per kind
    shards: int
    vocabularies: int


@dataclass(frozen=True)
class VocabularySummary:
    """One vocabulary manifest of one model (``store ls``)."""

    model_key: str
    name: str
    content_hash: str
    classes: int
    queries: int
    described: int
    written_at: str


@dataclass(frozen=True)
class ClassCoverage:
    """How much of one class is encoded (``store inspect``)."""

    index: int
    names: tuple[str, ...]
    queries_present: int
    descriptions: int          # descriptions the manifest lists for this class
    description_vector: bool   # their average is in the store


@dataclass(frozen=True)
class VocabularyCoverage:
    """How much of a vocabulary is encoded for one model (``store inspect``)."""

    model_key: str
    vocabulary: str
    content_hash: str
    manifest: bool
    classes: list[ClassCoverage]

    @property
    def complete(self) -> bool:
        return self.manifest and all(c.queries_present == len(c.names) for c in self.classes)

    @property
    def described(self) -> int:
        return sum(c.description_vector for c in self.classes)
