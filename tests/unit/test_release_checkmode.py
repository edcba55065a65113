"""Check mode: every operation reports exactly the change a real run makes, and touches nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError

Deploy = Callable[..., None]
Sample = Callable[[str], dict[str, str]]


def _operations(sample: Sample, cache_dir: Path) -> dict[str, Callable[[ReleaseManager], dict[str, Any]]]:
    new = sample("r4")
    old = sample("r1")
    return {
        "prepare-new": lambda m: m.prepare("r4", [new], shared_paths=["data"], cache_dir=str(cache_dir)),
        "prepare-again": lambda m: m.prepare("r1", [old], shared_paths=["data"], cache_dir=str(cache_dir)),
        "activate": lambda m: m.activate("r1"),
        "activate-current": lambda m: m.activate("r3"),
        "rollback": lambda m: m.rollback(reason="check"),
        "rollback-named": lambda m: m.rollback("r1"),
        "prune": lambda m: m.prune(keep=1),
        "prune-nothing": lambda m: m.prune(keep=10),
        "mark_failed": lambda m: m.mark_failed("r2"),
        "lock": lambda m: m.lock(lock_id="x"),
        "unlock": lambda m: m.unlock(),
        "info": lambda m: m.info(),
    }


OPERATIONS = [
    "prepare-new",
    "prepare-again",
    "activate",
    "activate-current",
    "rollback",
    "rollback-named",
    "prune",
    "prune-nothing",
    "mark_failed",
    "lock",
    "unlock",
    "info",
]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_check_mode_predicts_and_touches_nothing(  # noqa: PLR0917 -- pytest injects fixtures by position
    operation: str, deploy: Deploy, sample: Sample, build: SimpleNamespace, root: Path, cache_dir: Path
) -> None:
    deploy("r1", "r2", "r3")
    run = _operations(sample, cache_dir)[operation]
    on_disk = ReleaseManager(str(root), owner_name="tester").info()
    before = build.snapshot(root.parent)

    checked = run(ReleaseManager(str(root), owner_name="tester", check_mode=True))
    assert build.snapshot(root.parent) == before, f"check mode {operation} touched the tree"
    # the state reported is the one on disk: a playbook can plan with it (from current to release)
    for key in ("current", "previous", "rollback_target", "releases", "history", "lock"):
        assert checked[key] == on_disk[key], key

    real = run(ReleaseManager(str(root), owner_name="tester"))
    for key in ("changed", "release", "removed", "path"):
        assert checked.get(key) == real.get(key), key

    # and running the same step again is a no-op (except a rollback without target, which moves on by design)
    if operation not in {"rollback", "lock"}:
        assert run(ReleaseManager(str(root), owner_name="tester"))["changed"] is False


def test_check_mode_reports_the_same_errors(deploy: Deploy, root: Path, build: SimpleNamespace) -> None:
    deploy("r1")
    before = build.snapshot(root.parent)
    checker = ReleaseManager(str(root), owner_name="tester", check_mode=True)
    with pytest.raises(ReleaseError, match="no release to roll back to"):
        checker.rollback()
    with pytest.raises(ReleaseError, match="not prepared"):
        checker.activate("r9")
    with pytest.raises(ReleaseError, match="does not exist"):
        checker.prepare("r9", [{"uri": "file:///nonexistent.tgz", "sha256": "a" * 64}])
    assert build.snapshot(root.parent) == before


def test_check_mode_on_a_fresh_host_creates_nothing(sample: Sample, root: Path, cache_dir: Path) -> None:
    checker = ReleaseManager(str(root), owner_name="tester", check_mode=True)
    result = checker.prepare("r1", [sample("r1")], cache_dir=str(cache_dir))
    assert (result["changed"], result["release"], result["releases"]) == (True, "r1", [])
    assert not root.exists()
    assert not cache_dir.exists()
