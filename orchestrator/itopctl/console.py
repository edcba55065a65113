"""The ``itopctl`` console script: the CLI, and a clear message when it cannot even load.

Importing the CLI imports the collection's rules (``collection.py``); when the collection cannot be found that is an
:class:`ItopctlError` raised at import time, which must reach the operator as a message and an exit code, not as a
traceback.
"""

from __future__ import annotations

import sys

from .errors import ItopctlError


def main() -> int:
    try:
        from .cli import main as cli_main  # noqa: PLC0415 -- its import is what may fail
    except ItopctlError as exc:
        print(f"itopctl: {exc}", file=sys.stderr)
        return int(exc.code)
    return cli_main()
