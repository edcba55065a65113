"""itopctl killed, hung up on, or overtaken, with real playbook runs (the local stand-in, playbooks/local_release.yml).

The fault-injection harness (itopctl/faults.py): a promotion is SIGKILLed at each point where a crash can leave
something behind; after each, ``status`` must tell the truth (abandoned, unknown where hosts may be mixed, the probe
sees them), the lock must be stale at once, no secrets file may remain, ``rollback`` must work; the next promotion
(each case's own, then a last one) must work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from itopctl.errors import ExitCode
from itopctl.faults import KILL_AT, PAUSE_AT
from itopctl_support import Project, make_project, seed_deployed

ITOPCTL = str(Path(sys.executable).parent / "itopctl")
REPO = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")
SECRET = "harness-secret-5d1e"
pytestmark = pytest.mark.slow


def spawn(project: Project, *args: str, user: str = "alice", **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, **project.env, "ITOPCTL_USER": user, **env}
    return subprocess.Popen(
        [ITOPCTL, *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root
    )


def wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_started(project: Project, phase: str) -> bool:
    runs = project.root / "runs"
    return runs.is_dir() and any(f"-{phase}-" in p.name for p in runs.iterdir())


def dev_status(project: Project) -> dict[str, object]:
    result = project.run("status", "--json", "--stage", "dev")
    assert result.code == 0, result.err
    row: dict[str, object] = result.json()[0]
    return row


def secrets_of(pid: int) -> list[Path]:
    return sorted(SHM.glob(f"itopctl-secrets-{pid}-*")) if SHM.is_dir() else []


@pytest.fixture
def crash_project(tmp_path: Path) -> Project:
    """dev: two hosts, batches of one, auto-rollback; r1 runs there; a secret is set, so each run has a secrets file;
    the probe reads each host's directory through the collection's release module."""
    project = make_project(tmp_path / "project", f"sqlite:///{tmp_path / 'state.db'}", {"dev": 2, "test": 1})
    project.edit_pipeline(
        "defaults:\n",
        f"ansible:\n  collections_path: {REPO / 'collections'}\ndefaults:\n"
        "  release_roots: {sample: '{{ lab_root }}/{{ inventory_hostname }}'}\n",
    )
    project.env.update({"ITOPCTL_SECRET_ENV": "ITOPCTL_TEST_SECRET", "ITOPCTL_TEST_SECRET": SECRET})
    seed_deployed(project, "dev", "r1")
    for host in ("dev-1", "dev-2"):
        project.on_host(host, "r1", current="r1")
    project.add("r2")
    return project


# (point, hosts may be mixed after it, recover with a rollback): every place a kill can leave something, in the
# order reached. After "switched" and "before-verify" (which leave the hosts as "in-run-switch" and "verified" do)
# the next case promotes again straight from the abandoned state instead of rolling back first.
POINTS = [
    ("locked", False, False),
    ("prepared", False, False),
    ("in-run-switch", True, True),  # inside the first switch batch: dev-1 switched, nothing recorded, secrets file
    ("switched", True, False),  # after the first batch, recorded: dev-1 on r2, dev-2 on r1
    ("before-verify", True, False),
    ("verified", True, True),  # verify ran, the deployment's outcome not recorded
    ("in-run-rollback", True, True),  # during the auto-rollback after a failed verify
]


def test_kill_at_every_point_leaves_a_state_the_next_command_repairs(crash_project: Project) -> None:
    project = crash_project
    release = "r2"
    for n, (point, mixed, roll_back) in enumerate(POINTS):
        if point == "in-run-rollback":
            project.marker(f"fail-verify-{release}")
        proc = spawn(project, "deploy", release, **{KILL_AT: point})
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (point, err)
        if point.startswith("in-run-") and os.access(SHM, os.W_OK):
            assert secrets_of(proc.pid), point  # what kill -9 leaves behind...

        dev = dev_status(project)  # ...until the next itopctl: lock stale at once, secrets swept
        assert secrets_of(proc.pid) == [], point
        assert dev["lock"] is None, point
        last = project.run("history", "--json", "--limit", "1").json()[0]
        assert (last["kind"], last["release_id"], last["result"]) == ("promote", release, "abandoned"), point
        assert "its itopctl (pid" in last["message"], point
        if not mixed:  # nothing was switched, and status says what runs
            assert (dev["current"], dev["health"]) == ("r1", "healthy"), point
            assert project.current("dev-1") == project.current("dev-2") == "r1", point
            continue
        assert str(dev["health"]).startswith("unknown: deployment #"), (point, dev)
        assert (dev["current"], dev["previous"]) == (release, "r1"), point
        if point == "switched":
            probe = project.run("status", "--probe", "--stage", "dev", "--json")
            assert probe.code == 0, probe.err
            seen = probe.json()[0]
            assert seen["summary"] == f"MIXED: r1 on dev-2; {release} on dev-1" and not seen["consistent"]
            assert {(h["host"], h["current"]) for h in seen["hosts"]} == {("dev-1", release), ("dev-2", "r1")}
            assert f"MIXED: r1 on dev-2; {release} on dev-1" in project.run("status", "--probe", "--stage", "dev").out
        if not roll_back:
            continue
        rolled = project.run("rollback", "dev")
        assert rolled.code == 0, (point, rolled.err)
        assert project.current("dev-1") == project.current("dev-2") == "r1", point
        assert dev_status(project)["health"] == f"rolled back from {release}", point
        (project.lab_root / f"fail-verify-{release}").unlink(missing_ok=True)
        # the rollback marked the release bad on the hosts it had reached (the real engine does; the stand-in does
        # not): promoting it again is refused before any run, so the next point goes on with a new release
        again = project.run("deploy", release)
        assert again.code == ExitCode.REFUSED and f"{release} was rolled back on dev" in again.err, (point, again.err)
        assert (dev_status(project)["current"], project.current("dev-1")) == ("r1", "r1"), point
        release = f"r2-{n}"
        project.add(release)

    done = project.run("deploy", release)
    assert done.code == 0, done.err
    assert project.current("dev-1") == project.current("dev-2") == release
    assert dev_status(project)["health"] == "healthy"
    with project.store() as store:
        assert store.locks() == {}


def test_sighup_stops_at_the_phase_boundary_like_sigterm(crash_project: Project) -> None:
    project = crash_project
    project.marker("slow-prepare", "3")
    proc = spawn(project, "deploy", "r2")
    wait_for(lambda: run_started(project, "prepare"), "the prepare run")
    time.sleep(0.5)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "SIGHUP received: itopctl stops after the current phase (prepare)" in err
    record = project.run("history", "--json", "--limit", "1").json()[0]
    assert (record["result"], record["phase"]) == ("interrupted", "prepare")
    assert project.current("dev-1") == project.current("dev-2") == "r1"
    assert secrets_of(proc.pid) == []
    with project.store() as store:
        assert store.locks() == {}


def test_a_promotion_whose_lock_is_taken_over_stops_and_leaves_the_new_lock(tmp_path: Path, state_url: str) -> None:
    """A prepare longer than the lease: the heartbeat keeps the lock (bob is refused); bob forces it; alice's
    promotion stops before the switch with exit 6, says so, and bob's lock is untouched."""
    project = make_project(tmp_path / "project", state_url)
    project.env["ITOPCTL_LOCK_LEASE"] = "2"
    project.add("r1")
    project.marker("slow-prepare", "5")
    proc = spawn(project, "deploy", "r1")
    try:
        wait_for(lambda: run_started(project, "prepare"), "the prepare run")
        time.sleep(2.5)  # longer than the lease: only the heartbeat keeps alice's lock
        busy = project.run("lock", "dev", "--reason", "maintenance", user="bob")
        assert busy.code == ExitCode.REFUSED and "locked by alice (deploy)" in busy.err
        forced = project.run("lock", "dev", "--reason", "incident 42", "--force", user="bob")
        assert forced.code == 0, forced.err
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.LOCK_LOST == 6, err
    assert "STOPPED: LOCK LOST during prepare: the lock of stage dev was taken over" in out
    assert "held by bob (manual lock: 'incident 42'" in out and "no host was switched" in out
    assert project.current("dev-1") is None
    record = project.run("history", "--json").json()[0]
    assert record["result"] == "lock_lost" and record["switched_hosts"] == []
    assert not any("-switch-" in p.name for p in (project.root / "runs").iterdir())
    with project.store() as s:
        lock = s.lock("dev")
        assert lock is not None and (lock.owner, lock.kind, lock.reason) == ("bob", "manual", "incident 42")


