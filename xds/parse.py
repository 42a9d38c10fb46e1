"""Plain YAML/JSON values -> proto message, reporting every bad field with its path.

json_format.ParseDict stops at the first problem and its message does not always say where
(an int that does not parse loses its path). An operator fixing a config wants all the
problems at once, each at its exact place. So: try ParseDict on the whole value (the fast,
usual case); only when it fails, parse field by field, descend into the fields that fail, and
keep everything that parses, so that the caller can still translate the rest.

Paths use proto field names and [i] indices, from the root the caller names
("static_resources.clusters[0].lb_policy").
"""

from google.protobuf import descriptor

from . import protos

_ENUM = descriptor.FieldDescriptor.CPPTYPE_ENUM
_MESSAGE = descriptor.FieldDescriptor.CPPTYPE_MESSAGE
_INTEGER = {descriptor.FieldDescriptor.CPPTYPE_INT32, descriptor.FieldDescriptor.CPPTYPE_INT64,
            descriptor.FieldDescriptor.CPPTYPE_UINT32, descriptor.FieldDescriptor.CPPTYPE_UINT64}
_INTEGER_WRAPPERS = {"google.protobuf.UInt32Value", "google.protobuf.UInt64Value",
                     "google.protobuf.Int32Value", "google.protobuf.Int64Value"}
_ANY = "google.protobuf.Any"
# Exceptions json_format lets through besides ParseError on odd input (and deep YAML aliases).
_PARSE_FAILURES = (protos.ParseError, TypeError, ValueError, AttributeError, KeyError,
                   RecursionError)


def is_repeated(field):
    # protobuf 6+ has is_repeated and newer releases dropped label; older ones only have label.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def join(path, name):
    return f"{path}.{name}" if path else name


def parse_dict(data, msg, path, errors):
    """Parse `data` into `msg` (which should be empty); return the paths that failed.

    Each failure appends "path: message" to `errors`. Fields that parse are kept, and a list
    item that fails stays in place as an empty message, so indices in later paths still
    match the file.
    """
    failed = []
    _parse(data, msg, path, errors, failed)
    return failed


def _fail(path, message, errors, failed):
    errors.append(f"{path}: {message}" if path else message)
    failed.append(path)


def _parse(data, msg, path, errors, failed):
    try:
        protos.json_format.ParseDict(data, msg)
        return
    except RecursionError:
        msg.Clear()
        _fail(path, "nested too deeply (a YAML alias that refers to itself?)", errors, failed)
        return
    except _PARSE_FAILURES:
        msg.Clear()
    if msg.DESCRIPTOR.full_name == _ANY:
        _parse_any(data, msg, path, errors, failed)
        return
    if not isinstance(data, dict):
        _fail(path, f"expected a mapping, got {_kind(data)}", errors, failed)
        return
    fields = {}
    for field in msg.DESCRIPTOR.fields:
        fields[field.name] = field
        fields[field.json_name] = field
    good, bad = {}, []
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            _fail(join(path, str(key)), "unknown field", errors, failed)
        elif _parses({key: value}, type(msg)):
            good[key] = value
        else:
            bad.append((field, value))
    for oneof in msg.DESCRIPTOR.oneofs:
        names = [f.name for f in oneof.fields if f.name in good or f.json_name in good]
        if len(names) > 1:
            _fail(path, f"only one of {', '.join(names)} may be set", errors, failed)
            for f in oneof.fields:  # keep the first one set, so the rest still translates
                if f.name != names[0]:
                    good.pop(f.name, None)
                    good.pop(f.json_name, None)
    try:
        protos.json_format.ParseDict(good, msg)
    except _PARSE_FAILURES as exc:  # fields fine alone but not together: say so, keep none
        msg.Clear()
        _fail(path, _clean(exc), errors, failed)
        return
    for field, value in bad:
        _parse_field(field, value, msg, join(path, field.name), errors, failed)


def _parse_field(field, value, msg, path, errors, failed):
    """Descend into a field that failed alone, or report it."""
    sub_type = field.message_type
    descend = (field.cpp_type == _MESSAGE and not sub_type.GetOptions().map_entry
               and (sub_type.full_name == _ANY or not sub_type.full_name.startswith("google.")))
    if not descend:
        _fail(path, _describe(field, value, type(msg)), errors, failed)
    elif is_repeated(field):
        if not isinstance(value, list):
            _fail(path, f"expected a list, got {_kind(value)}", errors, failed)
            return
        container = getattr(msg, field.name)
        for i, item in enumerate(value):
            _parse(item, container.add(), f"{path}[{i}]", errors, failed)
    else:
        child = getattr(msg, field.name)
        child.SetInParent()
        _parse(value, child, path, errors, failed)


def _parse_any(data, msg, path, errors, failed):
    """An Any is {"@type": url, ...fields of that type}: check the type, then its fields."""
    if not isinstance(data, dict):
        _fail(path, f"expected a mapping with \"@type\", got {_kind(data)}", errors, failed)
        return
    url = data.get("@type")
    if not isinstance(url, str) or not url:
        _fail(path, "\"@type\" is required", errors, failed)
        return
    name = protos.type_name(url)
    cls = protos.message_class(name) if protos.import_type(name) else None
    if cls is None:
        _fail(path, f"unknown type '{name}'", errors, failed)
        return
    inner = cls()
    _parse({k: v for k, v in data.items() if k != "@type"}, inner, path, errors, failed)
    msg.Pack(inner)


def _parses(data, cls):
    try:
        protos.json_format.ParseDict(data, cls())
        return True
    except _PARSE_FAILURES:
        return False


def _describe(field, value, cls):
    """A message for a leaf field that does not parse, in the operator's terms."""
    if field.cpp_type == _ENUM and not isinstance(value, list):
        names = ", ".join(v.name for v in field.enum_type.values)
        return f"invalid value {value!r} (expected one of {names})"
    type_name = field.message_type.full_name if field.message_type else ""
    if type_name == "google.protobuf.Duration" and not isinstance(value, list):
        return f"expected a duration such as \"5s\" or \"0.25s\", got {value!r}"
    if (field.cpp_type in _INTEGER or type_name in _INTEGER_WRAPPERS) and not isinstance(
            value, int):
        return f"expected an integer, got {value!r}"
    try:
        protos.json_format.ParseDict({field.name: value}, cls())
    except _PARSE_FAILURES as exc:
        return _clean(exc)
    return "invalid value"


def _clean(exc):
    """json_format's message without its 'Failed to parse x field:' chain and 'at ...' tail."""
    text = str(exc).split("\n", 1)[0].strip()
    while text.startswith("Failed to parse ") and " field: " in text:
        text = text.split(" field: ", 1)[1]
    cut = text.rfind(" at ")
    if cut > 0 and "." in text[cut:]:
        text = text[:cut]
    return text.rstrip(". ") or type(exc).__name__


def _kind(value):
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                     type(value).__name__)
