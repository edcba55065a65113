#!/usr/bin/env python3
"""Build the demo's two releases of the whole stack from the project's fixtures: artifacts and manifests.

    .venv/bin/python scripts/build-releases.py [--out DIR] [--store s3://BUCKET[/PREFIX]] [--s3-endpoint URL]
                                                [--ids ID1,ID2] [--cache-dir DIR]

The artifacts come from the fixtures' own builders (run as they are, never copied here):
  tests/fixtures/itop/build.py           itop-fixture-core-3.2.0.zip (the core under web/: subdir web),
                                         unistra-fixture-ticket-1.0.0.tar.gz, -2.0.0.tar.gz (2.0.0: a schema change)
  tests/fixtures/sample_hub/build.py     sample-hub-1.0.0.tar.gz, -2.0.0.tar.gz (2.0.0: a migration)
  tests/fixtures/sample_worker/build.py  sample-worker-1.0.0.tar.gz, -2.0.0.tar.gz

and the manifests DIR/manifests/<id>.yml (what `itopctl release add` takes):
  release 1 (demo-1)  core 3.2.0 + ticket 1.0.0, hub 1.0.0, worker 1.0.0; work queue tickets
  release 2 (demo-2)  core 3.2.0 + ticket 2.0.0, hub 2.0.0, worker 2.0.0; work queues tickets and slow

Where the manifests' URIs point (the artifact store):
  default        file:// URIs of the artifacts in DIR (default /var/tmp/itopctl-lab-artifacts, which the lab mounts
                 at the same path in its containers)
  --store s3://  the artifacts are uploaded there (boto3; credentials from AWS_ACCESS_KEY_ID,
                 AWS_SECRET_ACCESS_KEY... as boto3 finds them, never printed nor written) and the URIs are s3://;
                 each object carries its sha256 as metadata, and an object that already has the artifact's sha256
                 is not uploaded again. DIR keeps the local copies.

Idempotent and crash safe: one run at a time per DIR (a lock file), every artifact and manifest is written to a
temporary file and renamed into place, and only when its bytes change; the manifests only once every artifact is
in the store. The builders are deterministic, so a rerun with the same inputs leaves every file byte-identical (and
uploads nothing). The sample applications' dependency wheels are downloaded once into ~/.cache/unistra-itop/wheels
(--cache-dir), later builds are offline.

Prints a table (artifact, size, sha256, what was done) and the `itopctl release add` commands. Exit 0 when done,
1 when a builder, the store or a manifest check failed (the message says which), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import yaml

REPO = Path(__file__).resolve().parent.parent
# the repository's itopctl judges the manifests it will be given; the collection's helpers write and hash files
sys.path[:0] = [str(REPO / "orchestrator"), str(REPO / "collections")]

from ansible_collections.unistra.itop.plugins.module_utils.artifacts import sha256_file  # noqa: E402
from ansible_collections.unistra.itop.plugins.module_utils.fsutil import fsync_dir  # noqa: E402
from itopctl.errors import ItopctlError  # noqa: E402
from itopctl.manifest import check_release_id, parse_manifest  # noqa: E402
from itopctl.yamlload import Checker, load_yaml_text  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
# the lab bind-mounts this fixed path, at the same path, into its containers (a contract with `itopctl lab up`)
DEFAULT_OUT = Path("/var/tmp/itopctl-lab-artifacts")  # noqa: S108 -- root-owned, made here, not a shared temp file
DEFAULT_IDS = ("demo-1", "demo-2")
CORE_VERSION = "3.2.0"
LOCK_NAME = ".build-releases.lock"
STAGING_PREFIX = ".build-"
SHA256_METADATA = "sha256"  # S3 user metadata: x-amz-meta-sha256

VHOST = "/unistra"
TICKETS = {"name": "tickets", "vhost": VHOST, "retry_delay_ms": 2000, "max_retries": 2}
SLOW = {"name": "slow", "vhost": VHOST, "retry_delay_ms": 2000, "max_retries": 2}


@dataclass(frozen=True)
class Release:
    """One demo release: the versions of its parts and its work queues."""

    ticket: str
    hub: str
    worker: str
    work_queues: tuple[dict[str, Any], ...]
    what: str  # what it changes, for the description (empty: nothing to say)


RELEASES = (
    Release("1.0.0", "1.0.0", "1.0.0", (TICKETS,), ""),
    # a queue a release keeps is declared again, with the same settings (RabbitMQ refuses to redeclare a queue with
    # other arguments); one it drops would be declared with state: absent
    Release(
        "2.0.0",
        "2.0.0",
        "2.0.0",
        (TICKETS, SLOW),
        "ticket 2.0.0 changes iTop's schema, hub 2.0.0 migrates; slow is new",
    ),
)


class BuildFailed(Exception):
    """What main() turns into one message and exit code 1."""


@dataclass(frozen=True)
class Built:
    name: str
    size: int
    sha256: str
    uri: str
    done: str  # written, replaced, unchanged (in DIR); uploaded, replaced, present (in S3)


# -- files -------------------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    return sha256_file(str(path))


def publish(staged: Path, dest: Path) -> str:
    """Put ``staged`` at ``dest`` by rename (same file system), unless ``dest`` holds the same bytes; says which:
    ``written`` (new), ``replaced`` (other bytes were there) or ``unchanged``."""
    before = sha256_of(dest) if dest.is_file() else None
    if before == sha256_of(staged):
        return "unchanged"
    os.chmod(staged, 0o644)  # the lab's containers read it through a read-only bind mount
    with staged.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staged, dest)
    fsync_dir(str(dest.parent))
    return "written" if before is None else "replaced"


def write_atomic(dest: Path, data: bytes) -> str:
    """Write ``data`` at ``dest`` through a temporary file and a rename, unless it is already there (see publish)."""
    if dest.is_file() and dest.read_bytes() == data:
        return "unchanged"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return publish(Path(tmp), dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[Path]:
    """One run at a time in ``out``; yields a fresh staging directory inside it (so that publishing is a rename),
    after removing those a killed run left behind."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_NAME).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildFailed(f"another build-releases.py is running in {out} (it holds {out / LOCK_NAME})") from None
        for stale in out.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


