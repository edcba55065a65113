"""Promotion, rollback and gates: the orchestrator's decisions, on top of the store and the runner.

A promotion is two-phase: ``prepare`` on every host (nothing switched if it fails), then ``switch`` in batches of
``batch_size`` hosts, then ``verify``. A failure after the first host switched is undone by :func:`undo_switch`
when the stage has ``auto_rollback``. Ctrl-C, SIGTERM and SIGHUP are honoured only between phases (never between
switch batches).

The stage lock is held for the whole deployment and renewed by a heartbeat (:mod:`itopctl.lease`); before every
playbook run and every record written the deployment checks the lock is still its own (fencing) and stops with
exit code 6 (``LOCK_LOST``) when it was taken over. When the stage names its ``release_roots``, the stage lock's
token also goes to every host (``deploy_lock_id``, with ``deploy_lock_lease``): the site playbooks take (or renew)
the release engine's host lock with it on each root at the start of every phase and pass it on
(``app_release_lock_id``), so nothing else changes those hosts meanwhile; when the deployment ends, whatever its
outcome, itopctl gives those host locks back itself (:func:`itopctl.probe.release_host_locks`); the store keeps the
token until then, so the host locks of an itopctl killed before are given back by the next deployment of the stage
before its first phase.

Drift: the run that gives the host locks back at the end of a deployment also reads what every root runs (its
``current`` and the checksum of its release tree), and the store keeps it as the stage's reference. Before a
promotion (and in ``itopctl status --probe``) the hosts are read again, in the same run that gives back the host
locks a killed itopctl left, and compared with it (:func:`itopctl.probe.compare`): a host switched or edited by hand
refuses the promotion unless the operator allows the drift with a reason, recorded on the deployment. Promoting a
release the stage already runs, verified, is that one short run: it confirms the hosts and does nothing else.

The stage's state and gates are read again once the lock is held: what was read before may have been changed by a
deployment that ran in between.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import faults
from .errors import ExitCode, ItopctlError, bad_input, refused
from .lease import HeldLock
from .pipeline import Pipeline, Stage
from .runner import ConsoleDisplay, Display, PhaseInterrupt, PlaybookRunner, RunResult
from .sentry import record_deploy
from .store import DeploymentRecord, LockLost, ReleaseRecord, StageState, Store, parse_iso, utcnow

if TYPE_CHECKING:
    from .probe import Drift, StageProbe


@dataclass(frozen=True)
class GateCheck:
    gate: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Outcome:
    """The result of promote/rollback, as printed (``--json`` prints it as is)."""

    status: str  # succeeded | failed | rolled_back | interrupted | lock_lost | nothing_to_do | ready
    message: str
    exit_code: ExitCode
    deployment: DeploymentRecord | None = None
    gates: tuple[GateCheck, ...] = ()


class PhaseFailed(Exception):
    """A phase failed after hosts were switched: raised inside :func:`undo_switch`."""

    def __init__(self, phase: str, message: str, run: RunResult | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.message = message
        self.run = run


@dataclass
class SwitchLedger:
    """What :func:`undo_switch` knows: the hosts switched so far and whether the undo ran."""

    switched: list[str] = field(default_factory=list)
    rolled_back: bool = False
    rollback_ok: bool = False
    rollback_detail: str = ""


@contextmanager
def undo_switch(
    rollback: Callable[[list[str]], RunResult] | None,
) -> Iterator[SwitchLedger]:
    """Yield a ledger of switched hosts; on any error inside, roll those hosts back (when ``rollback`` is given),
    note it in the ledger, and re-raise. ``rollback=None`` means auto-rollback is off or there is nowhere to go."""
    ledger = SwitchLedger()
    try:
        yield ledger
    except LockLost:
        raise  # the stage is someone else's now: change nothing more, not even to undo
    except BaseException:
        if rollback is not None and ledger.switched:
            ledger.rolled_back = True
            try:
                run = rollback(list(ledger.switched))
                ledger.rollback_ok = run.ok
                ledger.rollback_detail = f"rollback run {run.ident}: {run.status}" + (
                    f", failed on {', '.join(run.failed_hosts)}" if run.failed_hosts else ""
                )
            except ItopctlError as exc:
                ledger.rollback_detail = f"rollback could not run: {exc.message}"
        raise


def switch_steps(
    hosts: Sequence[str], order: Sequence[str], batch_size: int, members: Mapping[str, Sequence[str]]
) -> list[tuple[str, list[str]]]:
    """The switch runs, as (group, hosts): batches of ``hosts``; with a ``switch_order``, each group's prepared hosts
    in turn, in batches (a host in several groups is switched once per group, one component each time; a host in
    none of them has nothing to switch, and a group without a prepared host is skipped)."""
    if not order:
        return [("", batch) for batch in batches(list(hosts), batch_size)]
    return [
        (group, batch)
        for group in order
        for batch in batches([h for h in hosts if h in members.get(group, ())], batch_size)
    ]


def natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def batches(hosts: Sequence[str], size: int) -> list[list[str]]:
    ordered = sorted(hosts, key=natural_key)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _human(seconds: float) -> str:
    """``5400`` -> ``1h30m``; ``40`` -> ``40s``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n) or "0m"


