"""prepare: checksum before unpack, the download cache, shared paths, immutability and idempotence."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.unistra.itop.plugins.module_utils import artifacts, unpack
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError

Sample = Callable[[str], dict[str, str]]


def test_prepare_unpacks_links_shared_and_journals(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    result = manager.prepare("r1", [sample("r1")], shared_paths=["data", "log"], cache_dir=str(cache_dir))
    release = root / "releases/r1"
    assert result["changed"] is True
    assert result["path"] == str(release)
    assert (release / "VERSION").read_text() == "r1\n"
    # the archive's data/ seeded shared/data; log/ did not exist anywhere and became an empty shared directory
    assert os.readlink(release / "data") == "../../shared/data"
    assert (root / "shared/data/seed.txt").read_text() == "seeded\n"
    assert os.readlink(release / "log") == "../../shared/log"
    assert (root / "shared/log").is_dir()
    assert oct(release.stat().st_mode & 0o777) == oct(0o755)
    journal = json.loads((root / ".journal.json").read_text())
    assert journal["schema"] == 1
    assert journal["releases"]["r1"]["state"] == "prepared"
    assert journal["history"][-1]["event"] == "prepare"
    assert [r["id"] for r in result["releases"]] == ["r1"]
    assert result["current"] is None


def test_prepare_twice_is_idempotent(manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path) -> None:
    art = sample("r1")
    manager.prepare("r1", [art], shared_paths=["data"], cache_dir=str(cache_dir))
    journal_before = (root / ".journal.json").read_text()
    again = manager.prepare("r1", [art], shared_paths=["data"], cache_dir=str(cache_dir))
    assert again["changed"] is False
    assert again["artifacts"] == []  # nothing fetched at all
    assert (root / ".journal.json").read_text() == journal_before


def test_shared_is_seeded_only_once(manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path) -> None:
    manager.prepare("r1", [sample("r1")], shared_paths=["data"], cache_dir=str(cache_dir))
    (root / "shared/data/seed.txt").write_text("changed by the application\n")
    manager.prepare("r2", [sample("r2")], shared_paths=["data"], cache_dir=str(cache_dir))
    assert (root / "shared/data/seed.txt").read_text() == "changed by the application\n"
    assert os.readlink(root / "releases/r2/data") == "../../shared/data"


def test_nested_shared_path_link_has_the_right_depth(
    manager: ReleaseManager, build: SimpleNamespace, artifacts_dir: Path, root: Path, cache_dir: Path
) -> None:
    path = build.tar(
        artifacts_dir / "n.tar.gz",
        [build.directory("conf"), build.directory("conf/production"), build.file("conf/production/config.php")],
    )
    manager.prepare("r1", [build.artifact(path)], shared_paths=["conf/production"], cache_dir=str(cache_dir))
    link = root / "releases/r1/conf/production"
    assert os.readlink(link) == "../../../shared/conf/production"
    assert (link / "config.php").exists()  # resolves to the seeded shared copy


def test_checksum_mismatch_is_refused_before_unpack(
    manager: ReleaseManager,
    sample: Sample,
    root: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(unpack, "unpack_archive", lambda *a, **k: calls.append("unpack"))
    art = dict(sample("r1"), sha256="0" * 64)
    with pytest.raises(ReleaseError, match=r"checksum mismatch.*expected sha256 0{64}"):
        manager.prepare("r1", [art], cache_dir=str(cache_dir))
    assert calls == []
    assert os.listdir(root / "releases") == []
    assert not (cache_dir / ("0" * 64)).exists()
    assert [p for p in os.listdir(cache_dir) if p.startswith(".tmp-")] == []


def test_same_artifact_is_never_downloaded_twice(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    art = sample("r1")
    first = manager.prepare("r1", [art], cache_dir=str(cache_dir))
    assert first["artifacts"][0]["downloaded"] is True
    Path(art["uri"].removeprefix("file://")).unlink()  # the source is gone: only the cache can serve it now
    second = manager.prepare("r1b", [art], cache_dir=str(cache_dir))
    assert second["changed"] is True
    assert second["artifacts"][0]["downloaded"] is False
    assert (root / "releases/r1b/VERSION").read_text() == "r1\n"


def test_corrupted_cache_entry_is_fetched_again(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    art = sample("r1")
    manager.prepare("r1", [art], cache_dir=str(cache_dir))
    (cache_dir / art["sha256"]).write_bytes(b"bit rot")
    again = manager.prepare("r1b", [art], cache_dir=str(cache_dir))
    assert again["artifacts"][0]["downloaded"] is True
    assert artifacts.sha256_file(str(cache_dir / art["sha256"])) == art["sha256"]


def test_cached_bytes_are_not_served_for_another_uri(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    """A manifest pairing r1's checksum with r2's URI fails everywhere, even where r1 is cached."""
    r1, r2 = sample("r1"), sample("r2")
    manager.prepare("r1", [r1], cache_dir=str(cache_dir))
    with pytest.raises(ReleaseError, match="checksum mismatch"):
        manager.prepare("r2", [{"uri": r2["uri"], "sha256": r1["sha256"]}], cache_dir=str(cache_dir))
    assert sorted(os.listdir(root / "releases")) == ["r1"]


def test_release_is_immutable(manager: ReleaseManager, sample: Sample, cache_dir: Path) -> None:
    manager.prepare("r1", [sample("r1")], cache_dir=str(cache_dir))
    with pytest.raises(ReleaseError, match="immutable"):
        manager.prepare("r1", [sample("r2")], cache_dir=str(cache_dir))


def test_unknown_directory_with_a_release_name_is_not_adopted(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    (root / "releases/r1").mkdir(parents=True)
    with pytest.raises(ReleaseError, match="not in the journal"):
        manager.prepare("r1", [sample("r1")], cache_dir=str(cache_dir))


def test_failed_release_is_replaced_by_a_new_prepare(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    art = sample("r1")
    manager.prepare("r1", [art], cache_dir=str(cache_dir))
    (root / "releases/r1/half-built-venv").mkdir()
    manager.mark_failed("r1", reason="pip failed")
    again = manager.prepare("r1", [art], cache_dir=str(cache_dir))
    assert again["changed"] is True
    assert not (root / "releases/r1/half-built-venv").exists()
    assert {r["id"]: r["state"] for r in again["releases"]} == {"r1": "prepared"}


def test_failed_release_may_be_rebuilt_from_other_artifacts(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    manager.prepare("r1", [sample("r1")], cache_dir=str(cache_dir))
    manager.mark_failed("r1")
    fixed = manager.prepare("r1", [sample("r1-fixed")], cache_dir=str(cache_dir))
    assert fixed["changed"] is True
    assert (root / "releases/r1/VERSION").read_text() == "r1-fixed\n"


def test_dest_and_subdir_compose_a_release(
    manager: ReleaseManager, build: SimpleNamespace, artifacts_dir: Path, root: Path, cache_dir: Path
) -> None:
    core = build.tar(artifacts_dir / "core.tar.gz", [build.directory("web"), build.file("web/index.php", b"core")])
    ext = build.zip(artifacts_dir / "ext.zip", [build.directory("ticket"), build.file("ticket/module.php", b"ext")])
    manager.prepare(
        "r1",
        [build.artifact(core, subdir="web"), build.artifact(ext, dest="extensions/ticket", subdir="ticket")],
        cache_dir=str(cache_dir),
    )
    release = root / "releases/r1"
    assert (release / "index.php").read_bytes() == b"core"
    assert (release / "extensions/ticket/module.php").read_bytes() == b"ext"


def test_missing_file_artifact_names_the_path(manager: ReleaseManager, root: Path, cache_dir: Path) -> None:
    art = {"uri": "file:///nonexistent/app-1.0.tar.gz", "sha256": "a" * 64}
    with pytest.raises(ReleaseError, match=r"/nonexistent/app-1.0.tar.gz does not exist"):
        manager.prepare("r1", [art], cache_dir=str(cache_dir))
    assert os.listdir(root / "releases") == []


@pytest.mark.parametrize(
    ("artifact", "message"),
    [
        ({"uri": "ftp://host/a.tgz", "sha256": "a" * 64}, "unsupported scheme"),
        ({"uri": "file:///a.tgz", "sha256": "xyz"}, "64 hexadecimal"),
        ({"uri": "file:///a.tgz", "sha256": "a" * 64, "dest": "../x"}, "must not contain"),
        ({"uri": "file:///a.tgz", "sha256": "a" * 64, "dest": "/abs"}, "not an absolute path"),
        ({"sha256": "a" * 64}, "no uri"),
    ],
)
def test_bad_artifact_options(
    artifact: dict[str, str], message: str, manager: ReleaseManager, root: Path, cache_dir: Path
) -> None:
    with pytest.raises(ReleaseError, match=message):
        manager.prepare("r1", [artifact], cache_dir=str(cache_dir))
    assert not root.exists()


def test_shared_paths_are_validated(manager: ReleaseManager, sample: Sample, cache_dir: Path) -> None:
    with pytest.raises(ReleaseError, match="must not contain"):
        manager.prepare("r1", [sample("r1")], shared_paths=["../etc"], cache_dir=str(cache_dir))
    with pytest.raises(ReleaseError, match="overlap"):
        manager.prepare("r1", [sample("r1")], shared_paths=["conf", "conf/production"], cache_dir=str(cache_dir))


@pytest.mark.skipif(os.geteuid() != 0, reason="changing ownership needs root")
def test_owner_and_group_apply_to_release_and_new_shared_paths(
    manager: ReleaseManager, sample: Sample, root: Path, cache_dir: Path
) -> None:
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    uid = pwd.getpwnam("nobody").pw_uid
    gid = grp.getgrnam("nogroup").gr_gid
    manager.prepare(
        "r1", [sample("r1")], shared_paths=["data", "log"], owner="nobody", group="nogroup", cache_dir=str(cache_dir)
    )
    release = root / "releases/r1"
    for path in (
        release,
        release / "VERSION",
        release / "app/run.sh",
        root / "shared/data/seed.txt",
        root / "shared/log",
    ):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (uid, gid), path
    assert (release / "data").lstat().st_uid == uid  # the link itself (lchown)


def test_unknown_owner_is_a_clear_error(manager: ReleaseManager, sample: Sample, cache_dir: Path) -> None:
    with pytest.raises(ReleaseError, match="owner 'no-such-user-here' does not exist"):
        manager.prepare("r1", [sample("r1")], owner="no-such-user-here", cache_dir=str(cache_dir))


def test_metadata_is_merged_and_idempotent(manager: ReleaseManager, sample: Sample, cache_dir: Path) -> None:
    art = sample("r1")
    manager.prepare("r1", [art], metadata={"schema_version": "1"}, cache_dir=str(cache_dir))
    same = manager.prepare("r1", [art], metadata={"schema_version": "1"}, cache_dir=str(cache_dir))
    more = manager.prepare("r1", [art], metadata={"datamodel": "x"}, cache_dir=str(cache_dir))
    assert same["changed"] is False
    assert more["changed"] is True
    assert more["releases"][0]["metadata"] == {"schema_version": "1", "datamodel": "x"}


# -- https:// ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def http_server(artifacts_dir: Path) -> Iterator[str]:
    directory = str(artifacts_dir)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=directory, **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_and_404(
    manager: ReleaseManager, sample: Sample, http_server: str, root: Path, cache_dir: Path
) -> None:
    art = sample("r1")
    url = f"{http_server}/sample-r1.tar.gz"
    result = manager.prepare("r1", [{"uri": url, "sha256": art["sha256"]}], cache_dir=str(cache_dir))
    assert result["artifacts"][0]["downloaded"] is True
    assert (root / "releases/r1/VERSION").read_text() == "r1\n"
    with pytest.raises(ReleaseError, match="HTTP 404"):
        manager.prepare("r2", [{"uri": f"{http_server}/nope.tar.gz", "sha256": "b" * 64}], cache_dir=str(cache_dir))


def test_http_through_ansible_open_url(
    manager: ReleaseManager, sample: Sample, http_server: str, root: Path, cache_dir: Path
) -> None:
    """The module hands Ansible's open_url to the engine; the same behaviour and messages come out."""
    from ansible_collections.unistra.itop.plugins.modules import release as module  # noqa: PLC0415 -- needs ansible

    art = sample("r1")
    url = f"{http_server}/sample-r1.tar.gz"
    manager.prepare("r1", [{"uri": url, "sha256": art["sha256"]}], cache_dir=str(cache_dir), http_open=module.http_open)
    assert (root / "releases/r1/VERSION").read_text() == "r1\n"
    with pytest.raises(ReleaseError, match="HTTP 404"):
        manager.prepare(
            "r2",
            [{"uri": f"{http_server}/nope.tar.gz", "sha256": "b" * 64}],
            cache_dir=str(cache_dir),
            http_open=module.http_open,
        )


def test_credentials_in_a_uri_never_reach_messages(manager: ReleaseManager, cache_dir: Path) -> None:
    uri = "https://user:s3cr3t-value@127.0.0.1:9/app.tar.gz"
    with pytest.raises(ReleaseError) as caught:
        manager.prepare("r1", [{"uri": uri, "sha256": "c" * 64}], cache_dir=str(cache_dir))
    assert "s3cr3t-value" not in str(caught.value)
