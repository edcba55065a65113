"""The database side of a rollback: one pure rule for every application (MariaDB for iTop, PostgreSQL for the hub)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.db_rollback import (
    ACTION_NONE,
    ACTION_REFUSE,
    ACTION_RESTORE,
    ACTION_SWITCH,
    find_restore_via,
    plan_rollback,
    schema_stale_after_restore,
)


def chain(*steps: tuple[str, str | None, bool]) -> dict[str, dict[str, Any]]:
    """Releases in deployment order: (id, schema, upgraded the database from the one before)."""
    releases: dict[str, dict[str, Any]] = {}
    previous = None
    for rid, schema, upgraded in steps:
        metadata: dict[str, Any] = {"schema_version": schema} if schema else {}
        if upgraded and previous:
            metadata.update(upgraded_from=previous, db_dump=f"/backups/{rid}.sql.gz")
        releases[rid] = {"id": rid, "metadata": metadata}
        previous = rid
    return releases


@pytest.mark.parametrize(
    ("target", "via"),
    [("r3", "r4"), ("r2", "r3"), ("r1", "r2")],
    ids=["one schema change", "two schema changes", "three schema changes"],
)
def test_restore_through_one_two_and_three_schema_changes(target: str, via: str) -> None:
    releases = chain(("r1", "s1", False), ("r2", "s2", True), ("r3", "s3", True), ("r4", "s4", True))
    plan = plan_rollback(releases, "r4", target, restore_db=True)
    assert (plan.action, plan.restore_via, plan.dump) == (ACTION_RESTORE, via, f"/backups/{via}.sql.gz")
    assert plan.schema_changes
    assert (plan.schema_from, plan.schema_to) == ("s4", releases[target]["metadata"]["schema_version"])


def test_same_schema_switches_the_code_only() -> None:
    # r2 -> r3 re-ran the installer in upgrade mode without changing the schema (a code-only release)
    releases = chain(("r1", "s1", False), ("r2", "s2", True), ("r3", "s2", True))
    plan = plan_rollback(releases, "r3", "r2", restore_db=False)
    assert (plan.action, plan.schema_changes, plan.dump) == (ACTION_SWITCH, False, None)


def test_without_restore_db_a_schema_change_is_refused_with_what_to_do() -> None:
    releases = chain(("r1", "s1", False), ("r2", "s2", True))
    plan = plan_rollback(releases, "r2", "r1", restore_db=False)
    assert plan.action == ACTION_REFUSE
    assert plan.restore_via == "r2"
    assert "Nothing was changed" in plan.reason
    assert "restore_db=true" in plan.reason
    assert "LOST" in plan.reason


def test_no_dump_found_is_refused_even_with_restore_db() -> None:
    # r0's database was never upgraded by a release this journal knows (installed by hand, then r1 installed fresh)
    releases = chain(("r0", "s0", False), ("r1", "s1", False), ("r2", "s2", True))
    plan = plan_rollback(releases, "r2", "r0", restore_db=True)
    assert plan.action == ACTION_REFUSE
    assert plan.restore_via is None
    assert "no dump of r0's database is known" in plan.reason


def test_an_upgrade_that_recorded_no_dump_is_refused() -> None:
    releases = chain(("r1", "s1", False), ("r2", "s2", True))
    del releases["r2"]["metadata"]["db_dump"]
    plan = plan_rollback(releases, "r2", "r1", restore_db=True)
    assert plan.action == ACTION_REFUSE
    assert "recorded no dump" in plan.reason


def test_target_current_and_apps_without_a_database() -> None:
    releases = chain(("r1", None, False), ("r2", None, False))
    assert plan_rollback(releases, "r2", "r2", restore_db=False).action == ACTION_NONE
    assert plan_rollback(releases, "r2", "r1", restore_db=False).action == ACTION_SWITCH
    assert plan_rollback(releases, None, "r1", restore_db=False).action == ACTION_SWITCH


def test_a_cycle_in_hand_edited_metadata_ends() -> None:
    releases = chain(("r1", "s1", False), ("r2", "s2", True))
    releases["r1"]["metadata"]["upgraded_from"] = "r2"
    assert find_restore_via(releases, "r2", "r9") is None
    assert plan_rollback(releases, "r2", "r9", restore_db=True).action == ACTION_REFUSE


def test_plan_as_dict_is_what_the_module_returns() -> None:
    plan = plan_rollback(chain(("r1", "s1", False), ("r2", "s2", True)), "r2", "r1", restore_db=True)
    assert plan.as_dict() == {
        "target": "r1",
        "current": "r2",
        "schema_from": "s2",
        "schema_to": "s1",
        "action": "restore",
        "restore_via": "r2",
        "dump": "/backups/r2.sql.gz",
        "reason": "",
        "schema_changes": True,
    }


def test_releases_whose_schema_the_restore_removed() -> None:
    releases = chain(("r1", "s1", False), ("r2", "s2", True), ("r3", "s3", True), ("r4", "s4", True))
    # r3b was prepared (installer in upgrade mode, same schema) while r3 served: it expects s3 too
    releases["r3b"] = {"id": "r3b", "metadata": {"schema_version": "s3", "upgraded_from": "r3"}}
    assert schema_stale_after_restore(releases, "r4", "r2") == ["r3", "r3b", "r4"]
    # r1 is older than the target: the dump that restores it (taken before r2) is still there
    assert "r1" not in schema_stale_after_restore(releases, "r4", "r2")
    assert schema_stale_after_restore(releases, "r4", "r3") == ["r4"]