def test_auto_rollback_goes_to_what_the_stage_runs_under_the_lock(crash_project: Project) -> None:
    """alice's deploy of r3 reads dev's state (r1) and waits before the lock; r2 is promoted meanwhile; her switch
    fails: the switched host must go back to r2 (what dev ran when she took the lock), not to r1."""
    project = crash_project
    project.add("r3")
    project.marker("fail-switch-r3-dev-1")
    gate = project.root / "gate"
    proc = spawn(project, "deploy", "r3", **{PAUSE_AT: f"before-lock:{gate}"})
    try:
        wait_for(Path(f"{gate}.reached").exists, "alice's first look")
        seed_deployed(project, "dev", "r2")  # someone else's promotion, between her look and her lock
        for host in ("dev-1", "dev-2"):
            (project.lab_root / host / "current").unlink()
            project.on_host(host, "r2", current="r2")
        gate.touch()
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.ROLLED_BACK, err
    record = project.run("history", "--json", "--limit", "1").json()[0]
    assert (record["release_id"], record["from_release"], record["result"]) == ("r3", "r2", "rolled_back")
    assert project.current("dev-1") == project.current("dev-2") == "r2"
    assert dev_status(project)["current"] == "r2"


def test_a_rollback_whose_lock_is_taken_over_stops_before_its_verify(crash_project: Project) -> None:
    project = crash_project
    seed_deployed(project, "dev", "r2")
    for host in ("dev-1", "dev-2"):
        (project.lab_root / host / "current").unlink()
        project.on_host(host, "r2", current="r2")
    project.env["ITOPCTL_LOCK_LEASE"] = "2"
    project.marker("slow-rollback", "4")
    proc = spawn(project, "rollback", "dev")
    try:
        wait_for(lambda: run_started(project, "rollback"), "the rollback run")
        forced = project.run("lock", "dev", "--reason", "incident 43", "--force", user="bob")
        assert forced.code == 0, forced.err
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.LOCK_LOST, err
    assert "STOPPED: LOCK LOST during rollback" in out
    record = project.run("history", "--json", "--limit", "1").json()[0]
    assert (record["kind"], record["result"]) == ("rollback", "lock_lost")
    assert "2 host(s) were switched to r1" in record["message"]
    assert not any("-verify-" in p.name for p in (project.root / "runs").iterdir())
    with project.store() as store:
        lock = store.lock("dev")
        assert lock is not None and (lock.owner, lock.reason) == ("bob", "incident 43")
