"""AdsProtocol (baton.xds.ads): the requests an ADS client sends, as Envoy sends them.

The xDS spec's rules checked here (envoy/service/discovery/v3/discovery.proto and
api-docs/xds_protocol):
  state of the world: an ACK repeats the response's version_info and nonce; a NACK repeats
  the last *accepted* version with the new nonce and an error_detail; a reconnect sends the
  last accepted version with no nonce; named types (EDS, RDS) list their resource_names.
  delta: ACK/NACK carry the response's nonce; a new stream subscribes to everything again and
  reports every held resource's version in initial_resource_versions; the client keeps each
  resource's own version.
  node: on every request, or on the first request of a stream only with
  set_node_on_first_message_only.
"""

import pytest
from hypothesis import given, settings, strategies as st

from baton.xds import protos
from baton.xds.ads import (CLUSTER, ENDPOINT, EXTENSION, INVALID_ARGUMENT, LISTENER, ROUTE, SECRET,
                           TYPE_ORDER, AdsProtocol)

from .xds_helpers import (CLASSES, assignment, delta_response, eds_cluster, message, packed,
                          route_config, sotw_response, static_cluster, tcp_listener)

NODE = {"id": "node-1", "cluster": "test"}


def sotw(node_once=False):
    protocol = AdsProtocol(NODE, delta=False, node_once=node_once)
    protocol.set_interest(CLUSTER, None)
    protocol.set_interest(LISTENER, None)
    return protocol


def delta(node_once=False):
    protocol = AdsProtocol(NODE, delta=True, node_once=node_once)
    protocol.set_interest(CLUSTER, None)
    protocol.set_interest(LISTENER, None)
    return protocol


def cds_response(version, nonce, *names):
    return sotw_response(CLUSTER, version, nonce, *(static_cluster(n) for n in names))


# --- state of the world: the first requests ----------------------------------------------------

def test_first_requests_follow_envoys_type_order_and_skip_types_without_interest():
    protocol = AdsProtocol(NODE)
    protocol.set_interest(LISTENER, None)
    protocol.set_interest(ROUTE, {"r2", "r1"})
    protocol.set_interest(CLUSTER, None)
    protocol.set_interest(ENDPOINT, frozenset())        # nothing to ask for yet
    requests = protocol.stream_started()
    assert [r.type_url for r in requests] == [CLUSTER, LISTENER, ROUTE]
    cds, lds, rds = requests
    assert list(cds.resource_names) == [] and list(lds.resource_names) == []  # wildcard
    assert list(rds.resource_names) == ["r1", "r2"]
    assert all(r.version_info == "" and r.response_nonce == "" for r in requests)
    assert all(not r.HasField("error_detail") for r in requests)
    assert TYPE_ORDER == (CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION, SECRET)


def test_no_interest_no_requests():
    assert AdsProtocol(NODE).stream_started() == []


def test_node_is_on_every_request_by_default():
    protocol = sotw()
    requests = protocol.stream_started()
    requests.append(protocol.ack(protocol.on_response(cds_response("1", "a", "c1"))))
    assert all(r.node.id == "node-1" and r.node.cluster == "test" for r in requests)


def test_node_on_first_message_only_and_again_on_a_new_stream():
    protocol = sotw(node_once=True)
    first, second = protocol.stream_started()
    assert first.node.id == "node-1"
    assert not second.HasField("node")
    ack = protocol.ack(protocol.on_response(cds_response("1", "a", "c1")))
    assert not ack.HasField("node")
    protocol.stream_ended()
    again = protocol.stream_started()
    assert again[0].node.id == "node-1" and not again[1].HasField("node")


def test_node_metadata_is_sent():
    protocol = AdsProtocol({"id": "n", "metadata": {"zone": "a", "n": 2}})
    protocol.set_interest(CLUSTER, None)
    (request,) = protocol.stream_started()
    meta = protos.json_format.MessageToDict(request.node.metadata)
    assert meta == {"zone": "a", "n": 2}


