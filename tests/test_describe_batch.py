"""Offline batches: the OpenAI batch format, and the real vLLM ``run_batch`` run by ``freecp describe --run-batch``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from freecp.describe.batch import BatchFormatError, export_batch, import_batch
from freecp.describe.clean import CLEANING_VERSION, clean_answer
from freecp.describe.client import ChatAnswer
from freecp.describe.plan import build_plans, make_entry
from freecp.describe.run import describe_vocabulary
from freecp.stores.descriptions import SHARD_DIR, SOURCE_BATCH, DescriptionCache
from freecp.vocab import load_vocabulary

SETTINGS = dict(per_class=3, temperature=0.7, max_tokens=48)
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from freecp.cli import main; main()"]


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


def test_export_asks_nothing_for_a_class_with_reviewed_descriptions(tmp_path: Path):
    """Imported (reviewed) descriptions replace generated ones, in the batch path as in the live one."""
    vocab = load_vocabulary(["cat", "dog"])
    cache = DescriptionCache(tmp_path / "cache")
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text('{"cat": ["a small furry pet", "an animal with whiskers"]}')
    assert cache.import_json(reviewed) == 1
    (dog_plan,) = [p for p in build_plans(vocab, llm_model="vicuna", **SETTINGS) if p.entry.name == "dog"]

    count = export_batch(vocab, tmp_path / "requests.jsonl", cache=cache, llm_model="vicuna", **SETTINGS)
    assert count == 1
    assert [line["custom_id"] for line in read_jsonl(tmp_path / "requests.jsonl")] == [dog_plan.candidates[0].key]


def test_run_batch_round_trip_lands_the_entries_the_live_path_does(tmp_path: Path, llm_server):
    """``freecp describe --run-batch`` runs the real vLLM ``run_batch`` on what the cache lacks; its
    entries are those the live path makes (keys, model, cleaning), so the live path afterwards sends
    only what it would ask again anyway, and a second ``--run-batch`` starts nothing."""
    (tmp_path / "v.txt").write_text("cat\ndog\n")
    cache = DescriptionCache(tmp_path / "cache")
    options = dict(per_class=2, max_tokens=64, max_requests=1)
    flags = ["--cache", cache.url, "--per-class", "2", "--max-tokens", "64", "--max-requests", "1"]
    done = subprocess.run([*CLI, "describe", str(tmp_path / "v.txt"), "--run-batch", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "requests sent: 2" in done.stdout
    assert f"model: {llm_server.model}   server: vLLM 0.32.0 (CPU build) at run_batch (1 rounds)" in done.stdout

    entries = cache.entries()
    assert sorted(e.class_name for e in entries) == ["cat", "dog"]
    assert all(e.source == SOURCE_BATCH and e.llm_model == llm_server.model for e in entries)
    assert all(e.cleaning_version == CLEANING_VERSION and list(e.descriptions) == clean_answer(
        e.raw_answer, e.class_names, truncated=e.finish_reason == "length") for e in entries)
    complete = [json.loads(e.raw_answer) for e in entries if e.finish_reason == "stop"]  # JSON-schema output
    assert all(isinstance(items, list) for items in complete)

    again = subprocess.run([*CLI, "describe", str(tmp_path / "v.txt"), "--run-batch", *flags], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "requests sent: 0" in again.stdout and "server: no server" in again.stdout

    empty = {e.class_name for e in entries if not e.descriptions}  # asked again by the live path (rule 7)
    live = describe_vocabulary(load_vocabulary(["cat", "dog"]), llm_url=llm_server.url, llm_model=llm_server.model,
                               cache=cache.url, **options)
    assert (live.requests_sent, live.cache_hits) == (len(empty), 2 - len(empty))


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
