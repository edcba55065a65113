"""Random archives of links, files and directories: whatever is accepted never reaches outside the release."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
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
        real_target = os.path.realpath(target)
        for base, dirs, files in os.walk(target):
            for name in dirs + files:
                real = os.path.realpath(os.path.join(base, name))
                assert real == real_target or real.startswith(real_target + "/"), (seed, name, real)
    assert sorted(p.name for p in outside.iterdir()) == ["a"]
    assert list((outside / "a").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["release"]
