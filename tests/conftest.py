"""Shared pytest set-up: make the in-tree collection importable as ``ansible_collections.unistra.itop``."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

# The collection lives in <repo>/collections/ansible_collections/unistra/itop; Ansible imports it through the
# ``ansible_collections`` namespace package, so the directory above it goes on sys.path (relative to this file).
COLLECTIONS_DIR = Path(__file__).resolve().parent.parent / "collections"
if str(COLLECTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_DIR))


# `scripts/test.sh all` (what CI runs) sets UNISTRA_ITOP_STRICT_SKIPS=1: there, every real part (Docker, the lab image,
# PostgreSQL, SeaweedFS) has been set up, so a test that skips itself for lack of one is a failure, not a pass.
STRICT_SKIPS = os.environ.get("UNISTRA_ITOP_STRICT_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped where every test must run (UNISTRA_ITOP_STRICT_SKIPS=1): {reason}"


@pytest.fixture
def playbook_env() -> dict[str, str]:
    """The environment of an ansible-playbook run on localhost against the in-tree collection, quiet and plain."""
    return dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_DIR),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
