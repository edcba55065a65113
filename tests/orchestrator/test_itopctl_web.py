"""The board (``itopctl serve``) through Flask's test client: read-only without authentication, tokens and trusted
proxies, CSRF, escaping, the JSON API equal to the CLI's ``--json``, history pages and run-log summaries."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from itopctl.errors import ExitCode, ItopctlError
from itopctl.store import Store
from itopctl.web import auth
from itopctl.web.app import BoardConfig, create_app
from itopctl.web.runlog import RunLogs
from itopctl_support import Project, seed_deployed

PROXY = "10.1.2.3"


def board_client(project: Project, *, proxies: tuple[str, ...] = (), tokens: bool = True) -> FlaskClient:
    Store.open(project.state_url).close()  # migrated, as `itopctl serve` does at start
    config = BoardConfig(
        state_url=project.state_url,
        pipeline=project.root / "pipeline.yml",
        runs_dir=project.root / "runs",
        trusted_proxies=auth.parse_proxies(proxies),
        tokens_file=project.root / "tokens" if tokens else None,
        history_limit=5,
    )
    app = create_app(config, secret_key=b"k" * 32)
    app.testing = True
    return app.test_client()


def add_token(project: Project, user: str) -> str:
    result = project.run("serve", "--tokens-file", str(project.root / "tokens"), "--add-token", user)
    assert result.code == 0, result.err
    return result.out.strip()


def csrf(client: FlaskClient, path: str = "/") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no form with a CSRF token on the page"
    return match.group(1)


def session_csrf(client: FlaskClient) -> str:
    """The session's CSRF token even where the page shows no form (what a forged form would need)."""
    client.get("/")
    with client.session_transaction() as session:
        return str(session["csrf"])


def login(client: FlaskClient, token: str) -> None:
    response = client.post("/login", data={"token": token, "csrf_token": csrf(client)})
    assert response.status_code == 303, response.get_data(as_text=True)


def approvals(project: Project, release: str) -> list[tuple[str, str]]:
    with project.store() as store:
        return [(a.stage, a.approver) for a in store.approvals(release)]


def promotable(project: Project) -> None:
    """r1 verified on dev and test long ago: only prod's two approvals stand between it and prod."""
    seed_deployed(project, "dev", "r1")
    seed_deployed(project, "test", "r1")


def test_read_only_without_authentication(sqlite_project: Project) -> None:
    promotable(sqlite_project)
    client = board_client(sqlite_project, tokens=False)
    page = client.get("/").get_data(as_text=True)
    assert "read-only board" in page and "<form" not in page
    assert 'id="stage-test"' in page and "r1" in page
    for path, data in (("/approve", {"release": "r1", "stage": "prod", "reason": "x"}), ("/login", {"token": "x"})):
        refused = client.post(path, data=data)
        assert refused.status_code == 403 and "read-only" in refused.get_data(as_text=True)
    assert approvals(sqlite_project, "r1") == []


def test_token_sign_in_approve_seen_by_promote_check(sqlite_project: Project) -> None:
    project = sqlite_project
    promotable(project)
    token = add_token(project, "bob")
    tokens_file = project.root / "tokens"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert token not in tokens_file.read_text() and auth.token_hash(token) in tokens_file.read_text()

    client = board_client(project)
    assert "your board token" in client.get("/").get_data(as_text=True)  # a sign-in form, no approve form
    refused = client.post("/login", data={"token": "not-a-token", "csrf_token": csrf(client)})
    assert refused.status_code == 403 and "unknown token" in refused.get_data(as_text=True)
    login(client, token)
    page = client.get("/").get_data(as_text=True)
    assert 'id="viewer">bob<' in page and "approve for prod" in page
    done = client.post(
        "/approve", data={"release": "r1", "stage": "prod", "reason": "pprd tests green", "csrf_token": csrf(client)}
    )
    assert done.status_code == 303
    assert "bob approved r1 for prod" in client.get("/").get_data(as_text=True)
    assert approvals(project, "r1") == [("prod", "bob")]

    # the CLI's gate sees it, and (as in the CLI) it does not count when bob promotes himself
    check = project.run("promote", "r1", "--to", "prod", "--check", user="alice")
    assert check.code == ExitCode.REFUSED and "1 of 2 approval(s) for prod (bob)" in check.err
    own = project.run("promote", "r1", "--to", "prod", "--check", user="bob")
    assert "your own approval (bob) does not count" in own.err
    # the board gives the same answer for each promoter
    for user, text in (("alice", "1 of 2 approval(s) for prod (bob)"), ("bob", "your own approval (bob)")):
        answer = client.get(f"/api/check/r1?stage=prod&as={user}").get_json()
        assert answer["status"] == "refused" and any(text in d for d in answer["details"])

    # recorded: who, how known, when, why, from where
    (action,) = client.get("/api/actions").get_json()
    assert (action["actor"], action["via"], action["action"], action["release_id"], action["stage"]) == (
        "bob", "token", "approve", "r1", "prod"
    )  # fmt: skip
    assert action["reason"] == "pprd tests green" and action["remote_addr"] == "127.0.0.1" and action["at"]
    assert action["result"] == "approved"

    # a removed token ends the session at once
    assert project.run("serve", "--tokens-file", str(tokens_file), "--remove-token", "bob").code == 0
    assert 'id="viewer"' not in client.get("/").get_data(as_text=True)


