"""Differential, Envoy 1.40 vs Baton: which filter configs of one VM share a root context.

Envoy 1.40's plugin identity (source/extensions/common/wasm/plugin.h, its key, and
test/extensions/common/wasm/plugin_test.cc ConfigDifferencesProduceDistinctKeys) is the
whole PluginConfig but its vm_config: name, root_id, configuration, and also failure_policy
(fail_open), allow_on_headers_stop_iteration and reload_config. Two filters differing in
one of those get a root each; identical ones share one. root_of_stream.wat adds the stream's
root context id as x-root: one value when shared, two when kept apart."""

from __future__ import annotations

import copy

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, upstream_headers
from .differential.proxies import module_pair
from .test_differential_wasm import exchange
from .test_differential_wasm_host import wat_filter


def variant(**fields) -> dict:
    wasm = wat_filter("root_of_stream.wat", configuration="same")
    wasm = copy.deepcopy(wasm)
    wasm["typed_config"]["config"].update(fields)
    return wasm


RELOAD = {"failure_policy": "FAIL_RELOAD"}
LISTENERS = {
    "same": [variant(), variant()],
    "stop": [variant(), variant(allow_on_headers_stop_iteration=True)],
    "policy": [variant(), variant(failure_policy="FAIL_OPEN")],
    "reload": [variant(**RELOAD),
               variant(**RELOAD, reload_config={"backoff": {"base_interval": "30s"}})],
}


def listeners_to_a(listeners: dict):
    """A module_pair bootstrap: one HTTP listener per name with its filters, every request
    routed to the recording upstream "a"."""
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def of(upstreams):
        def template(ports, admin):
            return bootstrap(admin, [http_listener(name, ports[name], routes,
                                                   http_filters=filters)
                                     for name, filters in listeners.items()],
                             [cluster("a", [upstreams["a"]])])
        return template
    return of


recorder, pair = module_pair("diff-wasm-identity", listeners_to_a(LISTENERS), list(LISTENERS))


@pytest.mark.parametrize("listener, roots", [("same", 1), ("stop", 2), ("policy", 2),
                                             ("reload", 2)])
def test_filters_of_one_vm_share_a_root_only_with_the_same_plugin_config(pair, recorder,
                                                                        listener, roots):
    def expect(obs):
        assert obs["status"] == 200, obs
        seen = upstream_headers(obs, "x-root")
        assert len(seen) == 2 and len(set(seen)) == roots, obs
    differential(pair, exchange(listener, "/", "identity-" + listener), expect)
