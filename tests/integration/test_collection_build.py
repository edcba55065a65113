"""The collection builds into a tarball that installs, and whose modules ansible-doc renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "collections" / "ansible_collections" / "unistra" / "itop"
BIN = Path(sys.executable).parent


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("collection")
    galaxy = shutil.which("ansible-galaxy", path=str(BIN)) or "ansible-galaxy"
    _run(galaxy, "collection", "build", "--force", "--output-path", tmp / "dist", COLLECTION)
    tarballs = list((tmp / "dist").glob("unistra-itop-*.tar.gz"))
    assert len(tarballs) == 1
    _run(galaxy, "collection", "install", "--force", "-p", tmp / "installed", tarballs[0])
    return tarballs[0], tmp / "installed"


def test_tarball_holds_the_collection_and_none_of_the_build_ignores(installed: tuple[Path, Path]) -> None:
    tarball, _ = installed
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert "plugins/modules/release.py" in names
    assert "plugins/module_utils/release.py" in names
    assert "roles/app_release/tasks/main.yml" in names
    assert "meta/runtime.yml" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/output")]


def test_installed_module_renders_with_ansible_doc(installed: tuple[Path, Path]) -> None:
    _, path = installed
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(path)}
    doc = _run(BIN / "ansible-doc", "--json", "unistra.itop.release", env=env)
    spec = json.loads(doc.stdout)["unistra.itop.release"]["doc"]
    options = spec["options"]
    operations = {"prepare", "activate", "rollback", "prune", "info", "lock", "unlock"}
    assert set(options["operation"]["choices"]) >= operations
    assert spec["attributes"]["check_mode"]["support"] == "full"
    text = _run(BIN / "ansible-doc", "unistra.itop.release", env=env).stdout
    assert "EXAMPLES" in text and "RETURN VALUES" in text
