"""User text on the terminal: class names, file names and errors come from files nobody checked,
so control and format characters in them (NUL, ESC, bidi overrides) are written as escapes
(``\\x1b``, ``\\u202e``) and cannot clear the screen, recolour or reorder what follows."""

from __future__ import annotations

import logging
import sys
import unicodedata

from rich.markup import escape

_ESCAPED = ("Cc", "Cf", "Zl", "Zp", "Cs")  # control, format (bidi, zero-width), separators, surrogates
_KEPT = {"\u200c", "\u200d"}  # zero-width (non-)joiners: parts of emoji and of some scripts' words


def safe(text: object) -> str:
    """``text`` with every control or format character written as its escape."""
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in _ESCAPED and c not in _KEPT else c for c in str(text))


def shown(text: object) -> str:
    """``safe`` text for a rich console: markup in it is escaped too."""
    return escape(safe(text))


class TerminalLogHandler(logging.Handler):
    """The library's warnings on stderr as bare messages (as Python prints them by default),
    made ``safe``; the ``freecp`` command installs it on the ``freecp`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(safe(record.getMessage()) + "\n")
