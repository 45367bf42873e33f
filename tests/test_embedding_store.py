"""The embedding store: round trip against fresh encodings, reuse, model checks, concurrent and
killed writers, compaction; on a local directory and on a real S3 server (moto, separate process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from freecp.build import create_backbone
from freecp.clip import ClassEmbeddings, embed_vocabulary
from freecp.jobs import ClipModel
from freecp.stores.embeddings import EmbeddingStore, MissingEmbeddingsError, ModelMismatchError
from freecp.stores.vector_keys import CLASS, DESCRIPTION, DESCRIPTION_MEAN, MODELS_DIR, model_dir
from freecp.encoding import ensure_encoded, load_embeddings
from freecp.files import TEMP_PREFIX
from freecp.vocab import Vocabulary, load_vocabulary

VOCAB_A = ["background: sky", "cat, kitty", "dog"]
DESCRIPTIONS_A = {"cat": ["a small furry pet with whiskers", "an animal that purrs"],
                  "dog": ["a loyal four-legged animal"]}
VOCAB_B = ["dog", "horse"]
TOLERANCE = 1e-6

# A writer in its own process. Both writers wait for a "go" file, so their encodes and shard
# writes overlap; flush_seconds=0 and one class name per text batch give one shard per name.
WRITER = """
import json, pathlib, sys, time, warnings
warnings.simplefilter("ignore")
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.encoding import ensure_encoded
from freecp.stores.embeddings import EmbeddingStore
from freecp.vocab import load_vocabulary
spec = json.loads(sys.argv[1])
backbone = create_backbone(ClipModel("freecp-tiny", pretrained="none"))
if spec.get("block_after"):
    # Stop inside the text encoder on call block_after + 1 (every earlier batch's shard is written),
    # signal the test, and wait there until it kills this process.
    original, calls = backbone.encode_texts, []
    def encode_texts(texts, batch_size=256):
        calls.append(len(texts))
        if len(calls) > spec["block_after"]:
            pathlib.Path(spec["blocked"]).touch()
            time.sleep(600)
        return original(texts, batch_size)
    backbone.encode_texts = encode_texts
store = EmbeddingStore(spec["url"], flush_seconds=0)
pathlib.Path(spec["signal"]).touch()
while spec.get("go") and not pathlib.Path(spec["go"]).exists():
    time.sleep(0.01)
