"""Per-image records and the run index: what a folder run says about every image it was given.

Each image's outcome is an ``ImageRecord``, written as a small JSON file beside its outputs
(``freecp.layout`` names it) after the mask and overlay, so a record means finished work.
``records.parquet`` (``write_index``) is rebuilt from those files at the end of every run, also an
interrupted one. Records are read back as input: one that is missing, half-written or leads out
of its output folder reads as None, and its image is done again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from freecp.files import atomic_write, contained
from freecp.layout import RECORDS_DIR

INDEX_NAME = "records.parquet"
log = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("classes_present", pa.list_(pa.string())),
    ("rp_scores", pa.map_(pa.string(), pa.float64())),
    ("removed_classes", pa.list_(pa.string())),
    ("ambiguity_groups", pa.string()),
    ("ap_targets", pa.string()),
    ("ap_fallback_classes", pa.list_(pa.string())),
    ("ap_texts", pa.string()),
    ("pamr", pa.string()),
    ("seconds", pa.float64()),
    ("content_hash", pa.string()),
    ("run_key", pa.string()),
    ("mask", pa.string()),
    ("overlay", pa.string()),
])


@dataclass
class ImageRecord:
    """One image's outcome; ``status`` is done, skipped (already up to date), failed, or claimed
    (another run is segmenting it now; that run writes its record)."""

    path: str
    status: str
    width: int = 0
    height: int = 0
    error: str = ""
    classes_present: list[str] = field(default_factory=list)
    rp_scores: dict[str, float] = field(default_factory=dict)
    removed_classes: list[str] = field(default_factory=list)
    ambiguity_groups: list[dict] = field(default_factory=list)
    ap_targets: str = ""
    ap_fallback_classes: list[str] = field(default_factory=list)
    ap_texts: str = ""     # what AP was asked to score crops against (settings.ap_texts)
    pamr: str = ""         # off, applied, or skipped: <why> (Segmentation.pamr)
    seconds: float = 0.0
    content_hash: str = ""
    run_key: str = ""
    mask: str = ""
    overlay: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def write_index_if_possible(out_dir: Path, records: list[ImageRecord] = ()) -> Path | None:
    """``write_index`` for a run on its way out (stopped, interrupted): None, and the reason
    logged, where the disk that stopped the run does not take the index either."""
    try:
        return write_index(out_dir, records)
    except OSError as err:
        log.error("could not write %s: %s", Path(out_dir) / INDEX_NAME, err)
        return None


def write_index(out_dir: Path, records: list[ImageRecord] = ()) -> Path:
    """Rebuild ``records.parquet`` from every per-image record in ``out_dir`` (atomic).

    ``records`` of this run take precedence over the files, and count even where their JSON
    could not be written (a name too long for the filesystem, say); claimed ones are left to
    the run that holds them.
    """
    out_dir = Path(out_dir)
    by_path: dict[str, ImageRecord] = {}
    for path in sorted((out_dir / RECORDS_DIR).rglob("*.json")):
        record = read_record(path, out_dir)
        if record is not None:
            by_path[record.path] = record
    by_path.update((r.path, r) for r in records if r.status in ("done", "failed"))
    rows = []
    for path in sorted(by_path):
        row = by_path[path].to_dict()
        row["ambiguity_groups"] = json.dumps(row["ambiguity_groups"])
        row["rp_scores"] = list(row["rp_scores"].items())
        rows.append(row)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), sink)
    target = out_dir / INDEX_NAME
    atomic_write(target, sink.getvalue().to_pybytes())
    return target


def read_record(path: Path, out_dir: Path | None = None) -> ImageRecord | None:
    """The record at ``path`` (checked to lie inside ``out_dir`` when given: a record found by a
    listing may be a symlink to anywhere), or None."""
    try:
        if out_dir is not None:
            path = contained(out_dir, path.relative_to(out_dir))
        return ImageRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing, left half-written by a killed run, or leading outside: redo the image
