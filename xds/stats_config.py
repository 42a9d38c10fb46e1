"""The bootstrap's `stats_config`: how stats are named for Prometheus (`stats_tags`,
`use_all_default_tags`) and which stats exist at all (`stats_matcher`), as Envoy reads them.

    snap["stats_config"] = {
        "stats_tags": [{"tag_name": "cluster_name", "regex": "^cluster\\.((.+?)\\.)"},
                       {"tag_name": "mesh", "fixed_value": "m1"}],
        "use_all_default_tags": False,
        "matcher": None or {"mode": "reject_all" | "inclusion" | "exclusion",
                            "patterns": [StringMatcher spec, ...]}}

The admin applies them (supervisor/stat_tags.py, supervisor/stats_matcher.py). Envoy never
creates a stat its matcher rejects; Baton's workers still count it, and /stats and
/stats/prometheus leave it out, which is what an operator sees of it.
"""

from __future__ import annotations

from .fields import SKIP, WALK
from .parse import join

ALLOWED_STATS = {
    "envoy.config.bootstrap.v3.Bootstrap": {"stats_config": SKIP},
    "envoy.config.metrics.v3.StatsConfig": {
        "stats_tags": WALK, "use_all_default_tags": WALK, "stats_matcher": WALK},
    "envoy.config.metrics.v3.TagSpecifier": {
        "tag_name": WALK, "regex": WALK, "fixed_value": WALK},
    "envoy.config.metrics.v3.StatsMatcher": {
        "reject_all": WALK, "exclusion_list": WALK, "inclusion_list": WALK},
    "envoy.type.matcher.v3.ListStringMatcher": {"patterns": WALK},
}


class _Errors:
    """The context xds/http.py's string matcher translator reports to."""

    def __init__(self, errors: list):
        self.errors = errors


def translate_stats_config(pb, path: str, errors: list, warnings: list) -> dict:
    from ..supervisor.stat_tags import check_stats_config
    from .fields import check_fields
    from .http import _string_matcher
    check_fields(pb, path, errors, warnings)
    tags = []
    for i, tag in enumerate(pb.stats_tags):
        spec = {"tag_name": tag.tag_name}
        if tag.WhichOneof("tag_value") == "regex":
            spec["regex"] = tag.regex
        elif tag.WhichOneof("tag_value") == "fixed_value":
            spec["fixed_value"] = tag.fixed_value
        tags.append((join(path, f"stats_tags[{i}]"), spec))
    errors.extend(check_stats_config(tags))
    use_all = pb.use_all_default_tags.value if pb.HasField("use_all_default_tags") else True
    matcher = None
    which = pb.stats_matcher.WhichOneof("stats_matcher") if pb.HasField("stats_matcher") else None
    if which == "reject_all":
        matcher = {"mode": "reject_all" if pb.stats_matcher.reject_all else "accept_all",
                   "patterns": []}
    elif which is not None:
        listed = getattr(pb.stats_matcher, which)
        where = join(path, f"stats_matcher.{which}.patterns")
        patterns = [_string_matcher(p, f"{where}[{i}]", _Errors(errors))
                    for i, p in enumerate(listed.patterns)]
        matcher = {"mode": "inclusion" if which == "inclusion_list" else "exclusion",
                   "patterns": [p for p in patterns if p is not None]}
    return {"stats_tags": [spec for _, spec in tags], "use_all_default_tags": use_all,
            "matcher": matcher}
