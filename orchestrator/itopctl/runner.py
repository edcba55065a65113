"""One class around ansible-runner: a private data dir and ident per run, live progress, a JSON-lines log.

What it guarantees (tests/orchestrator/test_itopctl_runner.py checks each):

- every run gets ``<runs_dir>/<ident>/`` (kept for audit; only the newest ``keep`` are kept);
- ``suppress_env_files=True``: ansible-runner writes no ``env/`` files, and the child gets only ``ANSIBLE_*``
  variables and the named pass-through ones (read from our own environment), nothing else;
- no variable whose name says it holds a secret (``ANSIBLE_BECOME_PASS``, ``ANSIBLE_GALAXY_TOKEN``, ``*SECRET*``,
  ``*_KEY``...; a name ending in ``_FILE``/``_PATH``/``_DIR`` holds a path and is passed) reaches the child's
  environment, which ansible-runner writes to ``artifacts/<ident>/command``: such a variable is dropped with a
  warning, except the become password, given to ansible-playbook as ``ansible_become_password`` in the secrets
  file below;
- secrets never reach the run directory, not even for a moment: the named secrets (``secret_env``) are not put in
  the child's environment (ansible-runner writes that into ``artifacts/<ident>/command``) but given to
  ansible-playbook as extra vars (``DB_PASSWORD`` -> ``db_password``, tagged ``!unsafe`` so they are never
  templated) from a 0600 file in a fresh 0700 directory on a tmpfs (``/dev/shm``, else ``$XDG_RUNTIME_DIR``, else
  the temp dir), outside the run directory, passed as ``--extra-vars @file`` and deleted as soon as the run ends,
  whatever the outcome; playbooks keep them out of their output with ``no_log``; the directory's name holds its
  owner's pid and start time, so one left by a killed itopctl is removed by the next one (:func:`sweep_secrets`);
- after each run, every file under the run directory is checked for the secret values we know of (named secrets,
  the become password, dropped variables) and any found is overwritten with ``********`` (with a warning);
- events go through a queue to a progress display (hosts, current task, changed/failed counts) and to
  ``<runs_dir>/<ident>/events.jsonl``;
- a run is never cancelled half-way: Ctrl-C is handled by :class:`PhaseInterrupt` between runs;
- facts are cached between runs in ``<runs_dir>/.facts`` (``gathering = smart``, JSON files, for
  :data:`FACT_CACHE_SECONDS`), unless our environment or the pipeline's sets ``ANSIBLE_GATHERING`` or
  ``ANSIBLE_CACHE_PLUGIN``: the playbooks read only the distribution, and a rollback should not gather again what
  the deployment before it gathered (about a second per run).
"""

from __future__ import annotations

import json
import keyword
import os
import queue
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from . import faults
from .errors import ExitCode, ItopctlError
from .process import ProcessId, start_time

# How long a host's cached facts serve the runs after the one that gathered them; a day covers a deployment and the
# rollbacks that follow it (a host reinstalled under the same name in that time: remove <runs_dir>/.facts).
FACT_CACHE_SECONDS = 86400
FACT_CACHE_DIR = ".facts"
# Variables ansible-runner itself sets for the child and that must survive our filtering.
_RUNNER_KEYS = frozenset(
    {"AWX_ISOLATED_DATA_DIR", "RUNNER_OMIT_EVENTS", "RUNNER_ONLY_FAILED_EVENTS", "ORIGINAL_STDOUT_CALLBACK"}
)
# Where the secrets file goes, best first: memory only, then the user's private runtime dir (the temp dir last).
_TMPFS = "/dev/shm"  # noqa: S108 - a fresh 0700 directory is made in it, the file in that one is 0600
_SECRETS_DIR = re.compile(r"^itopctl-secrets-(\d+)-([0-9a-z]+)-(\d+)-")  # pid, boot id, start ticks
# Words in a variable name that say its value is a secret; KEY only at the end (ANSIBLE_HOST_KEY_CHECKING is not).
_SECRET_WORDS = frozenset({"PASS", "PASSWD", "PASSWORD", "PASSPHRASE", "TOKEN", "SECRET", "CREDENTIAL", "CREDENTIALS"})
_BECOME_PASS = ("ANSIBLE_BECOME_PASS", "ANSIBLE_BECOME_PASSWORD")
_SCRUBBED = b"********"
_MIN_SCRUB = 8  # a shorter value ("true", "admin") would be scrubbed from everywhere it happens to appear


