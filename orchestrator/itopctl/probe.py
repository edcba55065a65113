"""``itopctl status --probe`` and the drift check: what each host of a stage really runs, read through the release
engine, against what itopctl recorded.

The state store says what itopctl last recorded; after a killed or abandoned deployment the hosts may run mixed
releases, and someone may have switched or edited a host by hand. The probe runs one small playbook (below, written
to a temporary file: it is part of itopctl, not of a project) through the same :class:`~itopctl.runner.PlaybookRunner`
as every phase, which runs the collection's ``unistra.itop.app_release`` ``tasks_from: hosts`` (the same tasks close
a deployment in its last run, :func:`closed_by`): the module ``unistra.itop.release`` with ``operation: info`` and
``checksum: true`` on each application root of the stage (``release_roots`` in the pipeline; paths may use Ansible
variables, e.g. ``"{{ lab_root }}/{{ inventory_hostname }}"``): the current release and the checksum of its tree. It
changes nothing on the hosts. The module results are read back from the run's own event records.

:func:`release_host_locks` runs the same playbook with the ``unlock`` task too: at the end of each promotion and
rollback itopctl gives back the engine's host lock it held on every root with its stage-lock token
(``deploy_lock_id``), whatever the outcome, since the site playbooks take it at the start of every phase but cannot
know the last one (unless the deployment's last run did it itself, as it succeeded: :func:`closed_by`); the same run
reads the hosts, and the store keeps that as the stage's drift reference.
:func:`compare` is the drift check: each root now against that reference."""

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
from .store import HostTree

# the read's task in the collection's unistra.itop.app_release tasks_from hosts, whose results are read back
PROBE_TASK = "Read the release state of each application root"
HOSTS_PLAYBOOK = """\
# itopctl's own run on every host of a stage: first the host locks of the deployments in itopctl_lock_ids given back
# on each root (the end of a deployment, or what a killed itopctl left), then, with itopctl_probe_read, the release
# engine's info on each root with the checksum of its current release tree (status --probe, the drift check, what
# a deployment leaves). Nothing else changes.
- name: Give back the deployment's host locks and read what each host runs
  hosts: all
  gather_facts: false
  tasks:
    - name: Give back the host locks and read each root
      ansible.builtin.include_role:
        name: unistra.itop.app_release
        tasks_from: hosts
      vars:
        app_release_hosts_roots: "{{ itopctl_probe_roots }}"
        app_release_hosts_lock_ids: "{{ itopctl_lock_ids }}"
        app_release_hosts_read: "{{ itopctl_probe_read }}"
"""


@dataclass(frozen=True)
class HostApp:
    host: str
    app: str
    current: str | None
    previous: str | None
    lock: str | None = None  # the engine's host lock: who holds it
    error: str = ""
    tree: str | None = None  # the checksum of the current release's tree (``sha256:...``)


@dataclass(frozen=True)
class StageProbe:
    stage: str
    run: str
    hosts: tuple[HostApp, ...] = ()
    unreachable: tuple[str, ...] = ()
    summary: str = ""
    consistent: bool = False
    releases: tuple[str, ...] = field(default_factory=tuple)
    answered: tuple[str, ...] = ()  # every host that ran the probe (a host without any application root included)
    seconds: float = 0.0  # the probe run's duration


@dataclass(frozen=True)
class Drift:
    """A stage's hosts compared with what itopctl recorded at the end of its last deployment there (:func:`compare`).

    ``drifted``: what changed outside itopctl (blocks a promotion unless overridden); ``notes``: what could not be
    checked or is not drift (no reference yet, an unreachable host, a host itopctl never deployed)."""

    checked: bool
    drifted: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    reference: int | None = None  # the deployment whose end was recorded

    @property
    def summary(self) -> str:
        if self.drifted:
            return f"DRIFT on {len(self.drifted)} root(s) since deployment #{self.reference}"
        if not self.checked:
            return "drift not checked: " + "; ".join(self.notes)
        return f"no drift since deployment #{self.reference}" + (f" ({'; '.join(self.notes)})" if self.notes else "")


