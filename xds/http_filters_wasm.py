"""envoy.extensions.filters.http.wasm.v3.Wasm (a proxy-wasm plugin) -> the worker's config.

    translate_wasm(pb, path, errors, warnings) -> ("envoy.filters.http.wasm", config)

config: {"name", "root_id", "vm_id", "runtime": str, "configuration", "vm_config": bytes,
"code": bytes, "sha256": hex, "environment": {name: value}, "fail_open": bool,
"reload_seconds": float or None}
(worker/proxy/http/wasm.py runs it).

As Envoy 1.40 reads a PluginConfig:
- runtime: envoy.wasm.runtime.{v8,wamr,wasmtime,wavm} all run on wasmtime (Baton has one
  engine; the VM stats carry the name given); envoy.wasm.runtime.null is Istio's built-ins (xds/http_filters_istio.py).
- code: vm_config.code.local as a filename (read now, hashed), inline_bytes or
  inline_string; or `remote` (http_uri, sha256, retry_policy): fetched now, by this process,
  through http_uri.cluster, with Envoy's tries and hash check (worker/wasm/remote.py says
  where and why, and how the xDS agent fetches without waiting on its loop); code that
  could not be fetched makes a plugin that fails in the workers (503, or fail_open), the
  config accepted, as Envoy does; with nack_on_code_cache_miss a module not fetched before
  NACKs ("Unable to create Wasm plugin") and is fetched in the background. (Istio's
  istio-agent downloads a WasmPlugin's module itself and gives the sidecar a local file.)
- configuration / vm_config.configuration: an Any; a google.protobuf.StringValue or
  BytesValue gives its bytes, any other type the Any's value as it came, the serialized
  message, whatever its type (Envoy's anyToBytes in extensions/common/wasm/plugin.cc: a
  type Envoy does not know is not refused); none gives b"".
- environment_variables: host_env_keys from this process's environment (unset ones are
  left out, as Envoy does), key_values as given.
- fail_open, or failure_policy FAIL_OPEN: a failed VM lets requests through; otherwise it
  answers 503, and with FAIL_RELOAD the plugin is started again in a new VM by a request
  that comes reload_config.backoff.base_interval (1 s) or more after the failed VM started
  ("reload_seconds"; worker/proxy/http/wasm.py).
- The module is checked now, in a VM of its own: it compiles, has the ABI marker, and
  proxy_on_vm_start and proxy_on_configure return true. Otherwise the error names the
  filter's path and says "Unable to create Wasm plugin", Envoy's words, and the update is
  NACKed (an ECDS resource too, xds/ecds.py).
"""

from __future__ import annotations

import hashlib
import os

from google.protobuf.message import DecodeError

from . import protos
from .parse import join

NAME = "envoy.filters.http.wasm"
TYPE = "envoy.extensions.filters.http.wasm.v3.Wasm"
RUNTIMES = ("envoy.wasm.runtime.v8", "envoy.wasm.runtime.wamr", "envoy.wasm.runtime.wasmtime",
            "envoy.wasm.runtime.wavm")
NULL_RUNTIME = "envoy.wasm.runtime.null"
_PLUGIN_FIELDS = ("name", "root_id", "vm_config", "configuration", "fail_open",
                  "failure_policy", "reload_config", "allow_on_headers_stop_iteration")
_VM_FIELDS = ("vm_id", "runtime", "code", "configuration", "allow_precompiled",
              "environment_variables", "nack_on_code_cache_miss")
_WRAPPERS = ("google.protobuf.StringValue", "google.protobuf.BytesValue")


def any_bytes(any_pb) -> bytes:
    """A configuration Any -> the bytes the plugin reads (Envoy's anyToBytes)."""
    if not any_pb.type_url:
        return b""
    name = protos.type_name(any_pb.type_url)
    if name in _WRAPPERS:
        message = protos.message_class(name)()
        any_pb.Unpack(message)
        value = message.value
        return value.encode() if isinstance(value, str) else value
    return bytes(any_pb.value)


def _remote(remote_pb, path, errors):
    """code.remote -> worker/wasm/remote.py's Remote (through http_uri.cluster as it is now),
    or None with an error."""
    from ..worker.wasm.remote import Remote, upstream_of
    uri_pb = remote_pb.http_uri
    here = join(path, "http_uri")
    start = len(errors)
    for name in ("uri", "cluster"):
        if not getattr(uri_pb, name):
            errors.append(f"{join(here, name)}: required")
    if not uri_pb.HasField("timeout"):
        errors.append(f"{join(here, 'timeout')}: required")
    sha256 = remote_pb.sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        errors.append(f"{join(path, 'sha256')}: 64 hex digits expected")
    if len(errors) > start:
        return None
    policy = remote_pb.retry_policy
    backoff = policy.retry_back_off
    base = backoff.base_interval.ToNanoseconds() / 1e9 if backoff.HasField("base_interval") \
        else 1.0
    ceiling = backoff.max_interval.ToNanoseconds() / 1e9 if backoff.HasField("max_interval") \
        else 10 * base
    return Remote(uri_pb.uri, sha256, uri_pb.timeout.ToNanoseconds() / 1e9,
                  policy.num_retries.value if policy.HasField("num_retries") else 1,
                  base, max(ceiling, base), upstream_of(uri_pb.cluster))


