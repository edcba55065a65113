"""A small HTTP server that implements the three Sentry endpoints ``sentry-cli`` calls for a deploy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    path: str
    authorization: str
    body: dict[str, Any]


@dataclass
class FakeSentry:
    url: str
    calls: list[Call] = field(default_factory=list)


def _release(version: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": version,
        "shortVersion": version,
        "ref": None,
        "url": None,
        "dateCreated": "2026-11-28T12:00:00Z",
        "dateReleased": body.get("dateReleased"),
        "dateStarted": body.get("dateStarted"),
        "lastEvent": None,
        "newGroups": 0,
        "commitCount": 0,
        "deployCount": 0,
        "authors": [],
        "projects": [{"slug": p, "name": p} for p in body.get("projects", [])],
        "data": {},
    }


@contextmanager
def fake_sentry() -> Iterator[FakeSentry]:
    state = FakeSentry(url="")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            state.calls.append(Call(self.command, self.path, self.headers.get("Authorization", ""), body))
            parts = [p for p in self.path.split("/") if p]  # api 0 organizations ORG releases [V [deploys]]
            if self.command == "POST" and parts[-1] == "releases":
                self._reply(201, _release(body["version"], body))
            elif self.command == "PUT" and len(parts) == 6 and parts[4] == "releases":
                self._reply(200, _release(parts[5], body))
            elif self.command == "POST" and parts[-1] == "deploys":
                self._reply(201, {"id": str(len(state.calls)), **body})
            else:
                self._reply(404, {"detail": "not found"})

        do_POST = do_PUT = do_GET = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
