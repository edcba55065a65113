"""The module's wiring: AnsibleModule arguments, results, failures as msg, secrets kept out of the output."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.common.text.formatters import human_to_bytes
from ansible.module_utils.testing import patch_module_args
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseManager
from ansible_collections.unistra.itop.plugins.module_utils.unpack import UnpackLimits
from ansible_collections.unistra.itop.plugins.modules import release as module


def _run(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    out = capsys.readouterr().out
    result: dict[str, Any] = json.loads(out)
    return result


def test_prepare_activate_info_through_the_module(
    sample: Callable[[str], dict[str, str]], root: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"root": str(root), "owner_name": "tester"}
    prepared = _run(
        {**base, "operation": "prepare", "release": "r1", "artifacts": [sample("r1")], "cache_dir": str(cache_dir)},
        capsys,
    )
    assert (prepared["changed"], prepared["release"]) == (True, "r1")
    assert prepared["artifacts"][0]["dest"] == ""  # suboption defaults applied
    activated = _run({**base, "operation": "activate", "release": "r1"}, capsys)
    assert (activated["changed"], activated["current"]) == (True, "r1")
    info = _run({**base, "operation": "info"}, capsys)
    assert (info["changed"], info["current"], info["history"][-1]["by"]) == (False, "r1", "tester")


def test_check_mode_flag_reaches_the_engine(
    sample: Callable[[str], dict[str, str]], root: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _run(
        {
            "root": str(root),
            "operation": "prepare",
            "release": "r1",
            "artifacts": [sample("r1")],
            "cache_dir": str(cache_dir),
            "_ansible_check_mode": True,
        },
        capsys,
    )
    assert result["changed"] is True
    assert not root.exists()


def test_errors_are_a_msg_not_a_traceback(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run({"root": str(root), "operation": "activate", "release": "../evil"}, capsys)
    assert result["failed"] is True
    assert "invalid release id" in result["msg"]


def test_required_options_per_operation(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run({"root": str(root), "operation": "prepare", "release": "r1"}, capsys)
    assert result["failed"] is True
    assert "artifacts" in result["msg"]


def test_s3_secrets_never_appear_in_the_output(root: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "very-secret-value-123"
    result = _run(
        {
            "root": str(root),
            "operation": "prepare",
            "release": "r1",
            "artifacts": [{"uri": "s3://bucket/app.tar.gz", "sha256": "e" * 64}],
            "cache_dir": str(cache_dir),
            "s3_endpoint_url": "http://127.0.0.1:9",
            "aws_access_key": "AKIDEXAMPLE",
            "aws_secret_key": secret,
        },
        capsys,
    )
    assert result["failed"] is True
    assert "cannot reach S3 endpoint" in result["msg"]
    assert secret not in json.dumps(result)


def test_missing_boto3_for_s3_uses_missing_required_lib(
    root: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    result = _run(
        {
            "root": str(root),
            "operation": "prepare",
            "release": "r1",
            "artifacts": [{"uri": "s3://bucket/app.tar.gz", "sha256": "e" * 64}],
            "cache_dir": str(cache_dir),
        },
        capsys,
    )
    assert result["failed"] is True
    assert "Failed to import the required Python library (boto3)" in result["msg"]


def test_unpack_limits_reach_prepare_with_defaults_for_the_rest(
    sample: Callable[[str], dict[str, str]],
    root: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[UnpackLimits] = []

    def fake_prepare(self: ReleaseManager, *args: Any, limits: UnpackLimits, **kwargs: Any) -> dict[str, Any]:
        seen.append(limits)
        return {"changed": False, "msg": "fake"}

    monkeypatch.setattr(ReleaseManager, "prepare", fake_prepare)
    base = {"root": str(root), "operation": "prepare", "release": "r1", "artifacts": [sample("r1")]}
    _run({**base, "cache_dir": str(cache_dir), "unpack_limits": {"max_ratio": 500, "max_bytes": "8G"}}, capsys)
    _run({**base, "cache_dir": str(cache_dir)}, capsys)
    assert seen == [UnpackLimits(max_ratio=500, max_bytes=8 * 1024**3), UnpackLimits()]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_members": 3}, "more than 3 members (unpack_limits.max_members)"),
        ({"max_bytes": "10"}, "more than 10 bytes of files (unpack_limits.max_bytes)"),
        ({"max_ratio": 0}, "unpack_limits.max_ratio must be an integer of at least 1"),
        ({"max_bytes": "lots"}, "max_bytes"),
    ],
    ids=["over-max-members", "over-max-bytes", "invalid-ratio", "invalid-size"],
)
def test_limits_refuse_with_the_option_to_change(  # noqa: PLR0917 -- pytest injects fixtures by position
    limits: dict[str, Any],
    message: str,
    sample: Callable[[str], dict[str, str]],
    root: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = {"root": str(root), "operation": "prepare", "release": "r1", "cache_dir": str(cache_dir)}
    result = _run({**args, "artifacts": [sample("r1")], "unpack_limits": limits}, capsys)
    assert result["failed"] is True
    assert message in result["msg"]
    assert not (root / "releases").exists() or os.listdir(root / "releases") == []


def test_documented_unpack_limits_are_the_engine_defaults() -> None:
    """The docs, the argument spec and UnpackLimits name the same limits with the same defaults."""
    documented = yaml.safe_load(module.DOCUMENTATION)["options"]["unpack_limits"]["suboptions"]
    spec = module.argument_spec()["unpack_limits"]["options"]
    engine = {field.name: field.default for field in dataclasses.fields(UnpackLimits)}
    assert set(documented) == set(spec) == set(engine)
    for name, doc in documented.items():
        assert doc["type"] == spec[name]["type"]
        default = human_to_bytes(doc["default"]) if doc["type"] == "bytes" else doc["default"]
        assert default == spec[name]["default"] == engine[name], name