# --- state of the world: responses, ACK and NACK ---------------------------------------------

def test_response_resources_are_named_by_their_name_field():
    protocol = sotw()
    protocol.stream_started()
    update = protocol.on_response(cds_response("7", "n7", "a", "b"))
    assert (update.type_url, update.version, update.nonce) == (CLUSTER, "7", "n7")
    assert sorted(update.resources) == ["a", "b"]
    assert update.complete is True and update.removed == []
    version, any_pb = update.resources["a"]
    assert version == "" and _unpacked(any_pb, CLUSTER) == message(CLUSTER, static_cluster("a"))


@pytest.mark.parametrize("type_url, data, name", [
    (ENDPOINT, assignment("svc", 80), "svc"),           # ClusterLoadAssignment.cluster_name
    (LISTENER, tcp_listener("l1", 10001), "l1"),
    (ROUTE, route_config("r1"), "r1"),
    (CLUSTER, eds_cluster("e1", "svc"), "e1"),
])
def test_each_type_is_named_by_its_first_field(type_url, data, name):
    update = AdsProtocol(NODE).on_response(sotw_response(type_url, "1", "n", data))
    assert list(update.resources) == [name]


def test_a_long_name_is_read_whole():
    name = "x" * 300                                    # a two-byte length varint
    update = AdsProtocol(NODE).on_response(cds_response("1", "n", name))
    assert list(update.resources) == [name]


def test_ack_echoes_version_and_nonce():
    protocol = sotw()
    protocol.stream_started()
    ack = protocol.ack(protocol.on_response(cds_response("v1", "n1", "a")))
    assert (ack.type_url, ack.version_info, ack.response_nonce) == (CLUSTER, "v1", "n1")
    assert not ack.HasField("error_detail")
    assert list(ack.resource_names) == []               # wildcard stays wildcard


def test_ack_of_a_named_type_lists_the_names():
    protocol = AdsProtocol(NODE)
    protocol.set_interest(ENDPOINT, {"b", "a"})
    protocol.stream_started()
    update = protocol.on_response(sotw_response(ENDPOINT, "3", "n3", assignment("a", 1)))
    ack = protocol.ack(update)
    assert list(ack.resource_names) == ["a", "b"]
    assert (ack.version_info, ack.response_nonce) == ("3", "n3")


def test_nack_sends_the_previous_accepted_version_with_the_new_nonce():
    protocol = sotw()
    protocol.stream_started()
    protocol.ack(protocol.on_response(cds_response("v1", "n1", "a")))
    bad = protocol.on_response(cds_response("v2", "n2", "a", "b"))
    nack = protocol.nack(bad, "Cluster[b].lb_policy: no")
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    assert nack.error_detail.code == INVALID_ARGUMENT == 3
    assert nack.error_detail.message == "Cluster[b].lb_policy: no"
    assert protocol.types[CLUSTER].version == "v1"      # the rejected version is not kept
    # The next good response is ACKed with its own version; no error_detail any more.
    ack = protocol.ack(protocol.on_response(cds_response("v3", "n3", "a")))
    assert (ack.version_info, ack.response_nonce) == ("v3", "n3")
    assert not ack.HasField("error_detail")


def test_nack_of_the_first_response_sends_an_empty_version():
    protocol = sotw()
    protocol.stream_started()
    nack = protocol.nack(protocol.on_response(cds_response("v1", "n1", "a")), "bad")
    assert (nack.version_info, nack.response_nonce) == ("", "n1")


def test_nack_of_a_named_type_keeps_the_names():
    protocol = AdsProtocol(NODE)
    protocol.set_interest(ROUTE, {"r"})
    protocol.stream_started()
    nack = protocol.nack(protocol.on_response(sotw_response(ROUTE, "1", "n", route_config("r"))),
                         "bad")
    assert list(nack.resource_names) == ["r"]


