# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe unpacking of tar (plain, gz, bz2, xz) and zip archives into a release directory.

Nothing an archive holds may reach outside its target: absolute names, ``..``, links resolving outside, device files
and FIFOs are refused before anything is written.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.unistra.itop.plugins.module_utils.artifacts import Artifact, ArtifactCache
from ansible_collections.unistra.itop.plugins.module_utils.fsutil import inside
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError, redact_uri, safe_relpath

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class UnpackLimits:
    """What one artifact may unpack to (the module's ``unpack_*`` options)."""

    max_bytes: int = 4 * 1024**3  # total bytes of the regular files
    max_members: int = 100_000
    max_member_bytes: int = 2 * 1024**3
    max_ratio: int = 200  # unpacked bytes per byte of the archive file
    max_link_target: int = 1024  # bytes of a symlink target
    free_space_margin: int = 256 * 1024**2  # left free on the target's file system after unpacking


KIND_DIR = "dir"
KIND_FILE = "file"
KIND_SYMLINK = "symlink"
KIND_HARDLINK = "hardlink"


@dataclass
class _Entry:
    name: str  # normalised path relative to the artifact's target directory
    kind: str
    mode: int
    mtime: float
    link: str = ""  # symlink target as stored, or hard link target (normalised, relative to the target)
    member: Any = None  # the tarfile.TarInfo / zipfile.ZipInfo to read file content from


def _archive_name(raw: str, archive: str) -> str:
    """Normalise a member name from an archive; refuse absolute names and any ``..`` component."""
    if raw.startswith("/") or re.match(r"\A[A-Za-z]:[\\/]", raw):
        raise ReleaseError(f"refusing archive {archive}: member {raw!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"refusing archive {archive}: member {raw!r} contains '..'")
    return "/".join(parts)


class _SubdirMapper:
    """Keep only the members under ``subdir`` and make their names relative to it."""

    def __init__(self, subdir: str) -> None:
        self.subdir = subdir
        self.found = not subdir

    def map(self, name: str, kind: str, archive: str) -> str | None:
        if not self.subdir:
            return name
        if name == self.subdir:
            if kind != KIND_DIR:
                raise ReleaseError(f"refusing archive {archive}: subdir {self.subdir!r} is not a directory in it")
            self.found = True
            return ""
        if name.startswith(self.subdir + "/"):
            self.found = True
            return name[len(self.subdir) + 1 :]
        return None


_TAR_REFUSED = (
    (tarfile.TarInfo.ischr, "a device file"),
    (tarfile.TarInfo.isblk, "a device file"),
    (tarfile.TarInfo.isfifo, "a FIFO"),
)


def _tar_entry(info: tarfile.TarInfo, mapper: _SubdirMapper, label: str) -> _Entry | None:
    name = _archive_name(info.name, label)
    if info.isdir():
        kind = KIND_DIR
    elif info.isreg():
        kind = KIND_FILE
    elif info.issym():
        kind = KIND_SYMLINK
    elif info.islnk():
        kind = KIND_HARDLINK
    else:
        what = next((text for test, text in _TAR_REFUSED if test(info)), "of an unsupported type")
        raise ReleaseError(f"refusing archive {label}: member {info.name!r} is {what}")
    link = info.linkname if kind == KIND_SYMLINK else ""
    mapped = mapper.map(name, kind, label)
    if kind == KIND_HARDLINK:
        # A hard link names another member of the archive: same rules as a member name, and inside subdir.
        try:
            target = _archive_name(info.linkname, label)
        except ReleaseError:
            raise ReleaseError(
                f"refusing archive {label}: hard link {info.name!r} -> {info.linkname!r} points outside the release"
            ) from None
        link = (mapper.map(target, KIND_FILE, label) or "") if mapper.subdir else target
        if mapped is not None and not link:
            raise ReleaseError(
                f"refusing archive {label}: hard link {info.name!r} -> {info.linkname!r} points outside "
                f"subdir {mapper.subdir!r}"
            )
    return _keep(mapped, _Entry("", kind, info.mode, float(info.mtime), link, info), label)


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, mapper: _SubdirMapper, label: str) -> _Entry | None:
    name = _archive_name(info.filename, label)
    mode = info.external_attr >> 16
    fmt = stat.S_IFMT(mode)
    if info.is_dir() or fmt == stat.S_IFDIR:
        kind = KIND_DIR
    elif fmt == stat.S_IFLNK:
        kind = KIND_SYMLINK
    elif fmt in (0, stat.S_IFREG):
        kind = KIND_FILE
    else:
        raise ReleaseError(f"refusing archive {label}: member {info.filename!r} is a device file, FIFO or socket")
    mapped = mapper.map(name, kind, label)
    link = archive.read(info).decode("utf-8", "surrogateescape") if kind == KIND_SYMLINK and mapped else ""
    mtime = time.mktime((*info.date_time, 0, 0, -1))
    return _keep(mapped, _Entry("", kind, stat.S_IMODE(mode), mtime, link, info), label)


