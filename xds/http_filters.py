"""An http_connection_manager's HTTP filters and access logs -> plain config for the worker.

    translate_http_filters(filters_pb_list, path, errors, warnings=None)
        -> [{"name": str, "config": dict}] or None on error
    translate_access_logs(access_log_pb_list, path, errors, warnings=None)
        -> [{"path", "format", "json_format", "omit_empty_values"[, "flags"]}]

Filters are identified by the type of their typed_config, as in Envoy (the `name` is free
text): the router, fault and local_ratelimit, or a user filter given as a TypedStruct whose
type_url names an entry point of the `baton.http_filters` group (worker/proxy/http/filter.py).
The "name" in the output is Envoy's canonical filter name for built-in filters and the entry
point's name for a user filter; the worker looks it up in filter.registry, then among the
entry points. Shapes of each "config" are documented on the function that builds it.

Formats (access logs, header values) are compiled here with the worker's own formatter, so a
bad %OPERATOR% is a config error with Envoy's message, not a worker surprise.
"""

from . import protos
from .fields import check_fields
from .parse import join

ROUTER = "envoy.filters.http.router"
FAULT = "envoy.filters.http.fault"
LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"

_ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
_FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
_LOCAL_RATELIMIT_TYPE = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
RBAC = "envoy.filters.http.rbac"
RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
_TYPED_STRUCTS = ("xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct")
_FILE_LOG_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STDOUT_LOG_TYPE = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_STDERR_LOG_TYPE = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"

DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
DEFAULT_RATE_LIMIT_STATUS = 429
MIN_FILL_INTERVAL = 0.05            # Envoy: "fill timer must be >= 50ms"
APPEND_ACTIONS = ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
                  "OVERWRITE_IF_EXISTS")


def _unpack(any_pb, type_name):
    protos.import_type(type_name)
    message = protos.message_class(type_name)()
    any_pb.Unpack(message)
    return message


def _formatter():
    # Imported late: the worker's formatter is plain Python, but xds/ should not load the
    # worker package just to be imported.
    from ..worker.proxy.http import formatter
    return formatter


# --- HTTP filters ----------------------------------------------------------------------------

def translate_http_filters(filters_pb_list, path, errors, warnings=None):
    """HttpFilter list -> [{"name", "config"}], router last; None on error.

    As in Envoy, an empty list means a router alone, the router must be last, and the last
    filter must be the router (the only terminal filter Baton has). A filter given by
    config_discovery (ECDS) is a placeholder entry {"name": "ecds", "ecds": {...}} that the
    xDS agent resolves (xds/ecds.py).
    """
    start = len(errors)
    filters_pb_list = list(filters_pb_list)
    if not filters_pb_list:
        return [{"name": ROUTER, "config": _router_defaults()}]
    result = []
    last = len(filters_pb_list) - 1
    for i, pb in enumerate(filters_pb_list):
        here = f"{path}[{i}]"
        check_fields(pb, here, errors, warnings)
        if not pb.name:
            errors.append(f"{join(here, 'name')}: required")
        if pb.HasField("config_discovery"):
            from .ecds import placeholder
            if i == last:
                errors.append(f"{here}: the last filter must be {ROUTER}, not a filter "
                              "given by config_discovery")
            entry = placeholder(pb, here, errors, warnings)
            if entry is not None:
                if pb.disabled:             # (as below; the name is the entry's own)
                    entry.update(disabled=True, filter_name=pb.name)
                result.append(entry)
            continue
        config_path = join(here, "typed_config")
        if not pb.HasField("typed_config"):
            errors.append(f"{config_path}: required")
            continue
        type_name = protos.type_name(pb.typed_config.type_url)
        is_router = type_name == _ROUTER_TYPE
        if is_router and pb.disabled:
            errors.append(f"{join(here, 'disabled')}: the last (terminal) filter ({ROUTER}) in "
                          "the chain cannot be disabled by default")
        if is_router and i != last:
            errors.append(f"{here}: terminal filter named {pb.name} of type {ROUTER} must be "
                          "the last filter in a http filter chain")
        if i == last and not is_router:
            errors.append(f"{here}: non-terminal filter named {pb.name} of type {type_name} is "
                          "the last filter in a http filter chain (the last filter must be "
                          f"{ROUTER})")
        entry = translate_filter_config(pb.typed_config, pb.name, config_path, errors,
                                        warnings, pb.is_optional)
        if entry is None:
            continue
        if pb.name != entry["name"] and (entry.get("config") or {}).get("filter_name") != pb.name:
            # A route's typed_per_filter_config names the filter by this (Envoy's filter config
            # name), also to turn it on or off (worker/proxy/http/filter.py plan_for_route).
            entry["filter_name"] = pb.name
        if pb.disabled and not is_router:
            # Envoy 1.40 makes a disabled filter only for the routes whose (or whose virtual
            # host's) typed_per_filter_config names it, with the filter's own per-route config
            # or a FilterConfig that is not disabled (arch_overview_http_filters_route_based_
            # filter_chain; measured against Envoy 1.40: tests/unit/test_filter_per_route.py).
            entry["disabled"] = True
        result.append(entry)
    return result if len(errors) == start else None


