"""activate, rollback (target from the journal, never mtimes), mark_failed and release id validation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError, validate_release_id

Deploy = Callable[..., None]


@pytest.mark.parametrize("value", ["r1", "2026.11.28-1", "A", "a_b-c.d", "x" * 64, "9"])
def test_valid_release_ids(value: str) -> None:
    assert validate_release_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "../evil",
        ".hidden",
        "-dash",
        "a/b",
        "a b",
        "x" * 65,
        "current",
        "shared",
        "releases",
        "é",
        "a\nb",
        "..",
        ".",
    ],
)
def test_invalid_release_ids(value: str, manager: ReleaseManager, root: Path) -> None:
    with pytest.raises(ReleaseError, match="release id"):
        validate_release_id(value)
    with pytest.raises(ReleaseError, match="release id"):
        manager.activate(value)
    assert not root.exists()


def test_activate_switches_a_relative_link_and_journals_who(
    deploy: Deploy, manager: ReleaseManager, root: Path
) -> None:
    deploy("r1", activate=False)
    result = manager.activate("r1")
    assert result["changed"] is True
    assert os.readlink(root / "current") == "releases/r1"
    assert (root / "current/VERSION").read_text() == "r1\n"
    event = result["history"][-1]
    assert (event["event"], event["release"], event["by"]) == ("activate", "r1", "tester")
    assert "from" not in event  # nothing was current before
    assert [p for p in os.listdir(root) if ".tmp-" in p] == []


def test_activate_again_changes_nothing(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1")
    before = (root / ".journal.json").read_text()
    again = manager.activate("r1")
    assert again["changed"] is False
    assert (root / ".journal.json").read_text() == before


def test_activate_records_from_and_previous(deploy: Deploy, manager: ReleaseManager) -> None:
    deploy("r1", "r2")
    info = manager.info()
    assert (info["current"], info["previous"], info["rollback_target"]) == ("r2", "r1", "r1")
    assert info["history"][-1]["from"] == "r1"
    assert {r["id"]: r["state"] for r in info["releases"]} == {"r1": "inactive", "r2": "active"}


def test_activate_refuses_unprepared_failed_and_bad(deploy: Deploy, manager: ReleaseManager) -> None:
    with pytest.raises(ReleaseError, match="not prepared"):
        manager.activate("r9")
    deploy("r1", "r2")
    deploy("r3", activate=False)
    manager.mark_failed("r3", reason="compile failed")
    with pytest.raises(ReleaseError, match="marked failed"):
        manager.activate("r3")
    manager.rollback()  # r2 is now bad
    with pytest.raises(ReleaseError, match=r"marked bad.*force=true"):
        manager.activate("r2")
    assert manager.activate("r2", force=True)["current"] == "r2"


def test_rollback_goes_to_the_previous_good_release_and_marks_bad(deploy: Deploy, manager: ReleaseManager) -> None:
    deploy("r1", "r2", "r3")
    first = manager.rollback(reason="verify failed")
    assert (first["current"], first["release"]) == ("r2", "r2")
    states = {r["id"]: r["state"] for r in first["releases"]}
    assert states == {"r1": "inactive", "r2": "active", "r3": "bad"}
    assert first["history"][-1] == {
        **first["history"][-1],
        "event": "rollback",
        "from": "r3",
        "reason": "verify failed",
    }
    second = manager.rollback()
    assert second["current"] == "r1"
    with pytest.raises(ReleaseError, match="no release to roll back to"):
        manager.rollback()


def test_rollback_skips_bad_and_failed_releases(deploy: Deploy, manager: ReleaseManager) -> None:
    deploy("r1", "r2", "r3", "r4")
    manager.rollback()  # r4 bad, on r3
    manager.activate("r4", force=True)  # r4 again: history r1 r2 r3 r4(bad->active) ; r3 left
    manager.rollback()  # r4 bad again, back to r3
    manager.rollback()  # r3 bad, back to r2
    result = manager.rollback()  # r2 bad -> r1
    assert result["current"] == "r1"
    assert result["rollback_target"] is None


def test_rollback_target_ignores_mtimes(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1", "r2", "r3")
    future = time.time() + 10_000
    os.utime(root / "releases/r1", (future, future))  # r1 looks newest on disk
    assert manager.rollback()["current"] == "r2"


def test_rollback_to_a_named_release(deploy: Deploy, manager: ReleaseManager) -> None:
    deploy("r1", "r2", "r3")
    result = manager.rollback("r1", reason="incident 42")
    assert result["current"] == "r1"
    assert {r["id"]: r["state"] for r in result["releases"]}["r3"] == "bad"
    assert manager.rollback("r1")["changed"] is False  # named rollback is idempotent


def test_rollback_with_nothing_current(manager: ReleaseManager) -> None:
    with pytest.raises(ReleaseError, match="no release is current"):
        manager.rollback()


def test_mark_failed_rules(deploy: Deploy, manager: ReleaseManager) -> None:
    deploy("r1")
    deploy("r2", activate=False)
    with pytest.raises(ReleaseError, match="is current"):
        manager.mark_failed("r1")
    with pytest.raises(ReleaseError, match="not in the journal"):
        manager.mark_failed("r9")
    assert manager.mark_failed("r2", reason="hook")["changed"] is True
    assert manager.mark_failed("r2")["changed"] is False


def test_current_that_is_a_directory_is_not_clobbered(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1", activate=False)
    (root / "current").mkdir()
    with pytest.raises(ReleaseError, match="not a symlink"):
        manager.activate("r1")
    assert (root / "current").is_dir()


def test_info_on_a_fresh_root_creates_nothing(manager: ReleaseManager, root: Path) -> None:
    info = manager.info()
    assert (info["changed"], info["current"], info["releases"], info["lock"]) == (False, None, [], None)
    assert not root.exists()
