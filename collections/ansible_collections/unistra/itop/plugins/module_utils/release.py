# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic, journaled releases for one application root.

Pure Python (standard library; boto3 only when an ``s3://`` artifact is fetched) so that pytest can drive it without
Ansible. ``plugins/modules/release.py`` only wires AnsibleModule to :class:`ReleaseManager`. This file holds the
journal and the manager; the other concepts have their own files: ``rules`` (ids, checksums, URI schemes, the error
type), ``artifacts`` (artifacts and the download cache), ``unpack`` (safe unpacking), ``fsutil`` (durable filesystem
helpers) and ``prune`` (which releases prune removes).

Layout under ``root``::

    releases/<id>/          an unpacked release, immutable once prepared
    current -> releases/<id> relative symlink, switched with rename(2)
    shared/                 data kept across releases
    .journal.json           the journal (JSON, schema 1), replaced atomically
    .deploy.lock            the deployment lock (JSON), when held
    .journal.lock           flock(2) guard for every read-modify-write of the two files above

Crash safety: every change that touches the disk in more than one step (prepare's rename, a switch of ``current``,
prune's removals, the lock file) is announced first in the journal (``pending``: a write-ahead intent), then done,
then recorded and the intent cleared, all under one holding of the exclusive journal flock. An intent found by the
next operation therefore belongs to a run that was killed: :meth:`ReleaseManager._reconcile` completes what reached
the disk (roll forward) and forgets what did not, before anything else is done or reported. Each durable step calls
``crash_point`` so that tests can kill the process exactly there.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ansible_collections.unistra.itop.plugins.module_utils.artifacts import (
    DEFAULT_CACHE_DIR,
    Artifact,
    ArtifactCache,
    HttpOpener,
    S3Settings,
    check_source,
)
from ansible_collections.unistra.itop.plugins.module_utils.db_rollback import plan_rollback, schema_stale_after_restore
from ansible_collections.unistra.itop.plugins.module_utils.fsutil import (
    TMP_PREFIX,
    chown_tree,
    crash_point,
    discard,
    fsync_dir,
    inside,
    is_tmp_dir_busy,
    mkdtemp,
    rmtree,
    sync_filesystem,
    write_json_atomic,
)
from ansible_collections.unistra.itop.plugins.module_utils.prune import select_prunable, unused_artifacts
from ansible_collections.unistra.itop.plugins.module_utils.rules import (
    ReleaseError,
    safe_relpath,
    validate_release_id,
)
from ansible_collections.unistra.itop.plugins.module_utils.treesum import tree_checksum
from ansible_collections.unistra.itop.plugins.module_utils.unpack import UnpackLimits, fetch_and_unpack

SCHEMA_VERSION = 1
JOURNAL_NAME = ".journal.json"
JOURNAL_LOCK_NAME = ".journal.lock"
DEPLOY_LOCK_NAME = ".deploy.lock"
RELEASES_DIR = "releases"
SHARED_DIR = "shared"
CURRENT_LINK = "current"
DEFAULT_KEEP = 5
DEFAULT_LEASE = 1800
MAX_HISTORY = 1000
# Journal keys of the crash recovery: the intent of the change in progress, what the last recovery completed (so that
# a retried rollback does not go one step further), and a lock whose taker died before learning its token.
PENDING = "pending"
RECOVERED = "recovered"
ORPHANED_LOCK = "orphaned_lock_id"
_INTENT_OPS = ("prepare", "activate", "rollback", "prune", "lock", "unlock")

OPERATIONS = (
    "prepare",
    "activate",
    "rollback",
    "plan_rollback",
    "annotate",
    "prune",
    "info",
    "lock",
    "unlock",
    "mark_failed",
)
STATE_PREPARED = "prepared"
STATE_ACTIVE = "active"
STATE_INACTIVE = "inactive"
STATE_BAD = "bad"
STATE_FAILED = "failed"
# Root-level temporary names (all created while holding the journal flock); prune removes leftovers.
ROOT_TMP_PREFIXES = (CURRENT_LINK + ".tmp-", JOURNAL_NAME + ".tmp-", DEPLOY_LOCK_NAME + ".tmp-")


def _now_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_owner_name() -> str:
    """Who is deploying: $SUDO_USER, else $USER, else the uid's name, else the uid."""
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        value = os.environ.get(var)
        if value:
            return value
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve_owner(owner: str | None, group: str | None) -> tuple[int, int]:
    """Map owner/group names (or numeric ids) to ids; -1 means unchanged."""
    uid = gid = -1
    if owner:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ReleaseError(f"owner {owner!r} does not exist on this host: create the user first") from None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ReleaseError(f"group {group!r} does not exist on this host: create the group first") from None
    return uid, gid


# --------------------------------------------------------------------------------------------------------------------
# Journal and state
# --------------------------------------------------------------------------------------------------------------------


def empty_journal() -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "seq": 0, "previous": None, "releases": {}, "history": []}


def load_journal(path: str) -> dict[str, Any]:
    """Read the journal; a missing journal is an empty one, a damaged one is an error (never silently reset)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return empty_journal()
    except (OSError, ValueError) as exc:
        raise ReleaseError(
            f"the journal {path} cannot be read ({exc}); it is never rewritten blindly: restore it from a backup or "
            "fix it by hand"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
        raise ReleaseError(
            f"the journal {path} has schema {data.get('schema') if isinstance(data, dict) else '?'}, this module "
            f"reads schema {SCHEMA_VERSION}: upgrade the unistra.itop collection"
        )
    data.setdefault("seq", 0)
    data.setdefault("previous", None)
    data.setdefault("releases", {})
    data.setdefault("history", [])
    return data


@dataclass
class _State:
    journal: dict[str, Any]
    current: str | None
    lock: dict[str, Any] | None
    dirty: bool = False
    # In check mode the operation runs on this state in memory only; results report the untouched copy.
    on_disk: _State | None = None
    # What the recovery of a killed run did at the start of this operation (reported as ``recovered``).
    recovered: list[dict[str, Any]] = field(default_factory=list)


class ReleaseManager:
    """All operations on one application root. Every mutating method honours ``check_mode``."""

    def __init__(
        self,
        root: str,
        *,
        check_mode: bool = False,
        owner_name: str | None = None,
        clock: Callable[[], float] = time.time,
        lock_id: str | None = None,
    ) -> None:
        if not isinstance(root, str) or not root or not os.path.isabs(root):
            raise ReleaseError(f"root must be an absolute path, got {root!r}")
        self.root = os.path.normpath(root)
        self.check_mode = check_mode
        self.owner_name = owner_name or default_owner_name()
        # When the caller says which lock it holds, its changes are refused while another live lock is held.
        self.lock_id = lock_id
        self.clock = clock
        self.releases_dir = os.path.join(self.root, RELEASES_DIR)
        self.shared_dir = os.path.join(self.root, SHARED_DIR)
        self.current_link = os.path.join(self.root, CURRENT_LINK)
        self.journal_path = os.path.join(self.root, JOURNAL_NAME)
        self.journal_lock_path = os.path.join(self.root, JOURNAL_LOCK_NAME)
        self.deploy_lock_path = os.path.join(self.root, DEPLOY_LOCK_NAME)

    # -- plumbing -------------------------------------------------------------------------------------------------

    def release_path(self, release: str) -> str:
        return os.path.join(self.releases_dir, release)

    @contextlib.contextmanager
    def _guarded(self, write: bool, *, create: bool = False, honour_lock: bool = True) -> Iterator[_State]:
        """Hold the journal flock (exclusive to write, shared to read) and yield the loaded state.

        In check mode, and for reads, nothing is created: the lock file is only opened if it exists. Only ``create``
        operations (prepare, lock) make a missing root; the others have nothing to change there.
        """
        fd: int | None = None
        if write and not self.check_mode and (create or os.path.isdir(self.root)):
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                raise ReleaseError(f"root {self.root} exists and is not a directory")
            os.makedirs(self.root, mode=0o755, exist_ok=True)
            fd = os.open(self.journal_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                fd = os.open(self.journal_lock_path, os.O_RDONLY | os.O_CLOEXEC)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            state = self._load()
            self._reconcile(state, persist=fd is not None and write and not self.check_mode)
            if self.check_mode:
                state.on_disk = copy.deepcopy(state)
            if write and honour_lock:
                self._refuse_if_locked_by_another(state)
            yield state
        finally:
            if fd is not None:
                os.close(fd)

    def _refuse_if_locked_by_another(self, state: _State) -> None:
        held = state.lock
        if not self.lock_id or held is None or held.get("lock_id") == self.lock_id:
            return
        if float(held.get("expires_at_epoch", 0)) <= self.clock():
            return  # an expired lock protects nothing
        raise ReleaseError(
            f"{self.root} is locked by {held.get('owner')} ({held.get('reason') or 'no reason given'}) until "
            f"{held.get('expires_at')}, not with lock_id given: another deployment is running here; nothing was done"
        )

    def _load(self) -> _State:
        return _State(journal=load_journal(self.journal_path), current=self._read_current(), lock=self._read_lock())

    # -- write-ahead intents and recovery ---------------------------------------------------------------------------

    def _run_intent(self, state: _State, intent: dict[str, Any], act: Callable[[], None]) -> None:
        """Announce ``intent`` in the journal, ``act`` on the disk, then record it: a kill anywhere is recoverable.

        In check mode only the journal in memory changes. If ``act`` fails, the disk says how far it got and the
        same recovery as after a kill decides, at once.
        """
        if self.check_mode:
            self._apply(state, intent, recovered=False)
            return
        op = intent["op"]
        state.journal[PENDING] = intent
        state.dirty = True
        self._save(state)
        crash_point(f"{op}:intent")
        try:
            act()
        except BaseException:
            state.current, state.lock = self._read_current(), self._read_lock()
            self._reconcile(state, persist=True)
            raise
        crash_point(f"{op}:acted")
        self._apply(state, intent, recovered=False)
        del state.journal[PENDING]
        self._save(state)
        crash_point(f"{op}:done")

    def _reconcile(self, state: _State, *, persist: bool) -> None:
        """Complete or forget the change a killed run announced, before anything else (see the module docstring).

        An intent seen under the journal flock always belongs to a dead run: an intent is written, acted on and
        cleared within one holding of the exclusive flock. Without ``persist`` (reads, check mode) the recovery is
        only applied to the state in memory, so that what is reported is what the next change will find.
        """
        intent = state.journal.get(PENDING)
        if intent is None:
            return
        del state.journal[PENDING]
        state.dirty = True
        if not isinstance(intent, dict) or intent.get("op") not in _INTENT_OPS:
            self._event(state, "recover", outcome="dropped an unreadable intent")
        else:
            done = self._intent_reached_disk(state, intent)
            if done:
                if persist and intent["op"] == "prune":
                    self._prune_disk(intent, state.current)
                self._apply(state, intent, recovered=True)
            elif persist:
                self._forget(intent)
            outcome = "completed" if done else "abandoned"
            self._event(state, "recover", op=intent["op"], release=intent.get("release"), outcome=outcome)
            state.recovered.append({"op": intent["op"], "release": intent.get("release"), "outcome": outcome})
        if persist:
            self._save(state)

    def _intent_reached_disk(self, state: _State, intent: Mapping[str, Any]) -> bool:
        op = intent["op"]
        if op == "prepare":
            return os.path.isdir(self.release_path(str(intent["release"])))
        if op in ("activate", "rollback"):
            return state.current == str(intent["release"])
        if op == "lock":
            return state.lock is not None and state.lock.get("lock_id") == intent["lock"]["lock_id"]
        if op == "unlock":
            return state.lock is None or state.lock.get("lock_id") != intent["lock_id"]
        return True  # prune: what was decided is finished (removing a release twice is harmless)

    def _forget(self, intent: Mapping[str, Any]) -> None:
        """Remove what an intent that never reached the disk left behind (a prepared tree not yet renamed)."""
        if intent["op"] == "prepare" and intent.get("tmp"):
            tmp = os.path.join(self.releases_dir, os.path.basename(str(intent["tmp"])))
            if os.path.isdir(tmp) and not is_tmp_dir_busy(tmp):
                rmtree(tmp)

    def _apply(self, state: _State, intent: Mapping[str, Any], *, recovered: bool) -> None:
        """Record in the journal (in memory) the change ``intent`` describes: the one place each change is written."""
        op = intent["op"]
        journal = state.journal
        if op == "prepare":
            arts = [Artifact.from_dict(item) for item in intent["artifacts"]]
            self._mark_prepared(
                state,
                str(intent["release"]),
                arts,
                list(intent.get("shared_paths", [])),
                intent.get("metadata"),
                replaced_failed=bool(intent.get("replaced_failed")),
                recovered=recovered,
            )
            return
        if op in ("activate", "rollback"):
            self._apply_switch(state, intent, recovered=recovered)
            return
        if op == "prune":
            for rid in intent["remove"]:
                journal["releases"].pop(rid, None)
        elif op == "lock":
            state.lock = dict(intent["lock"])
            journal.pop(ORPHANED_LOCK, None)
            if recovered:  # its taker died before it could learn the token: the same owner may take it over
                journal[ORPHANED_LOCK] = intent["lock"]["lock_id"]
        elif op == "unlock":
            state.lock = None
            journal.pop(ORPHANED_LOCK, None)
        self._event(state, intent["event_name"], **intent.get("event", {}), recovered=recovered or None)

    def _apply_switch(self, state: _State, intent: Mapping[str, Any], *, recovered: bool) -> None:
        rid = str(intent["release"])
        previous = intent.get("from")
        journal = state.journal
        record = journal["releases"][rid]
        self._merge_metadata(record, intent.get("metadata"))
        entry = self._event(
            state,
            intent["op"],
            release=rid,
            reason=intent.get("reason"),
            recovered=recovered or None,
            **{"from": previous},
        )
        if previous and previous != rid:
            journal["previous"] = previous
        for other_id, other in journal["releases"].items():
            if other_id != rid and other.get("state") == STATE_ACTIVE:
                other["state"] = STATE_INACTIVE
        record["state"] = STATE_ACTIVE
        record["activated_at"] = entry["at"]
        record["activated_seq"] = entry["seq"]
        record["activations"] = int(record.get("activations", 0)) + 1
        record.pop("bad_reason", None)
        if intent["op"] == "rollback" and previous and previous != rid:
            left = journal["releases"].get(previous)
            if isinstance(left, dict):
                left["state"] = STATE_BAD
                left["bad_reason"] = intent.get("bad_reason") or f"rolled back to {rid}"
        for stale_id in intent.get("schema_stale") or ():
            stale = journal["releases"].get(stale_id)
            if isinstance(stale, dict) and stale_id != rid:
                if stale.get("state") != STATE_FAILED:
                    stale["state"] = STATE_BAD
                stale["schema_stale"] = True
                stale["bad_reason"] = f"its database schema was removed when {rid}'s database was restored"
        if recovered:
            journal[RECOVERED] = {"op": intent["op"], "release": rid, "from": previous}
        state.current = rid

    def _read_current(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError:
            if os.path.lexists(self.current_link):
                raise ReleaseError(
                    f"{self.current_link} exists and is not a symlink: move it away, this module manages it"
                ) from None
            return None
        head, release = os.path.split(target.rstrip("/"))
        if head != RELEASES_DIR:
            raise ReleaseError(
                f"{self.current_link} -> {target} does not point to releases/<id>: it was not set by this module; "
                "fix it by hand"
            )
        return release

    def _read_lock(self) -> dict[str, Any] | None:
        try:
            with open(self.deploy_lock_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ReleaseError(
                f"the deployment lock {self.deploy_lock_path} is unreadable ({exc}); if no deployment is running, "
                "remove the file"
            ) from None
        return data if isinstance(data, dict) else None

    def _save(self, state: _State) -> None:
        if state.dirty and not self.check_mode:
            write_json_atomic(self.journal_path, state.journal)
            state.dirty = False

    def _event(self, state: _State, event: str, **fields: Any) -> dict[str, Any]:
        journal = state.journal
        journal["seq"] = int(journal.get("seq", 0)) + 1
        entry = {"seq": journal["seq"], "event": event, "at": _now_iso(self.clock()), "by": self.owner_name}
        entry.update({key: value for key, value in fields.items() if value is not None})
        journal["history"].append(entry)
        del journal["history"][:-MAX_HISTORY]
        state.dirty = True
        return entry

    @staticmethod
    def _record(state: _State, release: str) -> dict[str, Any] | None:
        record = state.journal["releases"].get(release)
        return record if isinstance(record, dict) else None

    def _previous(self, state: _State) -> str | None:
        """The release that was current just before the current one (whatever its state), if still journaled."""
        previous = state.journal.get("previous")
        if previous and previous != state.current and previous in state.journal["releases"]:
            return str(previous)
        return None

    def _rollback_target(self, state: _State) -> str | None:
        """The release a rollback goes to: the last one activated before current, not bad/failed, still on disk."""
        best: tuple[int, str] | None = None
        for release, record in state.journal["releases"].items():
            seq = record.get("activated_seq")
            if seq is None or release == state.current or record.get("state") in (STATE_BAD, STATE_FAILED):
                continue
            if not os.path.isdir(self.release_path(release)):
                continue
            if best is None or seq > best[0]:
                best = (seq, release)
        return best[1] if best else None

    def _lock_view(self, lock: dict[str, Any] | None) -> dict[str, Any] | None:
        if lock is None:
            return None
        view = dict(lock)
        view["expired"] = float(lock.get("expires_at_epoch", 0)) <= self.clock()
        return view

    def _result(self, state: _State, changed: bool, msg: str, **extra: Any) -> dict[str, Any]:
        """The common result. In check mode the state reported is the one on disk (nothing moved); what would
        happen is in ``changed``, ``msg`` and the operation's own keys (``release``, ``removed``...)."""
        recovered = state.recovered
        if state.on_disk is not None:
            state = state.on_disk
        releases = sorted(
            state.journal["releases"].values(), key=lambda r: (r.get("prepared_seq") or 0, r.get("id", ""))
        )
        result: dict[str, Any] = {
            "changed": changed,
            "root": self.root,
            "current": state.current,
            "previous": self._previous(state),
            "rollback_target": self._rollback_target(state),
            "releases": [
                {
                    "id": r.get("id"),
                    "state": r.get("state"),
                    "prepared_at": r.get("prepared_at"),
                    "activated_at": r.get("activated_at"),
                    "metadata": r.get("metadata", {}),
                }
                for r in releases
            ],
            "history": list(state.journal["history"]),
            "lock": self._lock_view(state.lock),
            "recovered": list(recovered),
            "msg": msg,
        }
        result.update(extra)
        return result

    @staticmethod
    def _merge_metadata(record: dict[str, Any], metadata: Mapping[str, Any] | None) -> bool:
        if not metadata:
            return False
        current = record.setdefault("metadata", {})
        merged = {**current, **metadata}
        if merged == current:
            return False
        record["metadata"] = merged
        return True

    # -- prepare --------------------------------------------------------------------------------------------------

    def prepare(
        self,
        release: str,
        artifacts: Sequence[Mapping[str, Any]],
        *,
        shared_paths: Iterable[str] = (),
        owner: str | None = None,
        group: str | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        s3: S3Settings | None = None,
        validate_certs: bool = True,
        metadata: Mapping[str, Any] | None = None,
        http_open: HttpOpener | None = None,
        limits: UnpackLimits | None = None,
    ) -> dict[str, Any]:
        """Fetch, verify and unpack a release into releases/<id>, link shared paths, journal it as prepared."""
        rid = validate_release_id(release)
        if not artifacts:
            raise ReleaseError("prepare needs at least one artifact ({uri, sha256})")
        arts = [Artifact.from_dict(a) for a in artifacts]
        shared = _validate_shared_paths(shared_paths)
        uid, gid = resolve_owner(owner, group)
        fingerprint = [a.fingerprint() for a in arts]
        path = self.release_path(rid)
        cache = ArtifactCache(cache_dir, s3=s3, validate_certs=validate_certs, http_open=http_open)

        with self._guarded(write=True, create=True) as state:
            decision = self._prepare_decision(state, rid, fingerprint)
            if decision == "done" or self.check_mode:
                return self._prepare_without_work(state, decision, rid=rid, arts=arts, shared=shared, metadata=metadata)

        # The long part runs without the journal flock; the temporary directory is flocked so prune leaves it alone.
        os.makedirs(self.releases_dir, mode=0o755, exist_ok=True)
        tmp = mkdtemp(self.releases_dir, f"{TMP_PREFIX}{rid}-")
        tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(tmp_fd, fcntl.LOCK_EX)
        try:
            fetched = fetch_and_unpack(tmp, arts, cache, limits=limits)
            crash_point("prepare:unpacked")
            os.chmod(tmp, 0o755)  # noqa: S103 -- mkdtemp made it 0700; a release is read by the web server
            self._link_shared(tmp, shared, uid, gid)
            chown_tree(tmp, uid, gid)

            with self._guarded(write=True) as state:
                decision = self._prepare_decision(state, rid, fingerprint)
                if decision == "done":  # prepared meanwhile by another run
                    return self._result(
                        state, False, f"release {rid} is already prepared", release=rid, path=path, artifacts=fetched
                    )
                if decision == "redo":
                    discard(path, self.releases_dir)
                    crash_point("prepare:discarded")
                # The journal must never call a release prepared whose files a power cut could still truncate.
                sync_filesystem(tmp)
                intent = {
                    "op": "prepare",
                    "release": rid,
                    "tmp": os.path.basename(tmp),
                    "artifacts": [a.as_dict() for a in arts],
                    "shared_paths": list(shared),
                    "metadata": dict(metadata or {}),
                    "replaced_failed": decision == "redo",
                }

                def publish() -> None:
                    os.rename(tmp, path)
                    fsync_dir(self.releases_dir)

                self._run_intent(state, intent, publish)
                return self._result(state, True, f"release {rid} prepared", release=rid, path=path, artifacts=fetched)
        except OSError as exc:
            raise ReleaseError(f"preparing release {rid} failed: {exc}") from None
        finally:
            os.close(tmp_fd)
            if os.path.lexists(tmp):
                rmtree(tmp)

    def _prepare_without_work(
        self,
        state: _State,
        decision: str,
        *,
        rid: str,
        arts: Sequence[Artifact],
        shared: Sequence[str],
        metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Already prepared (only metadata may change), or check mode (predict, touch nothing)."""
        path = self.release_path(rid)
        if decision == "done":
            record = state.journal["releases"][rid]
            changed = self._merge_metadata(record, metadata)
            if changed:
                state.dirty = True
                self._save(state)
            msg = f"release {rid} is already prepared" + (" (metadata updated)" if changed else "")
            return self._result(state, changed, msg, release=rid, path=path, artifacts=[])
        for art in arts:
            check_source(art)
        self._mark_prepared(state, rid, arts, shared, metadata, replaced_failed=decision == "redo")
        return self._result(
            state, True, f"release {rid} would be prepared (check mode)", release=rid, path=path, artifacts=[]
        )

    def _prepare_decision(self, state: _State, rid: str, fingerprint: list[dict[str, str]]) -> str:
        """'done' (nothing to do), 'new' (prepare it) or 'redo' (a failed release of that id is replaced)."""
        record = self._record(state, rid)
        exists = os.path.lexists(self.release_path(rid))
        if record is None:
            if exists:
                raise ReleaseError(
                    f"{self.release_path(rid)} exists but is not in the journal: it was made by hand or left by an "
                    "older version of this module killed while preparing it; never adopted: run operation=prune "
                    "(which removes release directories the journal does not know), or use another release id"
                )
            return "new"
        if not exists:
            return "new"
        if record.get("state") == STATE_FAILED:
            return "redo"  # a failed release never served: it may be rebuilt, even from other artifacts
        if record.get("schema_stale"):
            return "redo"  # built against a schema a restore removed: rebuilt from scratch, its setup runs again
        if record.get("fingerprint") != fingerprint:
            raise ReleaseError(
                f"release {rid} is already prepared with other artifacts (different sha256/dest/subdir): releases "
                "are immutable, publish a new release id"
            )
        return "done"

    def _mark_prepared(
        self,
        state: _State,
        rid: str,
        arts: Sequence[Artifact],
        shared: Sequence[str],
        metadata: Mapping[str, Any] | None,
        *,
        replaced_failed: bool,
        recovered: bool = False,
    ) -> None:
        old = self._record(state, rid) or {}
        entry = self._event(
            state, "prepare", release=rid, replaced_failed=replaced_failed or None, recovered=recovered or None
        )
        record = {
            "id": rid,
            "state": STATE_PREPARED,
            "prepared_at": entry["at"],
            "prepared_seq": entry["seq"],
            "activated_at": old.get("activated_at"),
            "activated_seq": old.get("activated_seq"),
            "activations": old.get("activations", 0),
            "artifacts": [a.as_dict() for a in arts],
            "fingerprint": [a.fingerprint() for a in arts],
            "shared_paths": list(shared),
            "metadata": dict(old.get("metadata", {})),
        }
        self._merge_metadata(record, metadata)
        state.journal["releases"][rid] = record

    def _link_shared(self, release_dir: str, shared: Sequence[str], uid: int, gid: int) -> None:
        """Replace each shared path in the release by a relative link to shared/<path>, seeding shared/ once."""
        if not shared:
            return
        os.makedirs(self.shared_dir, mode=0o755, exist_ok=True)
        for rel in shared:
            in_release = os.path.join(release_dir, rel)
            in_shared = os.path.join(self.shared_dir, rel)
            parent = os.path.dirname(in_release)
            os.makedirs(parent, exist_ok=True)
            if not inside(os.path.realpath(parent), os.path.realpath(release_dir)):
                raise ReleaseError(f"shared path {rel!r} resolves outside the release (through a symlink)")
            os.makedirs(os.path.dirname(in_shared), mode=0o755, exist_ok=True)
            if not inside(os.path.realpath(os.path.dirname(in_shared)), os.path.realpath(self.shared_dir)):
                raise ReleaseError(f"shared path {rel!r} resolves outside {self.shared_dir} (through a symlink)")
            ships = os.path.lexists(in_release)
            if not os.path.lexists(in_shared):
                if ships and not os.path.islink(in_release):
                    shutil.move(in_release, in_shared)  # the archive's content seeds shared/ the first time
                else:
                    if ships:
                        os.unlink(in_release)
                    os.makedirs(in_shared, mode=0o755)
                chown_tree(in_shared, uid, gid)
            elif ships:
                rmtree(in_release)
            depth = rel.count("/") + 2  # releases/<id>/ plus the directories of rel
            os.symlink("../" * depth + f"{SHARED_DIR}/{rel}", in_release)

    # -- activate / rollback ----------------------------------------------------------------------------------------

    def activate(
        self, release: str, *, metadata: Mapping[str, Any] | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Point current at releases/<id> (temporary symlink + rename) and journal who did it."""
        rid = validate_release_id(release)
        with self._guarded(write=True) as state:
            self._consume_recovered(state)
            record = self._activatable(state, rid, force=force)
            if state.current == rid and record.get("state") == STATE_ACTIVE:
                changed = self._merge_metadata(record, metadata)
                if changed:
                    state.dirty = True
                    self._save(state)
                return self._result(
                    state, changed, f"release {rid} is already current", release=rid, path=self.release_path(rid)
                )
            previous = state.current
            self._switch(state, {"op": "activate", "release": rid, "from": previous, "metadata": dict(metadata or {})})
            self._save(state)
            verb = "would be activated (check mode)" if self.check_mode else "activated"
            return self._result(
                state, True, f"release {rid} {verb} (was {previous})", release=rid, path=self.release_path(rid)
            )

    def rollback(
        self, release: str | None = None, *, reason: str | None = None, restored_db: bool = False
    ) -> dict[str, Any]:
        """Go back to ``release`` or to the previous good release; the release left is marked bad.

        ``restored_db``: the caller restored the target's database (the dump of :meth:`plan_rollback`) before this
        switch; the releases built against the schemas that restore removed can then come back only through a fresh
        prepare (they are marked ``schema_stale``).
        """
        with self._guarded(write=True) as state:
            current = state.current
            recovered = self._consume_recovered(state)
            if (
                not release
                and current is not None
                and recovered is not None
                and recovered.get("op") == "rollback"
                and recovered.get("release") == current
            ):
                # The retry of a rollback killed after its switch: the recovery finished it, going further is not
                # what was asked.
                self._save(state)
                return self._result(
                    state,
                    False,
                    f"the rollback from {recovered.get('from')} to {current} was interrupted after the switch and has "
                    "been completed; nothing more to do (name a release to go further back)",
                    release=current,
                    path=self.release_path(current),
                )
            rid = self._pick_rollback_target(state, release)
            if rid == current:
                return self._result(
                    state, False, f"release {rid} is already current", release=rid, path=self.release_path(rid)
                )
            stale = (
                schema_stale_after_restore(state.journal["releases"], current, rid) if restored_db and current else []
            )
            self._switch(
                state,
                {
                    "op": "rollback",
                    "release": rid,
                    "from": current,
                    "reason": reason,
                    "bad_reason": reason or f"rolled back to {rid}",
                    "restored_db": restored_db or None,
                    "schema_stale": stale,
                },
            )
            self._save(state)
            verb = "would roll back (check mode)" if self.check_mode else "rolled back"
            return self._result(
                state, True, f"{verb} from {current} to {rid}", release=rid, path=self.release_path(rid)
            )

    def _pick_rollback_target(self, state: _State, release: str | None) -> str:
        """``release`` if given (validated), else the previous good release; it must be activatable."""
        if release:
            rid = validate_release_id(release)
            if rid == state.current:
                return rid
        else:
            if state.current is None:
                raise ReleaseError(f"nothing to roll back in {self.root}: no release is current")
            target = self._rollback_target(state)
            if target is None:
                raise ReleaseError(
                    f"no release to roll back to in {self.root}: no release activated before {state.current} is "
                    "still present and not marked bad or failed; name one with release=<id>"
                )
            rid = target
        self._activatable(state, rid, force=True)
        return rid

    def plan_rollback(self, release: str | None = None, *, restore_db: bool = False) -> dict[str, Any]:
        """Where a rollback would go and what it needs from the database (``plan``); changes nothing.

        The plan (:func:`db_rollback.plan_rollback`): ``action`` none | switch | restore | refuse, ``target``,
        ``schema_from``/``schema_to``, ``restore_via`` and ``dump`` (the dump that restores the target's database),
        ``reason`` when refused. A refused plan is not an error here: the caller decides how to fail.
        """
        with self._guarded(write=False) as state:
            rid = self._pick_rollback_target(state, release)
            plan = plan_rollback(state.journal["releases"], state.current, rid, restore_db=restore_db)
            return self._result(
                state,
                False,
                plan.reason or f"rollback to {rid}: {plan.action}",
                release=rid,
                path=self.release_path(rid),
                plan=plan.as_dict(),
            )

    def annotate(self, release: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge ``metadata`` into a journaled release's record (what a hook learnt: schema, dump), nothing else."""
        rid = validate_release_id(release)
        if not isinstance(metadata, Mapping) or not metadata:
            raise ReleaseError("annotate needs metadata: a non-empty dict to merge into the release's record")
        with self._guarded(write=True) as state:
            record = self._record(state, rid)
            if record is None:
                raise ReleaseError(f"release {rid} is not in the journal of {self.root}: prepare it first")
            changed = self._merge_metadata(record, metadata)
            if changed:
                self._event(state, "annotate", release=rid, keys=sorted(metadata))
                self._save(state)
            msg = f"release {rid} metadata " + ("updated" if changed else "already up to date")
            return self._result(state, changed, msg, release=rid, path=self.release_path(rid))

    def _activatable(self, state: _State, rid: str, *, force: bool) -> dict[str, Any]:
        record = self._record(state, rid)
        if record is None or not os.path.isdir(self.release_path(rid)):
            raise ReleaseError(f"release {rid} is not prepared in {self.root}: run operation=prepare first")
        if record.get("schema_stale"):
            # Not even with force: its code was built against a database schema that no longer exists.
            raise ReleaseError(
                f"release {rid} cannot come back as it is: {record.get('bad_reason', 'its schema was removed')}. "
                "Prepare it again (the installer or the migrations run again against the current database), then "
                "activate it; force does not override this"
            )
        status = record.get("state")
        if status == STATE_FAILED:
            raise ReleaseError(
                f"release {rid} is marked failed (its preparation hook failed): fix the cause and prepare it again"
            )
        if status == STATE_BAD and not force:
            raise ReleaseError(
                f"release {rid} is marked bad ({record.get('bad_reason', 'rolled back')}): pass force=true to "
                "activate it anyway"
            )
        return record

    @staticmethod
    def _consume_recovered(state: _State) -> dict[str, Any] | None:
        """What the last recovery completed, kept only until the next switch (activate or rollback)."""
        recovered = state.journal.pop(RECOVERED, None)
        if recovered is not None:
            state.dirty = True
        return recovered if isinstance(recovered, dict) else None

    def _switch(self, state: _State, intent: dict[str, Any]) -> None:
        """Move ``current`` to the intent's release: temporary symlink + rename(2), announced and recorded."""
        rid = intent["release"]

        def switch_link() -> None:
            tmp_link = os.path.join(self.root, f"{CURRENT_LINK}.tmp-{secrets.token_hex(4)}")
            os.symlink(f"{RELEASES_DIR}/{rid}", tmp_link)
            try:
                os.rename(tmp_link, self.current_link)
            except OSError as exc:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_link)
                raise ReleaseError(f"cannot switch {self.current_link} to releases/{rid}: {exc}") from None
            fsync_dir(self.root)

        self._run_intent(state, intent, switch_link)

    # -- prune ------------------------------------------------------------------------------------------------------

    def prune(self, keep: int = DEFAULT_KEEP, *, cache_dir: str | None = None) -> dict[str, Any]:
        """Remove old releases: keep ``keep`` activated ones, current and previous; drop never-activated failures.

        With ``cache_dir``, the cached artifacts of the removed releases go too, unless a release still journaled here
        uses them: the cache then holds what this root may still need, not every artifact it ever fetched.
        """
        if not isinstance(keep, int) or keep < 0:
            raise ReleaseError(f"keep must be a non-negative integer, got {keep!r}")
        with self._guarded(write=True) as state:
            releases = state.journal["releases"]
            protected = {state.current, self._previous(state), self._rollback_target(state)}
            removed = select_prunable(releases, keep, {rid for rid in protected if rid})
            leftovers = self._leftovers()
            unknown = self._unjournaled(state)
            stale = unused_artifacts(releases, removed) if cache_dir else []
            dumps = _dumps_of(releases, removed)
            changed = bool(removed or leftovers or unknown)
            if not self.check_mode:
                for path in leftovers:
                    rmtree(path)
                for rid in unknown:
                    discard(self.release_path(rid), self.releases_dir)
            if removed:
                intent = {
                    "op": "prune",
                    "remove": removed,
                    "cache_dir": cache_dir,
                    "stale": stale,
                    "dumps": dumps,
                    "event_name": "prune",
                    "event": {"removed": removed, "keep": keep},
                }
                self._run_intent(state, intent, lambda: self._prune_disk(intent, state.current))
            self._save(state)
            if changed:
                verb = "would remove" if self.check_mode else "removed"
                msg = f"{verb} {len(removed)} release(s) and {len(leftovers)} leftover temporary item(s)"
                if unknown:
                    msg += f", and {len(unknown)} unjournaled release directory(ies) ({', '.join(unknown)})"
            else:
                msg = "nothing to prune"
            return self._result(
                state,
                changed,
                msg,
                removed=removed,
                removed_tmp=[os.path.basename(p) for p in leftovers],
                removed_unjournaled=unknown,
                removed_cache=stale,
                removed_dumps=dumps,
            )

    def _prune_disk(self, intent: Mapping[str, Any], current: str | None) -> None:
        """Remove the releases (and cached artifacts) a prune decided on; safe to run again after a kill."""
        for rid in intent["remove"]:
            if rid != current:  # never, even if someone moved current by hand since the decision
                discard(self.release_path(rid), self.releases_dir)
                crash_point("prune:removed")
        for dump in intent.get("dumps", []):
            # the database dumps an application recorded for these releases (metadata db_dump) go with them
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(dump)
        cache_dir = intent.get("cache_dir")
        for sha in intent.get("stale", []) if cache_dir else []:
            for name in (sha, f"{sha}.uris"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(str(cache_dir), name))

    def _unjournaled(self, state: _State) -> list[str]:
        """Release directories the journal does not know (never current): made by hand, or debris of a prepare
        killed under an older version of this module (a prepare now announces its rename in the journal first)."""
        try:
            names = sorted(os.listdir(self.releases_dir))
        except FileNotFoundError:
            return []
        known = state.journal["releases"]
        return [n for n in names if not n.startswith(TMP_PREFIX) and n not in known and n != state.current]

    def _leftovers(self) -> list[str]:
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.releases_dir)):
                path = os.path.join(self.releases_dir, name)
                if name.startswith(TMP_PREFIX) and not is_tmp_dir_busy(path):
                    found.append(path)
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.root)):
                if name.startswith(ROOT_TMP_PREFIXES):
                    found.append(os.path.join(self.root, name))
        return found

    # -- mark_failed / info -------------------------------------------------------------------------------------------

    def mark_failed(self, release: str, *, reason: str | None = None) -> dict[str, Any]:
        """Mark a prepared, not current, release failed (its application hook failed); it can never be activated."""
        rid = validate_release_id(release)
        with self._guarded(write=True) as state:
            record = self._record(state, rid)
            if record is None:
                raise ReleaseError(f"release {rid} is not in the journal of {self.root}: nothing to mark failed")
            if state.current == rid:
                raise ReleaseError(f"release {rid} is current: it cannot be marked failed; roll back instead")
            if record.get("state") == STATE_FAILED:
                return self._result(state, False, f"release {rid} is already marked failed", release=rid)
            record["state"] = STATE_FAILED
            record["failed_reason"] = reason or "preparation hook failed"
            self._event(state, "mark_failed", release=rid, reason=reason)
            self._save(state)
            return self._result(state, True, f"release {rid} marked failed", release=rid, path=self.release_path(rid))

    def info(self, *, checksum: bool = False) -> dict[str, Any]:
        """The state; with ``checksum``, also the current release tree's checksum (``treesum``): drift detection."""
        with self._guarded(write=False) as state:
            path = self.release_path(state.current) if state.current else None
            extra: dict[str, Any] = {}
            if checksum:
                extra["tree"] = tree_checksum(path) if path and os.path.isdir(path) else None
            return self._result(state, False, "info", release=state.current, path=path, **extra)

    # -- deployment lock --------------------------------------------------------------------------------------------

    def lock(
        self,
        *,
        reason: str | None = None,
        lease: int = DEFAULT_LEASE,
        lock_id: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Take the deployment lock; the same ``lock_id`` renews it; an expired one is taken over (journaled)."""
        if not isinstance(lease, int) or lease <= 0:
            raise ReleaseError(f"lease must be a positive number of seconds, got {lease!r}")
        with self._guarded(write=True, create=True, honour_lock=False) as state:
            now = self.clock()
            held = state.lock
            token = lock_id or secrets.token_hex(12)
            new = {
                "owner": self.owner_name,
                "reason": reason or "",
                "lock_id": token,
                "lease": lease,
                "host": socket.gethostname(),
                "acquired_at": _now_iso(now),
                "acquired_at_epoch": now,
                "expires_at": _now_iso(now + lease),
                "expires_at_epoch": now + lease,
            }
            if held is not None and lock_id and held.get("lock_id") == lock_id:
                new["acquired_at"] = held.get("acquired_at", new["acquired_at"])
                new["acquired_at_epoch"] = held.get("acquired_at_epoch", now)
                self._write_lock(state, new)
                return self._result(state, False, f"lock renewed until {new['expires_at']}")
            if held is None:
                self._take_lock(state, new, "lock", {"lock_owner": self.owner_name, "reason": reason})
                self._save(state)
                return self._result(state, True, f"lock taken until {new['expires_at']}")
            expired = float(held.get("expires_at_epoch", 0)) <= now
            # A lock whose taker was killed before it returned: nobody knows its token, its owner may take it again.
            orphaned = held.get("lock_id") == state.journal.get(ORPHANED_LOCK) and held.get("owner") == self.owner_name
            if not expired and not force and not orphaned:
                raise ReleaseError(
                    f"{self.root} is locked by {held.get('owner')} since {held.get('acquired_at')} "
                    f"({held.get('reason') or 'no reason given'}), lease until {held.get('expires_at')}: wait for it, "
                    "or pass force=true to take it over (recorded in the journal)"
                )
            takeover = {
                "previous_owner": held.get("owner"),
                "previous_reason": held.get("reason"),
                "previous_expires_at": held.get("expires_at"),
                "expired": expired,
                "forced": not expired and not orphaned,
                "orphaned": orphaned or None,
                "reason": reason,
            }
            self._take_lock(state, new, "lock_takeover", takeover)
            self._save(state)
            how = "expired lock" if expired else "orphaned lock" if orphaned else "lock (forced)"
            return self._result(state, True, f"took over the {how} of {held.get('owner')}")

    def unlock(self, *, lock_id: str | None = None, force: bool = False) -> dict[str, Any]:
        """Release the lock held with ``lock_id`` (or by this owner); ``force`` releases anyone's (journaled).

        Someone else's lock is never released without ``force``, even expired.
        """
        with self._guarded(write=True, honour_lock=False) as state:
            held = state.lock
            if held is None:
                return self._result(state, False, "not locked")
            mine = (lock_id and held.get("lock_id") == lock_id) or (
                not lock_id and held.get("owner") == self.owner_name
            )
            # Someone else's lock is released only with force, even expired: a stale lock needs no unlock, the next
            # operation=lock takes it over (and that is journaled).
            if not (mine or force):
                raise ReleaseError(
                    f"{self.root} is locked by {held.get('owner')} ({held.get('reason') or 'no reason given'}) with "
                    "another lock_id: pass the lock_id returned by operation=lock, or force=true to break it "
                    "(recorded in the journal)"
                )

            def remove_lock() -> None:
                os.unlink(self.deploy_lock_path)
                fsync_dir(self.root)

            intent = {
                "op": "unlock",
                "lock_id": held.get("lock_id"),
                "event_name": "unlock",
                "event": {"previous_owner": held.get("owner"), "forced": (not mine) or None},
            }
            self._run_intent(state, intent, remove_lock)
            self._save(state)
            return self._result(state, True, f"lock of {held.get('owner')} released")

    def _take_lock(self, state: _State, lock: dict[str, Any], event: str, fields: Mapping[str, Any]) -> None:
        intent = {"op": "lock", "lock": lock, "event_name": event, "event": dict(fields)}
        self._run_intent(state, intent, lambda: write_json_atomic(self.deploy_lock_path, lock))

    def _write_lock(self, state: _State, lock: dict[str, Any]) -> None:
        if not self.check_mode:
            write_json_atomic(self.deploy_lock_path, lock)
        state.lock = lock


def _dumps_of(releases: Mapping[str, Mapping[str, Any]], removed: Sequence[str]) -> list[str]:
    """The database dumps (metadata ``db_dump``, absolute paths) of ``removed`` that no kept release names."""

    def dump(rid: str) -> str | None:
        value = (releases[rid].get("metadata") or {}).get("db_dump")
        return value if isinstance(value, str) and os.path.isabs(value) else None

    kept = {dump(rid) for rid in releases if rid not in removed}
    return sorted({d for rid in removed if (d := dump(rid)) and d not in kept})


def _validate_shared_paths(paths: Iterable[str]) -> list[str]:
    result: list[str] = []
    for raw in paths or ():
        rel = safe_relpath(raw, "shared path", allow_empty=False)
        if rel not in result:
            result.append(rel)
    for a in result:
        for b in result:
            if a != b and b.startswith(a + "/"):
                raise ReleaseError(f"shared paths {a!r} and {b!r} overlap: list only {a!r}")
    return result
