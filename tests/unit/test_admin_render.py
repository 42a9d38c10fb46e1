"""Tests for the admin renderers in supervisor/admin.py and for worker/stats.py."""

from __future__ import annotations

import re

import pytest

from baton.supervisor.admin import prometheus_name, render_prometheus, render_stats_text
from baton.worker.stats import Stats, merge

# One Prometheus sample line: name{labels} value, "{}" when there is no label, as Envoy
# writes it (label values may only contain the escapes \\, \" and \n); group 3 is the first
# label's value.
_VALUE = r'"((?:[^"\\\n]|\\[\\"n])*)"'
_MORE = r',[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={_VALUE}(?:{_MORE})*)?\}}) (-?\d+)$')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


# -- prometheus_name ---------------------------------------------------------------------------

@pytest.mark.parametrize("stat, expected", [
    ("cluster.demo.upstream_cx_total",
     ("envoy_cluster_upstream_cx_total", '{envoy_cluster_name="demo"}')),
    ("cluster.demo.upstream_cx_active",
     ("envoy_cluster_upstream_cx_active", '{envoy_cluster_name="demo"}')),
    # Envoy's default cluster_name tag ends at the first dot: the rest stays in the name.
    ("cluster.svc.ns.cluster.local.upstream_cx_connect_fail",
     ("envoy_cluster_ns_cluster_local_upstream_cx_connect_fail", '{envoy_cluster_name="svc"}')),
    ("cluster.my-svc.upstream_cx_total",
     ("envoy_cluster_upstream_cx_total", '{envoy_cluster_name="my-svc"}')),
    ("listener.127.0.0.1_10000.downstream_cx_total",
     ("envoy_listener_downstream_cx_total", '{envoy_listener_address="127.0.0.1_10000"}')),
    ("listener.0.0.0.0_443.downstream_cx_active",
     ("envoy_listener_downstream_cx_active", '{envoy_listener_address="0.0.0.0_443"}')),
    ("listener.[__1]_8080.downstream_cx_total",
     ("envoy_listener_downstream_cx_total", '{envoy_listener_address="[__1]_8080"}')),
    ("tcp.ingress_tcp.downstream_cx_total",
     ("envoy_tcp_downstream_cx_total", '{envoy_tcp_prefix="ingress_tcp"}')),
    ("tcp.ingress.tcp.idle_timeout",
     ("envoy_tcp_tcp_idle_timeout", '{envoy_tcp_prefix="ingress"}')),
    ("http.ingress_http.downstream_rq_total",
     ("envoy_http_downstream_rq_total", '{envoy_http_conn_manager_prefix="ingress_http"}')),
    ("cluster.demo.upstream_rq_503",
     ("envoy_cluster_upstream_rq", '{envoy_response_code="503",envoy_cluster_name="demo"}')),
    ("cluster.demo.upstream_rq_2xx",
     ("envoy_cluster_upstream_rq_xx", '{envoy_response_code_class="2",envoy_cluster_name="demo"}')),
    ("listener.127.0.0.1_80.http.ingress_http.downstream_rq_4xx",
     ("envoy_listener_http_downstream_rq_xx", '{envoy_response_code_class="4",'
      'envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_80"}')),
    ("listener.admin.downstream_cx_total", ("envoy_listener_admin_downstream_cx_total", "{}")),
    ("http.ingress_http.rds.my.routes.config_reload",
     ("envoy_http_rds_config_reload",
      '{envoy_http_conn_manager_prefix="ingress_http",envoy_rds_route_config="my.routes"}')),
    ("udp.dns.downstream_sess_total",
     ("envoy_udp_downstream_sess_total", '{envoy_udp_prefix="dns"}')),
    ("cluster.echo.udp.sess_rx_datagrams",
     ("envoy_cluster_udp_sess_rx_datagrams", '{envoy_cluster_name="echo"}')),
    ("listener.127.0.0.1_53.udp.downstream_rx_datagram_dropped",
     ("envoy_listener_udp_downstream_rx_datagram_dropped", '{envoy_listener_address="127.0.0.1_53"}')),
    ("server.live", ("envoy_server_live", "{}")),
    ("server.total_connections", ("envoy_server_total_connections", "{}")),
    ("cluster_manager.active_clusters", ("envoy_cluster_manager_active_clusters", "{}")),
    ("listener_manager.total_listeners_active", ("envoy_listener_manager_total_listeners_active", "{}")),
    ("cluster.orphan", ("envoy_cluster_orphan", "{}")),          # no scope: nothing to tag
    ("server.odd-name/x", ("envoy_server_odd_name_x", "{}")),     # sanitised to [a-zA-Z0-9_:]
])
def test_prometheus_name(stat, expected):
    assert prometheus_name(stat) == expected


