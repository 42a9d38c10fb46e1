"""Istio's own proxy extensions, as Baton runs them (the data path side).

    struct_codec.py     google.protobuf.Struct <-> bytes, sans-IO (the peer metadata's form)
    workload.py         node metadata -> the workload labels Istio's metrics carry
    metrics.py          istio_* counters and histograms under labelled stat names
    peer_metadata.py    HTTP metadata exchange: the x-envoy-peer-metadata headers
    http_stats.py       istio.stats on an HTTP connection manager
    tcp_stats.py        istio.stats on a tcp_proxy chain
    principal_state.py  io.istio.peer_principal / local_principal where istio_authn runs
    prometheus.py       labelled stat names -> Prometheus text (the admin's /stats/prometheus)

The translators (xds/http_filters_istio.py, xds/network_filters.py) decide what runs.
"""