def _keep(mapped: str | None, entry: _Entry, label: str) -> _Entry | None:
    """Name the entry by its path under subdir, or drop it (outside subdir, or subdir itself)."""
    if mapped is None:
        return None
    if mapped == "":
        if entry.kind != KIND_DIR:
            raise ReleaseError(f"refusing archive {label}: a {entry.kind} entry would replace the release root")
        return None
    entry.name = mapped
    return entry


def _read_entries(path: str, subdir: str, label: str) -> tuple[Any, list[_Entry]]:
    """Open the archive and list its entries (validated names, refused types); the caller closes the archive."""
    mapper = _SubdirMapper(subdir)
    archive: Any
    try:
        if zipfile.is_zipfile(path):
            archive = zipfile.ZipFile(path)
        elif tarfile.is_tarfile(path):
            archive = tarfile.open(path, "r:*")  # noqa: SIM115 -- closed by the caller
        else:
            raise ReleaseError(f"{label} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ReleaseError(f"cannot read archive {label}: {exc}") from None
    try:
        if isinstance(archive, zipfile.ZipFile):
            found = [_zip_entry(archive, info, mapper, label) for info in archive.infolist()]
        else:
            found = [_tar_entry(info, mapper, label) for info in archive.getmembers()]
        if not mapper.found:
            raise ReleaseError(f"subdir {subdir!r} not found in archive {label}; check the manifest's subdir")
    except ReleaseError:
        archive.close()
        raise
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        archive.close()
        raise ReleaseError(f"archive {label} is corrupt or truncated: {exc}") from None
    return archive, [entry for entry in found if entry is not None]


def _check_links(entries: Sequence[_Entry], label: str) -> None:
    """Lexical checks before anything is written: links must stay inside the target directory."""
    files = set()
    for entry in entries:
        if entry.kind == KIND_SYMLINK:
            target = entry.link
            if not target or "\0" in target:
                raise ReleaseError(f"refusing archive {label}: symlink {entry.name!r} has an empty target")
            if target.startswith("/"):
                raise ReleaseError(
                    f"refusing archive {label}: symlink {entry.name!r} -> {target!r} is absolute (points outside the "
                    "release)"
                )
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.name), target))
            if resolved == ".." or resolved.startswith("../"):
                raise ReleaseError(
                    f"refusing archive {label}: symlink {entry.name!r} -> {target!r} points outside the release"
                )
        elif entry.kind == KIND_HARDLINK:
            if entry.link not in files:
                raise ReleaseError(
                    f"refusing archive {label}: hard link {entry.name!r} -> {entry.link!r} does not point to a "
                    "regular file of the archive"
                )
            files.add(entry.name)
        elif entry.kind == KIND_FILE:
            files.add(entry.name)


