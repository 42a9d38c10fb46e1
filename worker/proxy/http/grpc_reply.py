"""A local reply to a gRPC request, as Envoy writes it: trailers-only.

A gRPC client reads an HTTP error as a broken call, so Envoy answers a gRPC request (by its
content-type) with HTTP 200, content-type application/grpc, grpc-status and the reply's body
as grpc-message, and no body (Envoy's Utility::sendLocalReply; the status follows gRPC's
HTTP-to-gRPC mapping unless the caller names one).
"""

from __future__ import annotations

# gRPC's doc/http-grpc-status-mapping.md, as Envoy's Grpc::Utility::httpToGrpcStatus has it.
_FROM_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
UNKNOWN = 2
DEADLINE_EXCEEDED = 4


def is_grpc(headers) -> bool:
    """content-type application/grpc, alone or followed by '+' or ';' (Envoy's
    Grpc::Common::hasGrpcContentType: application/grpc-web is not gRPC)."""
    content_type = headers.get("content-type")
    if content_type is None or not content_type.startswith("application/grpc"):
        return False
    return len(content_type) == 16 or content_type[16] in "+;"


def grpc_status_of(http_status: int) -> int:
    return _FROM_HTTP.get(http_status, UNKNOWN)


def percent_encoded(message: str) -> str:
    """grpc-message: bytes outside printable ASCII, and '%', as %XX (gRPC's PROTOCOL-HTTP2)."""
    out = []
    for byte in message.encode():
        out.append(chr(byte) if 0x20 <= byte <= 0x7e and byte != 0x25 else f"%{byte:02X}")
    return "".join(out)


def reply_headers(http_status: int, body: bytes, grpc_status: int | None) -> list:
    """The headers of the trailers-only answer that replaces a local reply."""
    status = grpc_status if grpc_status is not None else grpc_status_of(http_status)
    headers = [("content-type", "application/grpc"), ("grpc-status", str(status))]
    if body:
        headers.append(("grpc-message", percent_encoded(body.decode("latin-1"))))
    return headers
