# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which releases prune removes: pure selection over the journal's records (unit-tested on its own)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATE_FAILED = "failed"


def select_prunable(releases: Mapping[str, Mapping[str, Any]], keep: int, protected: Iterable[str]) -> list[str]:
    """Release ids to remove.

    ``protected`` (current, previous and the rollback target) always stays. Never-activated failed releases go and
    do not count. Of the activated releases, the ``keep`` most recently activated (journal order, never mtime) stay,
    protected ones included. Prepared, never-activated releases stay: they may be about to be switched to.
    """
    protected = set(protected)
    removed = []
    activated = []
    for rid, record in releases.items():
        if rid in protected:
            continue
        seq = record.get("activated_seq")
        if seq is None:
            if record.get("state") == STATE_FAILED:
                removed.append(rid)
            continue
        activated.append((int(seq), rid))
    slots = max(keep - sum(1 for rid in protected if releases.get(rid, {}).get("activated_seq") is not None), 0)
    activated.sort(reverse=True)
    removed.extend(rid for _seq, rid in activated[slots:])
    return sorted(removed)


def unused_artifacts(releases: Mapping[str, Mapping[str, Any]], removed: Sequence[str]) -> list[str]:
    """sha256 of the artifacts of ``removed`` that no other release of the journal uses."""

    def shas(rid: str) -> set[str]:
        return {str(item.get("sha256")) for item in releases[rid].get("fingerprint", []) if item.get("sha256")}

    gone: set[str] = set()
    for rid in removed:
        gone |= shas(rid)
    for rid in releases:
        if rid not in removed:
            gone -= shas(rid)
    return sorted(gone)
