"""scripts/build-releases.py: the demo's two whole-stack releases, as itopctl loads them, with artifacts whose sha256
match, byte-identical from one run to the next; on a real S3 (SeaweedFS) fetched back through the collection's own
fetcher, and a second run uploads nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.artifacts import Artifact, ArtifactCache, S3Settings
from itopctl.manifest import Manifest, load_manifest
from seaweedfs_support import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, needs_weed, seaweedfs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-releases.py"
ARTIFACTS = {
    "itop-fixture-core-3.2.0.zip",
    "unistra-fixture-ticket-1.0.0.tar.gz",
    "unistra-fixture-ticket-2.0.0.tar.gz",
    "sample-hub-1.0.0.tar.gz",
    "sample-hub-2.0.0.tar.gz",
    "sample-worker-1.0.0.tar.gz",
    "sample-worker-2.0.0.tar.gz",
}


def run_script(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=600)


def build(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run_script(out, *args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def done_column(output: str) -> dict[str, str]:
    """{artifact: what the run did with it} from the script's table."""
    rows = [line.split() for line in output.splitlines() if line.split()[:1] and line.split()[0] in ARTIFACTS]
    return {row[0]: row[3] for row in rows}


def artifacts_of(manifest: Manifest) -> list[dict[str, Any]]:
    found = []
    for comp in manifest.data["components"].values():
        found += [comp, *comp.get("extensions", [])]
    return found


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_demo_releases(out: Path) -> tuple[Manifest, Manifest]:
    one, two = (load_manifest(out / "manifests" / f"demo-{n}.yml") for n in (1, 2))
    assert (one.id, two.id) == ("demo-1", "demo-2")
    assert one.components == two.components == ["hub", "itop", "worker"]
    assert [q["name"] for q in one.work_queues] == ["tickets"]
    assert [q["name"] for q in two.work_queues] == ["tickets", "slow"]
    assert (
        one.work_queues[0]
        == two.work_queues[0]
        == {
            "name": "tickets",
            "vhost": "/unistra",
            "retry_delay_ms": 2000,
            "max_retries": 2,
        }
    )
    for manifest, version in ((one, "1.0.0"), (two, "2.0.0")):
        itop = manifest.data["components"]["itop"]
        assert itop["uri"].endswith("/itop-fixture-core-3.2.0.zip") and itop["subdir"] == "web"
        assert [(e["name"], e["uri"].rsplit("/", 1)[1]) for e in itop["extensions"]] == [
            ("unistra-fixture-ticket", f"unistra-fixture-ticket-{version}.tar.gz")
        ]
        assert manifest.data["components"]["hub"]["uri"].endswith(f"/sample-hub-{version}.tar.gz")
        assert manifest.data["components"]["worker"]["uri"].endswith(f"/sample-worker-{version}.tar.gz")
    return one, two


def test_file_store_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    first = build(out)
    assert set(done_column(first.stdout).values()) == {"written"}
    assert f".venv/bin/itopctl release add {out}/manifests/demo-1.yml" in first.stdout
    for manifest in check_demo_releases(out):
        for artifact in artifacts_of(manifest):
            parsed = urlparse(artifact["uri"])
            assert parsed.scheme == "file" and Path(unquote(parsed.path)).parent == out
            assert sha256(Path(unquote(parsed.path)).read_bytes()) == artifact["sha256"]
    files = tree(out)
    assert set(files) == {*ARTIFACTS, "manifests/demo-1.yml", "manifests/demo-2.yml", ".build-releases.lock"}
    assert all(os.stat(out / name).st_mode & 0o777 == 0o644 for name in ARTIFACTS)  # read through the lab's mount
    mtimes = {name: (out / name).stat().st_mtime_ns for name in files}

    second = build(out)
    assert set(done_column(second.stdout).values()) == {"unchanged"}
    assert tree(out) == files
    assert {name: (out / name).stat().st_mtime_ns for name in files} == mtimes  # not even rewritten

    # elsewhere, the same artifacts to the byte (only the URIs in the manifests name the other directory)
    elsewhere = tmp_path / "elsewhere"
    build(elsewhere)
    assert {name: sha256(data) for name, data in tree(elsewhere).items() if name in ARTIFACTS} == {
        name: sha256(files[name]) for name in ARTIFACTS
    }


