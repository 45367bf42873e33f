"""A separate process that segments a folder with the tiny random-weight model and prints, as one
JSON line, the status of every image it recorded (tests of runs sharing one output folder).

Usage: ``python -m tests.segment_worker IMAGES OUT VOCAB_FILE SYNC TAG``. Once its segmenter is
built it creates ``SYNC/ready-TAG`` and waits for ``SYNC/go``, so that several workers start
their folder runs together.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path


def main(images: str, out: str, vocab_file: str, sync: str, tag: str) -> None:
    import torch

    from freecp.build import build_segmenter
    from freecp.jobs import ClipModel, SegmentJob
    from freecp.pipeline import segment_folder
    from freecp.vocab import load_vocabulary

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights, on purpose
        job = SegmentJob(ClipModel("freecp-tiny", pretrained="none"), store=None)
        segmenter = build_segmenter(load_vocabulary(vocab_file), job)
    (Path(sync) / f"ready-{tag}").touch()
    while not (Path(sync) / "go").exists():
        time.sleep(0.05)
    summary = segment_folder(segmenter, Path(images), Path(out))
    print(json.dumps({record.path: record.status for record in summary.records}))


if __name__ == "__main__":
    main(*sys.argv[1:])
