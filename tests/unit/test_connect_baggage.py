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
