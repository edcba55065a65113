# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe, bounded unpacking of tar (plain, gz, bz2, xz) and zip archives into a release directory.

- Safe: nothing an archive holds may reach outside its target. Absolute names, ``..``, links resolving outside,
  writes through links, members replaced by another kind, device files and FIFOs are refused before anything is
  written; once every artifact of a release is in place, :func:`check_release_tree` checks every link of the release.
- Bounded: :class:`UnpackLimits` (members, bytes, one member's bytes, compression ratio, link target length, free
  space) is checked on the sizes the archive declares before anything is written, then on the bytes actually written.
- Verified: every compressed stream is read to its end, so that the gzip/bz2/xz trailers and the zip CRCs are checked;
  a damaged archive is a :class:`ReleaseError` naming the artifact, never a raw exception.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import posixpath
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import IO, Any

from ansible_collections.unistra.itop.plugins.module_utils.artifacts import Artifact, ArtifactCache
from ansible_collections.unistra.itop.plugins.module_utils.fsutil import inside
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError, redact_uri, safe_relpath

CHUNK = 1024 * 1024
MiB = 1024**2
GiB = 1024**3
NAME_MAX = 255  # bytes of one path component (Linux)
PATH_MAX = 4095  # bytes of a whole name
MAX_READ = 4 * CHUNK  # one read of the tar stream: a pax or GNU long-name header larger than this is forged
TAR_MEMBER_OVERHEAD = 8192  # stream bytes a tar member may take beyond its data: headers, pax records, padding
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # zipfile inflates bzip2/lzma members without a bound


@dataclass(frozen=True)
class UnpackLimits:
    """What one artifact may unpack to (the module's ``unpack_limits`` option; sizes in bytes)."""

    max_bytes: int = 4 * GiB  # total bytes of its regular files
    max_members: int = 100_000  # entries of the archive, of any kind
    max_member_bytes: int = 2 * GiB  # bytes of one regular file
    max_ratio: int = 200  # unpacked bytes per byte of the archive file...
    ratio_threshold: int = 64 * MiB  # ...checked once it unpacks to more than this
    max_link_target: int = 1024  # bytes of a symlink target
    free_space_margin: int = 256 * MiB  # left free on the target's file system after unpacking

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            least = 0 if field.name in ("ratio_threshold", "free_space_margin") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ReleaseError(f"unpack_limits.{field.name} must be an integer of at least {least}, got {value!r}")


@dataclass(frozen=True)
class Unpacked:
    """What one artifact put in its target: the number of entries, and its symlinks (relative to the target)."""

    entries: int
    symlinks: tuple[str, ...]


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
    size: int = 0  # bytes the archive declares for a regular file


