"""undo_switch and the failure paths: switched hosts are rolled back, errors recorded, then re-raised."""

from __future__ import annotations

import pytest
from itopctl.engine import Orchestrator, PhaseFailed, batches, undo_switch
from itopctl.errors import ExitCode, ItopctlError
from itopctl.pipeline import load_pipeline
from itopctl.runner import HostStats, NullDisplay, RunResult
from itopctl.store import Store
from itopctl_support import Project, seed_deployed


def _run(ok: bool) -> RunResult:
    stats = {"h": HostStats(ok=1, failures=0 if ok else 1)}
    return RunResult("id", "rollback", "successful" if ok else "failed", 0 if ok else 2, 0.1, "/tmp", stats)


def test_failure_rolls_back_switched_hosts_and_reraises() -> None:
    calls: list[list[str]] = []

    def rollback(hosts: list[str]) -> RunResult:
        calls.append(hosts)
        return _run(True)

    with pytest.raises(PhaseFailed), undo_switch(rollback) as ledger:
        ledger.switched += ["h1", "h2"]
        raise PhaseFailed("verify", "verify failed")
    assert calls == [["h1", "h2"]] and ledger.rolled_back and ledger.rollback_ok


def test_failed_rollback_is_reported() -> None:
    with pytest.raises(RuntimeError), undo_switch(lambda hosts: _run(False)) as ledger:
        ledger.switched.append("h1")
        raise RuntimeError("crash mid-switch")
    assert ledger.rolled_back and not ledger.rollback_ok and "failed on h" in ledger.rollback_detail


def test_nothing_to_undo() -> None:
    calls: list[list[str]] = []
    with pytest.raises(PhaseFailed), undo_switch(lambda hosts: calls.append(hosts) or _run(True)) as ledger:
        raise PhaseFailed("switch", "first batch failed before any host")
    assert calls == [] and not ledger.rolled_back
    with pytest.raises(PhaseFailed), undo_switch(None) as ledger:
        ledger.switched.append("h1")
        raise PhaseFailed("verify", "auto-rollback off")
    assert not ledger.rolled_back
    with undo_switch(lambda hosts: calls.append(hosts) or _run(True)) as ledger:
        ledger.switched.append("h1")
    assert calls == []


def test_batches_keep_natural_host_order() -> None:
    assert batches(["web-10", "web-2", "web-1"], 2) == [["web-1", "web-2"], ["web-10"]]


class ExplodingRunner:
    """A runner whose ``phase`` run raises, as a crashed ansible-runner would; the others succeed."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.calls: list[tuple[str, list[str] | None]] = []

    def run(self, *, phase: str, limit: list[str] | None = None, **_: object) -> RunResult:
        self.calls.append((phase, limit))
        if phase == self.phase:
            raise ItopctlError("ansible-runner failed: boom", ExitCode.FAILED)
        hosts = limit or ["dev-1"]
        return RunResult(f"id-{phase}", phase, "successful", 0, 0.1, "/tmp", {h: HostStats(ok=1) for h in hosts})


def test_an_error_mid_switch_rolls_back_and_is_recorded(sqlite_project: Project) -> None:
    seed_deployed(sqlite_project, "dev", "r1")
    sqlite_project.add("r2")
    runner = ExplodingRunner("verify")
    with Store.open(sqlite_project.state_url) as store:
        pipeline = load_pipeline(sqlite_project.root / "pipeline.yml")
        orchestrator = Orchestrator(pipeline, store, runner=runner, user="alice", display=NullDisplay())  # type: ignore[arg-type]
        with pytest.raises(ItopctlError, match="boom"):
            orchestrator.promote("r2", "dev")
        record = store.deployments(stage="dev", limit=1)[0]
        assert (record.result, record.phase) == ("failed", "verify")
        assert record.message == "itopctl stopped by an error during verify: ansible-runner failed: boom"
        assert record.switched_hosts == ["dev-1"] and store.locks() == {}
        state = store.stage_state("dev")
        assert state is not None and state.health == "unknown: itopctl stopped by an error during verify"
    # the switched host was rolled back by undo_switch before the error went up
    assert runner.calls[-1] == ("rollback", ["dev-1"])
