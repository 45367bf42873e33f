"""The layers point one way: stores and job specs load no model, UI or orchestration library,
and every backbone the segmenter is given (real or stand-in) has what the Protocol names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from freecp.backbones import Backbone, TextEncoder
from tests.simulated import SimulatedBackbone, make_world

HEAVY = ("torch", "open_clip", "typer", "rich", "prefect", "pydantic")
PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def _loaded_by(*modules: str) -> set[str]:
    """Every module a fresh interpreter holds after importing ``modules``."""
    result = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("modules", [
    ("freecp.stores.embeddings", "freecp.stores.vector_keys", "freecp.stores.embedding_errors",
     "freecp.stores.manifest", "freecp.stores.shards", "freecp.stores.planning", "freecp.stores.summaries",
     "freecp.stores.descriptions", "freecp.stores.check", "freecp.stores.fs", "freecp.stores.requests"),
    ("freecp.jobs", "freecp.flatten", "freecp.run_report", "freecp.encoding", "freecp.records",
     "freecp.clip.keys"),
])
def test_stores_and_specs_load_no_model_ui_or_prefect(modules: tuple[str, ...]) -> None:
    loaded = _loaded_by(*modules)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    if modules[0].startswith("freecp.stores"):  # the stores sit below the CLIP layer and describe
        assert not {m for m in loaded if m.startswith(("freecp.clip", "freecp.describe", "freecp.encoding"))}


def test_the_real_backbone_and_the_stand_ins_satisfy_the_protocols(tiny_backbone) -> None:
    from benchmarks.store_speed import SyntheticBackbone
    from tests.test_purify import CountingBackbone as CropCounter
    from tests.test_throughput import CountingBackbone as CallCounter

    for backbone in (tiny_backbone, SimulatedBackbone(make_world()), CropCounter(tiny_backbone),
                     CallCounter(tiny_backbone)):
        assert isinstance(backbone, Backbone), type(backbone)
    for encoder in (tiny_backbone, SyntheticBackbone(8)):
        assert isinstance(encoder, TextEncoder), type(encoder)
    assert not isinstance(SyntheticBackbone(8), Backbone)  # it has no image side: the check can fail
