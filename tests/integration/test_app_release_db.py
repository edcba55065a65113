"""app_release's database back ends, for real: db_dump then db_restore on the local PostgreSQL (the one the itopctl
store tests use), through ansible-playbook. The MariaDB back end runs in the itop Molecule scenario.

What a rollback across a migration needs: the restore brings back the database as the dump saw it, including
dropping what the migration added (a table, a column), in one transaction; the dump is owner-only and taken once.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
PG_URL = os.environ.get("ITOPCTL_TEST_PG_URL", "postgresql://itopctl:itopctl@127.0.0.1:5432/itopctl_test")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PLAYBOOK = """
- name: Dump or restore through app_release, as an application role does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Include the database entry point
      ansible.builtin.include_role:
        name: unistra.itop.app_release
        tasks_from: "{{ entry }}"
      vars:
        app_release_caller: db-test
        app_release_db_engine: postgresql
        app_release_db_name: "{{ db }}"
        app_release_db_dump: "{{ dump }}"
        app_release_db_login_file: "{{ passfile }}"
        app_release_db_host: "{{ pg_host }}"
        app_release_db_port: "{{ pg_port }}"
        app_release_db_user: "{{ user }}"
"""


@pytest.fixture
def database(tmp_path: Path) -> Iterator[dict[str, Any]]:
    psycopg = pytest.importorskip("psycopg")
    url = urlparse(PG_URL)
    name = f"app_release_db_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no local PostgreSQL at {url.hostname}:{url.port} ({exc}); run scripts/setup.sh")
    admin.execute(f'CREATE DATABASE "{name}"')
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{url.hostname}:{url.port}:{name}:{url.username}:{url.password}\n")
    passfile.chmod(0o600)
    info = {
        "db": name,
        "pg_host": url.hostname,
        "pg_port": str(url.port),
        "user": url.username,
        "passfile": str(passfile),
        "dump": str(tmp_path / "backups" / "r2.dump"),
        "url": PG_URL.rsplit("/", 1)[0] + f"/{name}",
    }
    (tmp_path / "backups").mkdir()
    try:
        yield info
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _play(
    tmp_path: Path, entry: str, database: dict[str, Any], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site.yml"
    site.write_text(PLAYBOOK)
    variables = {k: v for k, v in database.items() if k != "url"} | {"entry": entry}
    command = [str(PLAYBOOK_BIN), "-i", "localhost,", "-c", "local", str(site), "-e", json.dumps(variables)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout


def test_postgresql_dump_then_restore_undoes_a_migration(
    tmp_path: Path, database: dict[str, Any], playbook_env: dict[str, str]
) -> None:
    import psycopg  # noqa: PLC0415 -- the fixture skipped already when it is missing

    with psycopg.connect(database["url"], autocommit=True) as conn:
        conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO tickets VALUES (1, 'printer on fire'), (2, 'no coffee')")

    _ok(_play(tmp_path, "db_dump", database, playbook_env))
    dump = Path(database["dump"])
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert not Path(database["dump"] + ".tmp").exists()
    first = dump.read_bytes()

    # the "migration" of the next release, and rows written after it
    with psycopg.connect(database["url"], autocommit=True) as conn:
        conn.execute("ALTER TABLE tickets ADD COLUMN priority int DEFAULT 3")
        conn.execute("CREATE TABLE sync_log (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO tickets VALUES (3, 'written after the dump', 1)")

    # a retried upgrade must keep the pre-upgrade dump, not take a new one
    assert "changed=0" in _ok(_play(tmp_path, "db_dump", database, playbook_env))
    assert dump.read_bytes() == first

    _ok(_play(tmp_path, "db_restore", database, playbook_env))
    with psycopg.connect(database["url"]) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'tickets' ORDER BY ordinal_position"
            )
        ]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        rows = conn.execute("SELECT id, title FROM tickets ORDER BY id").fetchall()
    assert columns == ["id", "title"]
    assert tables == {"tickets"}
    assert rows == [(1, "printer on fire"), (2, "no coffee")]


def test_postgresql_restore_refuses_a_missing_dump(
    tmp_path: Path, database: dict[str, Any], playbook_env: dict[str, str]
) -> None:
    proc = _play(tmp_path, "db_restore", database, playbook_env)
    assert proc.returncode != 0
    assert "is not on this host; nothing was restored or switched" in proc.stdout
