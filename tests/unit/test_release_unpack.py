"""Safe unpack: hostile archives are refused and leave nothing behind; good archives unpack faithfully."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils import unpack
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError
from ansible_collections.unistra.itop.plugins.module_utils.unpack import UnpackLimits, unpack_archive

HOSTILE_TARS = {
    "absolute": lambda b: [b.file("/tmp/unistra-itop-test-pwned")],
    "dotdot": lambda b: [b.file("VERSION"), b.file("../escaped")],
    "dotdot-inside": lambda b: [b.file("app/../../escaped")],
    "symlink-absolute": lambda b: [b.symlink("etc-link", "/etc"), b.file("etc-link/pwned")],
    "symlink-relative-escape": lambda b: [b.directory("app"), b.symlink("app/up", "../../outside")],
    # each link is lexically inside, the chain is not: up -> .  then up/.. resolves through the link
    "symlink-chain": lambda b: [
        b.directory("a"),
        b.symlink("a/self", "."),
        b.symlink("a/deep", "self/../.."),
        b.symlink("escape", "a/deep/.."),
    ],
    "hardlink-absolute": lambda b: [b.hardlink("shadow", "/etc/shadow")],
    "hardlink-dotdot": lambda b: [b.hardlink("shadow", "../outside/file")],
    "hardlink-dangling": lambda b: [b.hardlink("shadow", "nothing-here")],
    "device": lambda b: [b.Member("dev-null", "chr")],
    "fifo": lambda b: [b.Member("pipe", "fifo")],
}

HOSTILE_ZIPS = {
    "zip-dotdot": lambda b: [b.file("ok.txt"), b.file("../escaped")],
    "zip-absolute": lambda b: [b.file("/tmp/unistra-itop-test-pwned")],
    "zip-symlink-escape": lambda b: [b.symlink("link", "../../etc")],
    "zip-device": lambda b: [b.Member("dev", "chr")],
}


def _assert_no_trace(root: Path, release: str) -> None:
    releases = root / "releases"
    leftovers = sorted(p.name for p in releases.iterdir()) if releases.exists() else []
    assert leftovers == [], f"refused archive left {leftovers}"
    assert not (root / "current").exists()
    assert not (root.parent / "escaped").exists()
    assert not (root.parent / "outside").exists()
    assert not Path("/tmp/unistra-itop-test-pwned").exists()
    journal = root / ".journal.json"
    if journal.exists():
        assert release not in journal.read_text()


HOSTILE = [("tar", name) for name in sorted(HOSTILE_TARS)] + [("zip", name) for name in sorted(HOSTILE_ZIPS)]


@pytest.mark.parametrize(("fmt", "name"), HOSTILE, ids=[name for _fmt, name in HOSTILE])
def test_hostile_archive_is_refused_and_leaves_nothing(  # noqa: PLR0917 -- pytest injects fixtures by position
    fmt: str, name: str, build: SimpleNamespace, artifacts_dir: Path, root: Path, cache_dir: Path
) -> None:
    if fmt == "tar":
        path = build.tar(artifacts_dir / f"{name}.tar.gz", HOSTILE_TARS[name](build))
    else:
        path = build.zip(artifacts_dir / f"{name}.zip", HOSTILE_ZIPS[name](build))
    manager = ReleaseManager(str(root), owner_name="tester")
    with pytest.raises(ReleaseError, match=r"refusing archive"):
        manager.prepare("hostile", [build.artifact(path)], cache_dir=str(cache_dir))
    _assert_no_trace(root, "hostile")


def test_refusal_happens_before_any_write(build: SimpleNamespace, tmp_path: Path) -> None:
    """A hostile member late in the archive must not let the earlier members be written."""
    path = build.tar(tmp_path / "late.tar", [build.file("first.txt"), build.Member("dev", "chr")], compression="")
    target = tmp_path / "target"
    with pytest.raises(ReleaseError, match="device"):
        unpack_archive(str(path), str(target))
    assert not (target / "first.txt").exists()


def test_symlink_escape_through_previous_artifact_link_is_refused(
    build: SimpleNamespace, artifacts_dir: Path, root: Path, cache_dir: Path
) -> None:
    """A second artifact writing through a directory link made by the first one stays inside the release."""
    outside = root.parent / "outside"
    outside.mkdir(parents=True)
    core = build.tar(artifacts_dir / "core.tar.gz", [build.directory("ext"), build.symlink("ext/plug", "..")])
    ext = build.tar(artifacts_dir / "ext.tar.gz", [build.file("x.txt")])
    manager = ReleaseManager(str(root), owner_name="tester")
    # ext/plug -> .. is the release root: allowed, and the extension lands inside the release.
    manager.prepare("r1", [build.artifact(core), build.artifact(ext, dest="ext/plug/sub")], cache_dir=str(cache_dir))
    assert (root / "releases/r1/sub/x.txt").read_bytes() == b"x"
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_formats_unpack_faithfully(compression: str, build: SimpleNamespace, tmp_path: Path) -> None:
    path = build.tar(tmp_path / f"app.tar.{compression or 'plain'}", build.sample_members("r1"), compression)
    target = tmp_path / "out"
    unpacked = unpack_archive(str(path), str(target))
    assert unpacked.entries == len(build.sample_members("r1"))
    assert unpacked.symlinks == ("app/current-version",)
    assert (target / "VERSION").read_text() == "r1\n"
    assert os.readlink(target / "app/current-version") == "../VERSION"
    assert (target / "app/current-version").read_text() == "r1\n"
    assert stat.S_IMODE((target / "app/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "app/main.py").stat().st_mode) == 0o644


def test_hardlink_inside_archive_is_kept(build: SimpleNamespace, tmp_path: Path) -> None:
    path = build.tar(tmp_path / "h.tar", [build.file("a.txt", b"same"), build.hardlink("b.txt", "a.txt")], "")
    unpack_archive(str(path), str(tmp_path / "out"))
    a, b = (tmp_path / "out/a.txt").stat(), (tmp_path / "out/b.txt").stat()
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def test_setuid_and_world_writable_bits_are_dropped(build: SimpleNamespace, tmp_path: Path) -> None:
    path = build.tar(tmp_path / "m.tar", [build.file("suid", b"x", 0o4777)], "")
    unpack_archive(str(path), str(tmp_path / "out"))
    assert stat.S_IMODE((tmp_path / "out/suid").stat().st_mode) == 0o755


def test_zip_unpacks_files_dirs_and_inner_symlinks(build: SimpleNamespace, tmp_path: Path) -> None:
    members = [
        build.directory("web"),
        build.file("web/index.php", b"<?php"),
        build.symlink("web/alias.php", "index.php"),
    ]
    path = build.zip(tmp_path / "a.zip", members)
    unpack_archive(str(path), str(tmp_path / "out"))
    assert (tmp_path / "out/web/index.php").read_bytes() == b"<?php"
    assert os.readlink(tmp_path / "out/web/alias.php") == "index.php"


def test_zip_without_unix_modes_gets_usual_modes(tmp_path: Path) -> None:
    """A zip made on Windows carries no Unix mode: directories 0755, files 0644, readable by the web server."""
    path = tmp_path / "win.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in (("web/", b""), ("web/index.php", b"<?php")):
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 0  # MS-DOS
            info.external_attr = 0x10 if name.endswith("/") else 0x20  # DOS directory / archive bits only
            archive.writestr(info, data)
    unpack_archive(str(path), str(tmp_path / "out"))
    assert stat.S_IMODE((tmp_path / "out/web").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out/web/index.php").stat().st_mode) == 0o644


def test_subdir_becomes_the_target_and_the_rest_is_ignored(build: SimpleNamespace, tmp_path: Path) -> None:
    members = [
        build.file("README", b"top"),
        build.directory("web"),
        build.file("web/index.php", b"<?php"),
        build.directory("web/conf"),
        build.file("web/conf/a", b"a"),
        build.hardlink("web/conf/b", "web/conf/a"),
    ]
    path = build.tar(tmp_path / "s.tar.gz", members)
    target = tmp_path / "out"
    unpack_archive(str(path), str(target), subdir="web")
    assert sorted(os.listdir(target)) == ["conf", "index.php"]
    assert (target / "conf/b").read_bytes() == b"a"


def test_subdir_symlink_must_stay_inside_subdir(build: SimpleNamespace, tmp_path: Path) -> None:
    members = [build.file("secret", b"s"), build.directory("web"), build.symlink("web/leak", "../secret")]
    path = build.tar(tmp_path / "s.tar.gz", members)
    with pytest.raises(ReleaseError, match="outside"):
        unpack_archive(str(path), str(tmp_path / "out"), subdir="web")


def test_hardlink_leaving_subdir_is_refused(build: SimpleNamespace, tmp_path: Path) -> None:
    members = [build.file("secret", b"s"), build.directory("web"), build.hardlink("web/leak", "secret")]
    path = build.tar(tmp_path / "s.tar.gz", members)
    with pytest.raises(ReleaseError, match="outside subdir"):
        unpack_archive(str(path), str(tmp_path / "out"), subdir="web")


def test_missing_subdir_is_a_clear_error(build: SimpleNamespace, tmp_path: Path) -> None:
    path = build.tar(tmp_path / "s.tar.gz", [build.file("a")])
    with pytest.raises(ReleaseError, match="subdir 'web' not found"):
        unpack_archive(str(path), str(tmp_path / "out"), subdir="web")


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"this is not an archive at all")
    with pytest.raises(ReleaseError, match="neither a tar nor a zip"):
        unpack_archive(str(path), str(tmp_path / "out"))


def test_links_of_two_artifacts_escaping_together_are_refused_naming_both(
    build: SimpleNamespace, artifacts_dir: Path, root: Path, cache_dir: Path, sample: Callable[[str], dict[str, str]]
) -> None:
    """The core's link is dangling and lexically inside; the extension's link points to itself. Each passes its own
    artifact's checks; together 'cfg' resolves to /etc. The whole release is checked once both are in place."""
    hops = 30
    core = build.tar(
        artifacts_dir / "core.tar.gz", [build.symlink("cfg", "ext/" + "l/" * hops + "../" * hops + "../etc")]
    )
    ext = build.tar(artifacts_dir / "ext.tar", [build.symlink("l", ".")], "")
    manager = ReleaseManager(str(root), owner_name="tester")
    manager.prepare("r0", [sample("r0")], cache_dir=str(cache_dir))
    journal = (root / ".journal.json").read_bytes()
    with pytest.raises(ReleaseError) as refused:
        manager.prepare("r1", [build.artifact(core), build.artifact(ext, dest="ext")], cache_dir=str(cache_dir))
    message = str(refused.value)
    assert "symlink 'cfg' (from file://" in message
    assert "resolves outside the release, to /etc" in message
    assert "'ext/l' -> '.'" in message
    assert str(core) in message and str(ext) in message
    assert os.listdir(root / "releases") == ["r0"]
    assert (root / ".journal.json").read_bytes() == journal


