"""Settings in layers: defaults < config file < environment < command line, each value knowing its source.

The config file is TOML: ``--config FILE``, else ``$ITOPCTL_CONFIG``, else ``./itopctl.toml`` when it exists::

    state_url = "postgresql://itopctl@db.example.org/itopctl"   # the password comes from PGPASSWORD or ~/.pgpass
    pipeline = "pipeline.yml"
    keep_runs = 50
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import bad_input


def _state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "state")
    return Path(base) / "itopctl"


def _default_user(environ: Mapping[str, str]) -> str:
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        if environ.get(name):
            return environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _positive_int(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in (p.strip() for p in value.split(",")) if v)
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    raise ValueError("must be a list or a comma-separated string")


def _listen(value: Any) -> str:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0: any free port, printed at start)."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    return text


@dataclass(frozen=True)
class Option:
    name: str
    env: str
    convert: Callable[[Any], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("state_url", "ITOPCTL_STATE_URL", str, "state store: a SQLite path/URL or postgresql://..."),
    Option("pipeline", "ITOPCTL_PIPELINE", str, "the pipeline file"),
    Option("runs_dir", "ITOPCTL_RUNS_DIR", str, "where each ansible-runner run keeps its private data dir"),
    Option("keep_runs", "ITOPCTL_KEEP_RUNS", _positive_int, "run directories kept for audit (oldest rotated out)"),
    Option("user", "ITOPCTL_USER", str, "who you are in the records (promoter, approver, lock owner)"),
    Option("lock_lease", "ITOPCTL_LOCK_LEASE", _positive_int, "lease of a deployment's stage lock, seconds"),
    Option("env_passthrough", "ITOPCTL_ENV_PASSTHROUGH", _str_list, "variables passed to ansible besides ANSIBLE_*"),
    Option("secret_env", "ITOPCTL_SECRET_ENV", _str_list, "secrets: playbooks get them as extra vars (NAME -> name)"),
    # itopctl serve (the web board) only
    Option("listen", "ITOPCTL_LISTEN", _listen, "the board's address, HOST:PORT"),
    Option("trusted_proxies", "ITOPCTL_TRUSTED_PROXIES", _str_list, "reverse proxies whose user header is believed"),
    Option("user_header", "ITOPCTL_USER_HEADER", str, "the header a trusted proxy names the user in"),
    Option("tokens_file", "ITOPCTL_TOKENS_FILE", str, "the board's per-user tokens, hashed (0600)"),
)
SERVE_OPTIONS = frozenset({"listen", "trusted_proxies", "user_header", "tokens_file"})


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "default", "file:<path>", "env:<NAME>", "cli:--<flag>"


class Settings:
    """Resolved settings; ``settings.state_url`` reads the value, ``settings.sources()`` says where each came from."""

    def __init__(self, values: Mapping[str, Setting]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name].value
        except KeyError:
            raise AttributeError(name) from None

    def setting(self, name: str) -> Setting:
        return self._values[name]

    def sources(self) -> dict[str, Setting]:
        return dict(self._values)


def defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    state = _state_dir(environ)
    return {
        "state_url": f"sqlite:///{state / 'state.db'}",
        "pipeline": "pipeline.yml",
        "runs_dir": str(state / "runs"),
        "keep_runs": 50,
        "user": _default_user(environ),
        "lock_lease": 3600,
        "env_passthrough": ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "DOCKER_HOST"),
        "secret_env": (),
        "listen": "127.0.0.1:8080",
        "trusted_proxies": (),
        "user_header": "X-Forwarded-User",
        "tokens_file": str(state / "board-tokens"),
    }


def _config_path(config_file: str | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """``--config``, else ``$ITOPCTL_CONFIG``, else ``./itopctl.toml`` when it exists; a named file must exist."""
    for value, origin in ((config_file, "--config"), (environ.get("ITOPCTL_CONFIG"), "ITOPCTL_CONFIG")):
        if value:
            if not Path(value).is_file():
                raise bad_input(f"config file not found: {value} (from {origin})")
            return Path(value)
    local = cwd / "itopctl.toml"
    return local if local.is_file() else None


def load_settings(
    cli: Mapping[str, Any], environ: Mapping[str, str], config_file: str | None = None, cwd: Path | None = None
) -> Settings:
    values = {name: Setting(value, "default") for name, value in defaults(environ).items()}
    by_name = {opt.name: opt for opt in OPTIONS}

    path = _config_path(config_file, environ, cwd or Path.cwd())

    def convert(opt: Option, raw: Any, source: str) -> Setting:
        try:
            return Setting(opt.convert(raw), source)
        except (TypeError, ValueError) as exc:
            raise bad_input(f"{source}: invalid value for {opt.name}: {raw!r} ({exc})") from None

    if path is not None:
        import tomllib  # noqa: PLC0415 - most runs have no config file

        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise bad_input(f"cannot read config file {path}: {exc}") from None
        for key, raw in data.items():
            if key not in by_name:
                raise bad_input(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(by_name))})")
            values[key] = convert(by_name[key], raw, f"file:{path}")
    for opt in OPTIONS:
        if environ.get(opt.env):
            values[opt.name] = convert(opt, environ[opt.env], f"env:{opt.env}")
    for name, raw in cli.items():
        if raw is not None and name in by_name:
            values[name] = convert(by_name[name], raw, f"cli:--{name.replace('_', '-')}")
    return Settings(values)