def translate_filter_config(typed_config, filter_name, path, errors, warnings=None,
                            optional=False):
    """One filter's typed_config (an Any) -> {"name", "config"} for the worker, or None (an
    error, or nothing for the worker to run). `filter_name` is the HCM entry's name (RBAC's
    per-route config is found by it)."""
    from .http_filters_buffer import TYPE as BUFFER_TYPE, translate_buffer
    from .http_filters_istio import TRANSLATORS as ISTIO_TRANSLATORS
    translators = {_ROUTER_TYPE: _router, _FAULT_TYPE: _fault,
                   _LOCAL_RATELIMIT_TYPE: _local_ratelimit, RBAC_TYPE: _rbac,
                   BUFFER_TYPE: translate_buffer, **ISTIO_TRANSLATORS}
    type_name = protos.type_name(typed_config.type_url)
    if type_name in translators:
        name, config = translators[type_name](
            _unpack(typed_config, type_name), path, errors, warnings)
    elif type_name in _TYPED_STRUCTS and typed_struct_type(typed_config) in _PER_ROUTE_TYPES:
        # Fault or local rate limit as Istio's EnvoyFilters give them (a TypedStruct whose
        # value is the message in JSON), checked as the message itself.
        message = typed_struct_message(typed_config, path, errors)
        if message is None:
            return None
        name, config = translators[protos.type_name(message.DESCRIPTOR.full_name)](
            message, path, errors, warnings)
    elif type_name in _TYPED_STRUCTS:
        struct = _unpack(typed_config, type_name)
        istio = _istio_typed_struct(struct)
        if istio is not None:
            value = protos.json_format.MessageToDict(struct.value) \
                if struct.HasField("value") else {}
            name, config = istio(value, join(path, "value"), errors, warnings)
        else:
            name, config = _user_filter(struct, path, errors, _installed_filters(), optional,
                                        warnings)
    elif optional:
        if warnings is not None:
            warnings.append(f"{path}: {type_name} not supported; skipped (is_optional)")
        return None
    else:
        errors.append(f"{path}: {type_name} not supported (supported: "
                      f"{', '.join(translators)}, or a user filter as {_TYPED_STRUCTS[0]})")
        return None
    if name is None:
        return None
    if name in (RBAC, "envoy.filters.http.ext_authz", "envoy.filters.http.buffer", FAULT,
                LOCAL_RATELIMIT):
        # per-route config found by this name
        config["filter_name"] = filter_name
    return {"name": name, "config": config}


def _router_defaults():
    return {"suppress_envoy_headers": False, "dynamic_stats": True}


def _router(pb, path, errors, warnings):
    """Router -> {"suppress_envoy_headers": bool, "dynamic_stats": bool}."""
    check_fields(pb, path, errors, warnings)
    return ROUTER, {"suppress_envoy_headers": pb.suppress_envoy_headers,
                    "dynamic_stats": pb.dynamic_stats.value if pb.HasField("dynamic_stats")
                    else True}


