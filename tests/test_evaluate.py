"""mIoU against hand-computed confusion matrices, folder pairing, dataset layouts and the commands."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from freecp.cli import app
from freecp.evaluate import (
    DATASET_LAYOUTS,
    EvaluationError,
    confusion_matrix,
    evaluate_dataset,
    evaluate_folders,
    metrics_from_confusion,
)
from freecp.io import read_label_map, write_mask
from tests.shared_data import VOC_MINI, needs_voc_mini

VOC_GT = VOC_MINI / "SegmentationClass"
runner = CliRunner()

# Four pixels scored, one ignored: (gt, pred) = (0,0) (0,1) (1,1) (1,1) (2,1) and (255, 0).
GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 1, 0]])


def test_confusion_matrix_by_hand() -> None:
    conf = confusion_matrix(PRED, GT, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]  # rows = truth, columns = prediction


def test_metrics_by_hand() -> None:
    m = metrics_from_confusion(confusion_matrix(PRED, GT, 3), ["a", "b", "c"])
    # intersect (1, 2, 0); truth areas (2, 2, 1); predicted areas (1, 4, 0); unions (2, 4, 1)
    assert [c["IoU"] for c in m["per_class"]] == pytest.approx([50.0, 50.0, 0.0])
    assert [c["Acc"] for c in m["per_class"]] == pytest.approx([50.0, 100.0, 0.0])
    assert m["mIoU"] == pytest.approx(100 / 3)
    assert m["mAcc"] == pytest.approx(50.0)
    assert m["aAcc"] == pytest.approx(60.0)  # 3 of the 5 scored pixels
    assert [c["name"] for c in m["per_class"]] == ["a", "b", "c"]
    assert [c["pixels"] for c in m["per_class"]] == [2, 2, 1]


def test_class_absent_from_both_sides_is_nan_and_left_out_of_the_means() -> None:
    m = metrics_from_confusion(confusion_matrix(PRED, GT, 5))
    assert math.isnan(m["per_class"][3]["IoU"]) and math.isnan(m["per_class"][4]["Acc"])
    assert m["mIoU"] == pytest.approx(100 / 3)
    assert m["mAcc"] == pytest.approx(50.0)


def test_class_only_predicted_counts_zero_iou_but_has_no_accuracy() -> None:
    gt = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 1])
    m = metrics_from_confusion(confusion_matrix(pred, gt, 2))
    assert m["per_class"][1]["IoU"] == 0.0  # union 1, intersection 0
    assert math.isnan(m["per_class"][1]["Acc"])  # no truth pixels
    assert m["mIoU"] == pytest.approx((75.0 + 0.0) / 2)
    assert m["mAcc"] == pytest.approx(75.0)


def test_ignore_index_other_than_255() -> None:
    gt = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 2, 0])
    conf = confusion_matrix(pred, gt, 3, ignore_index=2)
    assert conf.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_reduce_zero_label() -> None:
    gt = np.array([0, 1, 2, 3, 255, 1], dtype=np.uint8)  # -> 255, 0, 1, 2, 255, 0
    pred = np.array([2, 0, 1, 1, 0, 2])
    conf = confusion_matrix(pred, gt, 3, reduce_zero_label=True)
    assert conf.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]


def test_labels_out_of_range_are_refused() -> None:
    with pytest.raises(EvaluationError, match="ground truth holds label 7"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)
    with pytest.raises(EvaluationError, match="prediction holds label 3"):
        confusion_matrix(np.array([3, 1]), np.array([0, 1]), 3)


def test_all_ignored_gives_nan_not_a_crash() -> None:
    m = metrics_from_confusion(confusion_matrix(np.array([0]), np.array([255]), 2))
    assert math.isnan(m["mIoU"]) and math.isnan(m["aAcc"])


def _mmseg_style(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int) -> tuple[float, float, float]:
    """mmseg's route, re-done independently: per-image histograms of intersection, prediction
    and label areas over the non-ignored pixels, summed, then IoU and nan-means."""
    totals = np.zeros((3, num_classes))
    for pred, gt in zip(preds, gts):
        keep = gt != 255
        p, g = pred[keep], gt[keep]
        bins = np.arange(num_classes + 1)
        totals[0] += np.histogram(p[p == g], bins)[0]
        totals[1] += np.histogram(p, bins)[0]
        totals[2] += np.histogram(g, bins)[0]
    inter, area_pred, area_gt = totals
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area_pred + area_gt - inter)
        acc = inter / area_gt
    return inter.sum() / area_gt.sum() * 100, np.nanmean(iou) * 100, np.nanmean(acc) * 100


def test_bincount_confusion_agrees_with_mmseg_histograms_on_random_maps() -> None:
    rng = np.random.default_rng(7)
    preds = [rng.integers(0, 6, size=(20, 30)) for _ in range(4)]
    gts = [np.where(rng.random((20, 30)) < 0.1, 255, rng.integers(0, 5, size=(20, 30))) for _ in range(4)]
    conf = sum(confusion_matrix(p, g, 7) for p, g in zip(preds, gts))  # class 6 absent everywhere
    m = metrics_from_confusion(conf)
    assert (m["aAcc"], m["mIoU"], m["mAcc"]) == pytest.approx(_mmseg_style(preds, gts, 7))
    assert math.isnan(m["per_class"][6]["IoU"])


def _write(folder: Path, name: str, labels: list[list[int]], num_classes: int = 2) -> None:
    write_mask(folder / name, np.array(labels), num_classes)


def test_dataset_level_accumulation_differs_from_per_image_mean(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "a.png", [[0, 0], [0, 1]])
    _write(pred, "a.png", [[0, 0], [0, 0]])  # per image: IoU (3/4, 0) -> 37.5
    _write(gt, "b.png", [[1, 1], [1, 1]])
    _write(pred, "b.png", [[1, 1], [1, 1]])  # per image: IoU (nan, 1) -> 100
    result = evaluate_folders(pred, gt, 2)
    # summed: [[3, 0], [1, 4]] -> IoU (3/4, 4/5)
    assert result["mIoU"] == pytest.approx((75.0 + 80.0) / 2)
    assert result["mIoU"] != pytest.approx((37.5 + 100.0) / 2)
    assert result["aAcc"] == pytest.approx(7 / 8 * 100)
    assert result["images"] == 2


def test_pairing_by_relative_path_without_extension(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "sub/x.png", [[0, 1]])
    _write(pred, "sub/x.png", [[0, 1]])
    _write(gt, "x.png", [[1, 1]])
    _write(pred, "x.png", [[0, 0]])  # same stem, other folder: must not pair with sub/x
    result = evaluate_folders(pred, gt, 2)
    assert result["images"] == 2
    assert result["per_class"][1]["IoU"] == pytest.approx(100 / 3)


def test_missing_predictions_are_named_or_listed(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "a.png", [[0, 1]])
    _write(gt, "b.png", [[0, 1]])
    _write(pred, "a.png", [[0, 1]])
    with pytest.raises(EvaluationError, match=r"1 of 2 .*\bb\b"):
        evaluate_folders(pred, gt, 2)
    result = evaluate_folders(pred, gt, 2, allow_missing=True)
    assert result["missing_predictions"] == ["b"] and result["images"] == 1


def test_size_mismatch_names_the_file(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "a.png", [[0, 1, 1]])
    _write(pred, "a.png", [[0, 1]])
    with pytest.raises(EvaluationError, match=r"a\.png.*prediction is 2x1 but ground truth is 3x1"):
        evaluate_folders(pred, gt, 2)


def test_two_label_maps_for_one_key_are_refused(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "a.png", [[0]])
    _write(pred, "a.png", [[0]])
    shutil.copy(pred / "a.png", pred / "a.bmp")
    with pytest.raises(EvaluationError, match="both label maps"):
        evaluate_folders(pred, gt, 2)


def test_segment_output_folder_is_accepted(tmp_path: Path) -> None:
    out, gt = tmp_path / "run", tmp_path / "gt"
    _write(gt, "a.png", [[0, 1]])
    _write(out / "masks", "a.png", [[0, 1]])
    (out / "records.parquet").write_bytes(b"")
    assert evaluate_folders(out, gt, 2)["mIoU"] == 100.0


def _voc_root(tmp_path: Path, split: list[str]) -> Path:
    root = tmp_path / "VOC2012"
    shutil.copytree(VOC_GT, root / "SegmentationClass")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(split) + "\n")
    return root


@needs_voc_mini
def test_voc_layout_scores_only_the_split(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, ["2011_000003", "2011_000025"])
    pred = tmp_path / "pred"
    pred.mkdir()
    for key in ("2011_000003", "2011_000025"):
        shutil.copy(VOC_GT / f"{key}.png", pred / f"{key}.png")
    result = evaluate_dataset(pred, root, "voc21")
    assert result["images"] == 2 and result["mIoU"] == 100.0
    present = {c["name"] for c in result["per_class"] if not math.isnan(c["IoU"])}
    assert present == {"background", "bottle", "person", "bus", "car"}  # 5, 15 and 6, 7 of voc21


def test_cityscapes_layout_pairs_nested_city_folders(tmp_path: Path) -> None:
    root, pred = tmp_path / "cityscapes", tmp_path / "pred"
    _write(root / "gtFine" / "val" / "lindau", "lindau_000001_000019_gtFine_labelTrainIds.png", [[0, 18, 255]], 256)
    _write(pred / "lindau", "lindau_000001_000019_leftImg8bit.png", [[0, 18, 3]], 19)
    result = evaluate_dataset(pred, root, "cityscapes")
    assert result["images"] == 1 and result["mIoU"] == 100.0
    assert result["per_class"][18]["name"] == "bicycle"


def test_ade_layout_reduces_zero_label(tmp_path: Path) -> None:
    root, pred = tmp_path / "ADEChallengeData2016", tmp_path / "pred"
    truth = np.array([[0, 1, 150], [2, 2, 1]])
    write_mask(root / "annotations" / "validation" / "ADE_val_00000001.png", truth, 151)
    write_mask(pred / "ADE_val_00000001.png", np.array([[7, 0, 149], [1, 1, 0]]), 150)  # truth - 1
    result = evaluate_dataset(pred, root, "ade150")
    assert result["reduce_zero_label"] is True and result["mIoU"] == 100.0
    assert result["aAcc"] == 100.0  # the 0 pixel (prediction 7) is ignored


def test_layout_table_is_consistent_with_the_shipped_vocabularies() -> None:
    from freecp.evaluate import class_names_of

    for name, layout in DATASET_LAYOUTS.items():
        assert len(class_names_of(name)) == layout.num_classes, name


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@needs_voc_mini
def test_eval_command_gt_against_itself_is_perfect() -> None:
    result = _run("eval", VOC_GT, VOC_GT, "--num-classes", "21", "--class-names", "voc21")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mIoU"] == 100.0 and report["aAcc"] == 100.0 and report["mAcc"] == 100.0
    assert report["images"] == 3
    assert report["per_class"][15] == {"index": 15, "name": "person", "IoU": 100.0, "Acc": 100.0,
                                       "pixels": 32900 + 34791}
    assert report["per_class"][1]["IoU"] is None  # no aeroplane anywhere: null, not NaN


@needs_voc_mini
def test_eval_command_on_a_modified_prediction(tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(VOC_GT, pred)
    changed = read_label_map(pred / "2011_000006.png").copy()
    moved = int((changed == 18).sum())  # every sofa pixel predicted as chair
    changed[changed == 18] = 9
    write_mask(pred / "2011_000006.png", changed, 256)  # keeps the 255 borders, ignored by the GT

    # hand computation from per-class pixel counts of the ground truth
    truth = np.concatenate([read_label_map(p).ravel() for p in sorted(VOC_GT.glob("*.png"))])
    scored = truth[truth != 255]
    present = sorted(set(scored.tolist()))
    chairs = int((scored == 9).sum())
    iou = {c: 1.0 for c in present}
    iou[18] = 0.0
    iou[9] = chairs / (chairs + moved)
    acc = {c: 1.0 for c in present}
    acc[18] = 0.0
    expected_miou = 100 * sum(iou.values()) / len(present)
    expected_macc = 100 * sum(acc.values()) / len(present)
    expected_aacc = 100 * (scored.size - moved) / scored.size

    result = _run("eval", pred, VOC_GT, "--num-classes", "21")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mIoU"] == pytest.approx(expected_miou, abs=0.005)
    assert report["mAcc"] == pytest.approx(expected_macc, abs=0.005)
    assert report["aAcc"] == pytest.approx(expected_aacc, abs=0.005)
    assert report["per_class"][9]["IoU"] == pytest.approx(100 * iou[9], abs=0.005)
    assert report["per_class"][18]["IoU"] == 0.0
    assert report["mIoU"] < 100.0


def test_eval_command_reduce_zero_label_flag(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _write(gt, "a.png", [[0, 1, 2]], 3)
    _write(pred, "a.png", [[1, 0, 0]], 3)
    plain = json.loads(_run("eval", pred, gt, "--num-classes", "3").stdout)
    reduced = json.loads(_run("eval", pred, gt, "--num-classes", "3", "--reduce-zero-label").stdout)
    assert plain["aAcc"] == 0.0
    assert reduced["aAcc"] == 50.0 and reduced["per_class"][0]["IoU"] == 50.0


def test_eval_command_prints_a_per_class_table_beside_the_json(tmp_path: Path) -> None:
    pred, gt, names = tmp_path / "pred", tmp_path / "gt", tmp_path / "names.txt"
    _write(gt, "a.png", [[0, 0, 1, 1]], 3)
    _write(pred, "a.png", [[0, 1, 1, 1]], 3)
    names.write_text("sky\nroad [paved]\nboat\n")
    result = _run("eval", pred, gt, "--num-classes", "3", "--class-names", names)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["per_class"][1]["IoU"] == pytest.approx(66.67)  # stdout: only the JSON
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:6]]
            for line in result.stderr.splitlines() if line.count("│") == 6 and "class" not in line}
    assert rows == {"sky": ["50.00", "50.00", "2"], "road [paved]": ["66.67", "100.00", "2"], "boat": ["-", "-", "0"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "{tmp}/nowhere", VOC_GT, "--num-classes", "21"], "does not exist"),
        (["eval", VOC_GT, VOC_GT, "--num-classes", "10"], "label 15, outside 0..9"),
        (["eval", VOC_GT, VOC_GT, "--num-classes", "20", "--class-names", "voc21"], "21 class names"),
        (["eval", VOC_GT, VOC_GT, "--num-classes", "21", "--class-names", "{tmp}/none.txt"], "vocabulary"),
        (["eval-dataset", VOC_GT, VOC_MINI, "--dataset", "voc21"], "--all-annotations"),
        (["eval-dataset", VOC_GT, VOC_MINI, "--dataset", "kitti"], "unknown dataset"),
    ],
)
@needs_voc_mini
def test_commands_fail_with_one_clear_line(tmp_path: Path, args: list, message: str) -> None:
    result = _run(*[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


@needs_voc_mini
def test_eval_dataset_command(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, ["2011_000006"])
    result = _run("eval-dataset", VOC_GT, root, "--dataset", "voc21")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataset"] == "voc21" and report["images"] == 1 and report["mIoU"] == 100.0
    everything = json.loads(_run("eval-dataset", VOC_GT, root, "--dataset", "voc21", "--all-annotations").stdout)
    assert everything["images"] == 3
