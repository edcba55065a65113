"""The runner layer on real ansible-runner runs (local connection)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from itopctl.errors import ExitCode, ItopctlError
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
              'secret_in_env': lookup('env', 'ITOPCTL_TEST_SECRET')} | to_json }}
    - name: Use the secret (what reaches the playbook, as a digest outside the run directory)
      ansible.builtin.copy:
        dest: "{{ out_dir }}/{{ inventory_hostname }}.secret.json"
        mode: "0600"
        content: >-
          {{ {'sha256': itopctl_test_secret | default('') | hash('sha256'),
              'length': itopctl_test_secret | default('') | length} | to_json }}
      no_log: true
    - name: Fail with the secret in the message
      ansible.builtin.fail:
        msg: "the secret is {{ itopctl_test_secret }}"
      when: fail_with_secret | default(false)
      no_log: true
    - name: Fail on the host that is told to
      ansible.builtin.fail:
        msg: "failing on purpose"
      when: inventory_hostname in (fail_on | default([]))
"""
pytestmark = pytest.mark.slow
# a marker no other text holds, a would-be template (secrets are never templated), quotes, a backslash, non-ASCII
MARKER = "hunter2-q7Zx"
SECRET = MARKER + "-{{ 6 * 7 }}-\"quoted\" \\ 'single' é✓"


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


def _secret_runner(tmp_path: Path, **kwargs: Any) -> PlaybookRunner:
    """A runner with one secret; the secret listed as pass-through too (it must still stay out of the env)."""
    shm = tmp_path / "shm"
    shm.mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "passthrough": ("PATH", "HOME", "ITOPCTL_TEST_PASSED", "ITOPCTL_TEST_SECRET"),
        "secret_names": ("ITOPCTL_TEST_SECRET",),
        "environ": _environ(),
        "secrets_base": shm,
        **kwargs,
    }
    return PlaybookRunner(tmp_path / "runs", **options)


def _assert_no_secret_under(root: Path) -> int:
    """No file under ``root`` holds the secret, raw or escaped; returns how many files were read."""
    forms = {
        SECRET.encode(),
        json.dumps(SECRET)[1:-1].encode(),
        json.dumps(SECRET, ensure_ascii=False)[1:-1].encode(),
        MARKER.encode(),
    }
    files = [path for path in root.rglob("*") if path.is_file()]
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form not in data, path
    return len(files)


def _secrets_file_of(artifacts: Path) -> Path:
    command = json.loads((artifacts / "command").read_text())["command"]
    return Path(command[command.index("--extra-vars") + 1].removeprefix("@"))


def test_private_dir_env_filtering_and_events(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    stream = io.StringIO()
    runner = _secret_runner(tmp_path, display=ConsoleDisplay(stream, live=False))
    result = runner.run(
        phase="prepare", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out), "release_id": "r1"}
    )
    assert result.ok and result.rc == 0 and result.status == "successful"
    assert sorted(result.hosts) == ["h1", "h2"] and result.hosts["h1"].changed == 2

    seen = json.loads((out / "h1.json").read_text())
    assert seen == {"passed": "yes", "ansible": "ansible-var", "leaked": "", "secret_in_env": ""}

    private = Path(result.private_data_dir)
    assert private.parent == tmp_path / "runs" and private.name == result.ident
    assert "-prepare-" in result.ident
    artifacts = private / "artifacts" / result.ident
    assert (artifacts / "job_events").is_dir() and (artifacts / "stdout").is_file()
    assert not (private / "env").exists()  # suppress_env_files: no envvars/extravars files
    command = json.loads((artifacts / "command").read_text())
    assert "ITOPCTL_TEST_NOT_PASSED" not in command["env"] and "ITOPCTL_TEST_SECRET" not in command["env"]
    for path in private.rglob("*"):
        if path.is_file():
            assert b"must-not-leak" not in path.read_bytes(), path

    events = [json.loads(line) for line in (private / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "playbook_on_start" and kinds[-1] == "playbook_on_stats"
    assert {e.get("host") for e in events if e["event"] == "runner_on_ok"} == {"h1", "h2"}
    assert all(e["ident"] == result.ident and e["phase"] == "prepare" for e in events)
    shown = stream.getvalue()
    assert f"==> prepare on all hosts (run {result.ident})" in shown and "<== prepare: ok" in shown


def test_secret_reaches_the_playbook_as_an_extra_var_and_never_the_run_dir(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    playbook, inventory, out = setup
    result = _secret_runner(tmp_path).run(
        phase="prepare", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)}
    )
    assert result.ok
    for host in ("h1", "h2"):  # exactly the secret's bytes, not templated ({{ 6 * 7 }} stays as it is)
        got = json.loads((out / f"{host}.secret.json").read_text())
        assert got == {"sha256": hashlib.sha256(SECRET.encode()).hexdigest(), "length": len(SECRET)}

    private = Path(result.private_data_dir)
    artifacts = private / "artifacts" / result.ident
    assert (artifacts / "command").is_file() and (artifacts / "stdout").is_file()
    assert (private / "events.jsonl").is_file() and any((artifacts / "job_events").iterdir())
    assert _assert_no_secret_under(private) >= 5
    secrets_file = _secrets_file_of(artifacts)
    assert secrets_file.parent.parent == tmp_path / "shm"  # outside the run dir, and gone with its directory
    assert not secrets_file.parent.exists() and list((tmp_path / "shm").iterdir()) == []


def test_secrets_file_is_on_tmpfs_by_default(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    result = _secret_runner(tmp_path, secrets_base=None).run(
        phase="verify", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)}
    )
    assert result.ok
    secrets_file = _secrets_file_of(Path(result.private_data_dir) / "artifacts" / result.ident)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        assert secrets_file.parent.parent == Path("/dev/shm")
    assert secrets_file.parent.name.startswith("itopctl-secrets-") and not secrets_file.parent.exists()
    _assert_no_secret_under(Path(result.private_data_dir))


