"""The one domain exception of itopctl and the process exit codes it maps to."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of ``itopctl`` (documented in the package docstring and the README)."""

    OK = 0
    """The command did what was asked (or there was nothing to do)."""
    INTERNAL = 1
    """An unexpected error: a bug, or an environment problem itopctl did not foresee."""
    BAD_INPUT = 2
    """Usage error or bad input: unknown stage/release, malformed manifest or pipeline, missing inventory."""
    REFUSED = 3
    """Refused by a gate, a lock or a policy (rejected or immutable release). Nothing was changed."""
    FAILED = 4
    """The deployment ran and failed; hosts may need attention (see ``itopctl status``)."""
    ROLLED_BACK = 5
    """The deployment failed verification and the switched hosts were rolled back."""
    LOCK_LOST = 6
    """The stage lock was taken over while the deployment ran: itopctl stopped before changing anything more."""
    INTERRUPTED = 130
    """Interrupted (Ctrl-C, SIGTERM or SIGHUP) and stopped at a phase boundary; the record says which."""
    PIPE_CLOSED = 141
    """Standard output was closed early (``itopctl status | head``): 128 + SIGPIPE, as a shell reports it."""


class ItopctlError(Exception):
    """The domain error: a message for a person, optional detail lines, and the exit code to leave with.

    Raised anywhere in the package, caught once in :func:`itopctl.cli.main`.
    """

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = tuple(details)

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return "\n".join([self.message, *(f"  - {line}" for line in self.details)])


def bad_input(message: str, details: Sequence[str] = ()) -> ItopctlError:
    return ItopctlError(message, ExitCode.BAD_INPUT, details)


def refused(message: str, details: Sequence[str] = ()) -> ItopctlError:
    return ItopctlError(message, ExitCode.REFUSED, details)