def test_versions_are_per_type():
    protocol = sotw()
    protocol.stream_started()
    protocol.ack(protocol.on_response(cds_response("c1", "n1", "a")))
    lds = protocol.ack(protocol.on_response(
        sotw_response(LISTENER, "l1", "n2", tcp_listener("l", 10001))))
    nack = protocol.nack(protocol.on_response(cds_response("c2", "n3", "a")), "bad")
    assert lds.version_info == "l1" and nack.version_info == "c1"


def test_a_response_for_a_type_never_asked_for_is_an_error():
    response = protos.DiscoveryResponse(type_url="type.googleapis.com/envoy.Other",
                                        version_info="1", nonce="n")
    with pytest.raises(ValueError, match="never asked for"):
        AdsProtocol(NODE).on_response(response)


# --- state of the world: subscriptions and reconnects ----------------------------------------

def test_set_interest_before_a_stream_sends_nothing():
    protocol = AdsProtocol(NODE)
    assert protocol.set_interest(ENDPOINT, {"a"}) == []


def test_changed_interest_on_a_stream_sends_the_new_names_with_version_and_nonce():
    protocol = AdsProtocol(NODE)
    protocol.set_interest(ENDPOINT, {"a"})
    protocol.stream_started()
    protocol.ack(protocol.on_response(sotw_response(ENDPOINT, "5", "n5", assignment("a", 1))))
    (request,) = protocol.set_interest(ENDPOINT, {"a", "b"})
    assert list(request.resource_names) == ["a", "b"]
    assert (request.version_info, request.response_nonce) == ("5", "n5")
    assert protocol.set_interest(ENDPOINT, {"b", "a"}) == []       # the same set: nothing


def test_first_interest_in_a_type_mid_stream_sends_its_first_request():
    protocol = sotw()
    protocol.stream_started()
    assert protocol.set_interest(ENDPOINT, frozenset()) == []       # still nothing to ask
    (request,) = protocol.set_interest(ENDPOINT, {"svc"})
    assert request.type_url == ENDPOINT and list(request.resource_names) == ["svc"]


def test_reconnect_sends_the_last_accepted_version_without_a_nonce():
    protocol = sotw()
    protocol.stream_started()
    protocol.ack(protocol.on_response(cds_response("v1", "n1", "a")))
    protocol.nack(protocol.on_response(cds_response("v2", "n2", "a")), "bad")
    protocol.stream_ended()
    cds, lds = protocol.stream_started()
    assert (cds.version_info, cds.response_nonce) == ("v1", "")
    assert (lds.version_info, lds.response_nonce) == ("", "")


def test_restore_makes_the_first_request_carry_the_saved_version():
    protocol = sotw()
    protocol.restore(CLUSTER, "saved-7", {})
    cds, _ = protocol.stream_started()
    assert cds.version_info == "saved-7" and cds.response_nonce == ""


# --- delta -------------------------------------------------------------------------------------

def test_delta_first_requests_subscribe_wildcard_and_names():
    protocol = delta()
    protocol.set_interest(ENDPOINT, {"b", "a"})
    cds, eds, lds = protocol.stream_started()
    assert [r.type_url for r in (cds, eds, lds)] == [CLUSTER, ENDPOINT, LISTENER]
    assert list(cds.resource_names_subscribe) == ["*"]
    assert list(eds.resource_names_subscribe) == ["a", "b"]
    assert all(r.response_nonce == "" and not r.initial_resource_versions
               and not r.resource_names_unsubscribe for r in (cds, eds, lds))
    assert all(isinstance(r, protos.DeltaDiscoveryRequest) for r in (cds, eds, lds))


def test_delta_response_carries_per_resource_versions_and_removals():
    protocol = delta()
    protocol.stream_started()
    update = protocol.on_response(delta_response(
        CLUSTER, "n1", [("a", "va", static_cluster("a"))], removed=["gone"],
        system_version="sys-1"))
    assert update.complete is False
    assert update.resources["a"][0] == "va" and update.removed == ["gone"]
    assert (update.version, update.nonce) == ("sys-1", "n1")


