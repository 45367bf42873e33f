"""Run reports as Prefect artifacts: what a run did, readable in the Prefect UI.

The text is built by plain functions over the run's totals (``freecp.run_report``, which the
CLI's summary table renders too) so it can be checked without a server; ``publish_*`` sends it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from freecp.run_report import RunTotals, run_totals

TABLE_ROWS = 500  # the Parquet index has every row; the UI table stays light


def _class_table(title: str, rows: list[tuple[str, int]]) -> list[str]:
    lines = [f"## {title}", ""]
    if not rows:
        return lines + ["None.", ""]
    lines += ["| class | images |", "|---|---|"]
    lines += [f"| {_cell(name)} | {count} |" for name, count in rows]
    return lines + [""]


def _cell(value: Any) -> str:
    """A value as one markdown table cell (pipes and newlines would break the table)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def segment_summary_markdown(totals: RunTotals, images: str, index: str) -> str:
    """The run summary: counts, time per image, the classes found and removed most often, failures."""
    counts = totals.counts
    lines = [
        f"# segment-images: {images}",
        "",
        "| images | done | skipped | failed | seconds per image done |",
        "|---|---|---|---|---|",
        f"| {totals.images} | {counts['done']} | {counts['skipped']} | {counts['failed']} "
        f"| {totals.seconds_per_image:.2f} |",
        "",
    ]
    lines += _class_table("Classes found most often (images done in this run)", totals.top_classes)
    lines += _class_table("Classes removed by purification most often", totals.top_removed)
    if totals.failures:
        lines += ["## Failed images", ""]
        lines += [f"- `{path}`: {_cell(error)}" for path, error in totals.failures]
        lines.append("")
    lines.append(f"Every image's record: `{index}`")
    return "\n".join(lines)


def segment_table(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per image this run worked on (done or failed), failures first."""
    worked = sorted((r for r in records if r["status"] != "skipped"),
                    key=lambda r: (r["status"] != "failed", r["path"]))
    return [
        {
            "path": r["path"],
            "status": r["status"],
            "seconds": round(r["seconds"], 3),
            "classes": ", ".join(r.get("classes_present") or ()),
            "removed": ", ".join(r.get("removed_classes") or ()),
            "error": r.get("error") or "",
        }
        for r in worked[:TABLE_ROWS]
    ]


def _readable(value: Any) -> str:
    """Mappings as ``key: value; ...`` (a describe run's short or failed classes), the rest as str."""
    if isinstance(value, Mapping):
        return "; ".join(f"{key}: {_readable(item)}" for key, item in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_readable(item) for item in value)
    return str(value)


def summary_markdown(title: str, summary: Any) -> str:
    """A dataclass summary (describe, encode) as a two-column markdown table."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    for key, value in dataclasses.asdict(summary).items():
        lines.append(f"| {key.replace('_', ' ')} | {_cell(_readable(value))} |")
    return "\n".join(lines)


def publish_segment_report(records: Sequence[Mapping[str, Any]], images: str, index: str) -> RunTotals:
    """Both artifacts of a segment run; returns its totals (for the run's state message)."""
    totals = run_totals(records)
    create_markdown_artifact(
        segment_summary_markdown(totals, images, index),
        key="segment-images-summary",
        description=f"segment-images run over {images}",
    )
    create_table_artifact(segment_table(records), key="segment-images-records",
                          description="Images done or failed in this run")
    return totals


def publish_summary(key: str, title: str, summary: Any) -> None:
    create_markdown_artifact(summary_markdown(title, summary), key=key, description=title)
