"""The description cache: Parquet shards on a local directory or S3, exchange as JSON, compaction."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from freecp.stores.descriptions import SHARD_DIR, SOURCE_SERVER, CacheEntry, DescriptionCache, DescriptionCacheError
from freecp.vocab import load_vocabulary

VOCAB = load_vocabulary(["background: sky, wall", "cat, kitten", "dog", "horse"])


def entry(key: str, name: str, descriptions: list[str], model: str = "m1", minutes: int = 0) -> CacheEntry:
    return CacheEntry(
        key=key, class_name=name, class_names=(name,), prompt_set="descriptions-v1", prompt_id="look",
        prompt_hash="h" * 64, prompt=f"What does a {name} look like?", llm_model=model, sampling='{"seed":0}',
        raw_answer="\n".join(descriptions), finish_reason="stop", descriptions=tuple(descriptions),
        cleaning_version="1", source=SOURCE_SERVER, server="http://127.0.0.1:1/v1",
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes),
    )


def test_entries_round_trip_and_newest_wins(tmp_path: Path):
    cache = DescriptionCache(tmp_path)
    cache.append([entry("k1", "cat", ["Pointed ears"]), entry("k2", "dog", ["Wet nose"])])
    cache.append([entry("k1", "cat", ["Pointed ears", "Long whiskers"], minutes=5)])
    reopened = DescriptionCache(tmp_path)
    assert [e.key for e in reopened.entries()] == ["k2", "k1"]
    assert reopened.get("k1").descriptions == ("Pointed ears", "Long whiskers")
    assert reopened.get("k1") == cache.get("k1")
    assert "k3" not in reopened


def test_descriptions_for_a_vocabulary(tmp_path: Path):
    cache = DescriptionCache(tmp_path)
    cache.append([
        entry("a", "cat", ["Pointed ears", "Long whiskers"]),
        entry("b", "cat", ["long whiskers.", "Striped fur"], minutes=1),
        entry("c", "dog", ["Wet nose"], model="m2"),
        entry("d", "horse", []),
        entry("e", "sky", ["Blue"]),
    ])
    assert cache.descriptions_for(VOCAB) == {
        "cat": ["Pointed ears", "Long whiskers", "Striped fur"],
        "dog": ["Wet nose"],
    }  # background never, classes with nothing absent, duplicates merged
    assert cache.descriptions_for(VOCAB, llm_model="m2") == {"dog": ["Wet nose"]}


def test_json_export_edit_import_replaces_generated_descriptions(tmp_path: Path):
    cache = DescriptionCache(tmp_path / "cache")
    cache.append([entry("a", "cat", ["Pointed ears", "Bad line"]), entry("b", "dog", ["Wet nose"])])
    exported = tmp_path / "review" / "descriptions.json"
    assert cache.export_json(exported, VOCAB) == 2
    data = json.loads(exported.read_text())
    assert data == {"cat": ["Pointed ears", "Bad line"], "dog": ["Wet nose"]}
    data["cat"] = ["Pointed ears", "  Soft   grey fur "]
    data["horse"] = ["Long mane"]
    exported.write_text(json.dumps(data))

    other_team = DescriptionCache(tmp_path / "other")
    assert other_team.import_json(exported) == 3
    assert other_team.descriptions_for(VOCAB) == {
        "cat": ["Pointed ears", "Soft grey fur"], "dog": ["Wet nose"], "horse": ["Long mane"]}
    assert cache.import_json(exported) == 3
    assert DescriptionCache(tmp_path / "cache").descriptions_for(VOCAB)["cat"] == ["Pointed ears", "Soft grey fur"]


@pytest.mark.parametrize("content", ['{"cat": "not a list"}', "[1, 2]", "{not json", '{"cat": [1]}'])
def test_bad_import_file_is_refused_and_writes_nothing(tmp_path: Path, content: str):
    cache = DescriptionCache(tmp_path / "cache")
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DescriptionCacheError, match="bad.json"):
        cache.import_json(bad)
    assert cache.root.list_files(SHARD_DIR) == []


def test_compact_merges_shards_and_loses_nothing(tmp_path: Path):
    writer = DescriptionCache(tmp_path)
    for number in range(5):
        writer.append([entry(f"k{number}", "cat", [f"Feature number {number}"], minutes=number)])
    writer.append([entry("k0", "cat", ["Feature number zero"], minutes=10)])
    stale_reader = DescriptionCache(tmp_path)
    stale_reader.refresh()
    assert DescriptionCache(tmp_path).compact() == (6, 5)
    assert len(writer.root.list_files(SHARD_DIR, ".parquet")) == 1
    writer.append([entry("k9", "dog", ["Wet nose"])])
    stale_reader.refresh()
    fresh = DescriptionCache(tmp_path)
    for reader in (stale_reader, fresh):
        assert sorted(e.key for e in reader.entries()) == ["k0", "k1", "k2", "k3", "k4", "k9"]
        assert reader.get("k0").descriptions == ("Feature number zero",)


def test_unfinished_temporary_files_are_never_read(tmp_path: Path):
    cache = DescriptionCache(tmp_path)
    cache.append([entry("k1", "cat", ["Pointed ears"])])
    half = tmp_path / SHARD_DIR / ".tmp-0123-20260101T000000Z-half.parquet"
    half.write_bytes(b"PAR1 half a file")
    assert [e.key for e in DescriptionCache(tmp_path).entries()] == ["k1"]


def test_corrupt_shard_is_skipped_with_a_warning_that_names_it(tmp_path: Path, caplog):
    cache = DescriptionCache(tmp_path)
    cache.append([entry("k1", "cat", ["Pointed ears"])])
    (tmp_path / SHARD_DIR / "broken.parquet").write_bytes(b"not parquet at all")
    (tmp_path / SHARD_DIR / "empty.parquet").write_bytes(b"")
    assert [e.key for e in DescriptionCache(tmp_path).entries()] == ["k1"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "broken.parquet" in warned and "empty.parquet" in warned and "freecp store check" in warned


WRITER = """
import sys
from tests.test_description_cache import entry
from freecp.stores.descriptions import DescriptionCache
cache = DescriptionCache(sys.argv[1])
for number in range(40):
    cache.append([entry(f"{sys.argv[2]}-{number}", "cat", [f"Feature {number}"]), entry("shared", "dog", ["Wet nose"])])
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path: Path):
    repo = Path(__file__).resolve().parents[1]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name], cwd=repo) for name in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    keys = {e.key for e in DescriptionCache(tmp_path).entries()}
    assert keys == {f"{name}-{n}" for name in "ab" for n in range(40)} | {"shared"}


