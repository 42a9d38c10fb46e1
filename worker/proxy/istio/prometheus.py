"""Labelled stat names (metrics.py: `metric{label="v",...}`) -> Prometheus text.

The admin's /stats/prometheus (supervisor/admin.py) prints Envoy's own stats by tag
extraction and hands the labelled ones here. Each metric gets one `# TYPE` line; the three
istio_* histograms print as Prometheus histograms, their buckets cumulated over `le` (the
counters hold each bucket's own observations, metrics.py).
"""

from __future__ import annotations

from .metrics import BUCKETS, HISTOGRAMS

_HISTOGRAM_PARTS = {f"{metric}{suffix}": metric for metric in HISTOGRAMS
                    for suffix in ("_bucket", "_sum", "_count")}
_LE_ORDER = {f"{bound:.32g}": i for i, bound in enumerate(BUCKETS)}
_LE_ORDER["+Inf"] = len(BUCKETS)


def is_labelled(stat: str) -> bool:
    return stat.endswith("}") and "{" in stat


def _number(value) -> str:
    return f"{value:.17g}" if isinstance(value, float) else str(value)


def render_labelled(counters: dict) -> list[str]:
    """Lines for the labelled counters (every value a counter or a histogram part)."""
    plain: dict[str, list[str]] = {}
    histograms: dict[str, dict[str, dict]] = {}
    for stat, value in counters.items():
        metric, _, labels = stat.partition("{")
        histogram = _HISTOGRAM_PARTS.get(metric)
        if histogram is None:
            plain.setdefault(metric, []).append(f"{stat} {_number(value)}")
            continue
        labels = labels[:-1]
        part = metric[len(histogram):]
        if part == "_bucket":
            labels, _, le = labels.rpartition(',le="')
            le = le[:-1]
            series = histograms.setdefault(histogram, {}).setdefault(labels, {})
            series.setdefault("buckets", {})[le] = value
        else:
            histograms.setdefault(histogram, {}).setdefault(labels, {})[part] = value
    lines = []
    for metric in sorted(plain.keys() | histograms.keys()):
        if metric in plain:
            lines.append(f"# TYPE {metric} counter")
            lines.extend(sorted(plain[metric]))
            continue
        lines.append(f"# TYPE {metric} histogram")
        for labels, series in sorted(histograms[metric].items()):
            running = 0
            buckets = series.get("buckets") or {}
            for le in sorted(_LE_ORDER, key=_LE_ORDER.get):
                running += buckets.get(le, 0)
                lines.append(f'{metric}_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f"{metric}_sum{{{labels}}} {_number(series.get('_sum', 0))}")
            lines.append(f"{metric}_count{{{labels}}} {_number(series.get('_count', 0))}")
    return lines