def _fraction(pb, field, path, errors, default_numerator=0):
    """FractionalPercent -> {"numerator", "denominator", "fraction"} (fraction capped at 1).

    Unset is 0% for fault percentages (Envoy's proto default), as the real Envoy shows:
    an abort without a percentage never fires."""
    if pb is None or not pb.HasField(field):
        return {"numerator": default_numerator, "denominator": 100,
                "fraction": min(default_numerator / 100, 1.0)}
    fp = getattr(pb, field)
    denominator_name = type(fp).DenominatorType.Name(fp.denominator)
    denominator = DENOMINATORS.get(denominator_name)
    if denominator is None:   # unreachable for valid enums; keeps a bad value from dividing
        errors.append(f"{join(path, field)}.denominator: unknown {denominator_name}")
        denominator = 100
    return {"numerator": fp.numerator, "denominator": denominator,
            "fraction": min(fp.numerator / denominator, 1.0)}


def _fault(pb, path, errors, warnings):
    """HTTPFault -> {
        "delay": None or {"fixed_delay": seconds or "header_controlled", "percentage": {...}},
        "abort": None or {"http_status": int or "header_controlled", "percentage": {...}},
        "headers": [header matcher], "upstream_cluster": str or None,
        "downstream_nodes": [str], "max_active_faults": int or None,
        "disable_downstream_cluster_stats": bool}
    A percentage is {"numerator", "denominator", "fraction"}; a header-controlled fault's
    percentage header is capped by this numerator (Envoy's rule)."""
    check_fields(pb, path, errors, warnings)
    delay = abort = None
    if pb.HasField("delay"):
        delay_path = join(path, "delay")
        which = pb.delay.WhichOneof("fault_delay_secifier")   # sic, Envoy's spelling
        if which == "fixed_delay":
            seconds = pb.delay.fixed_delay.seconds + pb.delay.fixed_delay.nanos / 1e9
            if seconds <= 0:
                errors.append(f"{join(delay_path, 'fixed_delay')}: must be greater than 0s")
            fixed = seconds
        elif which == "header_delay":
            fixed = "header_controlled"
        else:
            errors.append(f"{delay_path}: one of fixed_delay or header_delay is required")
            fixed = None
        delay = {"fixed_delay": fixed,
                 "percentage": _fraction(pb.delay, "percentage", delay_path, errors)}
    if pb.HasField("abort"):
        abort_path = join(path, "abort")
        which = pb.abort.WhichOneof("error_type")
        if which == "http_status":
            status = pb.abort.http_status
            if not 200 <= status < 600:
                errors.append(f"{join(abort_path, 'http_status')}: must be in [200, 600), "
                              f"got {status}")
        elif which == "header_abort":
            status = "header_controlled"
        elif which == "grpc_status":
            status = None   # answered with HTTP 200 and this grpc-status (Envoy's abortStatus)
        else:
            errors.append(f"{abort_path}: one of http_status, grpc_status or header_abort is "
                          "required")
            status = None
        abort = {"http_status": status,
                 "percentage": _fraction(pb.abort, "percentage", abort_path, errors)}
        if which == "grpc_status":
            abort["grpc_status"] = pb.abort.grpc_status
    headers = [translate_header_matcher(m, f"{join(path, 'headers')}[{i}]", errors)
               for i, m in enumerate(pb.headers)]
    return FAULT, {
        "delay": delay, "abort": abort, "headers": headers,
        "upstream_cluster": pb.upstream_cluster or None,
        "downstream_nodes": list(pb.downstream_nodes),
        "max_active_faults": pb.max_active_faults.value if pb.HasField("max_active_faults")
        else None,
        "disable_downstream_cluster_stats": pb.disable_downstream_cluster_stats}


def translate_fault_per_route(pb, path, errors, warnings=None):
    """An HTTPFault in a route's or virtual host's typed_per_filter_config -> the same dict
    as the filter's (_fault): Envoy's fault filter takes the most specific one instead of its
    own settings (worker/proxy/http/fault.py FaultSettings)."""
    return _fault(pb, path, errors, warnings)[1]


