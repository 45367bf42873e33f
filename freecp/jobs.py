"""Typed job specs: what a segment, describe or encode job is asked to do, every default once.

The ``freecp`` commands build their options from these fields (``freecp.commands.options``), the
Prefect flows their parameters (``freecp.flows.params``), and the Python API takes the specs
themselves (``freecp.build.build_segmenter``, ``freecp.encoding.encode``,
``freecp.describe.run.describe``). Nested specs are flattened by name (``freecp.flatten``), so a
CLI option, a flow parameter and a spec field are spelled the same. Torch-, Typer- and
Prefect-free: importing this module loads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from freecp.defaults import (DEFAULT_CACHE, DEFAULT_CLIP_MODEL, DEFAULT_MAX_TOKENS, DEFAULT_PRETRAINED,
                             DEFAULT_STORE, DEFAULT_TEMPERATURE, DEFAULT_VLLM_MODEL, PROMPT_SET, SMOLLM2_NAME)
from freecp.flatten import option
from freecp.settings import (AP_TEXTS, FLOAT_ORDERS, PRECISIONS, PROTOCOLS, VARIANTS, ApTexts, BoxRule, FloatOrder,
                             Precision, Protocol, PurifyScope, ScFormula, SegmentSettings, Variant, settings_for)
from freecp.weights import Weights

FLOAT_ORDER_HELP = (f"Float32 order of the text tower and refinement: {' or '.join(FLOAT_ORDERS)} "
                    "(the reference's sums bit for bit, slower; same results up to rounding).")
QUICK_GELU_HELP = ("Activation for --clip-checkpoint weights: QuickGELU (OpenAI's) or GELU. "
                   "Default: detected from the file (see README); ambiguous files are refused.")


@dataclass(frozen=True)
class ClipModel:
    """Which CLIP model, with which weights, on which device."""

    model: str = option(DEFAULT_CLIP_MODEL, "open_clip model name.")
    pretrained: str = option(DEFAULT_PRETRAINED, "open_clip pretrained tag, or 'none' for random weights.")
    clip_checkpoint: str | None = option(None, "Local CLIP checkpoint file (offline use).")
    quick_gelu: bool | None = option(None, QUICK_GELU_HELP, flag="--quick-gelu/--no-quick-gelu")
    device: str = option("cpu", "Torch device, e.g. cpu or cuda.")

    @property
    def weights(self) -> Weights:
        return Weights(self.model, self.pretrained, self.clip_checkpoint)


@dataclass(frozen=True)
class SettingsOverrides:
    """Changes to the vocabulary's preset (``freecp.settings``); None keeps the preset's value."""

    variant: Variant = option(SegmentSettings.variant, f"Last-block variant: {', '.join(VARIANTS)}.")
    protocol: Protocol = option(SegmentSettings.protocol, f"Residual/FFN protocol: {', '.join(PROTOCOLS)}.")
    purify: bool = option(SegmentSettings.purify, "Run FreeCP (off: plain baseline).", flag="--purify/--no-purify")
    redundancy: bool | None = option(None, "Redundancy purification.", flag="--redundancy/--no-redundancy")
    ambiguity: bool | None = option(None, "Ambiguity purification.", flag="--ambiguity/--no-ambiguity")
    scope: PurifyScope | None = option(None, "Purify per 'window' (reference) or per 'image'.")
    rp_threshold: float | None = option(None, "Override the preset's RP threshold.")
    ap_threshold: float | None = option(None, "Override the preset's AP threshold.")
    sc_formula: ScFormula | None = option(None, "Self-consistency: 'half-dice' (reference) or 'soft-iou'.")
    box_rule: BoxRule | None = option(
        None, "AP crop boxes: one per 'contours' (reference, hole borders too) or per 'components'.")
    short_side: int | None = option(None, "Resize the short side to this many pixels.")
    window: int | None = option(None, "Sliding-window size in pixels.")
    stride: int | None = option(None, "Sliding-window stride in pixels.")
    window_batch: int | None = option(None, "Windows per backbone call.")
    batch_images: int | None = option(
        None, "Images whose windows and AP crops share model calls (same outputs; for GPUs).")
    prefetch: int | None = option(None, "Batches of images read and prepared ahead of the model (0: in turn).")
    workers: int | None = option(None, "Images in the model at once, torch's threads split between them (same "
                                       "outputs; on a CPU 2 or more run faster than 1).")
    precision: Precision | None = option(
        None, f"Model precision: {', '.join(PRECISIONS)} (fp16/bf16 autocast: for GPUs, not exact).")
    max_pixels: int | None = option(None, "Refuse images with more pixels than this.")
    float_order: FloatOrder = option(SegmentSettings.float_order, FLOAT_ORDER_HELP)
    ap_texts: ApTexts | None = option(
        None, f"What AP scores crops against: {', '.join(AP_TEXTS)} (the LLM's descriptions; class names only; "
        "as many seeded random-word descriptors per class as it has descriptions, a control).")
    pamr: bool | None = option(None, "Refine the final score maps along image edges (PAMR; default off).",
                               flag="--pamr/--no-pamr")
    pamr_steps: int | None = option(None, f"PAMR iterations (default {SegmentSettings.pamr_steps}).", minimum=1)
    pamr_dilations: str | None = option(
        None, "PAMR neighbourhood dilations, comma-separated (default "
        f"{','.join(map(str, SegmentSettings.pamr_dilations))}).")

    def settings(self, preset: str) -> SegmentSettings:
        """The preset of a benchmark vocabulary (defaults for any other) with these overrides."""
        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _SETTINGS_FIELDS}
        overrides["pamr_dilations"] = parse_dilations(self.pamr_dilations)
        return settings_for(preset, **overrides)


def parse_dilations(text: str | None) -> tuple[int, ...] | None:
    """``"8,16"`` -> (8, 16); None stays None (the preset's value). Bad values raise ValueError."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"pamr-dilations must be comma-separated whole numbers, not {text!r}") from None


# Overrides that are SegmentSettings fields under the same name.
_SETTINGS_FIELDS = frozenset(f.name for f in fields(SegmentSettings))


@dataclass(frozen=True)
class SegmentJob:
    """How to segment (``freecp segment``, ``freecp benchmark``, the ``segment-images`` flow)."""

    clip: ClipModel = field(default_factory=ClipModel)
    overrides: SettingsOverrides = field(default_factory=SettingsOverrides)
    store: str | None = option(DEFAULT_STORE, "Embedding store (directory or s3:// URL).")  # None: no store
    no_encode: bool = option(False, "Fail instead of encoding texts missing from the store.", flag="--no-encode")


@dataclass(frozen=True)
class FolderJob:
    """Segment a folder: how, and which files count as its images."""

    segment: SegmentJob = field(default_factory=SegmentJob)
    follow_symlinks: bool = option(False, "Also read symlinks that lead outside IMAGES (default: left out).")


@dataclass(frozen=True)
class LlmEndpoint:
    """The OpenAI-compatible server the describe step talks to, and how hard it pushes it."""

    llm_url: str | None = option(
        None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. Without it, vLLM is started "
        "from its environment (--vllm-env) for the run.", envvar="FREECP_LLM_URL")
    llm_model: str | None = option(
        None, f"Model: a hub name, a local model folder or {SMOLLM2_NAME} (the bundled one). Default "
        f"{DEFAULT_VLLM_MODEL}, or {SMOLLM2_NAME} with vLLM's CPU build.", envvar="FREECP_LLM_MODEL")
    concurrency: int = option(8, "Requests in flight at once.", minimum=1)
    timeout: float = option(300.0, "Seconds one request may take in all (connecting, waiting, reading).",
                            minimum=1.0)
    retries: int = option(4, "Retries of a request after a connection error, timeout, 429 or 5xx.", minimum=0)
    structured: bool | None = option(None, "Ask for JSON-schema output (default: only from vLLM).",
                                     flag="--structured/--free-text")
    vllm_env: str | None = option(
        None, "The virtualenv holding vLLM for a local server (made by scripts/install-vllm.sh; default "
        "~/.local/share/freecp/vllm-env).", envvar="FREECP_VLLM_ENV")

    @property
    def model(self) -> str:
        """The model to ask a server given by URL (``llm_model``, else the reference's Vicuna)."""
        return self.llm_model or DEFAULT_VLLM_MODEL


@dataclass(frozen=True)
class DescribeJob:
    """Class descriptions from an LLM into the description cache (``freecp describe``, the flow)."""

    llm: LlmEndpoint = field(default_factory=LlmEndpoint)
    cache: str = option(DEFAULT_CACHE, "Store root: a directory or s3://bucket/prefix.", envvar="FREECP_CACHE")
    per_class: int = option(20, "Descriptions wanted per class.", minimum=1)
    temperature: float = option(DEFAULT_TEMPERATURE, "Sampling temperature.", minimum=0.0, maximum=2.0)
    max_tokens: int = option(DEFAULT_MAX_TOKENS, "Answer length limit per request.", minimum=1)
    max_requests: int | None = option(None, "Request limit per class.", minimum=1)
    prompt_set: str = option(PROMPT_SET, "Prompt folder under prompts/ (its name carries its version).")
    run_batch: bool = option(False, "Answer the missing requests with vLLM's run_batch (offline, in rounds) "
                             "instead of a server.", flag="--run-batch")

    def plan_options(self) -> dict:
        """The fields that decide which requests a class needs (and so the cache keys)."""
        return dict(per_class=self.per_class, temperature=self.temperature, max_tokens=self.max_tokens,
                    max_requests=self.max_requests, prompt_set=self.prompt_set)


@dataclass(frozen=True)
class EncodeJob:
    """Texts into the embedding store (``freecp encode``, the ``encode-vocabulary`` flow)."""

    clip: ClipModel = field(default_factory=ClipModel)
    store: str = option(DEFAULT_STORE, "Embedding store root: a local directory or s3://bucket/prefix.")
    descriptions: str | None = option(None, "Description cache URL; its descriptions of the classes are encoded too.")
    batch_size: int = option(256, "Texts per forward pass of the text tower.", minimum=1)
    float_order: FloatOrder = option(SegmentSettings.float_order, FLOAT_ORDER_HELP)
