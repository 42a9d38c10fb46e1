"""ECDS (issue 14): an HTTP filter's config_discovery runs with its default_config (Baton does
not subscribe to ExtensionConfig); without one, or with a default of another type than
type_urls name, or over a source other than ADS, the listener is refused by path."""

from __future__ import annotations

from baton.xds import protos
from baton.xds.http_filters import translate_http_filters
from baton.xds.parse import parse_dict

T = "type.googleapis.com/"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
WASM = T + "envoy.extensions.filters.http.wasm.v3.Wasm"
DENY_ALL = {"@type": RBAC, "rules": {"policies": {}}}


def translate(discovery: dict, name="extenstions.istio.io/wasmplugin/default.authz"):
    data = {"stat_prefix": "in", "http_filters": [{"name": name, "config_discovery": discovery}, ROUTER]}
    protos.import_types_in(data)
    pb = protos.HttpConnectionManager()
    errors, warnings = [], []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    return translate_http_filters(pb.http_filters, "hcm.http_filters", errors, warnings), errors, warnings


def source(**extra):
    return {"config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "type_urls": [WASM, RBAC], **extra}


def test_the_default_config_runs_and_the_warning_says_updates_are_not_applied():
    result, errors, warnings = translate(source(default_config=DENY_ALL,
                                                apply_default_config_without_warming=True))
    assert errors == []
    assert result[0]["name"] == "envoy.filters.http.rbac"
    assert result[0]["config"]["rules"] == {"action": "ALLOW", "policies": []}
    assert result[0]["config"]["filter_name"] == "extenstions.istio.io/wasmplugin/default.authz"
    assert warnings == ["hcm.http_filters[0].config_discovery: the default_config runs; updates of "
                        "filter 'extenstions.istio.io/wasmplugin/default.authz' over ECDS are not "
                        "applied (Baton does not subscribe to ExtensionConfig)"]


def test_istios_wasm_plugin_without_a_default_is_refused_saying_why():
    result, errors, _ = translate(source())
    assert result is None
    assert errors == ["hcm.http_filters[0].config_discovery: the config of filter "
                      "'extenstions.istio.io/wasmplugin/default.authz' would come only over ECDS (an "
                      "ExtensionConfig resource), which Baton does not subscribe to; a default_config is "
                      "required (Baton runs the filter with it)"]


def test_a_default_wasm_module_is_refused_unless_it_is_a_builtin():
    v8 = {"@type": WASM, "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                                  "code": {"local": {"filename": "/x.wasm"}}}}}
    result, errors, _ = translate(source(default_config=v8))
    assert result is None
    assert errors[0].startswith("hcm.http_filters[0].config_discovery.default_config: Wasm not supported")
    stats = {"@type": WASM, "config": {"vm_config": {"runtime": "envoy.wasm.runtime.null",
                                                     "code": {"local": {"inline_string": "envoy.wasm.stats"}}}}}
    result, errors, _ = translate(source(default_config=stats))
    assert errors == [] and result[0]["name"] == "istio.stats"


def test_the_default_must_have_one_of_the_type_urls_and_the_source_must_be_ads():
    fault = {"@type": T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}
    _, errors, _ = translate(source(default_config=fault))
    assert errors == ["hcm.http_filters[0].config_discovery.default_config: filter config has type URL "
                      "envoy.extensions.filters.http.fault.v3.HTTPFault but expect "
                      "envoy.extensions.filters.http.wasm.v3.Wasm, envoy.extensions.filters.http.rbac.v3.RBAC"]
    _, errors, _ = translate({"config_source": {"path": "/x"}, "type_urls": [RBAC], "default_config": DENY_ALL})
    assert "hcm.http_filters[0].config_discovery.config_source: only 'ads: {}' is supported (the ADS stream " \
        "of dynamic_resources.ads_config), got 'path'" in errors, errors
    _, errors, _ = translate({"config_source": {"ads": {}}, "default_config": DENY_ALL})
    assert errors == ["hcm.http_filters[0].config_discovery.type_urls: must have at least 1 item"]
