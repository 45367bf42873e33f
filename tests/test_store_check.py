"""Shared stores survive a bad file: readers skip it with a warning, ``freecp store check`` finds
and quarantines it. Real store folders, the real ``freecp`` command; tiny CLIP with random weights."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from freecp.cli import app
from freecp.encoding import ensure_encoded, load_embeddings
from freecp.stores.descriptions import SHARD_DIR, DescriptionCache
from freecp.stores.embeddings import EmbeddingStore
from freecp.stores.vector_keys import CLASS, MODELS_DIR, model_dir
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread
from tests.test_description_cache import entry

VOCAB = load_vocabulary(["background: sky", "cat, kitten", "dog"])


def _junk(folder: Path) -> list[str]:
    """A 0-byte shard, a text file named .parquet and someone else's Parquet file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.parquet").write_bytes(b"")
    (folder / "junk.parquet").write_text("this is not parquet")
    pq.write_table(pa.table({"x": [1, 2]}), folder / "foreign.parquet")
    return ["zero.parquet", "junk.parquet", "foreign.parquet"]


def test_bad_files_are_skipped_by_readers_and_quarantined_by_store_check(tmp_path, tiny_backbone, caplog):
    url = str(tmp_path / "store")
    store = EmbeddingStore(url)
    with one_torch_thread():
        ensure_encoded(store, VOCAB, tiny_backbone)
    good = load_embeddings(store, VOCAB, tiny_backbone)
    junk = _junk(tmp_path / "store" / MODELS_DIR / model_dir(tiny_backbone.text_key) / CLASS)
    cache = DescriptionCache(url)
    cache.append([entry("k1", "cat", ["Pointed ears"])])
    cache_junk = _junk(tmp_path / "store" / SHARD_DIR)

    again = EmbeddingStore(url)
    assert torch.equal(load_embeddings(again, VOCAB, tiny_backbone).queries, good.queries)
    assert [m.model_key for m in again.list_models()] == [tiny_backbone.text_key]
    assert [e.key for e in DescriptionCache(url).entries()] == ["k1"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert all(name in warned for name in junk)
    assert CliRunner().invoke(app, ["store", "ls", url]).exit_code == 0

    found = CliRunner().invoke(app, ["store", "check", url])
    assert found.exit_code == 1
    assert found.output.count("bad ") == len(junk) + len(cache_junk)
    assert all(name in found.output for name in junk)
    moved = CliRunner().invoke(app, ["store", "check", url, "--quarantine"])
    assert moved.exit_code == 0, moved.output
    quarantined = sorted(posixpath.basename(str(p)) for p in (tmp_path / "store" / "quarantine").rglob("*.parquet"))
    assert quarantined == sorted(junk + cache_junk)
    clean = CliRunner().invoke(app, ["store", "check", url])
    assert clean.exit_code == 0 and "0 bad" in clean.output
    assert torch.equal(load_embeddings(EmbeddingStore(url), VOCAB, tiny_backbone).queries, good.queries)


def test_store_check_verifies_the_weights_request_records(tmp_path):
    """`requests/*.json` tell an up-to-date `freecp encode` which model key its weights build:
    a torn or misfiled record is reported and quarantined; the good one keeps answering."""
    url = str(tmp_path / "store")
    store = EmbeddingStore(url)
    store.remember_key("ViT-B-16|openai|quick_gelu=True", "ViT-B-16-quickgelu/openai")
    requests = tmp_path / "store" / "requests"
    (requests / "0123456789abcdef.json").write_text('{"request": "ViT-B-32|openai", "mod')
    (requests / "fedcba9876543210.json").write_text(
        json.dumps({"request": "ViT-L-14|openai", "model_key": "ViT-L-14/openai"}))

    found = CliRunner().invoke(app, ["store", "check", url])
    assert found.exit_code == 1
    assert "3 files checked, 2 bad" in found.output
    assert "0123456789abcdef.json" in found.output and "fedcba9876543210.json" in found.output
    assert "wrong name" in found.output
    moved = CliRunner().invoke(app, ["store", "check", url, "--quarantine"])
    assert moved.exit_code == 0, moved.output
    assert sorted(p.name for p in (tmp_path / "store" / "quarantine" / "requests").iterdir()) == \
        ["0123456789abcdef.json", "fedcba9876543210.json"]
    assert EmbeddingStore(url).key_for("ViT-B-16|openai|quick_gelu=True") == "ViT-B-16-quickgelu/openai"
    assert "1 files checked, 0 bad" in CliRunner().invoke(app, ["store", "check", url]).output
