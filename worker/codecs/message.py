"""The HTTP message model shared by the codecs, the connection manager, the router and the
filters: what a request or response *is*, independent of HTTP/1.1 or HTTP/2.

Header names are lower-case `str` (HTTP/2 requires it, HTTP/1.1 is case-insensitive) and values
are `str` decoded as latin-1, so that bytes -> str -> bytes is lossless for any octet a codec
accepted. A `Headers` is an ordered list of (name, value) pairs: order and repeats are kept,
as a proxy must. The request pseudo-headers (Envoy's :method, :path, :authority, :scheme) are
attributes of `Request`, not entries of its `Headers`; `Request.get` answers for both, so a
route's header matcher on ":method" or ":authority" works as in Envoy.
"""

from __future__ import annotations

__all__ = ["Headers", "Request", "Response"]


class Headers:
    """Ordered (name, value) pairs with lower-case names."""

    __slots__ = ("items",)

    def __init__(self, items: list | None = None):
        self.items: list[tuple[str, str]] = items if items is not None else []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name` (lower-case), or `default`."""
        for key, value in self.items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.items if key == name]

    def joined(self, name: str) -> str | None:
        """All values of `name` joined with ',' (how Envoy matches a repeated header)."""
        values = self.get_all(name)
        return ",".join(values) if values else None

    def __contains__(self, name: str) -> bool:
        for key, _ in self.items:
            if key == name:
                return True
        return False

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every `name` by one `name: value` (at the first one's place, else at the end)."""
        items = self.items
        first = -1
        repeated = False
        for i, kv in enumerate(items):
            if kv[0] == name:
                if first < 0:
                    first = i
                else:
                    repeated = True
                    break
        if first < 0:
            items.append((name, value))
            return
        items[first] = (name, value)
        if repeated:
            items[first + 1:] = [kv for kv in items[first + 1:] if kv[0] != name]

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self.items.append((name, value))
            return value
        return current

    def remove(self, name: str) -> bool:
        """Remove every `name`; whether there was one."""
        items = self.items
        for key, _ in items:
            if key == name:
                break
        else:
            return False        # the usual case (a route's request_headers_to_remove): no copy
        self.items = [kv for kv in items if kv[0] != name]
        return True

    def copy(self) -> "Headers":
        return Headers(list(self.items))


class Request:
    """A request's head. `path` is the request target as sent (path and query);
    `authority` is the Host header (HTTP/1.1) or :authority (HTTP/2), "" when absent."""

    __slots__ = ("method", "path", "authority", "scheme", "headers", "version")

    def __init__(self, method: str, path: str, authority: str, headers: Headers,
                 scheme: str = "http", version: str = "1.1"):
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers
        self.version = version          # "1.0", "1.1" or "2": the downstream protocol

    def get(self, name: str) -> str | None:
        """A header's value by Envoy's name, pseudo-headers included; repeated headers are
        joined with ','."""
        if name[0] == ":":
            if name == ":method":
                return self.method
            if name == ":path":
                return self.path
            if name == ":authority":
                return self.authority
            if name == ":scheme":
                return self.scheme
            return None
        return self.headers.joined(name)

    @property
    def path_only(self) -> str:
        """The path without the query string (what route prefix/path/regex matchers see)."""
        q = self.path.find("?")
        return self.path if q < 0 else self.path[:q]

    @property
    def query(self) -> str:
        q = self.path.find("?")
        return "" if q < 0 else self.path[q + 1:]

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path} host={self.authority!r} {self.headers!r})"


class Response:
    __slots__ = ("status", "headers", "reason")

    def __init__(self, status: int, headers: Headers, reason: str = ""):
        self.status = status
        self.headers = headers
        self.reason = reason

    def __repr__(self) -> str:
        return f"Response({self.status} {self.headers!r})"
