# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release artifacts and the per-host download cache: what an artifact is (URI, sha256, dest, subdir), fetching it
from ``file://``, ``https://`` or ``s3://`` (boto3 only when needed) and verifying its checksum before any use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlparse

from ansible_collections.unistra.itop.plugins.module_utils.fsutil import TMP_PREFIX, write_json_atomic
from ansible_collections.unistra.itop.plugins.module_utils.rules import (
    SHA256_RE,
    URI_RE,
    URI_SCHEMES,
    MissingLibraryError,
    ReleaseError,
    redact_uri,
    safe_relpath,
)

CHUNK = 1024 * 1024
HTTP_TIMEOUT = 60
DEFAULT_CACHE_DIR = "/var/cache/unistra-itop/artifacts"


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
        if not URI_RE.match(uri):
            raise ReleaseError(
                f"artifact {redact_uri(uri)}: unsupported scheme {urlparse(uri).scheme!r}; use "
                f"{', '.join(s + '://' for s in URI_SCHEMES)}"
            )
        sha = data.get("sha256")
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
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
