"""The engine's side of the database-aware rollback: the planning call, metadata from hooks, and releases a restore
leaves behind (they never come back as they were)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError

Deploy = Callable[..., None]


def upgraded(manager: ReleaseManager, rid: str, schema: str, previous: str | None) -> None:
    """What an application's hook records after its setup: schema, and the upgrade with its dump."""
    metadata = {"schema_version": schema}
    if previous:
        metadata.update(upgraded_from=previous, db_dump=f"/backups/{rid}.sql.gz")
    manager.annotate(rid, metadata)


@pytest.fixture
def three(deploy: Deploy, manager: ReleaseManager) -> ReleaseManager:
    """r1 (s1) -> r2 (s2, upgraded from r1) -> r3 (s3, upgraded from r2), r3 current."""
    for rid, schema, previous in (("r1", "s1", None), ("r2", "s2", "r1"), ("r3", "s3", "r2")):
        deploy(rid, activate=False)
        upgraded(manager, rid, schema, previous)
        manager.activate(rid)
    return manager


def test_annotate_merges_metadata_and_is_idempotent(deploy: Deploy, manager: ReleaseManager) -> None:
    deploy("r1")
    first = manager.annotate("r1", {"schema_version": "s1"})
    assert first["changed"] is True
    assert first["releases"][0]["metadata"] == {"schema_version": "s1"}
    assert first["history"][-1]["event"] == "annotate"
    assert manager.annotate("r1", {"schema_version": "s1"})["changed"] is False
    with pytest.raises(ReleaseError, match="not in the journal"):
        manager.annotate("r9", {"x": 1})
    with pytest.raises(ReleaseError, match="needs metadata"):
        manager.annotate("r1", {})


def test_plan_rollback_changes_nothing_and_says_what_is_needed(three: ReleaseManager, root: Path) -> None:
    before = (root / ".journal.json").read_bytes()
    refused = three.plan_rollback()
    assert refused["changed"] is False
    assert refused["plan"]["action"] == "refuse"
    assert refused["plan"]["target"] == "r2"
    assert "restore_db=true" in refused["msg"]
    restore = three.plan_rollback("r1", restore_db=True)["plan"]
    assert (restore["action"], restore["restore_via"], restore["dump"]) == ("restore", "r2", "/backups/r2.sql.gz")
    assert (root / ".journal.json").read_bytes() == before
    with pytest.raises(ReleaseError, match="not prepared"):
        three.plan_rollback("r9")


def test_releases_left_by_a_restoring_rollback_need_a_fresh_prepare(
    three: ReleaseManager, sample: Callable[[str], dict[str, str]], cache_dir: Path
) -> None:
    result = three.rollback("r1", restored_db=True)
    states = {r["id"]: r["state"] for r in result["releases"]}
    assert (result["current"], states["r2"], states["r3"]) == ("r1", "bad", "bad")
    # their code expects schemas the restore removed: not even force, nor a rollback "forward", brings them back
    for attempt in (lambda: three.activate("r3", force=True), lambda: three.rollback("r2")):
        with pytest.raises(ReleaseError, match=r"cannot come back as it is.*Prepare it again"):
            attempt()
    # a fresh prepare rebuilds the tree (its setup runs again); then it may be activated
    again = three.prepare("r2", [sample("r2")], shared_paths=["data"], cache_dir=str(cache_dir))
    assert again["changed"] is True
    assert three.activate("r2")["current"] == "r2"


def test_a_rollback_without_restore_marks_no_release_stale(three: ReleaseManager) -> None:
    three.rollback("r2")
    assert three.activate("r3", force=True)["current"] == "r3"  # bad only: force may bring it back


def test_prune_removes_the_dumps_of_the_releases_it_removes(
    deploy: Deploy, manager: ReleaseManager, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    for rid in ("r1", "r2", "r3", "r4"):
        deploy(rid, activate=False)
        (backups / f"{rid}.sql.gz").write_bytes(b"dump")
        manager.annotate(rid, {"schema_version": rid, "db_dump": str(backups / f"{rid}.sql.gz")})
        manager.activate(rid)
    predicted = ReleaseManager(str(manager.root), owner_name="tester", check_mode=True).prune(keep=1)
    assert predicted["removed_dumps"] == [str(backups / "r1.sql.gz"), str(backups / "r2.sql.gz")]
    assert sorted(p.name for p in backups.iterdir()) == ["r1.sql.gz", "r2.sql.gz", "r3.sql.gz", "r4.sql.gz"]
    result = manager.prune(keep=1)
    assert result["removed"] == ["r1", "r2"]
    assert sorted(p.name for p in backups.iterdir()) == ["r3.sql.gz", "r4.sql.gz"]
