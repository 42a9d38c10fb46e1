"""Envoy's tag extraction (supervisor/stat_tags.py), the bootstrap's stats_config
(xds/stats_config.py) and the stats matcher (supervisor/stats_matcher.py). What Envoy 1.40
itself writes for the same names is checked in tests/integration/test_prometheus_differential.py."""

from __future__ import annotations

import pytest

from google.protobuf import json_format

from baton.supervisor.stat_tags import StatsTagError, TagProducer, ecmascript_regex
from baton.supervisor.stats_matcher import stats_filter
from baton.xds import protos
from baton.xds.translate import translate_bootstrap

DEFAULTS = TagProducer.from_config(None)


@pytest.mark.parametrize("stat, name, tags", [
    # A token pattern's last `**` needs at least one token: "cluster.x" alone is not tagged.
    ("cluster.orphan", "cluster.orphan", []),
    # `$` as the last token takes the dot before it.
    ("foo.http_local_rate_limit.enabled", "http_local_rate_limit.enabled",
     [("envoy.local_http_ratelimit_prefix", "foo")]),
    # `**` inside a pattern: the rest of the pattern is looked for at every later token.
    ("mongo.p.collection.c.callsite.s.query.total", "mongo.collection.callsite.query.total",
     [("envoy.mongo_callsite", "s"), ("envoy.mongo_collection", "c"), ("envoy.mongo_prefix", "p")]),
    ("vhost.v.vcluster.other.upstream_rq_time", "vhost.vcluster.upstream_rq_time",
     [("envoy.virtual_cluster", "other"), ("envoy.virtual_host", "v")]),
    # The worker id regex removes the number only: Envoy's
    # envoy_listener_manager_worker_dispatcher_loop_duration_us{envoy_worker_id="0"}.
    ("listener_manager.worker_1.dispatcher.loop_duration_us",
     "listener_manager.worker_dispatcher.loop_duration_us", [("envoy.worker_id", "1")]),
    ("cluster.c.ssl.ciphers.TLS_AES_128_GCM_SHA256", "cluster.ssl.ciphers",
     [("envoy.ssl_cipher_suite", "TLS_AES_128_GCM_SHA256"), ("envoy.cluster_name", "c")]),
])
def test_default_extraction(stat, name, tags):
    assert DEFAULTS.extract(stat) == (name, tags)


def test_custom_tags_replace_the_default_of_their_name_and_keep_config_order():
    producer = TagProducer.from_config({"use_all_default_tags": True, "stats_tags": [
        {"tag_name": "envoy.cluster_name", "regex": r"^cluster\.((.+?(\.svc\.local)?)\.)"},
        {"tag_name": "fixed", "fixed_value": "v"},
        {"tag_name": "envoy.response_code"}]})          # no regex: Envoy's default for the name
    assert producer.extract("cluster.a.svc.local.upstream_rq_200") == (
        "cluster.upstream_rq",
        [("fixed", "v"), ("envoy.response_code", "200"), ("envoy.cluster_name", "a.svc.local")])


def test_without_default_tags_only_the_configured_ones_apply():
    producer = TagProducer.from_config({"use_all_default_tags": False, "stats_tags": [
        {"tag_name": "n", "regex": r"^cluster\.(([^.]+)\.)"}]})
    assert producer.extract("cluster.a.upstream_rq_200") == ("cluster.upstream_rq_200", [("n", "a")])
    assert producer.extract("http.p.downstream_rq_total") == ("http.p.downstream_rq_total", [])


def test_posix_classes_of_a_bootstrap_regex_are_read():
    assert ecmascript_regex(r"^listener\.(((?:[_.[:digit:]]*))\.)").match("listener.1_2.x")
    with pytest.raises(StatsTagError, match=r"\[:blank:\]"):
        ecmascript_regex("[[:blank:]]")


def _bootstrap(stats_config: dict):
    pb = json_format.ParseDict({"stats_config": stats_config}, protos.Bootstrap())
    return translate_bootstrap(pb)


def test_stats_config_is_translated_and_its_errors_name_their_path():
    snap, errors = _bootstrap({"stats_tags": [{"tag_name": "a", "regex": "(("},
                                              {"tag_name": "no_such_default"}],
                               "stats_matcher": {"inclusion_list": {"patterns": [{"prefix": ""}]}}})
    assert any(e.startswith("stats_config.stats_tags[0].regex: invalid regex") for e in errors), errors
    assert any(e.startswith("stats_config.stats_tags[1]: no regex") for e in errors), errors
    assert "stats_config.stats_matcher.inclusion_list.patterns[0].prefix: must not be empty" in errors
    snap, errors = _bootstrap({"use_all_default_tags": False,
                               "stats_matcher": {"exclusion_list": {"patterns": [{"suffix": "_total"}]}}})
    assert errors == []
    assert snap["stats_config"] == {"stats_tags": [], "use_all_default_tags": False, "matcher": {
        "mode": "exclusion", "patterns": [{"kind": "suffix", "value": "_total", "ignore_case": False}]}}


def test_stats_matcher_modes():
    assert stats_filter(None)("anything")
    assert not stats_filter({"mode": "reject_all", "patterns": []})("server.live")
    included = stats_filter({"mode": "inclusion", "patterns": [
        {"kind": "prefix", "value": "cluster.outbound", "ignore_case": False},
        {"kind": "safe_regex", "value": "http.*", "ignore_case": False}]})
    assert included("cluster.outbound|80||a.upstream_rq_total") and included("http.x.downstream_rq_total")
    assert not included("tcp.x.downstream_cx_total")
    excluded = stats_filter({"mode": "exclusion", "patterns": [
        {"kind": "suffix", "value": "_total", "ignore_case": False}]})
    assert excluded("server.live") and not excluded("tcp.x.downstream_cx_total")