def _code(code_pb, path, errors) -> bytes | None:
    which = code_pb.WhichOneof("specifier")
    if which != "local":
        errors.append(f"{path}: required")
        return None
    local = code_pb.local
    kind = local.WhichOneof("specifier")
    here = join(join(path, "local"), kind or "")
    if kind == "filename":
        try:
            with open(local.filename, "rb") as f:
                return f.read()
        except OSError as exc:
            errors.append(f"{here}: cannot read {local.filename!r}: {exc.strerror}")
            return None
    if kind == "inline_bytes":
        return local.inline_bytes
    if kind == "inline_string":
        return local.inline_string.encode()
    errors.append(f"{join(path, 'local')}: filename, inline_bytes or inline_string expected")
    return None


def _unsupported(message, allowed, path, errors) -> bool:
    bad = [f.name for f, _ in message.ListFields() if f.name not in allowed]
    for name in bad:
        errors.append(f"{join(path, name)}: not supported")
    return bool(bad)


def _environment(env_pb) -> dict:
    found = {key: os.environ[key] for key in env_pb.host_env_keys if key in os.environ}
    found.update(env_pb.key_values)
    return found


def _identity(plugin) -> bytes:
    """The PluginConfig fields past name, root_id and configuration that Envoy 1.40's
    plugin key still tells apart (plugin.py plugin_key), as deterministic bytes."""
    rest = type(plugin)()
    rest.CopyFrom(plugin)
    for name in ("name", "root_id", "configuration", "vm_config"):
        rest.ClearField(name)
    return rest.SerializeToString(deterministic=True)


def translate_wasm(pb, path, errors, warnings):
    """Wasm (its PluginConfig) -> (NAME, config), or (None, None) with an error."""
    here = join(path, "config")
    plugin = pb.config
    start = len(errors)
    _unsupported(plugin, _PLUGIN_FIELDS, here, errors)
    vm_path = join(here, "vm_config")
    vm = plugin.vm_config
    _unsupported(vm, _VM_FIELDS, vm_path, errors)
    if vm.runtime not in RUNTIMES:
        errors.append(f"{join(vm_path, 'runtime')}: {vm.runtime or 'none'} not supported "
                      f"({', '.join(RUNTIMES)}, or {NULL_RUNTIME} for Istio's built-ins)")
    remote = None
    failed = ""             # remote code that could not be fetched: the plugin fails
    from ..worker.wasm.remote import declare_stats
    declare_stats()         # Envoy lists wasm.remote_load_* once it has a Wasm filter
    if vm.code.WhichOneof("specifier") == "remote":
        remote = _remote(vm.code.remote, join(join(vm_path, "code"), "remote"), errors)
        code = None
        if remote is not None and vm.nack_on_code_cache_miss:
            from ..worker.wasm.remote import fetch_in_background
            code = remote.held()
            if code is None:            # Envoy's NACK, and a fetch for the next time
                fetch_in_background(remote)
                errors.append(f"{path}: Unable to create Wasm plugin {plugin.name}: its remote "
                              f"code is not fetched yet ({remote.uri})")
        elif remote is not None and remote.defer():     # the xDS agent fetches it off its loop
            errors.append(f"{path}: its remote code is being fetched ({remote.uri})")
        elif remote is not None:
            code, why = remote.get()
            if code is None:
                failed = f"remote code from {remote.uri} could not be fetched: {why}"
    else:
        code = _code(vm.code, join(vm_path, "code"), errors)
    policy = plugin.DESCRIPTOR.fields_by_name["failure_policy"].enum_type \
        .values_by_number[plugin.failure_policy].name
    reload_seconds = None
    if policy == "FAIL_RELOAD":
        backoff = plugin.reload_config.backoff
        reload_seconds = backoff.base_interval.ToNanoseconds() / 1e9 \
            if backoff.HasField("base_interval") else 1.0
    if len(errors) > start:
        return None, None
    try:
        configuration = any_bytes(plugin.configuration)
        vm_config = any_bytes(vm.configuration)
    except (protos.ParseError, DecodeError, TypeError, KeyError) as exc:
        errors.append(f"{join(here, 'configuration')}: {exc}")
        return None, None
    config = {"name": plugin.name, "root_id": plugin.root_id, "vm_id": vm.vm_id,
              "runtime": vm.runtime,        # the VM stats' name (plugin.py)
              "configuration": configuration, "vm_config": vm_config, "code": code,
              "sha256": remote.sha256 if remote is not None else hashlib.sha256(code).hexdigest(),
              "failed": failed,
              "environment": _environment(vm.environment_variables),
              "fail_open": policy == "FAIL_OPEN" or (policy == "UNSPECIFIED" and
                                                     plugin.fail_open),
              "reload_seconds": reload_seconds,
              # worker/proxy/http/wasm.py headers_action (a BoolValue: unset is false)
              "allow_on_headers_stop_iteration": plugin.allow_on_headers_stop_iteration.value,
              "identity": _identity(plugin)}        # plugin.py plugin_key
    if failed:              # no code: the plugin fails in the workers (503, or fail_open)
        warnings.append(f"{path}: {failed}")
        return NAME, config
    from ..worker.wasm.plugin import validate       # wasmtime only with a Wasm filter
    from ..worker.wasm.vm import WasmError
    try:
        validate(config)
    except WasmError as exc:
        name = f" {plugin.name}" if plugin.name else ""
        errors.append(f"{path}: Unable to create Wasm plugin{name}: {exc}")
        return None, None
    return NAME, config


def translate_wasm_value(value: dict, path, errors, warnings):
    """The same Wasm given as JSON (a TypedStruct's value)."""
    protos.import_type(TYPE)
    message = protos.message_class(TYPE)()
    protos.import_types_in(value)
    try:
        protos.json_format.ParseDict(value, message)
    except protos.ParseError as exc:
        errors.append(f"{path}: {exc}")
        return None, None
    return translate_wasm(message, path, errors, warnings)
