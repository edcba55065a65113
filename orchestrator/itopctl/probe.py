"""``itopctl status --probe``: what each host of a stage really runs, read through the release engine.

The state store says what itopctl last recorded; after a killed or abandoned deployment the hosts may run mixed
releases. The probe runs one small playbook (below, written to a temporary file: it is part of itopctl, not of a
project) through the same :class:`~itopctl.runner.PlaybookRunner` as every phase: the collection's module
``unistra.itop.release`` with ``operation: info`` on each application root of the stage (``release_roots`` in the
pipeline; paths may use Ansible variables, e.g. ``"{{ lab_root }}/{{ inventory_hostname }}"``). It changes
nothing on the hosts. The module results are read back from the run's own event records.

:func:`release_host_locks` runs the same way, with ``operation: unlock``: at the end of each promotion and rollback
itopctl gives back the engine's host lock it held on every root with its stage-lock token (``deploy_lock_id``),
whatever the outcome, since the site playbooks take it at the start of every phase but cannot know the last one.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import bad_input
from .pipeline import Pipeline, Stage
from .runner import PlaybookRunner, RunResult

PROBE_TASK = "Read the release state of each application root"
PROBE_PLAYBOOK = f"""\
# itopctl status --probe: read-only, the release engine's info operation on each application root
- name: Read what each host runs
  hosts: all
  gather_facts: false
  tasks:
    - name: {PROBE_TASK}
      unistra.itop.release:
        root: "{{{{ item.value }}}}"
        operation: info
      loop: "{{{{ itopctl_probe_roots | dict2items }}}}"
      loop_control:
        label: "{{{{ item.key }}}}"
      check_mode: true
"""


UNLOCK_TASK = "Give back the host lock of the deployment"
UNLOCK_PLAYBOOK = f"""\
# itopctl: the end of a deployment, the engine's host lock it held with its token given back on each root
- name: Give back the deployment's host locks
  hosts: all
  gather_facts: false
  tasks:
    - name: {UNLOCK_TASK}
      unistra.itop.release:
        root: "{{{{ item.0.value }}}}"
        operation: unlock
        lock_id: "{{{{ item.1 }}}}"
      loop: "{{{{ itopctl_probe_roots | dict2items | product(itopctl_lock_ids) | list }}}}"
      loop_control:
        label: "{{{{ item.0.key }}}}"
      register: __itopctl_unlock
      # a root locked by someone else now (its lease ran out and it was taken over) is theirs: left alone
      failed_when: __itopctl_unlock is failed and 'another lock_id' not in (__itopctl_unlock.msg | default(''))
"""


@dataclass(frozen=True)
class HostApp:
    host: str
    app: str
    current: str | None
    previous: str | None
    lock: str | None = None  # the engine's host lock: who holds it
    error: str = ""


@dataclass(frozen=True)
class StageProbe:
    stage: str
    run: str
    hosts: tuple[HostApp, ...] = ()
    unreachable: tuple[str, ...] = ()
    summary: str = ""
    consistent: bool = False
    releases: tuple[str, ...] = field(default_factory=tuple)


def _results(private_data_dir: Path) -> tuple[list[HostApp], list[str]]:
    """The module's results per host and root, from the run's job events; and the hosts that did not answer."""
    found: list[HostApp] = []
    unreachable: list[str] = []
    for path in sorted((private_data_dir / "artifacts").glob("*/job_events/*.json")):
        event = json.loads(path.read_text(encoding="utf-8"))
        data: dict[str, Any] = event.get("event_data") or {}
        host = str(data.get("host", ""))
        if event.get("event") == "runner_on_unreachable":
            unreachable.append(host)
            continue
        if event.get("event") not in ("runner_item_on_ok", "runner_item_on_failed"):
            continue
        res: dict[str, Any] = data.get("res") or {}
        item = res.get("item") or {}
        lock = res.get("lock") or None
        ok = event.get("event") == "runner_item_on_ok"
        if ok and res.get("current") is None and not res.get("releases") and lock is None:
            continue  # an application this host does not run (a data host has no iTop root): nothing to report
        found.append(
            HostApp(
                host=host,
                app=str(item.get("key", "?")),
                current=res.get("current"),
                previous=res.get("previous"),
                lock=f"{lock.get('owner')} ({lock.get('reason')})" if isinstance(lock, dict) else None,
                error=str(res.get("msg", "")) if event.get("event") == "runner_item_on_failed" else "",
            )
        )
    return found, sorted(set(unreachable))


def _run_on_roots(
    runner: PlaybookRunner, pipeline: Pipeline, stage: Stage, phase: str, text: str, **more: Any
) -> RunResult:
    """One of itopctl's own playbooks (``text``) on every host of ``stage``, looping over its ``release_roots``."""
    with tempfile.TemporaryDirectory(prefix=f"itopctl-{phase}-") as tmp:
        playbook = Path(tmp) / f"{phase}.yml"
        playbook.write_text(text, encoding="utf-8")
        return runner.run(
            phase=phase,
            playbook=playbook,
            inventory=stage.inventory,
            extravars={
                **stage.extra_vars,
                "deploy_stage": stage.name,
                "itopctl_probe_roots": dict(stage.release_roots),
                **more,
            },
            project_dir=pipeline.path.parent,
        )


def release_host_locks(runner: PlaybookRunner, pipeline: Pipeline, stage: Stage, lock_ids: Sequence[str]) -> RunResult:
    """Unlock, on every root of every host of ``stage``, the engine's host lock held with one of ``lock_ids``
    (only those: another holder's lock is left alone; a root without a lock is left as it is)."""
    return _run_on_roots(runner, pipeline, stage, "unlock", UNLOCK_PLAYBOOK, itopctl_lock_ids=list(lock_ids))


def probe_stage(runner: PlaybookRunner, pipeline: Pipeline, stage: Stage) -> StageProbe:
    if not stage.release_roots:
        raise bad_input(
            f"stage {stage.name} has no release_roots in {pipeline.path}: name the application roots to probe, "
            "e.g. `release_roots: {itop: /srv/itop}` in defaults or in the stage"
        )
    if not stage.inventory.exists():
        raise bad_input(f"inventory of stage {stage.name} not found: {stage.inventory}")
    result = _run_on_roots(runner, pipeline, stage, "probe", PROBE_PLAYBOOK)
    hosts, unreachable = _results(Path(result.private_data_dir))
    hosts.sort(key=lambda h: (h.host, h.app))
    releases = sorted({h.current or "(none)" for h in hosts})
    problems = [f"{h.host}/{h.app}: {h.error}" for h in hosts if h.error] + [f"{h}: unreachable" for h in unreachable]
    consistent = len(releases) == 1 and not problems and bool(hosts)
    if consistent:
        summary = f"every host runs {releases[0]} ({len({h.host for h in hosts})} host(s))"
    elif not hosts and not problems:
        summary = f"no answer from any host (run {result.ident}: {result.status})"
    else:
        by_release = {r: sorted({h.host for h in hosts if (h.current or "(none)") == r}) for r in releases}
        parts = [f"{r} on {', '.join(names)}" for r, names in by_release.items()]
        summary = ("MIXED: " if len(releases) > 1 else "") + "; ".join(parts + problems)
    return StageProbe(
        stage=stage.name,
        run=result.ident,
        hosts=tuple(hosts),
        unreachable=tuple(unreachable),
        summary=summary,
        consistent=consistent,
        releases=tuple(releases),
    )
