"""Baton's xDS agent against the real Envoy: the same control plane resources, the same verdicts,
the same routing.

Two ControlPlane instances (tests/xds_support) serve identical resources, except for the
listener's port (the control plane has no per-node snapshots, and the two proxies cannot bind
the same port): one serves Envoy 1.40, the other Baton, over ADS, state of the world (GRPC) and
delta (DELTA_GRPC). The scenario walks both through the same updates:

    v1  LDS (hcm, rds "local") + RDS + CDS (EDS alpha, EDS beta with a service_name, STATIC
        gamma) + EDS; routes by path prefix, exact path, header, virtual host and weighted
        clusters (0/1, so deterministic); one route names a cluster CDS does not have yet
    v2  EDS moves alpha to another upstream
    v3  CDS adds the missing cluster (EDS): it warms, then serves
    v4  RDS re-routes a prefix
    then invalid resources, each NACKed by both while the last good config serves on:
        CDS with an lb_policy outside the enum; RDS with validate_clusters naming a missing
        cluster; RDS with a duplicate domain in a virtual host; LDS whose hcm has an inline
        route_config with a duplicate domain; LDS with a tcp_proxy naming no cluster; EDS with
        a hostname endpoint
    then valid updates of every NACKed type again, ACKed by both.

After each step every request in REQUESTS is sent through both listeners and the upstream
that answers (or the status) must be the same, and the expected one. At the end the verdict of
every (type, version) the planes sent must be the same for both, and Envoy's and Baton's
update_rejected / update_success counters of every xDS scope must be equal.

Every wait polls against a deadline; every process started here is stopped by its pid.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request

import pytest

from ..waiting import wait_until
from ..xds_support.control_plane import CLUSTER, ENDPOINT, LISTENER, ROUTE, ControlPlane
from ..xds_support.resources import ADS, NamedUpstream, bootstrap, listener
from .conftest import Baton, free_port
from .differential.proxies import Envoy

API_TYPES = [("GRPC", "sotw"), ("DELTA_GRPC", "delta")]
WHO = ("envoy", "baton")
SHORT = {LISTENER: "lds", ROUTE: "rds", CLUSTER: "cds", ENDPOINT: "eds"}


# ---- resources (the same for both proxies; only the listener port differs) ------------------

def eds_cluster(name: str, service_name: str | None = None, lb_policy="ROUND_ROBIN") -> dict:
    eds = {"eds_config": ADS}
    if service_name:
        eds["service_name"] = service_name
    return {"name": name, "type": "EDS", "connect_timeout": "1s", "lb_policy": lb_policy,
            "eds_cluster_config": eds}


def assignment(name: str, port: int, address: str = "127.0.0.1") -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": address, "port_value": port}}}}]}]}


def static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": assignment(name, port)}


def route_config(beta_prefix_to="beta", **extra) -> dict:
    """The routes under test; `beta_prefix_to` is the cluster of the /beta prefix."""
    return {"name": "local", **extra, "virtual_hosts": [
        {"name": "special", "domains": ["special.example"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "gamma"}}]},
        {"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/", "headers": [{"name": "x-route",
                                                    "string_match": {"exact": "beta"}}]},
             "route": {"cluster": "beta"}},
            {"match": {"prefix": "/beta"}, "route": {"cluster": beta_prefix_to}},
            {"match": {"path": "/gamma"}, "route": {"cluster": "gamma"}},
            {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "beta", "weight": 0}, {"name": "gamma", "weight": 1}]}}},
            {"match": {"prefix": "/late"}, "route": {"cluster": "late"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "alpha"}}]}]}


# (path, headers) sent through both listeners after every step.
REQUESTS = [("/", {}), ("/alpha", {}), ("/beta/x", {}), ("/gamma", {}), ("/gammax", {}),
            ("/", {"x-route": "beta"}), ("/gamma", {"x-route": "beta"}),
            ("/beta", {"host": "special.example"}), ("/w", {}), ("/late", {})]


def expected(alpha: str, beta_prefix: str, late: str) -> list[str]:
    return [alpha, alpha, beta_prefix, "gamma", alpha, "beta", "beta", "gamma", "gamma", late]


def fetch(port: int, path: str, headers: dict) -> str:
    """The upstream's name, or "status N" / "no answer" when no upstream answered."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=3) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        return f"status {exc.code}"
    except OSError as exc:
        return f"no answer ({type(exc).__name__})"


