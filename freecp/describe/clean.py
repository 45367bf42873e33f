"""Turning an LLM answer into a list of short visual descriptions.

Answers arrive as a JSON list (structured output, or a model that followed the JSON prompt), a
numbered or bulleted list, or plain prose; small models add chatter, repeat themselves and get
cut off at ``max_tokens``. Work is linear in the answer's length and capped at
``MAX_ANSWER_CHARS``, as answers come from a server nobody controls. ``parse_answer`` splits any
of these into candidate items and ``clean_items`` keeps only the ones worth a text embedding. The rules are versioned so a cache
entry records which rules produced its descriptions (the raw answer is kept for re-cleaning).
"""

from __future__ import annotations

import json
import re

from freecp.dedup import comparison_key

CLEANING_VERSION = "2"  # 2: placeholders, bare class names and questions dropped; long JSON items split
MIN_CHARS = 8
MIN_WORDS = 2
MAX_CHARS = 200
MAX_WORDS = 35
MAX_ANSWER_CHARS = 20_000  # far more than max_tokens allows; beyond it an answer is runaway output

_FENCE = re.compile(r"```[a-zA-Z]*\s*|```")
_MARKER = re.compile(r"^\s*(?:[-*•·–—>]+|\(?\d{1,3}[.):\]]|\(?[a-zA-Z][.)](?=\s)|#+)\s*")
_INLINE_NUMBER = re.compile(r"\s+(?=\d{1,2}[.)]\s+\S)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_EMPHASIS = re.compile(r"\*\*|__|`")
_QUOTES = "\"'“”‘’«»"
_CHATTER = re.compile(
    r"(\bas an ai\b|\blanguage model\b|\bi(?:'m| am) (?:sorry|unable|not able)\b|\bi can(?:not|'t)\b"
    r"|^(?:sure|certainly|of course|okay|ok|great|absolutely)\b|^here (?:is|are)\b|\bhope (?:this|that) helps\b"
    r"|\blet me know\b|^(?:note|in summary|overall|in conclusion|to summari[sz]e)\b|\bfeel free\b"
    r"|^(?:these|the following|below) (?:are|is)\b)",
    re.IGNORECASE,
)
_NON_VISUAL = re.compile(
    r"\b(?:sounds?|smells?|tastes?|scent|odou?r|price[sd]?|costs?|invented|history|lifespan|weighs?)\b",
    re.IGNORECASE,
)
_CODE = re.compile(r"[{}<>=;\\]|https?://|\bdef\b|\bimport\b")
# What a small model copies from the prompt instead of answering ("first feature", "feature 2", the
# JSON prompt's own example): an ordinal or number with a generic noun, nothing about the thing.
_PLACEHOLDER = re.compile(
    r"^(?:(?:(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|next|another|last|example"
    r"|\d+(?:st|nd|rd|th)?)\s+(?:visual\s+)?(?:feature|description|item|cue|caption|point|string|answer)s?)"
    r"|(?:(?:visual\s+)?(?:feature|description|item|cue|caption|point|string|answer)\s+(?:\d+|one|two|three)))$",
    re.IGNORECASE,
)
# Words around a class name that still say nothing about its look: "a photo of a cat", "the cat".
_SUBJECT_ONLY = re.compile(
    r"^(?:(?:this is|it is|it's)\s+)?(?:(?:a|an|the)\s+)?"
    r"(?:(?:photo|picture|image|photograph|close-up|closeup|view)\s+of\s+)?(?:(?:a|an|the)\s+)?",
    re.IGNORECASE,
)


def parse_answer(text: str, truncated: bool = False) -> list[str]:
    """Split an answer into candidate items (not yet cleaned).

    A JSON list anywhere in the answer wins; otherwise each line is an item and lines holding
    several sentences or several inline numbers are split. With ``truncated`` (the server
    stopped at ``max_tokens``) the last line, or the last sentence of a one-line answer, is
    dropped, as it was probably cut off.
    """
    text = text or ""
    if len(text) > MAX_ANSWER_CHARS:  # bound the work; what is cut is treated like a cut-off answer
        text, truncated = text[:MAX_ANSWER_CHARS], True
    body = _FENCE.sub("\n", text)
    items = _json_items(body)
    if items is not None:  # a long item (a paragraph, an inline numbered list) is split like a line
        return [piece for item in items for piece in _split_line(item)]
    lines = body.strip().splitlines()
    one_line = len(lines) == 1
    if truncated and not one_line:
        lines = lines[:-1]  # the cut-off line
    items = [piece for line in lines for piece in _split_line(line)]
    if truncated and one_line:
        items = items[:-1]  # one line of prose: its last sentence was cut
    return items


def clean_items(items: list[str], class_names: tuple[str, ...] = ()) -> list[str]:
    """Normalise items and drop chatter, refusals, non-visual facts, duplicates, bad lengths, the
    prompt's placeholders ("first feature") and items that only restate the class name."""
    names = {comparison_key(n) for n in class_names}
    kept: list[str] = []
    seen: set[str] = set()
    for item in items:
        if str(item).rstrip().endswith(":"):  # a heading such as "Colours:" introduces items
            continue
        text = _normalise(item)
        key = comparison_key(text)
        if not key or key in seen or comparison_key(_SUBJECT_ONLY.sub("", text)) in names or not _acceptable(text):
            continue
        seen.add(key)
        kept.append(text)
    return kept


def clean_answer(text: str, class_names: tuple[str, ...] = (), truncated: bool = False) -> list[str]:
    """``parse_answer`` then ``clean_items``: the descriptions one answer contributes."""
    return clean_items(parse_answer(text, truncated=truncated), class_names)


def _json_items(body: str) -> list[str] | None:
    start, end = body.find("["), body.rfind("]")
    candidates = [body.strip()] + ([body[start:end + 1]] if 0 <= start < end else [])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, list)), None)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
    return None


def _split_line(line: str) -> list[str]:
    line = " ".join(line.split())  # single spaces: the splitting patterns below stay linear
    pieces = _INLINE_NUMBER.split(line) if line else []
    out: list[str] = []
    for piece in pieces:
        piece = _MARKER.sub("", piece, count=1).strip()
        several_sentences = _SENTENCE_END.search(piece) is not None
        if len(piece) > MAX_CHARS or (several_sentences and len(piece.split()) > MAX_WORDS // 2):
            out.extend(s for s in _SENTENCE_END.split(piece) if s.strip())
        elif piece:
            out.append(piece)
    return out


def _normalise(item: str) -> str:
    text = _MARKER.sub("", " ".join(str(item).split()), count=1)
    text = _EMPHASIS.sub("", text).strip()
    text = text.strip(_QUOTES + " ").rstrip(",;:").strip(_QUOTES + " ")
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text[:1].upper() + text[1:]


def _acceptable(text: str) -> bool:
    words = text.split()
    if not (MIN_CHARS <= len(text) <= MAX_CHARS and MIN_WORDS <= len(words) <= MAX_WORDS):
        return False
    if sum(ch.isalpha() for ch in text) < len(text) / 2 or text.endswith("?"):  # a question (often ours, echoed)
        return False
    return not (_CHATTER.search(text) or _NON_VISUAL.search(text) or _CODE.search(text) or _PLACEHOLDER.match(text))
