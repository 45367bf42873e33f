"""Describing vocabularies against the real vLLM (the session's server, tests/fixtures_llm.py, on
the bundled SmolLM2-135M-Instruct; on this machine vLLM's CPU build).

The model is tiny, so these tests check plumbing (structured requests, cache, resume, sharing,
starting and losing a server), never the quality of what it writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freecp.cli import app
from freecp.describe.client import LLMUnavailableError
from freecp.describe.run import describe_vocabulary
from freecp.describe.serve import free_port
from freecp.stores.descriptions import SHARD_DIR, DescriptionCache
from freecp.vocab import load_vocabulary

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from freecp.cli import main; main()"]
SMALL = dict(per_class=2, max_tokens=64, max_requests=2, concurrency=4)
SMALL_FLAGS = ["--per-class", "2", "--max-tokens", "64", "--max-requests", "2"]


def test_describe_a_vocabulary_then_a_second_run_sends_nothing(tmp_path: Path, llm_server):
    vocab_file = tmp_path / "animals.txt"
    vocab_file.write_text("background: sky, grass\ncat\ndog, puppy\n")
    vocab = load_vocabulary(str(vocab_file))
    cache_url = str(tmp_path / "cache")

    first = describe_vocabulary(vocab, llm_url=llm_server.url, llm_model=llm_server.model, cache=cache_url, **SMALL)
    assert first.ok and first.classes_total == 2
    assert first.requests_sent >= 2 and first.answers_saved == first.requests_sent and first.cache_hits == 0
    assert first.classes_done + len(first.short) == 2
    entries = DescriptionCache(cache_url).entries()
    assert len(entries) == first.requests_sent
    assert {e.class_name for e in entries} == {"cat", "dog"}  # the background is never described
    assert all(e.llm_model == llm_server.model and e.server == llm_server.url and e.raw_answer for e in entries)
    assert first.engine == "vLLM 0.32.0" and first.llm_model == llm_server.model
    # vLLM was asked for JSON-schema output: every answer that was not cut off is a JSON list of strings
    complete = [json.loads(e.raw_answer) for e in entries if e.finish_reason == "stop"]
    assert complete and all(isinstance(items, list) and all(isinstance(i, str) for i in items) for items in complete)
    assert all(e.class_names == ("dog", "puppy") for e in entries if e.class_name == "dog")

    # SmolLM2 with 24 tokens sometimes gives a class no usable description at all: such a class is
    # asked again (its request budget), every other answer comes from the cache.
    empty = {name for name, (count, _) in first.short.items() if count == 0}
    reused = sum(1 for e in entries if e.class_name not in empty)
    again = describe_vocabulary(vocab, llm_url=llm_server.url, llm_model=llm_server.model, cache=cache_url, **SMALL)
    assert (again.requests_sent, again.cache_hits) == (SMALL["max_requests"] * len(empty), reused)
    if not empty:
        assert (again.classes_done, again.short) == (first.classes_done, first.short)

    # The command, pointed at a dead address, on the classes the cache answers fully: it needs no
    # server. Classes left without descriptions must go to a server, so there it says it has none.
    dead = f"http://127.0.0.1:{free_port()}/v1"
    lines = {"cat": "cat", "dog": "dog, puppy"}
    answered = [name for name in lines if name not in empty]
    runner = CliRunner()
    if empty:
        asks = runner.invoke(app, ["describe", str(vocab_file), "--llm-url", dead, "--llm-model", llm_server.model,
                                   "--cache", cache_url, *SMALL_FLAGS])
        assert asks.exit_code != 0 and "127.0.0.1" in asks.output, asks.output
    cached_file = tmp_path / "answered.txt"
    cached_file.write_text("background: sky, grass\n" + "".join(lines[name] + "\n" for name in answered))
    if answered:
        result = runner.invoke(app, ["describe", str(cached_file), "--llm-url", dead, "--llm-model", llm_server.model,
                                     "--cache", cache_url, *SMALL_FLAGS])
        assert result.exit_code == 0, result.output
        hits = sum(1 for e in entries if e.class_name in answered)
        assert f"requests sent: 0   cache hits: {hits}" in result.output
        assert f"model: {llm_server.model}   server: no server" in result.output

    described = DescriptionCache(cache_url).descriptions_for(vocab)
    for name, texts in described.items():
        shown = runner.invoke(app, ["describe", "--show", name, "--cache", cache_url])
        assert shown.exit_code == 0 and f"{name}: {len(texts)} descriptions" in shown.output
        assert all(text in shown.output for text in texts)


def test_wrong_model_name_is_a_clear_error(tmp_path: Path, llm_server):
    cache = DescriptionCache(tmp_path / "cache")
    with pytest.raises(LLMUnavailableError, match=f"does not serve model 'vicuna'.*{llm_server.model}"):
        describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm_server.url, llm_model="vicuna", cache=cache,
                            **SMALL)
    assert cache.root.list_files(SHARD_DIR) == []


def test_describe_without_a_url_starts_vllm_and_a_killed_server_loses_no_answer(tmp_path: Path, llm_server):
    """``freecp describe`` with no server flag starts the local vLLM (here the CPU build, on the
    bundled model) and says so; once the first answers are saved the server is killed (SIGKILL to
    its whole process group). The run ends with one message saying what it kept, and a re-run
    against the session's server sends only the requests still missing."""
    cache = DescriptionCache(tmp_path / "cache")
    (tmp_path / "v.txt").write_text("cat\n")
    flags = ["--cache", cache.url, "--per-class", "50", "--max-requests", "6", "--max-tokens", "96",
             "--concurrency", "1", "--retries", "0"]
    proc = subprocess.Popen([*CLI, "describe", str(tmp_path / "v.txt"), *flags], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while not (said and "local LLM server ready" in said[-1]) and (line := proc.stderr.readline()):
            said.append(line)
        ready = said[-1]
        assert "(vLLM 0.32.0 (CPU build), model smollm2-135m-instruct, pid " in ready, "".join(said)
        pid = int(ready.rsplit("pid ", 1)[1].split(")")[0])
        deadline = time.monotonic() + 300
        while not cache.root.list_files(SHARD_DIR, ".parquet") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "run again to send only the missing requests" in stderr, stdout + stderr
    assert "Traceback" not in stderr and stderr.count("error:") == 1
    saved_entries = DescriptionCache(cache.url).entries()
    saved = {e.key for e in saved_entries}
    assert 1 <= len(saved) < 6
    assert {e.llm_model for e in saved_entries} == {llm_server.model}
    # a class whose saved answers hold no description at all is asked again (issue 9 rule 7)
    reused = len(saved) if any(e.descriptions for e in saved_entries) else 0

    resumed = describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm_server.url, llm_model=llm_server.model,
                                  cache=cache.url, per_class=50, max_requests=6, max_tokens=96)
    assert resumed.cache_hits == reused and resumed.requests_sent == 6 - reused
    final = DescriptionCache(cache.url).entries()
    assert len(final) == 6 and saved <= {e.key for e in final}


