"""The hostile-archive corpus: every case goes through ReleaseManager.prepare on a root that already holds a good
release. A refused case fails with a clear message and leaves nothing (no releases/.tmp-*, no releases/<id>, the
journal byte for byte as it was, nothing outside); an accepted case says in one line why it is safe and its result on
disk is checked. Archives are built here, small on disk (zero bombs are repeated compressed blocks); the cases marked
"default limits" prove the rule with UnpackLimits() on archives that genuinely inflate to hundreds of MiB or GiBs.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError
from ansible_collections.unistra.itop.plugins.module_utils.unpack import UnpackLimits

PWNED = "/tmp/unistra-itop-corpus-pwned"
COMPRESSION = {"tar": "", "tar.gz": "gz", "tar.xz": "xz", "tar.bz2": "bz2"}
MiB = 1 << 20

Artifacts = list[dict[str, str]]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[SimpleNamespace, Path], Artifacts]
    refused: str = ""  # a fragment of the refusal message
    accepted: str = ""  # why it is safe
    check: Callable[[Path], None] | None = None  # on the prepared release
    limits: UnpackLimits | None = None  # None: the defaults


def archive(kit: SimpleNamespace, where: Path, name: str, fmt: str, members: list[object], **extra: str) -> Artifacts:
    """One artifact of ``members`` in format ``fmt`` (tar, tar.gz, tar.xz, tar.bz2, zip)."""
    if fmt == "zip":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some cases are made of
            path = kit.zip(where / f"{name}.zip", members)
    else:
        path = kit.tar(where / f"{name}.{fmt}", members, COMPRESSION[fmt])
    return [kit.artifact(path, **extra)]


def members(fmt: str, make: Callable[[SimpleNamespace], list[object]]) -> Callable[[SimpleNamespace, Path], Artifacts]:
    return lambda kit, where: archive(kit, where, "hostile", fmt, make(kit))


def damaged(fmt: str, cut: bool = False) -> Callable[[SimpleNamespace, Path], Artifacts]:
    """A bad build: one incompressible file (stored as is, so no header is hit), then a byte flipped in the middle or
    the end cut off; the sha256 in the manifest is the damaged file's own."""

    def make(kit: SimpleNamespace, where: Path) -> Artifacts:
        good = archive(kit, where, "good", fmt, [kit.file("app/data.bin", os.urandom(256 * 1024))])
        data = bytearray(Path(good[0]["uri"].removeprefix("file://")).read_bytes())
        if cut:
            data = data[: len(data) * 2 // 3]
        else:
            data[len(data) // 2] ^= 0x55
        path = where / f"damaged.{fmt}"
        path.write_bytes(bytes(data))
        return [kit.artifact(path)]

    return make


def damaged_tar_header(kit: SimpleNamespace, where: Path) -> Artifacts:
    """A plain tar whose second header is damaged: tarfile alone would take it for the end of the archive."""
    path = kit.tar(where / "h.tar", [kit.file("app/a", b"a" * 100), kit.file("app/b", b"b")], "")
    data = bytearray(path.read_bytes())
    data[1024 + 100] ^= 0x55  # the mode field of the second header (after the first header and its padded data)
    path.write_bytes(bytes(data))
    return [kit.artifact(path)]


def zip_of_zeros(
    mib: int, declared: int, *, mode: int = 0o100644, crc_of: int | None = None
) -> Callable[..., Artifacts]:
    """A zip whose one member is ``mib`` MiB of deflated zeros and whose headers declare ``declared`` bytes; its CRC is
    the real data's, or that of ``crc_of`` zeros."""

    def make(kit: SimpleNamespace, where: Path) -> Artifacts:
        data, crc = kit.deflated_zeros(mib)
        if crc_of is not None:
            crc = zlib.crc32(b"\0" * crc_of)
        return [kit.artifact(kit.raw_zip(where / "bomb.zip", [("member", mode, data, crc, declared, 8)]))]

    return make


def cross_artifact_escape(kit: SimpleNamespace, where: Path) -> Artifacts:
    """Each archive alone is harmless: the core's link is dangling and lexically inside, the extension's link points
    to itself. Together, 'cfg' climbs out of the release to /etc."""
    hops = 30
    core = archive(
        kit, where, "core", "tar.gz", [kit.symlink("cfg", "ext/" + "l/" * hops + "../" * (hops + 1) + "etc")]
    )
    return core + archive(kit, where, "ext", "tar", [kit.symlink("l", ".")], dest="ext")


def cross_artifact_inside(kit: SimpleNamespace, where: Path) -> Artifacts:
    core = archive(kit, where, "core", "tar.gz", [kit.symlink("docs", "ext/manual")])
    return core + archive(kit, where, "ext", "zip", [kit.file("manual/index.html", b"<h1>")], dest="ext")


def trailing_junk(kit: SimpleNamespace, where: Path) -> Artifacts:
    """A tar.gz whose end-of-archive marker is followed by 256 MiB of zeros in further gzip members."""
    path = kit.zero_bomb_tar(where / "junk.tar.gz", {"app/one.bin": 1}, "gz")
    with open(path, "ab") as out:
        out.write(gzip.compress(b"\0" * MiB, mtime=0) * 256)
    return [kit.artifact(path)]


def pax_bomb(kit: SimpleNamespace, where: Path) -> Artifacts:
    """A pax extended header of 6 MiB: tarfile would read it into memory in one go."""
    path = where / "pax.tar.gz"
    info = tarfile.TarInfo("app/x")
    info.size, info.pax_headers = 1, {"comment": "y" * (6 * MiB)}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    return [kit.artifact(path)]


def zip_with_method(kit: SimpleNamespace, where: Path) -> Artifacts:
    data = b"print('hi')\n" * 100
    member = ("app/x.py", 0o100644, bz2.compress(data), zlib.crc32(data), len(data), 12)
    return [kit.artifact(kit.raw_zip(where / "bz.zip", [member]))]


def file_is(rel: str, content: bytes | None = None, *, size: int | None = None) -> Callable[[Path], None]:
    """The release holds the file ``rel`` with this content, or of this size."""

    def check(release: Path) -> None:
        path = release / rel
        assert path.read_bytes() == content if content is not None else path.stat().st_size == size

    return check


def long_path(depth: int) -> str:
    return "/".join(f"{i:02d}" + "d" * 198 for i in range(depth))


UNICODE = "café/naïve-日本語-🙂/\u202eevil\u202c.txt"  # a right-to-left override: confusing to read, harmless on disk
SMALL = UnpackLimits(max_bytes=4096, max_members=10, max_member_bytes=MiB, max_ratio=200, ratio_threshold=0)

CASES = [
    # -- escapes -------------------------------------------------------------------------------------------------
    Case("tar-absolute", members("tar", lambda b: [b.file(PWNED)]), refused="has an absolute path"),
    Case("zip-absolute", members("zip", lambda b: [b.file(PWNED)]), refused="has an absolute path"),
    Case("tar.xz-dotdot", members("tar.xz", lambda b: [b.file("../escaped")]), refused="contains '..'"),
    Case("zip-dotdot-inside", members("zip", lambda b: [b.file("a/../../escaped")]), refused="contains '..'"),
    Case("tar.bz2-symlink-absolute", members("tar.bz2", lambda b: [b.symlink("etc", "/etc")]), refused="is absolute"),
    Case(
        "zip-symlink-relative-escape",
        members("zip", lambda b: [b.directory("app"), b.symlink("app/up", "../../outside")]),
        refused="points outside the release",
    ),
    Case(
        "tar-symlink-chain",
        members(
            "tar",
            lambda b: [
                b.directory("a"),
                b.symlink("a/self", "."),
                b.symlink("a/deep", "self/../.."),
                b.symlink("x", "a/deep/.."),
            ],
        ),
        refused="resolves outside the release",
    ),
    Case(
        "tar.gz-hardlink-absolute",
        members("tar.gz", lambda b: [b.hardlink("shadow", "/etc/shadow")]),
        refused="points outside",
    ),
    Case(
        "tar-hardlink-dotdot", members("tar", lambda b: [b.hardlink("x", "../outside/file")]), refused="points outside"
    ),
    Case(
        "tar-hardlink-to-a-symlink",
        members("tar", lambda b: [b.symlink("lnk", "a"), b.file("a"), b.hardlink("h", "lnk")]),
        refused="does not point to a regular file of the archive",
    ),
    Case(
        "tar.gz-write-through-own-link",
        members("tar.gz", lambda b: [b.directory("sub"), b.symlink("d", "sub"), b.file("d/x")]),
        refused="would be written through 'd', which the archive makes a symlink",
    ),
    Case(
        "zip-write-through-escaping-link",
        members("zip", lambda b: [b.symlink("conf", "../../etc"), b.file("conf/passwd")]),
        refused="would be written through 'conf'",
    ),
    Case(
        "tar-dir-replaced-by-link",
        members("tar", lambda b: [b.directory("app"), b.file("app/x"), b.symlink("app", "/etc")]),
        refused="'app' appears twice, as a dir and as a symlink",
    ),
    # -- across artifacts ----------------------------------------------------------------------------------------
    Case("cross-artifact-escape", cross_artifact_escape, refused="resolves outside the release"),
    Case(
        "cross-artifact-link-completed-inside",
        cross_artifact_inside,
        accepted="the core's dangling link is completed by the extension's file, inside the release",
        check=file_is("docs/index.html", b"<h1>"),
    ),
    # -- duplicates ----------------------------------------------------------------------------------------------
    Case(
        "tar-file-twice",
        members("tar", lambda b: [b.file("a", b"old"), b.file("a", b"new")]),
        accepted="the later copy replaces the earlier, as tar does (tar -r appends newer copies); both are counted",
        check=file_is("a", b"new"),
    ),
    Case(
        "zip-file-twice",
        members("zip", lambda b: [b.file("a", b"old"), b.file("a", b"new")]),
        accepted="as for tar: the later copy wins, nothing else is touched",
        check=file_is("a", b"new"),
    ),
    Case(
        "tar-file-vs-dir",
        members("tar", lambda b: [b.file("a"), b.directory("a")]),
        refused="appears twice, as a file and as a dir",
    ),
    Case("zip-dir-vs-file", members("zip", lambda b: [b.directory("a"), b.file("a")]), refused="appears twice"),
    Case(
        "tar.gz-file-vs-symlink",
        members("tar.gz", lambda b: [b.file("a"), b.symlink("a", "b")]),
        refused="appears twice, as a file and as a symlink",
    ),
    # -- odd names -----------------------------------------------------------------------------------------------
    Case(
        "tar-weird-unicode",
        members("tar", lambda b: [b.file(UNICODE, b"u")]),
        accepted="a name is bytes on POSIX: no separator or '..' hides in these characters",
        check=file_is(UNICODE, b"u"),
    ),
    Case(
        "zip-weird-unicode",
        members("zip", lambda b: [b.file(UNICODE, b"u")]),
        accepted="zip stores UTF-8 names flagged as such: same file as from tar",
        check=file_is(UNICODE, b"u"),
    ),
    Case("zip-backslashes", members("zip", lambda b: [b.file("..\\..\\evil.txt")]), refused="backslash"),
    Case("zip-windows-drive", members("zip", lambda b: [b.file("C:/Windows/evil.dll")]), refused="absolute path"),
    Case("tar-control-character", members("tar", lambda b: [b.file("bad\nname")]), refused="control character"),
    Case("tar-name-too-long", members("tar", lambda b: [b.file("n" * 300)]), refused="longer than the file system"),
    Case(
        "tar.gz-long-deep-path",
        members("tar.gz", lambda b: [b.file(long_path(8) + "/f", b"deep")]),
        accepted="1.6 KB of 200-byte components stays within NAME_MAX and PATH_MAX",
        check=file_is(long_path(8) + "/f", b"deep"),
    ),
    Case(
        "tar-dot-slash-prefixes",
        members("tar", lambda b: [b.directory("./"), b.directory("./app"), b.file("./app/./x", b"dot")]),
        accepted="'.' components are dropped: the member is app/x",
        check=file_is("app/x", b"dot"),
    ),
    # -- bombs ---------------------------------------------------------------------------------------------------
    Case(
        "tar.gz-ratio-one-member (default limits)",
        lambda kit, where: [kit.artifact(kit.zero_bomb_tar(where / "b.tar.gz", {"big": 2048}, "gz"))],
        refused="declares more than 200 times its own size",
    ),
    Case(
        "tar.xz-ratio-many-members (default limits)",
        lambda kit, where: [
            kit.artifact(kit.zero_bomb_tar(where / "b.tar.xz", {f"f{i}": 1 for i in range(300)}, "xz"))
        ],
        refused="unpack_limits.max_ratio)",
    ),
    Case(
        "zip-ratio (default limits)",
        zip_of_zeros(512, 512 * MiB),
        refused="declares more than 200 times its own size",
    ),
    Case("tar.gz-trailing-junk (default limits)", trailing_junk, refused="goes on past what its members declare"),
    Case("tar.gz-pax-header-bomb (default limits)", pax_bomb, refused="(a forged pax or GNU long-name header)"),
    Case(
        "tar.bz2-total-size",
        members("tar.bz2", lambda b: [b.file(f"f{i}", b"z" * 1024) for i in range(5)]),
        refused="more than 4.0 KiB of files (unpack_limits.max_bytes)",
        limits=SMALL,
    ),
    Case(
        "zip-member-count",
        members("zip", lambda b: [b.file(f"f{i}") for i in range(11)]),
        refused="more than 10 members (unpack_limits.max_members)",
        limits=SMALL,
    ),
    Case(
        "tar-member-count",
        members("tar", lambda b: [b.directory(f"d{i}") for i in range(11)]),
        refused="more than 10 members",
        limits=SMALL,
    ),
    Case(
        "tar.gz-huge-single-member",
        lambda kit, where: [kit.artifact(kit.zero_bomb_tar(where / "b.tar.gz", {"big": 2}, "gz"))],
        refused="unpack_limits.max_member_bytes",
        limits=UnpackLimits(max_member_bytes=MiB),
    ),
    Case(
        "zip-header-declares-3GiB (default limits)",
        zip_of_zeros(1, 3 * 1024 * MiB),
        refused="declares 3.0 GiB, more than unpack_limits.max_member_bytes",
    ),
    Case(
        "zip-header-declares-less-than-it-holds (default limits)",
        zip_of_zeros(256, 1000),
        refused="Bad CRC-32",
    ),
    Case(
        "zip-header-declares-less-crc-of-the-prefix (default limits)",
        zip_of_zeros(256, 1000, crc_of=1000),
        accepted="zipfile stops at the declared 1000 bytes, whose CRC matches: the 256 MiB behind are never inflated",
        check=file_is("member", b"\0" * 1000),
    ),
    Case(
        "tar-sparse (default limits)",
        lambda kit, where: [kit.artifact(kit.sparse_tar(where / "s.tar", "disk.img", 2_500_000_000))],
        refused="is a sparse file",
    ),
    Case(
        "tar.gz-sparse (default limits)",
        lambda kit, where: [kit.artifact(kit.sparse_tar(where / "s.tar.gz", "disk.img", 2_500_000_000, "gz"))],
        refused="rebuild the archive without --sparse",
    ),
    # -- damaged data (the sha256 matches: a bad build) ----------------------------------------------------------
    Case("tar.gz-damaged-mid-stream", damaged("tar.gz"), refused="CRC check failed"),
    Case("tar.xz-damaged-mid-stream", damaged("tar.xz"), refused="is corrupt or truncated"),
    Case("tar.bz2-damaged-mid-stream", damaged("tar.bz2"), refused="is corrupt or truncated"),
    Case("zip-damaged-mid-stream", damaged("zip"), refused="is corrupt or truncated"),
    Case(
        "zip-invalid-deflate-data",
        lambda kit, where: [kit.artifact(kit.raw_zip(where / "z.zip", [("x", 0o100644, b"\xff" * 64, 0, 1000, 8)]))],
        refused="is corrupt or truncated (error: Error -3",
    ),
    Case("tar-damaged-header", damaged_tar_header, refused="no valid member header nor end-of-archive marker"),
    Case(
        "tar-damaged-data",
        damaged("tar"),
        accepted="nothing escapes; a plain tar has no checksum of its data, only the manifest's sha256 vouches for it",
        check=file_is("app/data.bin", size=256 * 1024),
    ),
    Case("tar.gz-truncated", damaged("tar.gz", cut=True), refused="is corrupt or truncated (EOFError"),
    Case("tar.xz-truncated", damaged("tar.xz", cut=True), refused="is corrupt or truncated (EOFError"),
    Case("tar.bz2-truncated", damaged("tar.bz2", cut=True), refused="is corrupt or truncated"),
    Case("tar-truncated", damaged("tar", cut=True), refused="is corrupt or truncated"),
    Case("zip-truncated", damaged("zip", cut=True), refused="neither a tar nor a zip archive"),
    # -- zip specifics -------------------------------------------------------------------------------------------
    Case(
        "zip-symlink-huge-target (default limits)",
        zip_of_zeros(1024, 1024 * MiB, mode=0o120777),
        refused="more than unpack_limits.max_link_target (1024)",
    ),
    Case(
        "zip-symlink-header-declares-small (default limits)",
        zip_of_zeros(1024, 10, mode=0o120777),
        refused="Bad CRC-32",
    ),
    Case("zip-bzip2-member", zip_with_method, refused="uses zip compression method 12"),
    Case("tar.xz-fifo", members("tar.xz", lambda b: [b.Member("pipe", "fifo")]), refused="is a FIFO"),
]


def _disk_use(path: Path) -> int:
    """Bytes really allocated under path (a sparse file counts for what it holds)."""
    return sum(os.lstat(os.path.join(base, name)).st_blocks * 512 for base, _, names in os.walk(path) for name in names)


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding one good release, r0, prepared once; each case works on its own copy."""
    where = tmp_path_factory.mktemp("template")
    core = where / "r0.tar.gz"
    with tarfile.open(core, "w:gz") as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"r0\n"))
    good = {"uri": f"file://{core}", "sha256": hashlib.sha256(core.read_bytes()).hexdigest()}
    ReleaseManager(str(where / "app"), owner_name="tester").prepare("r0", [good], cache_dir=str(where / "cache"))
    return where / "app"


@pytest.fixture
def kit(build: SimpleNamespace, hostile: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(**vars(build), **vars(hostile))


def test_the_corpus_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    assert all(bool(case.refused) != bool(case.accepted) for case in CASES)
    assert {name.split("-")[0] for name in (case.name for case in CASES)} >= {
        "tar",
        "tar.gz",
        "tar.xz",
        "tar.bz2",
        "zip",
    }


def test_the_default_limit_bombs_are_genuine(kit: SimpleNamespace, tmp_path: Path) -> None:
    """The bombs that prove the default limits are MiBs on disk and inflate to GiBs: well past 200 times."""
    gz = kit.zero_bomb_tar(tmp_path / "b.tar.gz", {"big": 2048}, "gz")
    assert 2 * MiB < gz.stat().st_size < 3 * MiB
    with tarfile.open(gz) as tar:
        first = tar.next()
        assert first is not None
        assert first.size == 2048 * MiB
        stream = tar.extractfile(first)
        assert stream is not None
        assert stream.read(MiB) == b"\0" * MiB  # real data behind the header, not a lie
    data, _crc = kit.deflated_zeros(512)
    assert len(data) < MiB
    assert zlib.decompressobj(-15).decompress(data, 4 * MiB) == b"\0" * (4 * MiB)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_archive(  # noqa: PLR0917 -- pytest injects fixtures by position
    case: Case,
    kit: SimpleNamespace,
    prepared_root: Path,
    tmp_path: Path,
    root: Path,
    cache_dir: Path,
) -> None:
    where = tmp_path / "hostile"
    where.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copytree(prepared_root, root, symlinks=True)
    manager = ReleaseManager(str(root), owner_name="tester")
    journal = (root / ".journal.json").read_bytes()
    arts = case.build(kit, where)
    started = time.process_time()  # CPU, not wall-clock: a loaded machine must not fail the test
    if case.refused:
        with pytest.raises(ReleaseError) as refused:
            manager.prepare("hostile", arts, cache_dir=str(cache_dir), limits=case.limits)
        assert case.refused in str(refused.value)
        assert sorted(os.listdir(root / "releases")) == ["r0"], "a refused archive left something behind"
        assert (root / ".journal.json").read_bytes() == journal
    else:
        manager.prepare("hostile", arts, cache_dir=str(cache_dir), limits=case.limits)
        release = root / "releases/hostile"
        assert case.check is not None
        case.check(release)
        real = os.path.realpath(release)
        for base, dirs, files in os.walk(release):
            for name in dirs + files:
                assert os.path.realpath(os.path.join(base, name)).startswith(real + "/"), name
    assert time.process_time() - started < 3, "stopped early, or it would have inflated for seconds more"
    assert os.listdir(outside) == []
    assert not os.path.lexists(PWNED)
    assert _disk_use(tmp_path) < 16 * MiB, "the test wrote far more than its archives"
