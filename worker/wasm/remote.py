"""A Wasm module given as `vm_config.code.remote` (http_uri + sha256, retry_policy): fetched
when its config is translated, checked against its sha256.

    Remote(uri, sha256, timeout, retries, base, ceiling).get() -> (code or None, why)
    cached(sha256) -> code or None          (nack_on_code_cache_miss's question)
    fetch_in_background(remote)             (nack_on_code_cache_miss's fill)

Envoy 1.40 (source/extensions/common/wasm/wasm.cc createWasm, remote_async_datasource.cc):
the main thread fetches the code through `http_uri.cluster` while the listener warms (its
init target), GET `http_uri.uri`, each try whole within `timeout`, a 200 whose body's sha256 is
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
proxy_on_configure) and the compiled-module cache (cache.py) then serve every worker. As
Envoy's RemoteDataFetcher (it sends through the cluster manager's async client), the GET
goes through `http_uri.cluster`: to one of its endpoints (the next one on each try), over
its transport socket (TLS with the cluster's context, SNI and SAN checks), with the URI's
authority as Host and its path; the URI's own host is never dialled, and a cluster Baton
does not have (static, or active from CDS, with EDS endpoints) fails the try, as Envoy's
"no cluster". What translates says which clusters there are (use_clusters).

The xDS agent does not wait for a fetch on its event loop: its translation runs in
deferring(), which records a module neither held nor negatively cached and fails the
update's translation; the agent fetches those off the loop (a thread each) and translates the
update again with the fetches' outcomes (never fetching then). Meanwhile the agent's SDS
streams, warming timers, dumps and publishing go on, and so does the ADS stream: updates of
other types are applied and answered, those of the waiting one's type wait behind it
(xds/agent.py). The master's bootstrap waits for its fetches (Envoy's init waits for them
too), at most FETCH_BUDGET.

Differences: the fetch speaks HTTP/1.1 only (a cluster with http2_protocol_options is still
asked in HTTP/1.1); the cluster's `transport_socket` is used, not its
`transport_socket_matches`; its balancer is a round robin from a random start. The fetched
code is kept in this process and in the module cache's directory (`<sha256>.wasm`), so a
reload or an update finds it. Envoy ACKs an LDS update at once and warms the listener whose
module is fetched; Baton's agent applies the update's other resources at once and ACKs (or
NACKs) the update once the module is fetched and it is translated whole. Envoy's tries are
bounded by num_retries only; Baton's whole fetch by FETCH_BUDGET too, its body by MAX_CODE.
Through an EDS cluster, a bootstrap's module: Envoy's listener init waits for the cluster's
first EDS answer; the master has no EDS when it checks the bootstrap, so the fetch fails at
once, no try made, saying so (EDS_IN_BOOTSTRAP).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import socket
import threading
import time
import urllib.parse

from . import cache

# A module larger than this is refused, before its body is read when the head says its length,
# else once the body passes it: Baton's bound (Envoy's fetcher keeps a body of any size), so a
# huge or endless body costs at most this much memory; the same as the cache's reads below.
MAX_CODE = 64 << 20
# The whole fetch, every try and back-off included, ends by this many seconds: Baton's bound
# (Envoy's tries go on as long as num_retries says, with a warming listener or init waiting),
# so a dead server and a large num_retries cannot hold the master's bootstrap check for ever.
FETCH_BUDGET = 60.0
NEGATIVE_SECONDS = 10           # Envoy's CODE_CACHE_SECONDS_NEGATIVE_CACHING
_fetched: dict[str, bytes] = {}                 # sha256 -> code, this process's
_failed: dict[str, tuple[float, str]] = {}      # sha256 -> (when every try failed, why)
_in_flight: set[str] = set()
_clusters = None            # name -> translated cluster, what the translation may fetch through
_eds = None                 # EDS service name -> endpoints, or None
_deferred: dict | None = None   # sha256 -> Remote: the agent's fetches to make off its loop
_outcomes: dict = {}            # sha256 -> (code or None, why): fetched for this translation
_waits = 0                      # translations failed by defer() in this deferring()

# Envoy 1.40's remote code stats (measured on its /stats, named in wasm.cc's createWasm and
# stats_handler.cc): wasm.remote_load_cache_{hits,misses,negative_hits},
# wasm.remote_load_fetch_{successes,failures}, the gauge wasm.remote_load_cache_entries.
# Listed (at 0) once any Wasm filter is translated in this process, as Envoy lists them.
COUNTERS = ("remote_load_cache_hits", "remote_load_cache_misses",
            "remote_load_cache_negative_hits", "remote_load_fetch_successes",
            "remote_load_fetch_failures")
_counts = dict.fromkeys(COUNTERS, 0)
_declared = False


def _count(really: bool, name: str) -> None:
    if really:
        _counts[name] += 1


def declare_stats() -> None:
    global _declared
    _declared = True


def stats() -> tuple[dict, dict]:
    """(counters, gauges) of this process's remote code, by Envoy's names; empty before any
    Wasm filter was translated here."""
    if not _declared:
        return {}, {}
    entries = len(_fetched.keys() | _failed.keys())     # Envoy's code cache: negatives too
    return ({f"wasm.{name}": value for name, value in _counts.items()},
            {"wasm.remote_load_cache_entries": entries})


class Upstream:
    """What a fetch goes through: a cluster's endpoints (host, port) and its TLS spec."""
    __slots__ = ("cluster", "endpoints", "tls", "unavailable")

    def __init__(self, cluster: str, endpoints: list, tls: dict | None, unavailable: str = ""):
        self.cluster = cluster
        self.endpoints = endpoints
        self.tls = tls
        self.unavailable = unavailable      # why no try can reach it (no try is made)


