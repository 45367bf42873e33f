"""Vocabularies: which classes to segment, their synonyms, and the background names.

File format (UTF-8, one class a line, synonyms comma-separated)::

    background: sky, wall, tree      <- optional first line: names that only compete in the softmax
    aeroplane
    person, person in shirt, body    <- first name is the class name, the rest are synonyms

A vocabulary is named either by a shipped name (``voc21``, see ``vocab/``) or by a file path.
Its content hash depends only on the names, so two files with the same classes share caches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from freecp.resources import VOCABULARIES, shipped

BACKGROUND_PREFIX = "background:"


class VocabularyError(ValueError):
    """A vocabulary file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class ClassEntry:
    """One output class: its display name and every name (query) that stands for it."""

    names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of classes; with a background line, class 0 is the background.

    Label maps use the index into ``classes``, so a pixel value of 0 means background
    whenever ``has_background`` is true.
    """

    name: str
    classes: tuple[ClassEntry, ...]
    has_background: bool

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Display names in label order; the background line shows as "background"."""
        names = [c.name for c in self.classes]
        if self.has_background:
            names[0] = "background"
        return names

    @property
    def foreground_indices(self) -> list[int]:
        """Indices of the classes that can be purified and re-classified (not the background)."""
        return list(range(1 if self.has_background else 0, len(self.classes)))

    @property
    def queries(self) -> list[str]:
        """Every name of every class, flattened in class order (one text embedding each)."""
        return [n for c in self.classes for n in c.names]

    @property
    def query_class(self) -> list[int]:
        """For each entry of ``queries``, the index of the class it belongs to."""
        return [i for i, c in enumerate(self.classes) for _ in c.names]

    @property
    def content_hash(self) -> str:
        """Stable hash of the names only (not of the file path, spacing or vocabulary name)."""
        payload = json.dumps(
            {"background": self.has_background, "classes": [list(c.names) for c in self.classes]},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_text(self) -> str:
        """The vocabulary in its file format (round-trips through ``parse_vocabulary``)."""
        lines = [", ".join(c.names) for c in self.classes]
        if self.has_background:
            lines[0] = f"{BACKGROUND_PREFIX} {lines[0]}"
        return "\n".join(lines) + "\n"


def shipped_vocabularies() -> list[str]:
    """Names of the vocabularies that come with freecp."""
    return sorted(p.stem for p in _shipped_dir().glob("*.txt"))


def _shipped_dir() -> Path:
    return shipped(VOCABULARIES)


def load_vocabulary(source: str | Path | list[str]) -> Vocabulary:
    """Load a vocabulary from a shipped name, a file path, or an inline list of class lines."""
    if isinstance(source, list):
        return parse_vocabulary("\n".join(source), name="inline", origin="inline list")
    text_source = str(source)
    shipped = _shipped_dir() / f"{text_source}.txt"
    path = shipped if shipped.is_file() and "/" not in text_source else Path(text_source)
    if not path.is_file():
        raise VocabularyError(
            f"vocabulary {text_source!r} is neither a shipped name "
            f"({', '.join(shipped_vocabularies())}) nor a readable file"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise VocabularyError(f"{path}: line {line}: not valid UTF-8") from None
    return parse_vocabulary(text, name=path.stem, origin=str(path))


def parse_vocabulary(text: str, name: str, origin: str = "<text>") -> Vocabulary:
    """Parse the file format; every problem is reported with its line number."""
    lines = text.lstrip("\ufeff").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise VocabularyError(f"{origin}: the vocabulary is empty")
    classes: list[ClassEntry] = []
    has_background = False
    seen: dict[str, int] = {}  # foreground names; background names may repeat them (coco_object does)
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            raise VocabularyError(f"{origin}: line {number}: blank line inside the vocabulary")
        is_background = line.lower().startswith(BACKGROUND_PREFIX)
        if is_background:
            if number != 1:
                raise VocabularyError(f"{origin}: line {number}: only the first line may be the background")
            has_background = True
            line = line[len(BACKGROUND_PREFIX):]
        names = tuple(n.strip() for n in line.split(","))
        if any(not n for n in names):
            raise VocabularyError(f"{origin}: line {number}: empty name in {raw.strip()!r}")
        if len({n.casefold() for n in names}) != len(names):
            raise VocabularyError(f"{origin}: line {number}: a name is repeated within the line")
        for n in names if not is_background else ():
            if n.casefold() in seen:
                raise VocabularyError(
                    f"{origin}: line {number}: {n!r} already appears on line {seen[n.casefold()]}"
                )
            seen[n.casefold()] = number
        classes.append(ClassEntry(names=names))
    if not has_background and classes[0].names == ("background",):
        has_background = True  # context60's plain "background" line
    if len(classes) - int(has_background) < 1:
        raise VocabularyError(f"{origin}: the vocabulary has no class besides the background")
    return Vocabulary(name=name, classes=tuple(classes), has_background=has_background)
