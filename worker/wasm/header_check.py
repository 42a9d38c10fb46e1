"""Whether headers a plugin gives for a callout (proxy_grpc_call's metadata, proxy_http_call's
headers) may go on the wire, as Envoy's router checks a request it sends
(HeaderUtility::checkValidRequestHeaders, reached by Wasm callouts through the AsyncClient):

    invalid_header(pairs) -> None, or Envoy's text for the first bad one:
        "invalid header name: <name>"       not an RFC 9110 token (after a leading ":")
        "invalid header value for: <name>"  a NUL, CR or LF in the value
    refused_call(request) -> bool           proxy_http_call's check (INTERNAL_FAILURE)

Measured with Envoy 1.40 and tests/fixtures/wasm/grpc.wat: metadata x-meta "a\\r\\nb" or
"a\\0b", or a name "x meta", fails the call as it starts (proxy_grpc_call INTERNAL_FAILURE,
then proxy_on_grpc_close 14 with that text and the details
filter_removed_required_request_headers{<text, "_" for " ">}); nothing goes upstream.
"""

from __future__ import annotations

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BAD_IN_VALUE = ("\0", "\r", "\n")


def invalid_header(pairs) -> str | None:
    for name, value in pairs:
        token = name[1:] if name[:1] == ":" else name
        if not token or not _TOKEN.issuperset(token):
            return f"invalid header name: {name}"
        if any(c in value for c in _BAD_IN_VALUE):
            return f"invalid header value for: {name}"
    return None


def details(text: str) -> str:
    """The response code details Envoy gives a request its router refused for `text`."""
    return "filter_removed_required_request_headers{" + text.replace(" ", "_") + "}"


def refused_call(request) -> bool:
    """Whether proxy_http_call refuses this request (INTERNAL_FAILURE, nothing sent): a NUL,
    CR or LF in a value, a name that is not a token. Measured with Envoy 1.40 and
    tests/fixtures/wasm/http_call_headers.wat: a NUL always gives INTERNAL_FAILURE; CR LF in a
    value or a space in a name gave INTERNAL_FAILURE in 6 calls of 8 and, in the other 2, OK
    then the router's local reply (503, the text as its body) to proxy_on_http_call_response.
    Baton takes the first: either way nothing goes upstream."""
    return invalid_header([(":method", request.method), (":path", request.path),
                           (":authority", request.authority), *request.headers.items]) \
        is not None