class Orchestrator:
    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        *,
        runner: PlaybookRunner | None,
        user: str,
        lock_lease: int = 3600,
        display: Display | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.runner = runner
        self.user = user
        self.lock_lease = lock_lease
        self.display: Display = display or ConsoleDisplay()
        self.clock = clock

    # -- gates -----------------------------------------------------------------------------------------
    def gates(self, release: ReleaseRecord, stage: Stage) -> list[GateCheck]:
        """Every gate of ``stage`` for ``release``, passing or not, each with a sentence saying why."""
        now = self.clock()
        checks: list[GateCheck] = []
        previous = self.pipeline.previous(stage)
        if previous is not None:
            state = self.store.stage_state(previous.name)
            verified = self.store.verified_deployment(previous.name, release.id)
            running = state.current_release if state else None
            if running == release.id and verified is not None:
                checks.append(
                    GateCheck("previous-stage", True, f"{release.id} is deployed and verified on {previous.name}")
                )
            else:
                why = f"{previous.name} runs {running}" if running else f"nothing is deployed on {previous.name}"
                if running == release.id:
                    why = f"{previous.name} runs {release.id} but it was not verified ({state.health if state else ''})"
                checks.append(
                    GateCheck(
                        "previous-stage",
                        False,
                        f"{release.id} must be deployed and verified on {previous.name} first ({why}); "
                        "stages cannot be skipped",
                    )
                )
            if stage.gates.soak_seconds:
                need = stage.gates.soak_seconds
                if running == release.id and verified is not None and verified.finished_at:
                    soaked = (now - parse_iso(verified.finished_at)).total_seconds()
                    ok = soaked >= need
                    detail = f"soaked {_human(soaked)} on {previous.name}, {_human(need)} required"
                    if not ok:
                        detail += f" (wait {_human(need - soaked)} more)"
                    checks.append(GateCheck("soak", ok, detail))
                else:
                    checks.append(
                        GateCheck("soak", False, f"needs {_human(need)} on {previous.name}, where it is not running")
                    )
        if stage.gates.approvals:
            need_count = stage.gates.approvals
            records = self.store.approvals(release.id, stage.name)
            valid = sorted({a.approver for a in records if a.approver != self.user})
            detail = f"{len(valid)} of {need_count} approval(s) for {stage.name}" + (
                f" ({', '.join(valid)})" if valid else ""
            )
            if any(a.approver == self.user for a in records):
                detail += f"; your own approval ({self.user}) does not count for your promotion"
            checks.append(GateCheck("approvals", len(valid) >= need_count, detail))
        frozen = [w for w in stage.gates.freeze if w.contains(now)]
        if stage.gates.freeze:
            checks.append(
                GateCheck(
                    "freeze",
                    not frozen,
                    f"{stage.name} is frozen: {frozen[0].describe()}" if frozen else "no freeze window now",
                )
            )
        return checks

    def _check_files(self, stage: Stage, phases: Sequence[str]) -> None:
        problems = []
        if not stage.inventory.exists():
            problems.append(f"inventory of stage {stage.name} not found: {stage.inventory}")
        problems += [
            f"{phase} playbook of stage {stage.name} not found: {stage.playbooks[phase]}"
            for phase in phases
            if not stage.playbooks[phase].is_file()
        ]
        if problems:
            raise bad_input(problems[0], problems[1:])

    def _require_runner(self) -> PlaybookRunner:
        if self.runner is None:
            raise ItopctlError("no runner configured", ExitCode.INTERNAL)
        return self.runner

    def _extravars(self, release: ReleaseRecord, stage: Stage, deployment_id: int, **more: Any) -> dict[str, Any]:
        return {
            **stage.extra_vars,
            "release_id": release.id,
            "release_manifest": release.manifest,
            "deploy_stage": stage.name,
            "deploy_owner": self.user,
            "deploy_batch_size": stage.batch_size,
            "deploy_verify_checks": [vars(c) for c in stage.verify_checks],
            "itopctl_deployment_id": deployment_id,
            **more,
        }

    def _host_lock_vars(self, stage: Stage, lock: HeldLock) -> dict[str, Any]:
        """The host lock's token and lease for the playbooks: only where itopctl knows the roots, since it must be
        able to give the lock back at the end (a lock it could not release would refuse the next deployment)."""
        if not stage.release_roots:
            return {}
        return {"deploy_lock_id": lock.handle.record.token, "deploy_lock_lease": self.lock_lease}

    def _release_hosts(
        self, stage: Stage, runner: PlaybookRunner, held: dict[int, str], *, read: bool = False
    ) -> StageProbe | None:
        """Give back the host locks the deployments ``held`` (id -> token) hold; the store forgets them once done.
        With ``read``, the same run reads what every root runs (the drift check's probe), returned.
        A failure is a warning: they expire with their lease, and the next deployment of the stage tries again."""
        if not stage.release_roots or not (held or read):
            return None
        from .probe import release_host_locks  # noqa: PLC0415 - probe imports this module's neighbours only

        probe: StageProbe | None = None
        try:
            result, probe = release_host_locks(runner, self.pipeline, stage, sorted(set(held.values())), read=read)
        except ItopctlError as exc:
            problem = exc.message
        else:
            if result.ok:
                for deployment_id in held:
                    self.store.hold_host_locks(deployment_id, None)
                return probe
            problem = f"run {result.ident}: {result.status}" + (
                f", failed on {', '.join(result.failed_hosts)}" if result.failed_hosts else ""
            )
        if held:
            whose = ", ".join(f"#{d}" for d in sorted(held))
            self.display.message(
                f"warning: the host locks of deployment(s) {whose} on {stage.name} could not all be given back "
                f"({problem}); they expire within {self.lock_lease}s of their last phase, and the next deployment of "
                f"{stage.name} gives them back first"
            )
        return probe

    def drift(self, stage: Stage, probe: StageProbe) -> Drift:
        """``probe`` (what the hosts run now) against what the store recorded at the end of the stage's last
        deployment; not checked when a newer deployment recorded nothing (killed) or nothing was ever recorded."""
        from .probe import compare  # noqa: PLC0415

        reference = self.store.host_trees(stage.name)
        last = self.store.deployments(stage=stage.name, limit=1)
        newer = last[0].id if last and reference and last[0].id > reference[0].deployment_id else None
        return compare(reference, probe, newer)

    def _record_hosts(self, stage: Stage, deployment_id: int, probe: StageProbe | None) -> None:
        """What the hosts run as the deployment ends: the stage's next drift reference (nothing when not read)."""
        if probe is None or not probe.answered:
            return
        trees = [(h.host, h.app, h.current, h.tree) for h in probe.hosts if not h.error]
        self.store.record_host_trees(stage.name, deployment_id, trees, self.clock())

    def _drift_gate(self, stage: Stage, probe: StageProbe | None, allow_drift: str | None) -> str:
        """Refuse a promotion over drift unless allowed; return what to record on the deployment ("" if none)."""
        if probe is None:
            return ""
        drift = self.drift(stage, probe)
        for note in drift.notes:
            self.display.message(f"drift check on {stage.name}: {note}")
        if not drift.drifted:
            return ""
        if not allow_drift:
            raise refused(
                f"{stage.name}: {drift.summary}: nothing was changed. Find out who changed what, then promote with "
                f'--allow-drift "REASON" (recorded) to deploy over it, or roll back',
                drift.drifted,
            )
        self.display.message(f"drift allowed on {stage.name} by {self.user}: {allow_drift}")
        return f"{allow_drift} (allowed by {self.user}; {'; '.join(drift.drifted)})"

    @contextmanager
    def _closed_on_error(self, deployment_id: int) -> Iterator[None]:
        """A deployment that an unexpected error interrupts is recorded as failed, never left "running"."""
        try:
            yield
        except LockLost:
            raise  # recorded by the caller, without touching what the new holder owns
        except BaseException as exc:
            record = self.store.deployment(deployment_id)
            if record.result == "running":
                state = self.store.stage_state(record.stage)
                # hosts were switched: what the stage runs is not known for sure any more; say so in status
                touched = (
                    (state.current_release if state else None, state.previous_release if state else None,
                     f"unknown: itopctl stopped by an error during {record.phase}")
                    if record.switched_hosts else None
                )  # fmt: skip
                self.store.finish_deployment(
                    deployment_id,
                    result="failed",
                    now=self.clock(),
                    stage_state=touched,
                    message=f"itopctl stopped by an error during {record.phase}: {exc}",
                )
            raise

    @contextmanager
    def _locked(self, stage: Stage, reason: str) -> Iterator[HeldLock]:
        """The stage lock for one deployment, renewed by a heartbeat while held, given back on the way out."""
        handle = self.store.acquire_lock(
            stage.name, owner=self.user, reason=reason, kind="deploy", lease=self.lock_lease, now=self.clock()
        )
        with HeldLock(self.store, handle, self.lock_lease, self.clock) as lock:
            yield lock

    # -- promote ---------------------------------------------------------------------------------------
    def _promotion_plan(
        self, release_id: str, stage: Stage, *, redeploy: bool = False
    ) -> Outcome | tuple[ReleaseRecord, StageState | None, tuple[GateCheck, ...]]:
        """What a promotion starts from: the release, the stage's state and the gates, all passing (or refused)."""
        release = self.store.require_release(release_id)
        if release.rejected is not None:
            raise refused(
                f"release {release.id} was rejected by {release.rejected.rejected_by} at "
                f"{release.rejected.rejected_at}: {release.rejected.reason!r}; it can never be promoted"
            )
        state = self.store.stage_state(stage.name)
        if not redeploy and state is not None and state.current_release == release.id and state.health == "healthy":
            return Outcome("nothing_to_do", f"{release.id} already runs on {stage.name}, verified", ExitCode.OK)
        left = self.rolled_back_from(stage, release.id)
        if left is not None:
            # the release engine marks a release bad on every host a rollback left it on, and refuses to activate it:
            # a promotion would prepare, then fail its switch and roll back again
            raise refused(
                f"{release.id} was rolled back on {stage.name} (deployment #{left.id}, {left.started_by}, "
                f"{left.started_at}): its hosts mark it bad and refuse to switch to it; nothing was changed. Ship the "
                f"fix as a new release (the same artifacts under a new id if nothing was wrong with them), or put it "
                f"back on purpose with `itopctl rollback {stage.name} --to {release.id}`"
            )
        checks = tuple(self.gates(release, stage))
        blocked = [c for c in checks if not c.ok]
        if blocked:
            raise refused(
                f"promotion of {release.id} to {stage.name} refused by {len(blocked)} gate(s)",
                [f"{c.gate}: {c.detail}" for c in blocked],
            )
        return release, state, checks

    def promote(
        self, release_id: str, stage_name: str, *, check_only: bool = False, allow_drift: str | None = None
    ) -> Outcome:
        """Promote ``release_id`` to ``stage_name``. ``allow_drift`` (the operator's reason) lets it go over hosts
        that drifted from what itopctl left there; a release the stage already runs, verified, is only confirmed."""
        stage = self.pipeline.stage(stage_name)
        plan = self._promotion_plan(release_id, stage)
        redeploy = False
        if isinstance(plan, Outcome):
            if check_only or plan.status != "nothing_to_do" or not stage.release_roots:
                return plan
            confirmed = self._confirm(stage, release_id, allow_drift)
            if confirmed is not None:
                return confirmed
            redeploy = True  # drifted, and allowed: deploy it again over the drift
            plan = self._promotion_plan(release_id, stage, redeploy=True)
            assert not isinstance(plan, Outcome)
        self._check_files(stage, ("prepare", "switch", "verify", "rollback"))
        if check_only:
            return Outcome("ready", f"{release_id} can be promoted to {stage.name}", ExitCode.OK, gates=plan[2])
        self._require_runner()
        faults.point("before-lock")

        def start() -> Outcome | _Start:
            # again, under the lock: a deployment that ran since the first look may have changed the stage
            plan = self._promotion_plan(release_id, stage, redeploy=redeploy)
            if isinstance(plan, Outcome):
                return plan
            release, state, checks = plan
            # re-promoting what a stopped deployment left unverified: the undo goes to what ran before it
            current = state.current_release if state else None
            if state is not None and current == release.id:
                current = state.previous_release
            return _Start("promote", release, state, current, gates=checks, allow_drift=allow_drift)

        return self._deploy(stage, f"promote {release_id}", start, _Promotion)

    def _confirm(self, stage: Stage, release_id: str, allow_drift: str | None) -> Outcome | None:
        """The no-op promotion: one short run reads the hosts; they run ``release_id`` as itopctl left them (the
        outcome says so), or they drifted (refused, or None to deploy again when the drift is allowed)."""
        probe = self._release_hosts(stage, self._require_runner(), {}, read=True)
        if probe is None or not probe.answered:
            return Outcome(
                "nothing_to_do",
                f"{release_id} is recorded as running on {stage.name}, verified, but the hosts could not be read "
                f"to confirm it (see `itopctl status --probe --stage {stage.name}`)",
                ExitCode.FAILED,
            )
        drift = self.drift(stage, probe)
        if drift.drifted:
            if not allow_drift:
                raise refused(
                    f"{release_id} is recorded as running on {stage.name}, but {drift.summary}: nothing was changed. "
                    f'Promote again with --allow-drift "REASON" (recorded) to deploy {release_id} over it',
                    drift.drifted,
                )
            return None
        hosts = len({h.host for h in probe.hosts})
        wrong = sorted({f"{h.host}/{h.app}" for h in probe.hosts if h.current != release_id})
        if wrong or probe.unreachable or not drift.checked:
            problems = [*(f"{w} does not run it" for w in wrong), *(f"{h} unreachable" for h in probe.unreachable)]
            detail = "; ".join(problems + list(drift.notes))
            return Outcome(
                "nothing_to_do",
                f"{release_id} is recorded as running on {stage.name}, verified; NOT confirmed: {detail}",
                ExitCode.FAILED if problems else ExitCode.OK,
            )
        return Outcome(
            "nothing_to_do",
            f"{release_id} already runs on {stage.name}, verified; confirmed on {hosts} host(s) in "
            f"{probe.seconds:.1f}s: each runs it with its release tree as deployment #{drift.reference} left it",
            ExitCode.OK,
        )

    # -- rollback --------------------------------------------------------------------------------------
    @staticmethod
    def _left_by_rollback(record: DeploymentRecord) -> str | None:
        """The release a deployment rolled back from on its stage's hosts (which the engine marked bad there)."""
        if record.kind == "rollback" and record.result == "succeeded" and record.from_release:
            return record.from_release
        if record.kind == "promote" and record.result == "rolled_back" and record.switched_hosts:
            return record.release_id
        return None

    def rolled_back_from(self, stage: Stage, release_id: str) -> DeploymentRecord | None:
        """The newest deployment that rolled ``stage`` back from ``release_id``, unless it ran there again since
        (put back by a rollback to it, or promoted with its hosts' marks cleared by hand)."""
        for record in self.store.deployments(stage=stage.name, limit=500):
            if record.release_id == release_id and record.result == "succeeded":
                return None
            if self._left_by_rollback(record) == release_id:
                return record
        return None

    def rollback_target(self, stage: Stage, current: str) -> str | None:
        """The release the stage ran before ``current``, skipping releases rolled back on it, failed or rejected."""
        bad = {current}
        for record in self.store.deployments(stage=stage.name, limit=500):
            left = self._left_by_rollback(record)
            if left is not None:
                bad.add(left)
            if record.kind == "promote" and record.result in ("rolled_back", "failed"):
                bad.add(record.release_id)
        for record in self.store.deployments(stage=stage.name, limit=500):
            candidate = record.release_id
            if record.result != "succeeded" or candidate in bad:
                continue
            release = self.store.release(candidate)
            if release is not None and release.rejected is None:
                return candidate
        return None

    def _rollback_plan(self, stage: Stage, to: str | None) -> Outcome | tuple[StageState, str]:
        """The stage's state and the release to go back to (or refused, or nothing to do)."""
        state = self.store.stage_state(stage.name)
        if state is None or state.current_release is None:
            raise bad_input(f"nothing is deployed on {stage.name}: there is nothing to roll back")
        current = state.current_release
        if to is not None:
            target_record = self.store.require_release(to)
            if target_record.rejected is not None:
                raise refused(f"release {to} was rejected ({target_record.rejected.reason!r}): not a rollback target")
            ran_here = any(
                d.result == "succeeded" for d in self.store.deployments(stage=stage.name, release_id=to, limit=50)
            )
            if not ran_here:
                raise refused(f"release {to} never ran on {stage.name}: a rollback only goes back to a known release")
            target = to
        else:
            found = self.rollback_target(stage, current)
            if found is None:
                raise refused(f"no earlier good release on {stage.name} to roll back to (it runs {current})")
            target = found
        if target == current and state.health == "healthy":
            return Outcome("nothing_to_do", f"{stage.name} already runs {target}", ExitCode.OK)
        return state, target

    def rollback(self, stage_name: str, *, to: str | None = None, restore_db: bool = False) -> Outcome:
        stage = self.pipeline.stage(stage_name)
        plan = self._rollback_plan(stage, to)
        if isinstance(plan, Outcome):
            return plan
        self._check_files(stage, ("rollback", "verify"))

        def start() -> Outcome | _Start:
            plan = self._rollback_plan(stage, to)  # again under the lock, as for a promotion
            if isinstance(plan, Outcome):
                return plan
            state, target = plan
            release = self.store.require_release(target)
            return _Start("rollback", release, state, state.current_release, restore_db=restore_db, phase="rollback")

        return self._deploy(stage, f"rollback to {plan[1]}", start, _Rollback)

    # -- one deployment, whatever its kind ---------------------------------------------------------------
    def _deploy(
        self, stage: Stage, reason: str, start: Callable[[], Outcome | _Start], kind: type[_Deployment]
    ) -> Outcome:
        """The lifecycle every deployment shares: take the stage lock, decide again under it (``start``), record
        the deployment and attach the lock to it, run its phases (``kind.run``, each run and record fenced) with
        Ctrl-C deferred to phase boundaries, then finish the record and give the lock back. An unexpected error is
        recorded as a failure (:meth:`_closed_on_error`), a lock taken over as ``lock_lost`` (:meth:`_lock_lost`),
        each once, here."""
        runner = self._require_runner()
        with self._locked(stage, reason) as lock:
            begun = start()
            if isinstance(begun, Outcome):
                return begun
            # what a killed itopctl left on the hosts would refuse this deployment: given back first; a promotion
            # reads the hosts in the same run, for the drift check (refused here, before anything is recorded)
            stale = self.store.held_host_locks(stage.name)
            probe = self._release_hosts(stage, runner, stale, read=begun.kind == "promote")
            if probe is not None:
                stale = {}
            drift = self._drift_gate(stage, probe, begun.allow_drift) if begun.kind == "promote" else ""
            now = self.clock()
            deployment_id = self.store.start_deployment(
                kind=begun.kind,
                release_id=begun.release.id,
                stage=stage.name,
                from_release=begun.current,
                who=self.user,
                now=now,
                restore_db=begun.restore_db,
            )
            self.store.attach_lock(lock.handle, deployment_id, self.lock_lease, now)
            if begun.phase or drift:
                self.store.update_deployment(
                    deployment_id, **({"phase": begun.phase} if begun.phase else {}), drift_override=drift
                )
            own = {deployment_id: lock.handle.record.token} if stage.release_roots else {}
            self._release_hosts(stage, runner, stale)
            if own:
                self.store.hold_host_locks(deployment_id, own[deployment_id])
            faults.point("locked")
            deployment = kind(self, runner, begun, stage, deployment_id, lock)
            with deployment.interrupt.installed():  # Ctrl-C waits for the host locks to be given back too
                try:
                    with self._closed_on_error(deployment_id):
                        outcome = deployment.run()
                except LockLost as lost:
                    outcome = deployment.lock_lost(lost)
                finally:
                    # what the hosts run now, the reference of the next drift check, read as the host locks are
                    # given back: by the deployment's last run if it closed the deployment, else by a run of its own
                    closed = deployment.closed
                    if closed is not None:
                        if own:
                            self.store.hold_host_locks(deployment_id, None)
                    else:
                        closed = self._release_hosts(stage, runner, own, read=True)
                    self._record_hosts(stage, deployment_id, closed)
            return Outcome(outcome.status, outcome.message, outcome.exit_code, outcome.deployment, begun.gates)

    def _lock_lost(  # noqa: PLR0917 - one call per kind of deployment
        self,
        deployment_id: int,
        lost: LockLost,
        idents: list[str],
        switched: list[str],
        release: str,
        current: str | None,
    ) -> Outcome:
        """Record, on the deployment's own row only, that its lock was taken over and it stopped there.

        The stage's state is marked unknown when hosts were switched, unless the new holder has written it since."""
        record = self.store.deployment(deployment_id)
        if switched:
            done = (
                f"{len(switched)} host(s) were switched to {release} ({', '.join(switched)}) and stay so: "
                f"{record.stage} may run mixed releases"
            )
        else:
            done = "no host was switched"
        message = (
            f"LOCK LOST during {record.phase}: {lost.message}. This itopctl stopped before changing anything more; "
            f"{done}. See `itopctl status` and `itopctl locks`, agree with the new holder, then roll back or promote "
            "again."
        )
        state = self.store.stage_state(record.stage)
        untouched = state is None or state.deployment_id is None or state.deployment_id <= deployment_id
        health = f"unknown: deployment #{deployment_id} lost its lock during {record.phase} (mixed releases?)"
        finished = self.store.finish_deployment(
            deployment_id,
            result="lock_lost",
            now=self.clock(),
            stage_state=(release, current, health) if switched and untouched else None,
            message=message,
            runner_idents=idents,
            switched_hosts=switched,
        )
        self.display.message(f"!! {message}")
        return Outcome("lock_lost", message, ExitCode.LOCK_LOST, finished)


