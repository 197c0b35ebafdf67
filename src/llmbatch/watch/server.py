"""The live page's HTTP server: read-only, on 127.0.0.1, in a daemon thread.

    server = serve_live_page(LiveState("out.jsonl"), port=0)   # 0: any free port
    server.url                                                 # http://127.0.0.1:PORT/
    server.close()

Four routes, GET (and HEAD) only: `/` (the page), `/live.js`, `/plotly.js` (from the
installed plotly package) and `/data.json` (`LiveState.payload`). Anything else is 404, any
other method 405. Requests naming another host are refused (403), so a web page elsewhere
cannot read the run through DNS rebinding, and the responses forbid framing, sniffing and
any script or connection not from this server (Content-Security-Policy).

Why the standard library's `ThreadingHTTPServer` and not aiohttp: the page must not share the
run's event loop (a refresh reads the whole output; the loop must keep sending), and four
static routes need nothing more. Its access log is silenced: the library never prints.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .page import PAGE, SCRIPT
from .state import LiveState

__all__ = ["HOST", "LivePageServer", "serve_live_page"]

HOST = "127.0.0.1"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; font-src 'self' data:; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LivePageServer:
    """A running page; `close()` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.httpd = httpd
        self.thread = thread
        self.port = int(httpd.server_address[1])
        self.url = f"http://{HOST}:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def serve_live_page(state: LiveState, port: int = 0) -> LivePageServer:
    """Serve `state` at http://127.0.0.1:PORT/ until closed. OSError if the port is taken;
    `MissingExtraError` without plotly (`pip install 'llmbatch[report]'`)."""
    from ..report.html import _plotly

    _plotly()  # the plots need it: say so now, not on the first refresh
    from plotly.offline import get_plotlyjs

    files: dict[str, tuple[str, bytes]] = {
        "/": ("text/html; charset=utf-8", PAGE.encode()),
        "/live.js": ("text/javascript; charset=utf-8", SCRIPT.encode()),
        "/plotly.js": ("text/javascript; charset=utf-8", get_plotlyjs().encode()),
    }
    allowed: set[str] = set()  # filled once the port is known
    httpd = ThreadingHTTPServer((HOST, port), _handler(state, files, allowed))
    httpd.daemon_threads = True
    allowed.update({f"{HOST}:{httpd.server_address[1]}", f"localhost:{httpd.server_address[1]}"})
    thread = threading.Thread(target=httpd.serve_forever, name="llmbatch-live-page", daemon=True)
    thread.start()
    return LivePageServer(httpd, thread)


def _handler(state: LiveState, files: dict[str, tuple[str, bytes]], allowed: set[str]) -> Any:
    class Handler(BaseHTTPRequestHandler):
        server_version = "llmbatch-live"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, kind: str, body: bytes, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in _HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _answer(self, head: bool) -> None:
            if self.headers.get("Host", "") not in allowed:
                self._send(403, "text/plain", b"forbidden host\n", head)
                return
            path = self.path.split("?", 1)[0]
            if path == "/data.json":
                try:
                    body = state.payload()
                except OSError as exc:  # the output replaced or unreadable for a moment
                    message = f'{{"error": "cannot read the output: {exc.strerror}"}}'
                    self._send(503, "application/json", message.encode(), head)
                    return
                self._send(200, "application/json", body, head)
                return
            found = files.get(path)
            if found is None:
                self._send(404, "text/plain", b"not found\n", head)
                return
            self._send(200, found[0], found[1], head)

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    return Handler
