# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic, journaled releases for one application root.

Pure Python (standard library; boto3 only when an ``s3://`` artifact is fetched) so that pytest can drive it without
Ansible. ``plugins/modules/release.py`` only wires AnsibleModule to :class:`ReleaseManager`.

Layout under ``root``::

    releases/<id>/          an unpacked release, immutable once prepared
    current -> releases/<id> relative symlink, switched with rename(2)
    shared/                 data kept across releases
    .journal.json           the journal (JSON, schema 1), replaced atomically
    .deploy.lock            the deployment lock (JSON), when held
    .journal.lock           flock(2) guard for every read-modify-write of the two files above
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import fcntl
import grp
import hashlib
import json
import os
import posixpath
import pwd
import re
import secrets
import shutil
import socket
import ssl
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import unquote, urlparse

SCHEMA_VERSION = 1
JOURNAL_NAME = ".journal.json"
JOURNAL_LOCK_NAME = ".journal.lock"
DEPLOY_LOCK_NAME = ".deploy.lock"
RELEASES_DIR = "releases"
SHARED_DIR = "shared"
CURRENT_LINK = "current"
TMP_PREFIX = ".tmp-"
DEFAULT_CACHE_DIR = "/var/cache/unistra-itop/artifacts"
DEFAULT_KEEP = 5
DEFAULT_LEASE = 1800
MAX_HISTORY = 1000
CHUNK = 1024 * 1024
HTTP_TIMEOUT = 60

OPERATIONS = ("prepare", "activate", "rollback", "prune", "info", "lock", "unlock", "mark_failed")
STATE_PREPARED = "prepared"
STATE_ACTIVE = "active"
STATE_INACTIVE = "inactive"
STATE_BAD = "bad"
STATE_FAILED = "failed"

RELEASE_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
RESERVED_IDS = frozenset({"current", "shared", "releases"})
SHA256_RE = re.compile(r"\A[0-9a-fA-F]{64}\Z")
URI_SCHEMES = ("file", "https", "http", "s3")
# Root-level temporary names (all created while holding the journal flock); prune removes leftovers.
ROOT_TMP_PREFIXES = (CURRENT_LINK + ".tmp-", JOURNAL_NAME + ".tmp-", DEPLOY_LOCK_NAME + ".tmp-")


class ReleaseError(Exception):
    """The one error type: its message tells the operator what went wrong and what to do."""


class MissingLibraryError(ReleaseError):
    """A Python library needed for this request (boto3 for s3://) is not installed on the target."""

    def __init__(self, library: str, purpose: str) -> None:
        super().__init__(f"the Python library {library} is required for {purpose}; install it on the target host")
        self.library = library


# --------------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------------


def validate_release_id(value: Any) -> str:
    """Return ``value`` if it is a safe release id, else raise :class:`ReleaseError`."""
    if not isinstance(value, str) or not value:
        raise ReleaseError("a release id is required (option release)")
    if not RELEASE_ID_RE.match(value):
        raise ReleaseError(
            f"invalid release id {value!r}: use 1 to 64 characters among letters, digits, '.', '_' and '-', "
            "starting with a letter or a digit (e.g. 2026.11.28-1)"
        )
    if value in RESERVED_IDS:
        raise ReleaseError(f"invalid release id {value!r}: 'current', 'shared' and 'releases' are reserved names")
    return value


def safe_relpath(value: Any, what: str, *, allow_empty: bool = True) -> str:
    """Normalise a relative path given by the caller; refuse absolute paths and ``..``."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ReleaseError(f"{what} must be a string, got {type(value).__name__}")
    if "\0" in value:
        raise ReleaseError(f"{what} {value!r} contains a NUL character")
    if value.startswith("/"):
        raise ReleaseError(f"{what} {value!r} must be a path relative to the release, not an absolute path")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"{what} {value!r} must not contain '..'")
    norm = "/".join(parts)
    if not norm and not allow_empty:
        raise ReleaseError(f"{what} must not be empty")
    return norm


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def redact_uri(uri: str) -> str:
    """Drop any user:password@ from a URI before it goes into a message."""
    parsed = urlparse(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return parsed._replace(netloc=f"***@{host}").geturl()


def _now_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_owner_name() -> str:
    """Who is deploying: $SUDO_USER, else $USER, else the uid's name, else the uid."""
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        value = os.environ.get(var)
        if value:
            return value
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve_owner(owner: str | None, group: str | None) -> tuple[int, int]:
    """Map owner/group names (or numeric ids) to ids; -1 means unchanged."""
    uid = gid = -1
    if owner:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ReleaseError(f"owner {owner!r} does not exist on this host: create the user first") from None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ReleaseError(f"group {group!r} does not exist on this host: create the group first") from None
    return uid, gid


@dataclass(frozen=True)
class Artifact:
    """One archive of a release: where it comes from, its checksum, and where it goes in the release."""

    uri: str
    sha256: str
    dest: str = ""
    subdir: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        if not isinstance(data, Mapping):
            raise ReleaseError("each artifact must be a dict with uri and sha256")
        uri = data.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ReleaseError("an artifact has no uri")
        scheme = urlparse(uri).scheme
        if scheme not in URI_SCHEMES:
            raise ReleaseError(
                f"artifact {redact_uri(uri)}: unsupported scheme {scheme!r}; use file://, https:// or s3://"
            )
        sha = data.get("sha256")
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ReleaseError(f"artifact {redact_uri(uri)}: sha256 must be 64 hexadecimal characters")
        return cls(
            uri=uri,
            sha256=sha.lower(),
            dest=safe_relpath(data.get("dest"), f"artifact {redact_uri(uri)}: dest"),
            subdir=safe_relpath(data.get("subdir"), f"artifact {redact_uri(uri)}: subdir"),
        )

    def fingerprint(self) -> dict[str, str]:
        """What makes two preparations of a release identical (the URI may move, the bytes may not)."""
        return {"sha256": self.sha256, "dest": self.dest, "subdir": self.subdir}

    def as_dict(self) -> dict[str, str]:
        return {"uri": redact_uri(self.uri), "sha256": self.sha256, "dest": self.dest, "subdir": self.subdir}


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3; empty values fall back to boto3's own lookup (AWS_* environment, config files)."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str | None = None


# --------------------------------------------------------------------------------------------------------------------
# Download cache
# --------------------------------------------------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(src: IO[bytes], dst: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def boto3_available() -> bool:
    try:
        import boto3  # type: ignore[import-untyped,unused-ignore]  # noqa: F401, PLC0415 -- lazy: only s3:// needs it
    except ImportError:
        return False
    return True


def check_source(artifact: Artifact) -> None:
    """Cheap, read-only check used in check mode: a file:// artifact must exist."""
    parsed = urlparse(artifact.uri)
    if parsed.scheme == "file":
        path = _file_uri_path(artifact.uri)
        if not os.path.isfile(path):
            raise ReleaseError(f"artifact not found: {path} does not exist on this host (from {artifact.uri})")
    elif parsed.scheme == "s3" and not boto3_available():
        raise MissingLibraryError("boto3", f"s3:// artifacts ({artifact.uri})")


def _file_uri_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ReleaseError(f"file URI {uri!r} names host {parsed.netloc!r}: use file:///absolute/path")
    path = unquote(parsed.path)
    if not path.startswith("/"):
        raise ReleaseError(f"file URI {uri!r} must hold an absolute path (file:///srv/artifacts/app.tar.gz)")
    return path


# (url, validate_certs, timeout) -> a readable response. The module passes Ansible's open_url (proxies, CA bundles
# handled the Ansible way); this file stays free of Ansible imports so that pytest drives it directly.
HttpOpener = Callable[[str, bool, int], Any]


def urllib_http_open(url: str, validate_certs: bool, timeout: int) -> Any:
    """Default opener: the standard library, honouring the *_proxy environment like Ansible does."""
    context = ssl.create_default_context()
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"User-Agent": "unistra.itop.release"})  # noqa: S310 -- http(s) only
    return opener.open(request, timeout=timeout)