def test_shared_links_made_after_the_check_may_leave_the_release(
    build: SimpleNamespace, artifacts_dir: Path, root: Path, cache_dir: Path
) -> None:
    """shared_paths point to ../../shared by design: they are made after the release's links are checked."""
    core = build.tar(artifacts_dir / "core.tar.gz", [build.directory("conf"), build.file("conf/app.ini", b"a=1")])
    manager = ReleaseManager(str(root), owner_name="tester")
    manager.prepare("r1", [build.artifact(core)], shared_paths=["conf"], cache_dir=str(cache_dir))
    assert os.readlink(root / "releases/r1/conf") == "../../shared/conf"


def test_free_space_is_checked_before_anything_is_written(
    build: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = build.tar(tmp_path / "a.tar.gz", [build.file("big.bin", b"b" * 100_000)])
    # 64 free blocks of 4 KiB: 256 KiB, less than the 100 KB file plus the 256 MiB default margin
    monkeypatch.setattr(
        os, "statvfs", lambda _path: os.statvfs_result((4096, 4096, 1000, 64, 64, 100, 100, 100, 0, 255))
    )
    target = tmp_path / "out"
    with pytest.raises(
        ReleaseError, match=r"not enough free space .* must stay free \(unpack_limits.free_space_margin\)"
    ):
        unpack_archive(str(path), str(target))
    assert not target.exists()
    unpack_archive(str(path), str(target), limits=UnpackLimits(free_space_margin=0))
    assert (target / "big.bin").stat().st_size == 100_000


def test_free_inodes_are_checked_before_anything_is_written(
    build: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = build.tar(tmp_path / "a.tar", [build.file(f"f{i}") for i in range(5)], "")
    free = os.statvfs_result((4096, 4096, 10**9, 10**9, 10**9, 100, 3, 3, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda _path: free)
    with pytest.raises(ReleaseError, match="not enough free inodes"):
        unpack_archive(str(path), str(tmp_path / "out"))


def test_bytes_written_are_counted_whatever_the_headers_say(tmp_path: Path) -> None:
    """The standard readers stop at the declared size; the copy does not rely on it: it refuses a member that yields
    more than its header declares, and stops the artifact as soon as the bytes written pass the cap."""
    tally = unpack._Tally(UnpackLimits(max_bytes=10, ratio_threshold=10), 1, "forged.zip")
    lying = unpack._Entry("a", unpack.KIND_FILE, 0o644, 0.0, size=4)
    with pytest.raises(ReleaseError, match="holds more data than the 4 bytes its header declares"):
        unpack._copy_member(io.BytesIO(b"x" * 1000), io.BytesIO(), lying, tally)
    honest = unpack._Entry("b", unpack.KIND_FILE, 0o644, 0.0, size=8)
    out = io.BytesIO()
    unpack._copy_member(io.BytesIO(b"y" * 8), out, honest, tally)
    with pytest.raises(ReleaseError, match="writes more than 10 bytes of files"):
        unpack._copy_member(io.BytesIO(b"z" * 8), out, honest, tally)
    assert out.getvalue() == b"y" * 8  # the chunk that would pass the cap is never written
    short = unpack._Entry("c", unpack.KIND_FILE, 0o644, 0.0, size=8)
    with pytest.raises(ReleaseError, match="holds 2 bytes, its header declares 8"):
        unpack._copy_member(io.BytesIO(b"zz"), io.BytesIO(), short, unpack._Tally(UnpackLimits(), 1, "short.tar"))


def test_a_small_archive_of_repetitive_text_passes_below_the_ratio_threshold(
    build: SimpleNamespace, tmp_path: Path
) -> None:
    path = build.tar(tmp_path / "text.tar.xz", [build.file("app/log.txt", b"INFO all is well\n" * 200_000)], "xz")
    assert (200_000 * 17) / path.stat().st_size > 200  # over the default ratio, but only 3.4 MB
    unpack_archive(str(path), str(tmp_path / "out"))
    assert (tmp_path / "out/app/log.txt").stat().st_size == 200_000 * 17
    with pytest.raises(ReleaseError, match="times its own size"):
        unpack_archive(str(path), str(tmp_path / "out2"), limits=UnpackLimits(ratio_threshold=0))


def test_release_tree_refuses_a_hard_link_to_a_file_outside(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    (tmp_path / "secret").write_bytes(b"s")
    os.link(tmp_path / "secret", release / "copy")
    with pytest.raises(ReleaseError, match="'copy' is a hard link to a file outside the release"):
        unpack.check_release_tree(str(release), {})
    os.unlink(tmp_path / "secret")
    unpack.check_release_tree(str(release), {})  # both names now inside: fine


def test_release_tree_refuses_what_is_not_a_file_dir_or_link(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    os.mkfifo(release / "pipe")
    with pytest.raises(ReleaseError, match="'pipe' is neither a file, a directory nor a symlink"):
        unpack.check_release_tree(str(release), {})


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_damaged_stream_is_a_release_error_naming_the_artifact(
    compression: str, build: SimpleNamespace, tmp_path: Path
) -> None:
    path = build.tar(tmp_path / f"a.tar.{compression}", [build.file("f.bin", os.urandom(100_000))], compression)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=r"archive https://artifacts/a is corrupt or truncated"):
        unpack_archive(str(path), str(tmp_path / "out"), label="https://artifacts/a")


def test_a_relative_target_is_fine(build: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-space probe walks up to an existing directory: from a relative path too."""
    path = build.tar(tmp_path / "a.tar.gz", [build.file("f", b"f")])
    monkeypatch.chdir(tmp_path)
    unpack_archive(str(path), "out/sub")
    assert (tmp_path / "out/sub/f").read_bytes() == b"f"


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to make a real sparse archive")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_sparse_file_made_by_gnu_tar_is_refused(fmt: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "disk.img", "wb") as handle:
        handle.truncate(50_000_000)  # a hole: no block allocated
    path = tmp_path / f"sparse-{fmt}.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cSf", str(path), "-C", str(source), "disk.img"], check=True)
    with pytest.raises(ReleaseError, match=r"'disk\.img' is a sparse file"):
        unpack_archive(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
