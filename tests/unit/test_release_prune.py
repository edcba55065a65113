"""prune: selection by last activation in the journal; current, previous and failed releases handled."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.prune import select_prunable
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError

Deploy = Callable[..., None]


def _rec(state: str, seq: int | None) -> dict[str, Any]:
    return {"state": state, "activated_seq": seq}


# (releases, keep, protected, expected removal)
PRUNE_TABLE = [
    pytest.param({}, 5, set(), [], id="empty"),
    pytest.param(
        {f"r{i}": _rec("inactive", i) for i in range(1, 8)} | {"r8": _rec("active", 8)},
        3,
        {"r8", "r7"},
        ["r1", "r2", "r3", "r4", "r5"],
        id="keep-3-of-8",
    ),
    pytest.param(
        {"r1": _rec("inactive", 1), "r2": _rec("active", 2)}, 0, {"r2", "r1"}, [], id="keep-0-still-keeps-protected"
    ),
    pytest.param(
        {"f1": _rec("failed", None), "f2": _rec("failed", None), "r1": _rec("inactive", 1), "r2": _rec("active", 2)},
        2,
        {"r2", "r1"},
        ["f1", "f2"],
        id="never-activated-failed-go-and-do-not-count",
    ),
    pytest.param(
        {"p1": _rec("prepared", None), "r1": _rec("inactive", 1), "r2": _rec("active", 2)},
        1,
        {"r2"},
        ["r1"],
        id="prepared-never-activated-stay",
    ),
    pytest.param(
        # order comes from the journal sequence, not from names or disk: r9 was activated first
        {"r9": _rec("inactive", 1), "r1": _rec("inactive", 5), "r5": _rec("active", 9)},
        2,
        {"r5"},
        ["r9"],
        id="journal-order-not-name-order",
    ),
    pytest.param(
        {"r1": _rec("bad", 3), "r2": _rec("inactive", 1), "r3": _rec("active", 4)},
        1,
        {"r3", "r1", "r2"},
        [],
        id="previous-bad-and-rollback-target-both-protected",
    ),
    pytest.param(
        {"r1": _rec("failed", 2), "r2": _rec("active", 3), "r0": _rec("inactive", 1)},
        2,
        {"r2"},
        ["r0"],
        id="activated-then-failed-counts-as-activated",
    ),
]


@pytest.mark.parametrize(("releases", "keep", "protected", "expected"), PRUNE_TABLE)
def test_select_prunable(releases: dict[str, Any], keep: int, protected: set[str], expected: list[str]) -> None:
    assert select_prunable(releases, keep, protected) == expected


def test_prune_never_removes_current_or_previous(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1", "r2", "r3", "r4")
    result = manager.prune(keep=1)
    assert result["removed"] == ["r1", "r2"]
    assert sorted(os.listdir(root / "releases")) == ["r3", "r4"]
    assert result["history"][-1]["event"] == "prune"
    assert manager.prune(keep=1)["changed"] is False


def test_prune_after_rollbacks_keeps_the_release_left(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1", "r2", "r3")
    manager.rollback()  # r3 bad, current r2
    manager.rollback("r1")  # r2 bad, current r1, previous r2
    deploy("r5", activate=False)
    manager.mark_failed("r5")
    result = manager.prune(keep=1)
    assert result["removed"] == ["r3", "r5"]
    assert sorted(os.listdir(root / "releases")) == ["r1", "r2"]


def test_prune_removes_leftover_temporary_items_but_not_busy_ones(
    deploy: Deploy, manager: ReleaseManager, root: Path
) -> None:
    deploy("r1")
    stale = root / "releases/.tmp-r2-dead"
    stale.mkdir()
    (stale / "half").write_text("x")
    (root / "current.tmp-dead").symlink_to("releases/r1")
    busy = root / "releases/.tmp-r3-busy"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a prepare in progress holds
    try:
        result = manager.prune(keep=5)
    finally:
        os.close(fd)
    assert result["changed"] is True
    assert result["removed"] == []
    assert sorted(result["removed_tmp"]) == [".tmp-r2-dead", "current.tmp-dead"]
    assert not stale.exists()
    assert busy.exists()
    assert os.readlink(root / "current") == "releases/r1"


def test_operations_on_a_missing_root_create_nothing(manager: ReleaseManager, root: Path) -> None:
    assert manager.prune(keep=1)["changed"] is False
    assert manager.unlock()["changed"] is False
    with pytest.raises(ReleaseError, match="not prepared"):
        manager.activate("r1")
    assert not root.exists()


def test_prune_drops_cached_artifacts_no_release_uses(
    manager: ReleaseManager, sample: Callable[[str], dict[str, str]], root: Path, cache_dir: Path
) -> None:
    arts = {v: sample(v) for v in ("r1", "r2", "r3")}
    for version in ("r1", "r2", "r3"):
        manager.prepare(version, [arts[version]], cache_dir=str(cache_dir))
        manager.activate(version)
    manager.prepare("r1-again", [arts["r1"]], cache_dir=str(cache_dir))  # still needs r1's archive
    result = manager.prune(keep=1, cache_dir=str(cache_dir))
    assert result["removed"] == ["r1"]
    assert result["removed_cache"] == []  # r1-again keeps r1's archive
    manager.mark_failed("r1-again")
    manager.activate("r2")
    manager.activate("r3")
    result = manager.prune(keep=1, cache_dir=str(cache_dir))
    assert result["removed"] == ["r1-again"]
    assert result["removed_cache"] == [arts["r1"]["sha256"]]
    assert sorted(os.listdir(cache_dir)) == sorted(
        name for v in ("r2", "r3") for name in (arts[v]["sha256"], f"{arts[v]['sha256']}.uris")
    )


def test_prune_rejects_negative_keep(manager: ReleaseManager) -> None:
    with pytest.raises(ReleaseError, match="keep"):
        manager.prune(keep=-1)
