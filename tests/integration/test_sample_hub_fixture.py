"""Tests of sample_hub (tests/fixtures/sample_hub): test fixture of unistra.itop, not a product.

The build: two builds give the same sha256, each archive's requirements.lock pins every wheel it holds by hash, and
1.0.0's wheel knows migration 1 only. Then, in ONE throwaway systemd container of the lab image with Debian's
postgresql, rabbitmq-server and python3-venv: the venvs of hub 1.0.0, hub 2.0.0 and sample_worker 1.0.0 are built with
the exact offline command the deployment runs; two ``sample-hub-migrate`` at once (one migrates, the other finds it
done); gunicorn serves 1.0.0 on a unix socket; ``/health`` says what it checked; a ticket is posted, read back, and its
event recorded by a real sample_worker; ``/boom`` reaches a small Sentry endpoint with the release and environment;
2.0.0 migrates to schema 2 while 1.0.0 still serves (and reports the mismatch), then serves priorities; a migration
failing after its DDL leaves the schema at 1 with no priority column.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The worker fixture's test holds the lab helpers and the deployment's side of the Celery contract (config module,
# lifecycle declaration, venv command): the hub is tested against exactly that, not a copy of it.
from test_sample_worker_fixture import (
    APT_CACHE,
    CONFIG_MODULE,
    DECLARE,
    IMAGE,
    VENV_COMMAND,
    Lab,
    _docker_ready,
)
from test_sample_worker_fixture import (
    ENV as WORKER_ENV,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ARCHIVES = {"1.0.0": "sample-hub-1.0.0.tar.gz", "2.0.0": "sample-hub-2.0.0.tar.gz"}
NOTICE = "test fixture of unistra.itop, not a product"
HEALTH_KEYS = {"status", "release", "version", "schema", "expected_schema", "db", "broker"}
SENTRY = {"SENTRY_DSN": "http://public@127.0.0.1:9000/1", "SENTRY_ENVIRONMENT": "lab"}
HUB_ENV = {
    "CELERY_CONFIG_MODULE": WORKER_ENV["CELERY_CONFIG_MODULE"],
    "PYTHONPATH": WORKER_ENV["PYTHONPATH"],
    "CELERY_BROKER_URL": WORKER_ENV["CELERY_BROKER_URL"],
    "SAMPLE_HUB_DATABASE_URL": "postgresql://sh:sh@127.0.0.1:5432/sh",
}

# An HTTP client over gunicorn's unix socket: one JSON line {status, release (the response header), body}.
CLIENT = '''"""HTTP over a unix socket for the sample_hub test: test fixture of unistra.itop, not a product."""
import http.client, json, socket, sys


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path):
        super().__init__("localhost", timeout=20)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


socket_path, method, path = sys.argv[1:4]
body = sys.argv[4] if len(sys.argv) > 4 else None
conn = UnixConnection(socket_path)
conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
response = conn.getresponse()
data = response.read()
print(json.dumps({"status": response.status, "release": response.getheader("X-Unistra-Release"),
                  "body": json.loads(data) if data else None}))
'''

# The small Sentry endpoint: every envelope it receives, decompressed, in DIR/NNNN.envelope.
SENTRY_SERVER = '''"""A Sentry envelope sink for the sample_hub test: test fixture of unistra.itop, not a product."""
import gzip, http.server, pathlib, sys

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        (out / f"{len(list(out.iterdir())):04d}.envelope").write_bytes(data)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", 9000), Sink).serve_forever()
'''

# /health of 1.0.0 through Flask's test client, with a database and a broker that do not answer.
HEALTH_UNREACHABLE = """import json
from sample_hub.wsgi import app
response = app.test_client().get("/health")
print(json.dumps({"status": response.status_code, "body": response.get_json()}))
"""


def _build(script: Path, outdir: Path) -> str:
    result = subprocess.run([sys.executable, str(script), str(outdir)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two builds of the hub into two directories (the first may download wheels into the cache)."""
    root = tmp_path_factory.mktemp("sample-hub-builds")
    _build(FIXTURES / "sample_hub" / "build.py", root / "a")
    second_output = _build(FIXTURES / "sample_hub" / "build.py", root / "b")
    return root / "a", root / "b", second_output


@pytest.mark.slow
def test_build_is_deterministic(builds: tuple[Path, Path, str]) -> None:
    first, second, output = builds
    sums = json.loads((first / "checksums.json").read_text())
    assert sums == json.loads((second / "checksums.json").read_text()), output
    assert set(sums) == set(ARCHIVES.values())
    for name, digest in sums.items():
        assert hashlib.sha256((first / name).read_bytes()).hexdigest() == digest
    assert sums[ARCHIVES["1.0.0"]] != sums[ARCHIVES["2.0.0"]]
    assert "0 downloaded now" in output, output


