"""Local file helpers used by every layer (outputs, records, exports, stores): no store logic here."""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePath

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


class OutsideRootError(ValueError):
    """A path taken from a file (a record, a claim, a layout) that would lead outside its root."""


def contained(root: Path, relative: str | PurePath) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` once symlinks are resolved.

    The one containment check for paths read from an output folder or built for writing into it:
    absolute paths, ``..`` parts and symlinks (of any part, the last included) that lead out
    raise ``OutsideRootError`` with the reason, so nothing outside ``root`` is read, written,
    moved or deleted on the word of a file someone else may have written.
    """
    rel = PurePath(relative)
    if rel.is_absolute() or rel.anchor:
        raise OutsideRootError(f"{str(relative)!r} is an absolute path")
    if ".." in rel.parts:
        raise OutsideRootError(f"{str(relative)!r} climbs out with '..'")
    target = Path(root) / rel
    if not target.resolve().is_relative_to(Path(root).resolve()):
        raise OutsideRootError(f"{str(relative)!r} resolves outside {root} (symlink)")
    return target
