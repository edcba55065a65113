"""The console script: an itopctl that cannot find the collection (whose rules it imports) says so and what to do,
with an exit code, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import itopctl


def test_missing_collection_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    # a copy of the package far from any checkout, and no collections path: the collection is nowhere
    package = tmp_path / "site" / "lib" / "itopctl"
    shutil.copytree(Path(itopctl.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_COLLECTIONS_PATH")}
    code = (
        f"import sys; sys.path.insert(0, {str(package.parent)!r}); from itopctl.console import main; sys.exit(main())"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the unistra.itop collection" in proc.stderr
    assert "set ANSIBLE_COLLECTIONS_PATH" in proc.stderr
