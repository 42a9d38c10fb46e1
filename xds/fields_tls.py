"""Which fields of Envoy's TLS transport socket Baton implements (merged into fields.ALLOWED).

The DownstreamTlsContext of a listener's filter chain (xds/tls.py translates it) and the
UpstreamTlsContext of a cluster (xds/tls_upstream.py), which share CommonTlsContext. Anything
else set there — OCSP, certificate providers, CRLs, custom validators,
key_log — is refused with its path until it is implemented. Secrets (static_resources.secrets
and SDS, xds/secrets.py): the references a context makes (SdsSecretConfig), the Secret
resource's tls_certificate and validation_context, and the config sources SDS may use. And the
connection manager's x-forwarded-client-cert fields (forward_client_cert_details,
set_current_client_cert_details), which only mean something with TLS.
"""

from .fields import SKIP, WALK

ALLOWED_TLS = {
    "envoy.config.core.v3.TransportSocket": {
        "name": WALK, "typed_config": SKIP},
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": {
        "common_tls_context": WALK, "require_client_certificate": WALK,
        # Session resumption (worker/tls/tickets.py); the keys are checked by xds/tls.py.
        "session_ticket_keys": WALK, "session_ticket_keys_sds_secret_config": WALK,
        "disable_stateless_session_resumption": WALK,
        "disable_stateful_session_resumption": WALK},
    "envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys": {
        "keys": WALK},
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": {
        "common_tls_context": WALK, "sni": WALK, "max_session_keys": WALK},
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": {
        "tls_params": WALK, "tls_certificates": WALK, "validation_context": WALK,
        "alpn_protocols": WALK,
        # The references' sds_config is checked by xds/config_source.py.
        "tls_certificate_sds_secret_configs": WALK, "validation_context_sds_secret_config": WALK,
        "combined_validation_context": WALK},
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext"
    ".CombinedCertificateValidationContext": {
        "default_validation_context": WALK, "validation_context_sds_secret_config": WALK},
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig": {
        "name": WALK, "sds_config": SKIP},
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources": {
        "secrets": SKIP},
    "envoy.extensions.transport_sockets.tls.v3.Secret": {
        "name": WALK, "tls_certificate": WALK, "validation_context": WALK,
        "session_ticket_keys": WALK},
    "envoy.config.core.v3.WatchedDirectory": {
        "path": WALK},
    # SDS only: LDS, CDS, RDS and EDS still say "only 'ads: {}'" (config_source.py).
    "envoy.config.core.v3.ConfigSource": {
        "api_config_source": WALK, "path_config_source": WALK},
    # A Unix socket endpoint (Istio's sds-grpc cluster); translate.py refuses it elsewhere.
    "envoy.config.core.v3.Address": {
        "pipe": WALK},
    "envoy.config.core.v3.Pipe": {
        "path": WALK},
    "envoy.config.core.v3.PathConfigSource": {
        "path": WALK, "watched_directory": WALK},
    "envoy.extensions.transport_sockets.tls.v3.TlsParameters": {
        # protocol versions and the lists are checked by the translator, value by value.
        "tls_minimum_protocol_version": WALK, "tls_maximum_protocol_version": WALK,
        "cipher_suites": WALK, "ecdh_curves": WALK},
    # x-forwarded-client-cert on the connection manager (xds/tls.py translate_xfcc).
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
        "forward_client_cert_details": WALK, "set_current_client_cert_details": WALK},
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    ".SetCurrentClientCertDetails": {
        "subject": WALK, "cert": WALK, "chain": WALK, "dns": WALK, "uri": WALK},
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate": {
        "certificate_chain": WALK, "private_key": WALK, "watched_directory": WALK},
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": {
        "trusted_ca": WALK, "match_typed_subject_alt_names": WALK,
        "match_subject_alt_names": WALK, "watched_directory": WALK},
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher": {
        "san_type": WALK, "matcher": WALK},
    "envoy.config.core.v3.DataSource": {
        "filename": WALK, "inline_bytes": WALK, "inline_string": WALK},
    "envoy.type.matcher.v3.StringMatcher": {
        "exact": WALK, "prefix": WALK, "suffix": WALK, "safe_regex": WALK, "contains": WALK,
        "ignore_case": WALK},
    "envoy.type.matcher.v3.RegexMatcher": {
        "regex": WALK},
}
