"""Envoy's tag extraction: a stat's name -> the tag-extracted name and its tags, which is what
/stats/prometheus renders as a metric name and its labels.

    producer = TagProducer.from_config(snapshot.get("stats_config"))
    producer.extract("cluster.outbound|80||app.default.svc.cluster.local.upstream_rq_2xx")
    -> ("cluster.default.svc.cluster.local.upstream_rq_xx",
        [("envoy.response_code_class", "2"), ("envoy.cluster_name", "outbound|80||app")])

Envoy's semantics (source/common/stats/tag_extractor_impl.cc, tag_producer_impl.cc and the
defaults in source/common/config/well_known_names.cc, Envoy 1.40), because a dashboard built
on Envoy's metric names must read Baton's the same way:
- Every extractor looks at the whole original name; what each one matched is removed at the
  end (overlaps merged). A regex extractor removes its first group and takes its second as
  the value (the first when there is no second); a token extractor ("cluster.$.**": `*` one
  token, `**` one or more, `$` the value) removes the value's token and one dot beside it.
- Order, which is the labels' order: the extractors without a literal first token (fixed-value
  tags among them), then those whose first token is the name's, each group in the order they
  were added: the bootstrap's `stats_config.stats_tags`, then the defaults (all of them
  unless `use_all_default_tags: false`; a default whose tag name a custom tag took is left out;
  a custom tag that names a default tag without a regex gets the default's).
- The defaults cut a cluster's name at its first dot (`cluster.$.**`): a name with dots keeps
  the rest in the metric name, as in Envoy. Istio's bootstrap replaces that tag for this reason.

The regexes in a bootstrap are ECMAScript regexes (std::regex in Envoy); Python's `re` reads
them except for POSIX classes inside brackets, which are rewritten ([[:digit:]] -> [0-9]).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Stand-ins the default regexes are written with.
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
_CIPHER = r"[\w-]+"
_TLS_VERSION = r"TLSv\d\.\d"
_VALUE = r"[^.]+"
_ROUTE_CONFIG_NAME = r"[\w\-.]+"
_LISTENER_OR_CLUSTER = r"(?:listener|cluster)\..*?"

# (tag name, regex, substring that must occur, value that does not count) or (tag name, tokens).
_DEFAULTS = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    ("envoy.dynamo_partition_id",
     rf"^http\.{_VALUE}\.dynamodb\.table\.{_VALUE}\.capacity\.{_VALUE}(\.__partition_id=(\w{{7}}))$",
     ".dynamodb.table.", ""),
    ("envoy.dynamo_operation",
     rf"^http\.{_VALUE}\.dynamodb.(?:operation|table\.{_VALUE}\.capacity)(\.({_VALUE}))(?:\.|$)",
     ".dynamodb.", ""),
    ("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    ("envoy.dynamo_table", rf"^http\.{_VALUE}\.dynamodb.(?:table|error)\.(({_VALUE})\.)",
     ".dynamodb.", ""),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.ssl_cipher", rf"^listener\..*?\.ssl\.ciphers(\.({_CIPHER}))$", ".ssl.ciphers.", ""),
    ("envoy.ssl_curve", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.curves(\.({_CIPHER}))$", ".ssl.curves.", ""),
    ("envoy.ssl_sigalg", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.sigalgs(\.({_CIPHER}))$", ".ssl.sigalgs.", ""),
    ("envoy.ssl_version", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.versions(\.({_TLS_VERSION}))$",
     ".ssl.versions.", ""),
    ("envoy.ssl_cipher_suite", rf"^cluster\.{_VALUE}\.ssl\.ciphers(\.({_CIPHER}))$", ".ssl.ciphers.", ""),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.http_conn_manager_prefix", rf"^listener\..*?\.http\.(({_VALUE})\.)", ".http.", ""),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.worker_id",
     rf"^(?:listener\.(?:{_ADDRESS}|{_VALUE})\.|server\.|listener_manager\.)worker_((\d+)\.)", "", ""),
    ("envoy.listener_address", rf"^listener\.(({_ADDRESS}|{_VALUE})\.)", "", "admin"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.rds_route_config", rf"^http\.{_VALUE}\.rds\.(({_ROUTE_CONFIG_NAME})\.)\w+?$", ".rds.", ""),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    ("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    ("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
    ("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
)

_POSIX_CLASSES = {"digit": "0-9", "alpha": "a-zA-Z", "alnum": "a-zA-Z0-9", "upper": "A-Z",
                  "lower": "a-z", "xdigit": "0-9a-fA-F", "space": r"\s", "word": r"\w",
                  "punct": r"!-/:-@\[-`{-~"}


class StatsTagError(ValueError):
    """A `stats_tags` entry that cannot be used; the message says why."""


def ecmascript_regex(pattern: str) -> re.Pattern:
    """A bootstrap's tag regex (ECMAScript, as std::regex reads it) compiled for Python."""
    def posix(match: re.Match) -> str:
        try:
            return _POSIX_CLASSES[match.group(1)]
        except KeyError:
            raise StatsTagError(f"POSIX class [:{match.group(1)}:] is not supported") from None
    try:
        return re.compile(re.sub(r"\[:(\w+):\]", posix, pattern))
    except re.error as exc:
        raise StatsTagError(f"invalid regex: {exc}") from None