def translate_local_ratelimit_per_route(pb, path, errors, warnings=None):
    """A LocalRateLimit in a route's or virtual host's typed_per_filter_config -> the same
    dict as the filter's (_local_ratelimit); the route gets a token bucket of its own, as
    Envoy's per-route FilterConfig (worker/proxy/http/local_ratelimit.py)."""
    start = len(errors)
    config = _local_ratelimit(pb, path, errors, warnings)[1]
    if not pb.HasField("token_bucket") and len(errors) == start:
        errors.append(f"{join(path, 'token_bucket')}: required (a per-route local rate limit "
                      "is its token bucket)")
    return config


_PER_ROUTE_TYPES = (_FAULT_TYPE, _LOCAL_RATELIMIT_TYPE)


def typed_struct_type(any_pb):
    """The type_url's message name a TypedStruct (an Any) carries."""
    struct = _unpack(any_pb, protos.type_name(any_pb.type_url))
    return protos.type_name(struct.type_url)


def typed_struct_message(any_pb, path, errors):
    """The message a TypedStruct (an Any) carries in JSON, parsed as its type_url's message;
    None (and an error) when the value is not that message."""
    struct = _unpack(any_pb, protos.type_name(any_pb.type_url))
    type_name = protos.type_name(struct.type_url)
    protos.import_type(type_name)
    message = protos.message_class(type_name)()
    value = protos.json_format.MessageToDict(struct.value) if struct.HasField("value") else {}
    try:
        protos.json_format.ParseDict(value, message)
    except protos.ParseError as exc:
        errors.append(f"{join(path, 'value')}: {exc}")
        return None
    return message


def _rbac(pb, path, errors, warnings):
    """RBAC -> xds/rbac.py's config (worker/proxy/http/rbac.py)."""
    from .rbac import translate_http_rbac
    config = translate_http_rbac(pb, path, errors, warnings)
    return (RBAC, config) if config is not None else (None, None)


def translate_header_matcher(pb, path, errors):
    """HeaderMatcher -> {"name", "kind", "value", "ignore_case", "invert",
    "treat_missing_as_empty"}; kind is exact, prefix, suffix, contains, regex, present or
    range (value [start, end)). Matched by worker/proxy/http/fault.py match_headers()."""
    import re

    name = pb.name.lower()
    if not name:
        errors.append(f"{join(path, 'name')}: required")
    which = pb.WhichOneof("header_match_specifier")
    kind, value, ignore_case = None, None, False
    if which in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
        kind, value = which[:-len("_match")], getattr(pb, which)
    elif which == "safe_regex_match":
        kind, value = "regex", pb.safe_regex_match.regex
    elif which == "present_match":
        kind, value = "present", pb.present_match
    elif which == "range_match":
        kind, value = "range", [pb.range_match.start, pb.range_match.end]
    elif which == "string_match":
        sm = pb.string_match
        inner = sm.WhichOneof("match_pattern")
        ignore_case = sm.ignore_case
        if inner in ("exact", "prefix", "suffix", "contains"):
            kind, value = inner, getattr(sm, inner)
        elif inner == "safe_regex":
            kind, value = "regex", sm.safe_regex.regex
        else:
            errors.append(f"{join(path, 'string_match')}: {inner or 'a pattern'} not supported "
                          "(exact, prefix, suffix, contains or safe_regex)")
    else:
        # Envoy: no specifier means "present".
        kind, value = "present", True
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            errors.append(f"{path}: invalid regex {value!r}: {exc}")
    if kind in ("prefix", "suffix", "contains") and not value and which != "string_match":
        errors.append(f"{join(path, which)}: must not be empty")
    return {"name": name, "kind": kind, "value": value, "ignore_case": ignore_case,
            "invert": pb.invert_match, "treat_missing_as_empty": pb.treat_missing_header_as_empty}