def test_cache_on_s3(s3_bucket: str, llm_server):
    url = f"{s3_bucket}/shared/cache"
    vocab = load_vocabulary(["dog"])
    options = dict(per_class=1, max_requests=1, max_tokens=8)
    first = describe_vocabulary(vocab, llm_url=llm_server.url, llm_model=llm_server.model, cache=url, **options)
    assert first.requests_sent == 1
    asked_again = 0 if DescriptionCache(url).descriptions_for(vocab) else 1  # no description: rule 7
    again = describe_vocabulary(vocab, llm_url=llm_server.url, llm_model=llm_server.model,
                                cache=DescriptionCache(url), **options)
    assert (again.requests_sent, again.cache_hits) == (asked_again, 1 - asked_again)
    assert [e.class_name for e in DescriptionCache(url).entries()] == ["dog"]


def test_two_processes_describing_overlapping_vocabularies_share_one_cache(tmp_path: Path, llm_server):
    cache_url = str(tmp_path / "cache")
    flags = ["--llm-url", llm_server.url, "--llm-model", llm_server.model, "--cache", cache_url,
             "--per-class", "2", "--max-requests", "1", "--max-tokens", "16"]
    runs = []
    for name, classes in (("a", "cat\ndog\n"), ("b", "dog\nhorse\n")):
        (tmp_path / f"{name}.txt").write_text(classes)
        runs.append(subprocess.Popen([*CLI, "describe", str(tmp_path / f"{name}.txt"), *flags], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in runs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert "requests sent:" in stdout
    union = load_vocabulary(["cat", "dog", "horse"])
    bare = 3 - len(DescriptionCache(cache_url).descriptions_for(union))  # asked again (rule 7)
    shared = describe_vocabulary(union, llm_url=llm_server.url, llm_model=llm_server.model, cache=cache_url,
                                 per_class=2, max_requests=1, max_tokens=16)
    assert (shared.requests_sent, shared.cache_hits) == (bare, 3 - bare)
    assert {e.class_name for e in DescriptionCache(cache_url).entries()} == {"cat", "dog", "horse"}


def test_describe_command_killed_halfway_keeps_its_answers(tmp_path: Path, llm_server):
    """The command saves answers every few seconds; the kill lands after the first save, while
    later requests (long enough to outlast the save interval) are still under way."""
    cache = DescriptionCache(tmp_path / "cache")
    (tmp_path / "v.txt").write_text("bicycle\n")
    flags = ["--llm-url", llm_server.url, "--llm-model", llm_server.model, "--cache", cache.url,
             "--per-class", "50", "--max-requests", "5", "--max-tokens", "64", "--concurrency", "1"]
    proc = subprocess.Popen([*CLI, "describe", str(tmp_path / "v.txt"), *flags], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not cache.root.list_files(SHARD_DIR, ".parquet") and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated (SIGTERM)" in stderr  # SIGTERM ends it as Ctrl-C does, with 143
    saved = {e.key for e in DescriptionCache(cache.url).entries()}
    assert 1 <= len(saved) < 5
    reused = len(saved) if DescriptionCache(cache.url).descriptions_for(load_vocabulary(["bicycle"])) else 0
    resumed = describe_vocabulary(load_vocabulary(["bicycle"]), llm_url=llm_server.url, llm_model=llm_server.model,
                                  cache=cache.url, per_class=50, max_requests=5, max_tokens=64)
    assert (resumed.cache_hits, resumed.requests_sent) == (reused, 5 - reused)
