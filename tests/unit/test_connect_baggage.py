"""Istio's baggage -> the peer workload (istio/connect_baggage.py), as istio/proxy's
WorkloadMetadataObject::fromBaggage reads it."""

from __future__ import annotations

from baton.worker.proxy.istio.connect_baggage import workload_from_baggage
from baton.worker.proxy.istio.workload import UNKNOWN_WORKLOAD, Workload


def test_every_key_istio_writes():
    assert workload_from_baggage(
        "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=reviews-v2,"
        "service.name=reviews,service.version=v2,app.name=reviews,app.version=v2") == Workload(
        workload="reviews-v2", namespace="shop", app="reviews", version="v2",
        canonical_service="reviews", canonical_revision="v2", cluster="east")


def test_a_pod_job_or_cronjob_names_the_workload_too_and_the_rest_is_unknown():
    for kind in ("pod", "job", "cronjob"):
        assert workload_from_baggage(f"k8s.{kind}.name=w, k8s.namespace.name=ns;p=1") == \
            Workload(workload="w", namespace="ns")
    assert workload_from_baggage("") == UNKNOWN_WORKLOAD
    assert workload_from_baggage("vendor.key=x,=,novalue") == UNKNOWN_WORKLOAD


def test_the_baggage_written_back_is_istios_form_with_the_kind_kept():
    """istio/proxy's round trip (fromBaggage, then baggage()): every key in its order, an
    unknown value empty, the workload under the kind it came by."""
    from baton.worker.proxy.istio.connect_baggage import baggage_of
    read = workload_from_baggage("k8s.job.name=batch,k8s.namespace.name=ns,service.name=s")
    assert baggage_of(read) == ("k8s.cluster.name=,k8s.namespace.name=ns,k8s.job.name=batch,"
                                "service.name=s,service.version=,app.name=,app.version=")
    assert baggage_of(Workload(workload="w")).startswith("k8s.cluster.name=,k8s.namespace.name=,"
                                                          "k8s.pod.name=w,")


def test_an_owner_names_the_kind_as_istio_parses_it():
    from baton.worker.proxy.istio.connect_baggage import owner_kind
    owner = "kubernetes://apis/apps/v1/namespaces/shop/deployments/reviews-v2"
    assert owner_kind(owner, "reviews-v2") == "deployment"
    assert owner_kind("kubernetes://apis/batch/v1beta1/namespaces/ns/cronjobs/c", "c") == "cronjob"
    assert owner_kind("kubernetes://apis/v1/namespaces/ns/replicasets/r", "r") == "pod"
    assert owner_kind(None, "w") == "pod" and owner_kind(owner, None) == "pod"


def test_propagate_is_translated_and_checked():
    from baton.xds.connect_filters import connect_baggage_filter
    errors, warnings = [], []
    assert connect_baggage_filter({"propagate": True}, "f", errors, warnings) == (
        "istio.connect_baggage", {"propagate": True})
    assert connect_baggage_filter({}, "f", errors, warnings) == ("istio.connect_baggage", {})
    assert (errors, warnings) == ([], [])
    connect_baggage_filter({"propagate": "yes"}, "f", errors, warnings)
    assert errors == ["f.propagate: must be true or false"]
