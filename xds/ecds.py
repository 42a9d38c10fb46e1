"""An HTTP filter's config_discovery (ECDS) -> the config Baton runs the filter with.

    default_config_of(pb, path, errors, warnings) -> the default_config Any, or None

Envoy fetches such a filter's config as a TypedExtensionConfig over ECDS and, until one
arrives, uses its default_config (at once with apply_default_config_without_warming, else
once the listener's warming gives up at initial_fetch_timeout); a filter with neither holds
the listener back, then answers every request 500 (flag NFCF). Baton does not subscribe to
ExtensionConfig resources, so:

- with a default_config: the filter runs with it, for good (translated and checked as any
  typed_config, so an unsupported type, e.g. a Wasm module that is not one of Istio's null-VM
  built-ins, is still refused by path). A warning says that updates over ECDS are not
  applied. Difference from Envoy: without apply_default_config_without_warming, Envoy would
  first wait up to initial_fetch_timeout for the resource; Baton serves the default at once.
- without one: refused, saying so (the filter's config could only come over ECDS).

The default_config's type must be one of type_urls (Envoy's check), and config_source must be
the ADS stream, as for every other dynamic resource of Baton's.
"""

from __future__ import annotations

from . import protos
from .config_source import translate_config_source
from .parse import join

FIELDS = ("config_source", "default_config", "apply_default_config_without_warming",
          "type_urls")


def default_config_of(pb, path, errors, warnings=None):
    here = join(path, "config_discovery")
    source = pb.config_discovery
    for field, _ in source.ListFields():
        if field.name not in FIELDS:
            errors.append(f"{join(here, field.name)}: not supported")
    if not source.type_urls:
        errors.append(f"{join(here, 'type_urls')}: must have at least 1 item")
    if not source.HasField("config_source"):
        errors.append(f"{join(here, 'config_source')}: required")
    else:
        translate_config_source(source.config_source, join(here, "config_source"), errors)
    if not source.HasField("default_config"):
        errors.append(f"{here}: the config of filter {pb.name!r} would come only over ECDS "
                      "(an ExtensionConfig resource), which Baton does not subscribe to; a "
                      "default_config is required (Baton runs the filter with it)")
        return None
    default = source.default_config
    wanted = [protos.type_name(url) for url in source.type_urls]
    if wanted and protos.type_name(default.type_url) not in wanted:
        errors.append(f"{join(here, 'default_config')}: filter config has type URL "
                      f"{protos.type_name(default.type_url)} but expect "
                      f"{', '.join(wanted)}")
        return None
    if warnings is not None:
        warnings.append(f"{here}: the default_config runs; updates of filter {pb.name!r} over "
                        "ECDS are not applied (Baton does not subscribe to ExtensionConfig)")
    return default