def human(size: int) -> str:
    """2147483648 -> '2.0 GiB' (messages only)."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _archive_name(raw: str, archive: str) -> str:
    """Normalise a member name from an archive; refuse absolute names, ``..`` and names no file system should hold."""
    shown = f"refusing archive {archive}: member {raw!r}"
    if "\0" in raw or re.search(r"[\x01-\x1f\x7f]", raw):
        raise ReleaseError(f"{shown} has a control character in its name")
    if "\\" in raw:
        raise ReleaseError(f"{shown} has a backslash in its name (a Windows path?): rebuild the archive with '/'")
    if raw.startswith("/") or re.match(r"\A[A-Za-z]:", raw):
        raise ReleaseError(f"{shown} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"{shown} contains '..'")
    name = "/".join(parts)
    longest = max((len(p.encode("utf-8", "surrogateescape")) for p in parts), default=0)
    if longest > NAME_MAX or len(name.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise ReleaseError(f"{shown[:200]}... has a name longer than the file system allows")
    return name


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


class _Tally:
    """Counts what an archive declares, then what is written; refuses it as soon as a limit is passed."""

    def __init__(self, limits: UnpackLimits, archive_bytes: int, label: str) -> None:
        self.limits = limits
        self.label = label
        self.archive_bytes = archive_bytes
        by_ratio = max(limits.max_ratio * archive_bytes, limits.ratio_threshold)
        self.cap = min(limits.max_bytes, by_ratio)  # bytes of regular files, declared and written
        self.by_ratio = by_ratio < limits.max_bytes
        self.members = 0
        self.declared = 0  # by every regular file, unpacked or outside subdir: all of it is decompressed
        self.kept = 0  # by the regular files that will be written
        self.written = 0

    def stream_bound(self) -> int:
        """How far a tar stream may go: the data its members declared plus their headers and padding, and one more
        header. Beyond that it is junk or a bomb hidden between or after the members."""
        return self.declared + (self.members + 1) * TAR_MEMBER_OVERHEAD + CHUNK

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ReleaseError(
                f"refusing archive {self.label}: it has more than {self.limits.max_members} members "
                "(unpack_limits.max_members); if the artifact is genuine, raise that limit"
            )

    def file(self, name: str, size: int, *, kept: bool) -> None:
        if size > self.limits.max_member_bytes:
            raise ReleaseError(
                f"refusing archive {self.label}: member {name!r} declares {human(size)}, more than "
                f"unpack_limits.max_member_bytes ({human(self.limits.max_member_bytes)})"
            )
        self.declared += size
        self.kept += size if kept else 0
        if self.declared > self.cap:
            raise self.over("declares")

    def link(self, name: str, length: int) -> None:
        if length > self.limits.max_link_target:
            raise ReleaseError(
                f"refusing archive {self.label}: symlink {name!r} has a target of {length} bytes, more than "
                f"unpack_limits.max_link_target ({self.limits.max_link_target})"
            )

    def wrote(self, size: int) -> None:
        self.written += size
        if self.written > self.cap:
            raise self.over("writes")

    def over(self, verb: str) -> ReleaseError:
        if self.by_ratio:
            return ReleaseError(
                f"refusing archive {self.label}: it {verb} more than {self.limits.max_ratio} times its own size "
                f"({human(self.archive_bytes)} unpacking to over {human(self.cap)}; unpack_limits.max_ratio): a "
                "decompression bomb, or raise that limit if the artifact is genuine"
            )
        return ReleaseError(
            f"refusing archive {self.label}: it {verb} more than {human(self.cap)} of files "
            "(unpack_limits.max_bytes); if the artifact is genuine, raise that limit"
        )


class _TarStream:
    """The (decompressed) tar stream as tarfile reads it, bounded: no position past what the members declared so far
    (see :meth:`_Tally.stream_bound`), no huge single read."""

    def __init__(self, raw: IO[bytes], file: IO[bytes], tally: _Tally) -> None:
        self.raw = raw  # the decompressor reading ``file``, or ``file`` itself for a plain tar
        self.file = file
        self.tally = tally

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = MAX_READ
        if size > MAX_READ:
            raise ReleaseError(
                f"refusing archive {self.tally.label}: a member header asks to read {human(size)} at once (a forged "
                "pax or GNU long-name header)"
            )
        data = self.raw.read(min(size, max(self.tally.stream_bound() - self.raw.tell() + 1, 0)))
        self._check(self.raw.tell())
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or self.raw is self.file or offset < self.raw.tell():
            return self._check(self.raw.seek(offset, whence))
        self._check(offset)
        # Forward in a compressed stream: skip by large reads (the decompressors' own seek reads 8 KiB at a time).
        while (ahead := offset - self.raw.tell()) > 0 and self.raw.read(min(ahead, CHUNK)):
            pass
        return int(self.raw.tell())

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            self.file.close()

    def drain(self) -> None:
        """Read to the end, so that the decompressor checks its trailer (gzip CRC and size, bz2 and xz checks)."""
        while self.read(CHUNK):
            pass

    def _check(self, position: int) -> int:
        if position > self.tally.stream_bound():
            raise ReleaseError(
                f"refusing archive {self.tally.label}: its tar stream goes on past what its members declare, at "
                f"{human(position)} (junk or a bomb between or after the members); rebuild the archive"
            )
        return position


_TAR_REFUSED = (
    (tarfile.TarInfo.ischr, "a device file"),
    (tarfile.TarInfo.isblk, "a device file"),
    (tarfile.TarInfo.isfifo, "a FIFO"),
)


def _tar_entry(info: tarfile.TarInfo, mapper: _SubdirMapper, label: str) -> _Entry | None:
    name = _archive_name(info.name, label)
    if info.issparse():
        raise ReleaseError(
            f"refusing archive {label}: member {info.name!r} is a sparse file (tar --sparse), which could fill the "
            "disk from a tiny archive; rebuild the archive without --sparse"
        )
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
    size = info.size if kind == KIND_FILE else 0
    return _keep(mapped, _Entry("", kind, info.mode, float(info.mtime), link, info, size), label)


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, mapper: _SubdirMapper, tally: _Tally) -> _Entry | None:
    label = tally.label
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
    if kind != KIND_DIR and mapped:
        if info.flag_bits & 0x1:
            raise ReleaseError(f"refusing archive {label}: member {info.filename!r} is encrypted")
        if info.compress_type not in ZIP_METHODS:
            raise ReleaseError(
                f"refusing archive {label}: member {info.filename!r} uses zip compression method "
                f"{info.compress_type}; rebuild the zip with deflate (the usual zip compression)"
            )
    link = _zip_link_target(archive, info, tally) if kind == KIND_SYMLINK and mapped else ""
    mtime = time.mktime((*info.date_time, 0, 0, -1))
    size = info.file_size if kind == KIND_FILE else 0
    return _keep(mapped, _Entry("", kind, stat.S_IMODE(mode), mtime, link, info, size), label)


def _zip_link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo, tally: _Tally) -> str:
    """A zip stores a symlink's target as its data: read it with a bound (its header may lie), CRC checked."""
    limit = tally.limits.max_link_target
    tally.link(info.filename, info.file_size)
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    tally.link(info.filename, len(data))
    return data.decode("utf-8", "surrogateescape")


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


