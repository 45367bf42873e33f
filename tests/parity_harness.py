"""Run freecp on the reference's parity fixtures and compare every recorded stage.

The fixtures (``../shared/parity``, see its README) hold what the published FreeCP reference
computed on three voc-mini images with random ViT-B/16 weights that ``make_weights.py``
regenerates bit for bit. ``compare_image`` lists every difference, stage by stage in pipeline
order, so the first entry names the earliest stage (and window) that differs; it also measures
the agreement figures the README reports. Used by tests/test_parity.py and, for the numbers,
``python -m tests.parity_harness``.

Stored maps are float16, so maps are compared with an absolute tolerance (``MAP_ATOL``).
Refined maps get more where float32 itself cannot do better (``refined_tolerance``): on random
weights the attention is nearly uniform, so before its min-max a refined map can vary by only a
few float32 steps of its mean, and that map is rounding noise in the reference as much as here.
A map whose tolerance exceeds ``NOISY_MAP`` is "noise-dominated": float32 alone may move it by
that share of its range. Class sets must be identical everywhere; boxes and crop winners must be
identical in every group without a noise-dominated member, and final labels must agree on
``PIXEL_TARGET`` of the pixels that are decided: neither label (ours, the reference's) is a
noise-dominated class, and our margin between the two exceeds twice the largest difference of
the maps composed (composition only averages maps, so it cannot move a score by more; a smaller
margin is a tie within the float16 fixtures' precision). What was excused is counted and
reported, never hidden. Likewise a window whose RP survivors differ only in classes whose
reference score lies within its tolerance of the threshold is a knife-edge: it is counted, and its
later stages (which follow from a different class set) are not compared.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from freecp.clip import ClassEmbeddings, ClipBackbone, DenseOutput, embed_vocabulary, load_backbone
from freecp.io import read_image
from freecp.refine import affinity_transition, propagate
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.trace import SegmentTrace
from freecp.vocab import Vocabulary, load_vocabulary
from tests.fixtures_parity import make_parity_weights
from tests.shared_data import SHARED, VOC_MINI

PARITY = SHARED / "parity"
FIXTURES = PARITY / "fixtures"
MODEL = "ViT-B-16"  # the default name: the checkpoint rules pick QuickGELU for these weights by their digest
IMAGES = ("2011_000003", "2011_000006", "2011_000025")
CONFIGURATIONS = ("sclip_preset", "sclip_low", "clearclip_low")  # gem_low: add once the gem variant exists
TEXT_FIXTURE = "sclip_low"    # the text side does not depend on the variant; two folders store it
MAP_ATOL = 2e-3               # float16 storage of values in [0, 1]: half an ulp near 1 is 2.4e-4
TEXT_ATOL = 1e-4              # text embeddings are stored as float32
PIXEL_TARGET = 0.999          # share of final label pixels that must agree
FLOAT32_STEP = 2.0 ** -24     # relative rounding of one float32 operation
NOISE_MARGIN = 4.0            # how many times the expected float32 drift a refined map may differ
NOISY_MAP = 0.05              # a refined map whose float32 tolerance exceeds this is noise-dominated

MAP_STAGES = (  # (fixture key, trace attribute, first query of the fixture's maps to compare, refined?)
    ("softmax_maps", "query_softmax", 0, False),
    ("normalized_maps", "normalized", None, False),
    ("refined", "refined", None, True),
    ("after_rp", "after_rp", None, True),
    ("after_ap", "after_ap", None, True),
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
    return embed_vocabulary(backbone, vocab, reference_descriptions())


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
    pixels_excused: int = 0     # differing pixels that are undecided (noise-dominated label or a tie)
    windows: int = 0
    windows_rp_equal: int = 0
    windows_knife_edge: int = 0  # RP survivors differ only by a score within tolerance of the threshold
    windows_ap_equal: int = 0
    groups: int = 0
    groups_boxes_equal: int = 0
    groups_excused: int = 0     # groups with a noise-dominated member whose boxes or winners differ
    crops: int = 0
    crops_winner_equal: int = 0
    max_abs: dict[str, float] = field(default_factory=dict)

    def add(self, other: "Agreement") -> None:
        for name in ("pixels_equal", "pixels", "pixels_excused", "windows", "windows_rp_equal", "windows_knife_edge",
                     "windows_ap_equal", "groups", "groups_boxes_equal", "groups_excused", "crops",
                     "crops_winner_equal"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for stage, value in other.max_abs.items():
            self.max_abs[stage] = max(self.max_abs.get(stage, value), value)

    def summary(self) -> str:
        maps = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs.items())
        return (f"pixels {100 * self.pixels_equal / max(self.pixels, 1):.3f} % (of decided pixels "
                f"{100 * self.pixels_equal / max(self.pixels - self.pixels_excused, 1):.3f} "
                f"%); windows with equal RP "
                f"survivors {self.windows_rp_equal}/{self.windows} ({self.windows_knife_edge} knife-edge), equal AP survivors "
                f"{self.windows_ap_equal}/{self.windows}; groups with equal boxes "
                f"{self.groups_boxes_equal}/{self.groups} ({self.groups_excused} differing groups "
                f"excused: a noise-dominated member); crop winners {self.crops_winner_equal}/"
                f"{self.crops}; max abs: {maps}")


def compare_text(embeddings: ClassEmbeddings, vocab: Vocabulary) -> list[Difference]:
    """Class-name queries and description means against the reference's text embeddings."""
    stored = np.load(FIXTURES / TEXT_FIXTURE / "text_embeddings.npz")
    differences = []
    if list(stored["query_names"]) != vocab.queries:
        return [Difference("query names", None, "differ from the vocabulary's queries")]
    fg = vocab.foreground_indices
    pairs = (("class-name embeddings", embeddings.queries.numpy(), stored["query_features"]),
             ("description means", embeddings.descriptions[fg].numpy(),
              stored["query_featuresLLM"][int(stored["num_bkg_prompts"]):]))
    for stage, ours, theirs in pairs:
        gap = float(np.abs(ours - theirs).max())
        if gap > TEXT_ATOL:
            differences.append(Difference(stage, None, f"differ (max abs {gap:.2e})"))
    return differences


