"""Local file helpers used by every layer (outputs, records, exports, stores): no store logic here."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # a writer's unfinished file; listings and scans skip names that start so


def temp_name() -> str:
    """A hidden temporary file name of fixed length (17 bytes), unique per call: a temporary
    name never lengthens the final one, so it cannot break the filesystem's name limit."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write a local file whole or not at all: a hidden temporary name beside it, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(temp_name())
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
