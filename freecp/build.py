"""Building a CLIP backbone and a segmenter: the one way to do either.

In the manner of open_clip's ``create_model`` and segment-anything's ``build_sam``:

* ``create_backbone(clip)`` turns a ``jobs.ClipModel`` (model name, weights, device; passed
  whole) and the dense head the settings name (variant, protocol, float order) into a
  ``ClipBackbone``;
* ``build_segmenter(vocab, job, settings)`` builds the backbone the settings ask for, gets the
  vocabulary's text vectors (from the job's store, encoding what it lacks, or freshly) and
  returns the ``Segmenter``; it also sets this process's thread policy (``freecp.threads``), the
  only place that does.

The CLI, the Prefect flows, the benchmark and Python callers all come through here, so a new
model option is added to ``ClipModel`` (or the settings) and to these two functions, nowhere else.
"""

from __future__ import annotations

import logging
import socket
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from freecp.clip.activation import (Activation, AmbiguousActivationError, architecture_name, checkpoint_activation,
                                    config_quick_gelu, is_torchscript_archive, load_state_dict, tag_activation)
from freecp.clip.errors import WeightsUnavailableError
from freecp.clip.keys import file_hash
from freecp.clip.model import ClipBackbone
from freecp.clip.text import embed_vocabulary
from freecp.encoding import ensure_encoded, load_embeddings, shipped_descriptions
from freecp.jobs import ClipModel, SegmentJob
from freecp.progress import ProgressCallback
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.templates import IMAGENET_TEMPLATES
from freecp.threads import apply_thread_policy
from freecp.vocab import Vocabulary
from freecp.weights import is_random

log = logging.getLogger(__name__)


def create_backbone(clip: ClipModel = ClipModel(), *, variant: str = SegmentSettings.variant,
                    protocol: str = SegmentSettings.protocol, float_order: str = SegmentSettings.float_order,
                    seed: int = 0) -> ClipBackbone:
    """The backbone ``clip`` names, with the dense head of ``variant`` and ``protocol`` and the text
    tower's ``float_order`` (``ClipBackbone``), on ``clip.device``.

    Weights come from a local checkpoint file (``clip.clip_checkpoint`` wins), a pretrained tag, or
    random weights drawn from ``seed``, used only when asked for (``pretrained="none"``): they give
    meaningless segmentations and exist for tests and plumbing checks. The activation (QuickGELU
    or GELU) follows ``clip.quick_gelu`` when given, else the tag's registry entry or, for a file,
    the rules in ``freecp.clip.activation`` (an ambiguous file is refused); the architecture built
    is part of the model key.
    """
    if clip.model not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {clip.model!r}; see open_clip.list_models()")
    if clip.clip_checkpoint is not None:
        model, activation, key = _from_checkpoint(clip)
    elif is_random(clip.pretrained):
        warnings.warn("CLIP weights are RANDOM (--pretrained none): segmentations are meaningless; "
                      "use this only for tests and plumbing checks", stacklevel=2)
        quick = config_quick_gelu(clip.model) if clip.quick_gelu is None else clip.quick_gelu
        activation = Activation(quick, architecture_name(clip.model, quick), "random weights")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = open_clip.create_model(clip.model, pretrained=None, quick_gelu=quick)
        key = f"{activation.architecture}/random-seed{seed}"
    else:
        activation = tag_activation(clip.model, clip.pretrained, clip.quick_gelu)
        model = _create(clip.model, clip.pretrained, activation.quick_gelu)
        # "openai" has always been built with QuickGELU, so its key keeps the plain model name.
        key = f"{clip.model if clip.pretrained == 'openai' else activation.architecture}/{clip.pretrained}"
    log.info("CLIP %s built as %s (%s), model key %s", clip.model, activation.architecture, activation.reason, key)
    return ClipBackbone(model, open_clip.get_tokenizer(clip.model), clip.model, key, variant=variant,
                        protocol=protocol, device=clip.device, architecture=activation.architecture,
                        float_order=float_order)


