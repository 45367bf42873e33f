"""``freecp`` command lines run in one fresh interpreter, for checks that must see whether torch
was imported (a problem found before heavy work leaves it unimported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = (
    "import json, sys\n"
    "from typer.testing import CliRunner\n"
    "from freecp.cli import app\n"
    "out = []\n"
    "for args in json.loads(sys.argv[1]):\n"
    "    r = CliRunner().invoke(app, args)\n"
    "    out.append([r.exit_code, r.output, 'torch' in sys.modules])\n"
    "print(json.dumps(out))\n"
)


def in_one_interpreter(cases: list[list[str]], env: dict[str, str]) -> list[tuple[int, str, bool]]:
    """Each command line's exit code, output, and whether torch had been imported by its end."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(cases)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return [tuple(result) for result in json.loads(proc.stdout)]
