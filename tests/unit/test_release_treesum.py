"""The release tree checksum behind itopctl's drift check: what changes it, what does not."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.treesum import tree_checksum
from ansible_collections.unistra.itop.plugins.modules import release as module


def _tree(top: Path) -> Path:
    (top / "app/lib").mkdir(parents=True)
    (top / "app/index.php").write_text("<?php echo 1;\n")
    (top / "app/lib/a.py").write_text("A = 1\n")
    (top / "README").write_text("r\n")
    (top / "data").symlink_to("../../shared/data")
    return top


def _sum(top: Path) -> str:
    return str(tree_checksum(str(top))["checksum"])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _tree(tmp_path / "t")


def test_same_content_same_checksum_wherever_it_lies(tree: Path, tmp_path: Path) -> None:
    other = _tree(tmp_path / "elsewhere")
    result = tree_checksum(str(tree))
    assert result["checksum"] == _sum(other)
    assert str(result["checksum"]).startswith("sha256:")
    assert (result["files"], result["bytes"]) == (3, len("<?php echo 1;\n") + len("A = 1\n") + len("r\n"))


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "app/index.php").write_text("<?php echo 2;\n"),  # a hand edit
        lambda t: (t / "app/new.php").write_text(""),  # a file added
        lambda t: (t / "README").unlink(),  # one removed
        lambda t: os.chmod(t / "app/index.php", 0o600),  # a mode changed
        lambda t: (t / "data").unlink() or (t / "data").symlink_to("/tmp"),  # a link re-pointed
        lambda t: (t / "app/lib").rename(t / "app/lib2"),  # a directory renamed
        lambda t: (t / "empty").mkdir(),  # an empty directory added
    ],
)
def test_any_change_to_the_tree_changes_it(tree: Path, change: Callable[[Path], object]) -> None:
    before = _sum(tree)
    change(tree)
    assert _sum(tree) != before


def test_byte_code_caches_and_the_data_behind_links_do_not_count(tree: Path, tmp_path: Path) -> None:
    before = _sum(tree)
    (tree / "app/lib/__pycache__").mkdir()
    (tree / "app/lib/__pycache__/a.cpython-311.pyc").write_bytes(b"\x00compiled")
    (tree / "app/lib/b.pyc").write_bytes(b"\x00")
    shared = tmp_path / "shared/data"
    shared.mkdir(parents=True)
    (shared / "uploaded").write_text("user data changes all the time")
    assert _sum(tree) == before


def test_info_reports_the_current_release_tree_through_the_module(
    deploy: Callable[..., None], manager: ReleaseManager, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deploy("r1")
    with patch_module_args({"root": str(root), "operation": "info", "checksum": True}), pytest.raises(SystemExit):
        module.main()
    info = json.loads(capsys.readouterr().out)
    assert info["changed"] is False
    assert info["tree"] == tree_checksum(manager.release_path("r1"))
    # edited by hand: the next info says so; without checksum nothing is hashed
    target = next(p for p in Path(manager.release_path("r1")).rglob("*") if p.is_file() and not p.is_symlink())
    target.write_text("edited by hand")
    assert manager.info(checksum=True)["tree"]["checksum"] != info["tree"]["checksum"]
    assert "tree" not in manager.info()


def test_info_without_a_current_release_has_no_tree(manager: ReleaseManager) -> None:
    assert manager.info(checksum=True)["tree"] is None
