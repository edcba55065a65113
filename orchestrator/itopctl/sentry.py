"""Record a release and a deploy in Sentry with the real ``sentry-cli``.

The auth token is read from the environment variable the pipeline NAMES (``token_env``) and handed to sentry-cli
in its environment only: it is never written to the state store, the pipeline or a run directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .pipeline import SentryConfig


@dataclass(frozen=True)
class SentryOutcome:
    recorded: bool
    detail: str

    def summary(self) -> str:
        return ("recorded: " if self.recorded else "not recorded: ") + self.detail


def cli_error(text: str, limit: int = 300) -> str:
    """sentry-cli's error in one line: its message and causes, without the backtrace and the hints that follow."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("Stack backtrace:", "Add --log-level", "Please attach")):
            break
        line = re.sub(r"^(error:|\d+:)\s*", "", line, flags=re.IGNORECASE)
        if line and line != "Caused by:" and line not in lines:
            lines.append(line)
    return "; ".join(lines)[:limit]


def find_sentry_cli() -> str | None:
    beside = Path(sys.executable).parent / "sentry-cli"
    if beside.is_file():
        return str(beside)
    return shutil.which("sentry-cli")


def record_deploy(
    config: SentryConfig,
    *,
    release: str,
    environment: str,
    name: str,
    duration: float,
    environ: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> SentryOutcome:
    """``releases new`` + ``releases finalize`` + ``deploys new``. Never raises: Sentry is not worth a failed
    deployment (an endpoint down, an HTTP error, a missing token or binary); the outcome, and its reason when not
    recorded, goes into the deployment record, and the engine adds a warning."""
    env_in = os.environ if environ is None else environ
    token = env_in.get(config.token_env)
    if not token:
        return SentryOutcome(False, f"environment variable {config.token_env} is not set")
    binary = find_sentry_cli()
    if binary is None:
        return SentryOutcome(False, "sentry-cli is not installed")
    env = {k: v for k, v in env_in.items() if k in ("PATH", "HOME", "LANG", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")}
    env.update(
        {
            "SENTRY_URL": config.url,
            "SENTRY_ORG": config.org,
            "SENTRY_AUTH_TOKEN": token,
            "SENTRY_DISABLE_UPDATE_CHECK": "true",
            # sentry-cli retries a 5xx five times with back-off (15 s per command); two keep a blip from costing
            # the marker without making every deploy during an outage wait.
            "SENTRY_HTTP_MAX_RETRIES": "2",
        }
    )
    commands = [
        [binary, "releases", "new", "-p", config.project, release],
        [binary, "releases", "finalize", "-p", config.project, release],
        [
            binary,
            "deploys",
            "new",
            "-p",
            config.project,
            "-r",
            release,
            "-e",
            environment,
            "-n",
            name,
            "-t",
            str(max(1, round(duration))),
        ],
    ]
    for command in commands:
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return SentryOutcome(False, f"{' '.join(command[1:3])}: {exc}")
        if proc.returncode != 0:
            err = cli_error((proc.stderr or proc.stdout).replace(token, "********"))
            return SentryOutcome(False, f"{' '.join(command[1:3])} failed: {err or f'exit code {proc.returncode}'}")
    return SentryOutcome(True, f"release {release}, deploy to {environment} ({config.url})")
