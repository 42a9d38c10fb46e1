"""A route chosen again after a filter cleared the route cache (route_again.py), and what
clears it from a Wasm plugin: any change of the request headers (maps.RequestMap.changed)
and the foreign function clear_route_cache (foreign.py)."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.route_again import route_again
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
