"""The board's audit trail: every approve and reject done from the page, with who, when, why and from where
(table ``web_actions``, migration 0006). Approvals and rejections themselves are recorded where the CLI records
them (``approvals``, ``rejections``); this adds how and from where they came."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..store import Store, iso


@dataclass(frozen=True)
class WebAction:
    id: int
    at: str
    actor: str
    via: str  # "proxy" (a trusted proxy's header) or "token"
    remote_addr: str
    forwarded_for: str
    action: str  # approve | reject
    release_id: str
    stage: str
    reason: str
    result: str  # "approved", "already approved", "refused: ...", ...


_COLUMNS = "id, at, actor, via, remote_addr, forwarded_for, action, release_id, stage, reason, result"


def record(store: Store, now: datetime, **values: str) -> None:
    names = [c.strip() for c in _COLUMNS.split(",")][1:]
    with store.transaction():
        store.execute(
            f"INSERT INTO web_actions ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",  # noqa: S608 - constant names
            [iso(now) if name == "at" else values[name] for name in names],
        )


def actions(store: Store, limit: int = 20) -> list[WebAction]:
    rows = store.rows(f"SELECT {_COLUMNS} FROM web_actions ORDER BY id DESC LIMIT ?", (int(limit),))  # noqa: S608
    return [WebAction(*row) for row in rows]