def _failure(result: RunResult) -> str:
    """Where a run failed, as its outcome says it."""
    return ", ".join(result.failed_hosts) or f"status {result.status}, rc {result.rc}"


def _rollback_outcome(  # noqa: PLR0917 - the facts of one rollback, in one place
    stage: str,
    state: StageState,
    target: str,
    restore_db: bool,
    failed: str | None,
    verified: RunResult | None,
) -> tuple[str, tuple[str | None, str | None, str], str, ExitCode]:
    """``(result, stage state, message, exit code)`` of a rollback: ``failed`` says where the rollback itself
    failed (None: it is done), ``verified`` is the run that verified the stage after it (if it got there)."""
    current = state.current_release
    if failed is None and verified is not None and not verified.ok:
        return (
            "failed",
            (target, current, f"rolled back from {current}; verify failed"),
            f"{stage} rolled back from {current} to {target}, but verify failed ({_failure(verified)})",
            ExitCode.FAILED,
        )
    if failed is None:
        restored = " (database restored)" if restore_db else ""
        return (
            "succeeded",
            (target, current, f"rolled back from {current}"),
            f"{stage} rolled back from {current} to {target}{restored}",
            ExitCode.OK,
        )
    return (
        "failed",
        (current, state.previous_release, f"rollback to {target} failed"),
        f"rollback of {stage} to {target} failed ({failed})",
        ExitCode.FAILED,
    )