def test_csrf_token_required_on_every_post(sqlite_project: Project) -> None:
    promotable(sqlite_project)
    token = add_token(sqlite_project, "bob")
    client = board_client(sqlite_project)
    assert client.post("/login", data={"token": token}).status_code == 403  # no CSRF token: not even a sign-in
    login(client, token)
    form = {"release": "r1", "stage": "prod", "reason": "ok"}
    for bad in ({}, {"csrf_token": ""}, {"csrf_token": "forged"}):
        refused = client.post("/approve", data={**form, **bad})
        assert refused.status_code == 403 and "CSRF" in refused.get_data(as_text=True)
        assert client.post("/reject", data={"release": "r1", "reason": "x", **bad}).status_code == 403
    assert approvals(sqlite_project, "r1") == []
    with sqlite_project.store() as store:
        assert store.require_release("r1").rejected is None


def test_user_header_only_from_a_trusted_proxy(sqlite_project: Project) -> None:
    promotable(sqlite_project)
    client = board_client(sqlite_project, proxies=(PROXY, "192.168.0.0/24"), tokens=False)
    form = {"release": "r1", "stage": "prod", "reason": "ok"}
    # from 127.0.0.1 (not a proxy), the header is ignored and said so; an approve relying on it is refused
    spoofed = {"X-Forwarded-User": "carol"}
    page = client.get("/", headers=spoofed).get_data(as_text=True)
    assert 'id="viewer"' not in page and "not a trusted proxy: ignored" in page
    token = session_csrf(client)
    refused = client.post("/approve", headers=spoofed, data={**form, "csrf_token": token})
    assert refused.status_code == 403 and "not a trusted proxy" in refused.get_data(as_text=True)
    assert client.post("/approve", data={**form, "csrf_token": token}).status_code == 403  # nobody: sign in
    assert approvals(sqlite_project, "r1") == []

    # through the proxy: believed, approved, recorded with the proxy's address and who it forwarded for
    via = {"REMOTE_ADDR": "192.168.0.7"}
    headers = {"X-Forwarded-User": "carol", "X-Forwarded-For": "203.0.113.9"}
    page = client.get("/", headers=headers, environ_base=via).get_data(as_text=True)
    assert 'id="viewer">carol<' in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    done = client.post("/approve", headers=headers, environ_base=via, data={**form, "csrf_token": token})
    assert done.status_code == 303
    assert approvals(sqlite_project, "r1") == [("prod", "carol")]
    (action,) = client.get("/api/actions").get_json()
    assert (action["actor"], action["via"], action["remote_addr"], action["forwarded_for"]) == (
        "carol", "proxy", "192.168.0.7", "203.0.113.9"
    )  # fmt: skip
    # a proxy's header that is not a user name is not believed
    odd = client.get("/", headers={"X-Forwarded-User": "<b>x</b>"}, environ_base=via).get_data(as_text=True)
    assert 'id="viewer"' not in odd and "is not a user name" in odd