def test_cache_on_s3(s3_bucket: str):
    url = f"{s3_bucket}/team/cache"
    cache = DescriptionCache(url)
    cache.append([entry("k1", "cat", ["Pointed ears"])])
    cache.append([entry("k2", "dog", ["Wet nose"]), entry("k1", "cat", ["Striped fur"], minutes=1)])
    assert DescriptionCache(url).descriptions_for(VOCAB) == {"cat": ["Striped fur"], "dog": ["Wet nose"]}
    assert DescriptionCache(url).compact() == (2, 2)
    assert len(cache.root.list_files(SHARD_DIR, ".parquet")) == 1
    assert sorted(e.key for e in DescriptionCache(url).entries()) == ["k1", "k2"]


def test_command_exports_imports_and_compacts(tmp_path: Path):
    from typer.testing import CliRunner

    from freecp.cli import app

    runner = CliRunner()
    cache_dir = str(tmp_path / "cache")
    cache = DescriptionCache(cache_dir)
    cache.append([entry("a", "cat", ["Pointed ears"])])
    cache.append([entry("b", "dog", ["Wet nose"])])
    exported = tmp_path / "out.json"
    result = runner.invoke(app, ["describe", "--export-json", str(exported), "--cache", cache_dir])
    assert result.exit_code == 0 and json.loads(exported.read_text()) == {"cat": ["Pointed ears"], "dog": ["Wet nose"]}

    exported.write_text(json.dumps({"cat": ["Soft grey fur"]}))
    result = runner.invoke(app, ["describe", "--import-json", str(exported), "--cache", cache_dir])
    assert result.exit_code == 0 and "1 classes" in result.output
    result = runner.invoke(app, ["describe", "--compact", "--cache", cache_dir])
    assert result.exit_code == 0 and "compacted 3 shards" in result.output
    assert DescriptionCache(cache_dir).descriptions_for(VOCAB) == {"cat": ["Soft grey fur"], "dog": ["Wet nose"]}

    missing = runner.invoke(app, ["describe", "--show", "Cat", "--cache", cache_dir])
    assert missing.exit_code == 1 and "did you mean: cat" in missing.output
    both = runner.invoke(app, ["describe", "--compact", "--show", "cat", "--cache", cache_dir])
    assert both.exit_code == 2 and "cannot be combined" in both.output
