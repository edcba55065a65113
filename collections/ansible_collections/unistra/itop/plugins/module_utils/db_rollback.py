# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database side of a rollback, one rule for every application and database engine (pure, unit-tested).

An application role records in each release's journal metadata the schema its code expects (``schema_version``)
and, when preparing it upgraded the database, the release it upgraded from (``upgraded_from``) and the dump taken
just before (``db_dump``): that dump holds the database as ``upgraded_from`` left it. Rolling back from ``current``
to ``target``:

- same schema on both sides: switch the code, the database stays;
- another schema: walk back the upgrade chain from ``current`` to the release whose upgrade started from
  ``target``; the dump taken before that upgrade restores ``target``'s database. Without ``restore_db`` the rollback
  is refused (everything written since that dump would be lost); with it the dump is restored, then the code switched.
  No such release, or no dump recorded: refused, whatever ``restore_db`` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ACTION_NONE = "none"  # the target is current
ACTION_SWITCH = "switch"  # same schema: switch the code only
ACTION_RESTORE = "restore"  # restore the dump, then switch
ACTION_REFUSE = "refuse"  # nothing may change: see ``reason``
MAX_CHAIN = 256  # a journal keeps far fewer releases; a longer walk means a cycle in hand-edited metadata


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback from ``current`` to ``target`` does to the database."""

    target: str
    current: str | None
    schema_from: str | None
    schema_to: str | None
    action: str
    restore_via: str | None = None  # the release whose pre-upgrade dump restores the target's database
    dump: str | None = None
    reason: str = ""

    @property
    def schema_changes(self) -> bool:
        return self.schema_from != self.schema_to

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema_changes": self.schema_changes}


def _metadata(releases: Mapping[str, Mapping[str, Any]], rid: str | None) -> Mapping[str, Any]:
    record = releases.get(rid or "") or {}
    metadata = record.get("metadata") or {}
    return metadata if isinstance(metadata, Mapping) else {}


def _schema(releases: Mapping[str, Mapping[str, Any]], rid: str | None) -> str | None:
    value = _metadata(releases, rid).get("schema_version")
    return str(value) if value not in (None, "") else None


def find_restore_via(releases: Mapping[str, Mapping[str, Any]], current: str, target: str) -> str | None:
    """The release, on the upgrade chain back from ``current``, whose upgrade started from ``target``."""
    at: str | None = current
    seen: set[str] = set()
    while at and at not in seen and len(seen) < MAX_CHAIN:
        seen.add(at)
        upgraded_from = _metadata(releases, at).get("upgraded_from")
        if upgraded_from == target:
            return at
        at = str(upgraded_from) if upgraded_from else None
    return None


def plan_rollback(
    releases: Mapping[str, Mapping[str, Any]], current: str | None, target: str, *, restore_db: bool
) -> RollbackPlan:
    """Decide the database side of rolling back from ``current`` to ``target`` (see the module docstring)."""
    schema_from, schema_to = _schema(releases, current), _schema(releases, target)
    if current == target:
        return RollbackPlan(target, current, schema_from, schema_to, ACTION_NONE)
    if current is None or schema_from == schema_to:
        return RollbackPlan(target, current, schema_from, schema_to, ACTION_SWITCH)
    base = RollbackPlan(target, current, schema_from, schema_to, ACTION_REFUSE)
    shown = f"({(schema_from or 'unknown')[:12]} -> {(schema_to or 'unknown')[:12]})"
    via = find_restore_via(releases, current, target)
    dump = _metadata(releases, via).get("db_dump") if via else None
    if not via or not dump:
        where = f"the upgrade to {via} recorded no dump" if via else f"the journal shows no upgrade from {target}"
        return _replace(
            base,
            restore_via=via,
            reason=(
                f"Cannot roll back from {current} to {target}: the database schema differs {shown} and no dump of "
                f"{target}'s database is known ({where} on the way back from {current}). Nothing was changed; "
                f"deploy a release whose code runs on the current schema instead."
            ),
        )
    if not restore_db:
        return _replace(
            base,
            restore_via=via,
            dump=str(dump),
            reason=(
                f"Refusing to roll back from {current} to {target}: the database schema differs {shown}, the upgrade "
                f"to {via} changed it, and {target}'s code cannot run on it safely. Nothing was changed. To roll back "
                f"anyway, restoring the dump taken before that upgrade (everything written since is LOST), re-run "
                f"with restore_db=true."
            ),
        )
    return _replace(base, action=ACTION_RESTORE, restore_via=via, dump=str(dump))


def _replace(plan: RollbackPlan, **changes: Any) -> RollbackPlan:
    return RollbackPlan(**{**asdict(plan), **changes})


def schema_stale_after_restore(releases: Mapping[str, Mapping[str, Any]], current: str, target: str) -> list[str]:
    """Releases whose code expects a schema that restoring ``target``'s database removed.

    Those are the schemas of the upgrade chain walked back from ``current`` to the restore (its releases, and any
    other release prepared on one of their schemas). Their trees were built (iTop compiled, migrations recorded)
    against a database that no longer exists: they may come back only through a fresh prepare. Releases older than
    ``target`` are left alone: the dumps that restore them are still there.
    """
    via = find_restore_via(releases, current, target)
    chain: list[str] = []
    at: str | None = current
    while at and at not in chain and len(chain) < MAX_CHAIN:
        chain.append(at)
        if at == via:
            break
        upgraded_from = _metadata(releases, at).get("upgraded_from")
        at = str(upgraded_from) if upgraded_from else None
    removed = {_schema(releases, rid) for rid in chain} - {_schema(releases, target), None}
    return sorted(rid for rid in releases if rid != target and _schema(releases, rid) in removed)
