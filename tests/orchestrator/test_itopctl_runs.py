"""Promotions and rollbacks that really run playbooks: rollback, Ctrl-C at phase boundaries, a second promotion
while one runs, batches with a failing switch, Sentry."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_sentry import fake_sentry
from itopctl.errors import ExitCode
from itopctl_support import Project, backdate, seed_deployed

ITOPCTL = str(Path(sys.executable).parent / "itopctl")
pytestmark = pytest.mark.slow


def spawn(project: Project, *args: str, user: str = "alice") -> subprocess.Popen[str]:
    env = {**os.environ, **project.env, "ITOPCTL_USER": user}
    return subprocess.Popen(
        [ITOPCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root
    )


def wait_for_run(project: Project, phase: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    runs = project.root / "runs"
    while time.monotonic() < deadline:
        if runs.is_dir() and any(f"-{phase}-" in p.name for p in runs.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {phase} run started")


def test_rollback_command(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    seed_deployed(project, "dev", "r2")
    project.on_host("dev-1", "r1", "r2", current="r2")
    result = project.run("rollback", "dev", "--json", user="bob")
    assert result.code == 0, result.err
    record = result.json()["deployment"]
    assert (record["kind"], record["release_id"], record["from_release"]) == ("rollback", "r1", "r2")
    # fast: no prepare, no fetch; the stage's verify on the release it went back to in the same run
    assert [i.split("-")[1] for i in record["runner_idents"]] == ["rollback"]
    assert record["phase"] == "verify"
    assert project.current("dev-1") == "r1"
    status = {row["stage"]: row for row in project.run("status", "--json").json()}
    assert status["dev"]["current"] == "r1" and status["dev"]["health"] == "rolled back from r2"

    # r2 was rolled back: its hosts mark it bad, so a promotion of it is refused before any run
    runs = sorted(p.name for p in (project.root / "runs").iterdir())
    redo = project.run("deploy", "r2")
    assert redo.code == ExitCode.REFUSED, redo.err
    assert f"r2 was rolled back on dev (deployment #{record['id']}, bob" in redo.err
    assert "itopctl rollback dev --to r2" in redo.err and "nothing was changed" in redo.err
    assert sorted(p.name for p in (project.root / "runs").iterdir()) == runs
    assert project.run("promote", "r2", "--to", "dev", "--check").code == ExitCode.REFUSED
    # it is not a target any more either, and nothing is older than r1
    again = project.run("rollback", "dev")
    assert again.code == ExitCode.REFUSED and "no earlier good release on dev" in again.err
    assert project.run("rollback", "dev", "--to", "r3").code == ExitCode.BAD_INPUT
    project.add("r3")
    never = project.run("rollback", "dev", "--to", "r3")
    assert never.code == ExitCode.REFUSED and "never ran on dev" in never.err
    # an explicit target and a database restore, recorded
    forward = project.run("rollback", "dev", "--to", "r2", "--restore-db", "--json")
    assert forward.code == 0, forward.err
    assert forward.json()["deployment"]["restore_db"] is True
    assert project.current("dev-1") == "r2"
    history = project.run("history", "--stage", "dev", "--json").json()
    assert [(d["kind"], d["release_id"]) for d in history[:2]] == [("rollback", "r2"), ("rollback", "r1")]


def test_rollback_whose_verify_fails_says_so(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    seed_deployed(project, "dev", "r2")
    project.on_host("dev-1", "r1", "r2", current="r2")
    project.marker("fail-verify-r1")
    result = project.run("rollback", "dev", "--json")
    assert result.code == ExitCode.FAILED
    assert result.json()["message"] == "dev rolled back from r2 to r1, but verify failed (dev-1)"
    assert "verify of r1 fails on purpose" in result.err  # the failed task, shown to the operator
    assert project.current("dev-1") == "r1"  # the switch back happened: status must not claim otherwise
    status = {row["stage"]: row for row in project.run("status", "--json").json()}
    assert (status["dev"]["current"], status["dev"]["health"]) == ("r1", "rolled back from r2; verify failed")
    last = project.run("history", "--stage", "dev", "--json").json()[0]
    assert (last["kind"], last["result"], last["phase"]) == ("rollback", "failed", "verify")


def test_second_promotion_while_one_runs_is_refused(project: Project) -> None:
    project.add("r1")
    project.marker("slow-prepare", "4")
    first = spawn(project, "deploy", "r1")
    try:
        wait_for_run(project, "prepare")
        second = project.run("deploy", "r1", user="bob")
        assert second.code == ExitCode.REFUSED
        assert "stage dev is busy: deployment #1 by alice is running" in second.err
        assert project.run("lock", "dev", "--reason", "x", user="bob").code == ExitCode.REFUSED
    finally:
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    history = project.run("history", "--json").json()
    assert len(history) == 1 and history[0]["result"] == "succeeded"


def interrupt_during(project: Project, phase: str) -> str:
    """Deploy r1 with a slow ``phase``, press Ctrl-C during it; return stderr after checking the exit code."""
    project.add("r1")
    project.marker(f"slow-{phase}", "3")
    proc = spawn(project, "deploy", "r1")
    wait_for_run(project, phase)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    return err


def test_ctrl_c_during_prepare_stops_before_the_switch(sqlite_project: Project) -> None:
    project = sqlite_project
    err = interrupt_during(project, "prepare")
    assert "SIGINT received: itopctl stops after the current phase (prepare)" in err
    record = project.run("history", "--json").json()[0]
    assert (record["result"], record["phase"]) == ("interrupted", "prepare")
    assert record["message"] == "interrupted after prepare; nothing was switched"
    assert project.current("dev-1") is None
    with project.store() as store:
        assert store.locks() == {}


def test_ctrl_c_during_the_switch_finishes_the_switch(sqlite_project: Project) -> None:
    project = sqlite_project
    interrupt_during(project, "switch")
    record = project.run("history", "--json").json()[0]
    assert (record["result"], record["phase"], record["verified"]) == ("interrupted", "switch", False)
    assert "NOT verified" in record["message"]
    assert project.current("dev-1") == "r1"  # never cut half-way
    assert not any("-verify-" in p.name for p in (project.root / "runs").iterdir())
    status = {row["stage"]: row for row in project.run("status", "--json").json()}
    assert status["dev"]["health"] == "unverified"
    # the next stage does not accept an unverified release; re-running the promotion verifies it
    (project.root / "hosts" / "slow-switch").unlink()
    assert project.run("promote", "r1", "--to", "test", "--check").code == ExitCode.REFUSED
    assert project.run("deploy", "r1").code == 0


def test_failing_switch_batch_rolls_back_every_switched_host(sqlite_project: Project) -> None:
    project = sqlite_project
    seed_deployed(project, "dev", "r1")
    seed_deployed(project, "test", "r0")
    seed_deployed(project, "dev", "r2")
    backdate(project, "dev", hours=2)
    for host in ("test-1", "test-2"):
        project.on_host(host, "r0", current="r0")
    project.marker("fail-switch-r2-test-2")
    result = project.run("promote", "r2", "--to", "test", "--json")
    assert result.code == ExitCode.ROLLED_BACK, result.err
    record = result.json()["deployment"]
    assert record["phase"] == "switch" and record["switched_hosts"] == ["test-1", "test-2"]
    assert "switch failed in batch 2 (test-2)" in record["message"]
    assert [i.split("-")[1] for i in record["runner_idents"]] == ["prepare", "switch", "switch", "rollback"]
    assert project.current("test-1") == project.current("test-2") == "r0"
    # the automatic rollback left r2 bad on both hosts: promoting it again is refused up front, not rolled back again
    again = project.run("promote", "r2", "--to", "test")
    assert again.code == ExitCode.REFUSED and f"r2 was rolled back on test (deployment #{record['id']}" in again.err


def test_sentry_release_and_deploy_recorded_token_never_stored(sqlite_project: Project) -> None:
    project = sqlite_project
    token = "sntrys_test_token_4f7a0c"
    with fake_sentry() as sentry:
        project.edit_pipeline(
            "  - name: dev\n",
            f"  - name: dev\n    sentry: {{url: '{sentry.url}', org: unistra, project: itop, "
            "token_env: ITOPCTL_TEST_SENTRY_TOKEN}\n",
        )
        project.env["ITOPCTL_TEST_SENTRY_TOKEN"] = token
        project.add("r1")
        result = project.run("deploy", "r1", "--json")
    assert result.code == 0, result.err
    assert result.json()["deployment"]["sentry"].startswith("recorded: release r1, deploy to dev")
    assert [(c["method"], c["path"]) for c in sentry.calls] == [
        ("POST", "/api/0/organizations/unistra/releases/"),
        ("PUT", "/api/0/organizations/unistra/releases/r1/"),
        ("POST", "/api/0/organizations/unistra/releases/r1/deploys/"),
    ]
    assert all(c["authorization"] == f"Bearer {token}" for c in sentry.calls)
    assert sentry.calls[0]["body"]["projects"] == ["itop"] and sentry.calls[2]["body"]["environment"] == "dev"
    assert sentry.calls[0]["body"]["version"] == "r1" and sentry.calls[2]["body"]["name"].startswith("itopctl #")
    assert result.json()["deployment"]["warnings"] == [] and "warning" not in result.err
    db = Path(project.state_url.removeprefix("sqlite:///"))
    for path in [db, *(project.root / "runs").rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# sentry-cli retries a 5xx with back-off: a few seconds more per deploy, hence slow.
@pytest.mark.parametrize("outage", ["endpoint down", pytest.param("http 503", marks=pytest.mark.slow)])
def test_sentry_outage_never_fails_a_deploy_it_warns_and_records_it(sqlite_project: Project, outage: str) -> None:
    project = sqlite_project
    with contextlib.ExitStack() as stack:
        if outage == "endpoint down":
            url, detail = f"http://127.0.0.1:{_closed_port()}/", "Could not connect to server"
        else:
            url, detail = stack.enter_context(fake_sentry(fail_status=503)).url, "http status: 503"
        project.edit_pipeline(
            "  - name: dev\n",
            f"  - name: dev\n    sentry: {{url: '{url}', org: unistra, project: itop, "
            "token_env: ITOPCTL_TEST_SENTRY}\n",
        )
        project.env["ITOPCTL_TEST_SENTRY"] = "sntrys_outage"
        project.add("r1")
        result = project.run("deploy", "r1", "--json")
    assert result.code == 0, result.err
    record = result.json()["deployment"]
    assert record["result"] == "succeeded" and record["verified"] is True
    assert record["sentry"].startswith("not recorded: releases new failed: ") and detail in record["sentry"]
    assert "Stack backtrace" not in record["sentry"] and "sntrys_outage" not in record["sentry"]
    assert record["warnings"] == [f"Sentry {record['sentry']}"]
    assert f"warning: Sentry {record['sentry']}" in result.err  # printed while it runs
    [shown] = project.run("history", "--json").json()
    assert shown["id"] == record["id"] and shown["warnings"] == record["warnings"]
    assert project.run("history").out.splitlines()[1].split()[-1] == "1"  # the WARNINGS column
    [dev] = [s for s in project.run("status", "--json").json() if s["stage"] == "dev"]
    assert (dev["current"], dev["health"], dev["warnings"]) == ("r1", "healthy", record["warnings"])
    assert f"warning: dev (deployment #{record['id']}): Sentry not recorded" in project.run("status").out
    # No token: no marker either, and again only a warning.
    project.env.pop("ITOPCTL_TEST_SENTRY")
    project.add("r2")
    again = project.run("deploy", "r2", "--json")
    assert again.code == 0 and again.json()["deployment"]["warnings"] == [
        "Sentry not recorded: environment variable ITOPCTL_TEST_SENTRY is not set"
    ]
