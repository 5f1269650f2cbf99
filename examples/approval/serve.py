#!/usr/bin/env python3
"""The reviewer's page: a tiny local web server for examples/approval (standard library only).

It serves index.html, app.js and the JavaScript client (clients/js/ringcast.js, read from this
checkout: no copy, no build step), and one endpoint, `GET /token`, that mints a short-lived
token for the peer `reviewer` through the broker's REST API (`POST /v1/tokens`, protocol.md §7)
and returns `{"url", "token", "peerId", "expiresAt"}`. The secret key stays in this process:
the page never sees it, and nothing secret is in any URL.

The token lets the page subscribe to `runs/*/progress` (and see who is there) and nothing else;
replying to a request needs no permission (docs/protocol.md, "Extensions: requests and replies").

In a real deployment `/token` is your application's backend, which first checks that the person
is allowed to review. This server listens on loopback only (by default) and checks nobody: it is
a demo.

    python3 examples/approval/serve.py --config examples/ringcast-examples.toml
    # -> approval page on http://127.0.0.1:8090/?run=demo
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
CLIENT_JS = HERE.parent.parent / "clients" / "js" / "ringcast.js"

# path -> (file, content type). Module scripts need a JavaScript MIME type.
FILES = {
    "/": (HERE / "index.html", "text/html; charset=utf-8"),
    "/index.html": (HERE / "index.html", "text/html; charset=utf-8"),
    "/app.js": (HERE / "app.js", "text/javascript; charset=utf-8"),
    "/style.css": (HERE / "style.css", "text/css; charset=utf-8"),
    "/ringcast.js": (CLIENT_JS, "text/javascript; charset=utf-8"),
}


def mint_token(a: argparse.Namespace) -> dict:
    """Ask the broker for a reviewer token (REST `POST /v1/tokens`, secret-key Bearer auth)."""
    body = json.dumps({"peerId": a.peer, "channels": [a.channels], "permissions": ["subscribe", "presence"],
                       "expiresInSec": a.token_ttl}).encode()
    req = urllib.request.Request(f"{a.rest}/v1/tokens", data=body, method="POST", headers={
        "Authorization": f"Bearer {a.key_id}:{a.key_secret}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.load(r)
    return {"url": a.url, "token": answer["token"], "peerId": a.peer, "expiresAt": answer["expiresAt"]}


def handler(a: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "approval-demo"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlsplit(self.path).path
            if path == "/token":
                try:
                    self.reply(200, "application/json", json.dumps(mint_token(a)).encode())
                except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
                    self.log_error("minting a token failed: %s", e)
                    self.reply(502, "application/json", json.dumps({"error": "token_unavailable"}).encode())
                return
            if path == "/favicon.ico":
                self.reply(204, "text/plain", b"")
                return
            entry = FILES.get(path)
            if entry is None:
                self.reply(404, "text/plain; charset=utf-8", b"not found\n")
                return
            self.reply(200, entry[1], entry[0].read_bytes())

        def reply(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, fmt: str, *args) -> None:
            if a.verbose:
                super().log_message(fmt, *args)

        def log_error(self, fmt: str, *args) -> None:
            super().log_message(fmt, *args)  # errors always, requests only with --verbose

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1", help="the broker's WebSocket URL, as the browser reaches it")
    ap.add_argument("--rest", default="http://127.0.0.1:8081", help="the broker's REST base URL (this server calls it)")
    ap.add_argument("--config", help="a broker config: its first app's first secret key mints the tokens")
    ap.add_argument("--key-id")
    ap.add_argument("--key-secret")
    ap.add_argument("--listen", default="127.0.0.1:8090", help="host:port to serve the page on (port 0: any free port)")
    ap.add_argument("--peer", default="reviewer", help="the peer id the page connects as")
    ap.add_argument("--channels", default="runs/*/progress", help="channel pattern the page may subscribe to")
    ap.add_argument("--token-ttl", type=int, default=900, help="seconds a page token lives (the page fetches a new one to reconnect)")
    ap.add_argument("--verbose", action="store_true", help="log every HTTP request")
    a = ap.parse_args()
    if a.config:
        import tomllib
        with open(a.config, "rb") as f:
            key = tomllib.load(f)["apps"][0]["secret_keys"][0]
        a.key_id, a.key_secret = key["id"], key["secret"]
    if not (a.key_id and a.key_secret):
        ap.error("give --config, or --key-id and --key-secret")
    a.rest = a.rest.rstrip("/")
    host, _, port = a.listen.rpartition(":")
    httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler(a))
    httpd.daemon_threads = True
    print(f"approval page on http://{httpd.server_address[0]}:{httpd.server_address[1]}/?run=demo", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
