"""Which requests describe a class, their cache keys, and when a class has enough.

A class's possible requests form a fixed list: the questions of the prompt set in turn, each
asked again with the next seed, up to ``max_requests``. They are taken in waves: the first wave
asks as many questions as ``per_class`` is likely to need, each later wave what the yield so far
says is still missing. Decisions depend only on the answers (cached or fresh), so a re-run walks
the same list, finds every answer in the cache and sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from freecp.dedup import merge_descriptions
from freecp.describe.clean import CLEANING_VERSION, clean_answer
from freecp.describe.client import ChatAnswer, ChatRequest
from freecp.defaults import PROMPT_SET
from freecp.describe.prompts import Prompt, render_prompts
from freecp.stores.descriptions import CacheEntry, now_utc
from freecp.vocab import ClassEntry, Vocabulary

KEY_VERSION = 1
EXPECTED_PER_ANSWER = 5


@dataclass(frozen=True)
class PlannedRequest:
    """One request for one class, identified by its content-addressed cache key."""

    key: str
    entry: ClassEntry
    prompt: Prompt
    llm_model: str
    sampling: str
    request: ChatRequest


def request_key(class_names: tuple[str, ...], prompt_hash: str, llm_model: str, sampling: str) -> str:
    """The content hash of everything an answer depends on."""
    payload = json.dumps(
        {"v": KEY_VERSION, "class": list(class_names), "prompt": prompt_hash, "model": llm_model, "sampling": sampling},
        ensure_ascii=False, separators=(",", ":"), sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_max_requests(per_class: int, questions: int) -> int:
    return max(2 * questions, math.ceil(3 * per_class / EXPECTED_PER_ANSWER))


def candidate_requests(
    entry: ClassEntry, *, llm_model: str, temperature: float, max_tokens: int, max_requests: int,
    prompt_set: str = PROMPT_SET,
) -> list[PlannedRequest]:
    """The fixed, ordered list of requests a class may need."""
    prompts = render_prompts(entry, prompt_set)
    planned = []
    for index in range(max_requests):
        prompt, seed = prompts[index % len(prompts)], index // len(prompts)
        sampling = json.dumps({"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
                              sort_keys=True, separators=(",", ":"))
        request = ChatRequest(messages=tuple((m["role"], m["content"]) for m in prompt.messages()),
                              temperature=temperature, max_tokens=max_tokens, seed=seed)
        planned.append(PlannedRequest(
            key=request_key(entry.names, prompt.content_hash, llm_model, sampling),
            entry=entry, prompt=prompt, llm_model=llm_model, sampling=sampling, request=request,
        ))
    return planned


@dataclass
class ClassPlan:
    """Progress of one class: the descriptions gathered and the next requests to make."""

    entry: ClassEntry
    candidates: list[PlannedRequest]
    per_class: int
    questions: int
    descriptions: list[str] = field(default_factory=list)
    answered: int = 0
    failure: str = ""
    _next: int = 0

    @property
    def done(self) -> bool:
        return len(self.descriptions) >= self.per_class

    def next_wave(self) -> list[PlannedRequest]:
        """The next requests to make; empty when the class is done, failed or out of requests."""
        if self.done or self.failure or self._next >= len(self.candidates):
            return []
        missing = self.per_class - len(self.descriptions)
        if self.answered == 0:
            size = math.ceil(missing / EXPECTED_PER_ANSWER)
        else:
            size = math.ceil(missing / max(1.0, len(self.descriptions) / self.answered))
        size = max(1, min(size, self.questions, len(self.candidates) - self._next))
        wave = self.candidates[self._next:self._next + size]
        self._next += size
        return wave

    def record(self, descriptions: tuple[str, ...] | list[str]) -> None:
        self.answered += 1
        self.descriptions = merge_descriptions([self.descriptions, list(descriptions)])

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason

    def shortfall(self) -> str:
        """Why the class ended short (only meaningful when not ``done``)."""
        if self.failure:
            return f"request failed: {self.failure}"
        return (f"{len(self.descriptions)} usable descriptions from {self.answered} answers "
                f"(limit of {len(self.candidates)} requests reached)")


def build_plans(
    vocab: Vocabulary, *, llm_model: str, per_class: int, temperature: float, max_tokens: int,
    max_requests: int | None = None, prompt_set: str = PROMPT_SET,
) -> list[ClassPlan]:
    """One plan per foreground class (the background is never described)."""
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0.0 <= temperature <= 2.0:
        raise ValueError("temperature must be between 0 and 2")
    plans = []
    for index in vocab.foreground_indices:
        entry = vocab.classes[index]
        questions = len(render_prompts(entry, prompt_set))
        limit = max_requests or default_max_requests(per_class, questions)
        candidates = candidate_requests(entry, llm_model=llm_model, temperature=temperature,
                                        max_tokens=max_tokens, max_requests=limit, prompt_set=prompt_set)
        plans.append(ClassPlan(entry=entry, candidates=candidates, per_class=per_class, questions=questions))
    return plans


def make_entry(planned: PlannedRequest, answer: ChatAnswer, *, source: str, server: str) -> CacheEntry:
    """The cache entry for one answered request, with its cleaned descriptions."""
    descriptions = clean_answer(answer.text, planned.entry.names, truncated=answer.finish_reason == "length")
    return CacheEntry(
        key=planned.key, class_name=planned.entry.name, class_names=planned.entry.names,
        prompt_set=planned.prompt.prompt_set, prompt_id=planned.prompt.prompt_id,
        prompt_hash=planned.prompt.content_hash, prompt=planned.prompt.user, llm_model=planned.llm_model,
        sampling=planned.sampling, raw_answer=answer.text, finish_reason=answer.finish_reason,
        descriptions=tuple(descriptions), cleaning_version=CLEANING_VERSION, source=source, server=server,
        created_at=now_utc(),
    )
