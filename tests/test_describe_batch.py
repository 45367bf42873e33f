"""Offline batches in the OpenAI batch format that ``vllm run-batch`` reads and writes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from freecp.describe.batch import BatchFormatError, export_batch, import_batch
from freecp.describe.client import ChatAnswer
from freecp.describe.plan import build_plans, make_entry
from freecp.stores.descriptions import SHARD_DIR, SOURCE_BATCH, DescriptionCache
from freecp.vocab import load_vocabulary

SETTINGS = dict(per_class=3, temperature=0.7, max_tokens=48)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_writes_only_missing_requests_in_batch_format(tmp_path: Path):
    vocab = load_vocabulary(["background: sky", "cat", "dog"])
    cache = DescriptionCache(tmp_path / "cache")
    cat_plan, dog_plan = build_plans(vocab, llm_model="vicuna", **SETTINGS)
    answer = ChatAnswer("1. Pointed ears\n2. Long whiskers\n3. Striped fur", "stop")
    cache.append([make_entry(cat_plan.candidates[0], answer, source=SOURCE_BATCH, server="batch:test")])

    count = export_batch(vocab, tmp_path / "requests.jsonl", cache=cache, llm_model="vicuna", **SETTINGS)
    lines = read_jsonl(tmp_path / "requests.jsonl")
    assert count == len(lines) == 1  # cat is complete from the cache; dog needs its first request
    line = lines[0]
    assert line["custom_id"] == dog_plan.candidates[0].key
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    body = line["body"]
    assert body["model"] == "vicuna" and body["max_tokens"] == 48 and body["seed"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and '"dog"' in body["messages"][1]["content"]
    assert body["response_format"]["type"] == "json_schema"


def test_results_answered_by_the_real_server_are_imported(tmp_path: Path, llm_server):
    vocab = load_vocabulary(["cat"])
    cache = DescriptionCache(tmp_path / "cache")
    requests = tmp_path / "requests.jsonl"
    assert export_batch(vocab, requests, cache=cache, llm_model=llm_server.model, structured=False, **SETTINGS) == 1
    request = read_jsonl(requests)[0]
    # Play the part of `vllm run-batch`: send each body to the server, write its output format.
    response = httpx.post(f"{llm_server.url}/chat/completions", json=request["body"], timeout=300)
    assert response.status_code == 200
    results = tmp_path / "results.jsonl"
    lines = [
        {"id": "batch-1", "custom_id": request["custom_id"], "error": None,
         "response": {"status_code": 200, "request_id": "r1", "body": response.json()}},
        {"id": "batch-2", "custom_id": "0" * 64, "error": None,
         "response": {"status_code": 200, "request_id": "r2", "body": response.json()}},
    ]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))

    outcome = import_batch(vocab, results, cache=cache, llm_model=llm_server.model, **SETTINGS)
    assert (outcome.imported, outcome.unmatched, outcome.failed) == (1, 1, {})
    stored = DescriptionCache(cache.url).get(request["custom_id"])
    assert stored.source == SOURCE_BATCH and stored.server == "batch:results.jsonl"
    assert stored.raw_answer == response.json()["choices"][0]["message"]["content"]
    assert import_batch(vocab, results, cache=cache, llm_model=llm_server.model, **SETTINGS).already_cached == 1

    export_batch(vocab, requests, cache=cache, llm_model=llm_server.model, **SETTINGS)
    assert request["custom_id"] not in {line["custom_id"] for line in read_jsonl(requests)}


def test_failed_lines_are_reported_and_bare_completions_accepted(tmp_path: Path):
    vocab = load_vocabulary(["cat"])
    cache = DescriptionCache(tmp_path / "cache")
    first, second = build_plans(vocab, llm_model="vicuna", **SETTINGS)[0].candidates[:2]
    bare = {"choices": [{"message": {"role": "assistant", "content": "1. Pointed ears"}, "finish_reason": "stop"}]}
    lines = [{"custom_id": first.key, "response": None, "error": {"message": "out of memory"}},
             {"custom_id": second.key, "response": bare}]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    outcome = import_batch(vocab, results, cache=cache, llm_model="vicuna", **SETTINGS)
    assert outcome.imported == 1
    assert "line 1" in outcome.failed[first.key] and "out of memory" in outcome.failed[first.key]
    assert DescriptionCache(cache.url).get(second.key).descriptions == ("Pointed ears",)


def test_a_malformed_results_file_imports_nothing(tmp_path: Path):
    vocab = load_vocabulary(["cat"])
    cache = DescriptionCache(tmp_path / "cache")
    key = build_plans(vocab, llm_model="vicuna", **SETTINGS)[0].candidates[0].key
    good = {"custom_id": key, "error": None, "response": {"status_code": 200, "body": {
        "choices": [{"message": {"role": "assistant", "content": "1. Pointed ears"}, "finish_reason": "stop"}]}}}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(good) + "\n{truncated\n")
    with pytest.raises(BatchFormatError, match="line 2 is not JSON"):
        import_batch(vocab, results, cache=cache, llm_model="vicuna", **SETTINGS)
    assert cache.root.list_files(SHARD_DIR) == []


def test_command_round_trip_of_a_batch(tmp_path: Path):
    from typer.testing import CliRunner

    from freecp.cli import app

    runner = CliRunner()
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\n")
    flags = ["--cache", str(tmp_path / "cache"), "--llm-model", "vicuna", "--per-class", "3", "--max-tokens", "48",
             "--temperature", "0.7"]
    requests = tmp_path / "requests.jsonl"
    result = runner.invoke(app, ["describe", str(vocab), "--export-batch", str(requests), *flags])
    assert result.exit_code == 0 and "wrote 1 requests" in result.output
    key = read_jsonl(requests)[0]["custom_id"]
    answer = {"choices": [{"message": {"role": "assistant", "content": "1. Pointed ears\n2. Long whiskers\n"
                                       "3. Striped fur"}, "finish_reason": "stop"}]}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"custom_id": key, "error": None,
                                   "response": {"status_code": 200, "body": answer}}) + "\n")
    result = runner.invoke(app, ["describe", str(vocab), "--import-batch", str(results), *flags])
    assert result.exit_code == 0 and "imported 1 answers" in result.output
    result = runner.invoke(app, ["describe", str(vocab), "--export-batch", str(requests), *flags])
    assert "wrote 0 requests" in result.output and requests.read_text() == ""
    assert DescriptionCache(str(tmp_path / "cache")).descriptions_for(load_vocabulary(["cat"])) == {
        "cat": ["Pointed ears", "Long whiskers", "Striped fur"]}
