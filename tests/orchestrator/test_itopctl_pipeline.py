"""pipeline.yml and manifest validation: every error, each with its place."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from itopctl.errors import ExitCode, ItopctlError
from itopctl.manifest import load_manifest
from itopctl.pipeline import DEFAULT_STAGES, load_pipeline, parse_duration

FULL = """\
version: 1
ansible:
  collections_path: collections
  environment: {ANSIBLE_FORCE_COLOR: "0"}
defaults:
  inventory: inventories/{stage}
  playbooks: {prepare: pb/deploy.yml, switch: pb/deploy.yml, verify: pb/verify.yml, rollback: pb/rollback.yml}
stages:
  - dev
  - name: prod
    batch_size: 3
    auto_rollback: false
    verify: {checks: [{name: home, url: "https://itop.example.org/", contains: iTop}]}
    gates:
      soak: 24h
      approvals: {count: 2}
      freeze:
        - {start: "2026-12-20T00:00:00+01:00", end: "2027-01-04T08:00:00+01:00", reason: winter break}
        - {weekdays: [fri], from: "16:00", to: "23:59", timezone: Europe/Paris}
    sentry: {url: "https://sentry.example.org/", org: unistra, project: itop, token_env: SENTRY_TOKEN_ITOP}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text(text)
    return path


def errors_of(path: Path) -> str:
    with pytest.raises(ItopctlError) as info:
        load_pipeline(path)
    assert info.value.code == ExitCode.BAD_INPUT
    return str(info.value)


def test_full_pipeline(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, FULL))
    assert pipeline.names == ("dev", "prod")
    dev, prod = pipeline.stages
    assert dev.inventory == tmp_path / "inventories/dev" and dev.batch_size == 1 and dev.auto_rollback
    assert prod.playbooks["verify"] == tmp_path / "pb/verify.yml"
    assert (prod.batch_size, prod.auto_rollback, prod.gates.soak_seconds, prod.gates.approvals) == (3, False, 86400, 2)
    assert prod.verify_checks[0].contains == "iTop" and prod.verify_checks[0].status == 200
    assert prod.sentry is not None and prod.sentry.token_env == "SENTRY_TOKEN_ITOP"
    assert pipeline.environment["ANSIBLE_COLLECTIONS_PATH"] == str(tmp_path / "collections")
    assert pipeline.previous(prod) is dev and pipeline.previous(dev) is None
    winter, friday = prod.gates.freeze
    assert winter.contains(datetime(2026, 12, 25, tzinfo=UTC)) and not winter.contains(datetime(2027, 2, 1, tzinfo=UTC))
    assert friday.contains(datetime(2026, 11, 27, 16, 30, tzinfo=UTC))  # 17:30 in Paris, a Friday
    assert not friday.contains(datetime(2026, 11, 27, 12, 0, tzinfo=UTC))
    assert friday.contains(datetime(2026, 11, 27, 22, 59, 30, tzinfo=UTC))  # 23:59:30 in Paris: still frozen


def test_freeze_window_across_midnight(tmp_path: Path) -> None:
    text = FULL.replace('{weekdays: [fri], from: "16:00", to: "23:59", timezone: Europe/Paris}',
                        '{weekdays: [sat], from: "22:00", to: "06:00"}')  # fmt: skip
    window = load_pipeline(write(tmp_path, text)).stages[1].gates.freeze[1]
    assert window.contains(datetime(2026, 11, 28, 23, 0, tzinfo=UTC))  # Saturday night
    assert window.contains(datetime(2026, 11, 29, 5, 0, tzinfo=UTC))  # Sunday early morning
    assert not window.contains(datetime(2026, 11, 29, 23, 0, tzinfo=UTC))  # Sunday night
    assert not window.contains(datetime(2026, 11, 28, 5, 0, tzinfo=UTC))  # Saturday early morning


