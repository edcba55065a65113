"""The journal: JSON schema 1, atomic replacement, never silently reset, every mutation under flock."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible_collections.unistra.itop.plugins.module_utils import release as engine
from ansible_collections.unistra.itop.plugins.module_utils.fsutil import write_json_atomic
from ansible_collections.unistra.itop.plugins.module_utils.release import MAX_HISTORY, ReleaseManager, load_journal
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError

Deploy = Callable[..., None]


def test_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    data = {"schema": 1, "seq": 3, "previous": None, "releases": {"r1": {"id": "r1"}}, "history": [{"seq": 1}]}
    write_json_atomic(str(path), data)
    assert load_journal(str(path)) == data
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_missing_journal_is_empty(tmp_path: Path) -> None:
    assert load_journal(str(tmp_path / "none.json")) == engine.empty_journal()


def test_failed_write_keeps_the_old_journal_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.json"
    write_json_atomic(str(path), {"schema": 1, "v": "old"})

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(engine.os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        write_json_atomic(str(path), {"schema": 1, "v": "new"})
    assert json.loads(path.read_text())["v"] == "old"
    assert os.listdir(tmp_path) == ["j.json"]


def test_damaged_journal_is_an_error_not_a_reset(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1")
    (root / ".journal.json").write_text("{not json")
    with pytest.raises(ReleaseError, match="cannot be read"):
        manager.info()
    with pytest.raises(ReleaseError, match="cannot be read"):
        manager.activate("r1")
    assert (root / ".journal.json").read_text() == "{not json"


def test_other_schema_is_refused(root: Path, manager: ReleaseManager) -> None:
    root.mkdir()
    (root / ".journal.json").write_text(json.dumps({"schema": 2}))
    with pytest.raises(ReleaseError, match="schema 2"):
        manager.info()


def test_journal_survives_a_new_manager(deploy: Deploy, root: Path) -> None:
    deploy("r1", "r2")
    fresh = ReleaseManager(str(root), owner_name="someone-else")
    info = fresh.info()
    assert info["current"] == "r2"
    assert [e["event"] for e in info["history"]] == ["prepare", "activate", "prepare", "activate"]
    assert [e["seq"] for e in info["history"]] == [1, 2, 3, 4]


def test_history_is_capped(deploy: Deploy, manager: ReleaseManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_HISTORY", 10)  # the real cap is large; the rule is the same
    deploy("r1", "r2")
    for _ in range(8):
        manager.rollback("r1")
        manager.activate("r2", force=True)
    history = manager.info()["history"]
    assert len(history) == 10
    assert history[-1]["event"] == "activate"
    assert history[-1]["seq"] == 4 + 16  # sequence numbers keep counting past the cap
    assert MAX_HISTORY >= 500


def test_mutations_wait_for_the_journal_flock(deploy: Deploy, manager: ReleaseManager, root: Path) -> None:
    deploy("r1", "r2")
    fd = os.open(root / ".journal.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run is in its read-modify-write
    done = threading.Event()
    worker = threading.Thread(target=lambda: (manager.rollback(), done.set()))
    worker.start()
    try:
        assert not done.wait(0.3), "rollback ran while the journal lock was held"
        assert os.readlink(root / "current") == "releases/r2"
    finally:
        os.close(fd)
    worker.join(5)
    assert done.is_set()
    assert os.readlink(root / "current") == "releases/r1"
