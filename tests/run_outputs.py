"""What a folder run wrote, for checking that two ways of running it agree (tests and benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path


def run_outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes by relative path; records without their timing field, and no
    index (it holds the timings too)."""
    files = {}
    for path in sorted(p for p in Path(out).rglob("*") if p.is_file() and p.name != "records.parquet"):
        data = path.read_bytes()
        if path.suffix == ".json":
            record = json.loads(data)
            record.pop("seconds")
            data = json.dumps(record, sort_keys=True).encode()
        files[path.relative_to(out).as_posix()] = data
    return files
