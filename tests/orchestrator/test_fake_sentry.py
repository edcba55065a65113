"""The small Sentry endpoint of the tests (tests/fixtures/fake_sentry.py) against what the real clients send:
sentry-sdk 2.x events (envelope and store), and the server run as a script with a record file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
from fake_sentry import fake_sentry, parse_envelope

HERE = Path(__file__).resolve().parent
FAKE_SENTRY = HERE.parent / "fixtures" / "fake_sentry.py"
SDK_VERSION = "2.75.0"
SAMPLE_WORKER_BUILD = HERE.parent / "fixtures" / "sample_worker" / "build.py"
# The wheels the sample worker's build downloads once (tests/fixtures/sample_worker/build.py).
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unistra-itop" / "wheels"
SDK_WHEELS = (f"sentry_sdk-{SDK_VERSION}-", "urllib3-", "certifi-")

# Run in a child Python whose path has sentry-sdk: a real exception, reported and flushed before exit.
REPORT = """
import sys, sentry_sdk
sentry_sdk.init(dsn=sys.argv[1], release=sys.argv[2], environment=sys.argv[3], default_integrations=False)
try:
    raise RuntimeError("ticket sync failed for T-42")
except RuntimeError:
    event_id = sentry_sdk.capture_exception()
sentry_sdk.flush(timeout=10)
print(event_id, sentry_sdk.VERSION)
"""


def _post(url: str, body: bytes, headers: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _event(release: str, environment: str) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4().hex,
        "release": release,
        "environment": environment,
        "level": "error",
        "exception": {"values": [{"type": "ValueError", "value": "bad ticket"}]},
    }


@pytest.fixture(scope="module")
def sdk_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory to put on PYTHONPATH that has sentry-sdk, installing nothing in the project's venv."""
    target = tmp_path_factory.mktemp("sentry-sdk")
    if request.param == "cache":
        wheels = [next(iter(sorted(WHEEL_CACHE.glob(f"{prefix}*.whl"))), None) for prefix in SDK_WHEELS]
        if None in wheels:  # a new machine: the sample worker's build downloads them into the cache (a few seconds)
            subprocess.run(
                [sys.executable, str(SAMPLE_WORKER_BUILD), str(tmp_path_factory.mktemp("sample-worker"))],
                check=True,
                capture_output=True,
            )
            wheels = [next(iter(sorted(WHEEL_CACHE.glob(f"{prefix}*.whl"))), None) for prefix in SDK_WHEELS]
        assert None not in wheels, f"sentry-sdk {SDK_VERSION} and its wheels are not in {WHEEL_CACHE}"
        for wheel in wheels:  # pure-Python wheels: unzipped, they are importable as they are
            assert wheel is not None
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
    else:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), f"sentry-sdk=={SDK_VERSION}"],
            check=True,
        )
    return str(target)


@pytest.mark.parametrize("sdk_path", ["cache", pytest.param("pip", marks=pytest.mark.slow)], indirect=True)
def test_sentry_sdk_event_arrives_with_release_and_environment(sdk_path: str) -> None:
    with fake_sentry() as sentry:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {sdk_path!r})\n{REPORT}",
             sentry.dsn(project=7, key="hubkey"), "2026.11.28-1", "pprd"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        event_id, version = proc.stdout.split()
        assert version == SDK_VERSION
        recorded = json.loads(urllib.request.urlopen(f"{sentry.url}_recorded", timeout=10).read())
    assert recorded["events"] == sentry.events
    [event] = sentry.events
    assert event["event_id"] == event_id
    assert (event["release"], event["environment"]) == ("2026.11.28-1", "pprd")
    assert event["exceptions"] == [{"type": "RuntimeError", "value": "ticket sync failed for T-42"}]
    assert (event["endpoint"], event["project"], event["public_key"]) == ("envelope", "7", "hubkey")
    assert sentry.calls == []


def test_gzip_envelope_with_lengths_and_store_endpoint() -> None:
    first, second, third = _event("r1", "dev"), _event("r2", "test"), _event("r3", "prod")
    attachment = b"line one\nline two\n"
    envelope = b"\n".join(
        [
            json.dumps({"event_id": first["event_id"], "sent_at": "2026-12-02T00:00:00Z"}).encode(),
            json.dumps({"type": "event", "length": len(json.dumps(first))}).encode(),
            json.dumps(first).encode(),
            json.dumps({"type": "attachment", "length": len(attachment), "filename": "log.txt"}).encode(),
            attachment,
            json.dumps({"type": "event"}).encode(),  # no length: the payload runs to the end of the line
            json.dumps(second).encode(),
        ]
    )
    with fake_sentry() as sentry:
        reply = _post(f"{sentry.url}api/3/envelope/", gzip.compress(envelope),
                      {"Content-Encoding": "gzip", "Content-Type": "application/x-sentry-envelope",
                       "X-Sentry-Auth": "Sentry sentry_version=7, sentry_key=k1, sentry_client=test/1"})  # fmt: skip
        assert reply == {"id": first["event_id"]}
        _post(f"{sentry.url}api/3/store/?sentry_key=k2", json.dumps(third).encode(), {})
    assert [(e["release"], e["environment"], e["endpoint"], e["public_key"]) for e in sentry.events] == [
        ("r1", "dev", "envelope", "k1"),
        ("r2", "test", "envelope", "k1"),
        ("r3", "prod", "store", "k2"),
    ]
    assert sentry.events[2]["exceptions"] == [{"type": "ValueError", "value": "bad ticket"}]
    _, items = parse_envelope(envelope)
    assert [h["type"] for h, _ in items] == ["event", "attachment", "event"] and items[1][1] == attachment


def test_outage_mode_answers_every_request_with_the_status() -> None:
    with fake_sentry(fail_status=503) as sentry:
        request = urllib.request.Request(f"{sentry.url}api/0/organizations/u/releases/", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(request, timeout=10)
    assert failed.value.code == 503
    assert [c["method"] for c in sentry.calls] == ["POST"]


def test_runs_as_a_script_with_the_system_python_and_a_record_file(tmp_path: Path) -> None:
    record = tmp_path / "sentry.json"
    proc = subprocess.Popen(
        ["python3", str(FAKE_SENTRY), "--port", "0", "--record", str(record)],
        stdout=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        event = _event("r9", "lab")
        _post(f"{url}api/1/store/", json.dumps(event).encode(), {})
        for _ in range(50):
            recorded = json.loads(record.read_text())
            if recorded["events"]:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [(e["event_id"], e["release"], e["environment"]) for e in recorded["events"]] == [
        (event["event_id"], "r9", "lab")
    ]
