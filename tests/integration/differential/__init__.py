"""Differential tests: the same bootstrap through the real Envoy and through Baton, the same
requests to both, and a comparison of what the client and the upstream saw.

    recorder.py     the recording upstream (a process): answers with what it received
    client.py       raw-socket HTTP/1.1 client (keep-alive, pipelining, malformed input), curl
    proxies.py      Envoy and Baton as processes on one bootstrap template (BATON_DIFF_ONLY)
    bootstraps.py   builders for the bootstrap templates
    compare.py      normalised observations, the differential runner, binomial tolerance
    cases.py        the table form of a one-request case

    addresses.py    a port that refuses connections; this machine's own address

The test modules are tests/integration/test_differential_*.py, one bootstrap each:

    .venv/bin/python -m pytest -q tests/integration/test_differential_*.py     # Envoy vs Baton
    BATON_DIFF_ONLY=envoy .venv/bin/python -m pytest ...    # only Envoy, against the expectations
    BATON_DIFF_ONLY=baton .venv/bin/python -m pytest ...    # only Baton, against the expectations

A case's expectation is the suite's record of what Envoy 1.40 does (comments mark where Envoy
surprised); by default Baton must then observe exactly what Envoy observed (compare.py says what
is normalised away). A case Baton fails is a failing test, never a skip.
"""
