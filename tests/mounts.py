"""Real small or read-only disks for the tests (tmpfs mounts; they need root or CAP_SYS_ADMIN)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str, read_only: bool = False) -> None:
    """Mount a tmpfs of ``size`` at ``path`` (made here), or skip the test where this machine cannot."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} to fill a real disk ({proc.stderr.strip()}); "
                    f"needs root or CAP_SYS_ADMIN")


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True)
