"""s3:// artifacts against a real SeaweedFS on loopback: download, cache, and a clear message for each failure."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.artifacts import S3Settings
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import MissingLibraryError, ReleaseError
from seaweedfs_support import ACCESS_KEY, BUCKET, SECRET_KEY, free_port, needs_weed, seaweedfs

pytestmark = needs_weed


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as served:
        yield served


@pytest.fixture
def uploaded(s3: SimpleNamespace, build: SimpleNamespace, artifacts_dir: Path) -> dict[str, str]:
    path = build.tar(artifacts_dir / "app.tar.gz", build.sample_members("s3"))
    key = f"app/{build.sha256(path)}.tar.gz"
    s3.client.upload_file(str(path), BUCKET, key)
    return {"uri": f"s3://{BUCKET}/{key}", "sha256": build.sha256(path)}


def _settings(s3: SimpleNamespace, **changes: str) -> S3Settings:
    values = {"endpoint_url": s3.endpoint, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": "us-east-1"}
    values.update(changes)
    return S3Settings(**values)


def test_s3_download_then_cache_when_s3_is_unreachable(
    s3: SimpleNamespace, uploaded: dict[str, str], manager: ReleaseManager, root: Path, cache_dir: Path
) -> None:
    first = manager.prepare("r1", [uploaded], s3=_settings(s3), cache_dir=str(cache_dir))
    assert first["artifacts"][0]["downloaded"] is True
    assert (root / "releases/r1/VERSION").read_text() == "s3\n"
    dead = _settings(s3, endpoint_url=f"http://127.0.0.1:{free_port()}")
    second = manager.prepare("r2", [uploaded], s3=dead, cache_dir=str(cache_dir))
    assert second["artifacts"][0]["downloaded"] is False
    assert (root / "releases/r2/VERSION").read_text() == "s3\n"


@pytest.mark.parametrize(
    ("changes", "uri_change", "message"),
    [
        ({"secret_key": "wrong-secret-value"}, None, "secret key is wrong"),
        ({"access_key": "nobody"}, None, "does not know this access key"),
        ({}, ("app/", "app/missing-"), "S3 object not found"),
        ({}, (f"s3://{BUCKET}/", "s3://no-such-bucket/"), "bucket 'no-such-bucket' does not exist"),
        ({"endpoint_url": "unreachable"}, None, "cannot reach S3 endpoint"),
    ],
    ids=["wrong-secret", "unknown-access-key", "missing-object", "missing-bucket", "unreachable-endpoint"],
)
def test_s3_failures_are_clear_and_leave_nothing(  # noqa: PLR0917 -- pytest injects fixtures by position
    changes: dict[str, str],
    uri_change: tuple[str, str] | None,
    message: str,
    s3: SimpleNamespace,
    uploaded: dict[str, str],
    manager: ReleaseManager,
    root: Path,
    cache_dir: Path,
) -> None:
    if changes.get("endpoint_url") == "unreachable":
        changes = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
    art = dict(uploaded)
    if uri_change:
        art["uri"] = art["uri"].replace(*uri_change)
    with pytest.raises(ReleaseError, match=message) as caught:
        manager.prepare("r1", [art], s3=_settings(s3, **changes), cache_dir=str(cache_dir))
    assert "wrong-secret-value" not in str(caught.value)
    assert SECRET_KEY not in str(caught.value)
    assert os.listdir(root / "releases") == []
    assert not (cache_dir / art["sha256"]).exists()


def test_s3_without_credentials(  # noqa: PLR0917 -- pytest injects fixtures by position
    s3: SimpleNamespace,
    uploaded: dict[str, str],
    manager: ReleaseManager,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = S3Settings(endpoint_url=s3.endpoint, region="us-east-1")
    with pytest.raises(ReleaseError, match="no usable S3 credentials"):
        manager.prepare("r1", [uploaded], s3=settings, cache_dir=str(cache_dir))


def test_missing_boto3_is_reported_as_such(
    manager: ReleaseManager, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(MissingLibraryError) as caught:
        manager.prepare("r1", [{"uri": "s3://bucket/key.tgz", "sha256": "d" * 64}], cache_dir=str(cache_dir))
    assert caught.value.library == "boto3"
