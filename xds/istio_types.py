"""Istio's own typed configs, declared from Istio's published field numbers.

xds-protos ships Envoy's API only; istiod also sends messages of Istio's proxy. Declaring the
ones Baton implements in the default descriptor pool lets every part of Baton treat them as
it treats Envoy's: the translators unpack them, json_format parses a bootstrap that names
them, and /config_dump shows them. A message is declared only with the fields Baton
implements, so that bytes with any other field are refused (`unknown_fields`) rather than
silently dropped.

    envoy.tcp.metadataexchange.config.MetadataExchange   (istio/proxy's metadata_exchange
        .proto; Envoy's contrib docs show the same message): string protocol = 1,
        bool enable_discovery = 2
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, unknown_fields

from .parse import is_repeated

METADATA_EXCHANGE = "envoy.tcp.metadataexchange.config.MetadataExchange"

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BOOL = descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
# file name (inside the pool only) -> (package, message, [(field, number, type)])
_DECLARED = {
    "baton/istio/metadata_exchange.proto": (
        "envoy.tcp.metadataexchange.config", "MetadataExchange",
        [("protocol", 1, _STRING), ("enable_discovery", 2, _BOOL)]),
}


def _declare():
    pool = descriptor_pool.Default()
    for file_name, (package, message, fields) in _DECLARED.items():
        try:
            pool.FindMessageTypeByName(f"{package}.{message}")
            continue                     # declared already (a second import of this module)
        except KeyError:
            pass
        proto = descriptor_pb2.FileDescriptorProto(name=file_name, package=package,
                                                   syntax="proto3")
        msg = proto.message_type.add(name=message)
        for name, number, kind in fields:
            msg.field.add(name=name, number=number, type=kind, label=_OPTIONAL,
                          json_name=_camel(name))
        pool.AddSerializedFile(proto.SerializeToString())


def _camel(name):
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def unknown_field_numbers(message) -> list[int]:
    """Field numbers present in the bytes a message was parsed from but not declared."""
    return sorted({field.field_number for field in unknown_fields.UnknownFieldSet(message)})


def unknown_field_errors(message, path: str) -> list[str]:
    """"path: field number N of Type not supported" for every undeclared field, in `message`
    and the messages inside it (a declared message carries only what Baton implements)."""
    errors = [f"{path}: field number {number} of {message.DESCRIPTOR.full_name} not supported"
              for number in unknown_field_numbers(message)]
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        repeated = is_repeated(field)
        for i, item in enumerate(value if repeated else [value]):
            where = f"{path}.{field.name}" + (f"[{i}]" if repeated else "")
            errors += unknown_field_errors(item, where)
    return errors


_declare()