def test_html_in_reasons_is_shown_escaped(sqlite_project: Project) -> None:
    promotable(sqlite_project)
    sqlite_project.add("r2")
    evil = '<script>alert("x")</script><b>bold</b>'
    assert sqlite_project.run("release", "reject", "r2", "--reason", evil, user="bob").code == 0
    assert sqlite_project.run("approve", "r1", "--stage", "prod", "--reason", evil, user="bob").code == 0
    response = board_client(sqlite_project).get("/")
    page = response.get_data(as_text=True)
    assert "<b>bold</b>" not in page and '<script>alert("x")' not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;") == 2
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in policy and "frame-ancestors 'none'" in policy


def test_reject_from_the_page(sqlite_project: Project) -> None:
    promotable(sqlite_project)
    token = add_token(sqlite_project, "dave")
    client = board_client(sqlite_project)
    login(client, token)
    empty = client.post("/reject", data={"release": "r1", "reason": " ", "csrf_token": csrf(client)})
    assert empty.status_code == 303 and "must say why" in client.get("/").get_data(as_text=True)
    done = client.post("/reject", data={"release": "r1", "reason": "CVE-2026-1", "csrf_token": csrf(client)})
    assert done.status_code == 303
    page = client.get("/").get_data(as_text=True)
    assert "dave rejected r1" in page and "CVE-2026-1" in page
    shown = sqlite_project.run("release", "show", "r1", "--json").json()
    assert shown["release"]["rejected"]["rejected_by"] == "dave"
    refused = client.post(
        "/approve", data={"release": "r1", "stage": "prod", "reason": "ok", "csrf_token": csrf(client)}
    )
    assert refused.status_code == 303 and "cannot be approved" in client.get("/").get_data(as_text=True)
    results = [a["result"] for a in client.get("/api/actions").get_json()]
    assert results[0].startswith("refused: release r1 was rejected") and results[1] == "rejected"
    assert results[2] == "refused: --reason must say why"


def test_json_api_is_the_cli_json(project: Project) -> None:
    promotable(project)
    seed_deployed(project, "dev", "r2")
    assert project.run("approve", "r1", "--stage", "prod", "--reason", "ok", user="bob").code == 0
    assert project.run("approve", "r1", "--stage", "prod", "--reason", "ok", user="carol").code == 0
    assert project.run("lock", "prod", "--reason", "change window", user="alice").code == 0
    client = board_client(project)
    same: list[tuple[str, list[str]]] = [
        ("/api/status", ["status"]),
        ("/api/status?stage=test", ["status", "--stage", "test"]),
        ("/api/history", ["history"]),
        ("/api/history?stage=dev&limit=1", ["history", "--stage", "dev", "--limit", "1"]),
        ("/api/releases", ["release", "list"]),
        ("/api/releases/r1", ["release", "show", "r1"]),
        ("/api/locks", ["locks"]),
        ("/api/check/r1?stage=prod&as=alice", ["promote", "r1", "--to", "prod", "--check"]),
        ("/api/check/r2?stage=test&as=alice", ["promote", "r2", "--to", "test", "--check"]),
    ]
    for path, args in same:
        cli = project.run(*args, "--json", user="alice")
        assert cli.code == 0, (args, cli.err)
        api = client.get(path)
        assert api.status_code == 200 and api.mimetype == "application/json"
        assert api.get_json() == cli.json(), path
        assert api.get_data(as_text=True).strip() == cli.out.strip(), path  # the same text, even
    board = client.get("/api/board").get_json()
    assert [s["stage"] for s in board["stages"]] == ["dev", "test", "prod"]
    assert {s["stage"]: s["current"] for s in board["stages"]} == {"dev": "r2", "test": "r1", "prod": None}
    by_release = {p["release"]: p for p in board["promotions"]}
    assert by_release["r1"]["stage"] == "prod" and by_release["r1"]["approvals_missing"] == 0
    assert by_release["r1"]["check"]["status"] == "ready"
    assert by_release["r2"]["stage"] == "test" and by_release["r2"]["check"]["status"] == "ready"
    assert client.get("/api/history?stage=qa").status_code == 400
    assert client.get("/api/releases/nope").get_json()["exit_code"] == ExitCode.BAD_INPUT


