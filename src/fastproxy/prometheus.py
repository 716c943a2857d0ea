"""Envoy's ``/stats/prometheus`` page: fastproxy's stats in the Prometheus text format
(version 0.0.4), named and labelled as Envoy 1.40 names and labels the same stats.

Envoy turns a dotted stat name into a metric name and labels with its default tag
extractors: each one recognises one variable part of the name (a cluster name, a stat
prefix, a listener address, a response code...), moves it into a label and removes it
from the name. What is left becomes the metric name: ``envoy_`` plus the name with every
character outside ``[a-zA-Z0-9_]`` turned into ``_``. So

    cluster.backend.upstream_rq_2xx
      -> envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="backend"}
    listener.127.0.0.1_10000.worker_0.downstream_cx_total
      -> envoy_listener_worker_downstream_cx_total{envoy_worker_id="0",envoy_listener_address="127.0.0.1_10000"}

Only the extractors that match names fastproxy emits are here (:data:`TAG_RULES`); they
run in Envoy's order, which is also the order of the labels in the output. As in Envoy, a
name part is a run of characters without a dot: a cluster called ``a.b`` gets the label
``a`` and the metric name keeps ``b``.

The page lists counters, then gauges, then histograms; within each, metrics sorted by name,
one ``# TYPE`` line per metric. Histograms are Envoy's cumulative ``_bucket`` series at
Envoy's default bucket bounds (milliseconds), with ``_sum`` and ``_count``. fastproxy's
histograms keep integer milliseconds in log-linear buckets (core/stats.pxi); a bound that
falls inside one of those buckets gets its share by linear interpolation, so the counts
are as exact as the buckets allow and never decrease from one bound to the next.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

# An IPv4 or bracketed IPv6 address with its port, as Envoy writes a listener address in a
# stat name ("127.0.0.1_10000", "[__1]_10000").
_ADDRESS = r"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}_\d+|\[[_a-fA-F0-9:]+\]_\d+)"
_PART = r"[^.]+"

# (label, pattern). In each pattern group 1 is the text cut out of the name and group 2
# the label's value. Order matters: it is the order Envoy applies them in, and the order
# of the labels on the page.
TAG_RULES: Tuple[Tuple[str, "re.Pattern[str]"], ...] = tuple((label, re.compile(rx)) for label, rx in (
    # upstream_rq_503, external.upstream_rq_200
    ("envoy_response_code", r"^cluster\.[^.]+\.(?:external\.)?upstream_rq(_(\d{3}))$"),
    # downstream_rq_2xx / upstream_rq_2xx keep "xx"; only the digit moves
    ("envoy_response_code_class", r"(?:^|\.)(?:up|down)stream_rq_((\d))xx$"),
    # listener.<address>.ssl.ciphers.<cipher>, <listener or cluster>.ssl.{curves,sigalgs,versions}.<x>,
    # cluster.<name>.ssl.ciphers.<cipher> (the TLS stat block's per-value counters)
    ("envoy_ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.([^.]+))$"),
    ("envoy_ssl_curve", r"^(?:listener|cluster)\..*?\.ssl\.curves(\.([^.]+))$"),
    ("envoy_ssl_sigalg", r"^(?:listener|cluster)\..*?\.ssl\.sigalgs(\.([^.]+))$"),
    ("envoy_ssl_version", r"^(?:listener|cluster)\..*?\.ssl\.versions(\.(TLSv\d(?:\.\d)?))$"),
    ("envoy_ssl_cipher_suite", r"^cluster\.[^.]+\.ssl\.ciphers(\.([^.]+))$"),
    ("envoy_worker_id", rf"^listener\.(?:{_ADDRESS}\.)?worker_((\d+)\.)"),
    ("envoy_http_conn_manager_prefix", rf"^(?:listener\.{_ADDRESS}\.)?http\.(({_PART})\.)"),
    ("envoy_cluster_name", rf"^cluster\.(({_PART})\.)"),
    ("envoy_listener_address", rf"^listener\.(({_ADDRESS})\.)"),
    ("envoy_tcp_prefix", rf"^tcp\.(({_PART})\.)"),
    ("envoy_local_http_ratelimit_prefix", rf"^http_local_rate_limit\.(({_PART})\.)"),
))

# Envoy's default histogram bucket bounds (milliseconds for the *_time histograms).
BUCKET_BOUNDS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                 300000, 600000, 1800000, 3600000)

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")

Labels = Tuple[Tuple[str, str], ...]


def tag(stat_name: str) -> Tuple[str, Labels]:
    """A dotted Envoy stat name -> (Prometheus metric name, labels in order)."""
    name = stat_name
    labels: List[Tuple[str, str]] = []
    for label, rx in TAG_RULES:
        m = rx.search(name)
        if m is None:
            continue
        labels.append((label, m.group(2)))
        name = name[:m.start(1)] + name[m.end(1):]
    return "envoy_" + _INVALID_NAME_CHARS.sub("_", name), tuple(labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Iterable[Tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value) -> str:
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else f"{value:.17g}"
    return str(value)


def cumulative_buckets(histogram, bounds: Iterable[float] = BUCKET_BOUNDS) -> List[int]:
    """How many recorded values are <= each bound, for a fastproxy.histogram.Histogram
    (integer values in [low, high) buckets): a bucket wholly at or below the bound counts
    in full, one that straddles it in proportion to the integers it holds up to the bound."""
    from . import _core
    spans = []
    for i, n in enumerate(histogram.buckets):
        if n:
            low, high = _core.histogram_bucket_bounds(i)
            spans.append((low, high, n))
    out = []
    for bound in bounds:
        total = 0.0
        for low, high, n in spans:
            if low > bound:
                continue
            if high is None:            # the open-ended last bucket: only its low end is known
                continue
            last = high - 1             # the largest integer the bucket holds
            if last <= bound:
                total += n
            else:
                total += n * (int(bound) - low + 1) / (high - low)
        out.append(int(total))
    return out


def render(stats: Mapping[str, int], gauges: Set[str], histograms: Mapping[str, object],
           pattern: Optional["re.Pattern[str]"] = None, used_only: bool = False) -> str:
    """The page. ``stats``: {dotted name: value}; ``gauges``: which of those are gauges
    (the rest are counters); ``histograms``: {dotted name: Histogram}. ``pattern`` keeps
    only the stats whose dotted name it matches (Envoy's ``filter``); ``used_only`` drops
    stats never written (fastproxy does not track that, so: counters and gauges at zero).
    Histograms that recorded nothing are left out either way, as on ``/stats``."""
    families: Dict[str, Dict[Tuple[str, str], List[Tuple[Labels, object]]]] = {
        "counter": {}, "gauge": {}}
    for stat_name, value in stats.items():
        if pattern is not None and not pattern.search(stat_name):
            continue
        if used_only and not value:
            continue
        kind = "gauge" if stat_name in gauges else "counter"
        metric, labels = tag(stat_name)
        families[kind].setdefault(metric, []).append((labels, value))

    lines: List[str] = []
    for kind in ("counter", "gauge"):
        for metric in sorted(families[kind]):
            lines.append(f"# TYPE {metric} {kind}")
            for labels, value in sorted(families[kind][metric]):
                lines.append(f"{metric}{_label_text(labels)} {_number(value)}")

    hist_families: Dict[str, List[Tuple[Labels, object]]] = {}
    for stat_name, h in histograms.items():
        if pattern is not None and not pattern.search(stat_name):
            continue
        if not h.count:     # Envoy creates a cluster's upstream_rq_time at its first value
            continue
        metric, labels = tag(stat_name)
        hist_families.setdefault(metric, []).append((labels, h))
    for metric in sorted(hist_families):
        lines.append(f"# TYPE {metric} histogram")
        for labels, h in sorted(hist_families[metric], key=lambda item: item[0]):
            for bound, count in zip(BUCKET_BOUNDS, cumulative_buckets(h)):
                lines.append(f"{metric}_bucket{_label_text(labels + (('le', _number(float(bound))),))} {count}")
            lines.append(f"{metric}_bucket{_label_text(labels + (('le', '+Inf'),))} {h.count}")
            lines.append(f"{metric}_sum{_label_text(labels)} {_number(h.sum)}")
            lines.append(f"{metric}_count{_label_text(labels)} {h.count}")
    return "".join(line + "\n" for line in lines)


__all__ = ["render", "tag", "cumulative_buckets", "TAG_RULES", "BUCKET_BOUNDS"]
