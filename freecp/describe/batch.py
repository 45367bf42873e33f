"""Offline batches for GPU jobs without a server: ``vllm run-batch -i requests.jsonl -o results.jsonl``.

``export_batch`` writes, in the OpenAI batch format (one ``{"custom_id", "method", "url",
"body"}`` object a line), the next requests each class needs given the cache; ``custom_id`` is the
request's cache key. ``import_batch`` reads the results file (``{"custom_id", "response":
{"status_code", "body"}, "error"}`` a line) and stores every answer whose key belongs to the
vocabulary and settings given. Exporting again after an import asks for what is still missing, so
a few export/run/import rounds fill the cache as one server run would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from freecp.describe.client import ChatAnswer, LLMRequestError, answer_from_body, chat_body
from freecp.describe.plan import PlannedRequest, build_plans, make_entry
from freecp.stores.descriptions import SOURCE_BATCH, DescriptionCache
from freecp.files import atomic_write
from freecp.vocab import Vocabulary

CHAT_ENDPOINT = "/v1/chat/completions"


class BatchFormatError(ValueError):
    """A batch results file that is not in the OpenAI batch output format; nothing was imported."""


@dataclass
class BatchImport:
    imported: int = 0
    already_cached: int = 0
    unmatched: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def export_batch(
    vocab: Vocabulary, path: str | Path, *, cache: DescriptionCache, llm_model: str, structured: bool = True,
    **plan_options,
) -> int:
    """Write the requests the cache still lacks (the next wave of each class); return how many."""
    lines = []
    for plan in build_plans(vocab, llm_model=llm_model, **plan_options):
        while wave := plan.next_wave():
            misses = [p for p in wave if p.key not in cache]
            if misses:
                lines += [_request_line(p, structured) for p in misses]
                break
            for planned in wave:
                plan.record(cache.get(planned.key).descriptions)
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    atomic_write(Path(path), text.encode("utf-8"))
    return len(lines)


def import_batch(
    vocab: Vocabulary, path: str | Path, *, cache: DescriptionCache, llm_model: str, **plan_options,
) -> BatchImport:
    """Store the answers of a ``vllm run-batch`` results file. The file is checked whole first."""
    source = Path(path)
    known: dict[str, PlannedRequest] = {
        p.key: p for plan in build_plans(vocab, llm_model=llm_model, **plan_options) for p in plan.candidates
    }
    result = BatchImport()
    entries = []
    for number, record in _read_records(source):
        planned = known.get(str(record.get("custom_id")))
        if planned is None:
            result.unmatched += 1
            continue
        if planned.key in cache:
            result.already_cached += 1
            continue
        try:
            answer = _answer(record)
        except LLMRequestError as err:
            result.failed[planned.key] = f"line {number}: {err}"
            continue
        entries.append(make_entry(planned, answer, source=SOURCE_BATCH, server=f"batch:{source.name}"))
    cache.append(entries)
    result.imported = len(entries)
    return result


def _request_line(planned: PlannedRequest, structured: bool) -> dict:
    return {"custom_id": planned.key, "method": "POST", "url": CHAT_ENDPOINT,
            "body": chat_body(planned.llm_model, planned.request, structured)}


def _read_records(source: Path) -> list[tuple[int, dict]]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BatchFormatError(f"{source}: cannot read it: {err}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise BatchFormatError(f"{source}: line {number} is not JSON") from None
        if not isinstance(record, dict) or "custom_id" not in record:
            raise BatchFormatError(f"{source}: line {number} has no custom_id (not a batch results line)")
        records.append((number, record))
    return records


def _answer(record: dict) -> ChatAnswer:
    if record.get("error"):
        raise LLMRequestError(f"the batch reported an error: {str(record['error'])[:200]}")
    response = record.get("response") or {}
    if "choices" in response:  # some runners put the completion itself under "response"
        return answer_from_body(response)
    status = response.get("status_code")
    if status != 200:
        raise LLMRequestError(f"status {status}: {str(response.get('body'))[:200]}")
    return answer_from_body(response.get("body"))
