"""mIoU as mmsegmentation computes it, and the folder layouts of the standard benchmarks.

The metric is dataset-level: one confusion matrix is summed over every image and IoU/Acc are
taken from the totals (not averaged per image). Classes with an empty union (absent from both
prediction and ground truth) get NaN and are left out of the mean, as mmseg's ``nanmean`` does.
Results are percentages, as mmseg reports them.

One deliberate difference: a label outside ``0..num_classes-1`` (other than the ignore index)
is an error here. mmseg's histograms silently drop such pixels from one side of the union,
and such values always mean a wrong ``--num-classes`` or the wrong annotation files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freecp.files import TEMP_PREFIX
from freecp.io import IMAGE_SUFFIXES, ImageReadError, read_label_map
from freecp.vocab import load_vocabulary

IGNORE_INDEX = 255
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless formats that can hold class indices
PREDICTION_SUFFIX = ".png"  # what ``freecp segment`` writes under DIR/masks

Progress = Callable[[int, int], None]  # (images done, images in total)


class EvaluationError(ValueError):
    """Inputs that cannot be scored; the message names the file or setting at fault."""


@dataclass(frozen=True)
class DatasetLayout:
    """Where a benchmark keeps its images and annotations, relative to its data root.

    ``name`` is also the shipped vocabulary whose class order the annotation ids follow.
    A prediction for image ``<key><image_suffix>`` is ``<key><image_suffix minus extension>.png``
    (what ``freecp segment DATA_ROOT/<image_dir>`` writes), its truth ``<gt_dir>/<key><gt_suffix>``.
    """

    name: str
    image_dir: str
    gt_dir: str
    image_suffix: str
    gt_suffix: str
    num_classes: int
    reduce_zero_label: bool
    split: str | None  # list of keys to score; None = every annotation in gt_dir

    def prediction_names(self, key: str) -> tuple[str, str]:
        """``freecp segment``'s name (the image's whole name + .png), then a plain mask folder's."""
        base = self.image_suffix[: self.image_suffix.rfind(".")]  # "_leftImg8bit.png" -> "_leftImg8bit"
        return key + self.image_suffix + PREDICTION_SUFFIX, key + base + PREDICTION_SUFFIX


DATASET_LAYOUTS: dict[str, DatasetLayout] = {
    layout.name: layout
    for layout in (
        # VOC2012 root; voc20 is the same data with background ignored.
        DatasetLayout("voc21", "JPEGImages", "SegmentationClass", ".jpg", ".png", 21, False,
                      "ImageSets/Segmentation/val.txt"),
        DatasetLayout("voc20", "JPEGImages", "SegmentationClass", ".jpg", ".png", 20, True,
                      "ImageSets/Segmentation/val.txt"),
        # VOC2010 root with the Pascal Context annotations converted by mmseg's script.
        DatasetLayout("context60", "JPEGImages", "SegmentationClassContext", ".jpg", ".png", 60, False,
                      "ImageSets/SegmentationContext/val.txt"),
        DatasetLayout("context59", "JPEGImages", "SegmentationClassContext", ".jpg", ".png", 59, True,
                      "ImageSets/SegmentationContext/val.txt"),
        # coco_stuff164k root; COCO-Object masks come from the usual instance-to-trainId conversion.
        DatasetLayout("coco_object", "images/val2017", "annotations/val2017", ".jpg",
                      "_instanceTrainIds.png", 81, False, None),
        DatasetLayout("coco_stuff", "images/val2017", "annotations/val2017", ".jpg",
                      "_labelTrainIds.png", 171, False, None),
        # ADEChallengeData2016 root.
        DatasetLayout("ade150", "images/validation", "annotations/validation", ".jpg", ".png", 150, True,
                      None),
        # Cityscapes root (city sub-folders below val).
        DatasetLayout("cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                      "_gtFine_labelTrainIds.png", 19, False, None),
    )
}


@dataclass(frozen=True)
class Pair:
    key: str
    prediction: Path
    truth: Path


@dataclass(frozen=True)
class Pairing:
    pairs: list[Pair]
    missing: list[str]  # keys with ground truth but no prediction


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    reduce_zero_label: bool = False,
) -> np.ndarray:
    """[num_classes, num_classes] pixel counts, rows = ground truth, columns = prediction."""
    if pred.shape != gt.shape:
        raise EvaluationError(f"prediction is {_size(pred)} but ground truth is {_size(gt)}")
    truth = gt.astype(np.int64).ravel()
    guess = pred.astype(np.int64).ravel()
    if reduce_zero_label:
        # mmseg's rule, literally: 0 -> 255, everything minus one, and 254 (the old 255) back to 255.
        truth = np.where(truth == 0, 255, truth) - 1
        truth[truth == 254] = 255
    keep = truth != ignore_index
    truth, guess = truth[keep], guess[keep]
    _check_range(truth, num_classes, "ground truth")
    _check_range(guess, num_classes, "prediction")
    counts = np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """aAcc, mIoU, mAcc and per-class IoU/Acc in percent; NaN marks a class with nothing to score."""
    num_classes = conf.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise EvaluationError(f"{len(names)} class names given for {num_classes} classes")
    conf = conf.astype(np.float64)
    intersect = np.diag(conf)
    area_truth = conf.sum(axis=1)
    area_pred = conf.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / (area_truth + area_pred - intersect)
        acc = intersect / area_truth
        a_acc = intersect.sum() / area_truth.sum()
    return {
        "aAcc": float(a_acc * 100),
        "mIoU": _nanmean(iou) * 100,
        "mAcc": _nanmean(acc) * 100,
        "per_class": [
            {"index": i, "name": names[i], "IoU": float(iou[i] * 100), "Acc": float(acc[i] * 100),
             "pixels": int(area_truth[i])}
            for i in range(num_classes)
        ],
    }