def test_delta_ack_carries_the_nonce_and_records_versions():
    protocol = delta()
    protocol.stream_started()
    update = protocol.on_response(delta_response(
        CLUSTER, "n1", [("a", "va1", static_cluster("a")), ("b", "vb1", static_cluster("b"))]))
    ack = protocol.ack(update)
    assert ack.type_url == CLUSTER and ack.response_nonce == "n1"
    assert not ack.HasField("error_detail")
    assert not ack.resource_names_subscribe and not ack.initial_resource_versions
    assert protocol.types[CLUSTER].held == {"a": "va1", "b": "vb1"}
    protocol.ack(protocol.on_response(delta_response(
        CLUSTER, "n2", [("a", "va2", static_cluster("a"))], removed=["b"])))
    assert protocol.types[CLUSTER].held == {"a": "va2"}


def test_delta_nack_carries_the_nonce_and_error_and_keeps_what_is_held():
    protocol = delta()
    protocol.stream_started()
    protocol.ack(protocol.on_response(delta_response(CLUSTER, "n1",
                                                     [("a", "va1", static_cluster("a"))])))
    bad = protocol.on_response(delta_response(CLUSTER, "n2", [("b", "vb", static_cluster("b"))],
                                              removed=["a"]))
    nack = protocol.nack(bad, "Cluster[b]: bad")
    assert nack.response_nonce == "n2"
    assert (nack.error_detail.code, nack.error_detail.message) == (3, "Cluster[b]: bad")
    assert protocol.types[CLUSTER].held == {"a": "va1"}


def test_delta_changed_interest_subscribes_and_unsubscribes_the_difference():
    protocol = delta()
    protocol.set_interest(ENDPOINT, {"a", "b"})
    protocol.stream_started()
    (request,) = protocol.set_interest(ENDPOINT, {"b", "c"})
    assert list(request.resource_names_subscribe) == ["c"]
    assert list(request.resource_names_unsubscribe) == ["a"]
    (request,) = protocol.set_interest(ENDPOINT, set())
    assert list(request.resource_names_unsubscribe) == ["b", "c"]
    assert not request.resource_names_subscribe


def test_delta_subscription_change_omits_the_response_nonce():
    # discovery.proto, DeltaDiscoveryRequest.response_nonce: "When the DeltaDiscoveryRequest
    # is a ACK or NACK message in response to a previous DeltaDiscoveryResponse, the
    # response_nonce must be the nonce in the DeltaDiscoveryResponse. Otherwise (unlike in
    # DiscoveryRequest) response_nonce must be omitted."
    protocol = delta()
    protocol.set_interest(ENDPOINT, {"a"})
    protocol.stream_started()
    protocol.ack(protocol.on_response(delta_response(ENDPOINT, "n1",
                                                     [("a", "1", assignment("a", 1))])))
    (request,) = protocol.set_interest(ENDPOINT, {"a", "b"})
    assert request.response_nonce == ""


def test_delta_reconnect_reports_held_versions_and_subscribes_again():
    protocol = delta()
    protocol.set_interest(ENDPOINT, {"a", "b"})
    protocol.stream_started()
    protocol.ack(protocol.on_response(delta_response(
        CLUSTER, "n1", [("c1", "1", static_cluster("c1")), ("c2", "2", static_cluster("c2"))])))
    protocol.ack(protocol.on_response(delta_response(
        ENDPOINT, "n2", [("a", "ea", assignment("a", 1)), ("b", "eb", assignment("b", 1))])))
    protocol.set_interest(ENDPOINT, {"a"})               # b no longer wanted
    protocol.stream_ended()
    cds, eds, lds = protocol.stream_started()
    assert dict(cds.initial_resource_versions) == {"c1": "1", "c2": "2"}
    assert list(cds.resource_names_subscribe) == ["*"]
    assert dict(eds.initial_resource_versions) == {"a": "ea"}     # only what is wanted
    assert list(eds.resource_names_subscribe) == ["a"]
    assert not eds.resource_names_unsubscribe
    assert dict(lds.initial_resource_versions) == {}
    assert all(r.response_nonce == "" for r in (cds, eds, lds))


