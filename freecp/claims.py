"""Claims: several runs (or hosts, or containers) serving one output folder share its images
instead of each doing all.

Before segmenting an image a run creates its claim file exclusively (a hard link to a file
holding its owner: the filesystem lets exactly one run win); the others pass the image by. The
claim is removed once the image's record is written.

Who owns a claim is said by something unique to one start of one process: a random token, with
the machine's boot id, the pid namespace, the pid and that process's start time. Host name and
pid alone are not enough: in containers every start is often pid 1 on the same host name.

While a run holds claims a heartbeat thread refreshes their modification time every
``HEARTBEAT_SECONDS``. A claim is stale, and taken over, when

- its owner runs in this very pid namespace of this boot and that process (pid and start time)
  no longer exists: at once;
- otherwise (another host, another container, an older claim format) when its heartbeat is
  older than ``STALE_SECONDS``, from any host. Hosts sharing a folder need clocks that agree to
  well within that limit.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from freecp.files import temp_name

HEARTBEAT_SECONDS = 10.0  # a held claim's modification time is refreshed this often
STALE_SECONDS = 60.0  # a claim whose heartbeat is older than this is taken over, from any host
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}  # what link() says where it cannot


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Yield True when this process now holds the claim at ``path`` (kept alive by the heartbeat
    and released after), else False."""
    path = Path(path)
    owned = _try_create(path) or (_is_stale(path) and _take_over(path))
    if owned:
        _HEARTBEAT.hold(path)
    try:
        yield owned
    finally:
        if owned:
            _HEARTBEAT.drop(path)
            if _token_of(path) == owner()["token"]:  # not taken over meanwhile by a run that thought us dead
                path.unlink(missing_ok=True)


def owner() -> dict:
    """This process's identity as a claim holds it (one per process start: a fork gets its own)."""
    return _identity(os.getpid())


@lru_cache(maxsize=4)
def _identity(pid: int) -> dict:
    return {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": pid, "boot": _boot_id(),
            "pidns": _pid_namespace(), "start": _start_time(pid), "since": time.time()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the name before ")" may hold spaces


def _try_create(path: Path) -> bool:
    """Create the claim with its owner already in it: the owner is written to a temporary file
    that is then hard-linked to the claim's name (exclusive, like ``O_EXCL``). A claim is never
    seen empty, so a contender cannot mistake one being written for a dead writer's and take it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(owner())
    temp = path.with_name(temp_name())
    try:
        temp.write_text(text)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            return _create_then_write(path, text)
    finally:
        temp.unlink(missing_ok=True)
    return True


def _create_then_write(path: Path, text: str) -> bool:
    """``O_EXCL`` creation where hard links do not exist (the claim is briefly empty there)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def _read_owner(path: Path) -> dict | None:
    """The owner a claim names; None when it names none readable (empty, garbage, older format)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _token_of(path: Path) -> str | None:
    return (_read_owner(path) or {}).get("token")


def _is_stale(path: Path) -> bool:
    try:
        beat = path.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile
    found = _read_owner(path) or {}
    mine = owner()
    if mine["boot"] and mine["pidns"] and found.get("boot") == mine["boot"] and found.get("pidns") == mine["pidns"]:
        try:
            return _start_time(int(found.get("pid", 0))) != found.get("start")  # that process start is gone
        except (TypeError, ValueError):
            return True  # names no process of this namespace
    return time.time() - beat > STALE_SECONDS


def _take_over(path: Path) -> bool:
    """Move a stale claim aside and race for a new one (only one contender wins the create).

    The claim is renamed before it is removed, so two contenders that both judged it stale
    cannot both win: should the file moved aside be a fresh claim made meanwhile, it is put back."""
    stale = _token_of(path)
    aside = path.with_name(temp_name())
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return _try_create(path)  # released meanwhile
    try:
        if _token_of(aside) != stale:  # a contender already took it over: that claim is live
            try:
                os.link(aside, path)
            except OSError:
                pass  # taken again meanwhile; the newest claim stands
            return False
    finally:
        aside.unlink(missing_ok=True)
    return _try_create(path)


class _Heartbeat:
    """Refreshes the modification time of every claim this process holds, from one daemon thread."""

    def __init__(self) -> None:
        self._held: set[Path] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, path: Path) -> None:
        with self._lock:
            self._held.add(path)
            if self._thread is None or not self._thread.is_alive():  # none yet, or lost in a fork
                self._thread = threading.Thread(target=self._beat, name="freecp-claims", daemon=True)
                self._thread.start()

    def drop(self, path: Path) -> None:
        with self._lock:
            self._held.discard(path)

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                held = list(self._held)
            for path in held:
                try:
                    os.utime(path)
                except OSError:
                    pass  # released meanwhile, or taken over: nothing to keep alive


_HEARTBEAT = _Heartbeat()
