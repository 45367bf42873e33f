"""Run freecp on the reference's parity fixtures and compare every recorded stage.

The fixtures (``../shared/parity``, see its README) hold what the published FreeCP reference
computed on three voc-mini images with random ViT-B/16 weights that ``make_weights.py``
regenerates bit for bit. ``compare_image`` lists every difference, stage by stage in pipeline
order, so the first entry names the earliest stage (and window) that differs; it also measures
the agreement figures the README reports. Used by tests/test_parity.py and, for the numbers,
``python -m tests.parity_harness``.

The reference ran in float32 on a CPU with the torch this project uses, and the ``freecp``
protocol performs the same operations in the same order on the same shapes and memory layouts,
so nothing is excused: window crops, text embeddings and RP scores (stored as float32) must be
bit-equal, every stored float16 map must equal ours rounded to float16, and RP survivors, AP
groups, boxes, crop winners and AP survivors must be identical in every window. Only the final
label maps get a share (``PIXEL_TARGET``): composition averages overlapping windows through
matrices instead of the reference's paste-and-divide, so a pixel whose two best classes tie to
a float32 step can go either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from freecp.clip import ClassEmbeddings, ClipBackbone, DenseOutput, embed_vocabulary, load_backbone
from freecp.clip import model as model_module
from freecp import templates as templates_module
from freecp.clip import text as text_module
from freecp.clip.text import average_embeddings, encode_class_names
from freecp.io import read_image
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.trace import SegmentTrace
from freecp.vocab import Vocabulary, load_vocabulary
from tests.fixtures_parity import CACHE, WEIGHTS_DIGEST, make_parity_weights
from tests.shared_data import SHARED, VOC_MINI

PARITY = SHARED / "parity"
FIXTURES = PARITY / "fixtures"
MODEL = "ViT-B-16"  # the default name: the checkpoint rules pick QuickGELU for these weights by their digest
IMAGES = ("2011_000003", "2011_000006", "2011_000025")
CONFIGURATIONS = ("sclip_preset", "sclip_low", "clearclip_low", "gem_low")
TEXT_FIXTURE = "sclip_low"    # the text side does not depend on the variant; two folders store it
PIXEL_TARGET = 0.999          # share of final label pixels that must agree

MAP_STAGES = (  # (fixture key, trace attribute, True: all queries / False: foreground maps only)
    ("softmax_maps", "query_softmax", True),
    ("normalized_maps", "normalized", False),
    ("refined", "refined", False),
    ("after_rp", "after_rp", False),
    ("after_ap", "after_ap", False),
)


@dataclass(frozen=True)
class Configuration:
    """One fixture folder: the reference's variant and thresholds."""

    name: str
    variant: str
    rp_threshold: float
    ap_threshold: float

    @property
    def folder(self) -> Path:
        return FIXTURES / self.name

    def settings(self) -> SegmentSettings:
        return SegmentSettings(variant=self.variant, protocol="freecp", scope="window",
                               rp_threshold=self.rp_threshold, ap_threshold=self.ap_threshold)


def configuration(name: str) -> Configuration:
    """Read a fixture folder's ``run_meta.json``: its model type is freecp's variant."""
    meta = json.loads((FIXTURES / name / "run_meta.json").read_text())["model_cfg"]
    return Configuration(name, meta["model_type"].lower(), float(meta["rp_thres"]), float(meta["ap_thres"]))


def missing_material() -> str | None:
    """Why the parity suite cannot run here, or None when everything it reads exists."""
    for path in (PARITY / "make_weights.py", FIXTURES / "voc21_reference.txt", VOC_MINI / "JPEGImages"):
        if not path.exists():
            return f"parity material missing: {path} (the shared folder beside the checkout)"
    return None


# ------------------------------------------------------------------------------ inputs
def reference_vocabulary() -> Vocabulary:
    return load_vocabulary(FIXTURES / "voc21_reference.txt")


def reference_descriptions() -> dict[str, list[str]]:
    return json.loads((FIXTURES / "voc21_reference_descriptions.json").read_text())


