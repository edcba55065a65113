"""Random archives of links, files and directories: whatever is accepted never reaches outside the release."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError
from ansible_collections.unistra.itop.plugins.module_utils.unpack import unpack_archive

NAMES = ["a", "b", "a/b", "a/c", "b/a", "c", "a/b/c", "d/e"]
TARGETS = [".", "..", "../..", "a", "../a", "b/..", "a/../..", "../outside", "/etc", "a/b/../../..", "c/.."]


def _random_members(rng: random.Random, build: SimpleNamespace) -> list[object]:
    members: list[object] = []
    for _ in range(rng.randint(1, 7)):
        name = rng.choice(NAMES)
        kind = rng.choice(["file", "dir", "symlink", "symlink", "hardlink"])
        if kind == "file":
            members.append(build.file(name, b"data"))
        elif kind == "dir":
            members.append(build.directory(name))
        elif kind == "symlink":
            members.append(build.symlink(name, rng.choice(TARGETS)))
        else:
            members.append(build.hardlink(name, rng.choice(NAMES)))
    return members


def _assert_resolves_inside(tree: Path, seed: int) -> None:
    real_tree = os.path.realpath(tree)
    for base, dirs, files in os.walk(tree):
        for name in dirs + files:
            real = os.path.realpath(os.path.join(base, name))
            assert real == real_tree or real.startswith(real_tree + "/"), (seed, name, real)


def _assert_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["a"]
    assert list((outside / "a").iterdir()) == []


@pytest.mark.parametrize("seed", range(150))
def test_accepted_archives_stay_inside(seed: int, build: SimpleNamespace, tmp_path: Path) -> None:
    rng = random.Random(seed)  # noqa: S311 -- reproducible test data, not cryptography
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a").mkdir()
    target = tmp_path / "box" / "release"
    target.mkdir(parents=True)
    path = build.tar(tmp_path / "random.tar", _random_members(rng, build), compression="")
    try:
        unpack_archive(str(path), str(target))
    except ReleaseError:
        pass  # refused: the caller discards the temporary directory
    else:
        _assert_resolves_inside(target, seed)
    _assert_untouched(outside)
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["release"]


EXT_TARGETS = ["ext", "ext/a", "ext/b/..", "ext/a/../..", "ext/l/../..", "ext/l/l/../../..", "l/..", "c/../..", "a/x"]
INNER_TARGETS = [".", "a", "b", "x/..", "l", "l/l", "../ext", "a/b"]


@pytest.mark.parametrize("seed", range(80))
def test_two_artifacts_accepted_together_stay_inside(seed: int, build: SimpleNamespace, tmp_path: Path) -> None:
    """A core and an extension (at dest ext) made of random links: whatever prepare accepts never resolves outside
    the release, and a refusal leaves nothing."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible test data, not cryptography
    outside = tmp_path / "outside"
    (outside / "a").mkdir(parents=True)
    core = [build.symlink(name, rng.choice(EXT_TARGETS)) for name in rng.sample(["l", "a", "c", "d/x"], 3)]
    ext = [
        build.symlink(name, rng.choice(INNER_TARGETS)) for name in rng.sample(["l", "a", "b", "x"], rng.randint(1, 3))
    ]
    core_path = build.tar(tmp_path / "core.tar", core, compression="")
    ext_path = build.tar(tmp_path / "ext.tar", ext, compression="")
    root = tmp_path / "box" / "app"
    manager = ReleaseManager(str(root), owner_name="tester")
    arts = [build.artifact(core_path), build.artifact(ext_path, dest="ext")]
    try:
        manager.prepare("r1", arts, cache_dir=str(tmp_path / "cache"))
    except ReleaseError:
        assert os.listdir(root / "releases") == []
    else:
        _assert_resolves_inside(root / "releases/r1", seed)
    _assert_untouched(outside)