@dataclass(frozen=True)
class HostStats:
    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0

    @property
    def failed(self) -> bool:
        return self.failures > 0 or self.unreachable > 0


@dataclass(frozen=True)
class RunResult:
    """What one ansible-runner run did. ``ok`` means status successful, rc 0 and no failed host."""

    ident: str
    phase: str
    status: str
    rc: int
    duration: float
    private_data_dir: str
    hosts: dict[str, HostStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0 and not self.failed_hosts

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if s.failed)

    @property
    def ok_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if not s.failed)

    def hosts_past(self, task: str) -> list[str]:
        """The hosts on which the task named ``task`` ran and succeeded, from the run's own event records: how far
        a run that does several things (a rollback, then its verify) got on each host."""
        found: set[str] = set()
        for path in Path(self.private_data_dir).glob("artifacts/*/job_events/*.json"):
            event = json.loads(path.read_text(encoding="utf-8"))
            data = event.get("event_data") or {}
            if event.get("event") == "runner_on_ok" and data.get("task") == task:
                found.add(str(data.get("host", "")))
        return sorted(found)


@dataclass
class Progress:
    """The live view of one run, updated from its events."""

    phase: str
    ident: str
    play: str = ""
    task: str = ""
    hosts: set[str] = field(default_factory=set)
    ok: int = 0
    changed: int = 0
    failed: int = 0
    failed_tasks: list[str] = field(default_factory=list)

    def apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if host:
            self.hosts.add(str(host))
        if kind == "playbook_on_play_start":
            self.play = str(data.get("play", ""))
        elif kind == "playbook_on_task_start":
            self.task = str(data.get("task", ""))
        elif kind == "runner_on_ok":
            self.ok += 1
            if (data.get("res") or {}).get("changed"):
                self.changed += 1
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            self.failed += 1
            msg = str((data.get("res") or {}).get("msg", ""))[:300]
            self.failed_tasks.append(f"{host}: {data.get('task', '')}: {msg}")


class Display(Protocol):
    def phase_started(self, phase: str, ident: str, hosts: Sequence[str] | None) -> None: ...
    def progress(self, progress: Progress) -> None: ...
    def phase_finished(self, result: RunResult, progress: Progress) -> None: ...
    def message(self, text: str) -> None: ...


