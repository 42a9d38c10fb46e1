"""Istio's listener-side typed configs, declared from Istio's published field numbers.

Like xds/istio_types.py (which declares MetadataExchange for the cluster side), this puts the
messages istiod sends inside listeners into the default descriptor pool, with only the fields
Baton implements: bytes that carry any other field parse with unknown fields, which the
translators refuse by number instead of dropping.

    stats.PluginConfig (istio/proxy extensions/filters/http/istio_stats/config.proto):
        bool disable_host_header_fallback = 6;
        enum Reporter {UNSPECIFIED = 0; SERVER_GATEWAY = 1} reporter = 10
    istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig (istio/api
        envoy/config/filter/http/alpn/v2alpha1/config.proto):
        enum Protocol {HTTP10 = 0; HTTP11 = 1; HTTP2 = 2}
        message AlpnOverride {Protocol upstream_protocol = 1; repeated string alpn_override = 2}
        repeated AlpnOverride alpn_override = 1
    istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig (Istio 1.9 / 1.10's HTTP
        istio_authn; istio/api envoy/config/filter/http/authn/v2alpha1/config.proto and
        authentication/v1alpha1/policy.proto):
        Policy policy = 1; bool skip_validate_trust_domain = 3;
        repeated string allowed_trust_domains = 4
        Policy: repeated PeerAuthenticationMethod peers = 2; bool peer_is_optional = 3;
            repeated OriginAuthenticationMethod origins = 4; bool origin_is_optional = 5;
            enum PrincipalBinding {USE_PEER = 0; USE_ORIGIN = 1} principal_binding = 6
        PeerAuthenticationMethod: MutualTls mtls = 1
        MutualTls: bool allow_tls = 1; enum Mode {STRICT = 0; PERMISSIVE = 1} mode = 2
        OriginAuthenticationMethod: declared empty (its Jwt is refused: Baton has no JWT)
    Not declared, so refused by number when sent: FilterConfig.jwt_output_payload_locations
    (2), Policy.targets (1), PeerAuthenticationMethod.jwt (2).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

STATS_PLUGIN = "stats.PluginConfig"
ALPN_FILTER = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
AUTHN_FILTER = "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig"

_F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, kind, repeated=False, type_name=None):
    json_name = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
    field = msg.field.add(name=name, number=number, type=kind, json_name=json_name,
                          label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


def _stats_file():
    proto = descriptor_pb2.FileDescriptorProto(name="baton/istio/stats_plugin.proto",
                                               package="stats", syntax="proto3")
    msg = proto.message_type.add(name="PluginConfig")
    _field(msg, "disable_host_header_fallback", 6, _F.TYPE_BOOL)
    proto.enum_type.add(name="Reporter")
    for number, name in enumerate(("UNSPECIFIED", "SERVER_GATEWAY")):
        proto.enum_type[0].value.add(name=name, number=number)
    _field(msg, "reporter", 10, _F.TYPE_ENUM, type_name=".stats.Reporter")
    return proto


def _alpn_file():
    package = "istio.envoy.config.filter.http.alpn.v2alpha1"
    proto = descriptor_pb2.FileDescriptorProto(name="baton/istio/alpn.proto", package=package,
                                               syntax="proto3")
    msg = proto.message_type.add(name="FilterConfig")
    _enum(msg, "Protocol", ("HTTP10", "HTTP11", "HTTP2"))
    override = msg.nested_type.add(name="AlpnOverride")
    _field(override, "upstream_protocol", 1, _F.TYPE_ENUM,
           type_name=f".{package}.FilterConfig.Protocol")
    _field(override, "alpn_override", 2, _F.TYPE_STRING, repeated=True)
    _field(msg, "alpn_override", 1, _F.TYPE_MESSAGE, repeated=True,
           type_name=f".{package}.FilterConfig.AlpnOverride")
    return proto


def _enum(msg, name, values):
    enum = msg.enum_type.add(name=name)
    for number, value in enumerate(values):
        enum.value.add(name=value, number=number)


def _authn_file():
    package = "istio.envoy.config.filter.http.authn.v2alpha1"
    proto = descriptor_pb2.FileDescriptorProto(name="baton/istio/authn.proto", package=package,
                                               syntax="proto3")
    mtls = proto.message_type.add(name="MutualTls")
    _enum(mtls, "Mode", ("STRICT", "PERMISSIVE"))
    _field(mtls, "allow_tls", 1, _F.TYPE_BOOL)
    _field(mtls, "mode", 2, _F.TYPE_ENUM, type_name=f".{package}.MutualTls.Mode")
    peer = proto.message_type.add(name="PeerAuthenticationMethod")
    _field(peer, "mtls", 1, _F.TYPE_MESSAGE, type_name=f".{package}.MutualTls")
    proto.message_type.add(name="OriginAuthenticationMethod")
    policy = proto.message_type.add(name="Policy")
    _enum(policy, "PrincipalBinding", ("USE_PEER", "USE_ORIGIN"))
    _field(policy, "peers", 2, _F.TYPE_MESSAGE, repeated=True,
           type_name=f".{package}.PeerAuthenticationMethod")
    _field(policy, "peer_is_optional", 3, _F.TYPE_BOOL)
    _field(policy, "origins", 4, _F.TYPE_MESSAGE, repeated=True,
           type_name=f".{package}.OriginAuthenticationMethod")
    _field(policy, "origin_is_optional", 5, _F.TYPE_BOOL)
    _field(policy, "principal_binding", 6, _F.TYPE_ENUM,
           type_name=f".{package}.Policy.PrincipalBinding")
    config = proto.message_type.add(name="FilterConfig")
    _field(config, "policy", 1, _F.TYPE_MESSAGE, type_name=f".{package}.Policy")
    _field(config, "skip_validate_trust_domain", 3, _F.TYPE_BOOL)
    _field(config, "allowed_trust_domains", 4, _F.TYPE_STRING, repeated=True)
    return proto


def _declare():
    pool = descriptor_pool.Default()
    for full_name, build in ((STATS_PLUGIN, _stats_file), (ALPN_FILTER, _alpn_file),
                             (AUTHN_FILTER, _authn_file)):
        try:
            pool.FindMessageTypeByName(full_name)
        except KeyError:
            pool.AddSerializedFile(build().SerializeToString())


_declare()
