"""The shard writer on its own: given a store root, a model folder, a key and a dimension (no
``EmbeddingStore``), it holds rows until a flush is due and writes shards the store then reads."""

from __future__ import annotations

import numpy as np
import pytest

from freecp.stores.embedding_errors import ModelMismatchError
from freecp.stores.embeddings import EmbeddingStore
from freecp.stores.fs import open_root
from freecp.stores.manifest import ClassPlan
from freecp.stores.shards import ShardWriter, indexed, read_rows, shard_files
from freecp.stores.vector_keys import CLASS, DESCRIPTION, DESCRIPTION_MEAN, model_folder, text_hash

KEY = "test-model/none|text-fast"
DIM = 4


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _hashes(texts: list[str], kind: str) -> list[str]:
    return [text_hash(t, kind) for t in texts]


def test_rows_wait_for_the_flush_then_land_as_one_shard_per_kind(tmp_path):
    root, folder = open_root(str(tmp_path)), model_folder(KEY)
    writer = ShardWriter(root, folder, KEY, DIM, flush_seconds=3600)
    names, descriptions = ["cat", "dog"], ["a furry pet"]
    writer.add(CLASS, _hashes(names, CLASS), names, _vectors(2, 0))
    writer.add(DESCRIPTION, _hashes(descriptions, DESCRIPTION), descriptions, _vectors(1, 1))
    means = [ClassPlan(("cat",), tuple(_hashes(["cat"], CLASS)), (), "m" * 32)]
    writer.add_means(means, [_vectors(1, 2)[0]])
    assert not root.list_files(folder, ".parquet")  # nothing is due yet

    writer.flush()
    assert [len(shard_files(root, folder, kind)) for kind in (CLASS, DESCRIPTION, DESCRIPTION_MEAN)] == [1, 1, 1]
    rows, matrix = indexed(read_rows(root, folder, CLASS, KEY, DIM), DIM)
    assert np.array_equal(matrix[[rows[h] for h in _hashes(names, CLASS)]], _vectors(2, 0))
    mean_table = read_rows(root, folder, DESCRIPTION_MEAN, KEY, DIM)
    assert mean_table.column("text_hash").to_pylist() == ["m" * 32]
    assert mean_table.column("text").to_pylist() == ["cat"]  # a mean row's text is its first class name
    (model,) = EmbeddingStore(str(tmp_path)).list_models()
    assert (model.model_key, model.dim, model.rows, model.shards) == (
        KEY, DIM, {CLASS: 2, DESCRIPTION: 1, DESCRIPTION_MEAN: 1}, 3)


def test_a_writer_that_is_always_due_writes_every_add_and_readers_drop_repeats(tmp_path):
    root, folder = open_root(str(tmp_path)), model_folder(KEY)
    first, second = _vectors(1, 3), _vectors(1, 4)
    writer = ShardWriter(root, folder, KEY, DIM, flush_seconds=0)
    writer.add(CLASS, _hashes(["cat"], CLASS), ["cat"], first)
    writer.add(CLASS, _hashes(["cat"], CLASS), ["cat"], second)  # as from a concurrent writer
    assert len(shard_files(root, folder, CLASS)) == 2
    table = read_rows(root, folder, CLASS, KEY, DIM)
    assert table.num_rows == 1
    assert np.array_equal(indexed(table, DIM)[1], first) or np.array_equal(indexed(table, DIM)[1], second)


def test_shards_of_another_dimension_are_refused(tmp_path):
    root, folder = open_root(str(tmp_path)), model_folder(KEY)
    writer = ShardWriter(root, folder, KEY, DIM, flush_seconds=0)
    writer.add(CLASS, _hashes(["cat"], CLASS), ["cat"], _vectors(1, 5))
    with pytest.raises(ModelMismatchError, match=r"\(dim 4\), but the running model is .* \(dim 8\)"):
        read_rows(root, folder, CLASS, KEY, 8)
