"""A test ADS control plane on grpc.aio: state-of-the-world and delta, LDS/RDS/CDS/EDS.

It serves the AggregatedDiscoveryService of xds-protos (StreamAggregatedResources and
DeltaAggregatedResources) for the four type URLs below, from one versioned snapshot that a
test changes at runtime, and it records every request and every response so that a test can
assert how the client ACKs and NACKs.

Importable (the usual way, from a test):

    cp = ControlPlane()
    port = cp.start()                             # port=0 picks a free port; start(port) reuses one
    cp.set_resources(CLUSTER, [cluster_dict_or_message, ...], version="1")
    wait_until(lambda: cp.acked(CLUSTER, "1"), 10, "CDS v1 ACKed")
    cp.stop(); cp.start(port)                     # restart on the same port: streams drop, state stays
    cp.close()                                    # stop the server and its loop thread

As a process:

    python control_plane.py --port 0 [--resources FILE.yaml]
        prints "ready GRPC_PORT CONTROL_PORT" on stdout once both servers listen.
        SIGHUP re-reads FILE.yaml; SIGTERM/SIGINT stop. CONTROL_PORT is a tiny HTTP endpoint:
          GET  /requests             JSON list of request records (below)
          GET  /responses            JSON list of response records
          POST /resources            body {"type_url": T, "version": V, "resources": [...]}
          POST /reload               re-read FILE.yaml (same as SIGHUP, but answers when done)
          POST /stop, POST /start    stop / restart the gRPC server on the same port
    FILE.yaml is {"version": V, "resources": [ {"@type": T, ...Envoy JSON...}, ... ]}; loading it
    sets all four types at version V (a type with no resource in the file becomes empty).

Protocol rules of this file (what Envoy expects of a management server):

- Versions are per type URL. `set_resources(T, [...], V)` replaces the whole set of T and pushes
  it to every connected stream at once, whether or not the previous push was ACKed.
- A type with no version yet (never set) is never answered: the client waits (its
  initial_fetch_timeout applies). A type set to an empty list is answered with no resources.
- State of the world: LDS/CDS with no names (or "*") are wildcard; RDS/EDS answer only the names
  requested. A stream gets a response for T when T's version or its requested names differ from
  what was last sent on that stream. A NACK (error_detail set) is recorded and not answered: the
  client keeps its last good config until the test sets a new version.
- Delta: the server tracks, per stream and type, the subscribed names (LDS/CDS wildcard when the
  first request subscribes nothing, or "*") and the version of each resource the client holds
  (initial_resource_versions on reconnect, then what was sent). A response carries only the
  resources whose version changed and `removed_resources` for those gone from the snapshot. A
  resource's version is a hash of its bytes, so resending the same content sends nothing.
  `system_version_info` carries the type version the test set. After a delta NACK the server
  still counts the rejected versions as held: set different content to make it send again.
- Nonces are unique across the whole control plane's life (restarts included).

Request record (dict): seq, stream, protocol ("sotw"|"delta"), node_id, type_url, version_info
(sotw; "" for delta), response_nonce, resource_names (sotw), subscribe, unsubscribe,
initial_resource_versions (delta), error_detail (None or {"code", "message"}).
Response record: seq, stream, protocol, type_url, version_info, nonce, resource_names, removed.
ACK = a request on the same stream whose response_nonce is a response's nonce, with no
error_detail (and, in sotw, version_info equal to that response's version). NACK = the same
nonce with error_detail set (in sotw, version_info still the previous accepted version).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import itertools
import json
import os
import pkgutil
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

# The repository root is the `baton` package and has an `xds/` directory; with the root on
# sys.path (`python -m pytest` from the checkout), `import xds` would find it instead of the
# package xds-protos installs. Import the Envoy modules with the root hidden (see xds/protos.py).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def _unshadowed():
    for name in [n for n, m in sys.modules.items() if (n == "xds" or n.startswith("xds."))
                 and os.path.abspath(getattr(m, "__file__", None) or "").startswith(_ROOT + os.sep)]:
        del sys.modules[name]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
    try:
        yield
    finally:
        sys.path[:] = saved


with _unshadowed():
    import grpc
    from google.protobuf import any_pb2, json_format, message
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import extension_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"     # ECDS

_MESSAGES = {LISTENER: listener_pb2.Listener, ROUTE: route_pb2.RouteConfiguration,
             CLUSTER: cluster_pb2.Cluster, ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
             SECRET: secret_pb2.Secret, EXTENSION: extension_pb2.TypedExtensionConfig}
TYPE_URLS = tuple(_MESSAGES)
_WILDCARD_TYPES = (LISTENER, CLUSTER)


# ---- resources -----------------------------------------------------------------------------

def _import_any_types(obj) -> None:
    """Import the xds-protos package of every "@type" in a JSON-form resource, so json_format
    can parse any extension it names (Any needs its message in the descriptor pool)."""
    if isinstance(obj, dict):
        name = obj.get("@type")
        if isinstance(name, str) and "/" in name:
            package = name.rsplit("/", 1)[1].rsplit(".", 1)[0]
            with _unshadowed(), contextlib.suppress(ImportError):
                pkg = importlib.import_module(package)
                for info in pkgutil.iter_modules(pkg.__path__):
                    if info.name.endswith("_pb2"):
                        importlib.import_module(f"{package}.{info.name}")
        for value in obj.values():
            _import_any_types(value)
    elif isinstance(obj, list):
        for value in obj:
            _import_any_types(value)


def to_message(type_url: str, resource) -> message.Message:
    """A resource as its Envoy message: a message of the right class, or its JSON form (a
    dict; an "@type" key, if present, must name `type_url`)."""
    cls = _MESSAGES[type_url]
    if isinstance(resource, message.Message):
        if not isinstance(resource, cls):
            raise TypeError(f"{type(resource).__name__} is not a {cls.__name__}")
        return resource
    body = dict(resource)
    declared = body.pop("@type", None)
    if declared is not None and declared != type_url:
        raise ValueError(f"resource @type {declared} set as {type_url}")
    _import_any_types(body)
    return json_format.ParseDict(body, cls())


def resource_name(type_url: str, msg: message.Message) -> str:
    return msg.cluster_name if type_url == ENDPOINT else msg.name


class _Resource:
    __slots__ = ("name", "version", "any")

    def __init__(self, type_url: str, msg: message.Message):
        self.name = resource_name(type_url, msg)
        data = msg.SerializeToString(deterministic=True)
        self.version = hashlib.sha256(data).hexdigest()[:16]
        self.any = any_pb2.Any(type_url=type_url, value=data)


# ---- per-stream protocol state -------------------------------------------------------------

class _Stream:
    """One ADS stream: its event queue (requests from the client, pushes from the test) and,
    per type URL, what the client asked for and what it was sent."""

    def __init__(self, sid: int, protocol: str):
        self.sid = sid
        self.protocol = protocol
        self.node_id = ""
        self.events: asyncio.Queue = asyncio.Queue()
        # sotw
        self.names: dict[str, frozenset | None] = {}   # type -> requested names (None: wildcard)
        self.sent: dict[str, tuple] = {}                 # type -> (version, names) last sent
        # delta
        self.wildcard: dict[str, bool] = {}
        self.subscribed: dict[str, set] = {}
        self.known: dict[str, dict] = {}                 # type -> {name: resource version}


class _SdsServicer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """SecretDiscoveryService (an SDS server of its own, as Istio's node agent): the same
    protocol on another service, answered from the same snapshot (its Secrets)."""

    def __init__(self, ads: "_Servicer"):
        self.ads = ads

    async def StreamSecrets(self, request_iterator, context):
        await self.ads._serve(_Stream(self.ads.plane._next_stream(), "sotw"), request_iterator, context)

    async def DeltaSecrets(self, request_iterator, context):
        await self.ads._serve(_Stream(self.ads.plane._next_stream(), "delta"), request_iterator, context)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, plane: "ControlPlane"):
        self.plane = plane


    async def StreamAggregatedResources(self, request_iterator, context):
        await self._serve(_Stream(self.plane._next_stream(), "sotw"), request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator, context):
        await self._serve(_Stream(self.plane._next_stream(), "delta"), request_iterator, context)

    async def _serve(self, stream: _Stream, request_iterator, context) -> None:
        async def read():
            try:
                async for request in request_iterator:
                    stream.events.put_nowait(("request", request))
            finally:
                stream.events.put_nowait(("eof", None))

        plane = self.plane
        plane._streams.add(stream)
        reader = asyncio.create_task(read())
        try:
            while True:
                kind, item = await stream.events.get()
                if kind == "eof":
                    return
                if kind == "request":
                    type_url = item.type_url
                    if stream.protocol == "sotw":
                        plane._on_sotw_request(stream, item)
                    else:
                        plane._on_delta_request(stream, item)
                else:                                   # "push": the test changed item
                    type_url = item
                if type_url not in _MESSAGES:
                    continue
                response = (plane._sotw_response(stream, type_url) if stream.protocol == "sotw"
                            else plane._delta_response(stream, type_url))
                if response is not None:
                    await context.write(response)
        finally:
            reader.cancel()
            plane._streams.discard(stream)


# ---- the control plane ---------------------------------------------------------------------

class ControlPlane:
    """The server, its snapshot and its records. Public methods are called from any thread;
    the gRPC server runs on an asyncio loop in a thread of its own."""

    def __init__(self, host: str = "127.0.0.1", credentials=None):
        self.host = host                # or "unix:PATH": a Unix socket (the port is then 0)
        self.credentials = credentials  # grpc.ssl_server_credentials: serve over TLS
        self.port = 0
        self._versions: dict[str, str] = {}
        self._resources: dict[str, dict[str, _Resource]] = {t: {} for t in TYPE_URLS}
        self._streams: set[_Stream] = set()
        self._delta_answered: set[tuple] = set()     # (stream, type) answered at least once
        self._requests: list[dict] = []
        self._responses: list[dict] = []
        self._lock = threading.Lock()               # guards the two record lists
        self._seq = itertools.count(1)
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._server = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="xds-control-plane",
                                        daemon=True)
        self._thread.start()

    # -- lifecycle --

    def start(self, port: int | None = None, timeout: float = 10) -> int:
        """Listen on `port` (default: the last port, else a free one); return the port."""
        if self._server is not None:
            raise RuntimeError("control plane already started")
        want = self.port if port is None else port
        self.port = self._call(self._start(want), timeout)
        return self.port

    def stop(self, timeout: float = 10) -> None:
        """Stop serving: every stream ends with an error at once. The snapshot and the records
        stay, and start() listens again (on the same port by default)."""
        if self._server is not None:
            self._call(self._stop(), timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self.stop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    async def _start(self, port: int) -> int:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = _Servicer(self)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(_SdsServicer(servicer), server)
        unix = self.host.startswith("unix:")
        address = self.host if unix else f"{self.host}:{port}"
        bound = (server.add_secure_port(address, self.credentials) if self.credentials
                 else server.add_insecure_port(address))
        if bound == 0 and not unix:
            raise OSError(f"cannot bind {self.host}:{port}")
        await server.start()
        self._server = server
        return bound

    async def _stop(self) -> None:
        server, self._server = self._server, None
        await server.stop(grace=None)

    def _call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- the snapshot --

    def set_resources(self, type_url: str, resources, version: str) -> None:
        """Replace every resource of `type_url` (messages or their JSON-form dicts) and push the
        new set, at `version`, to every connected stream."""
        parsed = [_Resource(type_url, to_message(type_url, r)) for r in resources]
        self._call(self._set(type_url, {r.name: r for r in parsed}, str(version)), 10)

    async def _set(self, type_url: str, resources: dict, version: str) -> None:
        self._resources[type_url] = resources
        self._versions[type_url] = version
        for stream in self._streams:
            stream.events.put_nowait(("push", type_url))

    def version(self, type_url: str) -> str | None:
        return self._versions.get(type_url)

    def load_yaml(self, path: str) -> None:
        """Set all four types from a resources file (format in the module docstring)."""
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        version = str(doc.get("version", "1"))
        by_type: dict[str, list] = {t: [] for t in TYPE_URLS}
        for resource in doc.get("resources") or []:
            by_type[resource["@type"]].append(resource)
        for type_url, resources in by_type.items():
            self.set_resources(type_url, resources, version)

    # -- records --

    def requests(self, type_url: str | None = None, protocol: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._requests
                    if type_url in (None, r["type_url"]) and protocol in (None, r["protocol"])]

    def responses(self, type_url: str | None = None, protocol: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._responses
                    if type_url in (None, r["type_url"]) and protocol in (None, r["protocol"])]

    def clear_records(self) -> None:
        with self._lock:
            self._requests.clear()
            self._responses.clear()

    def connected(self, protocol: str | None = None) -> int:
        """How many streams are open now."""
        return sum(1 for s in list(self._streams) if protocol in (None, s.protocol))

    def acked(self, type_url: str, version: str) -> dict | None:
        """The request that ACKed a response of `type_url` at `version`, if any."""
        return self._answer(type_url, version, nack=False)

    def nacked(self, type_url: str, version: str) -> dict | None:
        """The request that NACKed a response of `type_url` at `version`, if any."""
        return self._answer(type_url, version, nack=True)

    def _answer(self, type_url: str, version: str, nack: bool) -> dict | None:
        with self._lock:
            sent = {(r["stream"], r["nonce"]): r for r in self._responses
                    if r["type_url"] == type_url and r["version_info"] == version}
            for q in self._requests:
                r = sent.get((q["stream"], q["response_nonce"]))
                if r is None or (q["error_detail"] is not None) != nack:
                    continue
                if not nack and q["protocol"] == "sotw" and q["version_info"] != version:
                    continue
                return dict(q)
        return None

    def _record_request(self, stream: _Stream, request, **fields) -> dict:
        if request.HasField("node") and request.node.id:
            stream.node_id = request.node.id
        error = None
        if request.HasField("error_detail"):
            error = {"code": request.error_detail.code, "message": request.error_detail.message}
        record = {"seq": next(self._seq), "stream": stream.sid, "protocol": stream.protocol,
                  "node_id": stream.node_id, "type_url": request.type_url,
                  "response_nonce": request.response_nonce, "error_detail": error,
                  "version_info": "", "resource_names": [], "subscribe": [], "unsubscribe": [],
                  "initial_resource_versions": {}}
        record.update(fields)
        with self._lock:
            self._requests.append(record)
        return record

    def _record_response(self, stream: _Stream, type_url: str, version: str, nonce: str,
                         names: list, removed: list) -> None:
        with self._lock:
            self._responses.append({"seq": next(self._seq), "stream": stream.sid,
                                    "protocol": stream.protocol, "type_url": type_url,
                                    "version_info": version, "nonce": nonce,
                                    "resource_names": names, "removed": removed})

    def _next_stream(self) -> int:
        return next(self._stream_ids)

    # -- state of the world (runs on the loop) --

    def _on_sotw_request(self, stream: _Stream, request) -> None:
        names = list(request.resource_names)
        self._record_request(stream, request, version_info=request.version_info,
                             resource_names=names)
        if request.type_url not in _MESSAGES or request.HasField("error_detail"):
            return
        wildcard = request.type_url in _WILDCARD_TYPES and (not names or "*" in names)
        stream.names[request.type_url] = None if wildcard else frozenset(names)

    def _sotw_response(self, stream: _Stream, type_url: str):
        version = self._versions.get(type_url)
        if version is None or type_url not in stream.names:
            return None
        names = stream.names[type_url]
        if stream.sent.get(type_url) == (version, names):
            return None
        stream.sent[type_url] = (version, names)
        resources = [r for r in self._resources[type_url].values() if names is None or r.name in names]
        nonce = str(next(self._nonces))
        self._record_response(stream, type_url, version, nonce, [r.name for r in resources], [])
        return discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce,
                                               resources=[r.any for r in resources])

    # -- delta (runs on the loop) --

    def _on_delta_request(self, stream: _Stream, request) -> None:
        type_url = request.type_url
        subscribe = list(request.resource_names_subscribe)
        unsubscribe = list(request.resource_names_unsubscribe)
        initial = dict(request.initial_resource_versions)
        self._record_request(stream, request, resource_names=list(subscribe), subscribe=subscribe,
                             unsubscribe=unsubscribe, initial_resource_versions=dict(initial))
        if type_url not in _MESSAGES:
            return
        if type_url not in stream.subscribed:        # first request of this type on the stream
            stream.subscribed[type_url] = set()
            stream.wildcard[type_url] = type_url in _WILDCARD_TYPES and not subscribe
            stream.known[type_url] = initial
        subscribed, known = stream.subscribed[type_url], stream.known[type_url]
        for name in subscribe:
            if name == "*":
                stream.wildcard[type_url] = True
            else:
                subscribed.add(name)
        for name in unsubscribe:
            if name == "*":
                stream.wildcard[type_url] = False
            else:
                subscribed.discard(name)
                known.pop(name, None)

    def _delta_response(self, stream: _Stream, type_url: str):
        version = self._versions.get(type_url)
        if version is None or type_url not in stream.subscribed:
            return None
        wildcard, subscribed = stream.wildcard[type_url], stream.subscribed[type_url]
        known = stream.known[type_url]
        current = self._resources[type_url]
        changed = [r for r in current.values()
                   if (wildcard or r.name in subscribed) and known.get(r.name) != r.version]
        removed = [n for n in known if n not in current]
        first = (stream.sid, type_url) not in self._delta_answered
        if not changed and not removed and not first:
            return None
        self._delta_answered.add((stream.sid, type_url))
        for r in changed:
            known[r.name] = r.version
        for name in removed:
            del known[name]
        nonce = str(next(self._nonces))
        self._record_response(stream, type_url, version, nonce, [r.name for r in changed], removed)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed,
            resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.any)
                       for r in changed])


# ---- process mode --------------------------------------------------------------------------

def _control_handler(plane: ControlPlane, reload):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code: int, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/requests":
                return self._reply(200, plane.requests())
            if self.path == "/responses":
                return self._reply(200, plane.responses())
            self._reply(404, {"error": f"unknown path {self.path}"})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            try:
                if self.path == "/resources":
                    plane.set_resources(body["type_url"], body["resources"], body["version"])
                elif self.path == "/reload":
                    reload()
                elif self.path == "/stop":
                    plane.stop()
                elif self.path == "/start":
                    plane.start()
                else:
                    return self._reply(404, {"error": f"unknown path {self.path}"})
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                return self._reply(400, {"error": f"{type(exc).__name__}: {exc}"})
            self._reply(200, {"ok": True, "port": plane.port})
    return Handler


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--resources", help="YAML resources file (re-read on SIGHUP)")
    args = parser.parse_args(argv)

    plane = ControlPlane(args.host)

    def reload():
        if args.resources:
            plane.load_yaml(args.resources)

    reload()
    port = plane.start(args.port)
    control = ThreadingHTTPServer((args.host, 0), _control_handler(plane, reload))
    threading.Thread(target=control.serve_forever, daemon=True).start()

    done = threading.Event()
    pending_reload = threading.Event()

    def on_hup(signum, frame):
        pending_reload.set()
        done.set()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, lambda s, f: done.set())
    signal.signal(signal.SIGINT, lambda s, f: done.set())
    print(f"ready {port} {control.server_address[1]}", flush=True)
    while True:
        done.wait()
        done.clear()
        if pending_reload.is_set():
            pending_reload.clear()
            try:
                reload()
                print("reloaded", flush=True)
            except Exception as exc:  # noqa: BLE001 - a bad file keeps the old snapshot
                print(f"reload failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        break
    control.shutdown()
    plane.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
