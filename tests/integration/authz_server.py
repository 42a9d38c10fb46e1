"""A gRPC external authorization server (envoy.service.auth.v3.Authorization/Check, grpcio
with a generic handler), run as its own process for the ext_authz tests.

    python authz_server.py              prints "ready PORT" (gRPC)
    python authz_server.py http         prints "ready PORT" (the HTTP service variant)

It decides by the request's `x-authz` header, as the checked request reached it:

    allow       OK; upstream gets x-authz-append (append unset), x-authz-set (append false,
                replaces the client's), x-authz-added (append true, next to the client's);
                x-authz-remove-me is removed; the client gets x-authz-response: ok; the
                upstream's x-authz-check is what the server saw (JSON: method, path, host,
                scheme, protocol, size, body, context_extensions, the header names)
    deny        PERMISSION_DENIED with denied_response 401, body "nope", x-denied: yes
    deny-bare   PERMISSION_DENIED, no denied_response (the proxy's default: 403)
    slow        answers after 2 s (beyond the filter's timeout: an error)
    fail        the call fails with gRPC UNAVAILABLE (an error)
    (absent)    OK, nothing changed

The HTTP variant answers by the same header: allow is 200 with x-authz-set: s,
x-authz-append: a, x-authz-client: ok and x-authz-seen (JSON: method, path, the headers and
body it received); deny is 401 "nope" with x-denied: yes; fail is 503 "down"; slow
answers after 2 s; absent is 200.
"""

from __future__ import annotations

import json
import time
from concurrent import futures

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

METHOD = "/envoy.service.auth.v3.Authorization/Check"


def _header(key: str, value: str, append=None):
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
    if append is not None:
        option.append.value = append
    return option


def _seen(http) -> str:
    return json.dumps({"method": http.method, "path": http.path, "host": http.host,
                       "scheme": http.scheme, "protocol": http.protocol, "size": http.size,
                       "body": http.body, "headers": sorted(http.headers)}, sort_keys=True)


def check(request: bytes, context) -> bytes:
    check_request = external_auth_pb2.CheckRequest.FromString(request)
    attributes = check_request.attributes
    http = attributes.request.http
    verdict = http.headers.get("x-authz", "")
    response = external_auth_pb2.CheckResponse()
    if verdict == "slow":
        time.sleep(2)
    elif verdict == "fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "authorization service down")
    if verdict in ("deny", "deny-bare"):
        response.status.code = code_pb2.PERMISSION_DENIED
        if verdict == "deny":
            denied = response.denied_response
            denied.status.code = 401
            denied.body = "nope"
            denied.headers.append(_header("x-denied", "yes"))
        return response.SerializeToString()
    response.status.code = code_pb2.OK
    if verdict == "allow":
        ok = response.ok_response
        ok.headers.extend([_header("x-authz-append", "a"), _header("x-authz-set", "s", False),
                           _header("x-authz-added", "d", True),
                           _header("x-authz-check", _seen(http), False),
                           _header("x-authz-context",
                                   json.dumps(dict(attributes.context_extensions),
                                              sort_keys=True), False)])
        ok.headers_to_remove.append("x-authz-remove-me")
        ok.response_headers_to_add.append(_header("x-authz-response", "ok"))
    return response.SerializeToString()


def serve() -> None:
    class Authorization(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method == METHOD:
                return grpc.unary_unary_rpc_method_handler(check)
            return None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((Authorization(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("ready", port, flush=True)
    server.wait_for_termination()


def serve_http() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            verdict = self.headers.get("x-authz", "")
            status, extra, text = 200, [], b""
            if verdict == "slow":
                time.sleep(2)
            if verdict == "deny":
                status, extra, text = 401, [("x-denied", "yes")], b"nope"
            elif verdict == "fail":
                status, text = 503, b"down"
            elif verdict == "allow":
                seen = json.dumps({"method": self.command, "path": self.path,
                                   "headers": sorted(f"{k.lower()}: {v}"
                                                     for k, v in self.headers.items()),
                                   "body": body.decode("latin-1")}, sort_keys=True)
                extra = [("x-authz-set", "s"), ("x-authz-append", "a"),
                         ("x-authz-client", "ok"), ("x-authz-seen", seen)]
            self.send_response(status)
            for name, value in extra:
                self.send_header(name, value)
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("ready", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    import sys
    serve_http() if sys.argv[1:] == ["http"] else serve()