_COMPRESSED: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", gzip.GzipFile),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)
# What damaged data raises from tarfile, zipfile and the decompressors (OSError without errno: gzip's BadGzipFile, bz2).
_DATA_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, struct.error)


def _damaged(label: str, exc: BaseException) -> ReleaseError:
    return ReleaseError(
        f"archive {label} is corrupt or truncated ({type(exc).__name__}: {exc}); its sha256 matches the manifest, so "
        "it was built or uploaded damaged: rebuild it and publish a new release"
    )


def _open(path: str, label: str, tally: _Tally) -> tuple[Any, _TarStream | None]:
    """Open a zip, or a tar through a bounded stream (decompressed by us, so that we can read it to its end)."""
    with open(path, "rb") as probe:
        magic = probe.read(6)
    decompressor = next((opener for prefix, opener in _COMPRESSED if magic.startswith(prefix)), None)
    if decompressor is None and not tarfile.is_tarfile(path):
        if not zipfile.is_zipfile(path):
            raise ReleaseError(f"{label} is neither a tar nor a zip archive")
        declared = _zip_declared_entries(path)
        if declared > tally.limits.max_members:
            tally.members = declared - 1
            tally.member()
        return zipfile.ZipFile(path), None
    file = open(path, "rb")  # noqa: SIM115 -- closed by the caller, with the stream
    raw: Any = file
    if decompressor is not None:
        raw = decompressor(fileobj=file) if decompressor is gzip.GzipFile else decompressor(file)
    stream = _TarStream(raw, file, tally)
    try:
        return tarfile.open(fileobj=stream, mode="r:"), stream  # type: ignore[call-overload]
    except BaseException:
        stream.close()
        raise


