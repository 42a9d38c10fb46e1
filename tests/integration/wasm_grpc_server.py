"""The gRPC service the Wasm gRPC callout tests call (grpcio, generic handlers), as a process:

    python wasm_grpc_server.py          prints "ready PORT"

/test.Wasm/Echo     unary: answers the request's bytes, and "|" and its metadata x-meta if any
/test.Wasm/Deny     unary: fails with PERMISSION_DENIED (7) "denied here"
/test.Wasm/Hold     unary: answers only when the client goes (for timeouts and cancels; the
                    handler waits on the call's own end, bounded to 30 s)
/test.Wasm/Chat     bidirectional: initial metadata x-initial: yes, each message answered
                    b"echo:" + message, trailing metadata x-trailing: done, status OK
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc


def _echo(request, context):
    meta = dict(context.invocation_metadata()).get("x-meta")
    return request + (b"|" + meta.encode() if meta is not None else b"")


def _deny(request, context):
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied here")


def _hold(request, context):
    gone = threading.Event()
    context.add_callback(gone.set)
    gone.wait(30)
    return request


def _chat(requests, context):
    context.send_initial_metadata((("x-initial", "yes"),))
    for message in requests:
        yield b"echo:" + message
    context.set_trailing_metadata((("x-trailing", "done"),))


class Service(grpc.GenericRpcHandler):
    def service(self, details):
        return {
            "/test.Wasm/Echo": lambda: grpc.unary_unary_rpc_method_handler(_echo),
            "/test.Wasm/Deny": lambda: grpc.unary_unary_rpc_method_handler(_deny),
            "/test.Wasm/Hold": lambda: grpc.unary_unary_rpc_method_handler(_hold),
            "/test.Wasm/Chat": lambda: grpc.stream_stream_rpc_method_handler(_chat),
        }.get(details.method, lambda: None)()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((Service(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("ready", port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