def envoy_stats(envoy: Envoy) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats?format=json",
                                timeout=5) as r:
        stats = json.load(r)["stats"]
    return {s["name"]: s["value"] for s in stats if "value" in s}


def verdicts(plane: ControlPlane) -> dict[tuple[str, str], set[str]]:
    """(type short name, version) -> {"ACK", "NACK", "unanswered"} of every response sent."""
    requests = plane.requests()
    out: dict[tuple[str, str], set[str]] = {}
    for r in plane.responses():
        answers = [q for q in requests if q["stream"] == r["stream"]
                   and q["response_nonce"] == r["nonce"]]
        verdict = ("unanswered" if not answers
                   else "NACK" if answers[0]["error_detail"] else "ACK")
        out.setdefault((SHORT[r["type_url"]], r["version_info"]), set()).add(verdict)
    return out


# ---- the pair of proxies -------------------------------------------------------------------

class Pair:
    """Envoy and Baton, each with its own control plane and listener port."""

    def __init__(self, tmp_path, api_type: str):
        self.tmp_path = tmp_path
        self.api_type = api_type
        self.planes = {who: ControlPlane() for who in WHO}
        self.listen = {who: free_port() for who in WHO}
        self.proxies: dict[str, object] = {}

    def start(self) -> "Pair":
        """Baton launched first and Envoy started beside it (their start-ups overlap), then
        Baton waited for; stop() ends whichever started."""
        boots = {who: bootstrap(free_port(), self.planes[who].start(), self.api_type) for who in WHO}
        baton = Baton(self.tmp_path / "baton", boots["baton"]).launch()
        self.proxies["baton"] = baton
        self.proxies["envoy"] = Envoy(self.tmp_path / "envoy", boots["envoy"]).start(timeout=15)
        baton.wait_ready()
        return self

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        for plane in self.planes.values():
            plane.close()

    def set(self, type_url: str, resources, version: str) -> None:
        """The same resources to both planes; a callable gets the proxy's listener port."""
        for who, plane in self.planes.items():
            items = resources(self.listen[who]) if callable(resources) else resources
            plane.set_resources(type_url, copy.deepcopy(items), version)

    def verdict(self, type_url: str, version: str) -> dict[str, dict]:
        """Wait until both proxies ACKed or NACKed `version`; -> who -> the answering request."""
        out = {}
        for who, plane in self.planes.items():
            out[who] = wait_until(
                lambda: plane.nacked(type_url, version) or plane.acked(type_url, version), 10,
                f"{who} to ACK or NACK {SHORT[type_url]} {version}")
        return out

    def routes(self, who: str) -> list[str]:
        return [fetch(self.listen[who], path, headers) for path, headers in REQUESTS]

    def routes_become(self, want: list[str], what: str) -> None:
        for who in WHO:
            try:
                wait_until(lambda: self.routes(who) == want, 10, f"{who}: {what}")
            except AssertionError:
                assert self.routes(who) == want, f"{who}: {what}"

    def stats(self) -> dict[str, dict[str, int]]:
        return {"envoy": envoy_stats(self.proxies["envoy"]), "baton": self.proxies["baton"].stats()}


def ack_both(pair: Pair, type_url: str, version: str) -> None:
    got = pair.verdict(type_url, version)
    for who, request in got.items():
        assert request["error_detail"] is None, (who, SHORT[type_url], version, request)


def nack_both(pair: Pair, type_url: str, version: str, last_good: str, protocol: str,
              baton_says: str) -> None:
    got = pair.verdict(type_url, version)
    for who, request in got.items():
        assert request["error_detail"] is not None, (who, SHORT[type_url], version, request)
        assert pair.planes[who].acked(type_url, version) is None
        if protocol == "sotw":
            assert request["version_info"] == last_good, (who, request)
    assert baton_says in got["baton"]["error_detail"]["message"], got["baton"]


@pytest.fixture(params=API_TYPES, ids=[p for _, p in API_TYPES])
def scenario(request, tmp_path):
    ups = {name: NamedUpstream(name) for name in ("alpha-1", "alpha-2", "beta", "gamma", "late")}
    pair = Pair(tmp_path, request.param[0])
    try:
        yield pair, ups, request.param[1]
    finally:
        pair.stop()
        for up in ups.values():
            up.stop()


# ---- the test ------------------------------------------------------------------------------

