"""Which files a segment run reads: image files under the images folder, never its own outputs.

Symlink policy: a file symlink whose target lies inside the images folder is read like any file
(under the link's name). A folder symlink whose target lies inside is not walked: that folder's
images are found at their real place, so none is segmented twice under two names. A symlink
(file or folder) that leads outside is not followed unless ``follow_symlinks`` is set, and each
one left out is logged, so a folder cannot pull in files from elsewhere unnoticed. With
``follow_symlinks`` every folder link is walked, each real folder once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from freecp.io import IMAGE_SUFFIXES
from freecp.layout import OUTPUT_DIRS

log = logging.getLogger(__name__)


@dataclass
class ImageSearch:
    """The images to segment, and the symlinks that were not followed because they lead out."""

    images: list[Path]
    outside_links: list[Path]


def find_images(root: Path, exclude: Path | None = None, follow_symlinks: bool = False) -> ImageSearch:
    """Image files under ``root`` (or ``root`` itself), sorted, never an output of ``exclude``.

    ``exclude`` is the output folder: neither it nor its ``masks``/``overlays`` folders are
    searched, so outputs are never inputs even with ``--out`` equal to (or above) ``root``.
    Symlinks (files or folders) that resolve outside ``root`` are left out unless
    ``follow_symlinks``; hidden folders are skipped.
    """
    root = Path(root)
    if root.is_file():
        return ImageSearch([root], [])
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is neither an image file nor a folder")
    real_root = root.resolve()
    skip = set()
    if exclude is not None:
        skip = {Path(exclude).resolve()} | {(Path(exclude) / d).resolve() for d in OUTPUT_DIRS}
    found, outside, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        here = Path(dirpath)
        if follow_symlinks:  # a link cycle would walk forever
            if here.resolve() in seen:
                dirnames[:] = []
                continue
            seen.add(here.resolve())
        kept = []
        for d in sorted(dirnames):
            target = (here / d).resolve()
            if d.startswith(".") or target in skip:
                continue
            if (here / d).is_symlink() and not follow_symlinks:
                if not target.is_relative_to(real_root):
                    outside.append(here / d)
                continue  # a link within the folder: its images are walked at their real place
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not follow_symlinks and path.is_symlink() and not path.resolve().is_relative_to(real_root):
                outside.append(path)
                continue
            found.append(path)
    for link in outside:
        log.warning("not following %s: the symlink leads outside %s (use --follow-symlinks)", link, root)
    return ImageSearch(found, outside)
