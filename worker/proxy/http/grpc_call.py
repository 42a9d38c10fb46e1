"""One unary gRPC call from the worker to a cluster (Envoy's AsyncClient over envoy_grpc),
an UpstreamCall (upstream_call.py) on an HTTP/2 connection of the cluster's pool:

    POST /<service>/<method>, content-type application/grpc, te: trailers, grpc-timeout
    DATA: 0, length (4 bytes, big-endian), the message           (gRPC length-prefixed)
    <- HEADERS (:status 200), DATA (one message), TRAILERS (grpc-status, grpc-message)

The outcome goes to `done(status, message, text)` once: gRPC status 0 with the reply's bytes,
or a non-zero status (the server's, or 14 UNAVAILABLE for a connection that failed, 4
DEADLINE_EXCEEDED when the timeout fired) with None. `cancel()` stops a call whose caller
went away; `done` is then never called.
"""

from __future__ import annotations

from ...codecs.message import Headers, Request
from .router import grpc_timeout_value
from .upstream_call import TIMEOUT, UpstreamCall

OK = 0
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
INTERNAL = 13
UNAVAILABLE = 14
MAXIMUM_KNOWN = 16              # UNAUTHENTICATED
INVALID_CODE = -1               # Envoy's Status::WellKnownGrpcStatus::InvalidCode


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (not compressed), 4-byte length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(data: bytes) -> bytes | None:
    """The first message of a gRPC body, or None when the body holds no whole message."""
    if len(data) < 5 or data[0] != 0:
        return None
    length = int.from_bytes(data[1:5], "big")
    return data[5:5 + length] if len(data) >= 5 + length else None


# grpc-timeout as Envoy's Grpc::Common::toGrpcTimeout writes it: whole milliseconds ("200m"),
# a larger unit (S, M, H) past gRPC's 8 digits ("200000S" for 200,000,000 ms). One formatter
# for the router, ext_authz and Wasm's callouts.
grpc_timeout = grpc_timeout_value


def grpc_status(value: str | None) -> int | None:
    """grpc-status as Envoy's Grpc::Common::getGrpcStatus reads it: None when absent or empty,
    -1 (InvalidCode) unless ASCII digits naming a known code (0-16): "\xb2" read as latin-1
    is "²", which str.isdigit() takes and int() refuses."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAXIMUM_KNOWN:
        return INVALID_CODE
    return int(value)


class UnaryCall:
    """A unary call over an UpstreamCall (upstream_call.py); `done(code, message, text)`."""

    __slots__ = ("call", "done")

    def __init__(self, worker, cluster, done):
        self.call = UpstreamCall(worker, cluster, self._answered)
        self.done = done

    @property
    def finished(self) -> bool:
        return self.call.finished

    def start(self, path: str, authority: str, message: bytes, timeout: float | None,
              metadata=()) -> None:
        """Send the call. `timeout` None or 0: no deadline."""
        headers = [("content-type", "application/grpc"), ("te", "trailers")]
        if timeout:
            headers.append(("grpc-timeout", grpc_timeout(timeout)))
        headers.extend(metadata)
        request = Request("POST", path, authority, Headers(headers), "http", "2")
        self.call.start(request, frame(message), timeout, True)

    def cancel(self) -> None:
        self.call.cancel()

    def _answered(self, response, body: bytes, trailers, failure: str) -> None:
        if response is None:
            self.done(DEADLINE_EXCEEDED if failure == TIMEOUT else UNAVAILABLE, None, failure)
        elif response.status != 200:
            # gRPC's HTTP-to-status mapping (a proxy or server answering without gRPC).
            self.done(UNAVAILABLE if response.status in (502, 503, 504) else UNKNOWN, None,
                      f"HTTP {response.status}")
        else:
            code = grpc_status((trailers if trailers is not None else response.headers)
                               .get("grpc-status"))
            if code is None:
                code = UNKNOWN
            message = unframe(body) if code == OK else None
            if code == OK and message is None:
                code = INTERNAL
            text = (trailers if trailers is not None else response.headers).get("grpc-message")
            self.done(code, message, text or "")
