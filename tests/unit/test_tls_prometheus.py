"""The listener ssl.* stats in /stats/prometheus, as Envoy 1.40 renders them (its output for
the same stats, copied from a run: cipher and version become tags, the address stays one)."""

from baton.supervisor.admin import prometheus_name


def test_listener_ssl_stats_render_as_envoys():
    assert prometheus_name("listener.127.0.0.1_43003.ssl.handshake") == (
        "envoy_listener_ssl_handshake", '{envoy_listener_address="127.0.0.1_43003"}')
    assert prometheus_name("listener.127.0.0.1_43003.ssl.fail_verify_san") == (
        "envoy_listener_ssl_fail_verify_san", '{envoy_listener_address="127.0.0.1_43003"}')
    assert prometheus_name("listener.127.0.0.1_43003.ssl.ciphers.TLS_AES_256_GCM_SHA384") == (
        "envoy_listener_ssl_ciphers",
        '{envoy_ssl_cipher="TLS_AES_256_GCM_SHA384",envoy_listener_address="127.0.0.1_43003"}')
    assert prometheus_name("listener.127.0.0.1_43003.ssl.versions.TLSv1.2") == (
        "envoy_listener_ssl_versions", '{envoy_ssl_version="TLSv1.2",envoy_listener_address="127.0.0.1_43003"}')
    assert prometheus_name("listener.[__1]_443.ssl.ciphers.ECDHE-ECDSA-AES128-GCM-SHA256") == (
        "envoy_listener_ssl_ciphers",
        '{envoy_ssl_cipher="ECDHE-ECDSA-AES128-GCM-SHA256",envoy_listener_address="[__1]_443"}')
    # Other listener stats are rendered as before.
    assert prometheus_name("listener.127.0.0.1_43003.downstream_cx_total") == (
        "envoy_listener_downstream_cx_total", '{envoy_listener_address="127.0.0.1_43003"}')
