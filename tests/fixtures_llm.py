"""A real vLLM server for the tests, started once per session the way a user starts one.

vLLM comes from the environment ``scripts/install-vllm.sh`` makes (``$FREECP_VLLM_ENV`` or its
default; ``.ci/run`` runs the script first); the model is the bundled SmolLM2-135M-Instruct
that the script converts. The server is ``freecp llm serve --port 0`` in a subprocess, on
127.0.0.1: ``llm_server.url`` is its API base (ends in ``/v1``), ``llm_server.model`` the model
name to send (``smollm2-135m-instruct``). Without the environment the tests using it fail with the
install command: they are not skipped.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from freecp.describe.client import LLMUnavailableError
from freecp.describe.convert import is_converted
from freecp.describe.serve import INSTALL_COMMAND, VllmInstall, bundled_model_folder, find_vllm

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from freecp.cli import main; main()"]


@dataclass
class CliServer:
    """A running ``freecp llm serve``: its process (the server's parent), URL and model name."""

    process: subprocess.Popen
    url: str
    model: str

    def stop(self) -> str:
        """Ctrl-C, as a user stops it; returns what it printed after the ready line."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            rest, _ = self.process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        return rest or ""


def start_cli_server(*args: str, timeout: float = 600) -> CliServer:
    """``freecp llm serve --port 0 ARGS``, returned once it printed that it is ready."""
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([*CLI, "llm", "serve", "--port", "0", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=errors, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LLM server ready:"):
            words = line.split()
            return CliServer(proc, words[words.index("--llm-url") + 1], words[words.index("--llm-model") + 1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    errors.seek(0)
    raise AssertionError(f"freecp llm serve did not become ready:\n{errors.read()[-3000:]}")


@pytest.fixture(scope="session")
def vllm_install() -> VllmInstall:
    try:
        return find_vllm()
    except LLMUnavailableError as err:
        pytest.fail(f"these tests need the real vLLM: {err}")


@pytest.fixture(scope="session")
def smollm2_folder(vllm_install: VllmInstall) -> Path:
    """The bundled model, converted by the install script."""
    folder = bundled_model_folder()
    if not is_converted(folder):
        pytest.fail(f"the bundled model is not converted at {folder}; run: {INSTALL_COMMAND}")
    return folder


@pytest.fixture(scope="session")
def llm_server(smollm2_folder: Path) -> Iterator[CliServer]:
    """The session's vLLM server on the bundled model; stopped at the end of the session."""
    server = start_cli_server("--model", str(smollm2_folder))
    try:
        yield server
    finally:
        server.stop()