class RememberingBackbone(ClipBackbone):
    """A backbone that remembers its dense forwards by input content: the parity configurations
    of one variant differ only in thresholds, so their windows need one forward, not two."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._dense: dict[str, DenseOutput] = {}

    def dense_forward(self, windows: torch.Tensor) -> DenseOutput:
        key = hashlib.sha256(windows.numpy().tobytes()).hexdigest()
        if key not in self._dense:
            self._dense[key] = super().dense_forward(windows)
        return self._dense[key]


def backbone_for(model: ClipBackbone, variant: str) -> RememberingBackbone:
    """The same loaded CLIP model behind a variant's last-block path (no second load)."""
    return RememberingBackbone(model.model, model.tokenizer, model.model_name, model.model_key,
                               variant=variant, protocol="freecp", device=str(model.device))


def load_parity_backbone(weights: Path) -> ClipBackbone:
    return load_backbone(MODEL, checkpoint=weights)


def parity_embeddings(backbone: ClipBackbone, vocab: Vocabulary) -> ClassEmbeddings:
    """The fixture vocabulary's embeddings, computed once per weights file and text-side code.

    Encoding its 4080 texts at the reference's full context takes minutes on a CI machine, so
    the result is cached under ``.ci-cache/parity/`` in a file named after the weights digest
    and the source of the text side (``freecp/clip/model.py``, ``freecp/clip/text.py``,
    ``freecp/templates.py``): a change there recomputes it. ``spot_check_texts`` re-encodes
    a few texts every session besides.
    """
    sources = hashlib.sha256(WEIGHTS_DIGEST.encode())
    for module in (model_module, text_module, templates_module):
        sources.update(Path(module.__file__).read_bytes())
    cached = CACHE / f"text-{sources.hexdigest()[:16]}.pt"
    if cached.is_file():
        return ClassEmbeddings(**torch.load(cached))
    embeddings = embed_vocabulary(backbone, vocab, reference_descriptions())
    CACHE.mkdir(parents=True, exist_ok=True)
    private = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    torch.save(dataclasses.asdict(embeddings), private)
    os.replace(private, cached)  # other sessions may share the cache
    return embeddings


def spot_check_texts(backbone: ClipBackbone, vocab: Vocabulary) -> list[Difference]:
    """Freshly encode two class names (80 templates each) and one description list and compare
    them bit for bit with the reference's, whatever the cache holds."""
    stored = np.load(FIXTURES / TEXT_FIXTURE / "text_embeddings.npz")
    n_bg = int(stored["num_bkg_prompts"])
    names = [vocab.queries[0], vocab.queries[n_bg]]
    described = vocab.queries[n_bg + 1]
    pairs = (("class-name embeddings (fresh)", encode_class_names(backbone, names).numpy(),
              stored["query_features"][[0, n_bg]]),
             ("description mean (fresh)", average_embeddings(backbone.encode_texts(
                 reference_descriptions()[described]))[None].numpy(), stored["query_featuresLLM"][[n_bg + 1]]))
    return [Difference(stage, None, f"differ in {int((ours != theirs).sum())} values")
            for stage, ours, theirs in pairs if (ours != theirs).any()]


# ------------------------------------------------------------------------- comparison
@dataclass
class Difference:
    stage: str
    window: int | None  # None: not a per-window stage
    detail: str

    def describe(self, config: str, image: str) -> str:
        where = f" window {self.window}" if self.window is not None else ""
        return f"{config}/{image}{where}: {self.stage} {self.detail}"


