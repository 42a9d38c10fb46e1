"""Baton's own typed configs that are proto messages, declared in the default pool (as
istio_types.py declares Istio's), so that they are known wherever an Envoy type is: a
bootstrap, a resource, /config_dump.

    baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig   (xds/generic_proxy.py): the SOFA
        Bolt codec of generic_proxy, beside Envoy's DubboCodecConfig; no fields, as that one
    baton.generic_proxy.filters.local_ratelimit.v1.LocalRateLimit   (xds/generic_proxy.py):
        a generic_proxy filter before the router admitting requests at a token bucket's
        rate per worker (Envoy's generic_proxy has none; MOSN rate-limits any protocol):
        envoy.type.v3.TokenBucket token_bucket = 1
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

BOLT_CODEC = "baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig"
LOCAL_RATELIMIT = "baton.generic_proxy.filters.local_ratelimit.v1.LocalRateLimit"


def _declare_empty(full_name: str, file_name: str) -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return                          # declared already (a second import of this module)
    except KeyError:
        pass
    package, _, message = full_name.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    proto.message_type.add(name=message)
    pool.AddSerializedFile(proto.SerializeToString())


def _declare_local_ratelimit() -> None:
    from envoy.type.v3 import token_bucket_pb2
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(LOCAL_RATELIMIT)
        return
    except KeyError:
        pass
    package, _, message = LOCAL_RATELIMIT.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(
        name="baton/generic_proxy/local_ratelimit.proto", package=package, syntax="proto3",
        dependency=[token_bucket_pb2.DESCRIPTOR.name])
    msg = proto.message_type.add(name=message)
    msg.field.add(name="token_bucket", number=1, json_name="tokenBucket",
                  type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                  type_name=".envoy.type.v3.TokenBucket")
    pool.AddSerializedFile(proto.SerializeToString())


_declare_empty(BOLT_CODEC, "baton/generic_proxy/bolt_codec.proto")
_declare_local_ratelimit()