def _local_ratelimit(pb, path, errors, warnings):
    """LocalRateLimit -> {
        "stat_prefix", "status": int, "max_tokens": int, "tokens_per_fill": int,
        "fill_interval": seconds, "filter_enabled": {percentage}, "filter_enforced": {...},
        "response_headers_to_add": [header option],
        "request_headers_to_add_when_not_enforced": [header option],
        "x_ratelimit_headers": bool}
    filter_enabled / filter_enforced unset are 0% (Envoy: off unless asked for)."""
    check_fields(pb, path, errors, warnings)
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: required")
    status = pb.status.code if pb.HasField("status") else DEFAULT_RATE_LIMIT_STATUS
    if status < 400:        # Envoy answers 429 for a status that is not an error
        status = DEFAULT_RATE_LIMIT_STATUS
    bucket_path = join(path, "token_bucket")
    max_tokens, per_fill, interval = 1, 1, 1.0
    if not pb.HasField("token_bucket"):
        # Istio's EnvoyFilter shape: the filter with a stat_prefix alone, the buckets on the
        # routes (typed_per_filter_config); never enabled, it needs no bucket of its own.
        if pb.filter_enabled.default_value.numerator > 0:
            errors.append(f"{bucket_path}: required (Baton's local rate limit is its token "
                          "bucket)")
    else:
        bucket = pb.token_bucket
        max_tokens = bucket.max_tokens
        if max_tokens < 1:
            errors.append(f"{join(bucket_path, 'max_tokens')}: must be at least 1")
        if bucket.HasField("tokens_per_fill"):
            per_fill = bucket.tokens_per_fill.value
            if per_fill < 1:
                errors.append(f"{join(bucket_path, 'tokens_per_fill')}: must be at least 1")
        if not bucket.HasField("fill_interval"):
            errors.append(f"{join(bucket_path, 'fill_interval')}: required")
        else:
            interval = bucket.fill_interval.seconds + bucket.fill_interval.nanos / 1e9
            if interval < MIN_FILL_INTERVAL:
                errors.append(f"{join(bucket_path, 'fill_interval')}: local rate limit token "
                              "bucket fill timer must be >= 50ms")

    def runtime_percent(field):
        if not pb.HasField(field):
            return _fraction(None, "", path, errors)
        return _fraction(getattr(pb, field), "default_value", join(path, field), errors)

    x_headers = pb.enable_x_ratelimit_headers != 0     # OFF = 0, DRAFT_VERSION_03 = 1
    return LOCAL_RATELIMIT, {
        "stat_prefix": pb.stat_prefix, "status": status, "max_tokens": max_tokens,
        "tokens_per_fill": per_fill, "fill_interval": interval,
        "filter_enabled": runtime_percent("filter_enabled"),
        "filter_enforced": runtime_percent("filter_enforced"),
        "response_headers_to_add": translate_header_options(
            pb.response_headers_to_add, join(path, "response_headers_to_add"), errors),
        "request_headers_to_add_when_not_enforced": translate_header_options(
            pb.request_headers_to_add_when_not_enforced,
            join(path, "request_headers_to_add_when_not_enforced"), errors),
        "x_ratelimit_headers": x_headers}


def translate_header_options(options, path, errors):
    """HeaderValueOption list -> [{"name", "value" (a %-template), "append_action",
    "keep_empty_value"}]. The value is checked with the header formatter."""
    formatter = _formatter()
    result = []
    for i, option in enumerate(options):
        here = f"{path}[{i}]"
        for field, _ in option.ListFields():
            if field.name not in ("header", "append", "append_action", "keep_empty_value"):
                errors.append(f"{join(here, field.name)}: not supported")
        header = option.header
        for field, _ in header.ListFields():
            if field.name not in ("key", "value", "raw_value"):
                errors.append(f"{join(here, 'header.' + field.name)}: not supported")
        if not header.key:
            errors.append(f"{join(here, 'header.key')}: required")
        value = header.value if header.value else header.raw_value.decode("latin-1")
        try:
            formatter.compile_header_value(value)
        except formatter.FormatError as exc:
            errors.append(f"{join(here, 'header.value')}: {exc}")
        action = type(option).HeaderAppendAction.Name(option.append_action)
        if option.HasField("append"):
            if option.append_action != 0:
                errors.append(f"{here}: Both append and append_action are set and it's not "
                              "allowed")
            action = ("APPEND_IF_EXISTS_OR_ADD" if option.append.value
                      else "OVERWRITE_IF_EXISTS_OR_ADD")
        result.append({"name": header.key.lower(), "value": value, "append_action": action,
                       "keep_empty_value": option.keep_empty_value})
    return result


