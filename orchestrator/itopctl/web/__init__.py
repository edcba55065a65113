"""``itopctl serve``: the pipeline's web board (Flask, Jinja2 templates, waitress), and its JSON API.

Importing this package is cheap (the CLI builds its parser with :func:`serve_arguments`); Flask and waitress are
imported by :mod:`itopctl.web.command` only when the board is served.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import OPTIONS, SERVE_OPTIONS


def serve_arguments(parser: Any) -> None:
    """The ``serve`` command's own settings (flag, environment variable, config file key, like every setting)."""
    group = parser.add_argument_group("board settings")
    for opt in OPTIONS:
        if opt.name in SERVE_OPTIONS:
            group.add_argument(
                f"--{opt.name.replace('_', '-')}", default=argparse.SUPPRESS, help=f"{opt.help} [{opt.env}]"
            )
    parser.add_argument("--threads", type=int, default=8, help="requests served at once (default 8)")
    parser.add_argument("--history", type=int, default=25, metavar="N", help="deployments per history page (25)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--add-token", metavar="USER", help="print a new token for USER (kept hashed), then exit")
    tokens.add_argument("--remove-token", metavar="USER", help="remove USER's token, then exit")
