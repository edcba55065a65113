# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filesystem helpers for durable changes: atomic JSON writes, directory fsync, tree removal and ownership, temporary
directories flocked while in use.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
from collections.abc import Callable
from typing import Any

from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError

TMP_PREFIX = ".tmp-"

# Fault injection for the crash-safety tests (tests/unit/test_release_crash.py, tests/stress/): when this variable
# names a crash point ("prepare:renamed", or "name#N" for its N-th passage), the process SIGKILLs itself there.
# Nothing sets it outside those tests; an unset variable costs one dictionary lookup per durable step.
CRASH_ENV = "_UNISTRA_ITOP_TEST_CRASH_AT"
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here, as a kill -9 would, if the test harness asked for it (see CRASH_ENV)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _sep, nth = wanted.partition("#")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def sync_filesystem(path: str) -> None:
    """Flush the file system holding ``path`` (syncfs(2) on Linux, sync(2) elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: Any, mode: int = 0o644) -> None:
    """Write JSON to ``path`` so that readers see the old or the new content, never a mix (tmp + fsync + rename)."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("write_json:before_rename")
        os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(directory)


def rmtree(path: str) -> None:
    def retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        # A read-only directory from an archive: make it writable and try once more.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    shutil.rmtree(path, onerror=retry)


def chown_tree(path: str, uid: int, gid: int) -> None:
    if uid == -1 and gid == -1:
        return
    os.lchown(path, uid, gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


def is_tmp_dir_busy(path: str) -> bool:
    """A preparation in progress holds an flock on its temporary directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def mkdtemp(parent: str, prefix: str) -> str:
    for _attempt in range(100):
        path = os.path.join(parent, prefix + secrets.token_hex(4))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise ReleaseError(f"cannot create a temporary directory in {parent}")


def discard(path: str, parent: str) -> None:
    """Remove a release directory: rename it out of the way first so it disappears at once."""
    if not os.path.lexists(path):
        return
    doomed = os.path.join(parent, f"{TMP_PREFIX}del-{os.path.basename(path)}-{secrets.token_hex(4)}")
    os.rename(path, doomed)
    rmtree(doomed)
