"""The module's wiring of the database-aware rollback: annotate, plan_rollback (changed: false), restored_db."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_release_module import _run  # the one way these tests drive the module


def test_annotate_plan_and_restoring_rollback_through_the_module(
    sample: Callable[[str], dict[str, str]], root: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"root": str(root), "owner_name": "tester"}
    for rid, meta in (
        ("r1", {"schema_version": "s1"}),
        ("r2", {"schema_version": "s2", "upgraded_from": "r1", "db_dump": "/backups/r2.sql.gz"}),
    ):
        _run(
            {**base, "operation": "prepare", "release": rid, "artifacts": [sample(rid)], "cache_dir": str(cache_dir)},
            capsys,
        )
        annotated = _run({**base, "operation": "annotate", "release": rid, "metadata": meta}, capsys)
        assert annotated["changed"] is True
        _run({**base, "operation": "activate", "release": rid}, capsys)

    refused = _run({**base, "operation": "plan_rollback"}, capsys)
    assert refused.get("failed") is not True  # a refused plan is data; the role decides to fail
    assert (refused["changed"], refused["plan"]["action"], refused["plan"]["target"]) == (False, "refuse", "r1")
    plan = _run({**base, "operation": "plan_rollback", "restore_db": True}, capsys)["plan"]
    assert (plan["action"], plan["dump"]) == ("restore", "/backups/r2.sql.gz")

    rolled = _run({**base, "operation": "rollback", "release": "r1", "restored_db": True}, capsys)
    assert rolled["current"] == "r1"
    forced = _run({**base, "operation": "activate", "release": "r2", "force": True}, capsys)
    assert forced["failed"] is True
    assert "Prepare it again" in forced["msg"]


def test_annotate_requires_release_and_metadata(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run({"root": str(root), "operation": "annotate", "release": "r1"}, capsys)
    assert result["failed"] is True
    assert "metadata" in result["msg"]
