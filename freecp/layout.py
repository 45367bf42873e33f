"""Where ``freecp segment`` puts each image's outputs, and how older output folders are brought along.

Naming (layout 2): an input at ``<relative path>`` inside the images folder gets
``masks/<relative path>.png``, ``overlays/<relative path>.jpg`` and ``.records/<relative path>.json``:
the whole file name, extension included, plus a suffix. Two distinct inputs have distinct relative
paths, so they can never share an output, on any filesystem (``a.jpg`` and ``a.png`` give
``a.jpg.png`` and ``a.png.png``). The folder says which naming it uses in ``.freecp-layout``.

Layout 1 (before the marker existed) replaced the extension (``masks/a.png``), so ``a.jpg`` and
``a.png`` overwrote each other. ``prepare_output`` migrates such a folder on first use: an output
that only one record claims is renamed to its new name; outputs that several records claimed
are deleted together with those records, so the images are segmented again.

What an output folder holds is input: every path read from it or written into it goes through
``freecp.files.contained`` (nothing outside the folder is read, written, moved or deleted on the
word of a record), and output folders that are symlinks are refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePath

from freecp.io import safe_output_path
from freecp.files import TEMP_PREFIX, OutsideRootError, atomic_write, contained, temp_name

LAYOUT_FILE = ".freecp-layout"
LAYOUT_VERSION = 2
RECORDS_DIR = ".records"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
CLAIMS_DIR = ".claims"
OUTPUT_DIRS = (MASKS_DIR, OVERLAYS_DIR, RECORDS_DIR, CLAIMS_DIR)


MIN_FREE_BYTES = 64 * 1024  # a run does not start on an output disk with less free space than this
STALE_TEMP_SECONDS = 60.0  # a temporary file older than this at a run's start was left by a killed writer


class LayoutError(ValueError):
    """An output folder this version cannot use; the message says why and what to do."""


class UnwritableOutputError(OSError):
    """The output folder cannot be written (read-only, permissions); checked before any work."""


class DiskFullError(OSError):
    """The output filesystem is full: the run stops (every later image would fail the same way)."""


@dataclass(frozen=True)
class OutputPaths:
    """The files of one input image inside an output folder."""

    record: Path
    mask: Path
    overlay: Path
    claim: Path


def output_paths(out_dir: Path, relative: Path | str) -> OutputPaths:
    """The outputs of the input at ``relative``; raises ``ValueError`` for a path that would leave ``out_dir``."""
    out_dir, relative = Path(out_dir), PurePath(relative)
    return OutputPaths(
        record=safe_output_path(out_dir, RECORDS_DIR / relative, ".json"),
        mask=safe_output_path(out_dir, MASKS_DIR / relative, ".png"),
        overlay=safe_output_path(out_dir, OVERLAYS_DIR / relative, ".jpg"),
        claim=safe_output_path(out_dir, CLAIMS_DIR / relative, ".claim"),
    )


def prepare_output(out_dir: Path) -> int:
    """Make ``out_dir`` a layout-2 output folder (create, or migrate layout 1); return how many
    images' outputs were discarded by the migration because they had collided.

    Checked first, before any work: the folder is writable (``UnwritableOutputError``) and its
    disk has ``MIN_FREE_BYTES`` free (``DiskFullError``). Temporary files killed runs left are
    removed (``remove_stale_temps``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LayoutError(f"--out {out_dir} is a file, not a folder")
    _check_writable(out_dir)
    for name in OUTPUT_DIRS:
        if (out_dir / name).is_symlink():
            raise LayoutError(f"{out_dir / name} is a symlink; freecp writes only inside --out, so make it a "
                              f"real folder (or use another --out)")
    try:
        marker = contained(out_dir, LAYOUT_FILE)
    except OutsideRootError as err:
        raise LayoutError(f"{out_dir}: {err}") from None
    remove_stale_temps(out_dir)
    if marker.is_file():
        try:
            version = json.loads(marker.read_text()).get("naming")
        except (OSError, ValueError, AttributeError):
            version = None
        if version != LAYOUT_VERSION:
            raise LayoutError(f"{out_dir} was written with output naming {version!r}, which this freecp "
                              f"does not know (it writes naming {LAYOUT_VERSION}); use another --out folder")
        return 0
    discarded = _migrate_layout_1(out_dir) if (out_dir / RECORDS_DIR).is_dir() else 0
    atomic_write(marker, json.dumps({"naming": LAYOUT_VERSION}).encode())
    return discarded


def remove_stale_temps(out_dir: Path) -> int:
    """Remove the ``.tmp-*`` files in ``out_dir`` and its output folders that are older than
    ``STALE_TEMP_SECONDS`` (a writer's temporary file lives for milliseconds, so such a file is
    a killed run's; a run writing beside this one keeps its own); return how many."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    pattern = f"{TEMP_PREFIX}*"
    found = [*out_dir.glob(pattern), *(p for name in OUTPUT_DIRS for p in (out_dir / name).rglob(pattern))]
    removed = 0
    for path in found:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: left alone
            if path.lstat().st_mtime < cutoff and not path.is_dir():
                path.unlink()
                removed += 1
    return removed


def _check_writable(out_dir: Path) -> None:
    """Make ``out_dir`` and write a probe file in it; a read-only folder or a full disk is one
    clear error here rather than a traceback from the first image's claim."""
    probe = out_dir / temp_name()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"freecp write check")
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):  # a read-only filesystem refuses even this
            probe.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(err.errno, f"the output disk is full ({err.strerror})") from None
        raise UnwritableOutputError(err.errno, f"cannot write to --out {out_dir} ({err.strerror})") from None
    free = shutil.disk_usage(out_dir).free
    if free < MIN_FREE_BYTES:
        raise DiskFullError(errno.ENOSPC, f"the output disk is full ({free} bytes free)")


