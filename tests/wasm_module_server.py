"""An HTTP server of Wasm modules for the remote-code tests (worker/wasm/remote.py).

    server = ModuleServer({"/m.wasm": code}, context=None, hold=None)
    server.port; server.seen -> [(Host, target)]; server.asked (an Event: a GET came)
    server.close()

Serves each path's code (404 for another), over TLS with `context` (an ssl server
context); with `hold` (an Event), each answer waits until it is set (20 s at most)."""

from __future__ import annotations

import http.server
import ssl
import threading


class ModuleServer:
    def __init__(self, modules: dict[str, bytes], context: ssl.SSLContext | None = None,
                 hold: threading.Event | None = None):
        self.seen: list[tuple[str, str]] = []
        self.asked = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.seen.append((self.headers["host"], self.path))
                owner.asked.set()
                if hold is not None:
                    hold.wait(20)
                code = modules.get(self.path.split("?")[0])
                if code is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-length", str(len(code)))
                self.end_headers()
                self.wfile.write(code)

            def log_message(self, *args):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hosts(self) -> list[str]:
        return [host for host, _ in self.seen]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