def refined_tolerance(trace: SegmentTrace, threshold: float) -> np.ndarray:
    """[B, Kf] tolerance per refined map: MAP_ATOL plus the float32 drift of a sum of N products
    (sqrt(N) roundings of the map's mean), as a share of the range its min-max divides by."""
    raw = propagate(trace.normalized, affinity_transition(trace.attention), threshold)
    spread = raw.amax(dim=-1) - raw.amin(dim=-1)
    drift = NOISE_MARGIN * FLOAT32_STEP * raw.shape[-1] ** 0.5 * raw.abs().mean(dim=-1)
    return MAP_ATOL + (drift / spread.clamp_min(1e-30)).numpy()


def run_image(segmenter: Segmenter, image: str) -> tuple[np.ndarray, SegmentTrace]:
    trace = SegmentTrace()
    pixels = read_image(VOC_MINI / "JPEGImages" / f"{image}.jpg", segmenter.settings.max_pixels)
    return segmenter.segment(pixels, trace=trace).labels, trace


def compare_image(config: Configuration, image: str, labels: np.ndarray, trace: SegmentTrace,
                  vocab: Vocabulary, box_threshold: float = 0.4) -> tuple[list[Difference], Agreement]:
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
    crops = trace.windows.numpy().astype(np.float16).astype(np.float32)
    for w in range(len(record)):
        gap = float(np.abs(crops[w] - inputs["crops"][w].astype(np.float32)).max())
        if gap > 0:
            found.append(Difference("input crop", w, f"differs (max abs {gap:.3g})"))

    noisy = refined_tolerance(trace, box_threshold)
    knife_edges: set[int] = set()
    for key, attribute, first, refined in MAP_STAGES:
        ours = getattr(trace, attribute).numpy()
        theirs = stored[key].astype(np.float32)[:, (0 if first is not None else n_bg):]
        gaps = np.abs(ours - theirs).reshape(len(ours), ours.shape[1], -1).max(axis=-1)
        tolerance = noisy if refined else np.full(gaps.shape, MAP_ATOL)
        if refined and key != "refined":
            gaps[sorted(knife_edges)] = 0.0  # another class set: nothing to compare
        agreement.max_abs[key] = float(gaps.max())
        if key == "after_ap":
            decided_gap = float(np.where(noisy > NOISY_MAP, 0.0, gaps).max())
        agreement.max_abs[key + " (beyond tolerance)"] = float((gaps - tolerance).max())
        for w in range(len(record)):
            worst = int((gaps[w] - tolerance[w]).argmax())
            if gaps[w, worst] > tolerance[w, worst]:
                name = vocab.queries[worst] if first is not None else vocab.class_names[vocab.foreground_indices[worst]]
                found.append(Difference(key, w, f"class {name!r} differs (max abs {gaps[w, worst]:.3g})"))
        if key == "refined":
            found += _compare_rp(record, trace, agreement, noisy, config.rp_threshold, knife_edges)
    noise_dominated = noisy > NOISY_MAP
    found += _compare_ap(record, trace, vocab, agreement, noise_dominated, knife_edges)

    reference = np.asarray(Image.open(config.folder / f"{image}.png"))
    agreement.pixels = reference.size
    agreement.pixels_equal = int((reference == labels).sum())
    noisy_labels = np.zeros(len(vocab), dtype=bool)
    noisy_labels[vocab.foreground_indices] = (noise_dominated & trace.after_ap.flatten(2).amax(-1).gt(0).numpy()).any(0)
    margin = _label_margin(trace, labels, reference, vocab)
    undecided = noisy_labels[reference] | noisy_labels[labels] | (margin <= 2 * decided_gap)
    agreement.pixels_excused = int(((reference != labels) & undecided).sum())
    share = agreement.pixels_equal / max(agreement.pixels - agreement.pixels_excused, 1)
    if share < PIXEL_TARGET:
        found.append(Difference("final labels", None, f"agree on {100 * share:.2f} % of the decided pixels"))
    return found, agreement