def test_default_stages(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults:\n  playbooks: {prepare: a, switch: a, verify: a, rollback: a}\n")
    pipeline = load_pipeline(path)
    assert pipeline.names == DEFAULT_STAGES and pipeline.first.name == "dev"
    assert pipeline.stage("pprd").inventory == tmp_path / "inventories/pprd"


def test_every_error_with_its_place(tmp_path: Path) -> None:
    text = FULL.replace("batch_size: 3", "batch_size: zero").replace("count: 2", "count: -2")
    text = text.replace("soak: 24h", "soak: a while").replace("token_env: SENTRY_TOKEN_ITOP", "token: abc")
    text = text.replace("weekdays: [fri]", "weekdays: [fry]").replace("auto_rollback: false", "auto_rolback: no")
    text = text.replace('end: "2027-01-04T08:00:00+01:00"', 'end: "2026-12-01T00:00:00+01:00"')
    message = errors_of(write(tmp_path, text))
    for expected in (
        "pipeline.yml:11: stages[1].batch_size: must be an integer >= 1",
        "pipeline.yml:12: stages[1].auto_rolback: unknown key",
        "pipeline.yml:15: stages[1].gates.soak: must be a duration",
        "pipeline.yml:16: stages[1].gates.approvals.count: must be >= 0, got -2",
        "pipeline.yml:18: stages[1].gates.freeze[0].end: must be after start",
        "pipeline.yml:19: stages[1].gates.freeze[1].weekdays[0]: unknown weekday 'fry'",
        "pipeline.yml:20: stages[1].sentry.token: never put a token in the pipeline",
    ):
        assert expected in message, message
    assert "(7 error(s))" in message


def test_structural_errors(tmp_path: Path) -> None:
    assert "not valid YAML" in errors_of(write(tmp_path, "stages: [dev\n"))
    assert "must be a non-empty list" in errors_of(write(tmp_path, "stages: {}\n"))
    message = errors_of(write(tmp_path, "stages:\n  - name: Dev!\n  - 42\n"))
    assert "stages[0].name: 'Dev!' does not match" in message and "stages[1]: must be a mapping" in message
    assert "pipeline file not found" in errors_of(tmp_path / "missing.yml")
    message = errors_of(write(tmp_path, "version: 2\nstages: [dev]\n"))
    assert "pipeline.yml:1: version: unsupported version 2" in message


@pytest.mark.parametrize(
    ("value", "seconds"), [(90, 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("2d", 172800), ("soon", None)]
)
def test_durations(value: object, seconds: int | None) -> None:
    assert parse_duration(value) == seconds


def test_manifest_validation(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "id: 2026.11.28-1\ncomponents:\n  itop:\n    uri: s3://artifacts/itop.tar.gz\n"
        f"    sha256: '{'a' * 64}'\n    extensions:\n"
        f"      - {{name: unistra-ticket, uri: 'file:///srv/t.tgz', sha256: '{'b' * 64}'}}\n"
    )
    manifest = load_manifest(good)
    assert manifest.id == "2026.11.28-1" and manifest.components == ["itop"] and len(manifest.digest) == 64
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "id: current\ncomponents:\n  itop:\n    uri: s3://x\n    sha256: 123\n    extensions:\n      - {uri: 'gopher://x'}\n"
    )
    with pytest.raises(ItopctlError) as info:
        load_manifest(bad)
    message = str(info.value)
    assert "bad.yml:1: id: 'current' is reserved" in message
    assert "bad.yml:5: components.itop.sha256: must be 64 hex digits (either case; stored in lower case)" in message
    assert "bad.yml:7: components.itop.extensions[0].uri: unsupported scheme" in message
    assert "components.itop.extensions[0].name: must be a non-empty string" in message


def test_the_mitogen_strategy_comes_from_the_installed_package(tmp_path: Path) -> None:
    import ansible_mitogen  # type: ignore[import-untyped]  # noqa: PLC0415 - a dependency of itopctl

    playbooks = "{prepare: p.yml, switch: p.yml, verify: p.yml, rollback: p.yml}"
    text = f"version: 1\nansible:\n  strategy: mitogen\ndefaults:\n  playbooks: {playbooks}\nstages: [dev]\n"
    env = load_pipeline(write(tmp_path, text)).environment
    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert env["ANSIBLE_STRATEGY_PLUGINS"] == str(plugins)
    assert (plugins / "mitogen_linear.py").is_file()
    linear = load_pipeline(write(tmp_path, text.replace("mitogen", "linear"))).environment
    assert "ANSIBLE_STRATEGY" not in linear and "ANSIBLE_STRATEGY_PLUGINS" not in linear
    message = errors_of(write(tmp_path, text.replace("mitogen", "free")))
    assert "pipeline.yml:3: ansible.strategy: must be linear or mitogen, not 'free'" in message
