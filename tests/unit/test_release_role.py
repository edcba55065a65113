"""The app_release role, driven by real ansible-playbook runs on localhost: phases, hooks, failure path, check mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PLAYBOOK_BIN.exists(), reason="ansible-playbook not installed next to this Python"),
]

PLAYBOOK = """
- name: Use app_release as an application role does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Include the internal role
      ansible.builtin.include_role:
        name: unistra.itop.app_release
        tasks_from: "{{ phase }}"
      vars:
        app_release_caller: "{{ caller | default('unit-test') }}"
        app_release_root: "{{ root }}"
        app_release_release_id: "{{ rid | default('') }}"
        app_release_artifacts: "{{ artifacts | default([]) }}"
        app_release_shared_paths: [data]
        unistra_itop_artifact_cache_dir: "{{ cache }}"
        app_release_keep: 2
        app_release_rollback_to: "{{ rollback_to | default('') }}"
        app_release_hook_prepared: "{{ playbook_dir }}/hook_prepared.yml"
        app_release_hook_switched: "{{ playbook_dir }}/hook_switched.yml"
        app_release_owner_name: unit-test

    - name: Hand the exposed result back to the test
      ansible.builtin.copy:
        dest: "{{ playbook_dir }}/result.json"
        content: "{{ app_release_result | to_json }}"
        mode: "0644"
      when: not ansible_check_mode
      changed_when: false  # test plumbing, not part of what idempotence measures
"""

HOOK_PREPARED = """
- name: Build the release (the caller's hook)
  ansible.builtin.copy:
    dest: "{{ app_release_result.path }}/BUILT"
    content: "built\\n"
    mode: "0644"

- name: Fail when asked to
  ansible.builtin.fail:
    msg: compiler exploded
  when: fail_hook | default(false) | bool
"""

HOOK_SWITCHED = """
- name: Record that services were reloaded
  ansible.builtin.lineinfile:
    path: "{{ playbook_dir }}/switched.log"
    line: "{{ app_release_result.current }} after event {{ app_release_result.history[-1].seq }}"
    create: true
    mode: "0644"
"""


@pytest.fixture
def play(
    tmp_path: Path, root: Path, cache_dir: Path, playbook_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    (tmp_path / "hook_prepared.yml").write_text(HOOK_PREPARED)
    (tmp_path / "hook_switched.yml").write_text(HOOK_SWITCHED)
    env = playbook_env

    def run(*args: str, **extra_vars: object) -> subprocess.CompletedProcess[str]:
        variables = {"root": str(root), "cache": str(cache_dir), **extra_vars}
        command = [str(PLAYBOOK_BIN), "-i", "localhost,", "-c", "local", str(tmp_path / "site.yml"), *args]
        command += ["-e", json.dumps(variables)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    return run


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout


def _journal(root: Path) -> dict[str, str]:
    data = json.loads((root / ".journal.json").read_text())
    return {rid: record["state"] for rid, record in data["releases"].items()}


def test_role_phases_hooks_and_failure_path(
    play: Callable[..., subprocess.CompletedProcess[str]],
    sample: Callable[[str], dict[str, str]],
    build: SimpleNamespace,
    root: Path,
    tmp_path: Path,
) -> None:
    r1, r2 = sample("r1"), sample("r2")

    # full: prepare, build hook, activate, switch hook, prune; the result is exposed to the caller
    _ok(play(phase="full", rid="r1", artifacts=[r1]))
    assert os.readlink(root / "current") == "releases/r1"
    assert (root / "releases/r1/BUILT").exists()
    exposed = json.loads((tmp_path / "result.json").read_text())
    assert (exposed["current"], exposed["path"]) == ("r1", str(root / "releases/r1"))

    # the same run again changes nothing
    assert "changed=0" in _ok(play(phase="full", rid="r1", artifacts=[r1]))

    # check mode of a new release: reports changes, touches nothing
    before = build.snapshot(root)
    checked = _ok(play("--check", phase="full", rid="r2", artifacts=[r2]))
    assert "changed=0" not in checked
    assert build.snapshot(root) == before

    # a failing build hook: the release is marked failed, nothing is switched, the message says so
    failed = play(phase="full", rid="r2", artifacts=[r2], fail_hook=True)
    assert failed.returncode != 0
    assert "compiler exploded" in failed.stdout
    assert "nothing was switched" in failed.stdout
    assert os.readlink(root / "current") == "releases/r1"
    assert _journal(root)["r2"] == "failed"

    # fixed: the same id is prepared again and switched
    _ok(play(phase="full", rid="r2", artifacts=[r2]))
    assert os.readlink(root / "current") == "releases/r2"
    assert _journal(root) == {"r1": "inactive", "r2": "active"}

    # rollback phase: back to r1, the switch hook runs again
    _ok(play(phase="rollback"))
    assert os.readlink(root / "current") == "releases/r1"
    assert _journal(root)["r2"] == "bad"
    switched = [line.split()[0] for line in (tmp_path / "switched.log").read_text().splitlines()]
    assert switched == ["r1", "r2", "r1"]


def test_role_refuses_to_run_on_its_own(play: Callable[..., subprocess.CompletedProcess[str]], root: Path) -> None:
    proc = play(phase="main", rid="r1")  # without tasks_from
    assert proc.returncode != 0
    assert "unistra.itop.app_release is internal" in proc.stdout
    assert not root.exists()
