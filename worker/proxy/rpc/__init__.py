"""RPC proxying (Dubbo, SOFA Bolt): requests multiplexed by id over pooled upstream connections.

    protocols.py   what differs per protocol: framing (worker/codecs/dubbo.py, bolt.py), what a
                   request routes on, heartbeats, local replies and their statuses
    routing.py     DubboProxy's route semantics (interface, group, version, method, params,
                   attachment/header matches, weighted clusters), pure logic
    chain.py       a filter chain's RPC config: protocol, routes, Envoy's stat names
    upstream.py    upstream connections per host, each with its own request-id space
    connection.py  a client connection (worker/connection.py's contract)
    move.py        moving one at a reload with its requests in flight (record "rpc")
    access_log.py  generic_proxy's access_log: a line per request, its %-operators
"""

from . import move   # noqa: F401 - registers the "rpc" record kind

