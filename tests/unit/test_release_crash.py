"""Crash safety of the release engine: a SIGKILL at every durable step of every operation, then the same operation
run again (issue: "a retry must never make things worse than the failure did").

Each case kills the engine at one named crash point (``fsutil.crash_point``, driven by an environment variable that
only these tests set), checks what a kill may leave (``current`` complete, the engine's view agreeing with the disk),
runs the operation again and checks that it did what was asked and that journal and disk agree exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import PENDING, ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError
from release_crash_harness import (
    OWNER,
    build_artifacts,
    build_root,
    check_consistent,
    run_case,
    run_child,
    scenarios,
)

SCENARIOS = {s.name: s for s in scenarios()}
CASES = [(s.name, point) for s in SCENARIOS.values() for point in s.crash_points]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return build_artifacts(tmp_path_factory.mktemp("artifacts"), files_per_release=10)


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "point"), CASES, ids=[f"{s}@{p}" for s, p in CASES])
def test_kill_then_rerun(tmp_path: Path, artifacts: dict[str, dict[str, str]], scenario: str, point: str) -> None:
    assert run_case(tmp_path, SCENARIOS[scenario], artifacts, point) == []


def test_every_operation_has_crash_points() -> None:
    covered = {s.op for s in SCENARIOS.values() if s.crash_points}
    assert covered == {"prepare", "activate", "rollback", "prune", "lock", "unlock"}
    assert len(CASES) >= 40


def test_rollback_killed_after_switch_is_completed_not_repeated(
    tmp_path: Path, artifacts: dict[str, dict[str, str]]
) -> None:
    """The defect as reported: killed between the switch and the journal, a retry went forward and marked r2 bad."""
    scenario = SCENARIOS["rollback"]
    root, cache = build_root(tmp_path, scenario, artifacts)
    spec = scenario.spec(root, artifacts, cache)
    assert run_child(spec, "rollback:acted")[0] == -9
    journal = json.loads((root / ".journal.json").read_text())
    assert journal[PENDING]["op"] == "rollback"  # the intent was written before current moved
    rc, out = run_child(spec)
    assert rc == 0, out
    result = json.loads(out.splitlines()[-1])
    assert result["changed"] is False
    assert "interrupted after the switch and has been completed" in result["msg"]
    assert result["recovered"] == [{"op": "rollback", "release": "r2", "outcome": "completed"}]
    info = ReleaseManager(str(root), owner_name=OWNER).info()
    states = {r["id"]: r["state"] for r in info["releases"]}
    assert (info["current"], states["r2"], states["r3"]) == ("r2", "active", "bad")
    # The recovery is journaled, and consumed: a deliberate second rollback goes one step further back.
    assert [e["event"] for e in info["history"]][-2:] == ["rollback", "recover"]
    assert info["history"][-2]["recovered"] is True
    again = ReleaseManager(str(root), owner_name=OWNER).rollback()
    assert again["current"] == "r1"


def test_killed_prepare_leaves_no_unjournaled_release(tmp_path: Path, artifacts: dict[str, dict[str, str]]) -> None:
    """The defect as reported: killed after the rename, releases/<id> was outside the journal and every rerun failed."""
    scenario = SCENARIOS["prepare"]
    root, cache = build_root(tmp_path, scenario, artifacts)
    spec = scenario.spec(root, artifacts, cache)
    assert run_child(spec, "prepare:acted")[0] == -9
    assert (root / "releases/r2").is_dir()
    # A read already reports it, as the next change will record it.
    info = ReleaseManager(str(root), owner_name=OWNER).info()
    assert {r["id"]: r["state"] for r in info["releases"]}["r2"] == "prepared"
    assert info["recovered"] == [{"op": "prepare", "release": "r2", "outcome": "completed"}]
    rc, out = run_child(spec)
    assert rc == 0, out
    assert json.loads(out.splitlines()[-1])["changed"] is False  # already prepared: nothing fetched again
    assert check_consistent(root)[0] == []


def test_killed_activate_records_the_right_previous(tmp_path: Path, artifacts: dict[str, dict[str, str]]) -> None:
    scenario = SCENARIOS["activate"]
    root, cache = build_root(tmp_path, scenario, artifacts)
    spec = scenario.spec(root, artifacts, cache)
    assert run_child(spec, "activate:acted")[0] == -9
    rc, out = run_child(spec)
    assert rc == 0, out
    result = json.loads(out.splitlines()[-1])
    assert (result["current"], result["previous"], result["changed"]) == ("r2", "r1", False)


def test_check_mode_reports_the_recovery_and_writes_nothing(
    tmp_path: Path, artifacts: dict[str, dict[str, str]]
) -> None:
    scenario = SCENARIOS["activate"]
    root, cache = build_root(tmp_path, scenario, artifacts)
    assert run_child(scenario.spec(root, artifacts, cache), "activate:acted")[0] == -9
    before = (root / ".journal.json").read_bytes()
    result = ReleaseManager(str(root), owner_name=OWNER, check_mode=True).activate("r2")
    assert (result["current"], result["previous"]) == ("r2", "r1")
    assert (root / ".journal.json").read_bytes() == before


def test_prune_removes_release_directories_the_journal_does_not_know(
    tmp_path: Path, artifacts: dict[str, dict[str, str]]
) -> None:
    """Debris of a prepare killed under an older version (renamed, never journaled): refused by prepare, pruned."""
    scenario = SCENARIOS["prepare"]
    root, cache = build_root(tmp_path, scenario, artifacts)
    (root / "releases/r2").mkdir()
    (root / "releases/r2/half-written").write_text("x")
    manager = ReleaseManager(str(root), owner_name=OWNER)
    with pytest.raises(ReleaseError, match="run operation=prune"):
        manager.prepare("r2", [artifacts["r2"]], cache_dir=str(cache))
    predicted = ReleaseManager(str(root), owner_name=OWNER, check_mode=True).prune()
    assert predicted["changed"] is True
    assert predicted["removed_unjournaled"] == ["r2"]
    assert (root / "releases/r2").is_dir()
    assert manager.prune()["removed_unjournaled"] == ["r2"]
    assert not (root / "releases/r2").exists()
    assert manager.prepare("r2", [artifacts["r2"]], cache_dir=str(cache))["changed"] is True
    assert check_consistent(root)[0] == []
