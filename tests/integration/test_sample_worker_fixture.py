"""Tests of sample_worker (tests/fixtures/sample_worker): test fixture of unistra.itop, not a product.

The build: two builds give the same sha256, and each archive's requirements.lock pins every wheel it holds, by hash.
Then, in ONE throwaway systemd container of the lab image with Debian's rabbitmq-server, postgresql and python3-venv:
the release venvs are built with the exact offline command the deployment runs (Debian 12's pip 23.0.1), the
message lifecycle is declared as the rabbitmq role would (work queue dead-lettering to ``<q>.dlx``, a retry queue
with a TTL that routes back, a dead-letter queue), a real worker consumes 20 events and ``sample-worker-report``
and ``rabbitmqctl list_queues`` show what happened: every event processed once, each failing event tried
max_retries + 1 times and sitting in ``tickets.dead``. Release 2.0.0 then records its own version and release, and a
second delivery of an id shows as ``processed_twice``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sample_worker"
IMAGE = "unistra-itop/debian12-systemd:latest"
APT_CACHE = Path(os.environ.get("SAMPLE_WORKER_APT_CACHE", "/var/cache/unistra-itop/apt/sample-worker-fixture"))
ARCHIVES = {"1.0.0": "sample-worker-1.0.0.tar.gz", "2.0.0": "sample-worker-2.0.0.tar.gz"}
MAX_RETRIES = 3
# 20 events: every 7th fails (7, 14), every other 5th is slow (5, 10, 15, 20), the other 14 are recorded at once
COUNT, SLOW_EVERY, FAIL_EVERY = 20, 5, 7
FAILING = [f"x-{n:06d}" for n in range(FAIL_EVERY, COUNT + 1, FAIL_EVERY)]
SLOW_AT_STOP = 8  # seconds: the slow event release 1 still runs when it is told to stop

# What the celery_worker role writes (the test's own copy, as the contract says): the app reads it through
# CELERY_CONFIG_MODULE. Its task_routes must not drop the app's routes.
CONFIG_MODULE = f'''"""Celery configuration of the sample_worker test: test fixture of unistra.itop, not a product."""
import os

from kombu import Exchange, Queue

broker_url = os.environ["CELERY_BROKER_URL"]
task_acks_late = True
worker_prefetch_multiplier = 1
task_reject_on_worker_lost = True
task_routes = {{"unrelated.task": {{"queue": "elsewhere"}}}}
unistra_work_queues = {{
    name: {{
        "name": name,
        "vhost": "/",
        "exchange": name,
        "exchange_type": "direct",
        "routing_key": name,
        "queue_arguments": {{"x-dead-letter-exchange": f"{{name}}.dlx", "x-dead-letter-routing-key": name}},
        "retry_exchange": f"{{name}}.retry",
        "retry_queue": f"{{name}}.retry",
        "dead_letter_exchange": f"{{name}}.dlx",
        "dead_letter_queue": f"{{name}}.dead",
        "max_retries": {MAX_RETRIES},
    }}
    for name in ("tickets", "slow")
}}
task_queues = [
    Queue(q["name"], Exchange(q["exchange"], type=q["exchange_type"]), routing_key=q["routing_key"],
          queue_arguments=q["queue_arguments"])
    for q in unistra_work_queues.values()
]
'''

# The message lifecycle, declared before any worker starts (the rabbitmq role's job in a deployment).
DECLARE = '''"""Declare the message lifecycle of the sample_worker test: test fixture of unistra.itop, not a product."""
import importlib
import os

from kombu import Connection, Exchange, Queue

conf = importlib.import_module(os.environ["CELERY_CONFIG_MODULE"])
with Connection(os.environ["CELERY_BROKER_URL"]) as conn:
    channel = conn.default_channel
    for q in conf.unistra_work_queues.values():
        key = q["routing_key"]
        work = Exchange(q["exchange"], type=q["exchange_type"])
        Queue(q["name"], work, routing_key=key, queue_arguments=q["queue_arguments"])(channel).declare()
        retry_args = {"x-message-ttl": 1000, "x-dead-letter-exchange": q["exchange"], "x-dead-letter-routing-key": key}
        retry = Exchange(q["retry_exchange"], type="direct")
        Queue(q["retry_queue"], retry, routing_key=key, queue_arguments=retry_args)(channel).declare()
        dead = Exchange(q["dead_letter_exchange"], type="direct")
        Queue(q["dead_letter_queue"], dead, routing_key=key)(channel).declare()
'''

# What the app made of that configuration, and Sentry's set-up when a DSN is given.
PROBE = """import json, sentry_sdk
from sample_worker.app import app
from sample_worker import __version__
route = app.amqp.router.route
names = ("sample_worker.record_event", "sample_worker.slow_event", "sample_worker.failing_event")
options = sentry_sdk.get_client().options
print(json.dumps({
    "version": __version__,
    "queues": {name: route({}, name)["queue"].name for name in names},
    "unrelated": route({}, "unrelated.task")["queue"].name,
    "confirm_publish": app.conf.broker_transport_options.get("confirm_publish"),
    "sentry": [sentry_sdk.is_initialized(), options.get("release"), options.get("environment")],
}))
"""

ENV = {
    "CELERY_CONFIG_MODULE": "sw_celeryconfig",
    "PYTHONPATH": "/srv/sw/conf",
    "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
    "SAMPLE_WORKER_DATABASE_URL": "postgresql://sw:sw@127.0.0.1:5432/sw",
}
VENV_COMMAND = (
    "python3 -m venv {venv} && {venv}/bin/pip install --no-index --find-links {wh} --require-hashes"
    " --only-binary :all: -r {wh}/requirements.lock && {venv}/bin/pip check"
)


def _build(outdir: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(FIXTURE / "build.py"), str(outdir)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two builds into two directories (the first may download the dependency wheels into the cache)."""
    root = tmp_path_factory.mktemp("sample-worker-builds")
    _build(root / "a")
    started = time.monotonic()
    second_output = _build(root / "b")
    return root / "a", root / "b", f"{second_output}second build: {time.monotonic() - started:.1f} s"


