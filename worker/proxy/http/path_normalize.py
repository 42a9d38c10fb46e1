"""The HTTP connection manager's path normalization, as Envoy does it before routing.

Sans-IO: a request path (with its query) in, the verdict out.

    normalize(path, normalize_path, merge, escaped_slashes, grpc=False)
        -> (CONTINUE, new path) | (REDIRECT, new path) | (REJECT, None)

Envoy's order (ConnectionManagerUtility::maybeNormalizePath): first
path_with_escaped_slashes_action on %2F / %5C (either case): REJECT_REQUEST rejects a path
that has one, UNESCAPE_AND_FORWARD / UNESCAPE_AND_REDIRECT turn them into / and \\ (a redirect
only when something changed, and never for gRPC, which is rejected instead); then
normalize_path (`canonical`, below); then merge_slashes. A rejected request gets 400, a
redirect 307 with the new path as its location; the query is never touched.

`canonical` is Chromium's path canonicalization, which Envoy uses (RFC 3986 section 6.2.2),
as observed on Envoy 1.40 (tests/integration/test_path_differential.py): dot segments
removed (also written %2e), backslash as slash, escapes of unreserved characters decoded
(%41 -> A, %7e -> ~, %2e -> .), other escapes kept as written (%2f, %7B, %25 stay), the
characters " < > ` { } | ^ and controls escaped; %00 makes the path invalid.
"""

from __future__ import annotations

import re

CONTINUE, REDIRECT, REJECT = "continue", "redirect", "reject"
KEEP_UNCHANGED = "KEEP_UNCHANGED"
REJECT_REQUEST = "REJECT_REQUEST"
UNESCAPE_AND_REDIRECT = "UNESCAPE_AND_REDIRECT"
UNESCAPE_AND_FORWARD = "UNESCAPE_AND_FORWARD"

_ESCAPED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)
_SLASHES = re.compile(r"/{2,}")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
_ESCAPED_AS_IS = frozenset('"<>`{}|^ ')


def normalize(path: str, normalize_path: bool, merge: bool, escaped_slashes: str,
              grpc: bool = False):
    result = CONTINUE
    if escaped_slashes not in ("", KEEP_UNCHANGED) and _ESCAPED_SLASH.search(path):
        if escaped_slashes == REJECT_REQUEST:
            return REJECT, None
        target, sep, query = path.partition("?")
        path = _ESCAPED_SLASH.sub(lambda m: "/" if m.group(1) in "2f2F" else "\\",
                                  target) + sep + query
        if escaped_slashes == UNESCAPE_AND_REDIRECT:
            if grpc:
                return REJECT, None
            result = REDIRECT
    if normalize_path:
        target, sep, query = path.partition("?")
        target = canonical(target)
        if target is None:
            return REJECT, None
        path = target + sep + query
    if merge and "//" in path:
        target, sep, query = path.partition("?")
        path = _SLASHES.sub("/", target) + sep + query
    return result, path


def canonical(path: str) -> str | None:
    """A path without its query -> its canonical form, or None when it is invalid."""
    if not path.startswith(("/", "\\")):
        return None
    segments: list[str] = []
    out = []                    # the current segment's characters
    i, n = 1, len(path)
    while True:
        if i >= n or path[i] in "/\\":
            segment = "".join(out)
            out = []
            dots = _dots(segment)
            if dots == 1:
                if i >= n:
                    segments.append("")         # "/a/." -> "/a/"
            elif dots == 2:
                if segments:
                    segments.pop()
                if i >= n:
                    segments.append("")         # "/a/b/.." -> "/a/"
            else:
                segments.append(segment)
            if i >= n:
                break
            i += 1
            continue
        char = path[i]
        if char == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            value = chr(int(path[i + 1:i + 3], 16))
            if value == "\0":
                return None
            out.append(value if value in _UNRESERVED else path[i:i + 3])
            i += 3
            continue
        if char in _ESCAPED_AS_IS or ord(char) < 0x20 or ord(char) >= 0x7f:
            out.append("".join(f"%{b:02X}" for b in char.encode()))
        else:
            out.append(char)
        i += 1
    return "/" + "/".join(segments)


def _dots(segment: str) -> int:
    """1 for ".", 2 for "..", else 0 (escapes of "." were decoded already)."""
    return {".": 1, "..": 2}.get(segment, 0)
