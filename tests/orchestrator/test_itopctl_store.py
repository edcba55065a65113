"""The state store on SQLite and PostgreSQL: migrations, immutability, lock races."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from itopctl.errors import ExitCode, ItopctlError
from itopctl.manifest import Manifest
from itopctl.store import Store, utcnow


def manifest(release: str, sha: str = "a" * 64) -> Manifest:
    return Manifest(release, {"id": release, "components": {"sample": {"uri": "file:///x.tgz", "sha256": sha}}})


def test_migrations_are_versioned_and_idempotent(state_url: str) -> None:
    with Store.open(state_url) as store:
        assert store.schema_version() == len(Store.migrations()) >= 1
        assert store.migrate() == []
    with Store.open(state_url) as store:
        assert store.migrate() == []


def test_releases_are_immutable(state_url: str) -> None:
    now = utcnow()
    with Store.open(state_url) as store:
        assert store.add_release(manifest("r1"), "alice", now) is True
        assert store.add_release(manifest("r1"), "bob", now) is False
        with pytest.raises(ItopctlError) as info:
            store.add_release(manifest("r1", "b" * 64), "bob", now)
        assert info.value.code == ExitCode.REFUSED
        record = store.release("r1")
        assert record is not None and record.added_by == "alice" and record.manifest["components"]["sample"]
        assert store.reject("r1", "carol", "bad", now) is True and store.reject("r1", "carol", "bad", now) is False
        record = store.release("r1")
        assert record is not None and record.rejected is not None and record.rejected.rejected_by == "carol"


def test_only_one_of_many_concurrent_deploy_locks_wins(state_url: str) -> None:
    with Store.open(state_url):
        pass  # migrate once before the race
    results: list[str] = []
    barrier = threading.Barrier(6)

    def contender(n: int) -> None:
        with Store.open(state_url) as store:
            barrier.wait()
            try:
                store.acquire_lock("prod", owner=f"u{n}", reason="race", kind="deploy", lease=60, now=utcnow())
                results.append("won")
            except ItopctlError as exc:
                assert exc.code == ExitCode.REFUSED
                results.append("refused")

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["refused"] * 5 + ["won"]


def test_own_manual_lock_is_borrowed_by_a_deployment_and_given_back(state_url: str) -> None:
    now = utcnow()
    with Store.open(state_url) as store:
        manual = store.acquire_lock("test", owner="alice", reason="maintenance", kind="manual", lease=600, now=now)
        deploy = store.acquire_lock("test", owner="alice", reason="promote r1", kind="deploy", lease=60, now=now)
        assert deploy.event == "borrow" and deploy.borrowed == manual.record
        with pytest.raises(ItopctlError, match="busy"):
            store.acquire_lock("test", owner="alice", reason="promote r2", kind="deploy", lease=60, now=now)
        store.release_handle(deploy, now)
        assert store.lock("test") == manual.record
        # an expired deploy lock marks its deployment abandoned when taken over
        store.add_release(manifest("r1"), "alice", now)
        dep = store.start_deployment(kind="promote", release_id="r1", stage="dev", from_release=None, who="x", now=now)
        store.acquire_lock("dev", owner="x", reason="p", kind="deploy", lease=1, now=now, deployment_id=dep)
        later = now + timedelta(seconds=5)
        taken = store.acquire_lock("dev", owner="y", reason="p", kind="deploy", lease=60, now=later)
        assert taken.event == "takeover_expired"
        assert store.deployment(dep).result == "abandoned"


def test_schema_4_adds_deployment_warnings_to_an_existing_store(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = Store.migration_files()
    monkeypatch.setattr(Store, "migration_files", staticmethod(lambda: [f for f in files if f[0] <= 3]))
    now = utcnow()
    with Store.open(state_url) as store:
        assert store.schema_version() == 3
        store.add_release(manifest("r1"), "alice", now)
        old = store.start_deployment(kind="promote", release_id="r1", stage="dev", from_release=None, who="a", now=now)
    monkeypatch.undo()
    with Store.open(state_url) as store:
        assert store.schema_version() == files[-1][0]
        assert store.deployment(old).warnings == []
        new = store.start_deployment(kind="promote", release_id="r1", stage="dev", from_release=None, who="a", now=now)
        store.finish_deployment(new, result="succeeded", now=now, stage_state=None, warnings=["Sentry not recorded: x"])
        assert store.deployment(new).warnings == ["Sentry not recorded: x"]
