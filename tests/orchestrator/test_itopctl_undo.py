"""undo_switch: the failure path rolls back exactly the switched hosts, then re-raises."""

from __future__ import annotations

import pytest
from itopctl.engine import PhaseFailed, batches, undo_switch
from itopctl.runner import HostStats, RunResult


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