def test_failing_playbook_leaks_no_secret_and_removes_the_file(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    stream = io.StringIO()
    result = _secret_runner(tmp_path, display=ConsoleDisplay(stream, live=False)).run(
        phase="switch", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out), "fail_on": ["h2"]}
    )
    assert not result.ok and result.status == "failed" and result.failed_hosts == ["h2"]
    assert json.loads((out / "h2.secret.json").read_text())["length"] == len(SECRET)  # used, then failed
    _assert_no_secret_under(Path(result.private_data_dir))
    assert MARKER not in stream.getvalue()
    assert list((tmp_path / "shm").iterdir()) == []


def test_no_log_failure_with_the_secret_stays_out_of_events_jsonl(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    """A no_log task failing with the secret in its message: the result is censored, our log records no message.

    (ansible-core 2.19 still prints such a message in its own error line, so in ansible-runner's ``stdout`` and
    ``job_events``: a playbook must not put a secret in a failure message, no_log or not.)
    """
    playbook, inventory, out = setup
    stream = io.StringIO()
    result = _secret_runner(tmp_path, display=ConsoleDisplay(stream, live=False)).run(
        phase="switch",
        playbook=playbook,
        inventory=inventory,
        extravars={"out_dir": str(out), "fail_with_secret": True},
    )
    assert not result.ok and result.failed_hosts == ["h1", "h2"]
    events = (Path(result.private_data_dir) / "events.jsonl").read_text()
    assert "runner_on_failed" in events and MARKER not in events and json.dumps(SECRET)[1:-1] not in events
    assert MARKER not in stream.getvalue()
    assert list((tmp_path / "shm").iterdir()) == []


@pytest.mark.parametrize("where", ["ansible-runner", "interrupt"])
def test_secrets_file_is_removed_after_an_exception(
    tmp_path: Path, setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ansible-runner raising in its thread (an ItopctlError for the caller), or Ctrl-C while we wait for it."""
    playbook, inventory, out = setup
    seen: dict[str, Any] = {}
    drive = PlaybookRunner._drive

    def spy(self: PlaybookRunner, runner: Any, log_path: Path, progress: Progress) -> Any:
        path = Path(runner.config.command[runner.config.command.index("--extra-vars") + 1].removeprefix("@"))
        seen.update(path=path, mode=stat.S_IMODE(path.stat().st_mode), dir=stat.S_IMODE(path.parent.stat().st_mode))
        seen["text"] = path.read_text(encoding="utf-8")
        if where == "interrupt":
            raise KeyboardInterrupt

        def boom(*args: Any, **kwargs: Any) -> None:
            raise OSError("ansible-runner blew up")

        monkeypatch.setattr(runner, "run", boom)
        return drive(self, runner, log_path, progress)

    monkeypatch.setattr(PlaybookRunner, "_drive", spy)
    runner = _secret_runner(tmp_path)
    expected: type[BaseException] = KeyboardInterrupt if where == "interrupt" else ItopctlError
    with pytest.raises(expected):
        runner.run(phase="prepare", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)})
    assert seen["mode"] == 0o600 and seen["dir"] == 0o700
    assert seen["text"].startswith("itopctl_test_secret: !unsafe ")
    assert not seen["path"].exists() and list((tmp_path / "shm").iterdir()) == []
    (private,) = (tmp_path / "runs").iterdir()
    _assert_no_secret_under(private)


def test_no_secret_set_means_no_secrets_file(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    environ = {k: v for k, v in _environ().items() if k != "ITOPCTL_TEST_SECRET"}
    result = _secret_runner(tmp_path, environ=environ).run(
        phase="verify", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)}
    )
    assert result.ok
    assert json.loads((out / "h1.secret.json").read_text()) == {"sha256": hashlib.sha256(b"").hexdigest(), "length": 0}
    command = json.loads((Path(result.private_data_dir) / "artifacts" / result.ident / "command").read_text())
    assert "--extra-vars" not in command["command"]


def test_secret_settings_that_cannot_work_are_refused(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    playbook, inventory, out = setup
    for names, message in (
        (("DB_PASSWORD", "db_password"), "gives the variable 'db_password' twice"),
        (("1PASSWORD",), "does not make a variable name"),
        (("IF",), "does not make a variable name"),
    ):
        with pytest.raises(ItopctlError, match=message) as info:
            PlaybookRunner(tmp_path / "runs", secret_names=names, environ=_environ())
        assert info.value.code == ExitCode.BAD_INPUT
    twice = PlaybookRunner(tmp_path / "runs", secret_names=("ITOPCTL_TEST_SECRET",) * 2, environ=_environ())
    assert twice.secret_values() == {"itopctl_test_secret": SECRET}
    with pytest.raises(ItopctlError, match="clash with extra vars: itopctl_test_secret"):
        _secret_runner(tmp_path).run(
            phase="prepare",
            playbook=playbook,
            inventory=inventory,
            extravars={"out_dir": str(out), "itopctl_test_secret": "x"},
        )
    inside = tmp_path / "runs" / "shm"
    inside.mkdir(parents=True)
    with pytest.raises(ItopctlError, match="secrets must stay out of the runs directory"):
        _secret_runner(tmp_path, secrets_base=inside).run(
            phase="prepare", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)}
        )
    assert list(inside.iterdir()) == [] and [p.name for p in (tmp_path / "runs").iterdir()] == ["shm"]  # no run


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
    # the fact cache is not a run (test_facts_are_gathered_once_then_read_from_the_cache)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name != ".facts") == idents[1:]


GATHER = """\
- name: Gather the distribution, as the stack's playbook does
  hosts: all
  gather_facts: true
  gather_subset: ['!all', '!min', distribution]
  tasks:
    - name: Use a fact
      ansible.builtin.debug:
        msg: "{{ ansible_facts['distribution'] }}"
"""


def _gathered(tmp_path: Path, runner: PlaybookRunner, inventory: Path) -> list[str]:
    """Run the gathering playbook once; the hosts whose facts were gathered (setup ran) in that run."""
    playbook = tmp_path / "gather.yml"
    playbook.write_text(GATHER)
    result = runner.run(phase="verify", playbook=playbook, inventory=inventory)
    assert result.ok, result
    events = [json.loads(line) for line in (Path(result.private_data_dir) / "events.jsonl").read_text().splitlines()]
    return sorted(e["host"] for e in events if e["event"] == "runner_on_ok" and e.get("task") == "Gathering Facts")


def test_facts_are_gathered_once_then_read_from_the_cache(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    _, inventory, _ = setup
    runner = PlaybookRunner(tmp_path / "runs", keep=1, environ=_environ())
    assert _gathered(tmp_path, runner, inventory) == ["h1", "h2"]
    cache = tmp_path / "runs" / ".facts"
    assert len([p for p in cache.iterdir() if p.name.endswith(("h1", "h2"))]) == 2
    assert _gathered(tmp_path, runner, inventory) == []  # the playbook still read the fact: its task passed
    # keep=1: the older run went, the cache stays
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name != ".facts"]) == 1
    assert len([p for p in cache.iterdir() if p.name.endswith(("h1", "h2"))]) == 2


def test_operator_gathering_settings_win_over_the_fact_cache(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    _, inventory, _ = setup
    runner = PlaybookRunner(tmp_path / "runs", environ={**_environ(), "ANSIBLE_GATHERING": "implicit"})
    env = runner.child_environment()
    assert "ANSIBLE_CACHE_PLUGIN" not in env and env["ANSIBLE_GATHERING"] == "implicit"
    assert _gathered(tmp_path, runner, inventory) == ["h1", "h2"]
    assert _gathered(tmp_path, runner, inventory) == ["h1", "h2"]
    assert not (tmp_path / "runs" / ".facts").exists()
    pipeline_cache = PlaybookRunner(
        tmp_path / "runs", environ=_environ(), environment={"ANSIBLE_CACHE_PLUGIN": "memory"}
    )
    assert "ANSIBLE_GATHERING" not in pipeline_cache.child_environment()


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


LEAKY_PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Report the environment the child got
      vars:
        _names: {galaxy: ANSIBLE_GALAXY_TOKEN, become: ANSIBLE_BECOME_PASS, checking: ANSIBLE_HOST_KEY_CHECKING,
                 vault_file: ANSIBLE_VAULT_PASSWORD_FILE}
      ansible.builtin.copy:
        content: "{{ dict(_names.keys() | zip(query('ansible.builtin.env', *_names.values()))) | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.env.json"
        mode: "0600"
    - name: A careless task that prints the become password (no no_log)
      ansible.builtin.debug:
        msg: "become with {{ ansible_become_password | default('none') }}"
"""
BECOME = "become-Pw-9f3k2"
TOKENS = {
    "ANSIBLE_BECOME_PASS": BECOME,
    "ANSIBLE_GALAXY_TOKEN": "galaxy-tok-77a1c",
    "ANSIBLE_GALAXY_SERVER_RELEASE_TOKEN": "server-tok-4b2e9",
    "ANSIBLE_NET_PASSWORD": "net-pw-81d0x",
    "ANSIBLE_AWX_SECRET_KEY": "awx-key-2c7q",
}


def test_secret_named_ansible_variables_never_reach_the_run_dir(tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    """ANSIBLE_BECOME_PASS, galaxy tokens and the like: not in the child's environment (which ansible-runner writes
    to artifacts/<ident>/command), the become password as an extra var through the secrets file, and what a task
    prints anyway is scrubbed from every file of the run directory."""
    _, inventory, out = setup
    playbook = tmp_path / "leaky.yml"
    playbook.write_text(LEAKY_PLAYBOOK)
    vault_file = tmp_path / "vault-pass"  # a path, not a secret: passed
    vault_file.write_text("vault-pw-not-in-env\n")
    environ = {
        **_environ(),
        **TOKENS,
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file),
    }
    stream = io.StringIO()
    shm = tmp_path / "shm"
    shm.mkdir()
    runner = PlaybookRunner(
        tmp_path / "runs", environ=environ, display=ConsoleDisplay(stream, live=False), secrets_base=shm
    )
    result = runner.run(phase="verify", playbook=playbook, inventory=inventory, extravars={"out_dir": str(out)})
    assert result.ok, stream.getvalue()
    seen = json.loads((out / "h1.env.json").read_text())
    assert seen == {"galaxy": "", "become": "", "checking": "False", "vault_file": str(vault_file)}
    private = Path(result.private_data_dir)
    files = [p for p in private.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        data = path.read_bytes()
        for name, value in TOKENS.items():
            assert value.encode() not in data, (name, path)
    stdout = (private / "artifacts" / result.ident / "stdout").read_text()
    assert "become with ********" in stdout  # it did reach the playbook, and was scrubbed from the record
    shown = stream.getvalue()
    for name in ("ANSIBLE_GALAXY_TOKEN", "ANSIBLE_GALAXY_SERVER_RELEASE_TOKEN", "ANSIBLE_NET_PASSWORD"):
        assert f"warning: {name} is not passed to ansible-playbook" in shown
    assert "ANSIBLE_BECOME_PASS reaches ansible-playbook as ansible_become_password in the secrets file" in shown
    assert "was scrubbed from" in shown
    assert all(value not in shown for value in TOKENS.values())
    assert list(shm.iterdir()) == []