@dataclass(frozen=True)
class _Start:
    """What a deployment starts from, decided under the stage lock."""

    kind: str  # promote | rollback
    release: ReleaseRecord  # the release it deploys (a rollback: its target)
    state: StageState | None  # the stage's state when the lock was taken
    current: str | None  # what the stage runs before it (where an undo goes)
    restore_db: bool = False
    phase: str = ""  # the phase recorded at once, if any
    gates: tuple[GateCheck, ...] = ()
    allow_drift: str | None = None  # a promotion: the operator's reason to go over drift


class _Deployment:
    """One deployment's runs and records, each only after checking the stage lock is still its own (:meth:`record`,
    :meth:`play`, :meth:`finish`); :meth:`run` is what a kind of deployment does (see :meth:`Orchestrator._deploy`)."""

    def __init__(  # noqa: PLR0917 - an internal value object built in one place
        self,
        orchestrator: Orchestrator,
        runner: PlaybookRunner,
        start: _Start,
        stage: Stage,
        deployment_id: int,
        lock: HeldLock,
    ) -> None:
        self.o = orchestrator
        self.store = orchestrator.store
        self.runner = runner
        self.start = start
        self.release = start.release
        self.stage = stage
        self.current = start.current
        self.deployment_id = deployment_id
        self.lock = lock
        self.interrupt = PhaseInterrupt(orchestrator.display)
        self.interrupt.phase = start.phase
        self.idents: list[str] = []
        self.switched: list[str] = []
        self.closed: StageProbe | None = None  # the last run closed the deployment: what it read (see play)
        self.extravars = {
            **orchestrator._extravars(start.release, stage, deployment_id),
            **orchestrator._host_lock_vars(stage, lock),
        }

    def run(self) -> Outcome:
        raise NotImplementedError

    def record(self, **values: Any) -> None:
        """Write to the deployment's record, if the lock is still ours (checked in the same transaction)."""
        with self.lock.fenced():
            self.store.update_deployment(self.deployment_id, **values)

    def phase(self, name: str, *, record: bool = True) -> None:
        """Enter a phase: recorded (unless it is the undo of the phase that failed)."""
        self.interrupt.phase = name
        if record:
            self.record(phase=name)

    def play(self, phase: str, limit: list[str] | None, *, close: bool = False, **more: Any) -> RunResult:
        """One playbook run, if the lock is still ours; the caller records what it did.

        ``close``: the deployment's last run, on every host, if it succeeds: the playbook is asked to close the
        deployment itself (``itopctl_close``: give back the host locks and read each root, as itopctl's own run
        does), which spares that run; :attr:`closed` is then what it read (None if it did not close)."""
        self.lock.check()
        closing = {"itopctl_close": True, "itopctl_probe_roots": dict(self.stage.release_roots)}
        result = self.runner.run(
            phase=phase,
            playbook=self.stage.playbooks[phase],
            inventory=self.stage.inventory,
            extravars={
                **self.extravars,
                "deploy_phase": phase,
                **more,
                **(closing if close and self.stage.release_roots else {}),
            },
            limit=limit,
            project_dir=self.o.pipeline.path.parent,
        )
        self.idents.append(result.ident)
        if close and self.stage.release_roots:
            from .probe import closed_by  # noqa: PLC0415 - probe imports this module's neighbours only

            self.closed = closed_by(self.stage, result)
        return result

    def finish(
        self, result: str, message: str, code: ExitCode, state: tuple[str | None, str | None, str] | None, **values: Any
    ) -> Outcome:
        faults.point("before-record")
        with self.lock.fenced():
            record = self.store.finish_deployment(
                self.deployment_id,
                result=result,
                now=self.o.clock(),
                stage_state=state,
                message=message,
                runner_idents=self.idents,
                **values,
            )
        return Outcome(result, message, code, record)

    def lock_lost(self, lost: LockLost) -> Outcome:
        return self.o._lock_lost(self.deployment_id, lost, self.idents, self.switched, self.release.id, self.current)