summary = ensure_encoded(store, load_vocabulary(spec["classes"]), backbone, spec.get("descriptions"), batch_size=80)
print(json.dumps({"classes": summary.classes_encoded, "descriptions": summary.descriptions_encoded}))
"""


def _writer(spec: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_backbone(ClipModel("freecp-tiny", pretrained="none"))


@pytest.fixture(scope="module")
def fresh(tiny) -> Callable[[Vocabulary, dict | None], ClassEmbeddings]:
    """Embeddings computed directly (no store), memoised: class-name encoding is the slow part."""
    memo: dict[str, ClassEmbeddings] = {}

    def compute(vocab: Vocabulary, descriptions: dict | None = None) -> ClassEmbeddings:
        key = json.dumps([vocab.content_hash, descriptions], sort_keys=True)
        if key not in memo:
            memo[key] = embed_vocabulary(tiny, vocab, descriptions)
        return memo[key]

    return compute


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/team/embeddings"


def _assert_same(got: ClassEmbeddings, want: ClassEmbeddings) -> None:
    assert got.source == "store"
    assert got.queries.shape == want.queries.shape
    assert torch.allclose(got.queries, want.queries, atol=TOLERANCE, rtol=0)
    assert torch.equal(got.query_class, want.query_class)
    assert torch.equal(got.described, want.described)
    if want.descriptions is None:
        assert got.descriptions is None
    else:
        assert torch.allclose(got.descriptions, want.descriptions, atol=TOLERANCE, rtol=0)


def _shards(store: EmbeddingStore, model_key: str, kind: str) -> list[str]:
    return store.root.list_files(f"{MODELS_DIR}/{model_dir(model_key)}/{kind}", ".parquet")


def test_vectors_read_back_equal_fresh_ones_and_a_rerun_encodes_nothing(store_url, tiny, fresh):
    vocab = load_vocabulary(VOCAB_A)
    reports: list[tuple[str, int, int]] = []
    first = ensure_encoded(EmbeddingStore(store_url), vocab, tiny, DESCRIPTIONS_A, on_progress=lambda *r: reports.append(r))
    assert (first.classes_encoded, first.descriptions_encoded, first.reused) == (4, 3, 0)
    assert reports[-1] == ("encoding descriptions", 3, 3)  # progress goes to the caller's callback
    assert ("encoding class names", 4, 4) in reports
    assert first.described_classes == 2 and first.manifest_written

    reader = EmbeddingStore(store_url)  # a new instance: nothing is remembered in memory
    _assert_same(load_embeddings(reader, vocab, tiny), fresh(vocab, DESCRIPTIONS_A))
    _assert_same(load_embeddings(reader, vocab, tiny.text_key), fresh(vocab, DESCRIPTIONS_A))

    files_before = reader.root.list_files()
    again = ensure_encoded(EmbeddingStore(store_url), vocab, tiny, DESCRIPTIONS_A)
    assert (again.encoded, again.classes_reused, again.descriptions_reused) == (0, 4, 3)
    assert not again.manifest_written
    assert reader.root.list_files() == files_before


def test_a_class_shared_by_two_vocabularies_is_encoded_once(tmp_path, tiny, fresh):
    store = EmbeddingStore(str(tmp_path))
    ensure_encoded(store, load_vocabulary(VOCAB_A), tiny)
    vocab_b = load_vocabulary(VOCAB_B)
    summary = ensure_encoded(store, vocab_b, tiny)
    assert (summary.classes_encoded, summary.classes_reused) == (1, 1)  # horse new, dog reused
    _assert_same(load_embeddings(store, vocab_b, tiny), fresh(vocab_b))
    assert {v.content_hash for v in store.list_vocabularies()} == {
        load_vocabulary(VOCAB_A).content_hash, vocab_b.content_hash}


def test_a_run_without_descriptions_keeps_them_and_new_ones_replace_them(tmp_path, tiny, fresh):
    vocab = load_vocabulary(VOCAB_A)
    store = EmbeddingStore(str(tmp_path))
    ensure_encoded(store, vocab, tiny, DESCRIPTIONS_A)

    kept = ensure_encoded(store, vocab, tiny, None)
    assert kept.encoded == 0 and kept.described_classes == 2 and not kept.manifest_written
    _assert_same(load_embeddings(store, vocab, tiny), fresh(vocab, DESCRIPTIONS_A))

    changed = {"cat": ["a cat sleeping in the sun", "a small furry pet with whiskers"]}
    summary = ensure_encoded(store, vocab, tiny, changed)
    assert (summary.descriptions_encoded, summary.descriptions_reused) == (1, 2)  # dog's is kept
    _assert_same(load_embeddings(store, vocab, tiny), fresh(vocab, {**DESCRIPTIONS_A, **changed}))
    coverage = store.inspect(vocab, tiny.text_key)
    assert coverage.complete and [c.descriptions for c in coverage.classes] == [0, 2, 1]


def test_vectors_of_another_model_are_refused(tmp_path, tiny):
    vocab = load_vocabulary(VOCAB_B)
    store = EmbeddingStore(str(tmp_path))
    ensure_encoded(store, vocab, tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = create_backbone(ClipModel("freecp-tiny", pretrained="none"), seed=1)
    with pytest.raises(ModelMismatchError, match="freecp-tiny/random-seed0.*not of freecp-tiny/random-seed1"):
        load_embeddings(store, vocab, other)

    class SameKeyOtherDim:  # what a checkpoint mislabelled with this model's key would look like
        text_key = tiny.text_key
        embed_dim = tiny.embed_dim * 2

    with pytest.raises(ModelMismatchError, match="dim 64.*dim 128"):
        load_embeddings(store, vocab, SameKeyOtherDim())
    with pytest.raises(ModelMismatchError):
        ensure_encoded(store, vocab, SameKeyOtherDim())

    # A shard of one model copied into another model's folder is refused, not read as garbage.
    shard = _shards(store, tiny.text_key, CLASS)[0]
    store.root.write_bytes(f"{MODELS_DIR}/{model_dir(other.text_key)}/{CLASS}/copied.parquet",
                           store.root.read_bytes(shard))
    with pytest.raises(ModelMismatchError, match="holds vectors of freecp-tiny/random-seed0"):
        ensure_encoded(store, vocab, other)


def test_missing_texts_are_a_clear_error(tmp_path, tiny):
    vocab = load_vocabulary(VOCAB_B)
    store = EmbeddingStore(str(tmp_path))
    with pytest.raises(MissingEmbeddingsError, match=f"freecp encode inline --store {tmp_path}"):
        load_embeddings(store, vocab, tiny)
    ensure_encoded(store, vocab, tiny)
    for shard in _shards(store, tiny.text_key, CLASS):
        store.root.delete(shard)
    with pytest.raises(MissingEmbeddingsError, match="2 vectors .* are missing"):
        load_embeddings(store, vocab, tiny)
    assert ensure_encoded(store, vocab, tiny).classes_encoded == 2  # and it repairs itself
    assert load_embeddings(store, vocab, tiny).queries.shape == (2, tiny.embed_dim)


def test_a_store_left_by_a_killed_writer_reads_cleanly_and_resumes(tmp_path, tiny, fresh):
    url = str(tmp_path / "store")
    names = ["apple", "banana", "cherry", "grape", "lemon"]
    blocked = tmp_path / "blocked"
    proc = _writer({"url": url, "classes": names, "block_after": 2, "blocked": str(blocked),
                    "signal": str(tmp_path / "ready")})
    try:
        _wait_for(blocked, [proc])  # inside the third text batch; two shards are written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = EmbeddingStore(url)
    key = tiny.text_key
    assert len(_shards(store, key, CLASS)) == 2
    # A write killed between creating its temporary file and renaming it leaves exactly this:
    # a partial file under a temporary name next to the finished shards.
    partial = store.root.read_bytes(_shards(store, key, CLASS)[0])[:300]
    temp = store.root.path(f"{MODELS_DIR}/{model_dir(key)}/{CLASS}/{TEMP_PREFIX}dead-shard.parquet")
    with store.root.fs.open_output_stream(temp) as out:
        out.write(partial)

    vocab = load_vocabulary(names)
    with pytest.raises(MissingEmbeddingsError):
        load_embeddings(store, vocab, tiny)
    assert store.inspect(vocab, key).classes[0].queries_present == 1
    assert [m.rows[CLASS] for m in store.list_models()] == [2]
    resumed = ensure_encoded(store, vocab, tiny)
    assert (resumed.classes_encoded, resumed.classes_reused) == (3, 2)
    _assert_same(load_embeddings(store, vocab, tiny), fresh(vocab))


def test_two_processes_writing_overlapping_vocabularies_lose_nothing(store_url, tmp_path, tiny, fresh):
    first = {"classes": ["cat", "dog", "bird"],
             "descriptions": {"cat": ["an animal that purrs"], "dog": ["a loyal four-legged animal"]}}
    second = {"classes": ["dog", "bird", "horse"],
              "descriptions": {"dog": ["a loyal four-legged animal"], "horse": ["an animal people ride"]}}
    go = tmp_path / "go"
    procs = []
    for n, spec in enumerate([first, second]):
        ready = tmp_path / f"ready{n}"
        procs.append(_writer({**spec, "url": store_url, "go": str(go), "signal": str(ready)}))
    for n in range(2):
        _wait_for(tmp_path / f"ready{n}", procs)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["classes"] >= 1 for r in results)  # each wrote its own class at least

    store = EmbeddingStore(store_url)
    for spec in (first, second):
        vocab = load_vocabulary(spec["classes"])
        _assert_same(load_embeddings(store, vocab, tiny), fresh(vocab, spec["descriptions"]))
    (model,) = store.list_models()
    assert model.rows == {CLASS: 4, DESCRIPTION: 3, DESCRIPTION_MEAN: 3} and model.vocabularies == 2
    for spec in (first, second):
        again = ensure_encoded(store, load_vocabulary(spec["classes"]), tiny, spec["descriptions"])
        assert again.encoded == 0


def test_compaction_merges_shards_and_keeps_every_row(tmp_path, tiny, fresh):
    store = EmbeddingStore(str(tmp_path), flush_seconds=0)
    vocab_a, vocab_b = load_vocabulary(VOCAB_A), load_vocabulary(VOCAB_B)
    ensure_encoded(store, vocab_a, tiny, DESCRIPTIONS_A, batch_size=80)
    ensure_encoded(store, vocab_b, tiny, batch_size=80)
    rows_before = store.list_models()[0].rows
    assert len(_shards(store, tiny.text_key, CLASS)) == 5

    merged = store.compact()
    assert merged == {f"{tiny.text_key} {CLASS}": (5, 5)}
    assert len(_shards(store, tiny.text_key, CLASS)) == 1
    assert store.list_models()[0].rows == rows_before
    _assert_same(load_embeddings(store, vocab_a, tiny), fresh(vocab_a, DESCRIPTIONS_A))
    _assert_same(load_embeddings(store, vocab_b, tiny), fresh(vocab_b))
    assert ensure_encoded(store, vocab_a, tiny, DESCRIPTIONS_A).encoded == 0


@pytest.mark.parametrize("key", ["../../etc/passwd", "ViT-B-16/openai", "ViT-B-16:openai", "/abs/olute"])
def test_model_folders_stay_inside_the_store_and_do_not_collide(key):
    folder = model_dir(key)
    assert "/" not in folder and not folder.startswith(".")
    assert model_dir(key + "x") != folder
    assert model_dir("ViT-B-16/openai") != model_dir("ViT-B-16:openai")