def build_segmenter(vocab: Vocabulary, job: SegmentJob = SegmentJob(), settings: SegmentSettings | None = None, *,
                    on_progress: ProgressCallback | None = None, concurrent: int | None = None) -> Segmenter:
    """The segmenter ``job`` asks for over ``vocab``; ``settings`` defaults to the vocabulary's
    preset with the job's overrides.

    The backbone's dense head is built from the settings, so the two cannot disagree. Text vectors
    come from ``job.store`` (texts it lacks are encoded and stored first, unless ``job.no_encode``;
    ``on_progress`` hears about that) or, with no store, are encoded here. A shipped vocabulary's
    shipped descriptions (the samples') are encoded too, unless the store records descriptions of
    its own for it. ``concurrent`` is how many segmenters this process runs at once (default
    ``settings.workers``; the flows pass their thread pool's or Dask host's count): torch's threads
    are split between them.
    """
    settings = settings or job.overrides.settings(vocab.name)
    apply_thread_policy(segmenters=concurrent or settings.workers)
    backbone = create_backbone(job.clip, variant=settings.variant, protocol=settings.protocol,
                               float_order=settings.float_order)
    if cut := names_cut_by_context(backbone.tokenizer, vocab.queries):
        log.warning("%d class names are longer than the text tower's %d tokens and are cut short "
                    "(names cut alike get the same vector): %s", len(cut),
                    getattr(backbone.tokenizer, "context_length", 77), "; ".join(cut))
    shipped = shipped_descriptions(vocab)  # the samples' descriptions, for a store that has none of its own
    if job.store is None:
        embeddings = embed_vocabulary(backbone, vocab, shipped)
    else:
        from freecp.stores.embeddings import EmbeddingStore

        store = EmbeddingStore(job.store)
        if not job.no_encode:
            if shipped and store.inspect(vocab, backbone.text_key).described:
                shipped = None
            ensure_encoded(store, vocab, backbone, shipped, on_progress=on_progress)
        embeddings = load_embeddings(store, vocab, backbone, description_counts=settings.ap_texts == "random")
    log.info("segmenter ready: CLIP %s, vocabulary %s (%d classes), text embeddings from %s",
             backbone.model_key, vocab.name, len(vocab), job.store or "a fresh encoding")
    return Segmenter(backbone, vocab, embeddings, settings)


def names_cut_by_context(tokenizer, names: list[str]) -> list[str]:
    """The names whose longest templated prompt does not fit the tokenizer's context (start and
    end tokens included); empty for tokenizers without a BPE ``encode``."""
    encode, context = getattr(tokenizer, "encode", None), getattr(tokenizer, "context_length", None)
    if encode is None or context is None:
        return []
    overhead = max(len(encode(template.format(""))) for template in IMAGENET_TEMPLATES) + 2
    return [name for name in names if len(encode(name)) + overhead > context]


def _from_checkpoint(clip: ClipModel) -> tuple[open_clip.CLIP, Activation, str]:
    """The model in ``clip.clip_checkpoint``, its activation and its model key (named by the
    file's content hash)."""
    path = Path(clip.clip_checkpoint).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file {path} does not exist")
    try:
        activation = checkpoint_activation(clip.model, path, clip.quick_gelu)
    except AmbiguousActivationError:
        raise
    except Exception as err:  # a file torch cannot read raises whatever its unpickler or zip reader raises
        raise WeightsUnavailableError(f"cannot read checkpoint {path}: {textwrap.shorten(str(err), 160)}") from None
    model = _create(clip.model, str(path), activation.quick_gelu)
    return model, activation, f"{activation.architecture}/file-{file_hash(path)}"


def _create(model_name: str, source: str, quick_gelu: bool) -> open_clip.CLIP:
    """open_clip's model with the given activation and weights from a tag or a file.

    open_clip cannot read TorchScript archives (OpenAI's .pt files) since torch.load became
    weights-only, so their tensors are loaded here and put into the model.
    """
    try:
        with _offline_aware_loading():
            if Path(source).is_file() and is_torchscript_archive(Path(source)):
                model = open_clip.create_model(model_name, pretrained=None, quick_gelu=quick_gelu)
                model.load_state_dict(load_state_dict(Path(source)))
                return model
            return open_clip.create_model(model_name, pretrained=source, quick_gelu=quick_gelu)
    except Exception as err:  # open_clip wraps download and file errors in RuntimeError or raises OSError
        raise WeightsUnavailableError(
            f"could not load CLIP weights {model_name}/{source} "
            f"({textwrap.shorten(str(err), 160, placeholder=' ...')}).",
            f"Offline? Download the checkpoint on a machine with internet (for example "
            f"open_clip.create_model('{model_name}', pretrained='{source}') fills the Hugging Face cache, "
            f"or fetch the .bin/.pt file) and pass it with {{checkpoint}}; "
            f"or use {{random}} for random weights (tests only).",
        ) from None


@contextmanager
def _offline_aware_loading() -> Iterator[None]:
    """Load quietly, and from the local cache only when the hub's host does not even resolve.

    Without this, a machine with no network retries the download for about a minute and prints
    a page of warnings before our one message. ``HF_HUB_OFFLINE`` is read by huggingface_hub at
    import time, so the switch is made on its constants module, for this call only.
    """
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    try:
        socket.getaddrinfo(urlparse(hub.ENDPOINT).hostname, 443)
    except OSError:
        hub.HF_HUB_OFFLINE = True
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        hub.HF_HUB_OFFLINE = previous
