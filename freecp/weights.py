"""Which CLIP weights a run asked for, in words that reports and warnings can use."""

from __future__ import annotations

from dataclasses import dataclass

RANDOM_PRETRAINED = ("", "none", "random")  # --pretrained values (any case) that mean random weights


def is_random(pretrained: str | None) -> bool:
    """Whether a pretrained tag asks for random weights (``None`` does too)."""
    return pretrained is None or pretrained.lower() in RANDOM_PRETRAINED


@dataclass(frozen=True)
class Weights:
    """The model name and where its weights come from: an open_clip tag or a checkpoint file."""

    model: str
    pretrained: str
    checkpoint: str | None = None

    @property
    def random(self) -> bool:
        """Random weights (tests and plumbing only): asked for by tag, and no checkpoint given."""
        return self.checkpoint is None and is_random(self.pretrained)

    def describe(self) -> str:
        if self.checkpoint:
            return f"{self.model} (checkpoint {self.checkpoint})"
        return f"{self.model} ({'random' if self.random else self.pretrained})"
