"""ECDS (issue 14): an HTTP filter's config_discovery. The HCM keeps a placeholder
(xds/ecds.py); the xDS agent subscribes to its name, a dynamic listener warms until the
TypedExtensionConfig arrives (unless its default applies without warming, or the fetch times
out), the resource is checked like any typed_config and against type_urls, and the worker
runs the resource, else the default, else Envoy's missing-config filter (500, NFCF)."""

from __future__ import annotations

import copy

import pytest

from baton.worker.proxy.http.ecds import MISSING, effective
from baton.xds import protos
from baton.xds.ads import EXTENSION, LISTENER
from baton.xds.dynamic import DynamicConfig
from baton.xds.http_filters import translate_http_filters
from baton.xds.parse import parse_dict

from .xds_helpers import hcm, load, packed, socket, sotw_response, xds_bootstrap

T = "type.googleapis.com/"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
WASM = T + "envoy.extensions.filters.http.wasm.v3.Wasm"
DENY_ALL = {"@type": RBAC, "rules": {"policies": {}}}
V8 = {"@type": WASM, "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                              "code": {"local": {"filename": "/x.wasm"}}}}}
PLUGIN = "extenstions.istio.io/wasmplugin/default.authz"


def translate(discovery: dict, name=PLUGIN):
    data = {"stat_prefix": "in", "http_filters": [{"name": name, "config_discovery": discovery}, ROUTER]}
    protos.import_types_in(data)
    pb = protos.HttpConnectionManager()
    errors, warnings = [], []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    return translate_http_filters(pb.http_filters, "hcm.http_filters", errors, warnings), errors, warnings


def source(**extra):
    """What istiod writes for a WasmPlugin (S22), plus `extra`."""
    return {"config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "type_urls": [WASM, RBAC], **extra}


def test_istios_wasm_plugin_filter_is_a_placeholder_that_waits_for_its_resource():
    result, errors, _ = translate(source())
    assert errors == []
    assert result[0] == {"name": "ecds", "ecds": {
        "name": PLUGIN, "type_urls": ["envoy.extensions.filters.http.wasm.v3.Wasm",
                                      "envoy.extensions.filters.http.rbac.v3.RBAC"],
        "default": None, "without_warming": False, "initial_fetch_timeout": 0.0, "resolved": None}}
    assert effective(result[0]) == {"name": MISSING, "config": {}}


def test_the_default_is_translated_and_runs_until_a_resource_comes():
    result, errors, _ = translate(source(default_config=DENY_ALL, apply_default_config_without_warming=True))
    assert errors == []
    default = effective(result[0])
    assert default["name"] == "envoy.filters.http.rbac" and default["config"]["filter_name"] == PLUGIN
    assert default["config"]["rules"] == {"action": "ALLOW", "policies": []}


@pytest.mark.parametrize("extra, message", [
    ({"default_config": V8}, "hcm.http_filters[0].config_discovery.default_config.config.vm_config.code"
                             ".local.filename: cannot read '/x.wasm'"),
    ({"default_config": {"@type": T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}},
     "hcm.http_filters[0].config_discovery.default_config: filter config has type URL "
     "envoy.extensions.filters.http.fault.v3.HTTPFault but expect envoy.extensions.filters.http.wasm.v3.Wasm, "
     "envoy.extensions.filters.http.rbac.v3.RBAC"),
    ({"apply_default_config_without_warming": True},
     "hcm.http_filters[0].config_discovery.apply_default_config_without_warming: requires a default_config"),
    ({"config_source": {"path": "/x"}},
     "hcm.http_filters[0].config_discovery.config_source.path: not supported"),
])
def test_what_envoy_would_refuse_or_baton_cannot_run_is_refused_by_path(extra, message):
    result, errors, _ = translate(source(**extra))
    assert result is None and errors[0].startswith(message), errors


# --- over ADS (xds/dynamic.py) -----------------------------------------------------------------

def ecds_listener(name="in", port=15006, **discovery):
    config = hcm(route_config={"name": "r", "virtual_hosts": []})
    config["http_filters"] = [{"name": PLUGIN, "config_discovery": source(**discovery)},
                              *config["http_filters"]]
    return {"name": name, "address": socket("127.0.0.1", port), "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}]}]}


def extension(typed_config, name=PLUGIN):
    msg = protos.message_class("envoy.config.core.v3.TypedExtensionConfig")()
    data = {"name": name, "typed_config": typed_config}
    protos.import_types_in(data)
    protos.json_format.ParseDict(data, msg)
    return packed(msg)


def update(type_url, version, *items):
    from baton.xds.ads import AdsProtocol
    return AdsProtocol({"id": "n"}).on_response(sotw_response(type_url, version, f"n-{version}", *items))


@pytest.fixture
def config(tmp_path):
    return DynamicConfig(copy.deepcopy(load(tmp_path, xds_bootstrap())), started=0.0)


def served_filter(config):
    (listener,) = config.published(0.0)["listeners"]
    return effective(listener["filter_chains"][0]["http"]["http_filters"][0])


def test_a_listener_warms_until_its_filter_arrives_and_then_runs_it(config):
    assert config.apply(update(LISTENER, "1", ecds_listener()), 0.0) == []
    assert config.interest(EXTENSION) == {PLUGIN}
    assert config.published(0.0)["listeners"] == [] and "in" in config.warming_listeners
    assert config.apply(update(EXTENSION, "1", extension(DENY_ALL)), 1.0) == []
    assert served_filter(config)["name"] == "envoy.filters.http.rbac"
    # A new version of the filter is published with the same listener.
    allow_all = {"@type": RBAC, "rules": {"action": "DENY"}}
    assert config.apply(update(EXTENSION, "2", extension(allow_all)), 2.0) == []
    assert served_filter(config)["config"]["rules"]["action"] == "DENY"


def test_a_wasm_module_over_ecds_is_nacked_and_the_listener_keeps_waiting(config):
    assert config.apply(update(LISTENER, "1", ecds_listener()), 0.0) == []
    errors = config.apply(update(EXTENSION, "1", extension(V8)), 1.0)
    assert errors and errors[0].startswith(f"TypedExtensionConfig[{PLUGIN}].typed_config.config.vm_config"
                                           ".code.local.filename: cannot read '/x.wasm'")
    assert config.published(1.0)["listeners"] == []


def test_a_resource_of_a_type_the_listener_does_not_expect_is_nacked(config):
    assert config.apply(update(LISTENER, "1", ecds_listener()), 0.0) == []
    fault = {"@type": T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}
    errors = config.apply(update(EXTENSION, "1", extension(fault)), 1.0)
    assert errors == [f"TypedExtensionConfig[{PLUGIN}]: filter config has type URL "
                      "envoy.extensions.filters.http.fault.v3.HTTPFault but expect "
                      "envoy.extensions.filters.http.wasm.v3.Wasm, envoy.extensions.filters.http.rbac.v3.RBAC "
                      "(listener 'in')"]


def test_a_default_without_warming_serves_at_once_and_a_timeout_ends_the_wait(config):
    listeners = [ecds_listener(default_config=DENY_ALL, apply_default_config_without_warming=True)]
    assert config.apply(update(LISTENER, "1", *listeners), 0.0) == []
    assert served_filter(config)["name"] == "envoy.filters.http.rbac"
    timed = ecds_listener("t", 15007)
    timed["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["config_discovery"][
        "config_source"]["initial_fetch_timeout"] = "5s"
    assert config.apply(update(LISTENER, "2", *listeners, timed), 0.0) == []
    config.promote(4.0)
    assert "t" in config.warming_listeners
    config.promote(5.0)
    names = [listener["name"] for listener in config.published(5.0)["listeners"]]
    assert sorted(names) == ["in", "t"]
    (served,) = [listener for listener in config.published(5.0)["listeners"] if listener["name"] == "t"]
    assert effective(served["filter_chains"][0]["http"]["http_filters"][0])["name"] == MISSING
