"""A route chosen again after a filter cleared the route cache (route_again.py), and what
clears it from a Wasm plugin: any change of the request headers (maps.RequestMap.changed)
and the foreign function clear_route_cache (foreign.py)."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.route_again import refilter, route_again
from baton.worker.wasm import abi, foreign
from baton.worker.wasm.maps import RequestMap


def route(name, kind="cluster", cluster="c", idle=None):
    return SimpleNamespace(name=name, kind=kind, single_cluster=cluster,
                           idle_timeout_set=idle is not None, idle_timeout=idle,
                           pick_cluster=lambda request, rand: "weighted")


def stream_for(table_routes, path):
    request = Request("GET", path, "h", Headers([]))
    table = SimpleNamespace(route=lambda r: table_routes.get(r.path))
    hcm = SimpleNamespace(routes=table, stream_idle_timeout=300.0)
    info = SimpleNamespace(route_name="old", upstream_cluster="old")
    return SimpleNamespace(request=request, hcm=hcm, info=info, route=None, route_stale=True,
                           idle_timeout=5.0, cluster_name="old")


def test_the_route_its_cluster_and_idle_timeout_are_chosen_again():
    b = route("b", cluster="cb", idle=7.0)
    stream = stream_for({"/b": b}, "/b")
    route_again(stream)
    assert stream.route is b and not stream.route_stale
    assert (stream.info.route_name, stream.cluster_name, stream.info.upstream_cluster) == \
        ("b", "cb", "cb")
    assert stream.idle_timeout == 7.0


def test_no_route_or_a_direct_response_has_no_cluster():
    stream = stream_for({}, "/nowhere")
    route_again(stream)
    assert stream.route is None and stream.cluster_name is None
    assert stream.info.route_name == "" and stream.idle_timeout == 300.0
    stream = stream_for({"/d": route("d", kind="direct_response")}, "/d")
    route_again(stream)
    assert stream.cluster_name is None


def test_every_change_of_the_request_headers_says_so():
    calls = []
    m = RequestMap(Request("GET", "/", "h", Headers([("a", "1")])))
    m.get(b"a")
    m.pairs()
    assert calls == []                  # reading changes nothing
    m.changed = lambda: calls.append(1)
    for change in (lambda: m.add(b"x", b"1"), lambda: m.replace(b":path", b"/b"),
                   lambda: m.remove(b"x"), lambda: m.set_pairs([(b"y", b"2")])):
        calls.clear()
        change()
        assert calls


def test_the_foreign_function_clears_the_calling_streams_cache():
    cleared = []
    host = abi.AbiHost(vm_id="t")
    stream = SimpleNamespace(clear_route_cache=lambda: cleared.append(1))
    host.current = host.new_context(abi.Plugin("p", "", "t", b""), None, stream,
                                    Request("GET", "/", "h", Headers([])))
    assert foreign.call(host, b"clear_route_cache", b"") == (abi.OK, b"")
    assert cleared == [1]


class _Factory:
    """Makes a filter (its name and the route it saw) unless the route turns it off."""

    def __init__(self, name):
        self.name = name

    def create(self, stream):
        if self.name in getattr(stream.route, "off", ()):
            return None
        return SimpleNamespace(name=self.name, route=stream.route, request_body_hooks=False,
                               response_body_hooks=False)


def test_refilter_makes_the_filters_still_to_come_for_the_new_route():
    # Factories p, x, y, z; the first route turned x off; p has run and cleared the cache;
    # the new route turns z off and x on.
    first, new = route("first"), route("new")
    first.off, new.off = ("x",), ("z",)
    factories = [_Factory(n) for n in "pxyz"]
    stream = stream_for({"/b": new}, "/b")
    stream.route = first
    stream.hcm.filter_factories = factories
    stream.skipped_factories = [factories[1]]
    stream.filters = [factories[i].create(stream) for i in (0, 2, 3)]
    passed = stream.filters[0]
    stream.filter_index = 1
    stream.body_chain = None
    refilter(stream)
    assert [f.name for f in stream.filters] == ["p", "x", "y"]
    assert stream.filters[0] is passed and passed.route is first
    assert all(f.route is new for f in stream.filters[1:])
    assert stream.skipped_factories == [factories[3]]
    assert stream.body_chain is None            # no body hooks: the plain body path