@dataclass
class Agreement:
    """What matched on one image (or several, after ``add``)."""

    pixels_equal: int = 0
    pixels: int = 0
    windows: int = 0
    windows_rp_equal: int = 0
    windows_ap_equal: int = 0
    groups: int = 0
    groups_boxes_equal: int = 0
    crops: int = 0
    crops_winner_equal: int = 0
    values: dict[str, int] = field(default_factory=dict)        # per map stage: stored values compared
    values_equal: dict[str, int] = field(default_factory=dict)  # ... and equal to ours in float16

    def add(self, other: "Agreement") -> None:
        for name in ("pixels_equal", "pixels", "windows", "windows_rp_equal", "windows_ap_equal", "groups",
                     "groups_boxes_equal", "crops", "crops_winner_equal"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for counts, theirs in ((self.values, other.values), (self.values_equal, other.values_equal)):
            for stage, count in theirs.items():
                counts[stage] = counts.get(stage, 0) + count

    def summary(self) -> str:
        maps = ", ".join(f"{stage} {self.values_equal[stage]}/{count}" for stage, count in self.values.items())
        return (f"pixels {100 * self.pixels_equal / max(self.pixels, 1):.3f} %; windows with equal RP "
                f"survivors {self.windows_rp_equal}/{self.windows}, equal AP survivors "
                f"{self.windows_ap_equal}/{self.windows}; groups with equal boxes "
                f"{self.groups_boxes_equal}/{self.groups}; crop winners {self.crops_winner_equal}/"
                f"{self.crops}; map values equal in float16: {maps}")


def compare_text(embeddings: ClassEmbeddings, vocab: Vocabulary) -> list[Difference]:
    """Class-name queries and description means against the reference's text embeddings: bit-equal."""
    stored = np.load(FIXTURES / TEXT_FIXTURE / "text_embeddings.npz")
    differences = []
    if list(stored["query_names"]) != vocab.queries:
        return [Difference("query names", None, "differ from the vocabulary's queries")]
    fg = vocab.foreground_indices
    pairs = (("class-name embeddings", embeddings.queries.numpy(), stored["query_features"]),
             ("description means", embeddings.descriptions[fg].numpy(),
              stored["query_featuresLLM"][int(stored["num_bkg_prompts"]):]))
    for stage, ours, theirs in pairs:
        unequal = int((ours != theirs).sum())
        if unequal:
            differences.append(Difference(stage, None, f"differ in {unequal} values "
                                                       f"(max abs {np.abs(ours - theirs).max():.2e})"))
    return differences


def run_image(segmenter: Segmenter, image: str) -> tuple[np.ndarray, SegmentTrace]:
    trace = SegmentTrace()
    pixels = read_image(VOC_MINI / "JPEGImages" / f"{image}.jpg", segmenter.settings.max_pixels)
    return segmenter.segment(pixels, trace=trace).labels, trace


def compare_image(config: Configuration, image: str, labels: np.ndarray, trace: SegmentTrace,
                  vocab: Vocabulary) -> tuple[list[Difference], Agreement]:
    """Every difference between freecp's run of ``image`` and the reference's, in pipeline order."""
    record = json.loads((config.folder / f"{image}.json").read_text())["windows"]
    stored = np.load(config.folder / f"{image}_windows.npz")
    inputs = np.load(FIXTURES / f"{image}_input.npz")
    n_bg = len(vocab.queries) - len(vocab.foreground_indices)
    found: list[Difference] = []
    agreement = Agreement(windows=len(record))

    ours_origins = [list(o) for o in trace.origins]
    theirs_origins = [[int(b[0]), int(b[1])] for b in inputs["yxyx"]]
    if ours_origins != theirs_origins:
        return [Difference("window grid", None, f"origins {ours_origins} vs {theirs_origins}")], agreement
    crops = trace.windows.numpy().astype(np.float16)
    for w in range(len(record)):
        unequal = int((crops[w] != inputs["crops"][w]).sum())
        if unequal:
            found.append(Difference("input crop", w, f"differs in {unequal} values"))

    for key, attribute, all_queries in MAP_STAGES:
        ours = getattr(trace, attribute).numpy().astype(np.float16)
        theirs = stored[key][:, (0 if all_queries else n_bg):]
        unequal = (ours != theirs).reshape(len(ours), ours.shape[1], -1).sum(axis=-1)
        agreement.values[key] = theirs.size
        agreement.values_equal[key] = theirs.size - int(unequal.sum())
        for w in range(len(record)):
            if unequal[w].any():
                worst = int(unequal[w].argmax())
                name = vocab.queries[worst] if all_queries else vocab.class_names[vocab.foreground_indices[worst]]
                gap = np.abs(ours[w, worst].astype(np.float32) - theirs[w, worst].astype(np.float32)).max()
                found.append(Difference(key, w, f"class {name!r} differs in {unequal[w, worst]} of "
                                                f"{ours[w, worst].size} values (max abs {gap:.3g})"))
        if key == "refined":
            found += _compare_rp(record, stored["rp_scores"], trace, agreement)
    found += _compare_ap(record, trace, vocab, agreement)

    reference = np.asarray(Image.open(config.folder / f"{image}.png"))
    agreement.pixels = reference.size
    agreement.pixels_equal = int((reference == labels).sum())
    share = agreement.pixels_equal / agreement.pixels
    if share < PIXEL_TARGET:
        found.append(Difference("final labels", None, f"agree on {100 * share:.2f} % of the pixels"))
    return found, agreement


def _compare_rp(record: list[dict], scores: np.ndarray, trace: SegmentTrace,
                agreement: Agreement) -> list[Difference]:
    """Scores (stored as float32) bit-equal and survivors identical, window by window."""
    found = []
    for w, window in enumerate(record):
        ours = torch.nonzero(trace.rp_keep[w]).flatten().tolist()
        theirs, mine = scores[w], trace.rp_scores[w].numpy()
        if (mine != theirs).any():
            found.append(Difference("RP scores", w, f"differ (max abs {np.abs(mine - theirs).max():.3g})"))
        if ours == window["kept_after_rp"]:
            agreement.windows_rp_equal += 1
        else:
            found.append(Difference("kept after RP", w, f"{ours} vs reference {window['kept_after_rp']}"))
    return found


def _compare_ap(record: list[dict], trace: SegmentTrace, vocab: Vocabulary,
                agreement: Agreement) -> list[Difference]:
    """Groups (in the reference's order), their boxes, crop winners and the classes AP keeps."""
    position = {k: i for i, k in enumerate(vocab.foreground_indices)}  # vocabulary index -> candidate
    found = []
    for w, window in enumerate(record):
        events = window["ap_events"]
        theirs = [(e["members"], [tuple(b) for b in e["boxes_patch_xyxy"]], []) for e in events
                  if e["event"] == "group"]
        group_of = -1
        for event in events:
            if event["event"] == "group":
                group_of += 1
            else:
                theirs[group_of][2].append(event["winner"])
        ours = [([position[m] for m in g.members], g.boxes, [position[m] for m in g.crop_winners])
                for g in trace.groups if g.scope == w]
        ours_members = sorted(g[0] for g in ours)
        if ours_members != sorted(g[0] for g in theirs):
            found.append(Difference("AP groups", w, f"{ours_members} vs reference {[g[0] for g in theirs]}"))
        by_members = {tuple(g[0]): g for g in ours}
        for members, boxes, winners in theirs:
            agreement.groups += 1
            agreement.crops += len(winners)
            mine = by_members.get(tuple(members))
            if mine is None:
                continue  # reported above
            agreement.groups_boxes_equal += mine[1] == boxes
            agreement.crops_winner_equal += sum(a == b for a, b in zip(mine[2], winners))
            if mine[1] != boxes:
                found.append(Difference("AP boxes", w, f"of group {members}: {mine[1]} vs reference {boxes}"))
            elif mine[2] != winners:
                found.append(Difference("crop winners", w, f"of group {members}: {mine[2]} vs reference {winners}"))
        kept = torch.nonzero(trace.after_ap[w].flatten(1).amax(dim=1) > 0).flatten().tolist()
        if kept == window["kept_after_ap"]:
            agreement.windows_ap_equal += 1
        else:
            found.append(Difference("kept after AP", w, f"{kept} vs reference {window['kept_after_ap']}"))
    return found


def main() -> None:
    """Print per-configuration agreement and the first differences (no assertions)."""
    reason = missing_material()
    if reason:
        sys.exit(reason)
    weights = make_parity_weights()
    base = load_parity_backbone(weights)
    print(f"logit scale {base.logit_scale:.6f}")
    vocab = reference_vocabulary()
    embeddings = parity_embeddings(base, vocab)
    for difference in compare_text(embeddings, vocab) + spot_check_texts(base, vocab):
        print("text:", difference.describe("text", TEXT_FIXTURE))
    names = sys.argv[1:] or CONFIGURATIONS
    backbones: dict[str, RememberingBackbone] = {}
    for name in names:
        config = configuration(name)
        backbone = backbones.setdefault(config.variant, backbone_for(base, config.variant))
        segmenter = Segmenter(backbone, vocab, embeddings, config.settings())
        total = Agreement()
        for image in IMAGES:
            labels, trace = run_image(segmenter, image)
            found, agreement = compare_image(config, image, labels, trace, vocab)
            total.add(agreement)
            print(f"{name}/{image}: {agreement.summary()}")
            for difference in found[:8]:
                print("   ", difference.describe(name, image))
        print(f"{name}: {total.summary()}")


if __name__ == "__main__":
    main()
