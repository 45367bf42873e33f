"""Rendering the versioned description prompts in ``prompts/``.

A prompt set is a folder ``prompts/<set>/`` (the set name carries its version, e.g.
``descriptions-v1``) holding ``system.jinja`` and one ``NN-<id>.jinja`` per question, asked in
``NN`` order. Templates see ``name`` (the class name), ``synonyms`` (the other names, as a list,
so the LLM is told they are synonyms) and ``count`` (how many items one answer should list).
The hash of the rendered messages goes into every cache key, so editing a template re-asks only
what it changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from freecp.defaults import PROMPT_SET
from freecp.resources import PROMPTS, shipped
from freecp.vocab import ClassEntry

VICUNA_TEMPLATE = "vicuna-v1.1.jinja"
ITEMS_PER_ANSWER = 10
_QUESTION_FILE = re.compile(r"^(\d+)-([a-z0-9_-]+)\.jinja$")


class PromptError(RuntimeError):
    """A prompt set that is missing or does not render; the message names the file."""


@dataclass(frozen=True)
class Prompt:
    """One rendered question for one class: what is sent, and the hash that identifies it."""

    prompt_id: str
    prompt_set: str
    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    @property
    def content_hash(self) -> str:
        payload = json.dumps(self.messages(), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prompts_dir() -> Path:
    """The shipped ``prompts/`` folder (the checkout's own, or the installed package's copy)."""
    return shipped(PROMPTS)


def vicuna_template_path() -> Path:
    """The chat template to hand to ``vllm serve --chat-template`` for Vicuna models."""
    return prompts_dir() / VICUNA_TEMPLATE


@functools.lru_cache(maxsize=8)
def _environment(prompt_set: str) -> tuple[jinja2.Environment, tuple[tuple[str, str], ...]]:
    folder = prompts_dir() / prompt_set
    if "/" in prompt_set or prompt_set.startswith(".") or not folder.is_dir():
        raise PromptError(f"prompt set {prompt_set!r} not found under {prompts_dir()}")
    questions = []
    for path in folder.iterdir():
        match = _QUESTION_FILE.match(path.name)
        if match:
            questions.append((int(match.group(1)), match.group(2), path.name))
    if not questions or not (folder / "system.jinja").is_file():
        raise PromptError(f"{folder}: a prompt set needs system.jinja and at least one NN-<id>.jinja")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    ordered = tuple((qid, file) for _, qid, file in sorted(questions))
    return env, ordered


def question_ids(prompt_set: str = PROMPT_SET) -> list[str]:
    """The question ids of a set, in the order they are asked."""
    return [qid for qid, _ in _environment(prompt_set)[1]]


def render_prompts(entry: ClassEntry, prompt_set: str = PROMPT_SET, count: int = ITEMS_PER_ANSWER) -> list[Prompt]:
    """Every question of the set, rendered for one class."""
    env, questions = _environment(prompt_set)
    variables = {"name": entry.name, "synonyms": list(entry.names[1:]), "count": count}
    try:
        system = _tidy(env.get_template("system.jinja").render(**variables))
        return [
            Prompt(prompt_id=qid, prompt_set=prompt_set, system=system,
                   user=_tidy(env.get_template(file).render(**variables)))
            for qid, file in questions
        ]
    except jinja2.TemplateError as err:
        raise PromptError(f"prompt set {prompt_set}: {err}") from None


def _tidy(text: str) -> str:
    return " ".join(text.split())