# -- the fixtures' builders --------------------------------------------------------------------------------------
def run_builder(script: Path, outdir: Path, *extra: str) -> None:
    command = [sys.executable, str(script), str(outdir), *extra]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shown = (result.stderr or result.stdout).strip()
        raise BuildFailed(f"{script.relative_to(REPO)} failed (exit {result.returncode}):\n{shown}")


def build_fixtures(staging: Path, cache_dir: Path | None) -> dict[str, Path]:
    """Every artifact of the two releases, built in ``staging``: {file name: path}."""
    cache = ["--cache-dir", str(cache_dir)] if cache_dir else []
    run_builder(FIXTURES / "itop" / "build.py", staging / "itop", "--core-version", CORE_VERSION)
    run_builder(FIXTURES / "sample_hub" / "build.py", staging / "hub", *cache)
    run_builder(FIXTURES / "sample_worker" / "build.py", staging / "worker", *cache)
    wanted = {f"itop-fixture-core-{CORE_VERSION}.zip": staging / "itop"}
    for release in RELEASES:
        wanted[f"unistra-fixture-ticket-{release.ticket}.tar.gz"] = staging / "itop"
        wanted[f"sample-hub-{release.hub}.tar.gz"] = staging / "hub"
        wanted[f"sample-worker-{release.worker}.tar.gz"] = staging / "worker"
    found = {name: directory / name for name, directory in wanted.items()}
    missing = [name for name, path in found.items() if not path.is_file()]
    if missing:
        raise BuildFailed(f"the fixtures' builders did not write {', '.join(missing)}")
    return found


# -- stores ------------------------------------------------------------------------------------------------------
def store_locally(staged: dict[str, Path], out: Path) -> dict[str, Built]:
    built = {}
    for name, path in sorted(staged.items()):
        sha, size = sha256_of(path), path.stat().st_size
        done = publish(path, out / name)
        uri = "file://" + quote(str((out / name).resolve()))
        built[name] = Built(name, size, sha, uri, done)
    return built


def s3_client(endpoint: str | None) -> Any:
    try:
        import boto3  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415 -- only --store s3:// needs it
    except ImportError:
        raise BuildFailed("--store s3:// needs boto3 (it is in the project's venv: run .venv/bin/python)") from None
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None)


def s3_error(exc: Exception, what: str, endpoint: str | None) -> BuildFailed:
    """A message without any credential: botocore's own messages name no secret."""
    where = endpoint or "the default AWS endpoint"
    return BuildFailed(f"S3 at {where}: {what} failed: {type(exc).__name__}: {exc}")


def upload_to_s3(built: dict[str, Built], out: Path, store: str, endpoint: str | None) -> dict[str, Built]:
    parsed = urlparse(store)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    client = s3_client(endpoint)
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415

    result = {}
    for name, item in built.items():
        key = f"{prefix}/{name}" if prefix else name
        uri = f"s3://{bucket}/{key}"
        try:
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                done = "present" if head.get("Metadata", {}).get(SHA256_METADATA) == item.sha256 else "replaced"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
                done = "uploaded"
            if done != "present":
                # one PUT (or a multipart upload completed at once): the object appears whole or not at all
                client.upload_file(str(out / name), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: item.sha256}})
        except (BotoCoreError, ClientError) as exc:
            raise s3_error(exc, f"upload of {name} to {uri}", endpoint) from None
        result[name] = Built(name, item.size, item.sha256, uri, done)
    return result


