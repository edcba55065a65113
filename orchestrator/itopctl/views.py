"""One serialisation of what itopctl shows: the CLI's ``--json`` and the board's JSON API (``itopctl serve``) both
print these dicts, so the two always say the same thing.

Records are frozen dataclasses (:mod:`itopctl.store`, :mod:`itopctl.engine`); :func:`plain` turns them, and
anything holding them, into JSON-ready values (dataclasses as dicts, tuples as lists, paths and datetimes as text).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import ExitCode, ItopctlError

if TYPE_CHECKING:  # the engine imports the runner module: only the board and promote need it
    from .engine import Orchestrator, Outcome
    from .store import Store


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def plain(obj: Any) -> Any:
    """JSON-ready values: dataclasses as dicts (as ``asdict`` makes them, without its deep copies), mappings and
    sequences walked, anything else unknown as text."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {name: plain(getattr(obj, name)) for name in _field_names(type(obj))}
    if isinstance(obj, Mapping):
        return {str(key): plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain(value) for value in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)  # paths, datetimes, enums' values are ints already


def dumps(data: Any) -> str:
    """The text ``--json`` prints and the API answers."""
    return json.dumps(plain(data), indent=2)


# -- releases -----------------------------------------------------------------------------------------------
def release_list(store: Store) -> list[dict[str, Any]]:
    """``itopctl release list --json``: every release, oldest first, with where it is current."""
    where: dict[str, list[str]] = {}
    for stage, state in store.stage_states().items():
        if state.current_release:
            where.setdefault(state.current_release, []).append(stage)
    return [
        {
            "id": r.id,
            "added_by": r.added_by,
            "added_at": r.added_at,
            "digest": r.digest,
            "components": sorted(r.manifest.get("components", {})),
            "rejected": plain(r.rejected),
            "current_on": sorted(where.get(r.id, [])),
        }
        for r in store.releases()
    ]


def release_show(store: Store, release_id: str, limit: int = 50) -> dict[str, Any]:
    """``itopctl release show ID --json``: the release, its approvals and its newest deployments."""
    release = store.require_release(release_id)
    shown: dict[str, Any] = plain(
        {
            "release": release,
            "approvals": store.approvals(release.id),
            "deployments": store.deployments(release_id=release.id, limit=limit),
        }
    )
    return shown


# -- status / history / locks --------------------------------------------------------------------------------
def status(store: Store, names: Sequence[str], now: datetime) -> list[dict[str, Any]]:
    """``itopctl status --json``: per stage what runs, what ran before, when, by whom, its health and live lock."""
    states = store.stage_states()
    locks = store.locks()
    rows: list[dict[str, Any]] = []
    for name in names:
        state = states.get(name)
        lock = locks.get(name)
        live_lock = lock if lock is not None and not lock.expired(now) else None
        last = store.deployment(state.deployment_id) if state and state.deployment_id is not None else None
        rows.append(
            {
                "stage": name,
                "current": state.current_release if state else None,
                "previous": state.previous_release if state else None,
                "when": state.updated_at if state else None,
                "who": state.updated_by if state else None,
                "health": state.health if state else "never deployed",
                "deployment": state.deployment_id if state else None,
                "warnings": last.warnings if last else [],  # those of the deployment that set this state
                "lock": (
                    {"owner": live_lock.owner, "kind": live_lock.kind, "reason": live_lock.reason,
                     "expires_at": live_lock.expires_at}
                    if live_lock else None
                ),
            }
        )  # fmt: skip
    return rows


def history(
    store: Store,
    *,
    stage: str | None = None,
    release_id: str | None = None,
    limit: int | None = 50,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """``itopctl history --json``: deployments, newest first (with ``before``, those older than that id)."""
    records: list[dict[str, Any]] = plain(
        store.deployments(stage=stage, release_id=release_id, limit=limit, before=before)
    )
    return records


def locks(store: Store, stage: str | None = None, limit: int = 50) -> dict[str, Any]:
    """``itopctl locks --json``: the current locks and the lock audit trail, newest first."""
    return plain({"locks": list(store.locks().values()), "events": store.lock_events(stage, limit=limit)})  # type: ignore[no-any-return]


# -- promote --check ---------------------------------------------------------------------------------------
def outcome(result: Outcome) -> dict[str, Any]:
    """``itopctl promote|deploy|rollback --json``: the outcome as it is."""
    shown: dict[str, Any] = plain(result)
    return shown


def promotion_check(orchestrator: Orchestrator, release_id: str, stage: str) -> dict[str, Any]:
    """What ``itopctl promote RELEASE --to STAGE --check`` answers, asked of the same engine code.

    A passing check is the outcome ``--check --json`` prints (status ``ready`` or ``nothing_to_do``). A refusal is
    the same shape with status ``refused`` (or ``bad_input``), the message and its details the CLI prints on stderr,
    and every gate, passing or not (the CLI lists the blocking ones in the details)."""
    try:
        return outcome(orchestrator.promote(release_id, stage, check_only=True))
    except ItopctlError as exc:
        gates: list[Any] = []
        release = orchestrator.store.release(release_id)
        if release is not None and release.rejected is None and stage in orchestrator.pipeline.names:
            gates = plain(orchestrator.gates(release, orchestrator.pipeline.stage(stage)))
        return {
            "status": "refused" if exc.code == ExitCode.REFUSED else "bad_input",
            "message": exc.message,
            "details": list(exc.details),
            "exit_code": int(exc.code),
            "deployment": None,
            "gates": gates,
        }
