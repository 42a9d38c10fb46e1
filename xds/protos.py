"""The one place Baton imports Envoy API (xds-protos) modules.

Why a module for imports: the repository root is the `baton` package, and it has an `xds/`
directory. When the root itself is on sys.path (`python -m pytest` from the checkout, or
`python -c` there), `import xds` finds *our* directory instead of the `xds` package that
xds-protos installs, and every Envoy module fails on `from xds.core.v3 import ...`. The first
Envoy import therefore runs with the root taken off sys.path; once the real `xds` is in
sys.modules, later imports resolve through it whatever sys.path says.

Also here: importing the module for an Any "@type" on demand, so that json_format can parse
any Envoy extension a config names (and the translator can then say "not supported" with the
right path, instead of json_format failing on an unknown type).
"""

import contextlib
import importlib
import os
import pkgutil
import re
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _from_root(module):
    origin = getattr(module, "__file__", None) or ""
    return os.path.abspath(origin).startswith(_ROOT + os.sep)


@contextlib.contextmanager
def _unshadowed():
    """Import with the repository root hidden, so `xds` means xds-protos' package."""
    shadowing = [name for name, mod in sys.modules.items()
                 if (name == "xds" or name.startswith("xds.")) and _from_root(mod)]
    for name in shadowing:
        del sys.modules[name]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
    try:
        yield
    finally:
        sys.path[:] = saved


with _unshadowed():
    from google.protobuf import descriptor_pool, json_format, message_factory
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
    from envoy.config.core.v3 import health_check_pb2 as _health_check_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2)
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
    from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2

Bootstrap = bootstrap_pb2.Bootstrap
Listener = listener_pb2.Listener
Cluster = cluster_pb2.Cluster
ClusterLoadAssignment = endpoint_pb2.ClusterLoadAssignment
RouteConfiguration = route_pb2.RouteConfiguration
DiscoveryRequest = discovery_pb2.DiscoveryRequest
DiscoveryResponse = discovery_pb2.DiscoveryResponse
DeltaDiscoveryRequest = discovery_pb2.DeltaDiscoveryRequest
DeltaDiscoveryResponse = discovery_pb2.DeltaDiscoveryResponse
Node = base_pb2.Node
ApiConfigSource = config_source_pb2.ApiConfigSource
TcpProxy = tcp_proxy_pb2.TcpProxy
HttpConnectionManager = http_connection_manager_pb2.HttpConnectionManager
SocketAddress = address_pb2.SocketAddress
RoutingPriority = base_pb2.RoutingPriority
HealthStatus = _health_check_pb2.HealthStatus

ParseError = json_format.ParseError
TYPE_URL_PREFIX = "type.googleapis.com/"
TCP_PROXY_TYPE = TcpProxy.DESCRIPTOR.full_name
HCM_TYPE = HttpConnectionManager.DESCRIPTOR.full_name
OriginalDst = original_dst_pb2.OriginalDst
ORIGINAL_DST_TYPE = OriginalDst.DESCRIPTOR.full_name

# Only packages that xds-protos ships; the name comes from a config file, so it is checked
# before it reaches importlib.
_TYPE_NAME = re.compile(r"^(envoy|udpa|xds|validate|contrib)(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def type_name(type_url):
    """'type.googleapis.com/a.b.C' -> 'a.b.C' (the part after the last '/')."""
    return type_url.rsplit("/", 1)[-1]


def message_class(name):
    """The generated class for a full message name (its module imported on demand), or None
    if no module of xds-protos defines it.

    On demand because the agent decodes resources from bytes: nothing imported the module of
    a type named only inside an Any (a listener's http_inspector, a cluster's
    HttpProtocolOptions), and a translator asking for it must still get its class."""
    cls = _defined_class(name)
    if cls is None and import_type(name):
        cls = _defined_class(name)
    return cls


def _defined_class(name):
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(desc)


def import_type(name):
    """Import every *_pb2 module of the proto package that would define `name`.

    A proto package is the lowercase prefix of a full name (a.b.v3 in a.b.v3.Msg.Nested);
    the file that defines the message is not derivable from its name, so import them all.
    Returns True when the type is known afterwards.
    """
    if _defined_class(name) is not None:
        return True
    if not _TYPE_NAME.match(name):
        return False
    parts = name.split(".")
    package = []
    for part in parts:
        if part[:1].isupper():
            break
        package.append(part)
    if not package:
        return False
    with _unshadowed():
        try:
            pkg = importlib.import_module(".".join(package))
            for info in pkgutil.iter_modules(getattr(pkg, "__path__", ())):
                if info.name.endswith("_pb2"):
                    importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception:  # noqa: BLE001 - a broken or absent module just means "unknown type"
            return False
    return _defined_class(name) is not None


def import_types_in(data):
    """Import the modules for every "@type" found anywhere in parsed YAML/JSON `data`."""
    stack, seen = [data], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:  # YAML aliases can make shared or even cyclic structures
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            url = item.get("@type")
            if isinstance(url, str):
                import_type(type_name(url))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def ads_stub_class():
    """The generated gRPC stub of the AggregatedDiscoveryService. Imported on demand: it
    imports grpc, which only the xDS agent may load (grpc and fork() do not mix, and the
    master forks)."""
    with _unshadowed():
        from envoy.service.discovery.v3 import ads_pb2_grpc
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub


# Istio's typed configs that Baton implements, declared in the same pool (xds/istio_types.py),
# so that they are known wherever an Envoy type is: a bootstrap, a resource, /config_dump.
from . import istio_types  # noqa: E402,F401
from . import istio_filter_types  # noqa: E402,F401 - the listener side (stats, alpn)
from . import baton_types  # noqa: E402,F401 - Baton's own (generic_proxy's Bolt codec)
