"""Session fixtures for the CLIP side: one tiny random-weight backbone and its voc21 embeddings.

Both are built once per test session and shared by every test module; treat them as read-only.
Work on small tensors runs on ONE torch thread (``one_torch_thread``): on the shared 2-core test
machine torch's default of a thread per core mostly spins, measured at 3-5x the CPU time and
2-4x the wall time for these models.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from freecp.clip import ClassEmbeddings, ClipBackbone, embed_vocabulary
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.vocab import load_vocabulary


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the enclosed torch work on one intra-op thread, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Module-wide ``one_torch_thread``; request it with ``pytest.mark.usefixtures``."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    """The shipped ``freecp-tiny`` config with seeded random weights (the warning is expected)."""
    with warnings.catch_warnings(), one_torch_thread():
        warnings.simplefilter("ignore", UserWarning)
        return create_backbone(ClipModel("freecp-tiny", pretrained="none"))


@pytest.fixture(scope="session")
def tiny_voc21_embeddings(tiny_backbone: ClipBackbone) -> ClassEmbeddings:
    """voc21's class-name embeddings (56 names x 80 templates) from the tiny backbone, no descriptions."""
    with one_torch_thread():
        return embed_vocabulary(tiny_backbone, load_vocabulary("voc21"))