EDS_IN_BOOTSTRAP = ("cluster %s takes its endpoints from EDS, which Baton does not have when "
                    "it checks the bootstrap (Envoy waits for them): fetch bootstrap Wasm code "
                    "through a cluster with static endpoints, or send the listener over LDS")


def use_clusters(clusters, eds=None) -> None:
    """The clusters a remote fetch may go through: a mapping of name -> translated cluster
    (xds/translate.py), and for EDS clusters a callable service name -> endpoints or None."""
    global _clusters, _eds
    _clusters, _eds = clusters, eds


def upstream_of(name: str) -> Upstream | None:
    """The cluster `name` as a fetch uses it now, or None when there is no such cluster."""
    spec = _clusters.get(name) if _clusters is not None else None
    if spec is None:
        return None
    endpoints = spec.get("endpoints") or []
    if spec.get("type") == "EDS":
        if _eds is None:
            # The bootstrap's check in the master, before the xDS agent runs: Envoy's
            # listener would wait for the cluster's first EDS answer (its init), Baton's
            # master cannot, so it says why at once rather than try an empty cluster.
            return Upstream(name, [], spec.get("transport_socket"), EDS_IN_BOOTSTRAP % name)
        endpoints = _eds(spec["eds"]["service_name"]) or []
    return Upstream(name, [(e["address"], e["port"]) for e in endpoints],
                    spec.get("transport_socket"))


@contextlib.contextmanager
def deferring(outcomes: dict | None = None, recorded: dict | None = None):
    """Within: a Remote whose code is neither held nor negatively cached is recorded (yielded
    dict, by sha256) instead of fetched; its translation fails (defer() says so). `outcomes`:
    sha256 -> what fetch_deferred() gave, the answer of get() for those (already counted), so
    that the translation again never fetches, even once a failure's negative entry expired.
    `recorded`: modules recorded (and counted) by an earlier deferring(), recorded into."""
    global _deferred, _outcomes, _waits
    _deferred, _outcomes, _waits = ({} if recorded is None else recorded), outcomes or {}, 0
    try:
        yield _deferred
    finally:
        _deferred, _outcomes = None, {}


def waits() -> int:
    """Inside deferring(): how many translations defer() failed (each one error)."""
    return _waits