class ConsoleDisplay:
    """Progress on stderr: one live line on a terminal, plain lines otherwise."""

    def __init__(self, stream: Any = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._last = 0.0

    def message(self, text: str) -> None:
        try:
            self._clear()
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass  # the terminal went away (SIGHUP): a display must never stop a deployment

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")

    def phase_started(self, phase: str, ident: str, hosts: Sequence[str] | None) -> None:
        target = ", ".join(hosts) if hosts else "all hosts"
        self.message(f"==> {phase} on {target} (run {ident})")

    def progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self.live or now - self._last < 0.1:
            return
        self._last = now
        line = (
            f"[{progress.phase}] hosts {len(progress.hosts)} | ok {progress.ok} changed {progress.changed} "
            f"failed {progress.failed} | {progress.task}"
        )
        try:
            self.stream.write("\r\x1b[K" + line[:160])
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def phase_finished(self, result: RunResult, progress: Progress) -> None:
        state = "ok" if result.ok else f"FAILED ({result.status}, rc {result.rc})"
        self.message(
            f"<== {result.phase}: {state} in {result.duration:.1f}s; hosts {len(result.hosts)}, "
            f"changed {progress.changed}, failed {progress.failed}"
        )
        for line in progress.failed_tasks[:10]:
            self.message(f"    failed: {line}")


class NullDisplay:
    def phase_started(self, phase: str, ident: str, hosts: Sequence[str] | None) -> None:
        pass

    def progress(self, progress: Progress) -> None:
        pass

    def phase_finished(self, result: RunResult, progress: Progress) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def _event_record(ident: str, phase: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-lines log entry of an event: what happened where, without module results (they may be large)."""
    data = event.get("event_data") or {}
    record: dict[str, Any] = {
        "at": event.get("created") or datetime.now(UTC).isoformat(),
        "ident": ident,
        "phase": phase,
        "counter": event.get("counter"),
        "event": event.get("event"),
    }
    for key in ("host", "play", "task", "task_action"):
        if data.get(key):
            record[key] = data[key]
    res = data.get("res")
    if isinstance(res, dict):
        record["changed"] = bool(res.get("changed"))
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and res.get("msg"):
            record["msg"] = str(res["msg"])[:1000]
    if event.get("event") == "playbook_on_stats":
        for key in ("ok", "changed", "failures", "dark", "skipped"):
            record[key] = data.get(key) or {}
    return record


class PlaybookRunner:
    """Runs one playbook per call through ansible-runner; see the module docstring for the guarantees."""

    def __init__(
        self,
        runs_dir: Path,
        *,
        keep: int = 50,
        passthrough: Sequence[str] = ("PATH", "HOME", "LANG"),
        secret_names: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        display: Display | None = None,
        environ: Mapping[str, str] | None = None,
        secrets_base: Path | None = None,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.keep = keep
        self.passthrough = tuple(passthrough)
        self.secret_names = tuple(secret_names)
        self.secret_vars = _secret_var_names(self.secret_names)
        self.secrets_base = secrets_base
        self.environment = dict(environment or {})
        self.display: Display = display or NullDisplay()
        self.environ = dict(os.environ if environ is None else environ)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._warned = False
        sweep_secrets(self.secrets_base or default_secrets_base(self.environ))

    # -- environment and secrets ----------------------------------------------------------------------
    def secret_values(self) -> dict[str, str]:
        """The named secrets set in our environment, by variable name (``DB_PASSWORD`` -> ``db_password``), and
        the become password as ``ansible_become_password``."""
        values = {var: self.environ[name] for name, var in self.secret_vars.items() if self.environ.get(name)}
        become = next((self.environ[n] for n in _BECOME_PASS if self.environ.get(n)), None)
        if become is not None and "ansible_become_password" not in values:
            values["ansible_become_password"] = become
        return values

    def _wanted(self) -> dict[str, str]:
        """The variables the child would get by name: ANSIBLE_*, the pass-through ones, the pipeline's."""
        env = {k: v for k, v in self.environ.items() if k.startswith("ANSIBLE_") or k in self.passthrough}
        env.update(self.environment)
        return env

    def dropped_variables(self) -> list[str]:
        """The variables :meth:`child_environment` leaves out because their names say they hold a secret."""
        return sorted(k for k in self._wanted() if secret_name(k) and k not in self.secret_names)

    def known_secrets(self) -> list[str]:
        """Every secret value we know of, to scrub from what ansible-runner writes: named secrets, the become
        password, and the value of every variable of ours whose name says it is a secret."""
        values = set(self.secret_values().values())
        values.update(v for k, v in self.environ.items() if secret_name(k) or k in self.secret_names)
        return sorted(v for v in values if len(v) >= _MIN_SCRUB)

    def child_environment(self) -> dict[str, str]:
        """ANSIBLE_*, the pass-through names and the pipeline's environment, without any secret-named variable
        (nor a named secret: :meth:`_runner` drops those too)."""
        env = {k: v for k, v in self._wanted().items() if not secret_name(k) and k not in self.secret_names}
        if not {"ANSIBLE_GATHERING", "ANSIBLE_CACHE_PLUGIN"} & env.keys():
            env.update({
                "ANSIBLE_GATHERING": "smart",
                "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.jsonfile",
                "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(self.runs_dir / FACT_CACHE_DIR),
                "ANSIBLE_CACHE_PLUGIN_TIMEOUT": str(FACT_CACHE_SECONDS),
            })  # fmt: skip
        # ansible-playbook next to this Python first, so a venv works without being activated
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, *(p for p in env.get("PATH", os.defpath).split(os.pathsep) if p)])
        return env

    # -- the inventory ------------------------------------------------------------------------------
    def inventory_groups(self, inventory: Path) -> dict[str, list[str]]:
        """Each group of ``inventory`` and its hosts (children's hosts included), read by ``ansible-inventory``
        in the same environment as the runs; no host is contacted, no variable is templated."""
        import subprocess  # noqa: PLC0415 - only a switch in a given order needs it

        if not inventory.exists():
            raise ItopctlError(f"inventory not found: {inventory}", ExitCode.BAD_INPUT)
        env = self.child_environment()
        binary = shutil.which("ansible-inventory", path=env["PATH"]) or "ansible-inventory"
        proc = subprocess.run(
            [binary, "-i", str(inventory), "--list", "--export"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise ItopctlError(
                f"cannot read the groups of {inventory}: {proc.stderr.strip()[-500:]}", ExitCode.BAD_INPUT
            )
        return inventory_group_hosts(json.loads(proc.stdout))

    # -- one run --------------------------------------------------------------------------------------
    def run(
        self,
        *,
        phase: str,
        playbook: Path,
        inventory: Path,
        extravars: Mapping[str, Any] | None = None,
        limit: Sequence[str] | None = None,
        project_dir: Path | None = None,
    ) -> RunResult:
        if not playbook.is_file():
            raise ItopctlError(f"playbook not found: {playbook}", ExitCode.BAD_INPUT)
        if not inventory.exists():
            raise ItopctlError(f"inventory not found: {inventory}", ExitCode.BAD_INPUT)
        extravars = dict(extravars or {})
        secrets = self.secret_values()
        if clash := sorted(secrets.keys() & extravars.keys()):
            raise ItopctlError(f"secret variables would clash with extra vars: {', '.join(clash)}", ExitCode.BAD_INPUT)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        ident = f"{stamp}-{phase}-{uuid.uuid4().hex[:8]}"
        private = self.runs_dir / ident
        self._events = queue.Queue()  # fresh for each run: nothing left over from a run that failed
        progress = Progress(phase=phase, ident=ident)
        self._warn_dropped()
        with self._secrets_file(secrets) as secrets_file:
            private.mkdir(parents=True, mode=0o700)
            try:
                runner = self._runner(
                    ident, private, playbook, inventory, extravars, limit, project_dir or playbook.parent, secrets_file
                )
                self.display.phase_started(phase, ident, limit)
                started = time.monotonic()
                stats = self._drive(runner, private / "events.jsonl", progress)
                faults.point(f"in-run-{phase}")
            finally:
                self._scrub(private, ident)
        result = RunResult(
            ident=ident,
            phase=phase,
            status=str(runner.status),
            rc=int(runner.rc if runner.rc is not None else -1),
            duration=round(time.monotonic() - started, 3),
            private_data_dir=str(private),
            hosts=stats,
        )
        self.display.phase_finished(result, progress)
        self.rotate()
        return result

    def _warn_dropped(self) -> None:
        if self._warned:
            return
        self._warned = True
        for name in self.dropped_variables():
            if name in _BECOME_PASS:
                self.display.message(
                    f"note: {name} reaches ansible-playbook as ansible_become_password in the secrets file, "
                    "not in its environment (which ansible-runner writes to the run directory)"
                )
            else:
                self.display.message(
                    f"warning: {name} is not passed to ansible-playbook: its name says it holds a secret, and "
                    "ansible-runner writes the environment to the run directory; name it in secret_env to get it "
                    "as an extra var, or give a file instead (e.g. ANSIBLE_VAULT_PASSWORD_FILE)"
                )

    def _scrub(self, private: Path, ident: str) -> list[Path]:
        """Overwrite every known secret value found under the run directory (raw or JSON-escaped)."""
        forms: set[bytes] = set()
        for value in self.known_secrets():
            escaped = (json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])
            forms.update(form.encode() for form in (value, *escaped))
        scrubbed: list[Path] = []
        if not forms:
            return scrubbed
        ordered = sorted(forms, key=len, reverse=True)  # the longest first: a value may hold a shorter one
        for path in (p for p in private.rglob("*") if p.is_file() and not p.is_symlink()):
            data = path.read_bytes()
            clean = data
            for form in ordered:
                clean = clean.replace(form, _SCRUBBED)
            if clean != data:
                path.write_bytes(clean)
                scrubbed.append(path)
        if scrubbed:
            where = ", ".join(str(p.relative_to(private)) for p in scrubbed[:5])
            self.display.message(
                f"warning: a secret value was written by the run {ident} (a task printed it?) and was scrubbed "
                f"from {len(scrubbed)} file(s): {where}; keep secrets in no_log tasks"
            )
        return scrubbed

    @contextmanager
    def _secrets_file(self, secrets: Mapping[str, str]) -> Iterator[Path | None]:
        """The secrets as an extra-vars file outside the run directory, removed on the way out, come what may."""
        if not secrets:
            yield None
            return
        base = Path(self.secrets_base or default_secrets_base(self.environ))
        if base.resolve().is_relative_to(self.runs_dir.resolve()):
            raise ItopctlError(f"secrets must stay out of the runs directory: {base}", ExitCode.BAD_INPUT)
        me = ProcessId.me()
        owner = f"{me.pid}-{me.started.replace(':', '-')}"  # so a later itopctl knows when its owner is gone
        directory = Path(tempfile.mkdtemp(prefix=f"itopctl-secrets-{owner}-", dir=base))  # mode 0700
        try:
            path = directory / "secrets.yml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(_unsafe_yaml(secrets))
            yield path
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _runner(  # noqa: PLR0917 - private helper of run()
        self,
        ident: str,
        private: Path,
        playbook: Path,
        inventory: Path,
        extravars: dict[str, Any],
        limit: Sequence[str] | None,
        project_dir: Path,
        secrets_file: Path | None,
    ) -> Any:
        """An ansible-runner ``Runner`` whose child sees only the environment we chose (and no secret in it)."""
        from ansible_runner.config.runner import RunnerConfig  # type: ignore[import-untyped]  # noqa: PLC0415
        from ansible_runner.runner import Runner  # type: ignore[import-untyped]  # noqa: PLC0415

        env = self.child_environment()
        config = RunnerConfig(
            private_data_dir=str(private),
            playbook=str(playbook.resolve()),
            inventory=str(inventory.resolve()),
            extravars=extravars,
            limit=",".join(limit) if limit else None,
            ident=ident,
            envvars=env,
            suppress_env_files=True,
            quiet=True,
            project_dir=str(project_dir.resolve()),
            # only the file's path reaches artifacts/<ident>/command, never its content
            cmdline=shlex.join(["--extra-vars", f"@{secrets_file}"]) if secrets_file else None,
        )
        config.prepare()
        # ansible-runner seeds the child's environment with all of ours: keep only what we decided to pass, and
        # never a secret (even one named as pass-through or ANSIBLE_*): ansible-runner writes this env to a file.
        config.env = {
            k: v
            for k, v in config.env.items()
            if (k in env or k.startswith("ANSIBLE_") or k in _RUNNER_KEYS)
            and k not in self.secret_names
            and not secret_name(k)
        }
        # ansible-runner points the fact cache at this run's artifacts: ours (or the operator's) outlives the run
        config.env.update({k: v for k, v in env.items() if k == "ANSIBLE_GATHERING" or k.startswith("ANSIBLE_CACHE_")})

        def on_event(event: dict[str, Any]) -> bool:
            self._events.put(event)
            return True  # keep it in artifacts/<ident>/job_events for the audit

        return Runner(config, event_handler=on_event, cancel_callback=lambda: False)

    def _drive(self, runner: Any, log_path: Path, progress: Progress) -> dict[str, HostStats]:
        """Run in a worker thread; here, feed the display and the JSON-lines log from the event queue."""
        failure: list[BaseException] = []

        def work() -> None:
            try:
                runner.run()
            except BaseException as exc:
                failure.append(exc)
            finally:
                self._events.put(None)

        worker = threading.Thread(target=work, name=f"ansible-runner-{progress.ident}", daemon=True)
        stats: dict[str, HostStats] = {}
        with log_path.open("w", encoding="utf-8") as log:
            worker.start()
            while (event := self._events.get()) is not None:
                progress.apply(event)
                if event.get("event") == "playbook_on_stats":
                    stats = _host_stats(event.get("event_data") or {})
                log.write(json.dumps(_event_record(progress.ident, progress.phase, event), default=str) + "\n")
                self.display.progress(progress)
            worker.join()
        if failure:
            raise ItopctlError(f"ansible-runner failed: {failure[0]}", ExitCode.FAILED) from failure[0]
        return stats

    def rotate(self) -> list[Path]:
        """Remove the oldest run directories beyond ``keep`` (names start with a UTC timestamp; the fact cache is not
        a run)."""
        runs = sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and p.name != FACT_CACHE_DIR)
        removed = runs[: max(0, len(runs) - self.keep)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed


def inventory_group_hosts(listing: Mapping[str, Any]) -> dict[str, list[str]]:
    """``ansible-inventory --list`` output -> each group's hosts, its children's hosts included (sorted)."""

    def hosts(group: str, seen: frozenset[str]) -> set[str]:
        entry = listing.get(group) or {}
        found = set(entry.get("hosts") or [])
        for child in entry.get("children") or []:
            if child not in seen:
                found |= hosts(child, seen | {child})
        return found

    groups = [name for name in listing if name != "_meta"]
    return {group: sorted(hosts(group, frozenset({group}))) for group in groups}


def _host_stats(data: Mapping[str, Any]) -> dict[str, HostStats]:
    names: set[str] = set()
    for key in ("ok", "changed", "failures", "dark", "skipped", "processed"):
        names.update((data.get(key) or {}).keys())

    def get(key: str, host: str) -> int:
        return int((data.get(key) or {}).get(host, 0))

    return {
        host: HostStats(
            ok=get("ok", host),
            changed=get("changed", host),
            failures=get("failures", host),
            unreachable=get("dark", host),
            skipped=get("skipped", host),
        )
        for host in sorted(names)
    }


def _secret_var_names(names: Sequence[str]) -> dict[str, str]:
    """Secret environment variable -> extra var: the name in lower case, which must be a usable, unique variable."""
    variables: dict[str, str] = {}
    for name in dict.fromkeys(names):  # a name given twice is one secret
        var = name.lower()
        if not var.isidentifier() or keyword.iskeyword(var) or not var.isascii():
            raise ItopctlError(f"secret_env: {name!r} does not make a variable name", ExitCode.BAD_INPUT)
        if var in variables.values():
            raise ItopctlError(f"secret_env: {name!r} gives the variable {var!r} twice", ExitCode.BAD_INPUT)
        variables[name] = var
    return variables


def secret_name(name: str) -> bool:
    """``ANSIBLE_BECOME_PASS``, ``ANSIBLE_GALAXY_SERVER_X_TOKEN``, ``AWS_SECRET_ACCESS_KEY``: a name that says its
    value is a secret. A name ending in ``_FILE``, ``_PATH`` or ``_DIR`` holds a path
    (``ANSIBLE_VAULT_PASSWORD_FILE``), not the secret."""
    words = name.upper().split("_")
    if words[-1] in ("FILE", "PATH", "DIR"):
        return False
    return bool(_SECRET_WORDS.intersection(words)) or words[-1] in ("KEY", "PASS")


def sweep_secrets(base: Path) -> list[Path]:
    """Remove the secrets directories in ``base`` whose owner (pid + start time, in the name) is gone: what an
    itopctl killed with SIGKILL (or by a power cut of a non-tmpfs base) left. Only ours (same uid)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        match = _SECRETS_DIR.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid, boot, ticks = match.groups()
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if start_time(int(pid)) != f"{boot}:{ticks}":
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def default_secrets_base(environ: Mapping[str, str]) -> Path:
    """Where secrets directories are made when no base is given: a tmpfs, the runtime dir, else the temp dir."""
    return Path(_secrets_base(environ) or tempfile.gettempdir())


def _secrets_base(environ: Mapping[str, str]) -> str | None:
    """A tmpfs when there is one (the secret never reaches a disk), else the user's runtime dir (None: neither)."""
    for candidate in (_TMPFS, environ.get("XDG_RUNTIME_DIR", "")):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def _unsafe_yaml(values: Mapping[str, str]) -> str:
    """``name: !unsafe "value"`` lines; every character but printable ASCII is escaped, so any value round-trips,
    and ``!unsafe`` keeps Ansible from templating it (a password may well hold ``{{``)."""

    def quoted(value: str) -> str:
        return "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\U{ord(c):08x}" for c in value)

    return "".join(f'{var}: !unsafe "{quoted(value)}"\n' for var, value in sorted(values.items()))


class PhaseInterrupt:
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP asks to stop at the next phase boundary instead of killing a run half-way.

    ansible-playbook runs in its own session (ansible-runner spawns it on a pty), so the terminal's SIGINT reaches
    only us; we note it, tell the operator, and the orchestrator checks :attr:`requested` between phases. SIGHUP
    (the operator's SSH session dropped) is handled the same way: the deployment stops cleanly at the next phase
    boundary, records where, removes its secrets file and gives its lock back; what it prints then may go nowhere.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, display: Display) -> None:
        self.display = display
        self.requested = False
        self.phase = ""

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.display.message(
            f"\n!! {signal.Signals(signum).name} received: itopctl stops after the current phase "
            f"({self.phase or 'starting'}); a switch is never cut half-way"
        )

    @contextmanager
    def installed(self) -> Iterator[PhaseInterrupt]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
