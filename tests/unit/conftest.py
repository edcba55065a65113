"""Fixtures for the release engine tests: archive builders and tree snapshots."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager


@dataclass
class Member:
    """One archive entry: kind is file, dir, symlink, hardlink, chr, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    return Member(name, "file", data, mode=mode)


def directory(name: str) -> Member:
    return Member(name, "dir", mode=0o755)


def symlink(name: str, target: str) -> Member:
    return Member(name, "symlink", link=target)


def hardlink(name: str, target: str) -> Member:
    return Member(name, "hardlink", link=target)


_TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(path: Path, members: list[Member], compression: str = "gz") -> Path:
    """Write a tar archive; gzip gets a fixed header time, so the same members always give the same sha256."""
    with open(path, "wb") as raw:
        if compression == "gz":
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
                _fill_tar(tar, members)
        else:
            with tarfile.open(fileobj=raw, mode=f"w:{compression}" if compression else "w") as tar:
                _fill_tar(tar, members)
    return path


def _fill_tar(tar: tarfile.TarFile, members: list[Member]) -> None:
    for member in members:
        info = tarfile.TarInfo(member.name)
        info.mtime = 1_700_000_000
        info.mode = member.mode
        if member.kind == "file":
            info.size = len(member.data)
            tar.addfile(info, io.BytesIO(member.data))
            continue
        info.type = _TAR_TYPES[member.kind]
        info.linkname = member.link
        if member.kind == "chr":
            info.devmajor, info.devminor = 1, 3
        tar.addfile(info)


def make_zip(path: Path, members: list[Member]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=(2024, 1, 1, 0, 0, 0))
            if member.kind == "dir":
                info.filename = member.name.rstrip("/") + "/"
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            elif member.kind == "symlink":
                info.external_attr = 0o120777 << 16
                archive.writestr(info, member.link)
            elif member.kind == "chr":
                info.external_attr = 0o20644 << 16
                archive.writestr(info, b"")
            else:
                info.external_attr = (0o100000 | member.mode) << 16
                archive.writestr(info, member.data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact(path: Path, **extra: str) -> dict[str, str]:
    return {"uri": f"file://{path}", "sha256": sha256(path), **extra}


def sample_members(version: str) -> list[Member]:
    return [
        file("VERSION", f"{version}\n".encode()),
        directory("app"),
        file("app/main.py", f"print({version!r})\n".encode()),
        file("app/run.sh", b"#!/bin/sh\n", 0o755),
        directory("data"),
        file("data/seed.txt", b"seeded\n"),
        symlink("app/current-version", "../VERSION"),
    ]


def snapshot(root: Path) -> dict[str, tuple[str, str, int, int]]:
    """Everything observable about a tree: type, link target, size, mtime (ns) and mode of each path."""
    result: dict[str, tuple[str, str, int, int]] = {}
    if not root.exists():
        return result
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            kind = "l" if os.path.islink(path) else ("d" if os.path.isdir(path) else "f")
            result[os.path.relpath(path, root)] = (kind, link, st.st_mtime_ns, st.st_mode)
    return result


class Clock:
    """A controllable time source for lease tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def build() -> SimpleNamespace:
    """The archive helpers, for tests (a conftest is not importable by name)."""
    return SimpleNamespace(
        file=file,
        directory=directory,
        symlink=symlink,
        hardlink=hardlink,
        Member=Member,
        tar=make_tar,
        zip=make_zip,
        sha256=sha256,
        artifact=artifact,
        sample_members=sample_members,
        snapshot=snapshot,
        Clock=Clock,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "app"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def sample(artifacts_dir: Path) -> Callable[[str], dict[str, str]]:
    """sample("r1") -> an artifact dict for a fresh sample-r1.tar.gz."""

    def build(version: str) -> dict[str, str]:
        path = make_tar(artifacts_dir / f"sample-{version}.tar.gz", sample_members(version))
        return artifact(path)

    return build


@pytest.fixture
def manager(root: Path) -> ReleaseManager:
    return ReleaseManager(str(root), owner_name="tester")


@pytest.fixture
def deploy(manager: ReleaseManager, sample: Callable[[str], dict[str, str]], cache_dir: Path) -> Callable[..., None]:
    """deploy("r1", "r2") prepares and activates each release in order."""

    def run(*versions: str, activate: bool = True) -> None:
        for version in versions:
            manager.prepare(version, [sample(version)], shared_paths=["data"], cache_dir=str(cache_dir))
            if activate:
                manager.activate(version)

    return run


# --------------------------------------------------------------------------------------------------------------------
# Hostile archives that stay small on disk: bombs built from repeated compressed blocks, sparse tars, forged zips
# --------------------------------------------------------------------------------------------------------------------

_ZEROS_MIB = b"\0" * (1 << 20)
_STREAM_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "": bytes,
    "gz": lambda data: gzip.compress(data, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


def make_zero_bomb_tar(path: Path, sizes_mib: dict[str, int], compression: str = "gz") -> Path:
    """A tar whose regular files are ``sizes_mib[name]`` MiB of zeros, written as concatenated compressed streams
    (gzip, bz2 and xz readers all accept several): one compressed MiB of zeros is computed once and repeated, so a
    2 MiB .tar.gz inflating to 2 GiB takes milliseconds to build."""
    pack = _STREAM_COMPRESSORS[compression]
    zeros = pack(_ZEROS_MIB)
    with open(path, "wb") as out:
        for name, mib in sizes_mib.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = mib << 20, 1_700_000_000, 0o644
            out.write(pack(info.tobuf(format=tarfile.GNU_FORMAT)))
            for _ in range(mib):
                out.write(zeros)
        out.write(pack(b"\0" * tarfile.RECORDSIZE))
    return path


def make_sparse_tar(path: Path, name: str, apparent_size: int, compression: str = "") -> Path:
    """A tar holding one byte of data for a GNU sparse file (pax format 0.1) of ``apparent_size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime = 1, 1_700_000_000
    info.pax_headers = {"GNU.sparse.map": f"{apparent_size - 1},1", "GNU.sparse.size": str(apparent_size)}
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.addfile(info, io.BytesIO(b"x"))
    return path


def make_raw_zip(path: Path, members: list[tuple[str, int, bytes, int, int, int]]) -> Path:
    """A zip written by hand, so that its headers can lie: each member is (name, unix mode, deflated data,
    crc32, declared size, method)."""
    local, central = bytearray(), bytearray()
    for name, mode, data, crc, size, method in members:
        raw_name = name.encode()
        offset = len(local)
        head = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(raw_name), 0)
        local += head + raw_name + data
        central += (
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                0x0314,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(data),
                size,
                len(raw_name),
                0,
                0,
                0,
                0,
                mode << 16,
                offset,
            )
            + raw_name
        )
    count = len(members)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def deflated_zeros(mib: int) -> tuple[bytes, int]:
    """(raw deflate data of ``mib`` MiB of zeros, their crc32), from one compressed block repeated (full flush)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(_ZEROS_MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(_ZEROS_MIB, crc)
    return block * mib + compressor.flush(), crc


@pytest.fixture
def hostile() -> SimpleNamespace:
    """Builders of hostile archives that stay small on disk (see make_zero_bomb_tar)."""
    return SimpleNamespace(
        zero_bomb_tar=make_zero_bomb_tar,
        sparse_tar=make_sparse_tar,
        raw_zip=make_raw_zip,
        deflated_zeros=deflated_zeros,
    )
