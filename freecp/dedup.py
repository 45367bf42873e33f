"""Description lists compared as a reader would: case, punctuation and spacing do not make a new item.

Shared by the cleaner (``describe.clean``) and the description cache (``stores.descriptions``),
which merges the lists of several answers; it lives below both so neither imports the other.
"""

from __future__ import annotations

import re


def comparison_key(text: str) -> str:
    """``text`` casefolded, punctuation as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def merge_descriptions(lists: list[list[str]]) -> list[str]:
    """Concatenate description lists in order, dropping case/punctuation-insensitive repeats."""
    merged: list[str] = []
    seen: set[str] = set()
    for descriptions in lists:
        for text in descriptions:
            key = comparison_key(text)
            if key and key not in seen:
                seen.add(key)
                merged.append(text)
    return merged
