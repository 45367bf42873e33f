"""How fast the embedding store is: text encoding throughput, reuse on a re-run, vocabulary reads.

    python benchmarks/store_speed.py                                   # tiny model, local temp store
    python benchmarks/store_speed.py --model ViT-B-16 --texts 64 --classes 3
    python benchmarks/store_speed.py --store s3://bucket/bench         # reads over S3 (AWS_* env)

1. Encode throughput: raw texts per second through the CLIP text tower at several batch sizes.
2. Reuse: ``ensure`` of a small vocabulary into an empty store, then again; the re-run's time as a
   fraction of the first (it should only list the store and find everything).
3. Read time of one vocabulary's matrices (class names and per-class description averages) for
   150 and 5,000 classes, with vectors from a synthetic backbone (random unit vectors, so the
   numbers measure the store, not CLIP), before and after ``compact``.

CLIP weights are random (no pretrained weights exist here); speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.encoding import ensure_encoded, load_embeddings
from freecp.stores.embeddings import EmbeddingStore
from freecp.vocab import load_vocabulary


class SyntheticBackbone:
    """Random unit vectors in place of a text tower: lets the read benchmark fill a big store fast."""

    def __init__(self, dim: int) -> None:
        self.embed_dim = dim
        self.text_key = f"synthetic/random-unit-vectors-{dim}"
        self.rng = np.random.default_rng(0)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        vectors = self.rng.standard_normal((len(texts), self.embed_dim), dtype=np.float32)
        return F.normalize(torch.from_numpy(vectors), dim=-1)


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def encode_throughput(backbone, texts: int, batch_sizes: list[int]) -> None:
    sample = [f"a photo of a thing number {i} with some detail" for i in range(texts)]
    backbone.encode_texts(sample[:2], batch_size=2)  # warm-up
    print(f"\n1. encode throughput, {texts} raw texts, {backbone.text_key}")
    for size in batch_sizes:
        seconds, _ = timed(lambda: backbone.encode_texts(sample, batch_size=size))
        print(f"   batch {size:4d}: {texts / seconds:8.1f} texts/s  ({seconds:.2f} s)")


def reuse_ratio(backbone, url: str, classes: int) -> None:
    names = [f"object kind {i}" for i in range(classes)]
    descriptions = {n: [f"{n} seen from above", f"{n} on a table"] for n in names}
    vocab = load_vocabulary(names)
    store = EmbeddingStore(url)
    first, summary = timed(lambda: ensure_encoded(store, vocab, backbone, descriptions))
    again, rerun = timed(lambda: ensure_encoded(EmbeddingStore(url), vocab, backbone, descriptions))
    print(f"\n2. reuse, {classes} classes: {summary.classes_encoded} class names (80 prompts each) "
          f"and {summary.descriptions_encoded} descriptions")
    print(f"   first run {first:.2f} s, re-run {again:.3f} s (encoded {rerun.encoded}), "
          f"re-run / first = {again / first:.4f}")


def read_times(url: str, sizes: list[int], per_class: int, dim: int, repeats: int, parts: int) -> None:
    backbone = SyntheticBackbone(dim)
    store = EmbeddingStore(url)
    largest = max(sizes)
    names = [f"class {i}" for i in range(largest)]
    descriptions = {n: [f"{n} description {j}" for j in range(per_class)] for n in names}
    start = time.perf_counter()
    step = -(-largest // parts)  # like several teams' vocabularies arriving one after another
    for first in range(0, largest, step):
        part = names[first:first + step]
        ensure_encoded(store, load_vocabulary(part), backbone, {n: descriptions[n] for n in part}, batch_size=4096)
    seconds = time.perf_counter() - start
    vocabularies = {}
    for size in sizes:
        vocabularies[size] = load_vocabulary(names[:size])
        ensure_encoded(store, vocabularies[size], backbone, {n: descriptions[n] for n in names[:size]},
                       batch_size=4096)
    print(f"\n3. read one vocabulary's matrices, dim {dim}, {per_class} descriptions per class; the store "
          f"holds {largest} classes, {largest * per_class} descriptions (filled in {seconds:.1f} s)")
    for label in ("as written", "after compact"):
        if label == "after compact":
            store.compact()
        shards = sum(m.shards for m in store.list_models() if m.model_key == backbone.text_key)
        for size in sizes:
            runs = [timed(lambda: load_embeddings(EmbeddingStore(url), vocabularies[size], backbone))[0]
                    for _ in range(repeats)]
            print(f"   {label:13s} ({shards:3d} shards) {size:5d} classes: "
                  f"median {1000 * statistics.median(runs):7.1f} ms  (min {1000 * min(runs):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="freecp-tiny")
    parser.add_argument("--store", help="store root for the benchmark (default: a new temp directory)")
    parser.add_argument("--texts", type=int, default=512, help="texts for the throughput test")
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--classes", type=int, default=8, help="classes for the reuse test")
    parser.add_argument("--read-sizes", default="150,5000")
    parser.add_argument("--descriptions-per-class", type=int, default=20)
    parser.add_argument("--dim", type=int, default=512, help="vector size of the synthetic read test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", type=int, default=10, help="separate encode runs that fill the read store")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_backbone(ClipModel(args.model, pretrained="none"))
    with tempfile.TemporaryDirectory() as scratch:
        root = (args.store or scratch).rstrip("/")
        run_id = time.strftime("%Y%m%d-%H%M%S")
        encode_throughput(backbone, args.texts, [int(b) for b in args.batch_sizes.split(",")])
        reuse_ratio(backbone, f"{root}/reuse-{run_id}", args.classes)
        read_times(f"{root}/read-{run_id}", [int(s) for s in args.read_sizes.split(",")],
                   args.descriptions_per_class, args.dim, args.repeats, args.parts)


if __name__ == "__main__":
    main()
