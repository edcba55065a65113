"""Fixtures of the itopctl tests: a state store on SQLite or PostgreSQL, and a small local project
(see ``itopctl_support.py``)."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from itopctl_support import Project, make_project

# The fake Sentry lives with the fixtures (a Molecule scenario runs it in a container too): import it as
# ``fake_sentry`` without putting tests/fixtures (whose sample apps would shadow the real ones) on sys.path.
_spec = importlib.util.spec_from_file_location("fake_sentry", Path(__file__).parents[1] / "fixtures" / "fake_sentry.py")
assert _spec is not None and _spec.loader is not None
sys.modules["fake_sentry"] = _fake_sentry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fake_sentry)

PG_URL = os.environ.get("ITOPCTL_TEST_PG_URL", "postgresql://itopctl:itopctl@127.0.0.1:5432/itopctl_test")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty state store: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def project(tmp_path: Path, state_url: str) -> Project:
    return make_project(tmp_path / "project", state_url)


@pytest.fixture
def sqlite_project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", f"sqlite:///{tmp_path / 'state.db'}")