def _label_margin(trace: SegmentTrace, labels: np.ndarray, reference: np.ndarray,
                  vocab: Vocabulary) -> np.ndarray:
    """Per pixel, our composed score of our label minus our score of the reference's label."""
    full = torch.zeros(len(vocab), *labels.shape)
    full[trace.score_classes] = trace.scores
    if vocab.has_background:
        full[0] = 1 - full[1:].amax(dim=0).clamp_min(0)
    scores = full.numpy()
    rows, cols = np.indices(labels.shape)
    return scores[labels, rows, cols] - scores[reference.astype(np.int64), rows, cols]


def _compare_rp(record: list[dict], trace: SegmentTrace, agreement: Agreement, tolerance: np.ndarray,
                threshold: float, knife_edges: set[int]) -> list[Difference]:
    """Survivors must be identical unless the classes in dispute are knife-edges (added to
    ``knife_edges``); a score may differ by its refined map's tolerance (it is a weighted mean of
    that map, weights the softmax map)."""
    found = []
    for w, window in enumerate(record):
        ours = torch.nonzero(trace.rp_keep[w]).flatten().tolist()
        theirs = np.asarray(window["rp_scores"])
        allowed = tolerance[w] * theirs + MAP_ATOL / 10
        disputed = sorted(set(ours) ^ set(window["kept_after_rp"]))
        if not disputed:
            agreement.windows_rp_equal += 1
        elif all(abs(theirs[c] - threshold) <= allowed[c] for c in disputed):
            agreement.windows_knife_edge += 1
            knife_edges.add(w)
        else:
            found.append(Difference("kept after RP", w, f"{ours} vs reference {window['kept_after_rp']}"))
        gaps = np.abs(trace.rp_scores[w].numpy() - theirs)
        if (gaps > allowed).any():
            found.append(Difference("RP scores", w, f"differ (max abs {gaps.max():.3g})"))
    return found


def _compare_ap(record: list[dict], trace: SegmentTrace, vocab: Vocabulary, agreement: Agreement,
                noise_dominated: np.ndarray, knife_edges: set[int]) -> list[Difference]:
    """Groups (in the reference's order), their boxes, crop winners and the classes AP keeps."""
    position = {k: i for i, k in enumerate(vocab.foreground_indices)}  # vocabulary index -> candidate
    found = []
    for w, window in enumerate(record):
        if w in knife_edges:
            continue
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
                continue
            agreement.groups_boxes_equal += mine[1] == boxes
            agreement.crops_winner_equal += sum(a == b for a, b in zip(mine[2], winners))
            if mine[1] == boxes and mine[2] == winners:
                continue
            if noise_dominated[w, members].any():
                agreement.groups_excused += 1
            elif mine[1] != boxes:
                found.append(Difference("AP boxes", w, f"of group {members}: {mine[1]} vs reference {boxes}"))
            else:
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
    for difference in compare_text(embeddings, vocab):
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