def _istio_typed_struct(struct):
    from .http_filters_istio import TYPED_STRUCT_TRANSLATORS
    return TYPED_STRUCT_TRANSLATORS.get(protos.type_name(struct.type_url))


def _installed_filters():
    from ..worker.proxy.http.filter import load_entry_points
    return load_entry_points()


def _user_filter(pb, path, errors, installed, optional, warnings):
    """TypedStruct -> (entry point name, its value as a dict); the entry point is loaded
    here so that an import error is a config error."""
    if not pb.type_url:
        errors.append(f"{join(path, 'type_url')}: required (names the filter: an entry point "
                      "of group baton.http_filters)")
        return None, None
    name = pb.type_url.rstrip("/").rsplit("/", 1)[-1]
    entry_point = installed.get(name)
    if entry_point is None:
        known = ", ".join(sorted(installed)) or "none installed"
        if optional:
            if warnings is not None:
                warnings.append(f"{join(path, 'type_url')}: no HTTP filter '{name}'; skipped "
                                "(is_optional)")
            return None, None
        errors.append(f"{join(path, 'type_url')}: no HTTP filter '{name}' in entry point group "
                      f"baton.http_filters (installed: {known})")
        return None, None
    try:
        cls = entry_point.load()
    except Exception as exc:  # noqa: BLE001 - any failure of user code is a config error
        errors.append(f"{join(path, 'type_url')}: HTTP filter '{name}' failed to load: "
                      f"{type(exc).__name__}: {exc}")
        return None, None
    from ..worker.proxy.http.filter import FilterFactory
    if not (isinstance(cls, type) and issubclass(cls, FilterFactory)):
        errors.append(f"{join(path, 'type_url')}: entry point '{name}' is not a FilterFactory "
                      f"subclass ({entry_point.value})")
        return None, None
    config = protos.json_format.MessageToDict(pb.value) if pb.HasField("value") else {}
    return name, config


# --- access logs -----------------------------------------------------------------------------

def translate_access_logs(access_log_pb_list, path, errors, warnings=None, operators=None):
    """AccessLog list -> [{"path", "format": str or None (Envoy's default),
    "json_format": dict or None, "omit_empty_values": bool, and "flags": [flag] when a
    response_flag_filter says which lines are written}]. Entries with errors are left
    out (the caller sees the errors). `operators`: the formatter's table the formats are
    checked against (None: HTTP's; generic_proxy's adds its own, proxy/rpc/access_log.py)."""
    result = []
    for i, pb in enumerate(access_log_pb_list):
        here = f"{path}[{i}]"
        start = len(errors)
        check_fields(pb, here, errors, warnings)
        flags = _log_filter(pb, join(here, "filter"), errors) if pb.HasField("filter") else None
        config_path = join(here, "typed_config")
        if not pb.HasField("typed_config"):
            errors.append(f"{config_path}: required")
            continue
        type_name = protos.type_name(pb.typed_config.type_url)
        if type_name == _FILE_LOG_TYPE:
            log = _file_access_log(_unpack(pb.typed_config, type_name), config_path, errors,
                                   warnings, operators)
        elif type_name in (_STDOUT_LOG_TYPE, _STDERR_LOG_TYPE):
            stream = _unpack(pb.typed_config, type_name)
            check_fields(stream, config_path, errors, warnings)
            log = {"path": "/dev/stdout" if type_name == _STDOUT_LOG_TYPE else "/dev/stderr",
                   "format": None, "json_format": None, "omit_empty_values": False}
            if stream.HasField("log_format"):
                log.update(_substitution_format(stream.log_format,
                                                join(config_path, "log_format"), errors,
                                                operators))
        else:
            errors.append(f"{config_path}: {type_name} not supported (supported: "
                          f"{_FILE_LOG_TYPE}, {_STDOUT_LOG_TYPE}, {_STDERR_LOG_TYPE})")
            continue
        if len(errors) == start:
            if flags is not None:
                log["flags"] = flags
            result.append(log)
    return result