class ArtifactCache:
    """Per-host download cache keyed by sha256: ``<cache_dir>/<sha256>``; an artifact is downloaded at most once."""

    def __init__(
        self,
        cache_dir: str,
        *,
        s3: S3Settings | None = None,
        validate_certs: bool = True,
        http_open: HttpOpener | None = None,
    ) -> None:
        if not cache_dir or not os.path.isabs(cache_dir):
            raise ReleaseError(f"cache_dir must be an absolute path, got {cache_dir!r}")
        self.cache_dir = os.path.normpath(cache_dir)
        self.s3 = s3 or S3Settings()
        self.validate_certs = validate_certs
        self.http_open: HttpOpener = http_open or urllib_http_open
        self._s3_client: Any = None

    def path_for(self, sha256: str) -> str:
        return os.path.join(self.cache_dir, sha256)

    def get(self, artifact: Artifact) -> tuple[str, bool]:
        """Return (path of the verified file in the cache, True if it was downloaded now).

        A cached file is reused only for a URI it was already fetched from: a manifest whose sha256 belongs to another
        artifact (a copy-paste error) then fails on every host alike instead of deploying the wrong bytes where they
        happen to be cached.
        """
        cached = self.path_for(artifact.sha256)
        source = redact_uri(artifact.uri)
        known = self._known_uris(artifact.sha256)
        if os.path.isfile(cached) and source in known:
            if sha256_file(cached) == artifact.sha256:
                return cached, False
            # A corrupted cache entry must never be unpacked: drop it and fetch again.
            os.unlink(cached)
        os.makedirs(self.cache_dir, mode=0o750, exist_ok=True)
        tmp = os.path.join(self.cache_dir, f"{TMP_PREFIX}{artifact.sha256}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "xb") as out:
                os.fchmod(out.fileno(), 0o640)
                # No fsync: a cache entry torn by a crash fails its verification on next use and is fetched again.
                actual = self._download(artifact, out)
            if actual != artifact.sha256:
                raise ReleaseError(
                    f"checksum mismatch for {source}: expected sha256 {artifact.sha256}, got {actual}. Nothing was "
                    "unpacked: fix the manifest or the artifact store."
                )
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        write_json_atomic(self._uris_path(artifact.sha256), sorted({*known, source}), mode=0o640)
        return cached, True

    def _uris_path(self, sha256: str) -> str:
        return os.path.join(self.cache_dir, f"{sha256}.uris")

    def _known_uris(self, sha256: str) -> set[str]:
        try:
            with open(self._uris_path(sha256), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return set()
        return {item for item in data if isinstance(item, str)} if isinstance(data, list) else set()

    def _download(self, artifact: Artifact, out: IO[bytes]) -> str:
        scheme = urlparse(artifact.uri).scheme
        if scheme == "file":
            return self._download_file(artifact.uri, out)
        if scheme in ("http", "https"):
            return self._download_http(artifact.uri, out)
        return self._download_s3(artifact.uri, out)

    @staticmethod
    def _download_file(uri: str, out: IO[bytes]) -> str:
        path = _file_uri_path(uri)
        try:
            with open(path, "rb") as src:
                return _copy_hashing(src, out)
        except FileNotFoundError:
            raise ReleaseError(f"artifact not found: {path} does not exist on this host (from {uri})") from None
        except IsADirectoryError:
            raise ReleaseError(f"artifact {path} is a directory, not an archive") from None
        except PermissionError:
            raise ReleaseError(f"artifact {path} is not readable by this user") from None

    def _download_http(self, uri: str, out: IO[bytes]) -> str:
        shown = redact_uri(uri)
        try:
            with contextlib.closing(self.http_open(uri, self.validate_certs, HTTP_TIMEOUT)) as response:
                return _copy_hashing(response, out)
        except urllib.error.HTTPError as exc:
            raise ReleaseError(
                f"download of {shown} failed: HTTP {exc.code} {exc.reason}; check the URI and that the artifact "
                "was published"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ReleaseError(
                    f"TLS certificate of {shown} could not be verified ({reason.verify_message}); install the CA "
                    "on the host (validate_certs=false only for a lab)"
                ) from None
            raise ReleaseError(f"cannot reach {shown}: {reason}; check the URI, DNS and the network") from None
        except (TimeoutError, OSError) as exc:
            raise ReleaseError(f"download of {shown} was interrupted: {exc}; retry, or check the network") from None
        except Exception as exc:  # the opener given by the module raises its own types (TLS validation...)
            raise ReleaseError(f"download of {shown} failed: {exc}") from None

    def _client(self) -> Any:
        if self._s3_client is None:
            try:
                import boto3  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415 -- lazy: only s3:// needs it
                from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
            except ImportError:
                raise MissingLibraryError("boto3", "s3:// artifacts") from None
            settings = self.s3
            self._s3_client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.endpoint_url or None,
                aws_access_key_id=settings.access_key or None,
                aws_secret_access_key=settings.secret_key or None,
                aws_session_token=settings.session_token or None,
                region_name=settings.region or None,
                verify=self.validate_certs,
                config=Config(connect_timeout=10, read_timeout=HTTP_TIMEOUT, retries={"max_attempts": 2}),
            )
        return self._s3_client

    def _download_s3(self, uri: str, out: IO[bytes]) -> str:
        parsed = urlparse(uri)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or not key:
            raise ReleaseError(f"S3 URI {uri!r} must look like s3://bucket/path/to/artifact.tar.gz")
        client = self._client()
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                return _copy_hashing(body, out)
            finally:
                body.close()
        except ReleaseError:
            raise
        except Exception as exc:
            raise self._s3_error(exc, uri) from None

    def _s3_error(self, exc: Exception, uri: str) -> ReleaseError:  # noqa: PLR0911 -- one message per failure kind
        from botocore import exceptions as bexc  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415

        endpoint = self.s3.endpoint_url or "the default AWS endpoint"
        if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
            return ReleaseError(
                f"no usable S3 credentials to read {uri}: set aws_access_key and aws_secret_key (or AWS_ACCESS_KEY_ID"
                " and AWS_SECRET_ACCESS_KEY on the target)"
            )
        if isinstance(exc, bexc.SSLError):
            return ReleaseError(
                f"TLS verification failed for S3 endpoint {endpoint}: {exc}; install its CA on the host "
                "(validate_certs=false only for a lab)"
            )
        if isinstance(
            exc,
            (bexc.EndpointConnectionError, bexc.ConnectTimeoutError, bexc.ReadTimeoutError, bexc.ConnectionClosedError),
        ):
            return ReleaseError(
                f"cannot reach S3 endpoint {endpoint} to fetch {uri}: {exc}; check s3_endpoint_url and that the "
                "S3 service is up"
            )
        if isinstance(exc, bexc.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NotFound"):
                return ReleaseError(
                    f"S3 object not found: {uri}; check the manifest and that the artifact was uploaded"
                )
            if code == "NoSuchBucket":
                return ReleaseError(f"S3 bucket {urlparse(uri).netloc!r} does not exist at {endpoint} (from {uri})")
            if code == "InvalidAccessKeyId":
                return ReleaseError(f"S3 at {endpoint} does not know this access key: check aws_access_key ({uri})")
            if code == "SignatureDoesNotMatch":
                return ReleaseError(
                    f"S3 at {endpoint} rejected the request signature: the secret key is wrong; check aws_secret_key "
                    f"({uri})"
                )
            if code in ("AccessDenied", "403") or status == 403:
                return ReleaseError(
                    f"S3 at {endpoint} denied access to {uri}: wrong credentials, or they may not read this object"
                )
            if code == "404" or status == 404:
                return ReleaseError(
                    f"S3 answered 404 for {uri}: the object does not exist, or {endpoint} is not an S3 endpoint "
                    "(check s3_endpoint_url)"
                )
            message = error.get("Message", "")
            return ReleaseError(f"S3 error {code or status} fetching {uri}: {message}")
        if isinstance(exc, bexc.BotoCoreError):
            return ReleaseError(f"S3 error fetching {uri} from {endpoint}: {exc}")
        if isinstance(exc, OSError):
            return ReleaseError(f"S3 download of {uri} was interrupted: {exc}; retry, or check the network")
        return ReleaseError(f"unexpected error fetching {uri}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------------------------
# Safe unpack
# --------------------------------------------------------------------------------------------------------------------

KIND_DIR = "dir"
KIND_FILE = "file"
KIND_SYMLINK = "symlink"
KIND_HARDLINK = "hardlink"


@dataclass
class _Entry:
    name: str  # normalised path relative to the artifact's target directory
    kind: str
    mode: int
    mtime: float
    link: str = ""  # symlink target as stored, or hard link target (normalised, relative to the target)
    member: Any = None  # the tarfile.TarInfo / zipfile.ZipInfo to read file content from


def _archive_name(raw: str, archive: str) -> str:
    """Normalise a member name from an archive; refuse absolute names and any ``..`` component."""
    if raw.startswith("/") or re.match(r"\A[A-Za-z]:[\\/]", raw):
        raise ReleaseError(f"refusing archive {archive}: member {raw!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"refusing archive {archive}: member {raw!r} contains '..'")
    return "/".join(parts)


class _SubdirMapper:
    """Keep only the members under ``subdir`` and make their names relative to it."""

    def __init__(self, subdir: str) -> None:
        self.subdir = subdir
        self.found = not subdir

    def map(self, name: str, kind: str, archive: str) -> str | None:
        if not self.subdir:
            return name
        if name == self.subdir:
            if kind != KIND_DIR:
                raise ReleaseError(f"refusing archive {archive}: subdir {self.subdir!r} is not a directory in it")
            self.found = True
            return ""
        if name.startswith(self.subdir + "/"):
            self.found = True
            return name[len(self.subdir) + 1 :]
        return None


_TAR_REFUSED = (
    (tarfile.TarInfo.ischr, "a device file"),
    (tarfile.TarInfo.isblk, "a device file"),
    (tarfile.TarInfo.isfifo, "a FIFO"),
)


def _tar_entry(info: tarfile.TarInfo, mapper: _SubdirMapper, label: str) -> _Entry | None:
    name = _archive_name(info.name, label)
    if info.isdir():
        kind = KIND_DIR
    elif info.isreg():
        kind = KIND_FILE
    elif info.issym():
        kind = KIND_SYMLINK
    elif info.islnk():
        kind = KIND_HARDLINK
    else:
        what = next((text for test, text in _TAR_REFUSED if test(info)), "of an unsupported type")
        raise ReleaseError(f"refusing archive {label}: member {info.name!r} is {what}")
    link = info.linkname if kind == KIND_SYMLINK else ""
    mapped = mapper.map(name, kind, label)
    if kind == KIND_HARDLINK:
        # A hard link names another member of the archive: same rules as a member name, and inside subdir.
        try:
            target = _archive_name(info.linkname, label)
        except ReleaseError:
            raise ReleaseError(
                f"refusing archive {label}: hard link {info.name!r} -> {info.linkname!r} points outside the release"
            ) from None
        link = (mapper.map(target, KIND_FILE, label) or "") if mapper.subdir else target
        if mapped is not None and not link:
            raise ReleaseError(
                f"refusing archive {label}: hard link {info.name!r} -> {info.linkname!r} points outside "
                f"subdir {mapper.subdir!r}"
            )
    return _keep(mapped, _Entry("", kind, info.mode, float(info.mtime), link, info), label)


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, mapper: _SubdirMapper, label: str) -> _Entry | None:
    name = _archive_name(info.filename, label)
    mode = info.external_attr >> 16
    fmt = stat.S_IFMT(mode)
    if info.is_dir() or fmt == stat.S_IFDIR:
        kind = KIND_DIR
    elif fmt == stat.S_IFLNK:
        kind = KIND_SYMLINK
    elif fmt in (0, stat.S_IFREG):
        kind = KIND_FILE
    else:
        raise ReleaseError(f"refusing archive {label}: member {info.filename!r} is a device file, FIFO or socket")
    mapped = mapper.map(name, kind, label)
    link = archive.read(info).decode("utf-8", "surrogateescape") if kind == KIND_SYMLINK and mapped else ""
    mtime = time.mktime((*info.date_time, 0, 0, -1))
    return _keep(mapped, _Entry("", kind, stat.S_IMODE(mode), mtime, link, info), label)


def _keep(mapped: str | None, entry: _Entry, label: str) -> _Entry | None:
    """Name the entry by its path under subdir, or drop it (outside subdir, or subdir itself)."""
    if mapped is None:
        return None
    if mapped == "":
        if entry.kind != KIND_DIR:
            raise ReleaseError(f"refusing archive {label}: a {entry.kind} entry would replace the release root")
        return None
    entry.name = mapped
    return entry


def _read_entries(path: str, subdir: str, label: str) -> tuple[Any, list[_Entry]]:
    """Open the archive and list its entries (validated names, refused types); the caller closes the archive."""
    mapper = _SubdirMapper(subdir)
    archive: Any
    try:
        if zipfile.is_zipfile(path):
            archive = zipfile.ZipFile(path)
        elif tarfile.is_tarfile(path):
            archive = tarfile.open(path, "r:*")  # noqa: SIM115 -- closed by the caller
        else:
            raise ReleaseError(f"{label} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ReleaseError(f"cannot read archive {label}: {exc}") from None
    try:
        if isinstance(archive, zipfile.ZipFile):
            found = [_zip_entry(archive, info, mapper, label) for info in archive.infolist()]
        else:
            found = [_tar_entry(info, mapper, label) for info in archive.getmembers()]
        if not mapper.found:
            raise ReleaseError(f"subdir {subdir!r} not found in archive {label}; check the manifest's subdir")
    except ReleaseError:
        archive.close()
        raise
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        archive.close()
        raise ReleaseError(f"archive {label} is corrupt or truncated: {exc}") from None
    return archive, [entry for entry in found if entry is not None]


def _check_links(entries: Sequence[_Entry], label: str) -> None:
    """Lexical checks before anything is written: links must stay inside the target directory."""
    files = set()
    for entry in entries:
        if entry.kind == KIND_SYMLINK:
            target = entry.link
            if not target or "\0" in target:
                raise ReleaseError(f"refusing archive {label}: symlink {entry.name!r} has an empty target")
            if target.startswith("/"):
                raise ReleaseError(
                    f"refusing archive {label}: symlink {entry.name!r} -> {target!r} is absolute (points outside the "
                    "release)"
                )
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.name), target))
            if resolved == ".." or resolved.startswith("../"):
                raise ReleaseError(
                    f"refusing archive {label}: symlink {entry.name!r} -> {target!r} points outside the release"
                )
        elif entry.kind == KIND_HARDLINK:
            if entry.link not in files:
                raise ReleaseError(
                    f"refusing archive {label}: hard link {entry.name!r} -> {entry.link!r} does not point to a "
                    "regular file of the archive"
                )
            files.add(entry.name)
        elif entry.kind == KIND_FILE:
            files.add(entry.name)


def unpack_archive(archive_path: str, target: str, *, subdir: str = "", label: str | None = None) -> int:
    """Unpack a tar (plain/gz/bz2/xz) or zip archive into ``target`` safely; return the number of entries.

    Refuses absolute names, ``..``, symlinks and hard links resolving outside ``target``, device files and FIFOs.
    Regular files and directories are written first, then hard links, then symlinks, so that no write ever goes
    through a link the archive created; every symlink is finally resolved with realpath() to catch chains.
    The caller unpacks into a temporary directory and removes it on error.
    """
    label = label or archive_path
    subdir = safe_relpath(subdir, "subdir")
    archive, entries = _read_entries(archive_path, subdir, label)
    try:
        _check_links(entries, label)
        os.makedirs(target, exist_ok=True)
        real_target = os.path.realpath(target)
        dirs: list[_Entry] = []
        for entry in entries:
            if entry.kind in (KIND_DIR, KIND_FILE):
                _write_entry(archive, entry, target, real_target, label)
                if entry.kind == KIND_DIR:
                    dirs.append(entry)
        _write_links(entries, target, real_target, label)
        # Directory modes last: an archive's read-only directory must not block writing its content.
        for entry in reversed(dirs):
            path = os.path.join(target, entry.name)
            # Archives made without Unix modes (zip from Windows) say 0: give directories the usual 0755.
            os.chmod(path, ((entry.mode or 0o755) & 0o755) | 0o700)
            os.utime(path, (entry.mtime, entry.mtime))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ReleaseError(f"cannot unpack {label}: {exc}") from None
    finally:
        archive.close()
    return len(entries)


def _write_links(entries: Sequence[_Entry], target: str, real_target: str, label: str) -> None:
    for entry in entries:
        if entry.kind == KIND_HARDLINK:
            path = _prepare_path(entry, target, real_target, label)
            os.link(os.path.join(target, entry.link), path, follow_symlinks=False)
    symlinks = [entry for entry in entries if entry.kind == KIND_SYMLINK]
    for entry in symlinks:
        path = _prepare_path(entry, target, real_target, label)
        os.symlink(entry.link, path)
    # Each link was checked lexically; realpath() now also catches escapes through chains of links.
    for entry in symlinks:
        real = os.path.realpath(os.path.join(target, entry.name))
        if not _inside(real, real_target):
            raise ReleaseError(
                f"refusing archive {label}: symlink {entry.name!r} -> {entry.link!r} resolves outside the release"
            )


def _prepare_path(entry: _Entry, target: str, real_target: str, label: str) -> str:
    path = os.path.join(target, entry.name)
    parent = os.path.dirname(path)
    # Checked before creating anything: a link left by an earlier artifact must not lead the write elsewhere.
    if not _inside(os.path.realpath(parent), real_target):
        raise ReleaseError(f"refusing archive {label}: member {entry.name!r} would be written outside the release")
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            if entry.kind == KIND_DIR:
                return path
            raise ReleaseError(f"refusing archive {label}: member {entry.name!r} conflicts with a directory")
        if os.path.islink(path):
            raise ReleaseError(f"refusing archive {label}: member {entry.name!r} conflicts with a symlink")
        os.unlink(path)  # a later duplicate of a regular file replaces it, as tar does
    return path


def _write_entry(archive: Any, entry: _Entry, target: str, real_target: str, label: str) -> None:
    path = _prepare_path(entry, target, real_target, label)
    if entry.kind == KIND_DIR:
        os.makedirs(path, exist_ok=True)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        if isinstance(archive, tarfile.TarFile):
            source = archive.extractfile(entry.member)
            if source is None:
                raise ReleaseError(f"cannot read member {entry.name!r} of {label}")
        else:
            source = archive.open(entry.member)
        with source:
            shutil.copyfileobj(source, out, CHUNK)
        mode = entry.mode if entry.mode else 0o644
        os.fchmod(out.fileno(), (mode & 0o755) | 0o600)
    os.utime(path, (entry.mtime, entry.mtime))


# --------------------------------------------------------------------------------------------------------------------
# Filesystem helpers
# --------------------------------------------------------------------------------------------------------------------


def _sync_filesystem(path: str) -> None:
    """Flush the file system holding ``path`` (syncfs(2) on Linux, sync(2) elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: Any, mode: int = 0o644) -> None:
    """Write JSON to ``path`` so that readers see the old or the new content, never a mix (tmp + fsync + rename)."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(directory)


def _rmtree(path: str) -> None:
    def retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        # A read-only directory from an archive: make it writable and try once more.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    shutil.rmtree(path, onerror=retry)


def _chown_tree(path: str, uid: int, gid: int) -> None:
    if uid == -1 and gid == -1:
        return
    os.lchown(path, uid, gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


def _is_tmp_dir_busy(path: str) -> bool:
    """A preparation in progress holds an flock on its temporary directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --------------------------------------------------------------------------------------------------------------------
# Journal and state
# --------------------------------------------------------------------------------------------------------------------


def empty_journal() -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "seq": 0, "previous": None, "releases": {}, "history": []}


def load_journal(path: str) -> dict[str, Any]:
    """Read the journal; a missing journal is an empty one, a damaged one is an error (never silently reset)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return empty_journal()
    except (OSError, ValueError) as exc:
        raise ReleaseError(
            f"the journal {path} cannot be read ({exc}); it is never rewritten blindly: restore it from a backup or "
            "fix it by hand"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
        raise ReleaseError(
            f"the journal {path} has schema {data.get('schema') if isinstance(data, dict) else '?'}, this module "
            f"reads schema {SCHEMA_VERSION}: upgrade the unistra.itop collection"
        )
    data.setdefault("seq", 0)
    data.setdefault("previous", None)
    data.setdefault("releases", {})
    data.setdefault("history", [])
    return data


@dataclass
class _State:
    journal: dict[str, Any]
    current: str | None
    lock: dict[str, Any] | None
    dirty: bool = False
    # In check mode the operation runs on this state in memory only; results report the untouched copy.
    on_disk: _State | None = None


class ReleaseManager:
    """All operations on one application root. Every mutating method honours ``check_mode``."""

    def __init__(
        self,
        root: str,
        *,
        check_mode: bool = False,
        owner_name: str | None = None,
        clock: Callable[[], float] = time.time,
        lock_id: str | None = None,
    ) -> None:
        if not isinstance(root, str) or not root or not os.path.isabs(root):
            raise ReleaseError(f"root must be an absolute path, got {root!r}")
        self.root = os.path.normpath(root)
        self.check_mode = check_mode
        self.owner_name = owner_name or default_owner_name()
        # When the caller says which lock it holds, its changes are refused while another live lock is held.
        self.lock_id = lock_id
        self.clock = clock
        self.releases_dir = os.path.join(self.root, RELEASES_DIR)
        self.shared_dir = os.path.join(self.root, SHARED_DIR)
        self.current_link = os.path.join(self.root, CURRENT_LINK)
        self.journal_path = os.path.join(self.root, JOURNAL_NAME)
        self.journal_lock_path = os.path.join(self.root, JOURNAL_LOCK_NAME)
        self.deploy_lock_path = os.path.join(self.root, DEPLOY_LOCK_NAME)

    # -- plumbing -------------------------------------------------------------------------------------------------

    def release_path(self, release: str) -> str:
        return os.path.join(self.releases_dir, release)

    @contextlib.contextmanager
    def _guarded(self, write: bool, *, create: bool = False, honour_lock: bool = True) -> Iterator[_State]:
        """Hold the journal flock (exclusive to write, shared to read) and yield the loaded state.

        In check mode, and for reads, nothing is created: the lock file is only opened if it exists. Only ``create``
        operations (prepare, lock) make a missing root; the others have nothing to change there.
        """
        fd: int | None = None
        if write and not self.check_mode and (create or os.path.isdir(self.root)):
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                raise ReleaseError(f"root {self.root} exists and is not a directory")
            os.makedirs(self.root, mode=0o755, exist_ok=True)
            fd = os.open(self.journal_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                fd = os.open(self.journal_lock_path, os.O_RDONLY | os.O_CLOEXEC)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            state = self._load()
            if write and honour_lock:
                self._refuse_if_locked_by_another(state)
            yield state
        finally:
            if fd is not None:
                os.close(fd)

    def _refuse_if_locked_by_another(self, state: _State) -> None:
        held = state.lock
        if not self.lock_id or held is None or held.get("lock_id") == self.lock_id:
            return
        if float(held.get("expires_at_epoch", 0)) <= self.clock():
            return  # an expired lock protects nothing
        raise ReleaseError(
            f"{self.root} is locked by {held.get('owner')} ({held.get('reason') or 'no reason given'}) until "
            f"{held.get('expires_at')}, not with lock_id given: another deployment is running here; nothing was done"
        )

    def _load(self) -> _State:
        state = _State(journal=load_journal(self.journal_path), current=self._read_current(), lock=self._read_lock())
        if self.check_mode:
            state.on_disk = copy.deepcopy(state)
        return state

    def _read_current(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError:
            if os.path.lexists(self.current_link):
                raise ReleaseError(
                    f"{self.current_link} exists and is not a symlink: move it away, this module manages it"
                ) from None
            return None
        head, release = os.path.split(target.rstrip("/"))
        if head != RELEASES_DIR:
            raise ReleaseError(
                f"{self.current_link} -> {target} does not point to releases/<id>: it was not set by this module; "
                "fix it by hand"
            )
        return release

    def _read_lock(self) -> dict[str, Any] | None:
        try:
            with open(self.deploy_lock_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ReleaseError(
                f"the deployment lock {self.deploy_lock_path} is unreadable ({exc}); if no deployment is running, "
                "remove the file"
            ) from None
        return data if isinstance(data, dict) else None

    def _save(self, state: _State) -> None:
        if state.dirty and not self.check_mode:
            write_json_atomic(self.journal_path, state.journal)
            state.dirty = False

    def _event(self, state: _State, event: str, **fields: Any) -> dict[str, Any]:
        journal = state.journal
        journal["seq"] = int(journal.get("seq", 0)) + 1
        entry = {"seq": journal["seq"], "event": event, "at": _now_iso(self.clock()), "by": self.owner_name}
        entry.update({key: value for key, value in fields.items() if value is not None})
        journal["history"].append(entry)
        del journal["history"][:-MAX_HISTORY]
        state.dirty = True
        return entry

    @staticmethod
    def _record(state: _State, release: str) -> dict[str, Any] | None:
        record = state.journal["releases"].get(release)
        return record if isinstance(record, dict) else None

    def _previous(self, state: _State) -> str | None:
        """The release that was current just before the current one (whatever its state), if still journaled."""
        previous = state.journal.get("previous")
        if previous and previous != state.current and previous in state.journal["releases"]:
            return str(previous)
        return None

    def _rollback_target(self, state: _State) -> str | None:
        """The release a rollback goes to: the last one activated before current, not bad/failed, still on disk."""
        best: tuple[int, str] | None = None
        for release, record in state.journal["releases"].items():
            seq = record.get("activated_seq")
            if seq is None or release == state.current or record.get("state") in (STATE_BAD, STATE_FAILED):
                continue
            if not os.path.isdir(self.release_path(release)):
                continue
            if best is None or seq > best[0]:
                best = (seq, release)
        return best[1] if best else None

    def _lock_view(self, lock: dict[str, Any] | None) -> dict[str, Any] | None:
        if lock is None:
            return None
        view = dict(lock)
        view["expired"] = float(lock.get("expires_at_epoch", 0)) <= self.clock()
        return view

    def _result(self, state: _State, changed: bool, msg: str, **extra: Any) -> dict[str, Any]:
        """The common result. In check mode the state reported is the one on disk (nothing moved); what would
        happen is in ``changed``, ``msg`` and the operation's own keys (``release``, ``removed``...)."""
        if state.on_disk is not None:
            state = state.on_disk
        releases = sorted(
            state.journal["releases"].values(), key=lambda r: (r.get("prepared_seq") or 0, r.get("id", ""))
        )
        result: dict[str, Any] = {
            "changed": changed,
            "root": self.root,
            "current": state.current,
            "previous": self._previous(state),
            "rollback_target": self._rollback_target(state),
            "releases": [
                {
                    "id": r.get("id"),
                    "state": r.get("state"),
                    "prepared_at": r.get("prepared_at"),
                    "activated_at": r.get("activated_at"),
                    "metadata": r.get("metadata", {}),
                }
                for r in releases
            ],
            "history": list(state.journal["history"]),
            "lock": self._lock_view(state.lock),
            "msg": msg,
        }
        result.update(extra)
        return result

    @staticmethod
    def _merge_metadata(record: dict[str, Any], metadata: Mapping[str, Any] | None) -> bool:
        if not metadata:
            return False
        current = record.setdefault("metadata", {})
        merged = {**current, **metadata}
        if merged == current:
            return False
        record["metadata"] = merged
        return True

    # -- prepare --------------------------------------------------------------------------------------------------

    def prepare(
        self,
        release: str,
        artifacts: Sequence[Mapping[str, Any]],
        *,
        shared_paths: Iterable[str] = (),
        owner: str | None = None,
        group: str | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        s3: S3Settings | None = None,
        validate_certs: bool = True,
        metadata: Mapping[str, Any] | None = None,
        http_open: HttpOpener | None = None,
    ) -> dict[str, Any]:
        """Fetch, verify and unpack a release into releases/<id>, link shared paths, journal it as prepared."""
        rid = validate_release_id(release)
        if not artifacts:
            raise ReleaseError("prepare needs at least one artifact ({uri, sha256})")
        arts = [Artifact.from_dict(a) for a in artifacts]
        shared = _validate_shared_paths(shared_paths)
        uid, gid = resolve_owner(owner, group)
        fingerprint = [a.fingerprint() for a in arts]
        path = self.release_path(rid)
        cache = ArtifactCache(cache_dir, s3=s3, validate_certs=validate_certs, http_open=http_open)

        with self._guarded(write=True, create=True) as state:
            decision = self._prepare_decision(state, rid, fingerprint)
            if decision == "done" or self.check_mode:
                return self._prepare_without_work(state, decision, rid=rid, arts=arts, shared=shared, metadata=metadata)

        # The long part runs without the journal flock; the temporary directory is flocked so prune leaves it alone.
        os.makedirs(self.releases_dir, mode=0o755, exist_ok=True)
        tmp = _mkdtemp(self.releases_dir, f"{TMP_PREFIX}{rid}-")
        tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(tmp_fd, fcntl.LOCK_EX)
        try:
            fetched = _fetch_and_unpack(tmp, arts, cache)
            os.chmod(tmp, 0o755)  # noqa: S103 -- mkdtemp made it 0700; a release is read by the web server
            self._link_shared(tmp, shared, uid, gid)
            _chown_tree(tmp, uid, gid)

            with self._guarded(write=True) as state:
                decision = self._prepare_decision(state, rid, fingerprint)
                if decision == "done":  # prepared meanwhile by another run
                    return self._result(
                        state, False, f"release {rid} is already prepared", release=rid, path=path, artifacts=fetched
                    )
                if decision == "redo":
                    _discard(path, self.releases_dir)
                # The journal must never call a release prepared whose files a power cut could still truncate.
                _sync_filesystem(tmp)
                os.rename(tmp, path)
                _fsync_dir(self.releases_dir)
                self._mark_prepared(state, rid, arts, shared, metadata, replaced_failed=decision == "redo")
                self._save(state)
                return self._result(state, True, f"release {rid} prepared", release=rid, path=path, artifacts=fetched)
        except OSError as exc:
            raise ReleaseError(f"preparing release {rid} failed: {exc}") from None
        finally:
            os.close(tmp_fd)
            if os.path.lexists(tmp):
                _rmtree(tmp)

    def _prepare_without_work(
        self,
        state: _State,
        decision: str,
        *,
        rid: str,
        arts: Sequence[Artifact],
        shared: Sequence[str],
        metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Already prepared (only metadata may change), or check mode (predict, touch nothing)."""
        path = self.release_path(rid)
        if decision == "done":
            record = state.journal["releases"][rid]
            changed = self._merge_metadata(record, metadata)
            if changed:
                state.dirty = True
                self._save(state)
            msg = f"release {rid} is already prepared" + (" (metadata updated)" if changed else "")
            return self._result(state, changed, msg, release=rid, path=path, artifacts=[])
        for art in arts:
            check_source(art)
        self._mark_prepared(state, rid, arts, shared, metadata, replaced_failed=decision == "redo")
        return self._result(
            state, True, f"release {rid} would be prepared (check mode)", release=rid, path=path, artifacts=[]
        )

    def _prepare_decision(self, state: _State, rid: str, fingerprint: list[dict[str, str]]) -> str:
        """'done' (nothing to do), 'new' (prepare it) or 'redo' (a failed release of that id is replaced)."""
        record = self._record(state, rid)
        exists = os.path.lexists(self.release_path(rid))
        if record is None:
            if exists:
                raise ReleaseError(
                    f"{self.release_path(rid)} exists but is not in the journal: it was not prepared by this module; "
                    "remove it or use another release id"
                )
            return "new"
        if not exists:
            return "new"
        if record.get("state") == STATE_FAILED:
            return "redo"  # a failed release never served: it may be rebuilt, even from other artifacts
        if record.get("fingerprint") != fingerprint:
            raise ReleaseError(
                f"release {rid} is already prepared with other artifacts (different sha256/dest/subdir): releases "
                "are immutable, publish a new release id"
            )
        return "done"

    def _mark_prepared(
        self,
        state: _State,
        rid: str,
        arts: Sequence[Artifact],
        shared: Sequence[str],
        metadata: Mapping[str, Any] | None,
        *,
        replaced_failed: bool,
    ) -> None:
        old = self._record(state, rid) or {}
        entry = self._event(state, "prepare", release=rid, replaced_failed=replaced_failed or None)
        record = {
            "id": rid,
            "state": STATE_PREPARED,
            "prepared_at": entry["at"],
            "prepared_seq": entry["seq"],
            "activated_at": old.get("activated_at"),
            "activated_seq": old.get("activated_seq"),
            "activations": old.get("activations", 0),
            "artifacts": [a.as_dict() for a in arts],
            "fingerprint": [a.fingerprint() for a in arts],
            "shared_paths": list(shared),
            "metadata": dict(old.get("metadata", {})),
        }
        self._merge_metadata(record, metadata)
        state.journal["releases"][rid] = record

    def _link_shared(self, release_dir: str, shared: Sequence[str], uid: int, gid: int) -> None:
        """Replace each shared path in the release by a relative link to shared/<path>, seeding shared/ once."""
        if not shared:
            return
        os.makedirs(self.shared_dir, mode=0o755, exist_ok=True)
        for rel in shared:
            in_release = os.path.join(release_dir, rel)
            in_shared = os.path.join(self.shared_dir, rel)
            parent = os.path.dirname(in_release)
            os.makedirs(parent, exist_ok=True)
            if not _inside(os.path.realpath(parent), os.path.realpath(release_dir)):
                raise ReleaseError(f"shared path {rel!r} resolves outside the release (through a symlink)")
            os.makedirs(os.path.dirname(in_shared), mode=0o755, exist_ok=True)
            if not _inside(os.path.realpath(os.path.dirname(in_shared)), os.path.realpath(self.shared_dir)):
                raise ReleaseError(f"shared path {rel!r} resolves outside {self.shared_dir} (through a symlink)")
            ships = os.path.lexists(in_release)
            if not os.path.lexists(in_shared):
                if ships and not os.path.islink(in_release):
                    shutil.move(in_release, in_shared)  # the archive's content seeds shared/ the first time
                else:
                    if ships:
                        os.unlink(in_release)
                    os.makedirs(in_shared, mode=0o755)
                _chown_tree(in_shared, uid, gid)
            elif ships:
                _rmtree(in_release)
            depth = rel.count("/") + 2  # releases/<id>/ plus the directories of rel
            os.symlink("../" * depth + f"{SHARED_DIR}/{rel}", in_release)

    # -- activate / rollback ----------------------------------------------------------------------------------------

    def activate(
        self, release: str, *, metadata: Mapping[str, Any] | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Point current at releases/<id> (temporary symlink + rename) and journal who did it."""
        rid = validate_release_id(release)
        with self._guarded(write=True) as state:
            record = self._activatable(state, rid, force=force)
            if state.current == rid and record.get("state") == STATE_ACTIVE:
                changed = self._merge_metadata(record, metadata)
                if changed:
                    state.dirty = True
                    self._save(state)
                return self._result(
                    state, changed, f"release {rid} is already current", release=rid, path=self.release_path(rid)
                )
            self._merge_metadata(record, metadata)
            previous = state.current
            self._switch(state, rid, "activate")
            self._save(state)
            verb = "would be activated (check mode)" if self.check_mode else "activated"
            return self._result(
                state, True, f"release {rid} {verb} (was {previous})", release=rid, path=self.release_path(rid)
            )

    def rollback(self, release: str | None = None, *, reason: str | None = None) -> dict[str, Any]:
        """Go back to ``release`` or to the previous good release; the release left is marked bad."""
        with self._guarded(write=True) as state:
            current = state.current
            if release:
                rid = validate_release_id(release)
                if rid == current:
                    return self._result(
                        state, False, f"release {rid} is already current", release=rid, path=self.release_path(rid)
                    )
                record = self._activatable(state, rid, force=True)
            else:
                if current is None:
                    raise ReleaseError(f"nothing to roll back in {self.root}: no release is current")
                target = self._rollback_target(state)
                if target is None:
                    raise ReleaseError(
                        f"no release to roll back to in {self.root}: no release activated before {current} is still "
                        "present and not marked bad or failed; name one with release=<id>"
                    )
                rid = target
                record = self._activatable(state, rid, force=True)
            del record  # only validated here
            self._switch(state, rid, "rollback", reason=reason)
            if current is not None:
                left = self._record(state, current)
                if left is not None:
                    left["state"] = STATE_BAD
                    left["bad_reason"] = reason or f"rolled back to {rid}"
            self._save(state)
            verb = "would roll back (check mode)" if self.check_mode else "rolled back"
            return self._result(
                state, True, f"{verb} from {current} to {rid}", release=rid, path=self.release_path(rid)
            )

    def _activatable(self, state: _State, rid: str, *, force: bool) -> dict[str, Any]:
        record = self._record(state, rid)
        if record is None or not os.path.isdir(self.release_path(rid)):
            raise ReleaseError(f"release {rid} is not prepared in {self.root}: run operation=prepare first")
        status = record.get("state")
        if status == STATE_FAILED:
            raise ReleaseError(
                f"release {rid} is marked failed (its preparation hook failed): fix the cause and prepare it again"
            )
        if status == STATE_BAD and not force:
            raise ReleaseError(
                f"release {rid} is marked bad ({record.get('bad_reason', 'rolled back')}): pass force=true to "
                "activate it anyway"
            )
        return record

    def _switch(self, state: _State, rid: str, event: str, reason: str | None = None) -> None:
        previous = state.current
        if not self.check_mode:
            tmp_link = os.path.join(self.root, f"{CURRENT_LINK}.tmp-{secrets.token_hex(4)}")
            os.symlink(f"{RELEASES_DIR}/{rid}", tmp_link)
            try:
                os.rename(tmp_link, self.current_link)
            except OSError as exc:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_link)
                raise ReleaseError(f"cannot switch {self.current_link} to releases/{rid}: {exc}") from None
            _fsync_dir(self.root)
        entry = self._event(state, event, release=rid, **{"from": previous}, reason=reason)
        if previous and previous != rid:
            state.journal["previous"] = previous
        for other_id, other in state.journal["releases"].items():
            if other_id != rid and other.get("state") == STATE_ACTIVE:
                other["state"] = STATE_INACTIVE
        record = state.journal["releases"][rid]
        record["state"] = STATE_ACTIVE
        record["activated_at"] = entry["at"]
        record["activated_seq"] = entry["seq"]
        record["activations"] = int(record.get("activations", 0)) + 1
        record.pop("bad_reason", None)
        state.current = rid

    # -- prune ------------------------------------------------------------------------------------------------------

    def prune(self, keep: int = DEFAULT_KEEP, *, cache_dir: str | None = None) -> dict[str, Any]:
        """Remove old releases: keep ``keep`` activated ones, current and previous; drop never-activated failures.

        With ``cache_dir``, the cached artifacts of the removed releases go too, unless a release still journaled here
        uses them: the cache then holds what this root may still need, not every artifact it ever fetched.
        """
        if not isinstance(keep, int) or keep < 0:
            raise ReleaseError(f"keep must be a non-negative integer, got {keep!r}")
        with self._guarded(write=True) as state:
            releases = state.journal["releases"]
            protected = {state.current, self._previous(state), self._rollback_target(state)}
            removed = select_prunable(releases, keep, {rid for rid in protected if rid})
            leftovers = self._leftovers()
            stale = _unused_artifacts(releases, removed) if cache_dir else []
            changed = bool(removed or leftovers)
            if not self.check_mode:
                for rid in removed:
                    _discard(self.release_path(rid), self.releases_dir)
                for path in leftovers:
                    _rmtree(path)
                for sha in stale:
                    for name in (sha, f"{sha}.uris"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(str(cache_dir), name))
            for rid in removed:
                del releases[rid]
            if removed:
                self._event(state, "prune", removed=removed, keep=keep)
            self._save(state)
            if changed:
                verb = "would remove" if self.check_mode else "removed"
                msg = f"{verb} {len(removed)} release(s) and {len(leftovers)} leftover temporary item(s)"
            else:
                msg = "nothing to prune"
            return self._result(
                state,
                changed,
                msg,
                removed=removed,
                removed_tmp=[os.path.basename(p) for p in leftovers],
                removed_cache=stale,
            )

    def _leftovers(self) -> list[str]:
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.releases_dir)):
                path = os.path.join(self.releases_dir, name)
                if name.startswith(TMP_PREFIX) and not _is_tmp_dir_busy(path):
                    found.append(path)
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.root)):
                if name.startswith(ROOT_TMP_PREFIXES):
                    found.append(os.path.join(self.root, name))
        return found

    # -- mark_failed / info -------------------------------------------------------------------------------------------

    def mark_failed(self, release: str, *, reason: str | None = None) -> dict[str, Any]:
        """Mark a prepared, not current, release failed (its application hook failed); it can never be activated."""
        rid = validate_release_id(release)
        with self._guarded(write=True) as state:
            record = self._record(state, rid)
            if record is None:
                raise ReleaseError(f"release {rid} is not in the journal of {self.root}: nothing to mark failed")
            if state.current == rid:
                raise ReleaseError(f"release {rid} is current: it cannot be marked failed; roll back instead")
            if record.get("state") == STATE_FAILED:
                return self._result(state, False, f"release {rid} is already marked failed", release=rid)
            record["state"] = STATE_FAILED
            record["failed_reason"] = reason or "preparation hook failed"
            self._event(state, "mark_failed", release=rid, reason=reason)
            self._save(state)
            return self._result(state, True, f"release {rid} marked failed", release=rid, path=self.release_path(rid))

    def info(self) -> dict[str, Any]:
        with self._guarded(write=False) as state:
            path = self.release_path(state.current) if state.current else None
            return self._result(state, False, "info", release=state.current, path=path)

    # -- deployment lock --------------------------------------------------------------------------------------------

    def lock(
        self,
        *,
        reason: str | None = None,
        lease: int = DEFAULT_LEASE,
        lock_id: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Take the deployment lock; the same ``lock_id`` renews it; an expired one is taken over (journaled)."""
        if not isinstance(lease, int) or lease <= 0:
            raise ReleaseError(f"lease must be a positive number of seconds, got {lease!r}")
        with self._guarded(write=True, create=True, honour_lock=False) as state:
            now = self.clock()
            held = state.lock
            token = lock_id or secrets.token_hex(12)
            new = {
                "owner": self.owner_name,
                "reason": reason or "",
                "lock_id": token,
                "lease": lease,
                "host": socket.gethostname(),
                "acquired_at": _now_iso(now),
                "acquired_at_epoch": now,
                "expires_at": _now_iso(now + lease),
                "expires_at_epoch": now + lease,
            }
            if held is not None and lock_id and held.get("lock_id") == lock_id:
                new["acquired_at"] = held.get("acquired_at", new["acquired_at"])
                new["acquired_at_epoch"] = held.get("acquired_at_epoch", now)
                self._write_lock(state, new)
                return self._result(state, False, f"lock renewed until {new['expires_at']}")
            if held is None:
                self._write_lock(state, new)
                self._event(state, "lock", lock_owner=self.owner_name, reason=reason)
                self._save(state)
                return self._result(state, True, f"lock taken until {new['expires_at']}")
            expired = float(held.get("expires_at_epoch", 0)) <= now
            if not expired and not force:
                raise ReleaseError(
                    f"{self.root} is locked by {held.get('owner')} since {held.get('acquired_at')} "
                    f"({held.get('reason') or 'no reason given'}), lease until {held.get('expires_at')}: wait for it, "
                    "or pass force=true to take it over (recorded in the journal)"
                )
            self._write_lock(state, new)
            self._event(
                state,
                "lock_takeover",
                previous_owner=held.get("owner"),
                previous_reason=held.get("reason"),
                previous_expires_at=held.get("expires_at"),
                expired=expired,
                forced=not expired,
                reason=reason,
            )
            self._save(state)
            how = "expired lock" if expired else "lock (forced)"
            return self._result(state, True, f"took over the {how} of {held.get('owner')}")

    def unlock(self, *, lock_id: str | None = None, force: bool = False) -> dict[str, Any]:
        """Release the lock held with ``lock_id`` (or by this owner); ``force`` releases anyone's (journaled).

        Someone else's lock is never released without ``force``, even expired.
        """
        with self._guarded(write=True, honour_lock=False) as state:
            held = state.lock
            if held is None:
                return self._result(state, False, "not locked")
            mine = (lock_id and held.get("lock_id") == lock_id) or (
                not lock_id and held.get("owner") == self.owner_name
            )
            # Someone else's lock is released only with force, even expired: a stale lock needs no unlock, the next
            # operation=lock takes it over (and that is journaled).
            if not (mine or force):
                raise ReleaseError(
                    f"{self.root} is locked by {held.get('owner')} ({held.get('reason') or 'no reason given'}) with "
                    "another lock_id: pass the lock_id returned by operation=lock, or force=true to break it "
                    "(recorded in the journal)"
                )
            if not self.check_mode:
                os.unlink(self.deploy_lock_path)
                _fsync_dir(self.root)
            state.lock = None
            self._event(
                state,
                "unlock",
                previous_owner=held.get("owner"),
                forced=(not mine) or None,
            )
            self._save(state)
            return self._result(state, True, f"lock of {held.get('owner')} released")

    def _write_lock(self, state: _State, lock: dict[str, Any]) -> None:
        if not self.check_mode:
            write_json_atomic(self.deploy_lock_path, lock)
        state.lock = lock


# --------------------------------------------------------------------------------------------------------------------
# Pure selection logic (unit-tested on its own)
# --------------------------------------------------------------------------------------------------------------------


def select_prunable(releases: Mapping[str, Mapping[str, Any]], keep: int, protected: Iterable[str]) -> list[str]:
    """Release ids to remove.

    ``protected`` (current, previous and the rollback target) always stays. Never-activated failed releases go and
    do not count. Of the activated releases, the ``keep`` most recently activated (journal order, never mtime) stay,
    protected ones included. Prepared, never-activated releases stay: they may be about to be switched to.
    """
    protected = set(protected)
    removed = []
    activated = []
    for rid, record in releases.items():
        if rid in protected:
            continue
        seq = record.get("activated_seq")
        if seq is None:
            if record.get("state") == STATE_FAILED:
                removed.append(rid)
            continue
        activated.append((int(seq), rid))
    slots = max(keep - sum(1 for rid in protected if releases.get(rid, {}).get("activated_seq") is not None), 0)
    activated.sort(reverse=True)
    removed.extend(rid for _seq, rid in activated[slots:])
    return sorted(removed)


def _unused_artifacts(releases: Mapping[str, Mapping[str, Any]], removed: Sequence[str]) -> list[str]:
    """sha256 of the artifacts of ``removed`` that no other release of the journal uses."""

    def shas(rid: str) -> set[str]:
        return {str(item.get("sha256")) for item in releases[rid].get("fingerprint", []) if item.get("sha256")}

    gone: set[str] = set()
    for rid in removed:
        gone |= shas(rid)
    for rid in releases:
        if rid not in removed:
            gone -= shas(rid)
    return sorted(gone)


def _validate_shared_paths(paths: Iterable[str]) -> list[str]:
    result: list[str] = []
    for raw in paths or ():
        rel = safe_relpath(raw, "shared path", allow_empty=False)
        if rel not in result:
            result.append(rel)
    for a in result:
        for b in result:
            if a != b and b.startswith(a + "/"):
                raise ReleaseError(f"shared paths {a!r} and {b!r} overlap: list only {a!r}")
    return result


def _fetch_and_unpack(release_dir: str, arts: Sequence[Artifact], cache: ArtifactCache) -> list[dict[str, Any]]:
    """Get every artifact through the cache (checksum verified) and unpack it at its dest in the release."""
    fetched = []
    real_release = os.path.realpath(release_dir)
    for art in arts:
        local, downloaded = cache.get(art)
        fetched.append({**art.as_dict(), "downloaded": downloaded})
        target = os.path.join(release_dir, art.dest) if art.dest else release_dir
        if not _inside(os.path.realpath(target), real_release):
            raise ReleaseError(f"dest {art.dest!r} resolves outside the release (through a symlink)")
        os.makedirs(target, exist_ok=True)
        unpack_archive(local, target, subdir=art.subdir, label=redact_uri(art.uri))
    return fetched


def _mkdtemp(parent: str, prefix: str) -> str:
    for _attempt in range(100):
        path = os.path.join(parent, prefix + secrets.token_hex(4))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise ReleaseError(f"cannot create a temporary directory in {parent}")


def _discard(path: str, parent: str) -> None:
    """Remove a release directory: rename it out of the way first so it disappears at once."""
    if not os.path.lexists(path):
        return
    doomed = os.path.join(parent, f"{TMP_PREFIX}del-{os.path.basename(path)}-{secrets.token_hex(4)}")
    os.rename(path, doomed)
    _rmtree(doomed)
