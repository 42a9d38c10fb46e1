"""A gRPC echo server and a gRPC load client (grpcio, generic handlers: no generated code),
each run as its own process for the HTTP/2 tests.

    python grpc_echo.py server                 prints "ready PORT"
    python grpc_echo.py client PORT STOP_FILE [MAX_SECONDS]
        8 threads call /test.Echo/Call on one channel until STOP_FILE exists (or MAX_SECONDS
        pass); prints "started", then one JSON line {"ok": n, "failed": n, "errors": [...]}.

grpcio's channel honours GOAWAY the way a mesh client does: streams the server accepted
finish, new ones go to a new connection. Any RpcError is a failure.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

METHOD = "/test.Echo/Call"
# Server streaming: the request b"N,MS" is answered by N messages b"0", b"1", ... one every MS ms
# (a long call that a reload must not cut; bench/reload_grpc.py uses it).
STREAM_METHOD = "/test.Echo/Stream"


def _stream(request: bytes, context):
    count, interval_ms = map(int, request.split(b","))
    for i in range(count):
        if i:
            time.sleep(interval_ms / 1000)
        yield b"%d" % i


def serve() -> None:
    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method == METHOD:
                return grpc.unary_unary_rpc_method_handler(lambda request, context: request)
            if details.method == STREAM_METHOD:
                return grpc.unary_stream_rpc_method_handler(_stream)
            return None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("ready", port, flush=True)
    server.wait_for_termination()


def load(port: int, stop_file: str, seconds: float) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(METHOD)
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    result = {"ok": 0, "failed": 0, "errors": []}

    def run() -> None:
        n = 0
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            payload = b"echo %d" % n
            n += 1
            try:
                answer = call(payload, timeout=10)
                good = answer == payload
                error = None if good else f"wrong answer {answer!r}"
            except grpc.RpcError as exc:
                good, error = False, f"{exc.code()}: {exc.details()}"
            with lock:
                if good:
                    result["ok"] += 1
                else:
                    result["failed"] += 1
                    if len(result["errors"]) < 10:
                        result["errors"].append(error)
    threads = [threading.Thread(target=run) for _ in range(8)]
    print("started", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        load(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 300.0)