def compare(reference: Sequence[HostTree], probe: StageProbe, unrecorded: int | None = None) -> Drift:
    """Each root's current release and release-tree checksum now against ``reference`` (the store's host trees).

    ``unrecorded`` is a deployment of the stage newer than the reference that recorded nothing (a killed itopctl):
    the hosts may then legitimately differ, and the drift is not checked."""
    if not reference:
        return Drift(False, notes=(f"nothing recorded for {probe.stage} yet (recorded at the end of each deployment)",))
    since = reference[0].deployment_id
    if unrecorded is not None:
        return Drift(
            False,
            notes=(f"deployment #{unrecorded} ended without recording what the hosts run (was itopctl killed?)",),
            reference=since,
        )
    seen = {(h.host, h.app): h for h in probe.hosts}
    drifted: list[str] = []
    notes: list[str] = []
    for ref in reference:
        where = f"{ref.host}/{ref.app}"
        now = seen.pop((ref.host, ref.app), None)
        if ref.host in probe.unreachable:
            notes.append(f"{ref.host}: unreachable, not checked")
        elif now is None and ref.host not in probe.answered:
            notes.append(f"{ref.host}: no longer in the inventory")
        elif now is not None and now.error:
            notes.append(f"{where}: not checked ({now.error})")
        elif now is None or now.current != ref.current_release:
            runs = now.current if now is not None and now.current else "nothing"
            drifted.append(f"{where}: runs {runs}, itopctl left {ref.current_release or 'nothing'} (switched by hand?)")
        elif now.tree != ref.tree_checksum:
            drifted.append(
                f"{where}: the tree of {now.current} changed (edited by hand?): checksum {short_checksum(now.tree)}, "
                f"recorded {short_checksum(ref.tree_checksum)}"
            )
    for (host, app), now in sorted(seen.items()):
        if now.current is not None:
            notes.append(f"{host}/{app}: runs {now.current}, never deployed there by itopctl (a new host?)")
    notes = sorted(set(notes), key=notes.index)
    return Drift(True, tuple(drifted), tuple(notes), since)


def short_checksum(checksum: str | None, missing: str = "none") -> str:
    """A tree checksum as people read it: the first 12 hex digits."""
    return (checksum or missing).removeprefix("sha256:")[:12]


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
        if str(data.get("task", "")) != PROBE_TASK:
            continue  # the unlock's items
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
                tree=(res.get("tree") or {}).get("checksum"),
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


def release_host_locks(
    runner: PlaybookRunner, pipeline: Pipeline, stage: Stage, lock_ids: Sequence[str], *, read: bool = False
) -> tuple[RunResult, StageProbe | None]:
    """Unlock, on every root of every host of ``stage``, the engine's host lock held with one of ``lock_ids``
    (only those: another holder's lock is left alone; a root without a lock is left as it is); with ``read``, in the
    same run, also read what each host runs (as :func:`probe_stage`)."""
    phase = "unlock" if lock_ids else "probe"  # the run's name in the runs directory
    result = _run_on_roots(
        runner, pipeline, stage, phase, HOSTS_PLAYBOOK, itopctl_lock_ids=list(lock_ids), itopctl_probe_read=read
    )
    return result, (_probe(stage, result) if read else None)


def closed_by(stage: Stage, result: RunResult) -> StageProbe | None:
    """What the hosts run, as read by a deployment's last run when it closed the deployment itself (the stage's
    playbook given ``itopctl_close``: its host locks given back and each root read, by the same tasks as
    :data:`HOSTS_PLAYBOOK`); None when it did not (a run that failed, a playbook without the close), which leaves the
    close to itopctl's own run."""
    if not result.ok:
        return None
    probe = _probe(stage, result)
    return probe if probe.hosts else None


def probe_stage(runner: PlaybookRunner, pipeline: Pipeline, stage: Stage) -> StageProbe:
    if not stage.release_roots:
        raise bad_input(
            f"stage {stage.name} has no release_roots in {pipeline.path}: name the application roots to probe, "
            "e.g. `release_roots: {itop: /srv/itop}` in defaults or in the stage"
        )
    if not stage.inventory.exists():
        raise bad_input(f"inventory of stage {stage.name} not found: {stage.inventory}")
    result = _run_on_roots(
        runner, pipeline, stage, "probe", HOSTS_PLAYBOOK, itopctl_lock_ids=[], itopctl_probe_read=True
    )
    return _probe(stage, result)


def _probe(stage: Stage, result: RunResult) -> StageProbe:
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
        answered=tuple(sorted(result.hosts)),
        seconds=result.duration,
    )
