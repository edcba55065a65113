"""The board's Flask application: pages, the JSON API, sign-in, and approve/reject for signed-in users.

Pages are Jinja2 templates with autoescape on (every value from the store is text, never markup), served with a
Content-Security-Policy that allows only this page's own inline script (a nonce), no frames, no other origin.
Every POST needs the session's CSRF token and, for approve and reject, a user (see :mod:`itopctl.web.auth`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, flash, g, redirect, render_template, request, session, url_for

from .. import views
from ..engine import Orchestrator, record_approval, record_rejection
from ..errors import ItopctlError
from ..pipeline import Pipeline, load_pipeline
from ..runner import NullDisplay
from ..store import Store, utcnow
from . import audit, auth
from .board import board, deployment_view, version
from .runlog import RunLogs

HISTORY_MAX = 500  # the API answers this many deployments at most (then page with ?before=ID): under 200 ms


@dataclass(frozen=True)
class BoardConfig:
    """What the board needs, from the settings (``itopctl config`` shows where each came from)."""

    state_url: str
    pipeline: Path
    runs_dir: Path
    trusted_proxies: tuple[auth.Network, ...] = ()
    user_header: str = "X-Forwarded-User"
    tokens_file: Path | None = None
    history_limit: int = 25
    poll_seconds: float = 2.0


@dataclass(frozen=True)
class Identity:
    user: str | None = None
    via: str = ""  # "proxy" or "token"
    problem: str = ""  # why a claimed identity was not believed (a user header from an untrusted address)


@dataclass
class _Shared:
    """State shared by the server's threads: the pipeline (read again when its file changes), the tokens, the run
    logs' summaries; each thread has its own store connection (SQLite connections stay in their thread)."""

    config: BoardConfig
    tokens: auth.Tokens
    runs: RunLogs
    local: threading.local = field(default_factory=threading.local)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _pipeline: tuple[int, Pipeline] | None = None

    def store(self) -> Store:
        store = getattr(self.local, "store", None)
        if store is None:
            store = self.local.store = Store.open(self.config.state_url, migrate=False)
        return store

    def drop_store(self) -> None:
        store = getattr(self.local, "store", None)
        self.local.store = None
        if store is not None:
            with contextlib.suppress(Exception):  # a broken connection is being thrown away anyway
                store.close()

    def pipeline(self) -> Pipeline:
        stamp = self.config.pipeline.stat().st_mtime_ns
        with self.lock:
            if self._pipeline is None or self._pipeline[0] != stamp:
                self._pipeline = (stamp, load_pipeline(self.config.pipeline))
            return self._pipeline[1]

    @property
    def writable(self) -> bool:
        """Approve and reject are possible at all: some way of knowing users is configured."""
        return bool(self.config.trusted_proxies) or self.tokens.any


