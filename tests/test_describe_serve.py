"""Choosing how to serve a model locally (the command lines; starting them is in test_describe_llm.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from freecp.describe.client import LLMUnavailableError
from freecp.describe.prompts import vicuna_template_path
from freecp.defaults import DEFAULT_VLLM_MODEL, SMOLLM2_NAME
from freecp.describe.serve import server_command


@pytest.fixture
def vllm_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable named ``vllm`` on PATH (never run here: only its path goes into the command)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    return exe


def test_vllm_serves_vicuna_with_the_vicuna_chat_template(vllm_on_path: Path):
    command = server_command(None, port=8123)
    assert command.kind == "vllm" and command.model == DEFAULT_VLLM_MODEL
    assert command.argv[:3] == (str(vllm_on_path), "serve", DEFAULT_VLLM_MODEL)
    assert command.argv[command.argv.index("--chat-template") + 1] == str(vicuna_template_path())
    assert command.argv[command.argv.index("--host") + 1] == "127.0.0.1"
    assert command.url == "http://127.0.0.1:8123/v1"
    other = server_command("mistralai/Mistral-7B-Instruct-v0.3", port=8123)
    assert "--chat-template" not in other.argv  # other models keep their own template


def test_vllm_serves_a_local_folder_under_its_folder_name(vllm_on_path: Path, tmp_path: Path):
    folder = tmp_path / "vicuna-7b-local"
    folder.mkdir()
    command = server_command(str(folder), port=8123)
    assert command.model == "vicuna-7b-local"
    assert command.argv[command.argv.index("--served-model-name") + 1] == "vicuna-7b-local"


def test_without_vllm_a_folder_goes_to_transformers_serve(smollm2_folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    command = server_command(str(smollm2_folder), port=8123)
    assert command.kind == "transformers" and command.model == smollm2_folder.name
    assert command.cwd == smollm2_folder.parent and command.env["HF_HUB_OFFLINE"] == "1"
    assert command.argv[-7:] == (smollm2_folder.name, "--device", "cpu", "--host", "127.0.0.1", "--port", "8123")


def test_without_vllm_a_hub_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LLMUnavailableError, match=f"no vllm executable.*{SMOLLM2_NAME}"):
        server_command("lmsys/vicuna-7b-v1.5", port=8123)
    with pytest.raises(LLMUnavailableError, match="--vllm-bin"):
        server_command("lmsys/vicuna-7b-v1.5", vllm_bin="/nonexistent/vllm", port=8123)