@pytest.mark.parametrize("name", ['we"ird', "back\\slash", "new\nline"], ids=["quote", "backslash", "newline"])
def test_prometheus_label_values_are_escaped(name):
    text = render_prometheus({"counters": {f"cluster.{name}.upstream_cx_total": 1}, "gauges": {}})
    assert len(text.splitlines()) == 2, text
    sample = text.splitlines()[1]
    m = SAMPLE.match(sample)
    assert m, sample
    assert re.sub(r"\\.", lambda e: UNESCAPE[e.group()], m.group(3)) == name


# -- render_prometheus -------------------------------------------------------------------------

STATS = {
    "counters": {
        "cluster.demo.upstream_cx_total": 5,
        "cluster.a.b.upstream_cx_total": 2,
        "cluster.demo.upstream_cx_connect_fail": 0,
        "listener.127.0.0.1_10000.downstream_cx_total": 7,
        "tcp.ingress_tcp.downstream_cx_total": 7,
    },
    "gauges": {
        "cluster.demo.upstream_cx_active": 1,
        "cluster.a.b.upstream_cx_active": 0,
        "listener.127.0.0.1_10000.downstream_cx_active": 1,
        "server.live": 1,
        "server.uptime": 42,
    },
}


def parse_prometheus(text):
    assert text.endswith("\n")
    types, samples, order = {}, [], []
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, metric, kind = line.split(" ")
            assert metric not in types, f"duplicate TYPE line for {metric}"
            types[metric] = kind
            order.append(metric)
            current = metric
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        assert m.group(1) == current, "samples must follow their own TYPE line"
        samples.append((m.group(1), m.group(2) or "", int(m.group(4))))
    return types, samples, order


def test_render_prometheus_types_and_samples():
    types, samples, order = parse_prometheus(render_prometheus(STATS))
    assert types == {
        "envoy_cluster_upstream_cx_total": "counter",
        "envoy_cluster_upstream_cx_connect_fail": "counter",
        "envoy_listener_downstream_cx_total": "counter",
        "envoy_tcp_downstream_cx_total": "counter",
        "envoy_cluster_upstream_cx_active": "gauge",
        "envoy_cluster_b_upstream_cx_total": "counter",
        "envoy_cluster_b_upstream_cx_active": "gauge",
        "envoy_listener_downstream_cx_active": "gauge",
        "envoy_server_live": "gauge",
        "envoy_server_uptime": "gauge",
    }
    assert set(samples) == {
        ("envoy_cluster_upstream_cx_total", '{envoy_cluster_name="demo"}', 5),
        ("envoy_cluster_b_upstream_cx_total", '{envoy_cluster_name="a"}', 2),
        ("envoy_cluster_upstream_cx_connect_fail", '{envoy_cluster_name="demo"}', 0),
        ("envoy_listener_downstream_cx_total", '{envoy_listener_address="127.0.0.1_10000"}', 7),
        ("envoy_tcp_downstream_cx_total", '{envoy_tcp_prefix="ingress_tcp"}', 7),
        ("envoy_cluster_upstream_cx_active", '{envoy_cluster_name="demo"}', 1),
        ("envoy_cluster_b_upstream_cx_active", '{envoy_cluster_name="a"}', 0),
        ("envoy_listener_downstream_cx_active", '{envoy_listener_address="127.0.0.1_10000"}', 1),
        ("envoy_server_live", "{}", 1),
        ("envoy_server_uptime", "{}", 42),
    }
    assert len(samples) == 10
    # Counters first, then gauges, each block sorted by metric name.
    counters = [m for m in order if types[m] == "counter"]
    gauges = [m for m in order if types[m] == "gauge"]
    assert order == counters + gauges
    assert counters == sorted(counters) and gauges == sorted(gauges)


def test_render_prometheus_groups_all_labels_of_a_metric_under_one_type_line():
    counters = {f"cluster.c{i}.upstream_cx_total": i for i in range(5)}
    counters.update({f"cluster.c{i}.upstream_cx_destroy": i for i in range(5)})
    text = render_prometheus({"counters": counters, "gauges": {}})
    assert text.count("# TYPE envoy_cluster_upstream_cx_total counter") == 1
    assert text.count("# TYPE envoy_cluster_upstream_cx_destroy counter") == 1
    types, samples, _ = parse_prometheus(text)
    assert len(samples) == 10


def test_render_prometheus_empty():
    assert render_prometheus({"counters": {}, "gauges": {}}) == "\n"


