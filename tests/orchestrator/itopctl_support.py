"""Helpers of the itopctl tests: a small local project driven through the CLI, and state seeding.

The project has a pipeline (dev -> test -> prod), an inventory per stage whose hosts use the local connection
(each host is a directory under ``lab_root``), and ``playbooks/local_release.yml`` for every phase.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from itopctl.cli import main
from itopctl.store import Store, iso, utcnow

HERE = Path(__file__).parent
SHA = "ab" * 32


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Project:
    root: Path
    state_url: str
    env: dict[str, str]

    @property
    def lab_root(self) -> Path:
        return self.root / "hosts"

    def run(self, *args: str, user: str = "alice") -> Result:
        """``itopctl ARGS`` in-process, with this project's settings in the environment."""
        out, err = io.StringIO(), io.StringIO()
        env = {**self.env, "ITOPCTL_USER": user}
        old = dict(os.environ)
        os.environ.update(env)
        try:
            code = main(list(args), out=out, err=err)
        finally:
            os.environ.clear()
            os.environ.update(old)
        return Result(code, out.getvalue(), err.getvalue())

    def store(self) -> Store:
        return Store.open(self.state_url)

    def manifest(self, release_id: str, **extra: str) -> Path:
        path = self.root / f"{release_id}.yml"
        body = f"id: {release_id}\ncomponents:\n  sample:\n    uri: file:///srv/artifacts/sample-{release_id}.tar.gz\n"
        body += f'    sha256: "{SHA}"\n'
        for key, value in extra.items():
            body += f"{key}: {value}\n"
        path.write_text(body)
        return path

    def add(self, release_id: str) -> None:
        result = self.run("release", "add", str(self.manifest(release_id)))
        assert result.code == 0, result.err

    def current(self, host: str) -> str | None:
        link = self.lab_root / host / "current"
        return os.readlink(link).split("/")[-1] if link.is_symlink() else None

    def on_host(self, host: str, *releases: str, current: str | None = None) -> None:
        """Lay out a host directory as if ``releases`` were prepared there and ``current`` active."""
        for release in releases:
            (self.lab_root / host / "releases" / release).mkdir(parents=True, exist_ok=True)
            (self.lab_root / host / "releases" / release / "VERSION").write_text(f"{release}\n")
        if current is not None:
            (self.lab_root / host / "current").symlink_to(f"releases/{current}")

    def edit_pipeline(self, old: str, new: str) -> None:
        """Replace ``old`` (which must be there) by ``new`` in the project's pipeline file."""
        pipeline = self.root / "pipeline.yml"
        text = pipeline.read_text()
        assert old in text, old
        pipeline.write_text(text.replace(old, new))

    def marker(self, name: str, content: str = "") -> None:
        self.lab_root.mkdir(exist_ok=True)
        (self.lab_root / name).write_text(content)


PIPELINE = """\
version: 1
defaults:
  inventory: inventories/{stage}.ini
  playbooks:
    prepare: playbooks/local_release.yml
    switch: playbooks/local_release.yml
    verify: playbooks/local_release.yml
    rollback: playbooks/local_release.yml
  extra_vars:
    lab_root: LAB_ROOT
stages:
  - name: dev
  - name: test
    batch_size: 1
    gates:
      soak: 1h
  - name: prod
    batch_size: 2
    auto_rollback: true
    gates:
      approvals: {count: 2}
"""


def make_project(root: Path, state_url: str, hosts: dict[str, int] | None = None) -> Project:
    hosts = hosts or {"dev": 1, "test": 2, "prod": 3}
    (root / "playbooks" / "tasks").mkdir(parents=True)
    for name in ("local_release.yml", "tasks/local_lock.yml"):
        (root / "playbooks" / name).write_text((HERE / "playbooks" / name).read_text())
    (root / "inventories").mkdir()
    for stage, count in hosts.items():
        lines = [
            f"{stage}-{n} ansible_connection=local ansible_python_interpreter={sys.executable}"
            for n in range(1, count + 1)
        ]
        (root / "inventories" / f"{stage}.ini").write_text("\n".join(lines) + "\n")
    (root / "pipeline.yml").write_text(PIPELINE.replace("LAB_ROOT", str(root / "hosts")))
    env = {
        "ITOPCTL_STATE_URL": state_url,
        "ITOPCTL_PIPELINE": str(root / "pipeline.yml"),
        "ITOPCTL_RUNS_DIR": str(root / "runs"),
        "ITOPCTL_KEEP_RUNS": "100",
    }
    return Project(root=root, state_url=state_url, env=env)


def seed_deployed(project: Project, stage: str, release: str, *, hours_ago: float = 48.0) -> None:
    """Record (without running anything) that ``release`` was promoted to ``stage`` and verified, long ago."""
    then = utcnow() - timedelta(hours=hours_ago)
    with project.store() as store:
        if store.release(release) is None:
            project.add(release)
        state = store.stage_state(stage)
        dep = store.start_deployment(
            kind="promote",
            release_id=release,
            stage=stage,
            from_release=state.current_release if state else None,
            who="seed",
            now=then,
        )
        store.finish_deployment(
            dep,
            result="succeeded",
            now=then,
            stage_state=(release, state.current_release if state else None, "healthy"),
            verified=True,
            phase="verify",
        )
        store.update_deployment(dep, finished_at=iso(then))


def backdate(project: Project | str, stage: str, hours: float) -> None:
    """Pretend the last deployment of ``stage`` finished ``hours`` ago (to satisfy a soak gate).

    ``project`` is a :class:`Project` or a state store URL."""
    url = project if isinstance(project, str) else project.state_url
    with Store.open(url) as store:
        last = store.deployments(stage=stage, limit=1)[0]
        store.update_deployment(last.id, finished_at=iso(utcnow() - timedelta(hours=hours)))
