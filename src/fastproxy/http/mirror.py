"""Request mirroring: route.v3.RouteAction.RequestMirrorPolicy (a RouteAction's
``request_mirror_policies``). The core's side is core/http/shadow.pxi.

Each policy sends a shadow copy of the route's requests (the same method, path after the
route's rewrites, fields and body as the primary's upstream request, with ``-shadow``
appended to the Host/:authority) to ``cluster``; the shadow's response is dropped and its
failures (connect failure, reset, timeout, 5xx, a cluster removed by an update) reach the
client neither as an error nor as a delay. Stats: the mirror cluster's own upstream ones.

Fields:
  cluster                            the mirror cluster (required: it must exist, as Envoy
                                     refuses an unknown shadow cluster)
  runtime_fraction                   the share of requests mirrored (FractionalPercent; None:
                                     all). ``runtime_key`` names a key fastproxy's runtime does
                                     not have, so the default value always applies (as in
                                     Envoy while the key is unset)
  trace_sampled                      whether the shadow's trace span is sampled (Envoy 1.40:
                                     None inherits the parent span's decision); fastproxy has
                                     no tracing, so it is accepted and kept (the config dump
                                     writes it back) and changes nothing
  disable_shadow_host_suffix_append  keep the primary's Host on the shadow
Not built (refused by the loader with their path): ``cluster_header``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Optional

from ..validation import boolean, fail, integer, one_of, string, typed
from .native_filters import DENOMINATORS, FractionalPercent


@dataclass
class MirrorPolicy:
    cluster: str
    runtime_fraction: Optional[FractionalPercent] = None
    runtime_key: Optional[str] = None           # (kept for the dump: never set in fastproxy)
    trace_sampled: Optional[bool] = None
    disable_shadow_host_suffix_append: bool = False

    def validate(self, path: str, cluster_names: Optional[Collection[str]] = None) -> None:
        name = string(self.cluster, path + ".cluster", non_empty=True)
        if cluster_names is not None and name not in cluster_names:
            fail(path + ".cluster", f"unknown cluster {name!r}")
        if self.runtime_fraction is not None:
            rp = path + ".runtime_fraction.default_value"
            f = typed(self.runtime_fraction, FractionalPercent, rp)
            integer(f.numerator, rp + ".numerator", 0, 0xFFFFFFFF)
            one_of(f.denominator, rp + ".denominator", DENOMINATORS)
        string(self.runtime_key, path + ".runtime_fraction.runtime_key", optional=True)
        if self.trace_sampled is not None:
            boolean(self.trace_sampled, path + ".trace_sampled")
        boolean(self.disable_shadow_host_suffix_append, path + ".disable_shadow_host_suffix_append")