def pair_folders(pred_dir: Path, gt_dir: Path) -> Pairing:
    """Match label maps by relative path without extension (``a/b.png`` <-> ``a/b.tif``)."""
    predictions = _index_label_maps(prediction_root(pred_dir), image_named=True)
    truths = _index_label_maps(_existing_dir(gt_dir, "ground-truth folder"))
    if not truths:
        raise EvaluationError(f"no label maps ({', '.join(LABEL_SUFFIXES)}) found in {gt_dir}")
    pairs = [Pair(k, predictions[k], t) for k, t in truths.items() if k in predictions]
    return Pairing(pairs, [k for k in truths if k not in predictions])


def pair_dataset(pred_dir: Path, data_root: Path, layout: DatasetLayout, use_split: bool = True) -> Pairing:
    """Match predictions to a benchmark's annotations, restricted to its split list if it has one."""
    if layout.split and use_split:
        keys = _listed_keys(Path(data_root), layout)
    else:
        gt_root = _existing_dir(Path(data_root) / layout.gt_dir, f"{layout.name} annotation folder")
        keys = _keys_with_suffix(gt_root, layout.gt_suffix)
    return pair_keys(pred_dir, data_root, layout, keys)


def validation_keys(data_root: Path, layout: DatasetLayout) -> list[str]:
    """The official validation split, found as mmsegmentation's dataset classes find it: the keys
    of the split list when the layout has one, else every ``*<image_suffix>`` below the image
    folder (recursively, sorted). An image is ``<image_dir>/<key><image_suffix>``."""
    data_root = Path(data_root)
    if layout.split:
        keys = _listed_keys(data_root, layout)
    else:
        image_root = _existing_dir(data_root / layout.image_dir, f"{layout.name} image folder")
        keys = _keys_with_suffix(image_root, layout.image_suffix)
    if not keys:
        raise EvaluationError(f"no *{layout.image_suffix} images found in {data_root / layout.image_dir}")
    return keys


def pair_keys(pred_dir: Path, data_root: Path, layout: DatasetLayout, keys: Sequence[str]) -> Pairing:
    """Pair the given keys' predictions with their annotations; every key must have an annotation."""
    pred_root = prediction_root(pred_dir)
    gt_root = _existing_dir(Path(data_root) / layout.gt_dir, f"{layout.name} annotation folder")
    if not keys:
        raise EvaluationError(f"no *{layout.gt_suffix} annotations found in {gt_root}")
    check_annotations(data_root, layout, keys)
    pairs, missing = [], []
    for key in keys:
        prediction = next((pred_root / name for name in layout.prediction_names(key)
                           if (pred_root / name).is_file()), None)
        if prediction is not None:
            pairs.append(Pair(key, prediction, gt_root / (key + layout.gt_suffix)))
        else:
            missing.append(key)
    return Pairing(pairs, missing)


def check_annotations(data_root: Path, layout: DatasetLayout, keys: Sequence[str]) -> None:
    """Refuse keys without an annotation file, naming how many and one of them."""
    gt_root = Path(data_root) / layout.gt_dir
    absent = [k for k in keys if not (gt_root / (k + layout.gt_suffix)).is_file()]
    if absent:
        raise EvaluationError(
            f"{len(absent)} of {len(keys)} images have no annotation in {gt_root}, "
            f"e.g. {absent[0]}{layout.gt_suffix}"
        )