# Envoy's response flags by their long names (ResponseFlagFilter.flags takes the short ones).
RESPONSE_FLAGS = ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL",
                  "UAEX", "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF",
                  "DT", "UPE", "NC", "OM", "DF", "DO", "DR")


def _log_filter(pb, path, errors):
    """AccessLogFilter -> the response flags a line needs (any of them; [] = any flag at
    all), for the one filter Istio sends: response_flag_filter (its listeners log only the
    connections no filter chain took, flag NR)."""
    which = pb.filter.WhichOneof("filter_specifier")
    if which != "response_flag_filter":
        errors.append(f"{join(path, which or 'filter_specifier')}: not supported "
                      "(response_flag_filter only)")
        return None
    flags = list(pb.filter.response_flag_filter.flags)
    for j, flag in enumerate(flags):
        if flag not in RESPONSE_FLAGS:
            errors.append(f"{path}.response_flag_filter.flags[{j}]: {flag!r} is not a response "
                          "flag")
    return flags


def _file_access_log(pb, path, errors, warnings, operators=None):
    check_fields(pb, path, errors, warnings)
    if not pb.path:
        errors.append(f"{join(path, 'path')}: required")
    log = {"path": pb.path, "format": None, "json_format": None, "omit_empty_values": False}
    which = pb.WhichOneof("access_log_format")
    if which == "format":
        log["format"] = _check_text(pb.format, join(path, "format"), errors, operators)
    elif which in ("json_format", "typed_json_format"):
        log["json_format"] = _check_json(getattr(pb, which), join(path, which), errors,
                                         operators)
    elif which == "log_format":
        log.update(_substitution_format(pb.log_format, join(path, "log_format"), errors,
                                        operators))
    return log


def _substitution_format(pb, path, errors, operators=None):
    """SubstitutionFormatString -> {"format", "json_format", "omit_empty_values"}."""
    out = {"format": None, "json_format": None, "omit_empty_values": pb.omit_empty_values}
    which = pb.WhichOneof("format")
    if which == "text_format":
        out["format"] = _check_text(pb.text_format, join(path, "text_format"), errors, operators)
    elif which == "text_format_source":
        source = pb.text_format_source
        kind = source.WhichOneof("specifier")
        source_path = join(path, "text_format_source")
        if kind == "inline_string":
            out["format"] = _check_text(source.inline_string, source_path, errors, operators)
        elif kind == "inline_bytes":
            out["format"] = _check_text(source.inline_bytes.decode("utf-8", "replace"),
                                        source_path, errors, operators)
        else:
            errors.append(f"{source_path}: {kind or 'a source'} not supported "
                          "(inline_string or inline_bytes)")
    elif which == "json_format":
        out["json_format"] = _check_json(pb.json_format, join(path, "json_format"), errors,
                                         operators)
    else:
        errors.append(f"{path}: one of text_format, text_format_source or json_format is "
                      "required")
    return out


def _check_text(fmt, path, errors, operators=None):
    formatter = _formatter()
    try:
        formatter.compile_format(fmt, operators=operators)
    except formatter.FormatError as exc:
        errors.append(f"{path}: {exc}")
    return fmt


def _check_json(struct_pb, path, errors, operators=None):
    formatter = _formatter()
    spec = protos.json_format.MessageToDict(struct_pb)
    try:
        formatter.compile_json_format(spec, operators=operators)
    except formatter.FormatError as exc:
        errors.append(f"{path}: {exc}")
    return spec
