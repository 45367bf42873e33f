"""``freecp encode`` and ``freecp store ls|inspect|compact`` through the real Typer app."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from freecp.cli import app
from freecp.clip import embed_vocabulary
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.encoding import load_embeddings
from freecp.stores.descriptions import DescriptionCache
from freecp.stores.embeddings import EmbeddingStore
from freecp.vocab import load_vocabulary

TINY = ["--model", "freecp-tiny", "--pretrained", "none", "--no-progress"]
MODEL_KEY = "freecp-tiny/random-seed0|text-fast"  # the text key: model key and float order (freecp.text_keys)
DESCRIPTIONS = {"cat": ["an animal that purrs", "a small furry pet with whiskers"]}

pytestmark = pytest.mark.filterwarnings("ignore:CLIP weights are RANDOM")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "pets.txt"
    path.write_text("background: sky\ncat, kitty\ndog\n", encoding="utf-8")
    return path


@pytest.fixture
def description_cache(tmp_path) -> str:
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(DESCRIPTIONS), encoding="utf-8")
    url = str(tmp_path / "descriptions")
    DescriptionCache(url).import_json(reviewed)
    return url


def test_encode_then_reuse_then_ls_and_inspect(tmp_path, vocab_file, description_cache):
    store = tmp_path / "embeddings"
    first = run("encode", vocab_file, "--store", store, "--descriptions", description_cache, *TINY)
    assert first.exit_code == 0, first.output
    assert "encoded 6 texts (4 class names, 2 descriptions), reused 0" in first.output
    assert "classes with descriptions: 1;" in first.output

    again = run("encode", vocab_file, "--store", store, "--descriptions", description_cache, *TINY)
    assert again.exit_code == 0, again.output
    assert "encoded 0 texts" in again.output and "reused 6" in again.output

    vocab = load_vocabulary(vocab_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_backbone(ClipModel("freecp-tiny", pretrained="none"))
    stored = load_embeddings(EmbeddingStore(str(store)), vocab, backbone)
    want = embed_vocabulary(backbone, vocab, DESCRIPTIONS)
    assert torch.allclose(stored.queries, want.queries, atol=1e-6, rtol=0)
    assert torch.allclose(stored.descriptions, want.descriptions, atol=1e-6, rtol=0)

    listing = run("store", "ls", store)
    assert listing.exit_code == 0, listing.output
    assert MODEL_KEY in listing.output and "pets" in listing.output and vocab.content_hash in listing.output
    model_row = next(line for line in listing.output.splitlines() if MODEL_KEY in line)
    assert [cell.strip() for cell in model_row.split("│")[2:8]] == ["64", "4", "2", "1", "3", "1"]

    inspected = run("store", "inspect", store, vocab_file)
    assert inspected.exit_code == 0, inspected.output
    assert "complete" in inspected.output and "INCOMPLETE" not in inspected.output
    rows = {line.split("│")[2].strip(): line
            for line in inspected.output.splitlines() if line.count("│") > 3}
    assert "2/2" in rows["cat, kitty"] and "2" in rows["cat, kitty"].split("│")[4]
    assert "none (AP uses class names)" in rows["dog"]
    assert "background (no AP)" in rows["sky"]
    assert "foreground classes: 1 with descriptions, 1 without" in inspected.output


def _imported_modules(stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_a_rerun_decides_from_the_store_without_building_the_model(tmp_path, tiny_backbone, vocab_file,
                                                                   description_cache):
    """The second run is a real process: `-X importtime` shows whether torch or open_clip were loaded."""
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), checkpoint)
    store = tmp_path / "embeddings"
    for weights in (["--pretrained", "none"], ["--clip-checkpoint", checkpoint]):
        args = ["encode", vocab_file, "--store", store, "--descriptions", description_cache,
                "--model", "freecp-tiny", *weights, "--no-progress"]
        first = run(*args)
        assert first.exit_code == 0 and "encoded 6 texts" in first.output, first.output
        assert "model not loaded" not in first.output
        again = subprocess.run([sys.executable, "-X", "importtime", "-m", "freecp", *map(str, args)],
                               capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "encoded 0 texts" in again.stdout and "reused 6" in again.stdout
        assert "(up to date: model not loaded)" in again.stdout
        modules = _imported_modules(again.stderr)
        assert "freecp.encoding" in modules and not modules & {"torch", "open_clip"}

    grown = tmp_path / "pets-and-cows.txt"
    grown.write_text(vocab_file.read_text() + "cow\n", encoding="utf-8")
    more = run("encode", grown, "--store", store, *TINY)
    assert more.exit_code == 0 and "encoded 1 texts" in more.output and "model not loaded" not in more.output


def test_inspect_reports_a_vocabulary_that_was_not_encoded(tmp_path, vocab_file):
    store = tmp_path / "embeddings"
    assert run("encode", vocab_file, "--store", store, *TINY).exit_code == 0
    other = tmp_path / "farm.txt"
    other.write_text("dog\ncow\n", encoding="utf-8")
    inspected = run("store", "inspect", store, other, "--model-key", MODEL_KEY)
    assert inspected.exit_code == 0, inspected.output
    assert "INCOMPLETE" in inspected.output
    rows = [line for line in inspected.output.splitlines() if "│" in line]
    assert any("dog" in r and "1/1" in r for r in rows) and any("cow" in r and "0/1" in r for r in rows)


def test_encode_and_ls_on_s3(s3_bucket, vocab_file):
    url = f"{s3_bucket}/shared/embeddings"
    result = run("encode", vocab_file, "--store", url, *TINY)
    assert result.exit_code == 0, result.output
    assert "encoded 4 texts" in result.output
    listing = run("store", "ls", url)
    assert listing.exit_code == 0 and MODEL_KEY in listing.output and "pets" in listing.output
    assert run("encode", vocab_file, "--store", url, *TINY).output.count("encoded 0 texts") == 1


def test_compact_merges_shards(tmp_path, vocab_file):
    store = tmp_path / "embeddings"
    other = tmp_path / "farm.txt"
    other.write_text("dog\ncow\n", encoding="utf-8")
    for vocab in (vocab_file, other):
        assert run("encode", vocab, "--store", store, *TINY).exit_code == 0
    compacted = run("store", "compact", store)
    assert compacted.exit_code == 0, compacted.output
    assert f"{MODEL_KEY} class: 2 shards -> 1 (5 rows)" in compacted.output
    assert "nothing to compact" in run("store", "compact", store).output
    assert "encoded 0 texts" in run("encode", other, "--store", store, *TINY).output


@pytest.mark.parametrize("args, message", [
    (["encode", "no-such-vocabulary", "--store", "{tmp}"], "neither a shipped name"),
    (["encode", "voc21", "--store", "{tmp}", "--model", "no-such-model"], "unknown CLIP model"),
    (["encode", "voc21", "--store", "{tmp}", "--model", "freecp-tiny", "--clip-checkpoint", "{tmp}/none.pt"],
     "does not exist"),
    (["store", "inspect", "{tmp}", "no-such-vocabulary"], "neither a shipped name"),
])
def test_user_errors_are_one_clear_message(tmp_path, args, message):
    result = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
