"""Nothing outside the output folder is read, written, moved or deleted on the word of a file in it
(issue 19, case 1). Output folders are shared: their records are input, not trusted data.

Real files and symlinks; the layout checks run before torch, so most cases need no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from freecp.cli import app
from freecp.layout import LAYOUT_FILE, OUTPUT_DIRS, prepare_output

PRECIOUS = b"not freecp's to touch"


def _precious(tmp_path: Path) -> Path:
    path = tmp_path / "precious.txt"
    path.write_bytes(PRECIOUS)
    return path


def _old_record(out: Path, image: str, mask: str, overlay: str = "") -> Path:
    """A record of an output folder from before the naming marker (layout 1)."""
    path = out / ".records" / f"{image}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"path": image, "status": "done", "mask": mask, "overlay": overlay}))
    return path


def _crafted(tmp_path: Path, precious: Path) -> dict[str, str]:
    """The ways a record can name a file outside ``out``: relative, absolute, ``..`` segments, a symlink."""
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "link.png").symlink_to(precious)
    return {"relative": "../precious.txt", "absolute": str(precious),
            "dotdot": "masks/sub/../../../precious.txt", "symlink": "masks/link.png"}


@pytest.mark.parametrize("how", ["relative", "absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("collided", [False, True])
def test_migration_never_deletes_or_moves_a_file_outside_out(tmp_path, how, collided):
    """One record naming an outside mask would have it moved into masks/; two (a collision) would
    have it deleted. Either way the outside file stays, and the records are dropped (redone)."""
    precious = _precious(tmp_path)
    mask = _crafted(tmp_path, precious)[how]
    out = tmp_path / "out"
    records = [_old_record(out, "a.jpg", mask, overlay=mask)]
    if collided:
        records.append(_old_record(out, "a.png", mask, overlay=mask))
    prepare_output(out)
    assert precious.read_bytes() == PRECIOUS
    assert not any(p.exists() for p in records)
    assert not list((out / "masks").rglob("*.jpg.png"))


def test_migration_refuses_a_record_that_is_a_symlink_to_outside(tmp_path):
    precious = _precious(tmp_path)
    outside_record = tmp_path / "elsewhere.json"
    outside_record.write_text(json.dumps({"path": "a.jpg", "status": "done", "mask": "masks/a.png"}))
    out = tmp_path / "out"
    (out / ".records").mkdir(parents=True)
    (out / ".records" / "a.jpg.json").symlink_to(outside_record)
    (out / "masks").mkdir()
    (out / "masks" / "a.png").symlink_to(precious)
    prepare_output(out)
    assert precious.read_bytes() == PRECIOUS and json.loads(outside_record.read_text())["mask"] == "masks/a.png"
    assert not (out / ".records" / "a.jpg.json").exists()


@pytest.mark.parametrize("folder", OUTPUT_DIRS)
def test_symlinked_output_folders_are_refused_with_one_line(tmp_path, folder):
    """``o/masks`` (or overlays, .records, .claims) leading elsewhere: one line, exit 2, nothing written there."""
    elsewhere, out, images = tmp_path / "elsewhere", tmp_path / "out", tmp_path / "images"
    elsewhere.mkdir()
    out.mkdir()
    (out / folder).symlink_to(elsewhere, target_is_directory=True)
    images.mkdir()
    Image.new("RGB", (16, 16)).save(images / "x.png")
    result = CliRunner().invoke(app, ["segment", str(images), "--vocab", "voc20", "--out", str(out),
                                      "--model", "freecp-tiny", "--pretrained", "none"])
    assert result.exit_code == 2, result.output
    assert "is a symlink" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not list(elsewhere.iterdir())


def test_the_layout_marker_leading_outside_is_refused(tmp_path):
    precious = _precious(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / LAYOUT_FILE).symlink_to(precious)
    with pytest.raises(ValueError, match="outside"):
        prepare_output(out)
    assert precious.read_bytes() == PRECIOUS


def test_outputs_are_contained_in_out_not_only_in_their_folder(tmp_path):
    """A symlink inside masks/ leading out is refused; the check is against --out itself."""
    from freecp.files import OutsideRootError
    from freecp.layout import output_paths

    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "masks").mkdir(parents=True)
    outside.mkdir()
    (out / "masks" / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideRootError):
        output_paths(out, "sub/x.jpg")
    assert output_paths(out, "ok/x.jpg").mask == out / "masks" / "ok" / "x.jpg.png"


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../x", "a/../b/../../x"])
def test_contained_refuses_every_way_out(tmp_path, relative):
    from freecp.files import OutsideRootError, contained

    with pytest.raises(OutsideRootError):
        contained(tmp_path / "root", relative)


def test_index_ignores_records_that_lead_outside(tmp_path):
    """A record file that is a symlink to a JSON elsewhere is not read into the index."""
    from freecp.records import write_index
    import pandas as pd

    out = tmp_path / "out"
    (out / ".records").mkdir(parents=True)
    elsewhere = tmp_path / "secret.json"
    elsewhere.write_text(json.dumps({"path": "secret", "status": "done"}))
    (out / ".records" / "x.png.json").symlink_to(elsewhere)
    (out / ".records" / "y.png.json").write_text(json.dumps({"path": "y.png", "status": "done"}))
    assert list(pd.read_parquet(write_index(out))["path"]) == ["y.png"]
