"""The deployment lock: owner, reason, lease, renewal by token, takeover of expired locks (journaled), force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError


@pytest.fixture
def clock(build: SimpleNamespace) -> SimpleNamespace:
    return build.Clock()


def _as(root: Path, who: str, clock: SimpleNamespace, check_mode: bool = False) -> ReleaseManager:
    return ReleaseManager(str(root), owner_name=who, clock=clock, check_mode=check_mode)


def test_lock_then_conflict_names_the_holder(root: Path, clock: SimpleNamespace) -> None:
    taken = _as(root, "alice", clock).lock(reason="promote r3", lease=60, lock_id="a-1")
    assert taken["changed"] is True
    assert (taken["lock"]["owner"], taken["lock"]["reason"], taken["lock"]["expired"]) == ("alice", "promote r3", False)
    with pytest.raises(ReleaseError, match=r"locked by alice.*promote r3.*force=true"):
        _as(root, "bob", clock).lock(reason="hotfix", lock_id="b-1")
    with pytest.raises(ReleaseError, match="another lock_id"):
        _as(root, "bob", clock).unlock(lock_id="b-1")


def test_same_token_renews_the_lease_idempotently(root: Path, clock: SimpleNamespace) -> None:
    alice = _as(root, "alice", clock)
    first = alice.lock(lease=60, lock_id="a-1")
    clock.now += 50
    renewed = alice.lock(lease=60, lock_id="a-1")
    assert renewed["changed"] is False
    assert renewed["lock"]["expires_at_epoch"] == pytest.approx(clock.now + 60)
    assert renewed["lock"]["acquired_at"] == first["lock"]["acquired_at"]
    clock.now += 50  # past the first lease, inside the renewed one
    with pytest.raises(ReleaseError, match="locked by alice"):
        _as(root, "bob", clock).lock(lock_id="b-1")


def test_expired_lock_is_taken_over_and_journaled(root: Path, clock: SimpleNamespace) -> None:
    _as(root, "alice", clock).lock(reason="promote", lease=2, lock_id="a-1")
    clock.now += 3
    taken = _as(root, "bob", clock).lock(reason="hotfix", lock_id="b-1")
    assert taken["changed"] is True
    assert taken["lock"]["owner"] == "bob"
    event = taken["history"][-1]
    assert event["event"] == "lock_takeover"
    assert (event["previous_owner"], event["expired"], event["forced"], event["by"]) == ("alice", True, False, "bob")


def test_forced_takeover_is_journaled(root: Path, clock: SimpleNamespace) -> None:
    _as(root, "alice", clock).lock(lease=600, lock_id="a-1")
    taken = _as(root, "bob", clock).lock(lock_id="b-1", force=True, reason="alice is on holiday")
    event = taken["history"][-1]
    assert (event["event"], event["forced"], event["previous_owner"]) == ("lock_takeover", True, "alice")


def test_unlock_by_token_owner_or_force(root: Path, clock: SimpleNamespace) -> None:
    alice = _as(root, "alice", clock)
    alice.lock(lock_id="a-1")
    released = alice.unlock(lock_id="a-1")
    assert (released["changed"], released["lock"]) == (True, None)
    assert not (root / ".deploy.lock").exists()
    assert alice.unlock(lock_id="a-1")["changed"] is False  # idempotent
    alice.lock()  # no token: the owner name identifies the holder
    assert alice.unlock()["changed"] is True
    alice.lock(lock_id="a-2")
    forced = _as(root, "bob", clock).unlock(force=True)
    assert forced["history"][-1]["forced"] is True


def test_an_expired_lock_of_someone_else_is_not_unlocked_without_force(root: Path, clock: SimpleNamespace) -> None:
    _as(root, "alice", clock).lock(lease=2, lock_id="a-1")
    clock.now += 10
    with pytest.raises(ReleaseError, match="force=true"):
        _as(root, "bob", clock).unlock(lock_id="b-1")
    assert (root / ".deploy.lock").exists()


def test_lock_in_check_mode_writes_nothing(root: Path, clock: SimpleNamespace) -> None:
    result = _as(root, "alice", clock, check_mode=True).lock(lock_id="a-1")
    assert result["changed"] is True
    assert result["lock"] is None  # the state on disk: nothing was locked
    assert not root.exists()


def test_changes_with_a_lock_id_respect_another_live_lock(
    root: Path, clock: SimpleNamespace, sample: Callable[[str], dict[str, str]], cache_dir: Path
) -> None:
    art = sample("r1")
    _as(root, "alice", clock).lock(lease=60, lock_id="alice-1")
    bob = ReleaseManager(str(root), owner_name="bob", clock=clock, lock_id="bob-1")
    with pytest.raises(ReleaseError, match=r"locked by alice.*another deployment"):
        bob.prepare("r1", [art], cache_dir=str(cache_dir))
    assert not (root / "releases").exists()
    alice = ReleaseManager(str(root), owner_name="alice", clock=clock, lock_id="alice-1")
    alice.prepare("r1", [art], cache_dir=str(cache_dir))
    with pytest.raises(ReleaseError, match="locked by alice"):
        bob.activate("r1")
    clock.now += 61  # expired: it protects nothing any more
    assert bob.activate("r1")["current"] == "r1"
    # without a lock_id the lock stays advisory (the orchestrator holds it around whole runs)
    _as(root, "alice", clock).lock(lease=60, lock_id="alice-2")
    assert _as(root, "carol", clock).rollback("r1")["changed"] is False


def test_lease_must_be_positive(root: Path, clock: SimpleNamespace) -> None:
    with pytest.raises(ReleaseError, match="lease"):
        _as(root, "alice", clock).lock(lease=0)