# the task of a rollback run that goes on to verify (playbooks/stack.yml, rollback_verify) once the rollback is done
ROLLED_BACK_TASK = "The rollback is done on this host, its verify follows"


class _Rollback(_Deployment):
    """A rollback is one phase, then the stage's verify, in one run when the stage's playbook does both (the same
    file for both phases, and it verifies when given ``rollback_verify``: playbooks/stack.yml), else a run each;
    Ctrl-C waits for the end of both."""

    def run(self) -> Outcome:
        target, restore_db = self.release.id, self.start.restore_db
        assert self.start.state is not None  # a rollback starts from a stage that runs something
        together = self.stage.playbooks["rollback"] == self.stage.playbooks["verify"]
        result = self.play(
            "rollback",
            None,
            close=together,
            rollback_to=target,
            restore_db=restore_db,
            **({"rollback_verify": True} if together else {}),
        )
        # the hosts that got to their verify in the same run: the rollback itself is done on them
        past = result.hosts_past(ROLLED_BACK_TASK) if together else []
        verified_here = bool(past) and set(past) >= set(result.hosts)
        self.switched = past if verified_here else result.ok_hosts
        verified: RunResult | None = result if verified_here else None
        if verified_here:
            self.record(phase="verify")
        elif result.ok:
            # the operator must know the stage is healthy on the release it went back to
            self.record(phase="verify")
            verified = self.play("verify", None, close=True)
        failed = None if verified_here or result.ok else _failure(result)
        status, health, message, code = _rollback_outcome(
            self.stage.name, self.start.state, target, restore_db, failed, verified
        )
        return self.finish(
            status,
            message,
            code,
            health,
            hosts=sorted(result.hosts, key=natural_key),
            switched_hosts=self.switched,
        )


