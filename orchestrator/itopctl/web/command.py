"""``itopctl serve``: build the board from the settings, then serve it with waitress (a production WSGI server)
until Ctrl-C; ``--add-token USER`` / ``--remove-token USER`` manage the tokens file and exit."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExitCode, bad_input
from ..store import Store
from . import auth
from .app import BoardConfig, create_app

if TYPE_CHECKING:
    from ..cli import Context


def board_config(ctx: Context, history_limit: int = 25) -> BoardConfig:
    settings = ctx.settings
    ctx.pipeline  # noqa: B018 - a broken pipeline file is said now, not at the first request
    return BoardConfig(
        state_url=str(settings.state_url),
        pipeline=Path(settings.pipeline),
        runs_dir=Path(settings.runs_dir),
        trusted_proxies=auth.parse_proxies(settings.trusted_proxies),
        user_header=str(settings.user_header),
        tokens_file=Path(settings.tokens_file),
        history_limit=history_limit,
    )


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def serve(ctx: Context, args: argparse.Namespace) -> int:
    tokens = auth.TokenFile(Path(ctx.settings.tokens_file))
    if args.add_token:
        token = tokens.add(args.add_token)
        ctx.print(token)
        print(
            f"itopctl: a new token for {args.add_token} (printed once, kept hashed in {tokens.path}); they sign in "
            "on the board with it",
            file=ctx.err,
        )
        return ExitCode.OK
    if args.remove_token:
        removed = tokens.remove(args.remove_token)
        ctx.print(f"token of {args.remove_token} removed" if removed else f"{args.remove_token} had no token")
        return ExitCode.OK
    if args.threads < 1 or args.history < 1:
        raise bad_input("--threads and --history must be >= 1")
    config = board_config(ctx, args.history)
    Store.open(config.state_url).close()  # migrated once, here; the threads open their own connections
    app = create_app(config)
    board = app.extensions["itopctl_board"]
    from waitress.server import create_server  # type: ignore[import-untyped]  # noqa: PLC0415

    host, port = split_listen(str(ctx.settings.listen))
    server = create_server(app, host=host, port=port, threads=args.threads, ident="itopctl")
    shown = f"[{host}]" if ":" in host else host
    if board.writable:
        ways = [w for w, on in (("trusted proxies", config.trusted_proxies), ("tokens", board.tokens.any)) if on]
        mode = f"approve and reject for users known by {' and '.join(ways)}"
    else:
        mode = "read-only: no trusted proxy and no token configured"
    logging.basicConfig(level=logging.WARNING, format="itopctl serve: %(message)s")
    print(f"itopctl serve: http://{shown}:{server.effective_port}/ ({mode})", file=ctx.err, flush=True)
    try:
        server.run()
    finally:
        server.close()
    return ExitCode.OK
