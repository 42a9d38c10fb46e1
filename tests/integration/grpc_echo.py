"""A gRPC echo server and a gRPC load client (grpcio, generic handlers: no generated code),
each run as its own process for the HTTP/2 tests.

    python grpc_echo.py server                 prints "ready PORT"
    python grpc_echo.py client PORT STOP_FILE [MAX_SECONDS]
        8 threads call /test.Echo/Call, and 2 threads make server-streaming calls of 10
        messages 40 ms apart (/test.Echo/Stream), on one channel until STOP_FILE exists (or
        MAX_SECONDS pass); prints "started", then one JSON line {"ok": n, "failed": n,
        "streams": n, "errors": [...]} (a stream counts in ok and streams when every message
        came, in order).

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
    stream = channel.unary_stream(STREAM_METHOD)
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    result = {"ok": 0, "failed": 0, "streams": 0, "errors": []}

    def unary(n: int):
        payload = b"echo %d" % n
        answer = call(payload, timeout=10)
        return None if answer == payload else f"wrong answer {answer!r}"

    def streaming(n: int):
        # 0.4 s a call: with two threads at it, every reload still meets streams under way,
        # and the old generation, which finishes them, is gone sooner than after 1 s calls.
        answers = list(stream(b"10,40", timeout=20))
        return None if answers == [b"%d" % i for i in range(10)] else f"stream got {answers!r}"

    def run(one) -> None:
        n = 0
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            n += 1
            try:
                error = one(n)
            except grpc.RpcError as exc:
                error = f"{exc.code()}: {exc.details()}"
            with lock:
                if error is None:
                    result["ok"] += 1
                    result["streams"] += one is streaming
                else:
                    result["failed"] += 1
                    if len(result["errors"]) < 10:
                        result["errors"].append(error)
    threads = [threading.Thread(target=run, args=(unary,)) for _ in range(8)] + \
        [threading.Thread(target=run, args=(streaming,)) for _ in range(2)]
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