# -- render_stats_text -------------------------------------------------------------------------

def test_render_stats_text_sorted_and_merged():
    text = render_stats_text(STATS, None, False)
    lines = text.splitlines()
    assert text.endswith("\n")
    names = [line.split(": ")[0] for line in lines]
    assert names == sorted(names)
    assert len(lines) == len(STATS["counters"]) + len(STATS["gauges"])
    assert "cluster.demo.upstream_cx_total: 5" in lines
    assert "server.uptime: 42" in lines
    assert "cluster.demo.upstream_cx_connect_fail: 0" in lines


def test_render_stats_text_filter():
    text = render_stats_text(STATS, re.compile(r"^cluster\.demo\."), False)
    assert text == ("cluster.demo.upstream_cx_active: 1\n"
                    "cluster.demo.upstream_cx_connect_fail: 0\n"
                    "cluster.demo.upstream_cx_total: 5\n")
    # search(), not match(): a pattern may hit anywhere in the name.
    assert render_stats_text(STATS, re.compile("uptime"), False) == "server.uptime: 42\n"


def test_render_stats_text_usedonly():
    text = render_stats_text(STATS, None, True)
    assert ": 0\n" not in text
    assert "cluster.a.b.upstream_cx_active" not in text
    assert "cluster.demo.upstream_cx_total: 5\n" in text
    assert render_stats_text(STATS, re.compile("connect_fail"), True) == ""


def test_render_stats_text_no_match_is_empty():
    assert render_stats_text(STATS, re.compile("nothing-matches"), False) == ""
    assert render_stats_text({"counters": {}, "gauges": {}}, None, False) == ""


# -- Stats / merge -----------------------------------------------------------------------------

def test_stats_snapshot_is_a_plain_copy():
    s = Stats()
    s.counters["cluster.demo.upstream_cx_total"] += 3
    s.gauges["cluster.demo.upstream_cx_active"] += 1
    s.gauges["cluster.demo.upstream_cx_active"] -= 1
    snap = s.snapshot()
    assert snap == {"counters": {"cluster.demo.upstream_cx_total": 3},
                    "gauges": {"cluster.demo.upstream_cx_active": 0}}
    assert type(snap["counters"]) is dict and type(snap["gauges"]) is dict
    s.counters["cluster.demo.upstream_cx_total"] += 1
    assert snap["counters"]["cluster.demo.upstream_cx_total"] == 3


def test_merge_sums_counters_and_gauges_across_workers():
    w1, w2, w3 = Stats(), Stats(), Stats()
    w1.counters["cluster.demo.upstream_cx_total"] = 5
    w2.counters["cluster.demo.upstream_cx_total"] = 7
    w3.counters["listener.127.0.0.1_10000.downstream_cx_total"] = 1
    w1.gauges["cluster.demo.upstream_cx_active"] = 2
    w2.gauges["cluster.demo.upstream_cx_active"] = -1     # transiently negative on one worker
    w3.gauges["cluster.demo.upstream_cx_active"] = 3
    merged = merge([w1.snapshot(), w2.snapshot(), w3.snapshot()])
    assert merged == {
        "counters": {"cluster.demo.upstream_cx_total": 12,
                     "listener.127.0.0.1_10000.downstream_cx_total": 1},
        "gauges": {"cluster.demo.upstream_cx_active": 4},
    }
    assert type(merged["counters"]) is dict and type(merged["gauges"]) is dict


def test_merge_accepts_worker_replies_and_missing_sections():
    # What the master actually merges: the workers' "stats" replies (extra keys, maybe partial).
    replies = [{"type": "stats", "reply_to": 3, "counters": {"x.y": 1}, "gauges": {"g": 2}},
               {"type": "stats", "reply_to": 4, "counters": {"x.y": 2}},
               {"type": "stats", "reply_to": 5}]
    assert merge(replies) == {"counters": {"x.y": 3}, "gauges": {"g": 2}}
    assert merge([]) == {"counters": {}, "gauges": {}}
    assert merge(iter([{"counters": {"a": 1}}])) == {"counters": {"a": 1}, "gauges": {}}


def test_merge_then_render_end_to_end():
    snaps = [{"counters": {"cluster.demo.upstream_cx_total": n}, "gauges": {"server.live": 1}}
             for n in (1, 2, 3)]
    text = render_prometheus(merge(snaps))
    assert 'envoy_cluster_upstream_cx_total{envoy_cluster_name="demo"} 6\n' in text
    assert "# TYPE envoy_server_live gauge\nenvoy_server_live{} 3\n" in text
