"""The stage lock under stress, on SQLite and PostgreSQL: a holder that dies (kill -9) leaves a lock that is stale at
once and a deployment recorded as abandoned; a live holder's lease is renewed by its heartbeat however long a phase
lasts, and a holder whose lock was taken over notices it (fencing) and never touches the new holder's lock; the
stage's state and gates are read again under the lock; secrets directories of dead itopctl processes are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from itopctl.errors import ExitCode, ItopctlError
from itopctl.lease import HeldLock
from itopctl.process import ProcessId, start_time
from itopctl.runner import sweep_secrets
from itopctl.store import LockLost, Store, utcnow
from itopctl_support import Project, backdate, seed_deployed

ITOPCTL = str(Path(sys.executable).parent / "itopctl")

# A real itopctl-like holder: records a deployment at ``phase`` with ``switched`` hosts, takes the stage lock for
# it as a promotion does, then dies as under kill -9 (no finally, no atexit).
HOLDER = """
import os, signal, sys
from itopctl.store import Store, utcnow
url, phase, switched = sys.argv[1], sys.argv[2], sys.argv[3]
with Store.open(url) as store:
    dep = store.start_deployment(kind="promote", release_id="r2", stage="dev", from_release="r1", who="alice",
                                 now=utcnow())
    store.acquire_lock("dev", owner="alice", reason="promote r2", kind="deploy", lease=3600, now=utcnow(),
                       deployment_id=dep)
    store.update_deployment(dep, phase=phase, switched_hosts=[h for h in switched.split(",") if h])
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _die_holding_the_lock(project: Project, phase: str, switched: str) -> None:
    env = {**os.environ, **project.env}
    proc = subprocess.run([sys.executable, "-c", HOLDER, project.state_url, phase, switched], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(("phase", "switched"), [("switch", "dev-1"), ("prepare", "")])
def test_lock_of_a_killed_itopctl_is_stale_at_once(project: Project, phase: str, switched: str) -> None:
    seed_deployed(project, "dev", "r1")
    project.add("r2")
    _die_holding_the_lock(project, phase, switched)
    with project.store() as store:  # before anyone looks: the lock is there, its lease has an hour to go
        lock = store.lock("dev")
        assert lock is not None and not lock.expired(utcnow()) and lock.holder_dead()

    status = project.run("status", "--json", user="bob")
    assert status.code == 0
    assert "deployment #2 on dev (promote r2, by alice) was abandoned: its itopctl (pid" in status.err
    dev = {row["stage"]: row for row in status.json()}["dev"]
    assert dev["lock"] is None
    record = project.run("history", "--json").json()[0]
    assert record["result"] == "abandoned" and record["finished_at"]
    assert f"abandoned during {phase}: its itopctl (pid" in record["message"] and "is gone" in record["message"]
    if switched:  # hosts may run r1 or r2: never "healthy"; rollback goes back to r1 from r2
        assert dev["health"].startswith("unknown: deployment #2 (promote r1 -> r2) abandoned during switch")
        assert "itopctl status --probe" in dev["health"]
        assert (dev["current"], dev["previous"]) == ("r2", "r1")
    else:  # nothing was switched: the stage runs what it ran
        assert (dev["current"], dev["health"]) == ("r1", "healthy")
    events = project.run("locks", "--json").json()["events"]
    assert events[0]["event"] == "stale_dead" and events[0]["previous_owner"] == "alice"
    # the stage is free at once (not in an hour)
    assert project.run("lock", "dev", "--reason", "repair", user="bob").code == 0


def test_a_dead_holder_found_by_acquire_is_taken_over_and_recorded(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    project.add("r2")
    _die_holding_the_lock(project, "switch", "dev-1")
    with project.store() as store:
        taken = store.acquire_lock("dev", owner="bob", reason="promote r3", kind="deploy", lease=60, now=utcnow())
        assert taken.event == "takeover_dead"
        record = store.deployments(stage="dev", limit=1)[0]
        assert record.result == "abandoned" and "taken over by bob" in record.message
        state = store.stage_state("dev")
        assert state is not None and state.health.startswith("unknown")


def test_process_identity_is_pid_and_start_time(tmp_path: Path) -> None:
    """Unit test of ProcessId: a recycled pid (same pid, other start time) is not the holder."""
    me = ProcessId.me()
    assert me.alive() is True and me.started == start_time(os.getpid())
    assert ProcessId(me.host, me.pid, "0:1").alive() is False  # same pid, another process's start time
    assert ProcessId("another-control-node", me.pid, me.started).alive() is None  # unknown: not this host
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = start_time(child.pid)
    assert started is not None
    child.kill()
    deadline = time.monotonic() + 10
    while start_time(child.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert start_time(child.pid) is None  # a zombie until waited for: dead already
    child.wait()


def test_secrets_dirs_of_dead_itopctl_are_swept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = start_time(child.pid)
    assert started is not None
    me = ProcessId.me()
    dead = tmp_path / f"itopctl-secrets-{child.pid}-{started.replace(':', '-')}-abc123"
    live = tmp_path / f"itopctl-secrets-{me.pid}-{me.started.replace(':', '-')}-def456"
    other = tmp_path / "itopctl-secrets-legacy"  # no owner in its name: never touched
    for directory in (dead, live, other):
        directory.mkdir()
        (directory / "secrets.yml").write_text("x: y\n")
    assert sweep_secrets(tmp_path) == []  # its owner runs
    child.kill()
    child.wait()
    assert sweep_secrets(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_heartbeat_renews_the_lease_and_fencing_stops_a_holder_whose_lock_was_taken(state_url: str) -> None:
    now = utcnow()
    with Store.open(state_url) as store, Store.open(state_url) as other:
        handle = store.acquire_lock("dev", owner="alice", reason="promote r1", kind="deploy", lease=1, now=now)
        with HeldLock(store, handle, 1, utcnow) as held:
            time.sleep(2.2)  # more than twice the lease: only the heartbeat keeps it
            with pytest.raises(ItopctlError, match="stage dev is busy") as busy:
                other.acquire_lock("dev", owner="bob", reason="promote r2", kind="deploy", lease=60, now=utcnow())
            assert busy.value.code == ExitCode.REFUSED
            held.check()  # still ours
            renewed = other.lock("dev")
            assert (
                renewed is not None
                and renewed.renewed_at is not None
                and renewed.renewed_at > handle.record.acquired_at
            )
            taken = other.acquire_lock(
                "dev", owner="bob", reason="incident 42", kind="manual", lease=600, now=utcnow(), force=True
            )
            assert taken.event == "forced_takeover"
            taker = r"taken over \(forced_takeover by bob at .*\); it is now held by bob \(manual lock: 'incident 42'"
            with pytest.raises(LockLost, match=taker) as lost:
                held.check()
            assert lost.value.code == ExitCode.LOCK_LOST == 6
            time.sleep(0.8)  # a heartbeat after the takeover notices it too, and renews nothing
            assert held.lost
        # leaving gave nothing back: bob's lock is untouched
        assert other.lock("dev") == taken.record


def _spawn_paused(project: Project, gate: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **project.env, "ITOPCTL_USER": "alice", "_ITOPCTL_TEST_PAUSE_AT": f"before-lock:{gate}"}
    return subprocess.Popen(
        [ITOPCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root
    )


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_gates_are_read_again_under_the_lock(project: Project) -> None:
    """alice's promotion reads the gates (they pass), then waits; dev moves on to r2 meanwhile; under the lock the
    gate no longer holds: refused, exit 3, nothing recorded."""
    seed_deployed(project, "dev", "r1")
    backdate(project, "dev", hours=2)
    gate = project.root / "gate"
    proc = _spawn_paused(project, gate, "promote", "r1", "--to", "test")
    try:
        _wait_for(Path(f"{gate}.reached"))
        seed_deployed(project, "dev", "r2")  # a deployment that ran between alice's first look and her lock
        gate.touch()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.REFUSED, err
    assert "previous-stage: r1 must be deployed and verified on dev first (dev runs r2)" in err
    assert [d["stage"] for d in project.run("history", "--json").json()] == ["dev", "dev"]  # nothing on test
    with project.store() as store:
        assert store.locks() == {}
