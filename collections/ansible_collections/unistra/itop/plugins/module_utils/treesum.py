# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checksum of a release tree: what itopctl's drift check compares with what it recorded.

A release directory is immutable once prepared, so any change to it (a file edited by hand, one added or removed, a
mode changed) is drift. The checksum covers, for every entry under the directory in sorted order, its relative path,
its kind, its permission bits, and the SHA-256 of a regular file's content or a symbolic link's target (links are
never followed: a link into ``shared/`` is part of the tree, the data behind it is not). Python byte-code caches
(``__pycache__`` directories, ``*.pyc``) are left out: an interpreter may write them at run time without any change to
what runs. Owners are left out too (a release is chowned once, at prepare). Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

CHUNK = 1024 * 1024
SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc",)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_checksum(top: str) -> dict[str, Any]:
    """``{"checksum": "sha256:<hex>", "files": N, "bytes": N}`` for the tree under ``top`` (a directory)."""
    outer = hashlib.sha256()
    files = size = 0
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(top, rel_dir)) as entries:
            listing = sorted(entries, key=lambda e: e.name)
        subdirs = []
        for entry in listing:
            rel = os.path.join(rel_dir, entry.name)
            info = entry.stat(follow_symlinks=False)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                line = f"l\0{rel}\0{os.readlink(entry.path)}"
            elif stat.S_ISDIR(info.st_mode):
                if entry.name in SKIPPED_DIRS:
                    continue
                line = f"d\0{rel}\0{mode:o}"
                subdirs.append(rel)
            elif stat.S_ISREG(info.st_mode):
                if entry.name.endswith(SKIPPED_SUFFIXES):
                    continue
                line = f"f\0{rel}\0{mode:o}\0{_file_digest(entry.path)}"
                files += 1
                size += info.st_size
            else:
                line = f"o\0{rel}\0{info.st_mode:o}"
            outer.update(line.encode("utf-8", "surrogateescape") + b"\n")
        # depth first, in sorted order: the walk (and so the checksum) does not depend on the directory's order
        pending.extend(reversed(subdirs))
    return {"checksum": "sha256:" + outer.hexdigest(), "files": files, "bytes": size}
