"""One benchmark end to end: its official validation split, segmented and scored beside the paper.

The split is found as mmsegmentation finds it (``evaluate.validation_keys``), the images go
through the segment pipeline (``pipeline.segment_folder``: per-image records, up-to-date images
skipped, so a killed run resumes), and the masks are scored as mmsegmentation scores them
(``evaluate.evaluate_dataset``). The report names everything that makes the run not comparable
with the published row: random weights above all, then model, weights, protocol, settings that
differ from the preset, and images not scored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from freecp.evaluate import (
    DatasetLayout,
    check_annotations,
    dataset_layout,
    evaluate_dataset,
    rounded_for_json,
    validation_keys,
)
from freecp.pipeline import RunSummary, segment_folder
from freecp.progress import ProgressCallback
from freecp.published import (
    BENCHMARK_ORDER,
    COLUMN_TITLES,
    PUBLISHED,
    PUBLISHED_MODELS,
    PUBLISHED_SETUP,
    published_row,
)
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings, settings_for
from freecp.files import atomic_write
from freecp.weights import Weights

REPORT_JSON = "benchmark.json"
REPORT_MARKDOWN = "benchmark.md"
ABLATION_MARKDOWN = "ablation.md"
ABLATION_COLUMNS = ("AP texts", "PAMR", "mIoU", "mAcc", "aAcc", "s / image", "images scored")
RANDOM_WEIGHTS_WARNING = ("RANDOM CLIP WEIGHTS (--pretrained none): these numbers are meaningless; they only "
                          "show that the pipeline runs. The published numbers need OpenAI's ViT-B/16 weights.")


class BenchmarkError(ValueError):
    """A dataset root that does not hold the split it should; the message names what is missing."""


@dataclass(frozen=True)
class Split:
    """The images of a benchmark's validation split that one run segments."""

    layout: DatasetLayout
    data_root: Path
    keys: list[str]        # the keys this run segments and scores, in split order
    total: int             # images in the whole split

    @property
    def images_root(self) -> Path:
        return self.data_root / self.layout.image_dir

    @property
    def images(self) -> list[Path]:
        return [self.images_root / (key + self.layout.image_suffix) for key in self.keys]

    @property
    def source(self) -> str:
        """Where the split comes from, for the report."""
        return self.layout.split or f"every *{self.layout.image_suffix} in {self.layout.image_dir}"


def find_split(data_root: Path, dataset: str, limit: int | None = None) -> Split:
    """The split of ``dataset`` under ``data_root`` (its first ``limit`` images if given); every
    image and annotation must exist, so a wrong root fails here and not after segmenting."""
    layout = dataset_layout(dataset)
    data_root = Path(data_root)
    keys = validation_keys(data_root, layout)
    if limit is not None and limit < 1:
        raise BenchmarkError(f"--limit must be at least 1, not {limit}")
    chosen = keys[:limit] if limit else keys
    split = Split(layout, data_root, chosen, len(keys))
    absent = [path for path in split.images if not path.is_file()]
    if absent:
        raise BenchmarkError(f"{len(absent)} of {len(chosen)} images of the split ({split.source}) are missing, "
                             f"e.g. {absent[0]}")
    check_annotations(data_root, layout, chosen)
    return split


def run_benchmark(segmenter: Segmenter, split: Split, out_dir: Path, weights: Weights,
                  on_progress: ProgressCallback | None = None) -> tuple[dict, RunSummary]:
    """Segment the split into ``out_dir``, score it, and write ``benchmark.json`` and ``benchmark.md``."""
    out_dir = Path(out_dir)
    summary = segment_folder(segmenter, split.images_root, out_dir, on_progress, files=split.images)
    metrics = evaluate_dataset(out_dir, split.data_root, split.layout.name, allow_missing=True, keys=split.keys)
    report = build_report(split, summary, metrics, segmenter, weights)
    atomic_write(out_dir / REPORT_JSON, json.dumps(rounded_for_json(report), indent=2, ensure_ascii=False).encode())
    atomic_write(out_dir / REPORT_MARKDOWN, render_markdown(report).encode())
    return report, summary


