"""What the board shows, as one dict (the page renders it; ``GET /api/board`` answers it): the stages side by side,
the next promotion of each release in play with its gates (asked of the engine as ``promote --check`` asks),
approvals given and missing, rejected releases, and a page of history with a summary of each run's log.

Everything here reads the store; the serialisation of stages, outcomes and deployments is :mod:`itopctl.views`."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from .. import views
from ..engine import Orchestrator
from ..pipeline import Pipeline
from ..runner import NullDisplay
from ..store import DeploymentRecord, ReleaseRecord, Store, iso
from . import audit
from .runlog import RunLogs

NEWEST_RELEASES = 5  # besides those running somewhere, the newest releases not rejected are shown as candidates


def history_page(
    store: Store, *, stage: str | None, before: int | None, limit: int, release_id: str | None = None
) -> tuple[list[DeploymentRecord], int | None]:
    """``limit`` deployments older than ``before`` (newest first), and the ``before`` of the next page (None: last)."""
    found = store.deployments(stage=stage, release_id=release_id, limit=limit + 1, before=before)
    more = len(found) > limit
    page = found[:limit]
    return page, (page[-1].id if more and page else None)


def deployment_view(record: DeploymentRecord, runs: RunLogs) -> dict[str, Any]:
    """A deployment as ``history --json`` has it, plus a summary of each of its runs' logs."""
    data: dict[str, Any] = views.plain(record)
    data["runs"] = []
    for ident in record.runner_idents:
        summary = runs.summary(ident)
        data["runs"].append({**views.plain(summary), "ok": summary.ok, "text": summary.text})
    return data


def next_stage(pipeline: Pipeline, release_id: str, states: dict[str, Any]) -> str | None:
    """Where ``release_id`` goes next: after the last stage running it verified (a stage running it unverified is
    promoted again); the first stage when it runs nowhere; None once it runs, verified, on the last stage."""
    names = list(pipeline.names)
    target = 0
    for index, name in enumerate(names):
        state = states.get(name)
        if state is not None and state.current_release == release_id:
            target = index + 1 if state.health == "healthy" else index
    return names[target] if target < len(names) else None


def candidates(releases: list[ReleaseRecord], states: dict[str, Any], pipeline: Pipeline) -> list[ReleaseRecord]:
    """The releases in play: those some stage runs (in the pipeline's order), then the newest ones not rejected."""
    by_id = {r.id: r for r in releases}
    chosen: dict[str, ReleaseRecord] = {}
    for name in reversed(pipeline.names):
        state = states.get(name)
        if state is not None and state.current_release in by_id:
            chosen.setdefault(state.current_release, by_id[state.current_release])
    fresh = [r for r in reversed(releases) if r.rejected is None and r.id not in chosen]
    for release in fresh[:NEWEST_RELEASES]:
        chosen[release.id] = release
    return [r for r in chosen.values() if r.rejected is None]


def promotions(store: Store, pipeline: Pipeline, viewer: str | None, releases: list[ReleaseRecord]) -> list[Any]:
    """Per release in play, its next promotion: ``promote --check``'s answer for a promoter who has not approved
    it (``GET /api/check/RELEASE?stage=S&as=USER`` answers for a given promoter), the approvals it has and still
    needs, and whether ``viewer`` approved it (their approval would not count for a promotion of their own)."""
    states = store.stage_states()
    orchestrator = Orchestrator(pipeline, store, runner=None, user="", display=NullDisplay())
    rows = []
    for release in candidates(releases, states, pipeline):
        stage_name = next_stage(pipeline, release.id, states)
        approvals = views.plain(store.approvals(release.id))
        row: dict[str, Any] = {"release": release.id, "stage": stage_name, "approvals": approvals}
        if stage_name is None:
            row.update(check=None, approvals_needed=0, approvals_missing=0, approved_by_viewer=False)
        else:
            given = {a["approver"] for a in approvals if a["stage"] == stage_name}
            needed = pipeline.stage(stage_name).gates.approvals
            row.update(
                check=views.promotion_check(orchestrator, release.id, stage_name),
                approvals_needed=needed,
                approvals_missing=max(0, needed - len(given)),
                approved_by_viewer=viewer is not None and viewer in given,
            )
        rows.append(row)
    return rows


def stages(store: Store, pipeline: Pipeline, now: datetime) -> list[dict[str, Any]]:
    """``status --json``'s rows, each with its gates' settings and the deployment running there (from its lock)."""
    rows = views.status(store, pipeline.names, now)
    locks = store.locks()
    for row in rows:
        stage = pipeline.stage(row["stage"])
        gates = stage.gates
        row["gates"] = {
            "approvals": gates.approvals,
            "soak_seconds": gates.soak_seconds,
            "freeze": [w.describe() for w in gates.freeze],
        }
        lock = locks.get(row["stage"])
        running = None
        if lock is not None and lock.kind == "deploy" and lock.deployment_id is not None and row["lock"]:
            record = store.deployment(lock.deployment_id)
            if record.result == "running":
                running = views.plain(record)
        row["running"] = running
    return rows


def board(
    store: Store,
    pipeline: Pipeline,
    runs: RunLogs,
    *,
    viewer: str | None,
    now: datetime,
    history_stage: str | None = None,
    before: int | None = None,
    limit: int = 25,
) -> dict[str, Any]:
    releases = store.releases()
    page, older = history_page(store, stage=history_stage, before=before, limit=limit)
    return {
        "generated_at": iso(now),
        "version": version(store),
        "viewer": viewer,
        "pipeline": list(pipeline.names),
        "stages": stages(store, pipeline, now),
        "promotions": promotions(store, pipeline, viewer, releases),
        "rejected": [views.plain(r.rejected) for r in reversed(releases) if r.rejected is not None],
        "history": {
            "stage": history_stage,
            "before": before,
            "older": older,
            "deployments": [deployment_view(d, runs) for d in page],
        },
        "actions": views.plain(audit.actions(store)),
    }


def version(store: Store) -> str:
    """A short digest of what the board shows that changes while things happen (stage states, locks, the newest
    deployments' phases and results, approvals, rejections, the board's actions): the page polls it and reloads
    its content only when it changed."""
    parts = [
        store.rows("SELECT stage, current_release, deployment_id, updated_at, health FROM stage_state ORDER BY stage"),
        store.rows("SELECT stage, owner, reason, kind, deployment_id, expires_at FROM locks ORDER BY stage"),
        store.rows(
            "SELECT id, phase, result, finished_at, hosts, switched_hosts, runner_idents FROM deployments "
            "ORDER BY id DESC LIMIT 10"
        ),
        store.rows("SELECT COUNT(*), MAX(id) FROM approvals"),
        store.rows("SELECT COUNT(*) FROM rejections"),
        store.rows("SELECT MAX(id) FROM web_actions"),
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