class Remote:
    __slots__ = ("uri", "sha256", "timeout", "retries", "base", "ceiling", "upstream", "_next")

    def __init__(self, uri: str, sha256: str, timeout: float, retries: int = 1,
                 base: float = 1.0, ceiling: float = 10.0, upstream: Upstream | None = None):
        self.uri = uri
        self.sha256 = sha256.lower()
        self.timeout = timeout
        self.retries = retries
        self.base = base
        self.ceiling = ceiling
        self.upstream = upstream            # None: the cluster does not exist
        self._next = random.randrange(1 << 16)      # the endpoint of the next try

    def held(self) -> bytes | None:
        """nack_on_code_cache_miss's question: the code held now, the lookup counted."""
        code = cached(self.sha256)
        _count(True, "remote_load_cache_hits" if code is not None else
               "remote_load_cache_negative_hits" if _negative(self.sha256) is not None else
               "remote_load_cache_misses")
        return code

    def defer(self) -> bool:
        """Inside deferring(): True, and recorded, when get() would have to fetch."""
        if _deferred is None or self.sha256 in _outcomes or \
                cached(self.sha256) is not None or _negative(self.sha256) is not None:
            return False
        global _waits
        _waits += 1
        if self.sha256 not in _deferred:
            _deferred[self.sha256] = self
            _count(True, "remote_load_cache_misses")
        return True

    def get(self, sleep=time.sleep, count: bool = True) -> tuple[bytes | None, str]:
        """The code (from what this process or the cache holds, else fetched, with the
        retries), or None and why the last try failed. `count`: the lookup counts a cache
        hit, negative hit or miss (a fetch counts its success or failure in any case)."""
        outcome = _outcomes.get(self.sha256)
        if outcome is not None:             # fetched for the agent's deferral: counted then
            return outcome
        code = cached(self.sha256)
        if code is not None:
            _count(count, "remote_load_cache_hits")
            return code, ""
        why = _negative(self.sha256)
        if why is not None:                 # Envoy's negative cache: no new fetch yet
            _count(count, "remote_load_cache_negative_hits")
            return None, why
        _count(count, "remote_load_cache_misses")
        return self.fetch(sleep)

    def fetch(self, sleep=time.sleep, budget: float = FETCH_BUDGET) -> tuple[bytes | None, str]:
        """The tries, all of them within `budget` seconds (no try or wait past it); the code
        kept, or the failure negatively cached."""
        why = ""
        ceiling = self.base
        end = time.monotonic() + budget
        unavailable = self.upstream is not None and self.upstream.unavailable
        for attempt in range(0 if unavailable else self.retries + 1):
            if attempt:
                left = end - time.monotonic()
                sleep(min(random.random() * ceiling, max(left, 0)))
                ceiling = min(ceiling * 2, self.ceiling)
            if end - time.monotonic() <= 0:
                why = f"{why}; no time left for another try within {budget:g} s".lstrip("; ")
                break
            code, why = self.try_once(end)
            if code is not None:
                keep(self.sha256, code)
                _failed.pop(self.sha256, None)
                _count(True, "remote_load_fetch_successes")
                return code, ""
        why = unavailable or why
        _failed[self.sha256] = (time.monotonic(), why)
        _count(True, "remote_load_fetch_failures")
        return None, why

    def fetch_deferred(self) -> tuple[bytes | None, str]:
        """The agent's fetch of a deferred module (its miss counted by defer()), off its loop;
        what it gives is the outcome for deferring() when the update is translated again."""
        return self.fetch()

    def try_once(self, end: float | None = None) -> tuple[bytes | None, str]:
        """One GET through the cluster: its next endpoint, its TLS; a 200 only. The whole try
        (connect, TLS, head, body) ends by `timeout` (Envoy's http_uri.timeout is the request's
        deadline, not a socket read's) or by `end` (time.monotonic()), the sooner."""
        upstream = self.upstream
        if upstream is None:
            return None, "no such cluster"
        if upstream.unavailable:
            return None, upstream.unavailable
        if not upstream.endpoints:
            return None, f"cluster {upstream.cluster} has no endpoints"
        host, port = upstream.endpoints[self._next % len(upstream.endpoints)]
        self._next += 1
        parts = urllib.parse.urlsplit(self.uri)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if self.timeout:
            now = time.monotonic()
            end = now + self.timeout if end is None else min(end, now + self.timeout)
        connection = _ClusterConnection(host, port, end, upstream.tls)
        try:
            connection.request("GET", target, headers={"Host": parts.netloc})
            response = connection.getresponse()
            status = response.status
            body = _body(response) if status == 200 else b""
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if connection.expired:
                return None, "timed out (http_uri.timeout)"
            return None, str(exc) or type(exc).__name__     # refused, timed out, TLS, bad reply
        finally:
            connection.close()
            connection.release()
        if connection.expired:          # a body read until the close: cut short, not whole
            return None, "timed out (http_uri.timeout)"
        if status != 200:               # Envoy's fetcher: a 200 only, a redirect not followed
            return None, f"HTTP {status}"
        if body is None or len(body) > MAX_CODE:
            return None, f"larger than {MAX_CODE} bytes"
        if not body:                    # Envoy's fetcher: "body is empty", a failed try
            return None, "empty body"
        if hashlib.sha256(body).hexdigest() != self.sha256:
            return None, "sha256 mismatch"
        return body, ""