def test_a_rerun_repairs_what_a_killed_run_left(tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    build(out, "--ids", "r1,r2")
    good = tree(out)
    (out / "sample-hub-2.0.0.tar.gz").write_bytes(good["sample-hub-2.0.0.tar.gz"][:1000])  # torn by hand
    (out / ".build-12345").mkdir()  # a killed run's staging directory
    (out / ".build-12345" / "partial.tar.gz").write_bytes(b"x")
    (out / "manifests" / "r2.yml").unlink()
    again = build(out, "--ids", "r1,r2")
    assert done_column(again.stdout)["sample-hub-2.0.0.tar.gz"] == "replaced"
    assert "WARNING: artifacts were replaced by other bytes" in again.stdout
    assert tree(out) == good


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ids", "demo-1"], "--ids takes 2 distinct release ids"),
        (["--ids", "a,a"], "--ids takes 2 distinct release ids"),
        (["--ids", "current,r2"], "reserved"),
        (["--store", "file:///srv"], "--store takes s3://BUCKET[/PREFIX]"),
        (["--s3-endpoint", "http://127.0.0.1:1"], "--s3-endpoint goes with --store"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_script(tmp_path / "out", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as served:
        yield served


@needs_weed
def test_s3_store_fetched_back_by_the_collection_and_uploaded_once(s3: SimpleNamespace, tmp_path: Path) -> None:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
    out = tmp_path / "artifacts"
    store = ["--store", f"s3://{BUCKET}/demo", "--s3-endpoint", s3.endpoint]
    first = build(out, *store, env=env)
    assert set(done_column(first.stdout).values()) == {"uploaded"}
    one, two = check_demo_releases(out)
    objects = {o["Key"]: o for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix="demo/")["Contents"]}
    assert set(objects) == {f"demo/{name}" for name in ARTIFACTS}

    settings = S3Settings(endpoint_url=s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)
    cache = ArtifactCache(str(tmp_path / "cache"), s3=settings)
    for manifest in (one, two):
        for artifact in artifacts_of(manifest):
            assert artifact["uri"].startswith(f"s3://{BUCKET}/demo/")
            path, downloaded = cache.get(Artifact.from_dict({"uri": artifact["uri"], "sha256": artifact["sha256"]}))
            assert sha256(Path(path).read_bytes()) == artifact["sha256"]
            assert downloaded or manifest is two  # release 2 shares the core with release 1
    manifests = tree(out / "manifests")

    second = build(out, *store, env=env)
    assert set(done_column(second.stdout).values()) == {"present"}
    again = {o["Key"]: o for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix="demo/")["Contents"]}
    assert {k: (o["ETag"], o["LastModified"]) for k, o in again.items()} == {
        k: (o["ETag"], o["LastModified"]) for k, o in objects.items()
    }
    assert tree(out / "manifests") == manifests
    for text in (first.stdout, first.stderr, second.stdout, *(m.decode() for m in manifests.values())):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


@needs_weed
def test_s3_failure_is_one_clear_line(s3: SimpleNamespace, tmp_path: Path) -> None:
    env = dict(
        os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY="wrong-secret", AWS_DEFAULT_REGION=REGION
    )
    result = run_script(tmp_path / "out", "--store", f"s3://{BUCKET}/x", "--s3-endpoint", s3.endpoint, env=env)
    assert result.returncode == 1
    assert f"build-releases.py: S3 at {s3.endpoint}: upload of " in result.stderr
    assert "wrong-secret" not in result.stderr
    assert not (tmp_path / "out" / "manifests").exists()  # no manifest points at what is not in the store