def _zip_declared_entries(path: str) -> int:
    """The entry count a zip's end record declares, read before zipfile loads the whole central directory."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - (22 + 65535 + 20), 0))
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return 0
        count: int = struct.unpack_from("<H", tail, at + 10)[0]
        if count == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":  # zip64: the count is there
            handle.seek(struct.unpack_from("<Q", tail, at - 12)[0])
            record = handle.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                count = struct.unpack_from("<Q", record, 32)[0]
    return count


def _close(archive: Any, stream: _TarStream | None) -> None:
    if archive is not None:
        archive.close()
    if stream is not None:
        stream.close()


def _read_entries(path: str, subdir: str, tally: _Tally) -> tuple[Any, _TarStream | None, list[_Entry]]:
    """Open the archive and list its entries (validated names, refused types, limits on what it declares).

    A tar is read to its end-of-archive marker and its compressed stream to its end (checking its trailer) before
    anything is written. The caller closes the archive.
    """
    label = tally.label
    mapper = _SubdirMapper(subdir)
    archive: Any = None
    stream: _TarStream | None = None
    try:
        archive, stream = _open(path, label, tally)
        found: list[_Entry | None] = []
        if stream is None:  # a zip
            for info in archive.infolist():
                tally.member()
                entry = _zip_entry(archive, info, mapper, tally)
                if not info.is_dir() and stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG):
                    tally.file(info.filename, info.file_size, kept=entry is not None)
                found.append(entry)
        else:
            # next() skips a member's data only when asked for the following one: each declared size is checked first.
            while (info := archive.next()) is not None:
                tally.member()
                entry = _tar_entry(info, mapper, label)
                if info.isreg():
                    tally.file(info.name, info.size, kept=entry is not None)
                elif info.issym():
                    tally.link(info.name, len(info.linkname.encode("utf-8", "surrogateescape")))
                found.append(entry)
            _check_tar_end(archive, stream, label)
            stream.drain()
        if not mapper.found:
            raise ReleaseError(f"subdir {subdir!r} not found in archive {label}; check the manifest's subdir")
    except BaseException as exc:
        _close(archive, stream)
        if isinstance(exc, _DATA_ERRORS) or (isinstance(exc, OSError) and exc.errno is None):
            raise _damaged(label, exc) from None
        if isinstance(exc, OSError):
            raise ReleaseError(f"cannot read archive {label}: {exc}") from None
        raise
    return archive, stream, [entry for entry in found if entry is not None]


def _check_tar_end(archive: tarfile.TarFile, stream: _TarStream, label: str) -> None:
    """tarfile takes a damaged or missing header for the end of the archive: require the end-of-archive marker."""
    stream.seek(archive.offset)
    if stream.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise ReleaseError(
            f"archive {label} is corrupt or truncated: no valid member header nor end-of-archive marker at offset "
            f"{archive.offset}; rebuild it and publish a new release"
        )


def _check_tree(entries: Sequence[_Entry], label: str) -> None:
    """Lexical checks before anything is written: no member replaced by another kind, none written through a link
    or a file of the archive, links inside the target directory."""
    kinds: dict[str, str] = {}
    for entry in entries:
        seen = kinds.get(entry.name)
        # A file given twice is replaced, as tar does (tar -r appends newer copies); any other repeat is refused.
        if seen is not None and (seen != entry.kind or seen not in (KIND_DIR, KIND_FILE)):
            raise ReleaseError(
                f"refusing archive {label}: {entry.name!r} appears twice, as a {seen} and as a {entry.kind}"
            )
        kinds[entry.name] = entry.kind
    for entry in entries:
        parent = posixpath.dirname(entry.name)
        while parent:
            if kinds.get(parent, KIND_DIR) != KIND_DIR:
                raise ReleaseError(
                    f"refusing archive {label}: member {entry.name!r} would be written through {parent!r}, which the "
                    f"archive makes a {kinds[parent]}"
                )
            parent = posixpath.dirname(parent)
    _check_links(entries, label)


def _check_links(entries: Sequence[_Entry], label: str) -> None:
    """Links must stay inside the target directory (lexically; realpath() is checked once they exist)."""
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


def _check_free_space(target: str, tally: _Tally, label: str) -> None:
    """Before writing anything: the declared bytes (plus a block per member) and the margin must fit."""
    probe = os.path.abspath(target)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    fs = os.statvfs(probe)
    unit = fs.f_frsize or 4096
    needed = tally.kept + tally.members * unit
    free = fs.f_bavail * unit
    margin = tally.limits.free_space_margin
    if needed + margin > free:
        raise ReleaseError(
            f"not enough free space to unpack {label} into {probe}: it needs about {human(needed)}, {human(free)} "
            f"are free and {human(margin)} must stay free (unpack_limits.free_space_margin); free some space "
            "(prune old releases) and retry"
        )
    if fs.f_files and tally.members > fs.f_favail:
        raise ReleaseError(
            f"not enough free inodes to unpack {label} into {probe}: it has {tally.members} members, "
            f"{fs.f_favail} inodes are free; free some (prune old releases) and retry"
        )


def unpack_archive(
    archive_path: str, target: str, *, subdir: str = "", label: str | None = None, limits: UnpackLimits | None = None
) -> Unpacked:
    """Unpack a tar (plain/gz/bz2/xz) or zip archive into ``target`` safely and within ``limits``.

    Refuses absolute names, ``..``, symlinks and hard links resolving outside ``target``, device files and FIFOs,
    sparse files, and archives over the limits (checked on declared sizes and free space before writing, then on the
    bytes written). Regular files and directories are written first, then hard links, then symlinks, so that no write
    ever goes through a link the archive created; every symlink is finally resolved with realpath() to catch chains.
    The caller unpacks into a temporary directory and removes it on error.
    """
    label = label or archive_path
    subdir = safe_relpath(subdir, "subdir")
    tally = _Tally(limits or UnpackLimits(), os.path.getsize(archive_path), label)
    archive, stream, entries = _read_entries(archive_path, subdir, tally)
    try:
        _check_tree(entries, label)
        _check_free_space(target, tally, label)
        os.makedirs(target, exist_ok=True)
        real_target = os.path.realpath(target)
        dirs: list[_Entry] = []
        for entry in entries:
            if entry.kind in (KIND_DIR, KIND_FILE):
                _write_entry(archive, entry, target, real_target, tally)
                if entry.kind == KIND_DIR:
                    dirs.append(entry)
        symlinks = _write_links(entries, target, real_target, label)
        # Directory modes last: an archive's read-only directory must not block writing its content.
        for entry in reversed(dirs):
            path = os.path.join(target, entry.name)
            # Archives made without Unix modes (zip from Windows) say 0: give directories the usual 0755.
            os.chmod(path, ((entry.mode or 0o755) & 0o755) | 0o700)
            os.utime(path, (entry.mtime, entry.mtime))
    except OSError as exc:
        if exc.errno is None:
            raise _damaged(label, exc) from None
        raise ReleaseError(f"cannot unpack {label}: {exc}") from None
    except _DATA_ERRORS as exc:
        raise _damaged(label, exc) from None
    finally:
        _close(archive, stream)
    return Unpacked(len(entries), tuple(symlinks))


def _write_links(entries: Sequence[_Entry], target: str, real_target: str, label: str) -> list[str]:
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
    return [entry.name for entry in symlinks]


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


def _write_entry(archive: Any, entry: _Entry, target: str, real_target: str, tally: _Tally) -> None:
    path = _prepare_path(entry, target, real_target, tally.label)
    if entry.kind == KIND_DIR:
        os.makedirs(path, exist_ok=True)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        if isinstance(archive, tarfile.TarFile):
            source = archive.extractfile(entry.member)
            if source is None:
                raise ReleaseError(f"cannot read member {entry.name!r} of {tally.label}")
        else:
            source = archive.open(entry.member)
        with source:
            _copy_member(source, out, entry, tally)
        mode = entry.mode if entry.mode else 0o644
        os.fchmod(out.fileno(), (mode & 0o755) | 0o600)
    os.utime(path, (entry.mtime, entry.mtime))


def _copy_member(source: IO[bytes], out: IO[bytes], entry: _Entry, tally: _Tally) -> None:
    """Copy to the end of the member's data (zip checks its CRC there), never more than its header declares."""
    written = 0
    while chunk := source.read(min(CHUNK, entry.size - written + 1)):
        written += len(chunk)
        if written > entry.size:
            raise ReleaseError(
                f"refusing archive {tally.label}: member {entry.name!r} holds more data than the {entry.size} bytes "
                "its header declares (a forged or damaged header)"
            )
        tally.wrote(len(chunk))
        out.write(chunk)
    if written != entry.size:
        raise ReleaseError(
            f"archive {tally.label} is corrupt or truncated: member {entry.name!r} holds {written} bytes, its header "
            f"declares {entry.size}; rebuild it and publish a new release"
        )


