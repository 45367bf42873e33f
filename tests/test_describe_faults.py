"""Faults a real LLM server cannot be made to produce on demand: 500s, 429s, garbage, hangs.

THESE TESTS USE A SCRIPTED FAKE HTTP SERVER (``ScriptedLLM`` below), not a model: each test
scripts the answers the client receives. The real-server behaviour (describing, caching,
resuming, a killed server) is tested against the real vLLM in ``test_describe_llm.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from freecp.cli import app
from freecp.describe.client import LLMUnavailableError
from freecp.describe.run import describe_vocabulary
from freecp.describe.serve import free_port
from freecp.stores.descriptions import SHARD_DIR, DescriptionCache
from freecp.vocab import load_vocabulary

MODEL = "scripted-model"
ROOT = Path(__file__).resolve().parent.parent
Reply = tuple[int, dict[str, str], bytes]


def completion(text: str, finish: str = "stop") -> Reply:
    body = {"object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


GOOD = completion("1. Pointed ears on top\n2. Long white whiskers\n3. Soft striped fur\n4. Green round eyes")


class ScriptedLLM:
    """A fake OpenAI-style server whose chat answers come from ``script(body, call_number)``.

    ``script`` returns (status, headers, body), the string "hang" (no answer for 5 s), or
    ("drip", reply, seconds): the reply's bytes one at a time, ``seconds`` apart.
    """

    def __init__(self, script: Callable[[dict, int], Reply | str], owned_by: str = "scripted"):
        self.script, self.owned_by = script, owned_by
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": outer.owned_by}]}
                self._send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.bodies.append(body)
                    number = len(outer.bodies)
                reply = outer.script(body, number)
                if reply == "hang":
                    time.sleep(5)
                    return
                if reply[0] == "drip":
                    self._send(*reply[1], byte_delay=reply[2])
                    return
                self._send(*reply)

            def _send(self, status: int, headers: dict[str, str], data: bytes, byte_delay: float = 0.0) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for chunk in [bytes([b]) for b in data] if byte_delay else [data]:  # drip: a byte at a time
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        time.sleep(byte_delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


def asks_about(body: dict, name: str) -> bool:
    return f'"{name}"' in body["messages"][-1]["content"]


VOCAB = load_vocabulary(["cat", "dog"])
FAST = dict(per_class=3, max_requests=2, concurrency=4, retries=2, timeout=2.0)


@pytest.fixture
def cache(tmp_path) -> Iterator[DescriptionCache]:
    yield DescriptionCache(tmp_path / "cache")


def test_transient_500_and_429_answers_are_retried(cache: DescriptionCache):
    """Scripted: a real vLLM answers 500 or 429 only when it breaks or overloads, never on cue."""
    def script(body: dict, number: int) -> Reply:
        if number <= 2:
            return 500, {}, b"overloaded"
        if number == 3:
            return 429, {"Retry-After": "0"}, b"slow down"
        return GOOD

    with ScriptedLLM(script) as llm:
        summary = describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm.url, llm_model=MODEL, cache=cache,
                                      **{**FAST, "retries": 3})
    assert summary.ok and summary.requests_sent == 1 and len(llm.bodies) == 4
    assert summary.classes_done == 1
    assert DescriptionCache(cache.url).descriptions_for(load_vocabulary(["cat"]))["cat"][:2] == [
        "Pointed ears on top", "Long white whiskers"]


def test_a_class_whose_requests_keep_failing_is_recorded_and_the_run_goes_on(cache: DescriptionCache):
    """Scripted: a real vLLM cannot be made to fail the requests of one class only."""
    with ScriptedLLM(lambda body, n: (500, {}, b"boom") if asks_about(body, "cat") else GOOD) as llm:
        summary = describe_vocabulary(VOCAB, llm_url=llm.url, llm_model=MODEL, cache=cache, **FAST)
    assert not summary.ok
    assert "HTTP 500" in summary.failed["cat"] and summary.short["cat"][0] == 0
    assert "dog" not in summary.failed and summary.classes_done == 1
    assert set(DescriptionCache(cache.url).descriptions_for(VOCAB)) == {"dog"}

    with ScriptedLLM(lambda body, n: GOOD) as llm:
        again = describe_vocabulary(VOCAB, llm_url=llm.url, llm_model=MODEL, cache=cache.url, **FAST)
    assert again.ok and again.cache_hits == summary.answers_saved
    assert all(asks_about(body, "cat") for body in llm.bodies)  # only what was missing is asked


def test_garbage_http_body_is_a_failed_request(cache: DescriptionCache):
    """Scripted: a real vLLM never answers with an HTML page (a proxy in front of it might)."""
    with ScriptedLLM(lambda body, n: (200, {"Content-Type": "text/html"}, b"<html>oops</html>")) as llm:
        summary = describe_vocabulary(VOCAB, llm_url=llm.url, llm_model=MODEL, cache=cache, **FAST)
    assert set(summary.failed) == {"cat", "dog"}
    assert all("malformed answer" in reason for reason in summary.failed.values())
    assert cache.root.list_files(SHARD_DIR) == []


def test_garbage_answer_text_leaves_the_class_short_with_a_reason(cache: DescriptionCache):
    """Scripted: a real model cannot be made to answer this exact garbage."""
    with ScriptedLLM(lambda body, n: completion("!!! ??? ###\n...\nSure! Here you go:")) as llm:
        summary = describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm.url, llm_model=MODEL, cache=cache,
                                      **FAST)
    assert summary.ok and summary.requests_sent == 2
    count, reason = summary.short["cat"]
    assert count == 0 and "0 usable descriptions from 2 answers" in reason
    kept = DescriptionCache(cache.url).entries()
    assert len(kept) == 2 and all(e.raw_answer.startswith("!!!") and e.descriptions == () for e in kept)
    assert DescriptionCache(cache.url).descriptions_for(load_vocabulary(["cat"])) == {}


def test_a_hanging_server_times_out(cache: DescriptionCache):
    """Scripted: a real vLLM that accepts a request and never answers cannot be had on demand."""
    with ScriptedLLM(lambda body, n: "hang") as llm:
        options = {**FAST, "timeout": 0.5, "retries": 1}
        summary = describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm.url, llm_model=MODEL, cache=cache,
                                      **options)
    assert "no answer within 0.5 s" in summary.failed["cat"]
    assert len(llm.bodies) == 2  # the first attempt and one retry


def test_vllm_is_asked_for_json_schema_output_and_others_are_not(cache: DescriptionCache):
    """Scripted: the same server seen as vLLM and as another OpenAI-compatible server (none here)."""
    json_answer = completion(json.dumps(["Pointed ears", "Long whiskers", "Striped tail"]))
    with ScriptedLLM(lambda body, n: json_answer, owned_by="vllm") as llm:
        summary = describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm.url, llm_model=MODEL, cache=cache,
                                      **FAST)
    schema = llm.bodies[0]["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["schema"]["type"] == "array"
    assert summary.classes_done == 1
    with ScriptedLLM(lambda body, n: GOOD) as llm:
        describe_vocabulary(load_vocabulary(["dog"]), llm_url=llm.url, llm_model=MODEL, cache=cache, **FAST)
    assert "response_format" not in llm.bodies[0]


def test_a_server_rejecting_response_format_gets_free_text_said_once(cache: DescriptionCache, caplog):
    """vLLM 0.32.0 accepts the JSON schema; a build or backend that refuses it (vLLM issue 51283)
    cannot be had on demand, so this server is scripted to answer HTTP 400 as vLLM words it."""
    refusal = (400, {"Content-Type": "application/json"}, json.dumps({"error": {
        "message": "response_format json_schema is not supported by this structured outputs backend",
        "type": "BadRequestError", "code": 400}}).encode())
    with ScriptedLLM(lambda body, n: refusal if "response_format" in body else GOOD, owned_by="vllm") as llm:
        with caplog.at_level("WARNING", logger="freecp.describe"):
            summary = describe_vocabulary(VOCAB, llm_url=llm.url, llm_model=MODEL, cache=cache, **FAST)
    assert summary.ok and summary.classes_done == 2 and summary.requests_sent == 2
    assert "response_format" in llm.bodies[0] and "response_format" not in llm.bodies[-1]
    said = [r.getMessage() for r in caplog.records if "rejected the JSON-schema" in r.getMessage()]
    assert len(said) == 1 and "free text" in said[0]
    assert cache.descriptions_for(VOCAB)["cat"][0] == "Pointed ears on top"


def test_unreachable_server_is_a_clear_error_and_writes_nothing(cache: DescriptionCache):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMUnavailableError, match="cannot reach the LLM server"):
        describe_vocabulary(VOCAB, llm_url=url, llm_model=MODEL, cache=cache, **FAST)
    assert cache.root.list_files(SHARD_DIR) == []


def test_command_exits_non_zero_with_one_message(tmp_path):
    """Scripted (the second half): a real vLLM answers 500 only when it breaks, never on cue."""
    runner = CliRunner()
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = runner.invoke(app, ["describe", "voc21", "--llm-url", url, "--llm-model", MODEL,
                                 "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "error: cannot reach the LLM server" in result.output and "Traceback" not in result.output

    vocab = tmp_path / "animals.txt"
    vocab.write_text("cat\n")
    with ScriptedLLM(lambda body, n: (500, {}, b"boom")) as llm:
        failed = runner.invoke(app, ["describe", str(vocab), "--llm-url", llm.url, "--llm-model", MODEL, "--cache",
                                     str(tmp_path / "cache"), "--max-requests", "1", "--retries", "0"])
    assert failed.exit_code == 1
    assert "classes done: 0/1" in failed.output and "1 classes had failed requests" in failed.output


def test_a_server_dripping_its_answer_hits_the_whole_request_deadline(cache: DescriptionCache):
    """Scripted: a real vLLM does not send its answer a byte at a time."""
    # each byte comes well within the timeout, the whole answer (hundreds of bytes) far after it
    with ScriptedLLM(lambda body, n: ("drip", GOOD, 0.2)) as llm:
        summary = describe_vocabulary(load_vocabulary(["cat"]), llm_url=llm.url, llm_model=MODEL, cache=cache,
                                      **{**FAST, "timeout": 1.0, "retries": 0, "max_requests": 1})
    assert "no answer within 1 s" in summary.failed["cat"]


REFUSAL = completion("I'm sorry, but I can't help with that.")


def test_refusals_and_empty_answers_are_asked_again_on_the_next_run(cache: DescriptionCache):
    """Scripted: a real model cannot be made to refuse (or answer nothing) on cue."""
    vocab = load_vocabulary(["cat", "dog"])
    with ScriptedLLM(lambda body, n: REFUSAL if asks_about(body, "cat") else completion("")) as llm:
        first = describe_vocabulary(vocab, llm_url=llm.url, llm_model=MODEL, cache=cache, **FAST)
    assert first.short == {"cat": (0, first.short["cat"][1]), "dog": (0, first.short["dog"][1])}
    assert len(DescriptionCache(cache.url).entries()) == 4  # kept, so one can see what the model said
    with ScriptedLLM(lambda body, n: GOOD) as llm:
        second = describe_vocabulary(vocab, llm_url=llm.url, llm_model=MODEL, cache=cache.url, **FAST)
    assert second.requests_sent == 2 and second.cache_hits == 0 and second.classes_done == 2
    assert set(DescriptionCache(cache.url).descriptions_for(vocab)) == {"cat", "dog"}
    with ScriptedLLM(lambda body, n: GOOD) as llm:
        third = describe_vocabulary(vocab, llm_url=llm.url, llm_model=MODEL, cache=cache.url, **FAST)
    assert third.requests_sent == 0 and len(llm.bodies) == 0  # good answers are reused


def test_the_command_names_classes_without_descriptions_and_what_to_do(tmp_path):
    """Scripted: a real model cannot be made to give a class no usable description on cue."""
    vocab = tmp_path / "animals.txt"
    vocab.write_text("cat\ndog\n")
    with ScriptedLLM(lambda body, n: REFUSAL if asks_about(body, "cat") else GOOD) as llm:
        result = CliRunner().invoke(app, ["describe", str(vocab), "--llm-url", llm.url, "--llm-model", MODEL,
                                          "--cache", str(tmp_path / "cache"), "--max-requests", "1",
                                          "--per-class", "2"])
    assert "1 classes have no usable description: cat" in result.output
    assert "--import-json" in result.output and "asks again" in result.output


def test_kill_9_loses_at_most_about_a_second_of_answers(tmp_path):
    """Three answers come at once, then the server goes silent; the run is killed 3 s later.
    Scripted: a real vLLM's answers cannot be timed this exactly."""
    vocab = tmp_path / "animals.txt"
    vocab.write_text("cat\ndog\nhorse\n")
    answered = threading.Event()

    def script(body: dict, number: int):
        if number <= 3:
            if number == 3:
                threading.Timer(0.2, answered.set).start()
            return GOOD
        return "hang"

    with ScriptedLLM(script) as llm:
        proc = subprocess.Popen(
            [sys.executable, "-m", "freecp", "describe", str(vocab), "--llm-url", llm.url, "--llm-model", MODEL,
             "--cache", str(tmp_path / "cache"), "--per-class", "8", "--max-requests", "4", "--concurrency", "1",
             "--timeout", "60", "--retries", "0"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert answered.wait(120), "the describe run never got its three answers"
            time.sleep(3)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert len(DescriptionCache(tmp_path / "cache").entries()) == 3
