"""What one segment run did, computed once from its per-image records.

``freecp segment`` prints it as a table and the ``segment-images`` flow publishes it as Prefect
artifacts; both render the same ``RunTotals``, so the two can never disagree. Records are the
dicts of ``ImageRecord.to_dict()`` (what flow tasks pass around). No UI here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STATUSES = ("done", "skipped", "failed", "claimed")
TOP_CLASSES = 10


@dataclass(frozen=True)
class RunTotals:
    """Counts per status, seconds per image done, the classes found and removed most often in
    the images done (each image counts a class once), and every failure with its reason."""

    images: int
    counts: dict[str, int]
    seconds_per_image: float
    top_classes: list[tuple[str, int]]
    top_removed: list[tuple[str, int]]
    failures: list[tuple[str, str]]

    def line(self) -> str:
        return f"{self.counts['done']} done, {self.counts['skipped']} skipped, {self.counts['failed']} failed"


def run_totals(records: Sequence[Mapping[str, Any]], top: int = TOP_CLASSES) -> RunTotals:
    """The totals of one run's records (see ``RunTotals``)."""
    counts = Counter(r["status"] for r in records)
    done = [r for r in records if r["status"] == "done"]
    return RunTotals(
        images=len(records),
        counts={status: counts[status] for status in STATUSES},
        seconds_per_image=sum(r["seconds"] for r in done) / len(done) if done else 0.0,
        top_classes=most_common(done, "classes_present", top),
        top_removed=most_common(done, "removed_classes", top),
        failures=[(r["path"], r.get("error") or "") for r in records if r["status"] == "failed"],
    )


def most_common(records: Iterable[Mapping[str, Any]], field: str, top: int = TOP_CLASSES) -> list[tuple[str, int]]:
    """Classes named in ``field`` by the most records (each record counts a class once)."""
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(set(record.get(field) or ()))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
