"""Claims: several runs (or hosts) serving one output folder share its images instead of each doing all.

Before segmenting an image a run creates its claim file exclusively (a hard link to a file
holding its owner: the filesystem lets exactly one run win); the others pass the image by. The claim names its owner
(host and process id) and is removed once the image's record is written. A claim whose owner is
gone is stale and is taken over: on the same host when that process no longer runs, from
another host after ``STALE_SECONDS``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from freecp.files import temp_name

STALE_SECONDS = 3600.0  # a claim from another host older than this is taken over
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}  # what link() says where it cannot


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Yield True when this process now holds the claim at ``path`` (and release it after), else False."""
    path = Path(path)
    owned = _try_create(path) or (_is_stale(path) and _take_over(path))
    try:
        yield owned
    finally:
        if owned:
            path.unlink(missing_ok=True)


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _try_create(path: Path) -> bool:
    """Create the claim with its owner already in it: the owner is written to a temporary file
    that is then hard-linked to the claim's name (exclusive, like ``O_EXCL``). A claim is never
    seen empty, so a contender cannot mistake one being written for a dead writer's and take it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = json.dumps(_owner())
    temp = path.with_name(temp_name())
    try:
        temp.write_text(owner)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            return _create_then_write(path, owner)
    finally:
        temp.unlink(missing_ok=True)
    return True


def _create_then_write(path: Path, owner: str) -> bool:
    """``O_EXCL`` creation where hard links do not exist (the claim is briefly empty there)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(owner)
    return True


def _is_stale(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text())
        host, pid, since = owner["host"], int(owner["pid"]), float(owner["since"])
    except FileNotFoundError:
        return True  # released meanwhile
    except (OSError, ValueError, KeyError, TypeError):
        return True  # unreadable: its writer died between create and write
    if host == socket.gethostname():
        return not _running(pid)
    return time.time() - since > STALE_SECONDS


def _take_over(path: Path) -> bool:
    """Remove a stale claim and race for a new one (only one contender wins the create)."""
    path.unlink(missing_ok=True)
    return _try_create(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