class _Promotion(_Deployment):
    """One promotion's phases: prepare all hosts, switch in batches, verify; recorded as it goes."""

    def rollback_switched(self, hosts: list[str]) -> RunResult:
        self.phase("rollback", record=False)  # the record keeps the phase that failed
        assert self.current is not None
        # the run is the target's, as for `itopctl rollback`: its release's variables (the stack playbook
        # configures the workers from the target's work queues, and refuses a rollback given another release's)
        back = self.store.require_release(self.current)
        as_target = self.o._extravars(back, self.stage, self.deployment_id)
        result = self.play("rollback", hosts, **{**as_target, "rollback_to": back.id, "restore_db": False})
        self.record(runner_idents=self.idents)
        return result

    def run(self) -> Outcome:
        stage = self.stage
        # 1. prepare on every host: a failure here switches nothing
        self.phase("prepare")
        prepared = self.play("prepare", None)
        hosts = sorted(prepared.hosts, key=natural_key)
        self.record(hosts=hosts, runner_idents=self.idents)
        faults.point("prepared")
        if not prepared.ok:
            where = ", ".join(prepared.failed_hosts) or f"status {prepared.status}, rc {prepared.rc}"
            return self.finish("failed", f"prepare failed ({where}); nothing was switched", ExitCode.FAILED, None)
        if not hosts:
            return self.finish("failed", f"no host in {stage.inventory} for prepare", ExitCode.FAILED, None)
        if self.interrupt.requested:
            return self.finish(
                "interrupted", "interrupted after prepare; nothing was switched", ExitCode.INTERRUPTED, None
            )
        # 2. switch in batches, then 3. verify; a failure after a switch is undone by undo_switch
        can_undo = stage.auto_rollback and self.current is not None
        try:
            with undo_switch(self.rollback_switched if can_undo else None) as ledger:
                outcome = self.switch_and_verify(hosts, ledger)
        except PhaseFailed as failure:
            return self.failed(failure, ledger)
        if outcome is not None:
            return outcome
        return self.succeeded(hosts, ledger)

    def switch_steps(self, hosts: list[str]) -> list[tuple[str, list[str]]]:
        order = self.stage.switch_order
        members = self.runner.inventory_groups(self.stage.inventory) if order else {}
        return switch_steps(hosts, order, self.stage.batch_size, members)

    def switch_and_verify(self, hosts: list[str], ledger: SwitchLedger) -> Outcome | None:
        """Raise :class:`PhaseFailed` on a failure; return an outcome only when interrupted after the switch."""
        self.phase("switch")
        ledger.switched = self.switched
        for number, (group, batch) in enumerate(self.switch_steps(hosts), start=1):
            more: dict[str, Any] = {"deploy_switch_group": group} if group else {}
            result = self.play("switch", batch, deploy_batch=number, **more)
            self.switched.extend(h for h in batch if h not in self.switched)
            self.record(switched_hosts=self.switched, runner_idents=self.idents)
            faults.point("switched")
            if not result.ok:
                failed = ", ".join(result.failed_hosts) or f"status {result.status}"
                where = f"batch {number}" + (f" ({group})" if group else "")
                raise PhaseFailed("switch", f"switch failed in {where} ({failed})", result)
        if self.interrupt.requested:  # only now: a switch is never cut between batches
            return self.finish(
                "interrupted",
                f"interrupted after the switch: {len(hosts)} host(s) run {self.release.id}, NOT verified "
                f"(run `itopctl promote {self.release.id} --to {self.stage.name}` again to verify, or roll back)",
                ExitCode.INTERRUPTED,
                (self.release.id, self.current, "unverified"),
                switched_hosts=ledger.switched,
            )
        faults.point("before-verify")
        self.phase("verify")
        # the last run when it succeeds: it closes the deployment when it covers every host
        verified = self.play("verify", ledger.switched, close=set(ledger.switched) >= set(hosts))
        self.record(runner_idents=self.idents)
        faults.point("verified")
        if not verified.ok:
            failed = ", ".join(verified.failed_hosts) or f"status {verified.status}"
            raise PhaseFailed("verify", f"verify failed ({failed})", verified)
        return None

    def failed(self, failure: PhaseFailed, ledger: SwitchLedger) -> Outcome:
        release, current = self.release, self.current
        if ledger.rolled_back and ledger.rollback_ok:
            return self.finish(
                "rolled_back",
                f"{failure.message}; rolled back {len(ledger.switched)} switched host(s) to {current}",
                ExitCode.ROLLED_BACK,
                (current, release.id, f"rolled back ({failure.phase} of {release.id} failed)"),
                phase=failure.phase,
                switched_hosts=ledger.switched,
            )
        if ledger.rolled_back:
            detail = f"{failure.message}; ROLLBACK FAILED: {ledger.rollback_detail}"
        elif current is None:
            detail = f"{failure.message}; no previous release on {self.stage.name} to roll back to"
        else:
            detail = f"{failure.message}; auto-rollback is off for {self.stage.name}"
        health = "failed (mixed releases)" if failure.phase == "switch" else "verify failed"
        return self.finish(
            "failed",
            detail,
            ExitCode.FAILED,
            (release.id, current, health),
            phase=failure.phase,
            switched_hosts=ledger.switched,
        )

    def succeeded(self, hosts: list[str], ledger: SwitchLedger) -> Outcome:
        release, stage = self.release, self.stage
        sentry = ""
        warnings: list[str] = []
        if stage.sentry is not None:
            record = self.store.deployment(self.deployment_id)
            outcome = record_deploy(
                stage.sentry,
                release=release.id,
                environment=stage.sentry.environment or stage.name,
                name=f"itopctl #{self.deployment_id} by {self.o.user}",
                duration=(self.o.clock() - parse_iso(record.started_at)).total_seconds(),
            )
            sentry = outcome.summary()
            if not outcome.recorded:
                warnings.append(f"Sentry {sentry}")
                self.o.display.message(f"warning: Sentry {sentry}")
        return self.finish(
            "succeeded",
            f"{release.id} runs on {stage.name} ({len(hosts)} host(s)), verified",
            ExitCode.OK,
            (release.id, self.current, "healthy"),
            phase="verify",
            verified=True,
            switched_hosts=ledger.switched,
            sentry=sentry,
            warnings=warnings,
        )