def _listed_keys(data_root: Path, layout: DatasetLayout) -> list[str]:
    split_file = data_root / layout.split
    if not split_file.is_file():
        raise EvaluationError(
            f"split list {split_file} not found (pass --all-annotations to score every file in "
            f"{data_root / layout.gt_dir})"
        )
    return [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _keys_with_suffix(root: Path, suffix: str) -> list[str]:
    """Relative paths of the files below ``root`` whose names end in ``suffix``, minus the suffix."""
    return sorted(
        p.relative_to(root).as_posix()[: -len(suffix)]
        for p in root.rglob(f"*{suffix}")
        if p.is_file() and not p.name.startswith(TEMP_PREFIX)
    )


def evaluate_pairing(
    pairing: Pairing,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    reduce_zero_label: bool = False,
    class_names: Sequence[str] | None = None,
    allow_missing: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Score every pair into one confusion matrix; missing predictions are an error unless allowed."""
    if num_classes < 1:
        raise EvaluationError(f"the number of classes must be positive, not {num_classes}")
    if pairing.missing and not allow_missing:
        total = len(pairing.missing) + len(pairing.pairs)
        examples = ", ".join(pairing.missing[:3])
        raise EvaluationError(
            f"{len(pairing.missing)} of {total} ground-truth images have no prediction "
            f"(e.g. {examples}); pass --allow-missing to score the rest"
        )
    if not pairing.pairs:
        raise EvaluationError("no prediction matches any ground-truth file")
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for done, pair in enumerate(pairing.pairs, start=1):
        pred, truth = _read_labels(pair.prediction), _read_labels(pair.truth)
        try:
            conf += confusion_matrix(pred, truth, num_classes, ignore_index, reduce_zero_label)
        except EvaluationError as err:
            raise EvaluationError(f"{pair.prediction} vs {pair.truth}: {err}") from None
        if progress:
            progress(done, len(pairing.pairs))
    result = metrics_from_confusion(conf, class_names)
    return {
        "aAcc": result["aAcc"],
        "mIoU": result["mIoU"],
        "mAcc": result["mAcc"],
        "images": len(pairing.pairs),
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "reduce_zero_label": reduce_zero_label,
        "missing_predictions": pairing.missing,
        "per_class": result["per_class"],
    }


def evaluate_folders(
    pred_dir: Path,
    gt_dir: Path,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    reduce_zero_label: bool = False,
    class_names: Sequence[str] | None = None,
    allow_missing: bool = False,
    progress: Progress | None = None,
) -> dict:
    """mIoU of a folder of predicted label maps against a folder of ground-truth label maps."""
    return evaluate_pairing(
        pair_folders(pred_dir, gt_dir), num_classes, ignore_index, reduce_zero_label,
        class_names, allow_missing, progress,
    )


def evaluate_dataset(
    pred_dir: Path,
    data_root: Path,
    dataset: str,
    use_split: bool = True,
    allow_missing: bool = False,
    progress: Progress | None = None,
    keys: Sequence[str] | None = None,
) -> dict:
    """mIoU on a benchmark in its standard layout, with its class count, names and label rule;
    ``keys`` (e.g. from ``validation_keys``) score exactly those images instead of the split."""
    layout = dataset_layout(dataset)
    pairing = pair_dataset(pred_dir, data_root, layout, use_split) if keys is None \
        else pair_keys(pred_dir, data_root, layout, keys)
    result = evaluate_pairing(
        pairing, layout.num_classes, IGNORE_INDEX, layout.reduce_zero_label, class_names_of(layout.name),
        allow_missing, progress,
    )
    return {"dataset": layout.name, **result}


def dataset_layout(name: str) -> DatasetLayout:
    if name not in DATASET_LAYOUTS:
        raise EvaluationError(f"unknown dataset {name!r}; known: {', '.join(DATASET_LAYOUTS)}")
    return DATASET_LAYOUTS[name]


def class_names_of(vocabulary: str | Path) -> list[str]:
    """Display names in label order from a vocabulary (shipped name or file); class 0 of a
    vocabulary with a background line is called ``background``."""
    vocab = load_vocabulary(vocabulary)
    names = vocab.class_names
    if vocab.has_background:
        names[0] = "background"
    return names


def rounded_for_json(value: object) -> object:
    """A report with its numbers rounded to two decimals, as mmseg prints them, and NaN as null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 2)
    if isinstance(value, dict):
        return {k: rounded_for_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded_for_json(v) for v in value]
    return value


def prediction_root(pred_dir: Path) -> Path:
    """Accept either a folder of masks or a ``freecp segment`` output folder (uses its ``masks/``)."""
    pred_dir = _existing_dir(pred_dir, "prediction folder")
    if (pred_dir / "records.parquet").is_file() and (pred_dir / "masks").is_dir():
        return pred_dir / "masks"
    return pred_dir


def _index_label_maps(root: Path, image_named: bool = False) -> dict[str, Path]:
    """Label maps by relative path without extension; ``image_named`` also drops an image
    extension before it (``freecp segment`` names the mask of ``a.jpg`` ``a.jpg.png``)."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in LABEL_SUFFIXES or path.name.startswith(TEMP_PREFIX) or not path.is_file():
            continue
        key = path.relative_to(root).with_suffix("")
        if image_named and key.suffix.lower() in IMAGE_SUFFIXES:
            key = key.with_suffix("")
        key = key.as_posix()
        if key in index:
            raise EvaluationError(f"{index[key]} and {path} are both label maps for {key!r}")
        index[key] = path
    return index


def _read_labels(path: Path) -> np.ndarray:
    try:
        return read_label_map(path)
    except ImageReadError as err:
        raise EvaluationError(f"{path}: {err}") from None


def _existing_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"{what} {path} does not exist or is not a directory")
    return path


def _check_range(values: np.ndarray, num_classes: int, what: str) -> None:
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)]
        raise EvaluationError(
            f"{what} holds label {int(bad[0])}, outside 0..{num_classes - 1} and not the ignore index"
        )


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def _size(labels: np.ndarray) -> str:
    return "x".join(str(d) for d in labels.shape[::-1]) if labels.ndim == 2 else str(labels.shape)
