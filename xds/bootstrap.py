"""Load an Envoy v3 bootstrap file (YAML or JSON) into a snapshot, or say everything wrong.

    load_bootstrap(path) -> snapshot      (shape: snapshot.py)
    raises ConfigError, whose .errors lists every problem found as "path: message"

Steps: read -> YAML/JSON -> Bootstrap proto (parse.py, every bad field reported) ->
translate (translate.py: whitelist + Envoy's checks). Problems in one step do not hide those
in another, with one exception: a field that did not parse is not also reported as missing
or wrong by the translator, since that would be the same mistake twice.

Nothing escapes as a traceback: the CLI and the master print the errors and exit (on reload,
that is the rollback reason), so every failure, even an unexpected one, is a ConfigError.
"""

import json
import re

import yaml

from . import protos
from .parse import parse_dict
from .translate import translate_bootstrap


class ConfigError(Exception):
    """A config that cannot be used; .errors has one "path: message" per problem."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def load_bootstrap(path):
    """Read, parse, check and translate the bootstrap at `path`; return the snapshot."""
    try:
        data, errors = _read(path)
        if data is None:
            raise ConfigError(errors)
        protos.import_types_in(data)
        pb = protos.Bootstrap()
        failed = parse_dict(data, pb, "", errors)
        snap, problems = translate_bootstrap(pb)
        if any(_CLUSTER_NAME_LOST.fullmatch(f) for f in failed):
            # A cluster whose name did not parse may be the one a listener names.
            problems = [e for e in problems if ": unknown cluster '" not in e]
        errors.extend(e for e in problems if not _same_place(e, failed))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug here must still read as a config error
        raise ConfigError([f"{path}: internal error while loading: {exc!r}"]) from exc
    if errors:
        raise ConfigError(sorted(errors, key=_by_path))
    return snap


def read_document(path):
    """The file as plain data (for /config_dump), or raise ConfigError."""
    data, errors = _read(path)
    if data is None:
        raise ConfigError(errors)
    return data


def _read(path):
    """File -> (plain data, errors), or (None, errors) when there is nothing to parse."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None, [f"{path}: no such file"]
    except OSError as exc:
        return None, [f"{path}: cannot read: {exc.strerror or exc}"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"{path}: not UTF-8 text (byte {exc.start})"]
    if not text.strip():
        return None, [f"{path}: empty file"]

    errors = []
    data = _MISSING = object()
    # JSON is YAML, but json gives better messages for JSON and knows no YAML quirks
    # (tabs, "\/" escapes). A .json file must be JSON; other files may be either.
    if path.endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if path.endswith(".json"):
                return None, [f"{path}: not valid JSON: {exc.msg} "
                              f"(line {exc.lineno}, column {exc.colno})"]
        except RecursionError:
            return None, [f"{path}: nested too deeply"]
    if data is _MISSING:
        loader = _Loader(text)
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as exc:
            return None, [f"{path}: not valid YAML: {_yaml_message(exc)}"]
        except RecursionError:
            return None, [f"{path}: nested too deeply"]
        finally:
            loader.dispose()
        errors.extend(f"{path}: {d}" for d in loader.duplicates)
    if data is None:
        return None, [f"{path}: empty file (only comments)"]
    if not isinstance(data, dict):
        return None, [f"{path}: the top level must be a mapping, got {type(data).__name__}"]
    return data, errors


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # C parser when built
    """SafeLoader that notes duplicate keys instead of silently keeping the last one.

    A second `clusters:` key dropping the first list would otherwise load cleanly.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates = []

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                    key_node, yaml.ScalarNode):
                continue  # merge keys (<<) override on purpose
            if key_node.value in seen:
                mark = key_node.start_mark
                self.duplicates.append(f"line {mark.line + 1}: duplicate key '{key_node.value}'")
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _yaml_message(exc):
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem


_CLUSTER_NAME_LOST = re.compile(r"(static_resources(\.clusters(\[\d+\](\.name)?)?)?)?")


def _by_path(error):
    """Sort key: errors grouped by resource, clusters[2] before clusters[10]."""
    where = error.partition(": ")[0]
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", where)]


def _same_place(error, failed_paths):
    """True if a translator error repeats a parse error: it is about a field that failed to
    parse (or lies inside one), or says something is required where a field below failed."""
    where, _, message = error.partition(": ")
    for failed in failed_paths:
        if _within(where, failed) or ("required" in message and _within(failed, where)):
            return True
    return False


def _within(inner, outer):
    return (not outer or inner == outer or inner.startswith(outer + ".")
            or inner.startswith(outer + "["))
