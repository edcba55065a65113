"""YAML loading that remembers where every value came from, so validation errors can say ``file:line``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import bad_input

PathKey = tuple[str | int, ...]


def format_path(path: PathKey) -> str:
    """``("stages", 2, "gates")`` -> ``stages[2].gates``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


@dataclass
class Located:
    """A loaded document plus the line of every key path in it."""

    data: Any
    source: str
    lines: dict[PathKey, int] = field(default_factory=dict)

    def where(self, path: PathKey) -> str:
        """The closest known ``file:line`` for a key path (walking up to a parent when the key is absent)."""
        probe = path
        while probe:
            if probe in self.lines:
                return f"{self.source}:{self.lines[probe]}"
            probe = probe[:-1]
        return f"{self.source}:{self.lines.get((), 1)}"


def _index(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*path, str(key_node.value))
                _index(value_node, child, lines)
                lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines)


def load_yaml_text(text: str, source: str) -> Located:
    """Parse one YAML document (safe loader). A syntax error becomes a bad-input error with its line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise bad_input(f"{source}:{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise bad_input(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines: dict[PathKey, int] = {}
    if node is not None:
        _index(node, (), lines)
    return Located(data=data, source=source, lines=lines)


def load_yaml_file(path: Path, what: str) -> Located:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad_input(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_input(f"cannot read {what} {path}: {exc}") from None
    return load_yaml_text(text, str(path))


class Checker:
    """Collects every error with its place instead of stopping at the first one."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.errors: list[str] = []

    def error(self, path: PathKey, message: str) -> None:
        self.errors.append(f"{self.doc.where(path)}: {format_path(path)}: {message}")

    def mapping(self, value: object, path: PathKey, allowed: set[str] | None) -> dict[str, Any]:
        """A mapping's items; ``allowed=None`` accepts any key."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if allowed is not None and str(key) not in allowed:
                self.error((*path, str(key)), f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return {str(k): v for k, v in value.items()}

    def string(self, value: object, path: PathKey, *, pattern: re.Pattern[str] | None = None) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.error(path, "must be a non-empty string")
            return None
        if pattern is not None and not pattern.match(value):
            self.error(path, f"{value!r} does not match {pattern.pattern}")
            return None
        return value

    def integer(self, value: object, path: PathKey, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer >= {minimum}")
            return None
        if value < minimum:
            self.error(path, f"must be >= {minimum}, got {value}")
            return None
        return value

    def boolean(self, value: object, path: PathKey) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, "must be true or false")
            return None
        return value
