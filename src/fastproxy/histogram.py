"""Histograms read from the core (downstream_rq_time, upstream_rq_time): bucket counts
summed over the workers, with Envoy's quantile summary.

The core keeps fixed log-linear buckets per worker (core/stats.pxi: 0..15 exact, then eight
per power of two, so a quantile is off by at most 12.5%); quantiles interpolate linearly
inside a bucket. Values are milliseconds, as in Envoy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

# Envoy's supported_quantiles for /stats.
QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)


@dataclass
class Histogram:
    buckets: List[int]          # count per core bucket
    sum: int                    # sum of the recorded values

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def quantile(self, q: float) -> Optional[float]:
        """The q-quantile (0..1), None when nothing was recorded."""
        from . import _core
        total = self.count
        if total == 0:
            return None
        target = q * total
        seen = 0
        last = None
        for i, n in enumerate(self.buckets):
            if not n:
                continue
            low, high = _core.histogram_bucket_bounds(i)
            if high is None:
                high = low * 2
            if q == 0.0:
                return float(low)
            if seen + n >= target:
                return low + (high - low) * (target - seen) / n
            seen += n
            last = high
        return float(last)

    def quantiles(self) -> List[Optional[float]]:
        return [self.quantile(q) for q in QUANTILES]

    def envoy_text(self) -> str:
        """Envoy's /stats line value: "P0(nan,1) P25(nan,1.05) ..." (interval, cumulative);
        fastproxy keeps no interval histograms, so the interval part is always nan."""
        if self.count == 0:
            return "No recorded values"
        return " ".join(f"P{_qname(q)}(nan,{_num(v)})" for q, v in zip(QUANTILES, self.quantiles()))


def _qname(q: float) -> str:
    text = f"{q * 100:g}"
    return text


def _num(v: float) -> str:
    return f"{v:.6g}"


__all__ = ["Histogram", "QUANTILES"]