def check_release_tree(release_dir: str, made_by: Mapping[str, str]) -> None:
    """Once every artifact of a release is in place: every symlink resolves inside the release, every regular file
    shares its inode with no file outside it, and it holds nothing but directories, files and symlinks.

    ``made_by`` maps a symlink's path (relative to the release) to the artifact that made it, for the message: a
    dangling link of one artifact may be completed into an escape by the links of another.
    """
    real_release = os.path.realpath(release_dir)
    linked: dict[tuple[int, int], list[Any]] = {}
    for base, dirs, files in os.walk(release_dir):  # never follows links
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, release_dir)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(path)
                if not inside(real, real_release):
                    raise _escape(release_dir, rel, real, made_by)
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                linked.setdefault((info.st_dev, info.st_ino), [info.st_nlink, 0, rel])[1] += 1
            elif not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
                raise ReleaseError(f"refusing release: {rel!r} is neither a file, a directory nor a symlink")
    for nlink, count, rel in linked.values():
        if count < nlink:
            raise ReleaseError(f"refusing release: {rel!r} is a hard link to a file outside the release")


def _escape(release_dir: str, rel: str, real: str, made_by: Mapping[str, str]) -> ReleaseError:
    via = list(dict.fromkeys(_links_followed(release_dir, rel)))  # a link followed many times is named once
    chain = ", ".join(f"{link!r} -> {os.readlink(os.path.join(release_dir, link))!r}" for link in via)
    artifacts = sorted({made_by.get(link, "?") for link in via})
    return ReleaseError(
        f"refusing release: symlink {rel!r} (from {made_by.get(rel, '?')}) resolves outside the release, to {real}, "
        f"through {chain}: together the artifacts {', '.join(artifacts)} make a link that escapes; fix the links so "
        "that each stays inside its own artifact"
    )


