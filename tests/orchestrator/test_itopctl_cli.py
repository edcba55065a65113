"""CLI tests of every command, gate, lock and bad input, on SQLite and PostgreSQL (fixture ``project``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from itopctl.errors import ExitCode
from itopctl_support import Project, backdate, seed_deployed


def deployments(project: Project) -> int:
    with project.store() as store:
        return len(store.deployments())


# -- releases --------------------------------------------------------------------------------------------
def test_release_add_list_show_reject(project: Project) -> None:
    manifest = project.manifest("2026.11.28-1")
    assert project.run("release", "add", str(manifest)).code == 0
    again = project.run("release", "add", str(manifest))
    assert again.code == 0 and "already present, identical" in again.out

    # immutable: the same id with another manifest is refused, and the stored one is unchanged
    changed = project.root / "changed.yml"
    changed.write_text(manifest.read_text() + "description: other\n")
    refused = project.run("release", "add", str(changed))
    assert refused.code == ExitCode.REFUSED and "immutable" in refused.err
    shown = project.run("release", "show", "2026.11.28-1", "--json").json()
    assert "description" not in shown["release"]["manifest"]

    listed = project.run("release", "list", "--json").json()
    assert [r["id"] for r in listed] == ["2026.11.28-1"] and listed[0]["rejected"] is None
    assert "2026.11.28-1" in project.run("release", "list").out

    rejected = project.run("release", "reject", "2026.11.28-1", "--reason", "CVE in the ticket module", user="bob")
    assert rejected.code == 0
    shown = project.run("release", "show", "2026.11.28-1", "--json").json()
    assert shown["release"]["rejected"]["rejected_by"] == "bob"
    assert "REJECTED" in project.run("release", "show", "2026.11.28-1").out

    # rejected for ever: no deploy, no approval, no re-add that would clear it
    deploy = project.run("deploy", "2026.11.28-1")
    assert deploy.code == ExitCode.REFUSED and "rejected" in deploy.err
    assert project.run("approve", "2026.11.28-1", "--stage", "prod", "--reason", "ok").code == ExitCode.REFUSED
    assert project.run("release", "add", str(manifest)).code == 0
    assert project.run("deploy", "2026.11.28-1").code == ExitCode.REFUSED
    assert deployments(project) == 0


# -- bad input: clear message, non-zero exit, nothing changed -----------------------------------------------
def test_bad_input_changes_nothing(project: Project) -> None:
    project.add("r1")
    cases: list[tuple[list[str], str]] = [
        (["promote", "r1", "--to", "staging"], "unknown stage 'staging'"),
        (["promote", "nope", "--to", "dev"], "unknown release 'nope'"),
        (["deploy", "../etc"], "invalid release id"),
        (["history", "--stage", "qa"], "unknown stage 'qa'"),
        (["approve", "r1", "--stage", "qa", "--reason", "x"], "unknown stage 'qa'"),
        (["rollback", "prod"], "nothing is deployed on prod"),
        (["lock", "dev", "--reason", "x", "--lease", "forever"], "not a duration"),
    ]
    for args, message in cases:
        result = project.run(*args)
        assert result.code == ExitCode.BAD_INPUT, (args, result)
        assert message in result.err, (args, result.err)

    bad = project.root / "bad.yml"
    bad.write_text("id: r9\ncomponents:\n  itop:\n    uri: ftp://x/y.tgz\n    sha256: nothex\n")
    result = project.run("release", "add", str(bad))
    assert result.code == ExitCode.BAD_INPUT
    assert "bad.yml:4: components.itop.uri: unsupported scheme" in result.err
    assert "bad.yml:5: components.itop.sha256" in result.err
    broken = project.root / "broken.yml"
    broken.write_text("id: r9\ncomponents: [\n")
    assert "not valid YAML" in project.run("release", "add", str(broken)).err
    assert project.run("release", "add", str(project.root / "missing.yml")).code == ExitCode.BAD_INPUT

    # missing inventory: refused before anything runs or is recorded
    (project.root / "inventories" / "dev.ini").unlink()
    result = project.run("deploy", "r1")
    assert result.code == ExitCode.BAD_INPUT and "inventory of stage dev not found" in result.err

    # malformed pipeline: every error, each with its place
    (project.root / "pipeline.yml").write_text(
        "stages:\n  - name: dev\n  - name: dev\n  - name: prod\n    batch_size: 0\n"
        "    gates:\n      approvals: {count: -1}\n      soak: soon\n"
    )
    result = project.run("status")
    assert result.code == ExitCode.BAD_INPUT
    for expected in (
        "pipeline.yml:3: stages[1].name: stage 'dev' appears twice",
        "pipeline.yml:5: stages[2].batch_size: must be >= 1",
        "pipeline.yml:7: stages[2].gates.approvals.count: must be >= 0",
        "pipeline.yml:8: stages[2].gates.soak: must be a duration",
        "no 'prepare' playbook",
    ):
        assert expected in result.err, result.err
    assert deployments(project) == 0
    with project.store() as store:
        assert store.locks() == {} and store.stage_states() == {}


def test_usage_errors_exit_2(project: Project) -> None:
    assert project.run("promote", "r1").code == ExitCode.BAD_INPUT  # --to is required
    assert project.run("frobnicate").code == ExitCode.BAD_INPUT


# -- gates -------------------------------------------------------------------------------------------------
def test_cannot_skip_a_stage(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    result = project.run("promote", "r1", "--to", "prod")
    assert result.code == ExitCode.REFUSED
    assert "previous-stage: r1 must be deployed and verified on test first" in result.err
    assert "stages cannot be skipped" in result.err
    assert deployments(project) == 1


def test_soak_gate(project: Project) -> None:
    seed_deployed(project, "dev", "r1", hours_ago=0.25)
    result = project.run("promote", "r1", "--to", "test", "--check")
    assert result.code == ExitCode.REFUSED
    assert "soak: soaked 15m on dev, 1h required (wait 4" in result.err
    backdate(project, "dev", hours=2)
    ready = project.run("promote", "r1", "--to", "test", "--check")
    assert ready.code == 0 and "gate soak: ok" in ready.out


def test_previous_stage_must_be_verified_and_current(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    seed_deployed(project, "dev", "r2")
    result = project.run("promote", "r1", "--to", "test", "--check")
    assert result.code == ExitCode.REFUSED and "dev runs r2" in result.err


def test_approvals_gate(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    seed_deployed(project, "test", "r1")
    blocked = project.run("promote", "r1", "--to", "prod", "--check", user="alice")
    assert blocked.code == ExitCode.REFUSED and "approvals: 0 of 2 approval(s) for prod" in blocked.err

    assert project.run("approve", "r1", "--stage", "prod", "--reason", "tested", user="alice").code == 0
    again = project.run("approve", "r1", "--stage", "prod", "--reason", "tested", user="alice")
    assert again.code == 0 and "already approved" in again.out
    assert project.run("approve", "r1", "--stage", "prod", "--reason", "CAB ok", user="bob").code == 0
    own = project.run("promote", "r1", "--to", "prod", "--check", user="alice")
    assert own.code == ExitCode.REFUSED
    assert "1 of 2" in own.err and "your own approval (alice) does not count" in own.err

    assert project.run("approve", "r1", "--stage", "prod", "--reason", "ok", user="carol").code == 0
    ready = project.run("promote", "r1", "--to", "prod", "--check", "--json", user="alice")
    assert ready.code == 0
    gates = {g["gate"]: g for g in ready.json()["gates"]}
    assert gates["approvals"]["ok"] and "bob, carol" in gates["approvals"]["detail"]
    # carol cannot use her own approval either: only alice and bob count for her
    assert project.run("promote", "r1", "--to", "prod", "--check", user="carol").code == 0
    shown = project.run("release", "show", "r1", "--json").json()
    assert {a["approver"] for a in shown["approvals"]} == {"alice", "bob", "carol"}


def test_freeze_window_gate(project: Project) -> None:
    pipeline = project.root / "pipeline.yml"
    pipeline.write_text(
        pipeline.read_text()
        + "  - name: frozen\n    gates:\n      freeze:\n"
        + "        - {weekdays: [mon, tue, wed, thu, fri, sat, sun], from: '00:00', to: '23:59:59', reason: audit}\n"
    )
    (project.root / "inventories" / "frozen.ini").write_text("f-1 ansible_connection=local\n")
    seed_deployed(project, "prod", "r1")
    result = project.run("promote", "r1", "--to", "frozen", "--check")
    assert result.code == ExitCode.REFUSED and "freeze: frozen is frozen: mon,tue,wed,thu,fri,sat,sun" in result.err


# -- locks -------------------------------------------------------------------------------------------------
def test_locks_owner_reason_lease_and_forced_takeover(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    backdate(project, "dev", hours=2)
    assert project.run("lock", "test", "--reason", "DB maintenance", "--lease", "2h", user="alice").code == 0
    status = {row["stage"]: row for row in project.run("status", "--json").json()}
    assert status["test"]["lock"]["owner"] == "alice" and status["test"]["lock"]["reason"] == "DB maintenance"

    blocked = project.run("promote", "r1", "--to", "test", user="bob")
    assert blocked.code == ExitCode.REFUSED and "locked by alice" in blocked.err
    assert project.run("unlock", "test", user="bob").code == ExitCode.REFUSED
    assert project.run("lock", "test", "--reason", "mine", user="bob").code == ExitCode.REFUSED

    taken = project.run("lock", "test", "--reason", "incident 42", "--force", "--json", user="bob")
    assert taken.code == 0 and taken.json()["event"] == "forced_takeover"
    audit = project.run("locks", "--json").json()
    takeover = next(e for e in audit["events"] if e["event"] == "forced_takeover")
    assert takeover["owner"] == "bob" and takeover["previous_owner"] == "alice" and takeover["reason"] == "incident 42"
    assert project.run("unlock", "test", user="bob").code == 0
    assert "was not locked" in project.run("unlock", "test", user="bob").out

    # an expired lease can be taken without force, and that is recorded too
    assert project.run("lock", "test", "--reason", "short", "--lease", "1s", user="alice").code == 0
    time.sleep(1.2)
    expired = project.run("lock", "test", "--reason", "after", "--json", user="bob")
    assert expired.code == 0 and expired.json()["event"] == "takeover_expired"
    assert "takeover_expired" in project.run("locks").out


# -- real runs ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_deploy_promote_status_history(project: Project) -> None:
    project.add("r1")
    deployed = project.run("deploy", "r1", "--json")
    assert deployed.code == 0, deployed.err
    record = deployed.json()["deployment"]
    assert record["result"] == "succeeded" and record["verified"] and record["stage_release"] is None
    assert len(record["runner_idents"]) == 3 and record["started_by"] == "alice"
    assert project.current("dev-1") == "r1"

    refused = project.run("promote", "r1", "--to", "test")
    assert refused.code == ExitCode.REFUSED and "soak" in refused.err
    backdate(project, "dev", hours=2)
    promoted = project.run("promote", "r1", "--to", "test", "--json", user="bob")
    assert promoted.code == 0, promoted.err
    record = promoted.json()["deployment"]
    # batch size 1 on test: prepare, two switch runs, verify
    assert [i.split("-")[1] for i in record["runner_idents"]] == ["prepare", "switch", "switch", "verify"]
    assert record["switched_hosts"] == ["test-1", "test-2"]
    assert project.current("test-1") == project.current("test-2") == "r1"
    again = project.run("promote", "r1", "--to", "test")
    assert again.code == 0 and "nothing to do" in again.out

    status = {row["stage"]: row for row in project.run("status", "--json").json()}
    assert status["test"]["current"] == "r1" and status["test"]["who"] == "bob"
    assert status["test"]["health"] == "healthy" and status["prod"]["health"] == "never deployed"
    assert "r1" in project.run("status").out
    history = project.run("history", "--json").json()
    assert [(d["stage"], d["result"]) for d in history] == [("test", "succeeded"), ("dev", "succeeded")]
    assert [d["stage"] for d in project.run("history", "--stage", "dev", "--json").json()] == ["dev"]
    with project.store() as store:
        assert store.locks() == {}
        assert [e.event for e in store.lock_events("test")] == ["release", "acquire"]


@pytest.mark.slow
def test_verify_failure_rolls_back_switched_hosts(project: Project) -> None:
    seed_deployed(project, "dev", "r1")
    project.on_host("dev-1", "r1", current="r1")
    project.add("r2")
    project.marker("fail-verify-r2")
    result = project.run("deploy", "r2", "--json")
    assert result.code == ExitCode.ROLLED_BACK, result.err
    record = result.json()["deployment"]
    assert record["result"] == "rolled_back" and record["phase"] == "verify"
    assert "rolled back 1 switched host(s) to r1" in record["message"]
    assert [i.split("-")[1] for i in record["runner_idents"]] == ["prepare", "switch", "verify", "rollback"]
    assert project.current("dev-1") == "r1"
    status = {row["stage"]: row for row in project.run("status", "--json").json()}
    assert status["dev"]["current"] == "r1" and "rolled back" in status["dev"]["health"]


@pytest.mark.slow
def test_prepare_failure_switches_nothing(project: Project) -> None:
    project.add("r1")
    project.marker("fail-prepare-r1")
    result = project.run("deploy", "r1")
    assert result.code == ExitCode.FAILED and "prepare failed (dev-1); nothing was switched" in result.out
    assert project.current("dev-1") is None
    history = project.run("history", "--json").json()
    assert history[0]["result"] == "failed" and history[0]["switched_hosts"] == []


def test_config_layers_know_their_source(project: Project, tmp_path: Path) -> None:
    config = tmp_path / "itopctl.toml"
    config.write_text('keep_runs = 7\nlock_lease = 600\nuser = "from-file"\nsecret_env = ["DB_PASSWORD"]\n')
    result = project.run("--config", str(config), "config", "--json", "--lock-lease", "900")
    values = result.json()
    assert values["secret_env"] == {"value": ["DB_PASSWORD"], "source": f"file:{config}"}
    assert values["lock_lease"] == {"value": 900, "source": "cli:--lock-lease"}  # the command line beats the file
    assert values["keep_runs"] == {"value": 100, "source": "env:ITOPCTL_KEEP_RUNS"}  # the environment beats it too
    assert values["user"]["source"] == "env:ITOPCTL_USER"
    assert values["env_passthrough"]["source"] == "default"
    assert "***" in values["state_url"]["value"] or "itopctl:itopctl@" not in values["state_url"]["value"]
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    assert project.run("--config", str(bad), "status").code == ExitCode.BAD_INPUT


def test_console_script_exit_codes(project: Project) -> None:
    """The installed ``itopctl`` entry point: message on stderr, distinct exit codes."""
    env = {**os.environ, **project.env}
    itopctl = str(Path(sys.executable).parent / "itopctl")
    unknown = subprocess.run(
        [itopctl, "promote", "r1", "--to", "qa"], env=env, capture_output=True, text=True, check=False
    )
    assert unknown.returncode == ExitCode.BAD_INPUT and unknown.stderr.startswith("itopctl: unknown stage 'qa'")
    version = subprocess.run([itopctl, "--version"], env=env, capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.startswith("itopctl ")
    helped = subprocess.run([itopctl, "--help"], env=env, capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "3 refused (gate/lock/policy)" in helped.stdout


def test_status_probe_needs_release_roots(project: Project) -> None:
    result = project.run("status", "--probe", "--stage", "dev")
    assert result.code == ExitCode.BAD_INPUT
    assert "stage dev has no release_roots in" in result.err and "release_roots: {itop: /srv/itop}" in result.err
    assert project.run("status", "--stage", "qa").code == ExitCode.BAD_INPUT
    assert not (project.root / "runs").exists()  # refused before any run
