"""Offline batches: the missing requests answered by vLLM's ``run_batch`` instead of a server.

``describe_offline`` (``freecp describe VOCAB --run-batch``, the flows' ``run_batch`` parameter)
does it all here: it writes the requests the cache lacks, runs ``run_batch`` on them in the vLLM
environment (``freecp.describe.serve.batch_command``), stores the answers (the same entries and
cleaning as the live path), and repeats while the answers leave classes short. Each round's
answers are stored when its batch ends, so a killed run keeps every finished round and a re-run
asks only for what is still missing.

For GPU jobs elsewhere the two halves stay apart: ``export_batch`` writes, in the OpenAI batch
format (one ``{"custom_id", "method", "url", "body"}`` object a line), the next requests each
class needs given the cache; ``custom_id`` is the request's cache key. ``import_batch`` reads the
results file (``{"custom_id", "response": {"status_code", "body"}, "error"}`` a line) and stores
every answer whose key belongs to the vocabulary and settings given. Exporting again after an
import asks for what is still missing, so a few export/run/import rounds fill the cache as one
server run would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from freecp.describe.client import ChatAnswer, LLMRequestError, LLMUnavailableError, answer_from_body, chat_body
from freecp.describe.plan import ClassPlan, PlannedRequest, build_plans, make_entry
from freecp.describe.run import DescribeSummary, model_to_ask
from freecp.describe.serve import batch_command, log_tail, served_name
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
    """Write the requests the cache still lacks (the next wave of each class; none for a class with
    reviewed descriptions); return how many."""
    reviewed = cache.reviewed_classes()
    lines = [_request_line(p, structured)
             for plan in build_plans(vocab, llm_model=llm_model, **plan_options)
             if plan.entry.name not in reviewed for p in _missing(plan, cache)]
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


def describe_offline(
    vocab: Vocabulary, *, cache: DescriptionCache, llm_model: str | None = None, vllm_env: str | None = None,
    structured: bool = True, **plan_options,
) -> DescribeSummary:
    """Fill the cache through ``run_batch`` rounds (see the module text); the summary counts them all."""
    llm_model = model_to_ask(None, llm_model, vllm_env)
    model = served_name(llm_model)
    summary = DescribeSummary(vocabulary=vocab.name, llm_model=model, cache=cache.url, classes_total=0)
    with tempfile.TemporaryDirectory(prefix="freecp-run-batch-") as work:
        for round_number in range(1, 1_000):
            requests, results = Path(work) / f"requests-{round_number}.jsonl", Path(work) / f"results-{round_number}.jsonl"
            count = export_batch(vocab, requests, cache=cache, llm_model=model, structured=structured, **plan_options)
            if count == 0:
                break
            command = batch_command(llm_model, requests, results, vllm_env=vllm_env)
            _run_batch(command.argv, command.env, Path(work) / f"run-batch-{round_number}.log")
            summary.engine, summary.server = command.engine, f"run_batch ({round_number} rounds)"
            summary.requests_sent += count
            result = import_batch(vocab, results, cache=cache, llm_model=model, **plan_options)
            summary.answers_saved += result.imported
            summary.failed.update(result.failed)
            if result.imported == 0:
                break  # nothing new came back: asking again would loop
    reviewed = cache.reviewed_classes()
    for plan in build_plans(vocab, llm_model=model, **plan_options):
        _missing(plan, cache)  # replays the class from the cache
        summary.classes_total += 1
        if plan.done or plan.entry.name in reviewed:
            summary.classes_done += 1
        else:
            summary.short[plan.entry.name] = (len(plan.descriptions), plan.shortfall())
    return summary


def _run_batch(argv: tuple[str, ...], env: dict[str, str], log: Path) -> None:
    """Run one batch to its end; an interrupt ends its whole process group (vLLM has engine children)."""
    with open(log, "wb") as handle:
        process = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if status != 0:
        raise LLMUnavailableError(f"vLLM run_batch exited with status {status}; last log lines:\n{log_tail(log)}")


def _missing(plan: ClassPlan, cache: DescriptionCache) -> list[PlannedRequest]:
    """Replay a class's waves from the cache; the requests its next wave lacks (none: nothing to ask)."""
    while wave := plan.next_wave():
        misses = [p for p in wave if p.key not in cache]
        if misses:
            return misses
        for planned in wave:
            plan.record(cache.get(planned.key).descriptions)
    return []


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