def _links_followed(release_dir: str, rel: str) -> list[str]:
    """The release's own symlinks that resolving ``rel`` goes through, in order (like realpath(), for a message)."""
    root = os.path.realpath(release_dir)
    pending = rel.split("/")[::-1]
    path, via = root, list[str]()
    while pending and len(via) < 40:
        part = pending.pop()
        if part == "..":
            path = os.path.dirname(path)
        elif part not in ("", "."):
            candidate = os.path.join(path, part)
            if not os.path.islink(candidate) or not inside(candidate, root):
                path = candidate
                continue
            via.append(os.path.relpath(candidate, root))
            target = os.readlink(candidate)
            path = "/" if target.startswith("/") else path
            pending.extend(target.split("/")[::-1])
    return via


def fetch_and_unpack(
    release_dir: str, arts: Sequence[Artifact], cache: ArtifactCache, *, limits: UnpackLimits | None = None
) -> list[dict[str, Any]]:
    """Get every artifact through the cache (checksum verified) and unpack it at its dest in the release; then check
    the links of the whole release (before the caller links shared paths, which point outside by design)."""
    fetched = []
    made_by: dict[str, str] = {}
    real_release = os.path.realpath(release_dir)
    for art in arts:
        local, downloaded = cache.get(art)
        fetched.append({**art.as_dict(), "downloaded": downloaded})
        target = os.path.join(release_dir, art.dest) if art.dest else release_dir
        if not inside(os.path.realpath(target), real_release):
            raise ReleaseError(f"dest {art.dest!r} resolves outside the release (through a symlink)")
        os.makedirs(target, exist_ok=True)
        label = redact_uri(art.uri)
        unpacked = unpack_archive(local, target, subdir=art.subdir, label=label, limits=limits)
        made_by.update({posixpath.join(art.dest, link): label for link in unpacked.symlinks})
    check_release_tree(release_dir, made_by)
    return fetched
