"""The runner layer on real ansible-runner runs (local connection)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
from itopctl.errors import ItopctlError
from itopctl.runner import ConsoleDisplay, PlaybookRunner, Progress

PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Report what the environment holds
      ansible.builtin.copy:
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0600"
        content: >-
          {{ {'passed': lookup('env', 'ITOPCTL_TEST_PASSED'), 'ansible': lookup('env', 'ANSIBLE_ITOPCTL_TEST'),
              'leaked': lookup('env', 'ITOPCTL_TEST_NOT_PASSED'),
              'secret_length': lookup('env', 'ITOPCTL_TEST_SECRET') | length} | to_json }}
    - name: Fail on the host that is told to
      ansible.builtin.fail:
        msg: "failing on purpose"
      when: inventory_hostname in (fail_on | default([]))
"""
pytestmark = pytest.mark.slow
SECRET = "hunter2-very-secret-value"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    playbook = tmp_path / "report.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "".join(f"h{n} ansible_connection=local ansible_python_interpreter={sys.executable}\n" for n in (1, 2))
    )
    out = tmp_path / "out"
    out.mkdir()
    return playbook, inventory, out


def _environ() -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "ITOPCTL_TEST_PASSED": "yes",
        "ANSIBLE_ITOPCTL_TEST": "ansible-var",
        "ITOPCTL_TEST_NOT_PASSED": "must-not-leak",
        "ITOPCTL_TEST_SECRET": SECRET,
    }


def test_private_dir_env_filtering_secrets_and_events(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    stream = io.StringIO()
    runner = PlaybookRunner(
        tmp_path / "runs",
        passthrough=("PATH", "HOME", "ITOPCTL_TEST_PASSED"),
        secret_names=("ITOPCTL_TEST_SECRET",),
        display=ConsoleDisplay(stream, live=False),
        environ=_environ(),
    )
    result = runner.run(
        phase="prepare", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out), "release_id": "r1"}
    )
    assert result.ok and result.rc == 0 and result.status == "successful"
    assert sorted(result.hosts) == ["h1", "h2"] and result.hosts["h1"].changed == 1

    seen = json.loads((out / "h1.json").read_text())
    assert seen == {"passed": "yes", "ansible": "ansible-var", "leaked": "", "secret_length": len(SECRET)}

    private = Path(result.private_data_dir)
    assert private.parent == tmp_path / "runs" and private.name == result.ident
    assert "-prepare-" in result.ident
    artifacts = private / "artifacts" / result.ident
    assert (artifacts / "job_events").is_dir() and (artifacts / "stdout").is_file()
    assert not (private / "env").exists()  # suppress_env_files: no envvars/extravars files
    command = json.loads((artifacts / "command").read_text())
    assert "ITOPCTL_TEST_NOT_PASSED" not in command["env"]
    assert command["env"]["ITOPCTL_TEST_SECRET"] == "********"
    for path in private.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
            assert b"must-not-leak" not in path.read_bytes(), path

    events = [json.loads(line) for line in (private / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "playbook_on_start" and kinds[-1] == "playbook_on_stats"
    assert {e.get("host") for e in events if e["event"] == "runner_on_ok"} == {"h1", "h2"}
    assert all(e["ident"] == result.ident and e["phase"] == "prepare" for e in events)
    shown = stream.getvalue()
    assert f"==> prepare on all hosts (run {result.ident})" in shown and "<== prepare: ok" in shown


def test_failed_host_is_reported_and_limit_is_honoured(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    stream = io.StringIO()
    runner = PlaybookRunner(tmp_path / "runs", display=ConsoleDisplay(stream, live=False), environ=_environ())
    result = runner.run(
        phase="switch",
        playbook=playbook,
        inventory=inventory,
        extravars={"out_dir": str(out), "fail_on": ["h2"]},
        limit=["h2"],
    )
    assert not result.ok and result.status == "failed"
    assert result.failed_hosts == ["h2"] and list(result.hosts) == ["h2"]
    assert "failed: h2: Fail on the host that is told to: failing on purpose" in stream.getvalue()


def test_run_directories_are_rotated(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    runner = PlaybookRunner(tmp_path / "runs", keep=2, environ=_environ())
    idents = [
        runner.run(phase="verify", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)}).ident
        for _ in range(3)
    ]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == idents[1:]


def test_missing_playbook_or_inventory_is_bad_input(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, _ = setup
    runner = PlaybookRunner(tmp_path / "runs", environ=_environ())
    with pytest.raises(ItopctlError, match="playbook not found"):
        runner.run(phase="prepare", playbook=tmp_path / "nope.yml", inventory=inventory)
    with pytest.raises(ItopctlError, match="inventory not found"):
        runner.run(phase="prepare", playbook=playbook, inventory=tmp_path / "nope.ini")


def test_live_progress_line() -> None:
    stream = io.StringIO()
    display = ConsoleDisplay(stream, live=True)
    progress = Progress(phase="switch", ident="x")
    for event in (
        {"event": "playbook_on_task_start", "event_data": {"task": "Activate the release"}},
        {"event": "runner_on_ok", "event_data": {"host": "web-1", "res": {"changed": True}}},
        {"event": "runner_on_failed", "event_data": {"host": "web-2", "task": "Activate", "res": {"msg": "no"}}},
    ):
        progress.apply(event)
    display.progress(progress)
    assert stream.getvalue() == ("\r\x1b[K[switch] hosts 2 | ok 1 changed 1 failed 1 | Activate the release")
    assert progress.failed_tasks == ["web-2: Activate: no"]