def build_report(split: Split, summary: RunSummary, metrics: dict, segmenter: Segmenter, weights: Weights) -> dict:
    """Everything ``benchmark.json`` holds: the run, its metrics, the published row and the caveats."""
    settings = segmenter.settings
    row = published_row(settings.variant, settings.purify)
    done = [r for r in summary.records if r.status == "done"]
    preset = settings_for(split.layout.name, variant=settings.variant, protocol=settings.protocol,
                          purify=settings.purify).output_fields()
    changed = {k: {"preset": preset[k], "run": v} for k, v in settings.output_fields().items() if v != preset[k]}
    return {
        "dataset": split.layout.name,
        "data_root": str(split.data_root),
        "split": split.source,
        "images_in_split": split.total,
        "images_segmented": len(split.keys),
        "images_scored": metrics["images"],
        "segmentation": {
            "done": summary.count("done"), "skipped": summary.count("skipped"), "failed": summary.count("failed"),
            "failed_images": [r.path for r in summary.failed],
            "seconds": summary.seconds,
            "seconds_per_image_done": sum(r.seconds for r in done) / len(done) if done else None,
        },
        "model": segmenter.backbone.model_key,
        "weights": weights.describe(),
        "random_weights": weights.random,
        "settings": settings.to_dict(),
        "differs_from_preset": changed,
        "method": row.method if row else None,
        "published": {
            "setup": PUBLISHED_SETUP,
            "method": row.method if row else None,
            "mIoU": row.miou[split.layout.name] if row else None,
            "all_methods": {r.method: r.miou[split.layout.name] for r in PUBLISHED},
        },
        "ap_targets": segmenter.ap_targets,
        "caveats": _caveats(split, metrics, segmenter, row is not None, changed, weights),
        "metrics": metrics,
    }


def _caveats(split: Split, metrics: dict, segmenter: Segmenter, has_row: bool, changed: dict,
             weights: Weights) -> list[str]:
    """Why this run's numbers may not be comparable with the published row, most serious first."""
    settings = segmenter.settings
    notes = [RANDOM_WEIGHTS_WARNING] if weights.random else []
    if weights.model not in PUBLISHED_MODELS:
        notes.append(f"model {weights.model} is not the published {PUBLISHED_SETUP}")
    if weights.checkpoint:
        notes.append("weights from a checkpoint file: comparable only if it holds OpenAI's ViT-B/16 weights")
    elif not weights.random and weights.pretrained != "openai":
        notes.append(f"weights {weights.pretrained!r} are not OpenAI's")
    if not has_row:
        notes.append("no published row for this backbone and purification setting")
    if settings.purify and settings.protocol != "freecp":
        notes.append(f"protocol {settings.protocol!r}: the published FreeCP rows use the freecp protocol")
    if has_row and not settings.purify:
        notes.append("the published row without FreeCP is the method's own pipeline; the paper's ablation "
                     "scores freecp's --no-purify baseline a little higher (59.8 against 59.1 on VOC21)")
    if settings.purify and settings.ambiguity and segmenter.fallback_classes:
        notes.append(f"ambiguity purification compared crops with class names for {len(segmenter.fallback_classes)} "
                     "classes that have no description embeddings in the store; the paper used Vicuna-13B "
                     "descriptions (freecp describe, then freecp encode --descriptions)")
    if changed:
        notes.append("settings differ from the preset: " + ", ".join(
            f"{k} {v['run']} (preset {v['preset']})" for k, v in changed.items()))
    if metrics["images"] < split.total:
        notes.append(f"partial: {metrics['images']} of the split's {split.total} images scored")
    return notes


def ablation_runs(settings: SegmentSettings, ap_texts: Sequence[str] = (),
                  both_pamr: bool = False) -> list[tuple[str, SegmentSettings]]:
    """(output subfolder, settings) of each run of an ablation: every AP text control asked for
    (else the settings' own), each with and without PAMR when ``both_pamr`` (else as set)."""
    controls = list(dict.fromkeys(ap_texts)) or [settings.ap_texts]
    pamr = (False, True) if both_pamr else (settings.pamr,)
    return [(f"ap-{control}_pamr-{'on' if on else 'off'}", settings.replace(ap_texts=control, pamr=on))
            for control in controls for on in pamr]


def ablation_rows(reports: Sequence[dict]) -> list[list[str]]:
    """One row per run of an ablation, in ``ABLATION_COLUMNS`` order."""
    rows = []
    for report in reports:
        metrics, settings, seconds = report["metrics"], report["settings"], report["segmentation"]
        per_image = seconds["seconds_per_image_done"]
        rows.append([settings["ap_texts"], "on" if settings["pamr"] else "off",
                     *(_number(metrics[k]) for k in ("mIoU", "mAcc", "aAcc")),
                     "" if per_image is None else f"{per_image:.2f}",
                     f"{report['images_scored']} of {report['images_in_split']}"])
    return rows


def write_ablation(out_dir: Path, reports: Sequence[dict]) -> Path:
    """Write ``ablation.md`` into ``out_dir`` (atomic); its path."""
    target = Path(out_dir) / ABLATION_MARKDOWN
    atomic_write(target, render_ablation(reports).encode())
    return target


