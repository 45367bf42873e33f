"""Every failure of the output folder or the store is one line with the same exit status across
commands, found before heavy work; SIGTERM ends a command as Ctrl-C does (issue 19, cases 3-4).

Real stores: the moto S3 server on 127.0.0.1 (tests/fixtures_s3.py) and real tmpfs mounts for a
read-only folder and a full disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from freecp.cli import app
from tests.fixtures_s3 import aws_env
from tests.cli_runs import in_one_interpreter
from tests.mounts import tmpfs

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "freecp-tiny", "--pretrained", "none"]
DISK_FULL, STORAGE, TERMINATED = 3, 4, 143  # the README's exit-status table (freecp.commands.exits)


def _images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16)).save(images / "x.png")
    return images


def test_an_unusable_store_is_one_line_and_exit_4_in_every_command(tmp_path, s3_endpoint, s3_bucket):
    images, vocab = _images(tmp_path), tmp_path / "v.txt"
    vocab.write_text("cat\ndog\n")
    missing = "s3://no-such-bucket-freecp/store"
    cases = [
        (["segment", str(images), "--vocab", str(vocab), "--out", str(tmp_path / "o"), "--store", missing, *TINY],
         "does not exist"),
        (["encode", str(vocab), "--store", missing, *TINY], "does not exist"),
        (["store", "check", missing], "does not exist"),
        (["store", "ls", missing], "does not exist"),
        (["store", "inspect", missing, str(vocab)], "does not exist"),
        (["describe", "--show", "cat", "--cache", missing], "does not exist"),
        (["store", "check", str(tmp_path / "no-store")], "no store there"),
        (["store", "ls", str(tmp_path / "no-store")], "no store there"),
        (["store", "ls", f"{s3_bucket}/no-prefix"], "no store there"),
        (["encode", str(vocab), "--store", "ftp://host/x", *TINY], "unsupported store URL"),
    ]
    results = in_one_interpreter([args for args, _ in cases], aws_env(s3_endpoint))
    for (args, expected), (code, output, torch_loaded) in zip(cases, results, strict=True):
        assert code == STORAGE and expected in output, (args, code, output)
        assert "Traceback" not in output and len(output.strip().splitlines()) == 1, (args, output)
        assert not torch_loaded, args
    assert not (tmp_path / "no-store").exists()  # a reader does not make the root it was asked about


def test_refused_credentials_are_one_line_and_exit_4_in_every_command(tmp_path, s3_endpoint_checking_credentials):
    images, vocab = _images(tmp_path), tmp_path / "v.txt"
    vocab.write_text("cat\ndog\n")
    url = "s3://team-bucket/store"
    cases = [["segment", str(images), "--vocab", str(vocab), "--out", str(tmp_path / "o"), "--store", url, *TINY],
             ["encode", str(vocab), "--store", url, *TINY], ["store", "check", url], ["store", "ls", url],
             ["describe", "--show", "cat", "--cache", url]]
    env = {**aws_env(s3_endpoint_checking_credentials), "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong"}
    for args, (code, output, torch_loaded) in zip(cases, in_one_interpreter(cases, env), strict=True):
        assert code == STORAGE and "ACCESS_DENIED" in output, (args, code, output)
        assert "Traceback" not in output and len(output.strip().splitlines()) == 1, (args, output)
        assert "wrong" not in output and not torch_loaded, args  # no credentials in the message


def _segment_into(tmp_path: Path, out: Path):
    return CliRunner().invoke(app, ["segment", str(_images(tmp_path)), "--vocab", "voc20", "--out", str(out), *TINY])


def test_a_read_only_output_folder_is_one_line_and_exit_4(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        result = _segment_into(tmp_path, disk)
    assert result.exit_code == STORAGE, result.output
    assert "cannot write to --out" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_disk_full_before_the_run_is_one_line_and_exit_3(tmp_path):
    with tmpfs(tmp_path / "full", "256k") as disk:
        (disk / "out").mkdir()
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass  # ENOSPC: the disk is full now
        finally:
            os.close(filler)
        result = _segment_into(tmp_path, disk / "out")
    assert result.exit_code == DISK_FULL, result.output
    assert "disk is full" in result.output and len(result.output.strip().splitlines()) == 1


def test_sigterm_ends_encode_in_one_line_with_143(tmp_path):
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "freecp", "encode", "voc21", "--store", str(store), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not store.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == TERMINATED, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr


def test_control_characters_in_names_are_escaped_when_printed(tmp_path):
    """NUL, a bidi override and ESC in class names and an ESC sequence in a file name reach the
    terminal as escapes, never raw (a name could otherwise clear the screen or reorder text)."""
    images = _images(tmp_path)
    (images / "bad\x1b[2Jname.png").write_bytes(b"")  # an empty file: its failure line names it
    vocab = tmp_path / "v.txt"
    vocab.write_text("ca\u202et\ndo\x00g\nsky\x1b[31m\n", encoding="utf-8")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["segment", str(images), "--vocab", str(vocab), "--out", str(tmp_path / "o"),
                                      "--store", str(store), *TINY], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output  # the empty file failed
    assert not any(c in result.output for c in "\x1b\x00\u202e"), repr(result.output)
    assert "bad\\x1b[2Jname.png" in result.output and "classes found most often" in result.output
    assert "\\u202e" in result.output or "\\x00" in result.output or "\\x1b[31m" in result.output


def test_temporary_files_a_killed_run_left_are_removed_by_the_next(tmp_path):
    from freecp.layout import prepare_output

    out = tmp_path / "out"
    old = time.time() - 3600  # an hour: well past the minute a temporary file is given
    stale = [out / ".tmp-0123456789ab", out / "masks" / "sub" / ".tmp-aaaaaaaaaaaa",
             out / "overlays" / ".tmp-bbbbbbbbbbbb", out / ".records" / ".tmp-cccccccccccc",
             out / ".claims" / ".tmp-dddddddddddd"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, (old, old))
    fresh = out / "masks" / ".tmp-eeeeeeeeeeee"  # a run writing beside this one right now
    fresh.write_bytes(b"being written")
    kept = out / "masks" / "sub" / "a.png.png"
    kept.write_bytes(b"mask")
    os.utime(kept, (old, old))
    prepare_output(out)
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and kept.exists()


def test_folder_symlinks_inside_images_are_not_walked_and_outside_ones_are_listed(tmp_path):
    """As the README says: a folder link within IMAGES adds no second copy of its images; one
    leading out is listed, not followed; ``--follow-symlinks`` walks it, each real folder once."""
    from freecp.inputs import find_images

    images, outside = tmp_path / "images", tmp_path / "outside"
    for folder in (images / "2024", outside):
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "a.png")
    (images / "latest").symlink_to(images / "2024", target_is_directory=True)
    (images / "elsewhere").symlink_to(outside, target_is_directory=True)
    plain = find_images(images)
    assert plain.images == [images / "2024" / "a.png"] and plain.outside_links == [images / "elsewhere"]
    followed = find_images(images, follow_symlinks=True)
    assert sorted(p.resolve() for p in followed.images) == [images / "2024" / "a.png", outside / "a.png"]


def test_describe_after_import_json_asks_nothing_for_the_reviewed_class(tmp_path):
    """The LLM URL points at a port nobody listens on: were a request sent for the imported
    class, the command would fail with "cannot reach the LLM server"."""
    from freecp.describe.serve import free_port

    reviewed, vocab, cache = tmp_path / "reviewed.json", tmp_path / "v.txt", str(tmp_path / "cache")
    reviewed.write_text(json.dumps({"cat": ["a small furry pet", "an animal with whiskers"]}))
    vocab.write_text("cat\n")
    runner = CliRunner()
    imported = runner.invoke(app, ["describe", "--import-json", str(reviewed), "--cache", cache])
    assert imported.exit_code == 0, imported.output
    result = runner.invoke(app, ["describe", str(vocab), "--cache", cache, "--per-class", "2",
                                 "--llm-url", f"http://127.0.0.1:{free_port()}/v1", "--llm-model", "any"])
    assert result.exit_code == 0, result.output
    assert "classes done: 1/1" in result.output and "requests sent: 0" in result.output
    assert "fewer than" not in result.output  # not reported short