def test_same_verdicts_and_routes_as_envoy(scenario):
    pair, ups, protocol = scenario

    def clusters(alpha_lb="ROUND_ROBIN", late=False):
        out = [eds_cluster("alpha", lb_policy=alpha_lb), eds_cluster("beta", "beta-eds"),
               static_cluster("gamma", ups["gamma"].port)]
        return out + [eds_cluster("late")] if late else out

    def assignments(alpha="alpha-1", alpha_address="127.0.0.1"):
        return [assignment("alpha", ups[alpha].port, alpha_address),
                assignment("beta-eds", ups["beta"].port), assignment("late", ups["late"].port)]

    pair.set(LISTENER, lambda port: [listener(port)], "1")
    pair.set(ROUTE, [route_config()], "1")
    pair.set(CLUSTER, clusters(), "1")
    pair.set(ENDPOINT, assignments(), "1")
    pair.start()
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
        ack_both(pair, type_url, "1")
    # A route to a cluster CDS does not have: both answer 503 (Envoy's cluster_not_found).
    pair.routes_become(expected("alpha-1", "beta", "status 503"), "v1 routes")

    pair.set(ENDPOINT, assignments(alpha="alpha-2"), "2")
    ack_both(pair, ENDPOINT, "2")
    pair.routes_become(expected("alpha-2", "beta", "status 503"), "EDS v2 moved alpha")

    pair.set(CLUSTER, clusters(late=True), "3")
    ack_both(pair, CLUSTER, "3")
    pair.routes_become(expected("alpha-2", "beta", "late"), "CDS v3 added the late cluster")

    pair.set(ROUTE, [route_config(beta_prefix_to="gamma")], "4")
    ack_both(pair, ROUTE, "4")
    good = expected("alpha-2", "gamma", "late")
    pair.routes_become(good, "RDS v4 re-routed /beta")

    # -- invalid resources: NACKed by both, the last good config keeps serving --

    pair.set(CLUSTER, clusters(alpha_lb=99, late=True), "5")
    nack_both(pair, CLUSTER, "5", "3", protocol, "Cluster[alpha].lb_policy")
    assert pair.routes("envoy") == pair.routes("baton") == good

    pair.set(ROUTE, [route_config(beta_prefix_to="missing", validate_clusters=True)], "5")
    nack_both(pair, ROUTE, "5", "4", protocol, "unknown cluster 'missing'")
    assert pair.routes("envoy") == pair.routes("baton") == good

    duplicate = route_config(beta_prefix_to="gamma")
    duplicate["virtual_hosts"][0]["domains"] = ["special.example", "other.example",
                                                "special.example"]
    pair.set(ROUTE, [duplicate], "6")
    nack_both(pair, ROUTE, "6", "4", protocol, "duplicate entry of domain special.example")
    assert pair.routes("envoy") == pair.routes("baton") == good

    def inline_duplicate(port):
        spec = listener(port)
        hcm = spec["filter_chains"][0]["filters"][0]["typed_config"]
        del hcm["rds"]
        hcm["route_config"] = {"name": "inline", "virtual_hosts": [
            {"name": "x", "domains": ["x.example", "x.example"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "gamma"}}]}]}
        return [spec]
    pair.set(LISTENER, inline_duplicate, "5")
    nack_both(pair, LISTENER, "5", "1", protocol, "duplicate entry of domain x.example")
    assert pair.routes("envoy") == pair.routes("baton") == good

    def tcp_without_cluster(port):
        return [{"name": "main",
                 "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                 "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy"
                              ".v3.TcpProxy", "stat_prefix": "tcp"}}]}]}]
    pair.set(LISTENER, tcp_without_cluster, "6")
    nack_both(pair, LISTENER, "6", "1", protocol, "one of cluster or weighted_clusters")
    assert pair.routes("envoy") == pair.routes("baton") == good

    pair.set(ENDPOINT, assignments(alpha="alpha-1", alpha_address="localhost"), "5")
    nack_both(pair, ENDPOINT, "5", "2", protocol, "'localhost' is not an IP address")
    assert pair.routes("envoy") == pair.routes("baton") == good

    # -- valid again: every NACKed type is ACKed by both --

    pair.set(CLUSTER, clusters(late=True) + [static_cluster("extra", ups["beta"].port)], "7")
    ack_both(pair, CLUSTER, "7")
    pair.set(ENDPOINT, assignments(alpha="alpha-1"), "7")
    ack_both(pair, ENDPOINT, "7")
    pair.set(ROUTE, [route_config(beta_prefix_to="extra", validate_clusters=True)], "7")
    ack_both(pair, ROUTE, "7")
    pair.set(LISTENER, lambda port: [{**listener(port), "per_connection_buffer_limit_bytes": 65536}],
             "7")
    ack_both(pair, LISTENER, "7")
    final = expected("alpha-1", "beta", "late")
    pair.routes_become(final, "v7 routes")
    assert pair.routes("envoy") == pair.routes("baton") == final

    # -- the whole record: every version sent got the same answer from both --

    table = {who: verdicts(plane) for who, plane in pair.planes.items()}
    assert table["envoy"] == table["baton"]
    rejected = {(t, v) for (t, v), answers in table["baton"].items() if "NACK" in answers}
    assert rejected == {("cds", "5"), ("rds", "5"), ("rds", "6"), ("lds", "5"), ("lds", "6"),
                        ("eds", "5")}

    # -- and the same xDS stats (Envoy's names) --
    # Per-cluster EDS stats are compared for alpha, the cluster every EDS update names: for
    # the others Envoy's counts follow its per-watch delivery (see the tests below).
    scopes = ["cluster_manager.cds", "listener_manager.lds", "http.ingress.rds.local",
              "cluster.alpha"]
    stats = pair.stats()
    for key in ("update_rejected", "update_success"):
        got = {who: {s: stats[who].get(f"{s}.{key}") for s in scopes} for who in WHO}
        assert got["envoy"] == got["baton"], key
    assert stats["baton"]["control_plane.connected_state"] == 1
    assert stats["envoy"]["control_plane.connected_state"] == 1


