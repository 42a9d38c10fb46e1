"""A Wasm module given as `vm_config.code.remote` (http_uri + sha256, retry_policy): fetched
when its config is translated, checked against its sha256.

    Remote(uri, sha256, timeout, retries, base, ceiling).get() -> (code or None, why)
    cached(sha256) -> code or None          (nack_on_code_cache_miss's question)
    fetch_in_background(remote)             (nack_on_code_cache_miss's fill)

Envoy 1.40 (source/extensions/common/wasm/wasm.cc createWasm, remote_async_datasource.cc):
the main thread fetches the code through `http_uri.cluster` while the listener warms (its
init target), GET `http_uri.uri` with `timeout` per try, a 200 whose body's sha256 is
`sha256` or the try failed; `retry_policy.num_retries` more tries (1 by default) after a
jittered exponential back-off (a random wait below `base_interval`, 1 s, doubling up to
`max_interval`, 10 s). When every try failed the plugin is not created, and the filter then
fails closed (503) or, with fail_open, steps aside; the config itself is accepted. Fetched
code is kept by its sha256 and not fetched again; a hash whose fetch failed is not fetched
again for 10 s (a config naming it fails at once). With `nack_on_code_cache_miss` a module
not already fetched NACKs the config ("Unable to create Wasm plugin <name>") and is fetched in
the background, so that the config is accepted when it comes again.

Baton fetches where the config is translated, the master for a bootstrap and the xDS agent
for LDS/ECDS, because that is where Envoy's main thread fetches: once, before any worker
runs the filter, and the check that follows (compile, ABI marker, proxy_on_vm_start /
proxy_on_configure) and the compiled-module cache (cache.py) then serve every worker. The
translation waits for the fetch, as Envoy's listener waits (warming). The difference: the
request goes to the URI's own host and port (DNS from this process), not through the named
cluster's endpoints and its TLS settings (the translator has no cluster manager); an https
URI is verified against the system's CAs. The fetched code is kept in this process and in
the module cache's directory (`<sha256>.wasm`), so a reload or an update finds it.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import urllib.error
import urllib.request

from . import cache

MAX_CODE = 64 << 20             # a module larger than this is refused (Envoy: no limit)
NEGATIVE_SECONDS = 10           # Envoy's CODE_CACHE_SECONDS_NEGATIVE_CACHING
_fetched: dict[str, bytes] = {}                 # sha256 -> code, this process's
_failed: dict[str, tuple[float, str]] = {}      # sha256 -> (when every try failed, why)
_in_flight: set[str] = set()


class Remote:
    __slots__ = ("uri", "sha256", "timeout", "retries", "base", "ceiling")

    def __init__(self, uri: str, sha256: str, timeout: float, retries: int = 1,
                 base: float = 1.0, ceiling: float = 10.0):
        self.uri = uri
        self.sha256 = sha256.lower()
        self.timeout = timeout
        self.retries = retries
        self.base = base
        self.ceiling = ceiling

    def get(self, sleep=time.sleep) -> tuple[bytes | None, str]:
        """The code (from what this process or the cache holds, else fetched, with the
        retries), or None and why the last try failed."""
        code = cached(self.sha256)
        if code is not None:
            return code, ""
        failed = _failed.get(self.sha256)
        if failed is not None and time.monotonic() - failed[0] < NEGATIVE_SECONDS:
            return None, failed[1]          # Envoy's negative cache: no new fetch yet
        why = ""
        ceiling = self.base
        for attempt in range(self.retries + 1):
            if attempt:
                sleep(random.random() * ceiling)
                ceiling = min(ceiling * 2, self.ceiling)
            code, why = self.try_once()
            if code is not None:
                keep(self.sha256, code)
                _failed.pop(self.sha256, None)
                return code, ""
        _failed[self.sha256] = (time.monotonic(), why)
        return None, why

    def try_once(self) -> tuple[bytes | None, str]:
        request = urllib.request.Request(self.uri, method="GET")
        try:
            with _OPENER.open(request, timeout=self.timeout or None) as response:
                status = response.status
                body = response.read(MAX_CODE + 1)
        except urllib.error.HTTPError as exc:
            return None, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:       # refused, timed out, a bad URI
            return None, str(getattr(exc, "reason", exc))
        if status != 200:
            return None, f"HTTP {status}"
        if len(body) > MAX_CODE:
            return None, f"larger than {MAX_CODE} bytes"
        if hashlib.sha256(body).hexdigest() != self.sha256:
            return None, "sha256 mismatch"
        return body, ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Envoy's fetcher takes a 200 only: a redirect is a failed try, not followed."""

    def redirect_request(self, *args):
        return None


# No proxy from the environment (Envoy's fetch goes straight to its cluster), no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def cached(sha256: str) -> bytes | None:
    """Code already fetched: by this process, or stored in the module cache's directory (and
    still matching its hash)."""
    sha256 = sha256.lower()
    code = _fetched.get(sha256)
    if code is not None:
        return code
    disk = cache.default("")
    if disk is None:
        return None
    path = os.path.join(disk.directory, f"{sha256}.wasm")
    try:
        info = os.lstat(path)
        if not cache.trusted(info):
            return None
        with open(path, "rb") as f:
            code = f.read(MAX_CODE + 1)
    except OSError:
        return None
    if hashlib.sha256(code).hexdigest() != sha256:
        return None
    _fetched[sha256] = code
    return code


def keep(sha256: str, code: bytes) -> None:
    _fetched[sha256] = code
    disk = cache.default("")
    if disk is not None:
        disk.store_bytes(f"{sha256}.wasm", code)


def fetch_in_background(remote: Remote) -> None:
    """nack_on_code_cache_miss: fill the cache for the config's next coming (one fetch per
    hash at a time)."""
    if remote.sha256 in _in_flight:
        return
    _in_flight.add(remote.sha256)

    def run():
        try:
            remote.get()
        finally:
            _in_flight.discard(remote.sha256)
    threading.Thread(target=run, name="wasm-fetch", daemon=True).start()