def _migrate_layout_1(out_dir: Path) -> int:
    """Rename outputs to the full-name naming; drop the ones several inputs had overwritten.

    Records are input: a record whose paths would lead outside ``out_dir`` is dropped (its image
    is segmented again) and nothing it names is touched."""
    records: dict[Path, dict] = {}
    for path in (out_dir / RECORDS_DIR).rglob("*.json"):
        try:
            records[path] = _old_record(out_dir, path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            path.unlink(missing_ok=True)  # half-written by a killed run, or naming files outside: redo that image
    claimants: dict[str, list[Path]] = defaultdict(list)
    for path, record in records.items():
        claimants[record.get("mask") or ""].append(path)
    discarded = 0
    for old_mask, paths in claimants.items():
        collided = len(paths) > 1 or not old_mask
        for path in paths:
            record = records[path]
            if collided:  # overwritten by several inputs: the files belong to none of them
                for field in ("mask", "overlay"):
                    if record.get(field):
                        contained(out_dir, record[field]).unlink(missing_ok=True)
                path.unlink()
                discarded += 1
                continue
            new = output_paths(out_dir, record["path"])
            for field, target in (("mask", new.mask), ("overlay", new.overlay)):
                old = contained(out_dir, record[field]) if record.get(field) else None
                if old is not None and old.is_file() and old != target:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    old.replace(target)
                record[field] = target.relative_to(out_dir).as_posix()
            atomic_write(path, json.dumps(record).encode())
    return discarded


def _old_record(out_dir: Path, path: Path) -> dict:
    """A layout-1 record, checked before anything acts on it: the file itself, its image's path
    and the outputs it names must all stay inside ``out_dir`` (else ``ValueError``)."""
    record = json.loads(contained(out_dir, path.relative_to(out_dir)).read_text())
    output_paths(out_dir, record["path"])
    for field in ("mask", "overlay"):
        if record.get(field):
            contained(out_dir, record[field])
    return record