# ---- differences the first run found, now the same ----------------------------------------

@pytest.fixture
def small_pair(request, tmp_path):
    """Both proxies on v1 of a small config: EDS clusters a and b, every route to a."""
    ups = {name: NamedUpstream(name) for name in ("a", "b")}
    pair = Pair(tmp_path, request.param)
    try:
        pair.set(LISTENER, lambda port: [listener(port)], "1")
        pair.set(ROUTE, [{"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}], "1")
        pair.set(CLUSTER, [eds_cluster("a"), eds_cluster("b")], "1")
        pair.set(ENDPOINT, [assignment("a", ups["a"].port), assignment("b", ups["b"].port)], "1")
        pair.start()
        for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
            ack_both(pair, type_url, "1")
        yield pair, ups
    finally:
        pair.stop()
        for up in ups.values():
            up.stop()


@pytest.mark.parametrize("small_pair", ["GRPC"], indirect=True)
def test_update_attempt_counts_the_subscription_start(small_pair):
    pair, _ = small_pair
    scopes = ["cluster_manager.cds", "listener_manager.lds", "http.ingress.rds.local",
              "cluster.a"]
    stats = pair.stats()
    got = {who: {s: stats[who].get(f"{s}.update_attempt") for s in scopes} for who in WHO}
    assert got["envoy"] == got["baton"]


@pytest.mark.parametrize("small_pair", ["DELTA_GRPC"], indirect=True)
def test_delta_eds_nack_counts_on_every_eds_cluster(small_pair):
    pair, ups = small_pair
    pair.set(ENDPOINT, [assignment("a", ups["a"].port, "localhost"),
                        assignment("b", ups["b"].port)], "2")
    nack_both(pair, ENDPOINT, "2", "1", "delta", "'localhost' is not an IP address")
    stats = pair.stats()
    got = {who: {s: stats[who].get(f"{s}.update_rejected") for s in ("cluster.a", "cluster.b")}
           for who in WHO}
    assert got["envoy"] == got["baton"]


@pytest.mark.parametrize("small_pair", ["GRPC"], indirect=True)
def test_eds_endpoint_port_zero_same_verdict(small_pair):
    pair, ups = small_pair
    pair.set(ENDPOINT, [assignment("a", ups["a"].port), assignment("b", 0)], "2")
    got = pair.verdict(ENDPOINT, "2")
    assert [got[who]["error_detail"] is None for who in WHO] == [True, True], got


@pytest.mark.parametrize("small_pair", ["GRPC"], indirect=True)
def test_removed_cluster_stats_go_away(small_pair):
    pair, _ = small_pair
    pair.set(CLUSTER, [eds_cluster("a")], "2")
    ack_both(pair, CLUSTER, "2")
    wait_until(lambda: not any(k.startswith("cluster.b.") for k in pair.stats()["envoy"]), 10,
               "Envoy to drop cluster b's stats")
    wait_until(lambda: not any(k.startswith("cluster.b.") for k in pair.stats()["baton"]), 10,
               "Baton to drop cluster b's stats")