def test_history_pages_and_run_log_summaries(sqlite_project: Project) -> None:
    project = sqlite_project
    for n in range(7):
        seed_deployed(project, "dev", f"r{n}")
    ident = "20261202T120000000000-prepare-abcd1234"
    run = project.root / "runs" / ident
    run.mkdir(parents=True)
    events: list[dict[str, Any]] = [
        {"at": "2026-12-02T12:00:00+00:00", "event": "playbook_on_task_start", "task": "fetch"},
        {"at": "2026-12-02T12:00:01+00:00", "event": "runner_on_failed", "host": "dev-1", "task": "fetch",
         "msg": "checksum <mismatch>"},
        {"at": "2026-12-02T12:00:03.500000+00:00", "event": "playbook_on_stats", "ok": {"dev-1": 3},
         "changed": {"dev-1": 1}, "failures": {"dev-1": 1}, "dark": {}},
    ]  # fmt: skip
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    with project.store() as store:
        store.update_deployment(7, runner_idents=[ident, "20261202T120100000000-switch-00000000"])
    client = board_client(project)
    page = client.get("/").get_data(as_text=True)
    shown = re.findall(r'id="deployment-(\d+)"', page)
    assert shown == ["7", "6", "5", "4", "3"] and "before=3" in page
    assert "prepare: 1 host(s), 1 task(s), 1 changed, FAILED on dev-1, 3.5s" in page
    assert "switch: run log not kept here" in page
    older = client.get("/?before=3").get_data(as_text=True)
    assert re.findall(r'id="deployment-(\d+)"', older) == ["2", "1"] and "before=" not in older
    detail = client.get("/deployments/7").get_data(as_text=True)
    assert "dev-1: fetch: checksum &lt;mismatch&gt;" in detail
    assert client.get("/api/deployments/7").get_json()["runs"][0]["failures"] == ["dev-1: fetch: checksum <mismatch>"]
    assert client.get("/?stage=dev&before=x").status_code == 400
    assert [d["id"] for d in client.get("/api/history?before=3&limit=1").get_json()] == [2]
    assert [d["id"] for d in client.get("/api/history?before=3&release=r0").get_json()] == [1]
    assert RunLogs(project.root / "runs").summary("../etc").found is False


def test_bearer_token_and_version(sqlite_project: Project) -> None:
    promotable(sqlite_project)
    token = add_token(sqlite_project, "erin")
    client = board_client(sqlite_project)
    assert client.get("/api/board", headers={"Authorization": f"Bearer {token}"}).get_json()["viewer"] == "erin"
    assert client.get("/api/board", headers={"Authorization": "Bearer nope"}).get_json()["viewer"] is None
    before = client.get("/api/version").get_json()["version"]
    assert client.get("/api/version").get_json()["version"] == before
    assert sqlite_project.run("lock", "dev", "--reason", "x").code == 0
    assert client.get("/api/version").get_json()["version"] != before


def test_tokens_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    tokens = auth.TokenFile(path)
    tokens.add("bob")
    path.chmod(0o644)
    with pytest.raises(ItopctlError, match="chmod 600"):
        tokens.load()
    with pytest.raises(ItopctlError, match="not a user name"):
        auth.TokenFile(tmp_path / "other").add("bob smith")
    with pytest.raises(ItopctlError, match="not an address"):
        auth.parse_proxies(["proxy.example"])


def test_settings_and_help(sqlite_project: Project) -> None:
    shown = sqlite_project.run("config", "--json").json()
    assert shown["listen"] == {"value": "127.0.0.1:8080", "source": "default"}
    assert shown["user_header"]["value"] == "X-Forwarded-User"
    env = dict(sqlite_project.env, ITOPCTL_TRUSTED_PROXIES="10.0.0.1, 10.0.0.2")
    sqlite_project.env = env
    assert sqlite_project.run("config", "--json").json()["trusted_proxies"]["value"] == ["10.0.0.1", "10.0.0.2"]
    bad = sqlite_project.run("serve", "--listen", "nowhere")
    assert bad.code == ExitCode.BAD_INPUT and "HOST:PORT" in bad.err
    assert sqlite_project.run("serve", "--help").code == 0
    assert sqlite_project.run("status", "--listen", "127.0.0.1:1").code == ExitCode.BAD_INPUT  # serve's own flag
