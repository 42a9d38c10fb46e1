"""Baton's own typed configs that are proto messages, declared in the default pool (as
istio_types.py declares Istio's), so that they are known wherever an Envoy type is: a
bootstrap, a resource, /config_dump.

    baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig   (xds/generic_proxy.py): the SOFA
        Bolt codec of generic_proxy, beside Envoy's DubboCodecConfig; no fields, as that one
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

BOLT_CODEC = "baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig"


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


_declare_empty(BOLT_CODEC, "baton/generic_proxy/bolt_codec.proto")
