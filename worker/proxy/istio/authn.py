"""istio_authn, HTTP: Istio 1.9 / 1.10's authentication filter, as istio/proxy's
src/envoy/http/authn ran it (config: xds/http_filters_istio.py `_authn`).

Per request, the peer method (mtls) reads the connection's client certificate: its first
URI SAN without "spiffe://" is the peer's principal ("cluster.local/ns/NS/sa/SA"). PERMISSIVE
accepts any connection; STRICT needs a certificate with a principal. With a principal and
the trust domain check on, the peer's trust domain must be ours (or one of
allowed_trust_domains). A failed peer method answers 401 "Peer authentication failed."
unless peer_is_optional. The result goes into the `istio_authn` dynamic metadata
(source.principal, source.user, source.namespace), as Istio's filter saved it for the
filters after it.
"""

from __future__ import annotations

from ..http.filter import FilterFactory, LocalReply, StreamFilter, register
from ..rbac_engine import _sans, peer_principal

NAME = "istio_authn"
SPIFFE = "spiffe://"
REJECTED = "Peer authentication failed."


def principal_of(uri: str | None) -> str | None:
    if not uri:
        return None
    return uri[len(SPIFFE):] if uri.startswith(SPIFFE) else uri


def trust_domain(principal: str) -> str:
    return principal.split("/", 1)[0]


def spiffe_trust_domain(uris) -> str | None:
    """The trust domain of the first spiffe:// URI among `uris`, as istio/proxy's
    Utils::GetTrustDomain reads a certificate; None without one."""
    for uri in uris or ():
        if uri.startswith(SPIFFE):
            return trust_domain(uri[len(SPIFFE):])
    return None


@register(NAME)
class AuthnFactory(FilterFactory):
    def create(self, stream):
        return AuthnFilter(stream, self.config)


class AuthnFilter(StreamFilter):
    __slots__ = ("config",)

    def __init__(self, stream, config: dict):
        super().__init__(stream)
        self.config = config

    def on_request_headers(self, request, end_stream: bool):
        config = self.config
        tls = self.stream.conn.tls
        principal = principal_of(peer_principal(tls))
        mode = config["mtls"]
        if mode is None:
            ok = True
        elif principal is None:
            ok = mode == "PERMISSIVE"
        else:
            ok = self._trusted(tls)
        if not ok and not config["peer_is_optional"]:
            return LocalReply(401, REJECTED, details="istio_authn_rejected")
        if principal is not None and ok:
            info = self.stream.info
            if info.dynamic_metadata is None:
                info.dynamic_metadata = {}
            fields = {"source.principal": principal, "source.user": principal}
            if "/ns/" in principal:
                fields["source.namespace"] = principal.split("/ns/", 1)[1].split("/", 1)[0]
            info.dynamic_metadata[NAME] = fields
        return None

    def _trusted(self, tls) -> bool:
        """istio/proxy's validateTrustDomain: the peer's and our own certificates must each
        have a spiffe:// URI, of the same trust domain (or the peer's among the allowed ones);
        a certificate without one fails the check, ours included."""
        allowed = self.config["trust_domains"]
        if allowed is None:
            return True
        peer = spiffe_trust_domain(_sans(tls)[0])
        if peer is None:
            return False
        if allowed:
            return peer in allowed
        local = spiffe_trust_domain(getattr(tls, "local_uris", None))
        return local is not None and local == peer