def create_app(config: BoardConfig, *, secret_key: bytes | None = None) -> Flask:  # noqa: PLR0915 - the routes
    app = Flask(__name__)
    # A fresh key per process: sessions (and their CSRF tokens) end when the server restarts; nothing to keep secret
    # on disk.
    app.secret_key = secret_key or os.urandom(32)
    app.config.update(
        SESSION_COOKIE_NAME="itopctl_board",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.jinja_env.autoescape = True  # every template, whatever its name
    shared = _Shared(config, auth.Tokens(auth.TokenFile(config.tokens_file) if config.tokens_file else None),
                     RunLogs(config.runs_dir))  # fmt: skip
    app.extensions["itopctl_board"] = shared

    def identify() -> Identity:
        problem = ""
        claimed = request.headers.get(config.user_header)
        if claimed is not None:
            if auth.from_proxy(request.remote_addr, config.trusted_proxies):
                if auth.USER_NAME.match(claimed):
                    return Identity(claimed, "proxy")
                problem = f"the proxy's {config.user_header} header is not a user name"
            else:
                problem = (
                    f"a {config.user_header} header came from {request.remote_addr}, which is not a trusted proxy: "
                    "ignored"
                )
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer "):
            user = shared.tokens.user(bearer.removeprefix("Bearer ").strip())
            if user is not None:
                return Identity(user, "token", problem)
        user, digest = session.get("user"), session.get("token")
        if isinstance(user, str) and isinstance(digest, str) and shared.tokens.holds(user, digest):
            return Identity(user, "token", problem)
        return Identity(None, "", problem)

    @app.before_request
    def before() -> None:
        g.identity = identify()
        g.nonce = secrets.token_urlsafe(16)
        if "csrf" not in session:
            session["csrf"] = auth.new_csrf()

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{g.get('nonce', '')}'; style-src 'nonce-{g.get('nonce', '')}'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        if exc is not None:
            shared.drop_store()  # a failed connection is not reused

    @app.errorhandler(ItopctlError)
    def domain_error(exc: ItopctlError) -> Any:
        if request.path.startswith("/api/"):
            return json_response({"error": exc.message, "details": list(exc.details), "exit_code": int(exc.code)}, 400)
        return render_template("error.html", message=str(exc), **_page()), 400

    def _page() -> dict[str, Any]:
        return {
            "identity": g.identity,
            "writable": shared.writable,
            "tokens": shared.tokens.any,
            "csrf": session.get("csrf", ""),
            "nonce": g.nonce,
            "poll_ms": int(config.poll_seconds * 1000),
        }

    def refuse(status: int, message: str) -> tuple[str, int]:
        app.logger.warning("refused %s %s from %s: %s", request.method, request.path, request.remote_addr, message)
        return render_template("error.html", message=message, **_page()), status

    def json_response(data: Any, status: int = 200) -> Response:
        return Response(views.dumps(data), status=status, mimetype="application/json")

    def check_post(need_user: bool) -> tuple[str, int] | None:
        """None when the POST may go on, else the refusal."""
        if not shared.writable:
            return refuse(403, "this board is read-only: no trusted proxy and no token is configured")
        if g.identity.problem:
            return refuse(403, f"refused: {g.identity.problem}")
        if not auth.same_token(session.get("csrf"), request.form.get("csrf_token")):
            return refuse(403, "refused: the form's CSRF token is missing or wrong (reload the page and try again)")
        if need_user and g.identity.user is None:
            return refuse(403, "refused: sign in first (a token, or through the university's sign-on)")
        return None

    def int_arg(name: str) -> int | None:
        value = request.args.get(name, "")
        if not value:
            return None
        if not value.isdigit():
            abort(400)
        return int(value)

    def stage_arg(pipeline: Pipeline) -> str | None:
        stage = request.args.get("stage") or None
        if stage is not None:
            pipeline.stage(stage)  # unknown: ItopctlError -> 400
        return stage

    @contextmanager
    def audited(action: str, release_id: str, stage: str, reason: str) -> Iterator[Callable[[str], None]]:
        """Record the action (who, how known, when, from where, why) with what came of it, whatever it was."""
        outcome = ["error"]
        try:
            yield outcome.append
        except ItopctlError as exc:
            outcome.append(f"refused: {exc.message}")
            flash(f"{action} refused: {exc.message}", "error")
        finally:
            identity: Identity = g.identity
            forwarded = request.headers.get("X-Forwarded-For", "") if identity.via == "proxy" else ""
            audit.record(
                shared.store(), utcnow(), actor=identity.user or "", via=identity.via,
                remote_addr=request.remote_addr or "", forwarded_for=forwarded[:200], action=action,
                release_id=release_id[:200], stage=stage[:100], reason=reason[:2000], result=outcome[-1],
            )  # fmt: skip

    # -- pages ------------------------------------------------------------------------------------------
    @app.get("/")
    def page() -> str:
        pipeline = shared.pipeline()
        data = board(
            shared.store(), pipeline, shared.runs, viewer=g.identity.user, now=utcnow(),
            history_stage=stage_arg(pipeline), before=int_arg("before"), limit=config.history_limit,
        )  # fmt: skip
        return render_template("board.html", board=data, **_page())

    @app.get("/deployments/<int:deployment_id>")
    def deployment_page(deployment_id: int) -> str:
        record = shared.store().deployment(deployment_id)
        return render_template("deployment.html", d=deployment_view(record, shared.runs), **_page())

    # -- sign-in, approve, reject -------------------------------------------------------------------------
    @app.post("/login")
    def login() -> Any:
        refused = check_post(need_user=False)
        if refused:
            return refused
        user = shared.tokens.user(request.form.get("token", "").strip())
        if user is None:
            return refuse(403, "refused: unknown token")
        session.clear()
        session.update(user=user, token=auth.token_hash(request.form["token"].strip()), csrf=auth.new_csrf())
        flash(f"signed in as {user}", "ok")
        return redirect(url_for("page"), 303)

    @app.post("/logout")
    def logout() -> Any:
        if not auth.same_token(session.get("csrf"), request.form.get("csrf_token")):
            return refuse(403, "refused: the form's CSRF token is missing or wrong")
        session.clear()
        return redirect(url_for("page"), 303)

    @app.post("/approve")
    def approve() -> Any:
        refused = check_post(need_user=True)
        if refused:
            return refused
        release_id, stage, reason = (request.form.get(k, "") for k in ("release", "stage", "reason"))
        with audited("approve", release_id, stage, reason) as result:
            release, st, added = record_approval(
                shared.store(), shared.pipeline(), release_id, stage, who=g.identity.user, reason=reason, now=utcnow()
            )
            what = "approved" if added else "already approved"
            result(what)
            flash(f"{g.identity.user} {what} {release.id} for {st.name}", "ok")
        return redirect(url_for("page") + f"#release-{release_id}", 303)

    @app.post("/reject")
    def reject() -> Any:
        refused = check_post(need_user=True)
        if refused:
            return refused
        release_id, reason = request.form.get("release", ""), request.form.get("reason", "")
        with audited("reject", release_id, "", reason) as result:
            new = record_rejection(shared.store(), release_id, who=g.identity.user, reason=reason, now=utcnow())
            result("rejected" if new else "already rejected")
            flash(f"{g.identity.user} rejected {release_id}" if new else f"{release_id} was already rejected", "ok")
        return redirect(url_for("page"), 303)

    # -- the JSON API: the CLI's --json, from the same functions ---------------------------------------
    @app.get("/api/version")
    def api_version() -> Response:
        return json_response({"version": version(shared.store())})

    @app.get("/api/board")
    def api_board() -> Response:
        pipeline = shared.pipeline()
        return json_response(
            board(
                shared.store(), pipeline, shared.runs, viewer=g.identity.user, now=utcnow(),
                history_stage=stage_arg(pipeline), before=int_arg("before"), limit=config.history_limit,
            )
        )  # fmt: skip

    @app.get("/api/status")
    def api_status() -> Response:
        pipeline = shared.pipeline()
        stage = stage_arg(pipeline)
        return json_response(views.status(shared.store(), [stage] if stage else pipeline.names, utcnow()))

    @app.get("/api/history")
    def api_history() -> Response:
        """``history --json`` (``limit`` at most 500: older ones page by page with ``before``, an id)."""
        pipeline = shared.pipeline()
        limit = int_arg("limit")
        limit = 50 if limit is None else min(limit or HISTORY_MAX, HISTORY_MAX)
        release, before, stage = request.args.get("release") or None, int_arg("before"), stage_arg(pipeline)
        return json_response(views.history(shared.store(), stage=stage, release_id=release, limit=limit, before=before))

    @app.get("/api/releases")
    def api_releases() -> Response:
        return json_response(views.release_list(shared.store()))

    @app.get("/api/releases/<release_id>")
    def api_release(release_id: str) -> Response:
        return json_response(views.release_show(shared.store(), release_id))

    @app.get("/api/locks")
    def api_locks() -> Response:
        pipeline = shared.pipeline()
        return json_response(views.locks(shared.store(), stage_arg(pipeline), limit=int_arg("limit") or 50))

    @app.get("/api/check/<release_id>")
    def api_check(release_id: str) -> Response:
        """``promote RELEASE --to STAGE --check --json``, for the promoter ``as`` (default: the signed-in user)."""
        pipeline = shared.pipeline()
        stage = request.args.get("stage") or pipeline.first.name
        promoter = request.args.get("as") or g.identity.user or ""
        orchestrator = Orchestrator(pipeline, shared.store(), runner=None, user=promoter, display=NullDisplay())
        return json_response(views.promotion_check(orchestrator, release_id, stage))

    @app.get("/api/deployments/<int:deployment_id>")
    def api_deployment(deployment_id: int) -> Response:
        return json_response(deployment_view(shared.store().deployment(deployment_id), shared.runs))

    @app.get("/api/actions")
    def api_actions() -> Response:
        return json_response(audit.actions(shared.store(), limit=min(int_arg("limit") or 50, HISTORY_MAX)))

    return app