@pytest.mark.slow
def test_build_is_deterministic(builds: tuple[Path, Path, str]) -> None:
    first, second, output = builds
    sums = json.loads((first / "checksums.json").read_text())
    assert sums == json.loads((second / "checksums.json").read_text()), output
    assert set(sums) == set(ARCHIVES.values())
    for name, digest in sums.items():
        assert hashlib.sha256((first / name).read_bytes()).hexdigest() == digest
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert sums[ARCHIVES["1.0.0"]] != sums[ARCHIVES["2.0.0"]]
    assert "0 downloaded now" in output, output  # the second build ran from the cache


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(ARCHIVES))
def test_lock_pins_every_wheel_by_hash(builds: tuple[Path, Path, str], version: str) -> None:
    with tarfile.open(builds[0] / ARCHIVES[version]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        assert {m.name.split("/")[0] for m in members} == {"wheelhouse"}
        files = {m.name.removeprefix("wheelhouse/"): tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    lock = files.pop("requirements.lock").decode()
    pinned = {}
    for line in lock.splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"([a-z0-9-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
            assert match, line
            pinned[match[1]] = (match[2], match[3])
    wheels = {}
    for name, data in files.items():
        assert name.endswith(".whl"), name
        dist, wheel_version = name.split("-")[:2]
        wheels[re.sub(r"[-_.]+", "-", dist).lower()] = (wheel_version, hashlib.sha256(data).hexdigest())
    assert wheels == pinned
    assert pinned["sample-worker"][0] == version
    assert {"celery", "kombu", "psycopg", "psycopg-binary", "sentry-sdk"} <= set(pinned)
    assert pinned["celery"][0] == "5.7.0" and pinned["kombu"][0] == "5.7.0" and pinned["sentry-sdk"][0] == "2.75.0"
    assert pinned["psycopg"][0] == pinned["psycopg-binary"][0] == "3.3.9"
    with zipfile.ZipFile(io.BytesIO(files[f"sample_worker-{version}-py3-none-any.whl"])) as whl:
        init = whl.read("sample_worker/__init__.py").decode()
        entry_points = whl.read(f"sample_worker-{version}.dist-info/entry_points.txt").decode()
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in whl.infolist())
    assert f'__version__ = "{version}"' in init
    assert "test fixture of unistra.itop, not a product" in init
    for script in ("sample-worker-initdb", "sample-worker-produce", "sample-worker-report"):
        assert f"{script} = sample_worker.cli:" in entry_points


class Lab:
    """One systemd container of the lab image; ``sh`` runs a bash script in it (``set -euo pipefail``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.timings: dict[str, float] = {}
        self._clock = time.monotonic()

    def lap(self, step: str) -> None:
        """Record how long the step since the last lap took."""
        self.timings[step] = round(time.monotonic() - self._clock, 1)
        self._clock = time.monotonic()

    def start_services(self) -> None:
        """Wait for systemd, then install and start RabbitMQ, PostgreSQL and python3-venv (timed as ``apt``)."""
        self.wait_for(
            "systemd is running",
            lambda: self.sh("systemctl is-system-running", check=False).strip() in {"running", "degraded"},
            timeout=30,
            unit="init.scope",
        )
        self.sh(
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
            " rabbitmq-server postgresql python3-venv && systemctl start rabbitmq-server postgresql"
            " && rabbitmqctl await_startup -q",
            timeout=400,
        )
        self.lap("apt")

    def sh(self, script: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> str:
        env_args = [f"--env={key}={value}" for key, value in (env or {}).items()]
        command = ["docker", "exec", *env_args, self.name, "bash", "-euo", "pipefail", "-c", script]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert result.returncode == 0, f"{script}\n-> exit {result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout

    def json(self, script: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self.sh(script, env).strip().splitlines()[-1])

    def put(self, path: str, text: str) -> None:
        command = ["docker", "exec", "-i", self.name, "bash", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}']
        subprocess.run(command, input=text, text=True, check=True, timeout=30)

    def psql(self, query: str) -> str:
        """Rows of ``query`` on the sample's database, one a line, columns separated by ``|``."""
        return self.sh('psql "$SAMPLE_WORKER_DATABASE_URL" -At -F "|" -c "$QUERY"', {**ENV, "QUERY": query})

    def list_queues(self, *columns: str) -> dict[str, list[int]]:
        """{queue: [the columns' values]} as rabbitmqctl reports them."""
        out = self.sh(f"rabbitmqctl list_queues -q --no-table-headers name {' '.join(columns)}")
        rows = (line.split("\t") for line in out.splitlines() if line.strip())
        return {name: [int(value) for value in values] for name, *values in rows}

    def queues(self) -> dict[str, tuple[int, int]]:
        """{queue: (messages, consumers)}."""
        return {name: (values[0], values[1]) for name, values in self.list_queues("messages", "consumers").items()}

    def unacked(self, queue: str) -> int:
        return self.list_queues("messages_unacknowledged").get(queue, [0])[0]

    def wait_for(self, what: str, probe: Any, timeout: float, unit: str) -> Any:
        """Poll probe() until it returns something true; on timeout, fail with the worker unit's journal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.5)
        journal = self.sh(f"journalctl -u {unit} --no-pager | tail -60", check=False)
        pytest.fail(f"{what}: not within {timeout} s; last: {probe()!r}\n{journal}")


def _docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode == 0


def _release_env(release: str) -> dict[str, str]:
    return {**ENV, "UNISTRA_RELEASE_ID": release}


def _start_worker(lab: Lab, release: str, node: str) -> None:
    env_file = "".join(f"{key}={value}\n" for key, value in _release_env(release).items())
    lab.put(f"/srv/sw/{release}.env", env_file)
    lab.sh(
        f"systemd-run --unit sw-worker-{release} -p User=sw -p EnvironmentFile=/srv/sw/{release}.env"
        f" -p KillMode=mixed -p TimeoutStopSec=60 /srv/sw/releases/{release}/venv/bin/celery -A sample_worker.app"
        f" worker -Q tickets,slow -n {node}@%h -c 4 --loglevel INFO"
    )
    ping = f"/srv/sw/releases/{release}/venv/bin/celery -A sample_worker.app inspect ping -d {node}@$(hostname) -t 2"
    lab.wait_for(
        f"worker {node} answers ping",
        lambda: lab.sh(ping, _release_env(release), check=False).count("pong"),
        timeout=40,
        unit=f"sw-worker-{release}",
    )


def _drive(lab: Lab, artifacts: Path) -> dict[str, Any]:
    """Everything the lab tests look at, gathered in one pass through one container."""
    seen: dict[str, Any] = {"timings": lab.timings}
    lap = lab.lap

    lab.start_services()
    lab.sh("mkdir -p /srv/sw")
    subprocess.run(["docker", "cp", f"{artifacts}/.", f"{lab.name}:/srv/sw/artifacts"], check=True, timeout=60)
    seen["pip_check"] = {}
    for release, version in (("r1", "1.0.0"), ("r2", "2.0.0")):
        root = f"/srv/sw/releases/{release}"
        lab.sh(f"mkdir -p {root} && tar -C {root} -xzf /srv/sw/artifacts/{ARCHIVES[version]}")
        out = lab.sh(f"cd {root} && " + VENV_COMMAND.format(venv="venv", wh="wheelhouse"), timeout=300)
        seen["pip_check"][release] = out.strip().splitlines()[-1]
    seen["pip_version"] = lab.sh("/srv/sw/releases/r1/venv/bin/pip --version")
    lap("two venvs")

    r1 = "/srv/sw/releases/r1/venv/bin"
    lab.put("/srv/sw/conf/sw_celeryconfig.py", CONFIG_MODULE)
    lab.put("/srv/sw/conf/declare.py", DECLARE)
    lab.put("/srv/sw/conf/probe.py", PROBE)
    lab.sh(
        "useradd --system --no-create-home sw && runuser -u postgres -- createuser sw"
        " && runuser -u postgres -- psql -q -c \"ALTER ROLE sw PASSWORD 'sw'\""
        " && runuser -u postgres -- createdb -O sw sw"
    )
    seen["initdb"] = lab.sh(
        f"{r1}/sample-worker-initdb > /tmp/i1 & a=$!; {r1}/sample-worker-initdb > /tmp/i2 & b=$!;"
        " wait $a; wait $b; cat /tmp/i1 /tmp/i2",
        _release_env("r1"),
    )
    lab.sh(f"{r1}/python /srv/sw/conf/declare.py", ENV)
    seen["probe"] = lab.json(f"{r1}/python /srv/sw/conf/probe.py", ENV)
    sentry = {"SENTRY_DSN": "http://public@127.0.0.1:9/1", "SENTRY_RELEASE": "r1", "SENTRY_ENVIRONMENT": "lab"}
    seen["probe_sentry"] = lab.json(f"{r1}/python /srv/sw/conf/probe.py", {**ENV, **sentry})
    seen["no_config"] = lab.sh(f"{r1}/sample-worker-produce --count 1 2>&1 || echo exit $?")
    seen["no_database"] = lab.sh(f"{r1}/sample-worker-report 2>&1 || echo exit $?")
    lap("db, lifecycle, probes")

    # sent before any worker runs, so the queues show where the routes put each event
    produce = f"--count {COUNT} --prefix x --slow-every {SLOW_EVERY} --slow-seconds 3 --fail-every {FAIL_EVERY}"
    seen["produced"] = lab.json(f"{r1}/sample-worker-produce {produce}", _release_env("r1"))
    seen["queues_before"] = lab.queues()
    _start_worker(lab, "r1", "t1")
    lap("produce, worker r1 up")

    def settled() -> dict[str, Any] | None:
        report = lab.json(f"{r1}/sample-worker-report --prefix x --ids", ENV)
        attempts = report["failed_attempts"]
        done = report["processed"] >= COUNT - len(FAILING) and len(attempts) == len(FAILING)
        done = done and all(n >= MAX_RETRIES + 1 for n in attempts.values())
        return report if done and lab.queues()["tickets.dead"][0] >= len(FAILING) else None

    seen["report_r1"] = lab.wait_for("20 events settled", settled, timeout=60, unit="sw-worker-r1")
    time.sleep(1.5)  # a stray extra attempt or redelivery would show by now
    seen["report_r1"] = lab.json(f"{r1}/sample-worker-report --prefix x --ids", ENV)
    seen["queues_after"] = lab.queues()
    seen["attempts"] = lab.psql("SELECT event_id, attempt, release FROM failed_attempts ORDER BY 1, 2")
    lap("20 events settled")

    # release 2.0.0 takes over while release 1 runs a slow event: r2's worker consumes, then r1's gets a warm
    # shutdown, which waits for the slow event to be recorded (and acked) before the worker exits
    lab.json(f"{r1}/sample-worker-produce --count 1 --prefix w --slow-every 1 --slow-seconds {SLOW_AT_STOP}", ENV)
    lab.wait_for("r1 runs the slow event", lambda: lab.unacked("slow") == 1, timeout=10, unit="sw-worker-r1")
    _start_worker(lab, "r2", "t2")
    stop = time.monotonic()
    lab.sh("systemctl stop sw-worker-r1")
    seen["stop_seconds"] = seen["timings"]["warm stop of r1"] = round(time.monotonic() - stop, 1)
    seen["report_w"] = lab.json(f"{r1}/sample-worker-report --prefix w", ENV)
    r2 = "/srv/sw/releases/r2/venv/bin"
    seen["produced_r2"] = lab.json(
        f"{r2}/sample-worker-produce --count 5 --prefix y --slow-every 5 --slow-seconds 1", _release_env("r2")
    )
    lab.json(f"{r2}/sample-worker-produce --count 1 --prefix x", _release_env("r2"))  # x-000001 once more
    seen["report_r2"] = lab.wait_for(
        "5 events by r2 and x-000001 again",
        lambda: (
            (report := lab.json(f"{r2}/sample-worker-report --prefix y", ENV))["processed"] == 5
            and lab.json(f"{r2}/sample-worker-report --prefix x", ENV)["processed_twice"] == 1
            and report
        ),
        timeout=30,
        unit="sw-worker-r2",
    )
    seen["x1"] = lab.psql(
        "SELECT deliveries, release, version, last_release FROM processed_events WHERE event_id = 'x-000001'"
    ).strip()
    seen["journal_r1"] = lab.sh("journalctl -u sw-worker-r1 --no-pager")
    lap("release 2")
    return seen


@pytest.fixture(scope="module")
def lab_run(builds: tuple[Path, Path, str]) -> Iterator[dict[str, Any]]:
    if not _docker_ready():
        pytest.skip(f"docker or the lab image {IMAGE} is not available (make setup builds it)")
    name = f"sample-worker-fixture-{uuid.uuid4().hex[:8]}"
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
        seen = _drive(Lab(name), builds[0])
        print(f"sample_worker lab timings (s): {seen['timings']}")
        yield seen
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False, timeout=60)


@pytest.mark.docker
@pytest.mark.slow
def test_venv_builds_offline_with_debian_pip(lab_run: dict[str, Any]) -> None:
    assert lab_run["pip_version"].startswith("pip 23.0.1 "), lab_run["pip_version"]
    assert lab_run["pip_check"] == {"r1": "No broken requirements found.", "r2": "No broken requirements found."}


@pytest.mark.docker
@pytest.mark.slow
def test_initdb_is_safe_when_run_concurrently(lab_run: dict[str, Any]) -> None:
    results = [json.loads(line) for line in lab_run["initdb"].splitlines()]
    tables = ["failed_attempts", "processed_events"]
    # one of the two created the tables, the other waited for it and found them there (nothing to report changed)
    assert sorted(results, key=lambda r: len(r["created"])) == [
        {"initdb": "ok", "tables": tables, "created": []},
        {"initdb": "ok", "tables": tables, "created": tables},
    ], results


@pytest.mark.docker
@pytest.mark.slow
def test_app_routes_survive_the_config_module(lab_run: dict[str, Any]) -> None:
    probe = lab_run["probe"]
    assert probe["version"] == "1.0.0"
    assert probe["queues"] == {
        "sample_worker.record_event": "tickets",
        "sample_worker.slow_event": "slow",
        "sample_worker.failing_event": "tickets",
    }
    assert probe["unrelated"] == "elsewhere"  # the config module's own route still applies
    assert probe["confirm_publish"] is True
    assert probe["sentry"] == [False, None, None]
    assert lab_run["probe_sentry"]["sentry"] == [True, "r1", "lab"]


@pytest.mark.docker
@pytest.mark.slow
def test_console_scripts_report_a_missing_setting_in_one_line(lab_run: dict[str, Any]) -> None:
    assert lab_run["no_config"].splitlines() == [
        "produce: CELERY_CONFIG_MODULE must name the Celery configuration module",
        "exit 1",
    ]
    assert lab_run["no_database"].splitlines() == [
        "report: SAMPLE_WORKER_DATABASE_URL must be set to a postgresql:// URL",
        "exit 1",
    ]


@pytest.mark.docker
@pytest.mark.slow
def test_events_land_on_their_queues(lab_run: dict[str, Any]) -> None:
    assert lab_run["produced"] == {
        "sent": COUNT,
        "slow": 4,
        "failing": len(FAILING),
        "prefix": "x",
        "first_id": "x-000001",
        "last_id": f"x-{COUNT:06d}",
    }
    before = lab_run["queues_before"]
    assert before["tickets"] == (COUNT - 4, 0)
    assert before["slow"] == (4, 0)


@pytest.mark.docker
@pytest.mark.slow
def test_every_event_processed_once(lab_run: dict[str, Any]) -> None:
    report = lab_run["report_r1"]
    expected = [f"x-{n:06d}" for n in range(1, COUNT + 1) if f"x-{n:06d}" not in FAILING]
    assert report["processed"] == COUNT - len(FAILING)
    assert report["ids"] == expected
    assert report["by_release"] == {"r1": COUNT - len(FAILING)}
    assert report["by_version"] == {"1.0.0": COUNT - len(FAILING)}
    assert report["processed_twice"] == 0


@pytest.mark.docker
@pytest.mark.slow
def test_failing_events_retry_then_dead_letter(lab_run: dict[str, Any]) -> None:
    assert lab_run["report_r1"]["failed_attempts"] == dict.fromkeys(FAILING, MAX_RETRIES + 1)
    rows = [line.split("|") for line in lab_run["attempts"].splitlines()]
    assert rows == [[event, str(n), "r1"] for event in FAILING for n in range(1, MAX_RETRIES + 2)]
    after = lab_run["queues_after"]
    assert after["tickets.dead"] == (len(FAILING), 0)
    assert after["tickets"][0] == after["tickets.retry"][0] == after["slow"][0] == 0
    assert after["slow.dead"] == (0, 0)


@pytest.mark.docker
@pytest.mark.slow
def test_release_2_records_its_release_and_a_second_delivery(lab_run: dict[str, Any]) -> None:
    report = lab_run["report_r2"]
    assert lab_run["produced_r2"]["sent"] == 5 and lab_run["produced_r2"]["slow"] == 1
    assert report["by_release"] == {"r2": 5}
    assert report["by_version"] == {"2.0.0": 5}
    assert lab_run["x1"] == "2|r1|1.0.0|r2"  # deliveries, first release and version, last release
    assert "Warm shutdown" in lab_run["journal_r1"]


@pytest.mark.docker
@pytest.mark.slow
def test_warm_shutdown_lets_the_slow_event_finish(lab_run: dict[str, Any]) -> None:
    report = lab_run["report_w"]
    assert (report["processed"], report["by_release"], report["processed_twice"]) == (1, {"r1": 1}, 0)
    assert lab_run["stop_seconds"] > 1, "systemctl stop did not wait for the running slow event"
