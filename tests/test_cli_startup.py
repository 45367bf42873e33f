"""The command line answers before loading the library: help, version, option typos, help texts.

Each check runs the real ``freecp`` app in a fresh interpreter and reads which modules that
process imported (not how long it took: timing on a shared CI machine proves nothing).
"""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
import typer
from rich.text import Text

from freecp import __version__
from freecp.cli import app

HEAVY = ("torch", "open_clip", "pyarrow", "prefect", "transformers", "openai", "scipy", "huggingface_hub")
PROBE = """
import sys
from freecp.cli import app
try:
    app(sys.argv[1:], prog_name="freecp")
    code = 0
except SystemExit as stop:
    code = stop.code
print("IMPORTED:" + ",".join(m for m in {heavy!r} if m in sys.modules))
sys.exit(code)
"""


def _run(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, output, and the heavy modules the process had imported when it finished."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
                          capture_output=True, text=True, timeout=120)
    text = done.stdout + done.stderr
    marker = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED:")]
    assert marker, text
    return done.returncode, text, [m for m in marker[-1].removeprefix("IMPORTED:").split(",") if m]


@pytest.mark.parametrize("args", [
    ("--help",),
    ("--version",),
    ("segment", "--help"),
    ("segment", "photos", "--vocab", "voc21", "--out", "o", "--no-such-option"),
    ("describe", "voc21", "--per-clas", "3"),
    ("encode", "voc21", "--stor", "s"),
    ("store", "ls", "--bogus"),
    ("eval", "a", "b", "--num-classes", "x"),
])
def test_help_version_and_option_errors_load_no_heavy_library(args):
    code, text, imported = _run(*args)
    assert imported == [], f"{args} imported {imported}"
    if args[-1] in ("--help", "--version"):
        assert code == 0, text
    else:
        assert code == 2 and ("No such option" in text or "Invalid value" in text), text


def test_version_prints_the_package_version():
    code, text, _ = _run("--version")
    assert code == 0 and f"freecp {__version__}" in text


def _options(command: click.Command) -> list[click.Parameter]:
    found = list(command.params)
    for sub in getattr(command, "commands", {}).values():
        found += _options(sub)
    return found


def test_every_help_text_renders_whole_through_rich_markup():
    """Rich markup takes ``[word]`` for a style and drops it; a help text must show every character."""
    params = _options(typer.main.get_command(app))
    assert len(params) > 40
    for param in params:
        help_text = getattr(param, "help", None) or ""
        assert Text.from_markup(help_text).plain == help_text.replace("\\[", "["), param.name