# -- manifests ---------------------------------------------------------------------------------------------------
def manifest_of(release_id: str, number: int, release: Release, built: dict[str, Built]) -> dict[str, Any]:
    def artifact(name: str) -> dict[str, str]:
        return {"uri": built[name].uri, "sha256": built[name].sha256}

    ticket = f"unistra-fixture-ticket-{release.ticket}.tar.gz"
    return {
        "id": release_id,
        "description": (
            f"demo release {number} of the whole stack: iTop fixture core {CORE_VERSION} + unistra-fixture-ticket "
            f"{release.ticket}, sample hub {release.hub}, sample worker {release.worker}; work queues "
            f"{', '.join(q['name'] for q in release.work_queues)}" + (f" ({release.what})" if release.what else "")
        ),
        "components": {
            "itop": {
                **artifact(f"itop-fixture-core-{CORE_VERSION}.zip"),
                "subdir": "web",
                "extensions": [{"name": "unistra-fixture-ticket", **artifact(ticket)}],
            },
            "hub": artifact(f"sample-hub-{release.hub}.tar.gz"),
            "worker": artifact(f"sample-worker-{release.worker}.tar.gz"),
        },
        "messaging": {"work_queues": [dict(queue) for queue in release.work_queues]},
    }


def manifest_text(data: dict[str, Any], source: str) -> str:
    text = "# built by scripts/build-releases.py from the project's fixtures: do not edit, build again\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)
    checker = Checker(load_yaml_text(text, source))
    if parse_manifest(checker.doc.data, checker) is None:  # never write what `itopctl release add` would refuse
        raise BuildFailed("the manifest itopctl would refuse:\n" + "\n".join(checker.errors))
    return text


# -- main --------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build-releases.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"where artifacts and manifests/ go (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="s3://BUCKET[/PREFIX]",
        help="upload the artifacts to this S3 bucket and prefix, and write s3:// URIs (default: file:// URIs of DIR)",
    )
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="the S3 endpoint, e.g. SeaweedFS's http://127.0.0.1:8333 (default: boto3's, AWS_ENDPOINT_URL or AWS)",
    )
    parser.add_argument(
        "--ids",
        default=",".join(DEFAULT_IDS),
        metavar="ID1,ID2",
        help=f"the two releases' ids (default {','.join(DEFAULT_IDS)}); an artifact that changed needs new ids, "
        "as a release is immutable once added",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the dependency wheel cache (default ~/.cache/unistra-itop/wheels)",
    )
    args = parser.parse_args(argv)
    ids = [part.strip() for part in args.ids.split(",")]
    if len(ids) != len(RELEASES) or len(set(ids)) != len(ids):
        parser.error(f"--ids takes {len(RELEASES)} distinct release ids separated by a comma, got {args.ids!r}")
    try:
        args.ids = [check_release_id(release_id) for release_id in ids]
    except ItopctlError as exc:
        parser.error(f"--ids: {exc}")
    if args.store is not None:
        parsed = urlparse(args.store)
        if parsed.scheme != "s3" or not parsed.netloc:
            parser.error(f"--store takes s3://BUCKET[/PREFIX], got {args.store!r} (leave it out for file://)")
    elif args.s3_endpoint:
        parser.error("--s3-endpoint goes with --store s3://...")
    args.out = args.out.expanduser().absolute()
    return args


def build(args: argparse.Namespace) -> tuple[dict[str, Built], list[Path]]:
    with exclusive(args.out) as staging:
        built = store_locally(build_fixtures(staging, args.cache_dir), args.out)
    if args.store:
        built = upload_to_s3(built, args.out, args.store, args.s3_endpoint)
    manifests = []
    for number, (release_id, release) in enumerate(zip(args.ids, RELEASES, strict=True), start=1):
        path = args.out / "manifests" / f"{release_id}.yml"
        write_atomic(path, manifest_text(manifest_of(release_id, number, release, built), str(path)).encode())
        manifests.append(path)
    return built, manifests


def report(built: dict[str, Built], manifests: list[Path]) -> str:
    rows = [("ARTIFACT", "SIZE", "SHA256", "DONE")]
    rows += [(b.name, str(b.size), b.sha256, b.done) for b in built.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if any(b.done == "replaced" for b in built.values()):
        lines += [
            "",
            "WARNING: artifacts were replaced by other bytes: a release added before with the old ones can no longer "
            "be prepared from this store (its checksum does not match); give changed fixtures new ids (--ids)",
        ]
    lines += ["", "add the releases to itopctl's state store:"]
    lines += [f"  .venv/bin/itopctl release add {path}" for path in manifests]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        built, manifests = build(args)
    except BuildFailed as exc:
        print(f"build-releases.py: {exc}", file=sys.stderr)
        return 1
    print(report(built, manifests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
