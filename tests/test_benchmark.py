"""``freecp benchmark`` on small synthetic datasets laid out exactly like the six real ones.

Each layout holds a few tiny images with label PNGs in its validation split and one image (with
its annotation) outside it, so the tests can see that exactly the split is segmented. The model
is the tiny real architecture with random weights: the tests check which images are segmented,
how they are scored and what the report says, never how good the masks are. The window geometry
is shrunk to the tiny images (``GEOMETRY``); the thresholds stay the preset's.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from freecp.cli import app
from freecp.evaluate import DATASET_LAYOUTS
from freecp.io import read_label_map, write_mask
from freecp.published import BENCHMARK_ORDER, PUBLISHED, published_row
from freecp.settings import PRESETS
from tests.shared_data import SHARED

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ["--model", "freecp-tiny", "--pretrained", "none"]
GEOMETRY = ["--short-side", "48", "--window", "48", "--stride", "32"]


@dataclass(frozen=True)
class SyntheticLayout:
    """Where one real layout keeps things: val images by key, one image outside the split."""

    root: str                      # folder name under the fixture's directory
    val_keys: tuple[str, ...]
    other_key: str                 # an image (annotated) that is not in the validation split
    image_dir: str                 # of the validation split
    other_image_dir: str
    gt_dirs: tuple[str, str]       # annotations of the val split, of the other image
    image_suffix: str
    gt_suffixes: tuple[str, ...]   # one file per suffix and image
    label_range: tuple[int, ...]   # exclusive upper bound per suffix
    split_list: str | None = None  # list file of the val split (the other key goes to train.txt)


VOC = SyntheticLayout("VOC2012", ("2007_000033", "2007_000042"), "2007_000032", "JPEGImages", "JPEGImages",
                      ("SegmentationClass", "SegmentationClass"), ".jpg", (".png",), (21,),
                      "ImageSets/Segmentation/val.txt")
CONTEXT = SyntheticLayout("VOC2010", ("2008_000002", "2008_000008"), "2008_000007", "JPEGImages", "JPEGImages",
                          ("SegmentationClassContext", "SegmentationClassContext"), ".jpg", (".png",), (60,),
                          "ImageSets/SegmentationContext/val.txt")
COCO = SyntheticLayout("coco_stuff164k", ("000000000139", "000000000285"), "000000000009", "images/val2017",
                       "images/train2017", ("annotations/val2017", "annotations/train2017"), ".jpg",
                       ("_labelTrainIds.png", "_instanceTrainIds.png"), (171, 81))
ADE = SyntheticLayout("ADEChallengeData2016", ("ADE_val_00000001", "ADE_val_00000002"), "ADE_train_00000001",
                      "images/validation", "images/training", ("annotations/validation", "annotations/training"),
                      ".jpg", (".png",), (151,))
CITYSCAPES = SyntheticLayout("cityscapes", ("frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"),
                             "aachen/aachen_000000_000019", "leftImg8bit/val", "leftImg8bit/train",
                             ("gtFine/val", "gtFine/train"), "_leftImg8bit.png", ("_gtFine_labelTrainIds.png",), (19,))

LAYOUT_OF = {"voc21": VOC, "voc20": VOC, "context60": CONTEXT, "context59": CONTEXT, "coco_object": COCO,
             "coco_stuff": COCO, "ade150": ADE, "cityscapes": CITYSCAPES}
REDUCE_ZERO = {"voc20", "context59", "ade150"}


def _write_layout(base: Path, layout: SyntheticLayout, rng: np.random.Generator) -> Path:
    root = base / layout.root
    entries = [(key, layout.image_dir, layout.gt_dirs[0]) for key in layout.val_keys]
    entries.append((layout.other_key, layout.other_image_dir, layout.gt_dirs[1]))
    for number, (key, image_dir, gt_dir) in enumerate(entries):
        height, width = 36 + 4 * number, 52 - 4 * number  # every image its own size
        image = root / image_dir / f"{key}{layout.image_suffix}"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image)
        for suffix, classes in zip(layout.gt_suffixes, layout.label_range, strict=True):
            labels = rng.integers(0, classes, (height, width))
            labels[:3, :7] = 255  # the ignore index
            labels[-2:, :9] = 0   # class 0 for certain (ignored where zero labels are reduced)
            write_mask(root / gt_dir / f"{key}{suffix}", labels, 256)
    if layout.split_list:
        (root / layout.split_list).parent.mkdir(parents=True, exist_ok=True)
        (root / layout.split_list).write_text("\n".join(layout.val_keys) + "\n")
        (root / layout.split_list).with_name("train.txt").write_text(layout.other_key + "\n")
    return root


@pytest.fixture(scope="session")
def synthetic_roots(tmp_path_factory) -> dict[str, Path]:
    """Dataset name -> root of its synthetic copy (voc21 and voc20 share one, as on disk)."""
    base = tmp_path_factory.mktemp("benchmarks")
    rng = np.random.default_rng(0)
    roots = {layout.root: _write_layout(base, layout, rng) for layout in (VOC, CONTEXT, COCO, ADE, CITYSCAPES)}
    return {name: roots[layout.root] for name, layout in LAYOUT_OF.items()}


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@dataclass
class Run:
    out: Path
    report: dict
    output: str


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def runs(synthetic_roots, store, tmp_path_factory) -> dict[str, Run]:
    """One finished benchmark per dataset; voc21 is run in two steps (``--limit 1``, then all)."""
    results = {}
    for dataset, root in synthetic_roots.items():
        out = tmp_path_factory.mktemp(f"bench-{dataset}")
        args = ("benchmark", root, "--dataset", dataset, "--out", out, "--store", store, *TINY, *GEOMETRY)
        if dataset == "voc21":
            first = invoke(*args, "--limit", "1")
            assert first.exit_code == 0, first.output
            results["voc21 --limit 1"] = Run(out, json.loads((out / "benchmark.json").read_text()), first.output)
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        results[dataset] = Run(out, json.loads((out / "benchmark.json").read_text()), result.output)
    return results


def _split_images(dataset: str) -> list[str]:
    layout = LAYOUT_OF[dataset]
    return sorted(f"{key}{layout.image_suffix}" for key in layout.val_keys)


@pytest.mark.parametrize("dataset", list(LAYOUT_OF))
def test_exactly_the_validation_split_is_segmented(runs, synthetic_roots, dataset) -> None:
    run = runs[dataset]
    records = pd.read_parquet(run.out / "records.parquet")
    assert sorted(records.path) == _split_images(dataset)
    layout = LAYOUT_OF[dataset]
    assert not any(layout.other_key.split("/")[-1] in p.name for p in run.out.rglob("*"))
    for row in records.itertuples():
        image = Image.open(synthetic_roots[dataset] / layout.image_dir / row.path)
        labels = read_label_map(run.out / row.mask)
        assert labels.shape == image.size[::-1] and labels.max() < DATASET_LAYOUTS[dataset].num_classes
    assert run.report["images_in_split"] == run.report["images_scored"] == len(layout.val_keys)


@pytest.mark.parametrize("dataset", list(LAYOUT_OF))
def test_metrics_agree_with_freecp_eval_on_the_same_masks(runs, synthetic_roots, dataset) -> None:
    run = runs[dataset]
    result = invoke("eval-dataset", run.out, synthetic_roots[dataset], "--dataset", dataset)
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    for key in ("aAcc", "mIoU", "mAcc", "images", "per_class"):
        assert run.report["metrics"][key] == evaluated[key], key


def test_freecp_eval_on_the_mask_folder_agrees_too(runs, synthetic_roots) -> None:
    run = runs["voc21"]
    result = invoke("eval", run.out, synthetic_roots["voc21"] / "SegmentationClass", "--num-classes", "21",
                    "--allow-missing")  # the train image has an annotation but, rightly, no prediction
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["missing_predictions"] == [VOC.other_key]
    assert (evaluated["mIoU"], evaluated["mAcc"], evaluated["aAcc"]) == tuple(
        run.report["metrics"][k] for k in ("mIoU", "mAcc", "aAcc"))


@pytest.mark.parametrize("dataset", list(LAYOUT_OF))
def test_zero_labels_are_reduced_exactly_where_mmseg_reduces_them(runs, synthetic_roots, dataset) -> None:
    layout, layout_meta = LAYOUT_OF[dataset], DATASET_LAYOUTS[dataset]
    counted = sum(c["pixels"] for c in runs[dataset].report["metrics"]["per_class"])
    skipped = (0, 255) if dataset in REDUCE_ZERO else (255,)
    expected = 0
    for key in layout.val_keys:
        truth = read_label_map(synthetic_roots[dataset] / layout.gt_dirs[0] / f"{key}{layout_meta.gt_suffix}")
        expected += int(np.isin(truth, skipped, invert=True).sum())
    assert counted == expected
    assert runs[dataset].report["metrics"]["reduce_zero_label"] is (dataset in REDUCE_ZERO)


@pytest.mark.parametrize("dataset", list(LAYOUT_OF))
def test_report_holds_the_preset_the_published_row_and_the_random_weights_warning(runs, dataset) -> None:
    report = runs[dataset].report
    for name, value in PRESETS[dataset].items():
        if name not in ("short_side", "window", "stride"):
            assert report["settings"][name] == value, name
    assert set(report["differs_from_preset"]) == {"short_side", "window", "stride"}
    row = published_row("sclip", True)
    assert report["method"] == "SCLIP + FreeCP"
    assert report["published"]["mIoU"] == row.miou[dataset]
    assert report["published"]["all_methods"] == {r.method: r.miou[dataset] for r in PUBLISHED}
    assert report["random_weights"] is True and "meaningless" in report["caveats"][0]
    markdown = (runs[dataset].out / "benchmark.md").read_text()
    assert "RANDOM CLIP WEIGHTS" in markdown.split("\n| |")[0]  # above the table
    assert f"| published: SCLIP + FreeCP (same method), ViT-B/16, OpenAI weights | {row.miou[dataset]} |" in markdown
    assert f"| this run | {report['metrics']['mIoU']:.2f} |" in markdown
    assert len(re.findall(r"^\| \d+ \| ", markdown, re.MULTILINE)) == DATASET_LAYOUTS[dataset].num_classes


def test_a_limited_run_is_partial_and_the_full_run_resumes_it(runs) -> None:
    partial, full = runs["voc21 --limit 1"], runs["voc21"]
    assert partial.report["images_scored"] == 1 and partial.report["images_in_split"] == 2
    assert any("partial: 1 of the split's 2 images" in note for note in partial.report["caveats"])
    assert (full.report["segmentation"]["done"], full.report["segmentation"]["skipped"]) == (1, 1)
    assert not any("partial" in note for note in full.report["caveats"])


def test_a_rerun_skips_every_image_and_reports_the_same(runs, synthetic_roots, store, tmp_path) -> None:
    run, out = runs["ade150"], tmp_path / "out"
    shutil.copytree(run.out, out)  # the module's runs stay as they were for the other tests
    args = ("benchmark", synthetic_roots["ade150"], "--dataset", "ade150", "--out", out, "--store", store,
            *TINY, *GEOMETRY)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    report = json.loads((out / "benchmark.json").read_text())
    assert (report["segmentation"]["done"], report["segmentation"]["skipped"]) == (0, 2)
    assert report["metrics"] == run.report["metrics"]
    changed = invoke(*args, "--variant", "naclip")  # another model: nothing is up to date
    report = json.loads((out / "benchmark.json").read_text())
    assert changed.exit_code == 0 and report["segmentation"]["done"] == 2
    assert report["method"] is None and "no published row" in " ".join(report["caveats"])


def test_a_split_image_that_is_missing_is_one_clear_error(synthetic_roots, store, tmp_path) -> None:
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2099_000001\n")
    (root / "JPEGImages").mkdir()
    (root / "JPEGImages" / "2007_000033.jpg").symlink_to(synthetic_roots["voc21"] / "JPEGImages" / "2007_000033.jpg")
    result = invoke("benchmark", root, "--dataset", "voc21", "--out", tmp_path / "out", "--store", store, *TINY)
    assert result.exit_code == 2
    assert "1 of 2 images of the split (ImageSets/Segmentation/val.txt) are missing" in result.output
    assert "2099_000001.jpg" in result.output and "Traceback" not in result.output
    result = invoke("benchmark", root, "--dataset", "kitti", "--out", tmp_path / "out", *TINY)
    assert result.exit_code == 2 and "unknown dataset 'kitti'" in result.output


def test_a_split_image_without_annotation_is_refused_before_anything_is_segmented(synthetic_roots, tmp_path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(synthetic_roots["ade150"], root)
    (root / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    result = invoke("benchmark", root, "--dataset", "ade150", "--out", tmp_path / "out", *TINY)
    assert result.exit_code == 2 and "1 of 2 images have no annotation" in result.output
    assert "ADE_val_00000002.png" in result.output and not (tmp_path / "out").exists()


def test_published_table_is_the_one_in_the_design_notes() -> None:
    algorithm = SHARED / "design" / "ALGORITHM.md"
    if not algorithm.is_file():
        pytest.skip(f"{algorithm} is absent: the published table cannot be checked against it")
    section = algorithm.read_text().split("## 9.")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    assert rows == {r.method: [*(r.miou[name] for name in BENCHMARK_ORDER), r.average] for r in PUBLISHED}


def test_each_method_runs_as_its_published_configuration() -> None:
    assert published_row("sclip", False).method == "SCLIP"  # the method alone: --no-purify
    assert [published_row(v, True).method for v in ("sclip", "clearclip", "maskclip")] == [
        "SCLIP + FreeCP", "ClearCLIP + FreeCP", "MaskCLIP + FreeCP"]
    assert published_row("naclip", True) is None and published_row("clearclip", False) is None


def test_benchmark_table_puts_the_eight_runs_above_the_published_rows(runs) -> None:
    parent = runs["voc21"].out.parent  # every run folder of this module lies here, next to others
    folders = [runs[name].out for name in BENCHMARK_ORDER]
    result = invoke("benchmark-table", *folders)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| method | VOC21 | PC60 | Obj | VOC20 | City | PC59 | ADE | Stuff | Avg |"
    ours = [line for line in lines if line.startswith("| this run")]
    assert len(ours) == 1 and "RANDOM WEIGHTS" in ours[0]
    cells = [c.strip() for c in ours[0].strip("|").split("|")][1:]
    mious = [runs[name].report["metrics"]["mIoU"] for name in BENCHMARK_ORDER]
    assert cells == [f"{m:.2f}" for m in mious] + [f"{sum(mious) / 8:.1f}"]
    assert "| published: SCLIP + FreeCP (ViT-B/16, OpenAI weights) | 65.8 | 35.3 | 37.2 | 84.3 | 33.3 | 38.0 | " \
           "18.4 | 24.9 | 42.1 |" in lines
    assert invoke("benchmark-table", parent / "nowhere").exit_code == 2


def test_an_ablation_runs_every_control_with_and_without_pamr_into_one_table(synthetic_roots, store,
                                                                           tmp_path) -> None:
    out = tmp_path / "ablation"
    result = invoke("benchmark", synthetic_roots["voc21"], "--dataset", "voc21", "--out", out, "--store", store,
                    *TINY, *GEOMETRY, "--limit", "1", "--compare-ap-texts", "descriptions,names",
                    "--compare-pamr", "--pamr-steps", "2", "--pamr-dilations", "1,2")
    assert result.exit_code == 0, result.output
    folders = ["ap-descriptions_pamr-off", "ap-descriptions_pamr-on", "ap-names_pamr-off", "ap-names_pamr-on"]
    reports = [json.loads((out / folder / "benchmark.json").read_text()) for folder in folders]
    assert [(r["settings"]["ap_texts"], r["settings"]["pamr"]) for r in reports] == [
        ("descriptions", False), ("descriptions", True), ("names", False), ("names", True)]
    assert all(r["images_scored"] == 1 for r in reports)
    table = (out / "ablation.md").read_text().splitlines()
    assert table[table.index("| AP texts | PAMR | mIoU | mAcc | aAcc | s / image | images scored |") + 2:] == [
        f"| {r['settings']['ap_texts']} | {'on' if r['settings']['pamr'] else 'off'} | {r['metrics']['mIoU']:.2f} "
        f"| {r['metrics']['mAcc']:.2f} | {r['metrics']['aAcc']:.2f} "
        f"| {r['segmentation']['seconds_per_image_done']:.2f} | 1 of 2 |" for r in reports]
    assert "ablation" in result.output and "RANDOM CLIP WEIGHTS" in result.output
    bad = invoke("benchmark", synthetic_roots["voc21"], "--dataset", "voc21", "--out", tmp_path / "bad",
                 "--store", store, *TINY, "--compare-ap-texts", "names,llm")
    assert bad.exit_code == 2 and "unknown AP texts 'llm'" in bad.output
    assert not (tmp_path / "bad").exists()  # refused before the first run