# -- approvals and rejections: the same rules from the CLI and from the board (itopctl serve) --------------------
def record_approval(
    store: Store, pipeline: Pipeline, release_id: str, stage_name: str, *, who: str, reason: str, now: datetime
) -> tuple[ReleaseRecord, Stage, bool]:
    """Approve ``release_id`` for ``stage_name`` as ``who``; True when new, False when they had already approved.

    Anyone may approve; the approvals gate (:meth:`Orchestrator.gates`) does not count the promoter's own."""
    from .manifest import check_release_id  # noqa: PLC0415 - keeps this module's imports as they were

    check_release_id(release_id)
    stage = pipeline.stage(stage_name)
    release = store.require_release(release_id)
    if release.rejected:
        raise refused(f"release {release.id} was rejected: it cannot be approved")
    if not reason.strip():
        raise bad_input("--reason must say why")
    return release, stage, store.approve(release.id, stage.name, who, reason, now)


def record_rejection(store: Store, release_id: str, *, who: str, reason: str, now: datetime) -> bool:
    """Reject ``release_id`` for ever as ``who``; True when new, False when it was already rejected."""
    from .manifest import check_release_id  # noqa: PLC0415

    check_release_id(release_id)
    if not reason.strip():
        raise bad_input("--reason must say why")
    return store.reject(release_id, who, reason, now)