def test_delta_restore_reports_the_saved_versions():
    protocol = delta()
    protocol.restore(LISTENER, "", {"l1": "v9"})
    _, lds = protocol.stream_started()
    assert dict(lds.initial_resource_versions) == {"l1": "v9"}


def test_delta_node_on_first_message_only():
    protocol = delta(node_once=True)
    first, second = protocol.stream_started()
    assert first.node.id == "node-1" and not second.HasField("node")


# --- properties --------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d"])
VERSIONS = st.text("0123456789", min_size=1, max_size=3)
DELTA_STEP = st.one_of(
    st.tuples(st.just("response"),
              st.dictionaries(NAMES, VERSIONS, max_size=3),          # changed: name -> version
              st.lists(NAMES, max_size=2, unique=True),               # removed
              st.booleans()),                                         # accepted?
    st.tuples(st.just("reconnect")),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(DELTA_STEP, max_size=12))
def test_delta_held_is_exactly_what_was_accepted(steps):
    """Any sequence of delta responses, ACKs, NACKs and reconnects: `held` equals the
    resources of the ACKed responses applied in order, and every reconnect reports exactly
    those versions."""
    protocol = delta()
    protocol.stream_started()
    model = {}
    any_pb = packed(message(CLUSTER, static_cluster("x")))
    for i, step in enumerate(steps):
        if step[0] == "reconnect":
            protocol.stream_ended()
            cds = protocol.stream_started()[0]
            assert dict(cds.initial_resource_versions) == model
            assert cds.response_nonce == ""
            continue
        _, changed, removed, accept = step
        # A name both changed and removed is a malformed response (Envoy NACKs it; see
        # test_xds_dynamic.py), so the sequence keeps them apart.
        removed = [n for n in removed if n not in changed]
        response = protos.DeltaDiscoveryResponse(type_url=CLUSTER, nonce=f"n{i}")
        for name, version in changed.items():
            response.resources.add(name=name, version=version).resource.CopyFrom(any_pb)
        response.removed_resources.extend(removed)
        update = protocol.on_response(response)
        if accept:
            request = protocol.ack(update)
            model.update(changed)
            for name in removed:
                model.pop(name, None)
            assert not request.HasField("error_detail")
        else:
            request = protocol.nack(update, "no")
            assert request.error_detail.code == INVALID_ARGUMENT
        assert request.response_nonce == f"n{i}"
        assert protocol.types[CLUSTER].held == model


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(VERSIONS, st.booleans()), max_size=10))
def test_sotw_ack_and_nack_version_rules(responses):
    """Every ACK sends the response's version; every NACK the last ACKed one (or "");
    both send the response's nonce; a reconnect sends the last ACKed version."""
    protocol = sotw()
    protocol.stream_started()
    accepted = ""
    for i, (version, accept) in enumerate(responses):
        update = protocol.on_response(cds_response(version, f"n{i}", "a"))
        if accept:
            request = protocol.ack(update)
            accepted = version
        else:
            request = protocol.nack(update, "no")
        assert request.version_info == accepted
        assert request.response_nonce == f"n{i}"
        assert request.HasField("error_detail") != accept
    protocol.stream_ended()
    cds, _ = protocol.stream_started()
    assert (cds.version_info, cds.response_nonce) == (accepted, "")


def _unpacked(any_pb, type_url):
    msg = CLASSES[type_url]()
    assert any_pb.Unpack(msg)
    return msg