def _body(response) -> bytes | None:
    """The body, or None past MAX_CODE (said by its length before any of it is read)."""
    if response.length is not None and response.length > MAX_CODE:
        return None
    chunks, size = [], 0
    while size <= MAX_CODE:
        chunk = response.read(min(1 << 16, MAX_CODE + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks) if size <= MAX_CODE else None


class _ClusterConnection(http.client.HTTPConnection):
    """HTTP/1.1 to one endpoint of the cluster, over its transport socket when it has one
    (the worker's TLS client context: Envoy's verification, SNI and SAN matching).

    Ends by `end` (time.monotonic(), or None): each socket operation waits at most the time
    left, and a timer shuts the connection down when it runs out, which ends a read that a
    trickling server keeps alive one byte at a time (a socket timeout would not)."""

    def __init__(self, host, port, end: float | None, tls: dict | None):
        timeout = None if end is None else max(end - time.monotonic(), 0.001)
        super().__init__(host, port, timeout=timeout)
        self.tls = tls
        self.expired = False
        self._lock = threading.Lock()
        self._watched = None        # a dup of the socket: its shutdown ends the TLS one's too
        self._timer = None
        if end is not None:
            self._timer = threading.Timer(timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self):
        with self._lock:
            self.expired = True
            if self._watched is not None:
                with contextlib.suppress(OSError):
                    self._watched.shutdown(socket.SHUT_RDWR)

    def release(self):
        """After close(), which http.client also calls when a response is read to its close
        (the watch must outlive that)."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._watched is not None:
                self._watched.close()
                self._watched = None

    def connect(self):
        super().connect()
        with self._lock:
            self._watched = self.sock.dup()
            if self.expired:
                raise TimeoutError("timed out")
        if self.tls is None:
            return
        if self.tls.get("missing_secrets"):
            raise OSError(f"TLS secrets not known yet: {', '.join(self.tls['missing_secrets'])}")
        from ..tls.client import TlsClient
        client = TlsClient(self.tls)
        try:
            context, _keylog = client.context_for(client.alpn_for(()))
            self.sock = context.wrap_socket(self.sock, server_hostname=self.tls["sni"])
            failed = client.verify(self.sock)
        finally:
            client.close()
        if failed is not None:
            raise OSError(f"TLS: {failed}")


def _negative(sha256: str) -> str | None:
    """Why every try of a fetch of `sha256` failed, less than NEGATIVE_SECONDS ago; else None."""
    failed = _failed.get(sha256)
    if failed is not None and time.monotonic() - failed[0] < NEGATIVE_SECONDS:
        return failed[1]
    return None


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
            remote.get(count=False)         # the translation counted its miss
        finally:
            _in_flight.discard(remote.sha256)
    threading.Thread(target=run, name="wasm-fetch", daemon=True).start()
