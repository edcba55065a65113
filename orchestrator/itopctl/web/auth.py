"""Who is asking: a user named by a trusted reverse proxy's header, or by a per-user token; CSRF tokens.

- The header (``user_header``, e.g. ``X-Forwarded-User`` set by the SSO front end) is honoured only when the request
  comes from one of ``trusted_proxies`` (addresses or networks): the peer address of the TCP connection, never a
  forwarded-for header, decides. The same header from anywhere else is ignored, and an action that relies on it is
  refused.
- Tokens: ``itopctl serve --add-token USER`` prints a new random token once and keeps only its SHA-256 in the tokens
  file (mode 0600; a file others can read is refused). A token holds 256 random bits, so a fast hash is enough: no
  guessing, and the file gives nothing away. A browser signs in with it once (a signed, HttpOnly session cookie);
  a script sends ``Authorization: Bearer TOKEN``.
- Without trusted proxies and without any token, the board is read-only: no form is shown and every POST is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import bad_input

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_TOKEN_LINE = re.compile(r"^(\S+)\s+sha256:([0-9a-f]{64})$")
_HEADER = "# itopctl serve tokens: one 'USER sha256:HEX' per line (itopctl serve --add-token USER)\n"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_proxies(values: Sequence[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` as networks (``10.0.0.5`` is ``10.0.0.5/32``); a malformed entry is a usage error."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise bad_input(f"trusted_proxies: not an address or network: {value!r}") from None
    return tuple(networks)


def from_proxy(remote_addr: str | None, proxies: Sequence[Network]) -> bool:
    if not remote_addr or not proxies:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in proxies)


@dataclass(frozen=True)
class TokenFile:
    """The tokens file, read again whenever it changes on disk (a removed token stops working at once)."""

    path: Path

    def _check_mode(self) -> None:
        mode = self.path.stat().st_mode
        if mode & 0o077:
            raise bad_input(
                f"tokens file {self.path} is readable or writable by others (mode {mode & 0o777:o}): chmod 600 it"
            )

    def load(self) -> dict[str, str]:
        """hash -> user; {} when the file does not exist."""
        if not self.path.exists():
            return {}
        self._check_mode()
        users: dict[str, str] = {}
        for number, raw in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _TOKEN_LINE.match(line)
            if match is None or not USER_NAME.match(match.group(1)):
                raise bad_input(f"{self.path}:{number}: expected 'USER sha256:HEX'")
            users[match.group(2)] = match.group(1)
        return users

    def stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _write(self, entries: dict[str, str]) -> None:
        """Replace the file at once (a temporary 0600 file renamed over it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(_HEADER)
                for digest, user in sorted(entries.items(), key=lambda item: item[1]):
                    handle.write(f"{user} sha256:{digest}\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, user: str) -> str:
        """A new token for ``user`` (replacing theirs): returned once, only its hash is kept."""
        if not USER_NAME.match(user):
            raise bad_input(f"not a user name: {user!r} (letters, digits and . _ @ + -)")
        entries = {digest: who for digest, who in self.load().items() if who != user}
        token = secrets.token_urlsafe(32)
        entries[token_hash(token)] = user
        self._write(entries)
        return token

    def remove(self, user: str) -> bool:
        entries = self.load()
        kept = {digest: who for digest, who in entries.items() if who != user}
        if len(kept) == len(entries):
            return False
        self._write(kept)
        return True


class Tokens:
    """The tokens of a running server: looked up by hash, the file re-read when it changed."""

    def __init__(self, file: TokenFile | None) -> None:
        self.file = file
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        if self.file is None:
            return
        stamp = self.file.stamp()
        if stamp != self._stamp:
            self._users = self.file.load()
            self._stamp = stamp

    @property
    def any(self) -> bool:
        self.refresh()
        return bool(self._users)

    def user(self, token: str) -> str | None:
        """The user of ``token`` (compared by hash, in constant time), or None."""
        self.refresh()
        digest = token_hash(token)
        for known, user in self._users.items():
            if hmac.compare_digest(known, digest):
                return user
        return None

    def holds(self, user: str, digest: str) -> bool:
        """Whether ``user`` still has the token of that hash (a session ends when its token is removed)."""
        self.refresh()
        return self._users.get(digest) == user


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