def _literal_prefix(regex: str) -> str:
    """The first token a regex insists on (`^cluster\\.` or `^http(?=\\.)` -> "cluster", "http"),
    or "" when it insists on none: Envoy runs such an extractor only for names of that token."""
    match = re.match(r"\^(\w+)(?:\\\.|\(\?=\\\.\))", regex)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class _RegexExtractor:
    name: str
    regex: re.Pattern
    substring: str = ""
    not_value: str = ""
    keep_empty_value: bool = False      # std::regex (a bootstrap's): an empty group 2 is a value

    @property
    def prefix(self) -> str:
        return _literal_prefix(self.regex.pattern)

    def extract(self, stat: str, tokens: list) -> tuple[str, int, int] | None:
        if self.substring and self.substring not in stat:
            return None
        match = self.regex.search(stat)
        if match is None or match.re.groups < 1 or match.group(1) is None:
            return None
        if not self.keep_empty_value and not match.group(1):
            return None
        value = match.group(2) if match.re.groups >= 2 else None
        if value is None or (not value and not self.keep_empty_value):
            value = match.group(1)
        if self.not_value and value == self.not_value:
            return None
        return value, match.start(1), match.end(1)


@dataclass(frozen=True)
class _TokenExtractor:
    name: str
    pattern: tuple

    @property
    def prefix(self) -> str:
        first = self.pattern[0]
        return "" if first in ("$", "*", "**") else first

    def extract(self, stat: str, tokens: list) -> tuple[str, int, int] | None:
        found = self._search(tokens, 0, 0, 0)
        if not found:
            return None
        index, start = found
        value = tokens[index]
        end = start + len(value)
        if index < len(tokens) - 1:
            end += 1                    # the dot after it
        elif start > 0:
            start -= 1                  # the last token: the dot before it
        return value, start, end

    def _search(self, tokens: list, i: int, p: int, char: int, found=()):
        """Whether the pattern from token p matches the name from token i: False, or where its
        `$` token is, (token index, first character), () if that was before token p."""
        pattern = self.pattern
        while i < len(tokens) and p < len(pattern):
            expected = pattern[p]
            if expected == "$":
                found = (i, char)
            elif expected == "**":
                if p == len(pattern) - 1:
                    return found
                for j in range(i, len(tokens)):
                    inner = self._search(tokens, j, p + 1, char, found)
                    if inner is not False:
                        return inner
                    char += len(tokens[j]) + 1
                return False
            elif expected != "*" and expected != tokens[i]:
                return False
            char += len(tokens[i]) + 1
            i += 1
            p += 1
        return found if p == len(pattern) and i == len(tokens) else False