def render_ablation(reports: Sequence[dict]) -> str:
    """``ablation.md``: the runs of one ablation as rows of one table (markdown)."""
    first = reports[0]
    lines = [f"# freecp ablation: {first['dataset']}, {first['model']}, {first['weights']}", ""]
    if first["random_weights"]:
        lines += [f"> **{RANDOM_WEIGHTS_WARNING}**", ""]
    lines += ["| " + " | ".join(ABLATION_COLUMNS) + " |", "|---" * len(ABLATION_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in ablation_rows(reports)]
    return "\n".join(lines) + "\n"


def render_markdown(report: dict) -> str:
    """``benchmark.md``: caveats, this run beside the published numbers, then every class."""
    metrics, published = report["metrics"], report["published"]
    lines = [f"# freecp benchmark: {report['dataset']}", ""]
    if report["random_weights"]:
        lines += [f"> **{RANDOM_WEIGHTS_WARNING}**", ""]
    lines += [
        f"- data: `{report['data_root']}`, split: {report['split']} "
        f"({report['images_scored']} of {report['images_in_split']} images scored)",
        f"- model: `{report['model']}`, weights: {report['weights']}",
        f"- backbone {report['settings']['variant']}, protocol {report['settings']['protocol']}, "
        f"purification {'on' if report['settings']['purify'] else 'off'}; method: {report['method'] or 'none published'}",
        "",
        "| | mIoU | mAcc | aAcc |",
        "|---|---|---|---|",
        f"| this run | {_number(metrics['mIoU'])} | {_number(metrics['mAcc'])} | {_number(metrics['aAcc'])} |",
    ]
    for method, miou in published["all_methods"].items():
        mark = " (same method)" if method == published["method"] else ""
        lines.append(f"| published: {method}{mark}, {published['setup']} | {miou} | | |")
    if report["caveats"]:
        lines += ["", "Not comparable with the published row as it stands:", ""]
        lines += [f"- {note}" for note in report["caveats"]]
    lines += ["", "## Per class", "", "| # | class | IoU | Acc | pixels |", "|---|---|---|---|---|"]
    lines += [f"| {c['index']} | {c['name']} | {_number(c['IoU'])} | {_number(c['Acc'])} | {c['pixels']} |"
              for c in metrics["per_class"]]
    return "\n".join(lines) + "\n"


def find_reports(paths: Sequence[Path]) -> list[dict]:
    """The ``benchmark.json`` of each run folder given, or of the run folders right below a folder."""
    files = []
    for path in map(Path, paths):
        if (path / REPORT_JSON).is_file():
            files.append(path / REPORT_JSON)
        elif path.is_dir():
            files += sorted(path.glob(f"*/{REPORT_JSON}"))
    if not files:
        raise BenchmarkError(f"no {REPORT_JSON} in {', '.join(map(str, paths))} or the folders right below")
    return [{**json.loads(f.read_text(encoding="utf-8")), "file": str(f)} for f in files]


def render_table(reports: Sequence[dict]) -> str:
    """The paper's table in markdown: a row per method and weights the runs used, then the published
    rows. A partial run's number is starred; the average is given only when all eight are there."""
    rows: dict[str, dict[str, dict]] = {}
    for report in reports:
        label = f"{report['method'] or 'no published method'}, {report['weights']}"
        if report["random_weights"]:
            label += " (RANDOM WEIGHTS: meaningless)"
        cells = rows.setdefault(label, {})
        if report["dataset"] in cells:
            raise BenchmarkError(f"two {report['dataset']} runs for {label}: {cells[report['dataset']]['file']} "
                                 f"and {report['file']}")
        cells[report["dataset"]] = report
    titles = [COLUMN_TITLES[name] for name in BENCHMARK_ORDER]
    lines = ["| method | " + " | ".join(titles) + " | Avg |", "|---" * (len(titles) + 2) + "|"]
    for label, cells in rows.items():
        values = [_run_cell(cells.get(name)) for name in BENCHMARK_ORDER]
        complete = all(name in cells and _is_whole(cells[name]) and cells[name]['metrics']['mIoU'] is not None
                       for name in BENCHMARK_ORDER)
        average = f"{sum(cells[n]['metrics']['mIoU'] for n in BENCHMARK_ORDER) / len(BENCHMARK_ORDER):.1f}" \
            if complete else ""
        lines.append(f"| this run: {label} | " + " | ".join(values) + f" | {average} |")
    for row in PUBLISHED:
        lines.append(f"| published: {row.method} ({PUBLISHED_SETUP}) | "
                     + " | ".join(str(row.miou[name]) for name in BENCHMARK_ORDER) + f" | {row.average} |")
    if any(not _is_whole(r) for r in reports):
        lines += ["", "\\* partial: not every image of the split was scored"]
    return "\n".join(lines) + "\n"


def _run_cell(report: dict | None) -> str:
    if report is None:
        return ""
    return f"{_number(report['metrics']['mIoU'])}{'' if _is_whole(report) else '*'}"


def _is_whole(report: dict) -> bool:
    return report["images_scored"] == report["images_in_split"]


def _number(value: float | None) -> str:
    """Two decimals; n/a for a class with nothing to score (NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"