def _wheelhouse(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        assert {m.name.split("/")[0] for m in members} == {"wheelhouse"}
        return {m.name.removeprefix("wheelhouse/"): tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(ARCHIVES))
def test_lock_pins_every_wheel_and_the_migrations_of_the_version(builds: tuple[Path, Path, str], version: str) -> None:
    files = _wheelhouse(builds[0] / ARCHIVES[version])
    pinned = {}
    for line in files.pop("requirements.lock").decode().splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"([a-z0-9-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
            assert match, line
            pinned[match[1]] = (match[2], match[3])
    wheels = {}
    for name, data in files.items():
        dist, wheel_version = name.split("-")[:2]
        wheels[re.sub(r"[-_.]+", "-", dist).lower()] = (wheel_version, hashlib.sha256(data).hexdigest())
    assert wheels == pinned
    assert pinned["sample-hub"][0] == version
    assert pinned["gunicorn"][0] == "27.0.1" and pinned["celery"][0] == "5.7.0" and pinned["flask"][0] == "3.1.3"
    with zipfile.ZipFile(io.BytesIO(files[f"sample_hub-{version}-py3-none-any.whl"])) as whl:
        names = set(whl.namelist())
        init = whl.read("sample_hub/__init__.py").decode()
        entry_points = whl.read(f"sample_hub-{version}.dist-info/entry_points.txt").decode()
    migrations = sorted(name for name in names if name.startswith("sample_hub/migrations/"))
    expected = ["sample_hub/migrations/0001_tickets.sql"]
    if version == "2.0.0":
        expected.append("sample_hub/migrations/0002_priority.sql")
    assert migrations == expected
    assert f'__version__ = "{version}"' in init and NOTICE in init
    assert "sample-hub-migrate = sample_hub.migrate:main" in entry_points


def _events(lab: Lab, directory: str) -> list[dict[str, Any]]:
    """The error events among the envelopes the Sentry sink received."""
    found = []
    for envelope in lab.sh(f"cat {directory}/*.envelope 2>/dev/null; true").split("\n"):
        try:
            item = json.loads(envelope)
        except ValueError:
            continue
        if isinstance(item, dict) and "exception" in item:
            found.append(item)
    return found


def _drive(lab: Lab, hub_artifacts: Path, worker_artifacts: Path) -> dict[str, Any]:
    """Everything the lab tests look at, gathered in one pass through one container."""
    seen: dict[str, Any] = {"timings": lab.timings}
    lap = lab.lap

    def env(release: str, **more: str) -> dict[str, str]:
        return {**HUB_ENV, "UNISTRA_RELEASE_ID": release, **more}

    def call(release: str, method: str, path: str, body: Any = None) -> Any:
        args = f"/srv/sh/run/{release}.sock {method} {path}"
        return lab.json(f"python3 /srv/sh/client.py {args} " + (f"'{json.dumps(body)}'" if body else ""))

    lab.start_services()

    lab.sh("mkdir -p /srv/sh /srv/sw")
    subprocess.run(["docker", "cp", f"{hub_artifacts}/.", f"{lab.name}:/srv/sh/artifacts"], check=True, timeout=60)
    subprocess.run(["docker", "cp", f"{worker_artifacts}/.", f"{lab.name}:/srv/sw/artifacts"], check=True, timeout=60)
    venvs = {
        "/srv/sh/releases/r1": "/srv/sh/artifacts/sample-hub-1.0.0.tar.gz",
        "/srv/sh/releases/r2": "/srv/sh/artifacts/sample-hub-2.0.0.tar.gz",
        "/srv/sw/releases/w1": "/srv/sw/artifacts/sample-worker-1.0.0.tar.gz",
    }
    # the three at once; `wait PID` gives each one's exit code (and set -e fails on the first that failed)
    build = "".join(
        f"(mkdir -p {root} && tar -C {root} -xzf {archive} && cd {root} && "
        + VENV_COMMAND.format(venv="venv", wh="wheelhouse")
        + f" > {root}/venv.log 2>&1) & pids+=($!); "
        for root, archive in venvs.items()
    )
    lab.sh(f'pids=(); {build} for pid in "${{pids[@]}}"; do wait "$pid"; done', timeout=300)
    seen["pip_check"] = {root.rsplit("/", 1)[1]: lab.sh(f"tail -1 {root}/venv.log").strip() for root in venvs}
    seen["pip_version"] = lab.sh("/srv/sh/releases/r1/venv/bin/pip --version")
    lap("three venvs")

    r1, r2, w1 = "/srv/sh/releases/r1/venv/bin", "/srv/sh/releases/r2/venv/bin", "/srv/sw/releases/w1/venv/bin"
    lab.put("/srv/sw/conf/sw_celeryconfig.py", CONFIG_MODULE)
    lab.put("/srv/sw/conf/declare.py", DECLARE)
    lab.put("/srv/sh/client.py", CLIENT)
    lab.put("/srv/sh/sentry.py", SENTRY_SERVER)
    lab.put("/srv/sh/health_unreachable.py", HEALTH_UNREACHABLE)
    lab.sh(
        "useradd --system --no-create-home sh && useradd --system --no-create-home sw"
        " && mkdir -p /srv/sh/run && chown sh /srv/sh/run"
        " && for u in sh sw; do runuser -u postgres -- createuser $u"
        " && runuser -u postgres -- psql -q -c \"ALTER ROLE $u PASSWORD '$u'\""
        " && runuser -u postgres -- createdb -O $u $u; done"
        " && runuser -u postgres -- createdb -O sh shfail"
    )
    lab.sh(f"{w1}/python /srv/sw/conf/declare.py && {w1}/sample-worker-initdb", WORKER_ENV)
    lab.sh("systemd-run --unit sh-sentry python3 /srv/sh/sentry.py /srv/sh/sentry")
    seen["status_before"] = lab.json(f"{r1}/sample-hub-migrate --status", env("r1"))
    seen["migrate_r1"] = sorted(
        lab.sh(
            f"{r1}/sample-hub-migrate > /tmp/m1 & a=$!; {r1}/sample-hub-migrate > /tmp/m2 & b=$!;"
            " wait $a; wait $b; cat /tmp/m1 /tmp/m2",
            env("r1"),
        ).splitlines()
    )
    lap("db, broker lifecycle, migrate r1")

    def start_web(release: str) -> None:
        env_file = "".join(f"{key}={value}\n" for key, value in env(release, SENTRY_RELEASE=release, **SENTRY).items())
        lab.put(f"/srv/sh/{release}.env", env_file)
        lab.sh(
            f"systemd-run --unit sh-web-{release} -p User=sh -p EnvironmentFile=/srv/sh/{release}.env"
            f" /srv/sh/releases/{release}/venv/bin/gunicorn --bind unix:/srv/sh/run/{release}.sock --workers 2"
            " sample_hub.wsgi:app"
        )
        lab.wait_for(
            f"gunicorn of {release} answers /health",
            lambda: lab.sh(f"python3 /srv/sh/client.py /srv/sh/run/{release}.sock GET /health", check=False),
            timeout=30,
            unit=f"sh-web-{release}",
        )

    start_web("r1")
    seen["health_r1"] = call("r1", "GET", "/health")
    seen["post_r1"] = call("r1", "POST", "/tickets", {"title": "printer on fire", "description": "3rd floor"})
    ticket_id = seen["post_r1"]["body"]["id"]
    seen["get_r1"] = call("r1", "GET", f"/tickets/{ticket_id}")
    seen["missing_r1"] = call("r1", "GET", "/tickets/999999")
    seen["priority_r1"] = call("r1", "POST", "/tickets", {"title": "urgent", "priority": 1})
    seen["bad_r1"] = call("r1", "POST", "/tickets", {"description": "no title"})
    seen["unreachable"] = lab.json(
        f"{r1}/python /srv/sh/health_unreachable.py",
        env(
            "r1", SAMPLE_HUB_DATABASE_URL="postgresql://sh:sh@127.0.0.1:9/sh", CELERY_BROKER_URL="amqp://127.0.0.1:9//"
        ),
    )
    seen["boom_r1"] = call("r1", "GET", "/boom")
    lap("serve r1")

    worker_env = {**WORKER_ENV, "UNISTRA_RELEASE_ID": "w1"}
    lab.put("/srv/sh/w1.env", "".join(f"{key}={value}\n" for key, value in worker_env.items()))
    lab.sh(
        f"systemd-run --unit sw-worker -p User=sw -p EnvironmentFile=/srv/sh/w1.env {w1}/celery -A sample_worker.app"
        " worker -Q tickets -n w1@%h -c 2"
    )

    def recorded(prefix_count: int) -> Any:
        report = lab.json(f"{w1}/sample-worker-report --prefix ticket --ids", WORKER_ENV)
        return report if report["processed"] >= prefix_count else None

    seen["worker_r1"] = lab.wait_for("the worker records the ticket", lambda: recorded(1), timeout=60, unit="sw-worker")
    seen["sentry_events"] = lab.wait_for(
        "the Sentry endpoint receives /boom", lambda: _events(lab, "/srv/sh/sentry"), timeout=20, unit="sh-web-r1"
    )
    lap("worker, sentry")

    # 2.0.0's migration while 1.0.0 serves: 1.0.0 keeps serving (it reads only its columns) and says the schema moved
    seen["migrate_r2"] = lab.json(f"{r2}/sample-hub-migrate", env("r2"))
    seen["health_r1_on_2"] = call("r1", "GET", "/health")
    seen["list_r1_on_2"] = call("r1", "GET", "/tickets")
    seen["post_r1_on_2"] = call("r1", "POST", "/tickets", {"title": "old release, new schema"})
    start_web("r2")
    seen["health_r2"] = call("r2", "GET", "/health")
    seen["post_r2"] = call("r2", "POST", "/tickets", {"title": "with priority", "priority": 1})
    seen["list_r2"] = call("r2", "GET", "/tickets")
    seen["worker_r2"] = lab.wait_for("the worker records 3 tickets", lambda: recorded(3), timeout=60, unit="sw-worker")
    lap("upgrade to 2.0.0")

    # a migration failing after its DDL, on a fresh database at schema 1
    fail_env = env("r2", SAMPLE_HUB_DATABASE_URL="postgresql://sh:sh@127.0.0.1:5432/shfail")
    columns = "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns"
    columns += " WHERE table_name = 'tickets'"
    seen["fail_setup"] = lab.json(f"{r1}/sample-hub-migrate", fail_env)
    seen["fail_flag"] = lab.sh(f"{r2}/sample-hub-migrate --fail-after-ddl 2>&1 || echo exit $?", fail_env)
    seen["fail_env"] = lab.sh(
        f"{r2}/sample-hub-migrate 2>&1 || echo exit $?", {**fail_env, "SAMPLE_HUB_FAIL_MIGRATION": "1"}
    )
    seen["fail_status"] = lab.json(f"{r2}/sample-hub-migrate --status", fail_env)
    seen["fail_columns"] = lab.sh('psql "$SAMPLE_HUB_DATABASE_URL" -At -c "$Q"', {**fail_env, "Q": columns}).strip()
    seen["fail_then_ok"] = lab.json(f"{r2}/sample-hub-migrate", fail_env)
    lap("failing migration")
    return seen


@pytest.fixture(scope="module")
def lab_run(builds: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not _docker_ready():
        pytest.skip(f"docker or the lab image {IMAGE} is not available (make setup builds it)")
    worker_artifacts = tmp_path_factory.mktemp("sample-worker-for-hub")
    _build(FIXTURES / "sample_worker" / "build.py", worker_artifacts)
    name = f"sample-hub-fixture-{uuid.uuid4().hex[:8]}"
    APT_CACHE.mkdir(parents=True, exist_ok=True)
    run = ["docker", "run", "-d", "--name", name, "--cap-add", "SYS_ADMIN", "--cgroupns=private"]
    run += [
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "-v",
        f"{APT_CACHE}:/var/cache/apt/archives",
        IMAGE,
        "/sbin/init",
    ]
    subprocess.run(run, capture_output=True, check=True, timeout=60)
    try:
        seen = _drive(Lab(name), builds[0], worker_artifacts)
        print(f"sample_hub lab timings (s): {seen['timings']}")
        yield seen
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False, timeout=60)


@pytest.mark.docker
@pytest.mark.slow
def test_venvs_build_offline_with_debian_pip(lab_run: dict[str, Any]) -> None:
    assert lab_run["pip_version"].startswith("pip 23.0.1 "), lab_run["pip_version"]
    assert lab_run["pip_check"] == dict.fromkeys(("r1", "r2", "w1"), "No broken requirements found.")


@pytest.mark.docker
@pytest.mark.slow
def test_two_migrations_at_once_migrate_once(lab_run: dict[str, Any]) -> None:
    assert lab_run["status_before"] == {"schema": 0, "expected": 1}
    results = sorted((json.loads(line) for line in lab_run["migrate_r1"]), key=lambda r: len(r["applied"]))
    # one applied migration 1; the other found it done under the lock (it may have seen schema 0 or 1 at its start,
    # depending on when the first one took the lock)
    assert results[1] == {"from": 0, "to": 1, "applied": [1]}
    assert results[0]["applied"] == [] and results[0]["to"] == 1 and results[0]["from"] in (0, 1)


@pytest.mark.docker
@pytest.mark.slow
def test_health_says_what_it_checked(lab_run: dict[str, Any]) -> None:
    health = lab_run["health_r1"]
    assert (health["status"], health["release"]) == (200, "r1")
    assert health["body"] == {
        "status": "ok",
        "release": "r1",
        "version": "1.0.0",
        "schema": 1,
        "expected_schema": 1,
        "db": "ok",
        "broker": "ok",
    }
    unreachable = lab_run["unreachable"]
    assert unreachable["status"] == 503
    body = unreachable["body"]
    assert set(body) >= HEALTH_KEYS and body["status"] == "degraded" and body["failed"] == ["db", "broker"]
    assert body["db"].startswith("error: ") and body["broker"].startswith("error: ") and body["schema"] is None


@pytest.mark.docker
@pytest.mark.slow
def test_a_ticket_is_stored_served_and_recorded_by_the_worker(lab_run: dict[str, Any]) -> None:
    post = lab_run["post_r1"]
    assert post["status"] == 201
    ticket = post["body"]
    assert set(ticket) == {"id", "title", "description", "release", "created_at"}
    assert (ticket["title"], ticket["description"], ticket["release"]) == ("printer on fire", "3rd floor", "r1")
    assert lab_run["get_r1"] == {"status": 200, "release": "r1", "body": ticket}
    assert lab_run["missing_r1"]["status"] == 404
    assert lab_run["priority_r1"]["status"] == 400  # 1.0.0 knows no priority
    assert "priority" in lab_run["priority_r1"]["body"]["error"]
    assert lab_run["bad_r1"]["status"] == 400
    report = lab_run["worker_r1"]
    assert report["ids"] == [f"ticket-{ticket['id']}"] and report["by_release"] == {"w1": 1}


@pytest.mark.docker
@pytest.mark.slow
def test_an_exception_reaches_sentry_with_release_and_environment(lab_run: dict[str, Any]) -> None:
    assert lab_run["boom_r1"]["status"] == 500
    assert lab_run["boom_r1"]["body"] == {"error": "internal error", "release": "r1"}
    (event,) = lab_run["sentry_events"]
    assert (event["release"], event["environment"]) == ("r1", "lab")
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"


@pytest.mark.docker
@pytest.mark.slow
def test_upgrade_migrates_to_2_while_1_still_serves(lab_run: dict[str, Any]) -> None:
    assert lab_run["migrate_r2"] == {"from": 1, "to": 2, "applied": [2]}
    # a release serves on the next one's (additive) schema, and says which schema it found
    old = lab_run["health_r1_on_2"]
    assert (old["status"], old["body"]["status"]) == (200, "ok")
    assert "failed" not in old["body"] and (old["body"]["schema"], old["body"]["expected_schema"]) == (2, 1)
    assert old["body"]["db"] == old["body"]["broker"] == "ok"
    assert lab_run["list_r1_on_2"]["status"] == 200
    assert all("priority" not in ticket for ticket in lab_run["list_r1_on_2"]["body"])
    assert lab_run["post_r1_on_2"]["status"] == 201
    new = lab_run["health_r2"]
    assert (new["status"], new["body"]["status"], new["body"]["version"]) == (200, "ok", "2.0.0")
    assert (new["body"]["schema"], new["body"]["expected_schema"], new["body"]["release"]) == (2, 2, "r2")
    post = lab_run["post_r2"]
    assert post["status"] == 201 and post["body"]["priority"] == 1 and post["body"]["release"] == "r2"
    tickets = lab_run["list_r2"]["body"]
    assert [(t["priority"], t["release"]) for t in tickets] == [(3, "r1"), (3, "r1"), (1, "r2")]
    assert lab_run["worker_r2"]["ids"] == sorted(f"ticket-{t['id']}" for t in tickets)


@pytest.mark.docker
@pytest.mark.slow
def test_a_failed_migration_leaves_the_schema_as_it_was(lab_run: dict[str, Any]) -> None:
    assert lab_run["fail_setup"] == {"from": 0, "to": 1, "applied": [1]}
    for output in (lab_run["fail_flag"], lab_run["fail_env"]):
        message, code = output.strip().splitlines()
        assert code == "exit 1"
        assert message.startswith("sample-hub-migrate: migration 2 (priority) failed after its DDL")
    assert lab_run["fail_status"] == {"schema": 1, "expected": 2}
    assert lab_run["fail_columns"] == "created_at,description,id,release,title"
    assert lab_run["fail_then_ok"] == {"from": 1, "to": 2, "applied": [2]}
