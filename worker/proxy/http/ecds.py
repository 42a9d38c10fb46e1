"""An HTTP filter given by config_discovery (ECDS), as the worker runs it.

The HCM's filter list holds a placeholder for it (xds/ecds.py). `effective(entry)` is the
entry to build: the resource ECDS delivered, else the default_config, else Envoy's
missing-config filter, which answers every request 500 with flag NFCF (Envoy's
MissingConfigFilter: the filter exists, its config never came).
"""

from __future__ import annotations

from .filter import FilterFactory, LocalReply, StreamFilter, register

ECDS = "ecds"
MISSING = "baton.missing_filter_config"


def effective(entry: dict) -> dict:
    ecds = entry["ecds"]
    return ecds["resolved"] or ecds["default"] or {"name": MISSING, "config": {}}


@register(MISSING)
class MissingConfigFactory(FilterFactory):
    def create(self, stream):
        return MissingConfigFilter(stream)


class MissingConfigFilter(StreamFilter):
    __slots__ = ()

    def on_request_headers(self, request, end_stream: bool):
        return LocalReply(500, b"", flags="NFCF")