def unpack_archive(
    archive_path: str, target: str, *, subdir: str = "", label: str | None = None, limits: UnpackLimits | None = None
) -> int:
    """Unpack a tar (plain/gz/bz2/xz) or zip archive into ``target`` safely; return the number of entries.

    Refuses absolute names, ``..``, symlinks and hard links resolving outside ``target``, device files and FIFOs.
    Regular files and directories are written first, then hard links, then symlinks, so that no write ever goes
    through a link the archive created; every symlink is finally resolved with realpath() to catch chains.
    The caller unpacks into a temporary directory and removes it on error.
    """
    label = label or archive_path
    subdir = safe_relpath(subdir, "subdir")
    archive, entries = _read_entries(archive_path, subdir, label)
    try:
        _check_links(entries, label)
        os.makedirs(target, exist_ok=True)
        real_target = os.path.realpath(target)
        dirs: list[_Entry] = []
        for entry in entries:
            if entry.kind in (KIND_DIR, KIND_FILE):
                _write_entry(archive, entry, target, real_target, label)
                if entry.kind == KIND_DIR:
                    dirs.append(entry)
        _write_links(entries, target, real_target, label)
        # Directory modes last: an archive's read-only directory must not block writing its content.
        for entry in reversed(dirs):
            path = os.path.join(target, entry.name)
            # Archives made without Unix modes (zip from Windows) say 0: give directories the usual 0755.
            os.chmod(path, ((entry.mode or 0o755) & 0o755) | 0o700)
            os.utime(path, (entry.mtime, entry.mtime))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ReleaseError(f"cannot unpack {label}: {exc}") from None
    finally:
        archive.close()
    return len(entries)


def _write_links(entries: Sequence[_Entry], target: str, real_target: str, label: str) -> None:
    for entry in entries:
        if entry.kind == KIND_HARDLINK:
            path = _prepare_path(entry, target, real_target, label)
            os.link(os.path.join(target, entry.link), path, follow_symlinks=False)
    symlinks = [entry for entry in entries if entry.kind == KIND_SYMLINK]
    for entry in symlinks:
        path = _prepare_path(entry, target, real_target, label)
        os.symlink(entry.link, path)
    # Each link was checked lexically; realpath() now also catches escapes through chains of links.
    for entry in symlinks:
        real = os.path.realpath(os.path.join(target, entry.name))
        if not inside(real, real_target):
            raise ReleaseError(
                f"refusing archive {label}: symlink {entry.name!r} -> {entry.link!r} resolves outside the release"
            )


def _prepare_path(entry: _Entry, target: str, real_target: str, label: str) -> str:
    path = os.path.join(target, entry.name)
    parent = os.path.dirname(path)
    # Checked before creating anything: a link left by an earlier artifact must not lead the write elsewhere.
    if not inside(os.path.realpath(parent), real_target):
        raise ReleaseError(f"refusing archive {label}: member {entry.name!r} would be written outside the release")
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            if entry.kind == KIND_DIR:
                return path
            raise ReleaseError(f"refusing archive {label}: member {entry.name!r} conflicts with a directory")
        if os.path.islink(path):
            raise ReleaseError(f"refusing archive {label}: member {entry.name!r} conflicts with a symlink")
        os.unlink(path)  # a later duplicate of a regular file replaces it, as tar does
    return path


def _write_entry(archive: Any, entry: _Entry, target: str, real_target: str, label: str) -> None:
    path = _prepare_path(entry, target, real_target, label)
    if entry.kind == KIND_DIR:
        os.makedirs(path, exist_ok=True)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        if isinstance(archive, tarfile.TarFile):
            source = archive.extractfile(entry.member)
            if source is None:
                raise ReleaseError(f"cannot read member {entry.name!r} of {label}")
        else:
            source = archive.open(entry.member)
        with source:
            shutil.copyfileobj(source, out, CHUNK)
        mode = entry.mode if entry.mode else 0o644
        os.fchmod(out.fileno(), (mode & 0o755) | 0o600)
    os.utime(path, (entry.mtime, entry.mtime))


def fetch_and_unpack(
    release_dir: str, arts: Sequence[Artifact], cache: ArtifactCache, *, limits: UnpackLimits | None = None
) -> list[dict[str, Any]]:
    """Get every artifact through the cache (checksum verified) and unpack it at its dest in the release."""
    fetched = []
    real_release = os.path.realpath(release_dir)
    for art in arts:
        local, downloaded = cache.get(art)
        fetched.append({**art.as_dict(), "downloaded": downloaded})
        target = os.path.join(release_dir, art.dest) if art.dest else release_dir
        if not inside(os.path.realpath(target), real_release):
            raise ReleaseError(f"dest {art.dest!r} resolves outside the release (through a symlink)")
        os.makedirs(target, exist_ok=True)
        unpack_archive(local, target, subdir=art.subdir, label=redact_uri(art.uri), limits=limits)
    return fetched