@dataclass(frozen=True)
class _FixedTag:
    name: str
    value: str
    prefix = ""

    def extract(self, stat: str, tokens: list) -> tuple[str, int, int]:
        return self.value, 0, 0


def _default(name: str, spec: tuple):
    if len(spec) == 1:
        return _TokenExtractor(name, tuple(spec[0].split(".")))
    regex, substring, not_value = spec
    return _RegexExtractor(name, re.compile(regex), substring, not_value)


class TagProducer:
    """Stat name -> (tag-extracted name, [(tag name, value), ...]); one per configuration."""

    def __init__(self, extractors: list):
        self.unprefixed = [e for e in extractors if not e.prefix]
        self.by_prefix: dict[str, list] = {}
        for extractor in extractors:
            if extractor.prefix:
                self.by_prefix.setdefault(extractor.prefix, []).append(extractor)
        self._memo: dict[str, tuple] = {}

    @classmethod
    def from_config(cls, config: dict | None) -> "TagProducer":
        """`config`: the snapshot's stats_config ({"stats_tags": [{"tag_name", "regex" or
        "fixed_value"}], "use_all_default_tags": bool}), already checked by the translator."""
        config = config or {}
        extractors, taken = [], set()
        defaults: dict[str, list] = {}
        for name, *spec in _DEFAULTS:
            defaults.setdefault(name, []).append(_default(name, tuple(spec)))
        for tag in config.get("stats_tags", ()):
            name = tag["tag_name"]
            taken.add(name)
            if "fixed_value" in tag:
                extractors.append(_FixedTag(name, tag["fixed_value"]))
            elif tag.get("regex"):
                extractors.append(_RegexExtractor(name, ecmascript_regex(tag["regex"]),
                                                  keep_empty_value=True))
            else:
                extractors.extend(defaults.get(name, ()))
        if config.get("use_all_default_tags", True):
            for name, *spec in _DEFAULTS:
                if name not in taken:
                    extractors.append(_default(name, tuple(spec)))
        return cls(extractors)

    def extract(self, stat: str) -> tuple[str, list]:
        known = self._memo.get(stat)
        if known is not None:
            return known
        tokens = stat.split(".")
        candidates = self.unprefixed + self.by_prefix.get(tokens[0], []) if len(tokens) > 1 \
            else self.unprefixed
        tags, cuts = [], []
        for extractor in candidates:
            found = extractor.extract(stat, tokens)
            if found is not None:
                value, start, end = found
                tags.append((extractor.name, value))
                if end > start:
                    cuts.append((start, end))
        result = (_without(stat, cuts), tags)
        if len(self._memo) < 100_000:
            self._memo[stat] = result
        return result


def _without(text: str, cuts: list) -> str:
    """`text` with every [start, end) of `cuts` removed (overlapping cuts merged)."""
    if not cuts:
        return text
    out, position = [], 0
    for start, end in sorted(cuts):
        if start > position:
            out.append(text[position:start])
        position = max(position, end)
    out.append(text[position:])
    return "".join(out)


def check_stats_config(stats_tags: list) -> list[str]:
    """Errors for `stats_tags` ([(path, tag dict)]): bad regexes, a tag name with neither a
    regex nor a default to take it from, and both a regex and a fixed value."""
    errors, names = [], {name for name, *_ in _DEFAULTS}
    for path, tag in stats_tags:
        if not tag.get("tag_name"):
            errors.append(f"{path}.tag_name: required")
        elif "fixed_value" in tag and tag.get("regex"):
            errors.append(f"{path}: regex and fixed_value are exclusive")
        elif tag.get("regex"):
            try:
                ecmascript_regex(tag["regex"])
            except StatsTagError as exc:
                errors.append(f"{path}.regex: {exc}")
        elif "fixed_value" not in tag and tag["tag_name"] not in names:
            errors.append(f"{path}: no regex, and '{tag['tag_name']}' is not one of Envoy's "
                          f"default tag names")
    return errors
