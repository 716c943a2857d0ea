"""A cluster's outlier detection (Envoy's cluster.v3.OutlierDetection): the model, its
checks and the spec the core's detector takes (core/upstream/outlier.pxi).

Hosts that fail are ejected (they get no new requests) for base_ejection_time times the
number of times they were ejected, capped at max_ejection_time, plus a random jitter up to
max_ejection_time_jitter; the detector un-ejects them at the interval ticks. Ejections:
consecutive 5xx, consecutive gateway failures (502, 503, 504), consecutive local-origin
failures (split_external_local_origin_errors), and at each interval success rate (mean
minus success_rate_stdev_factor/1000 standard deviations) and failure percentage, over the
hosts with enough requests in the interval. max_ejection_percent caps the share of the
cluster's hosts ejected at once; each enforcing_* is the chance an ejection detected by
that rule is carried out. Defaults are Envoy's.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields
from typing import Optional

from ..errors import ConfigError

# Envoy's defaults (source/common/upstream/outlier_detection_impl.h), seconds for times.
DEFAULT_INTERVAL = 10.0
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0

PERCENT_FIELDS = ("max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
                  "enforcing_consecutive_gateway_failure", "enforcing_consecutive_local_origin_failure",
                  "enforcing_local_origin_success_rate", "failure_percentage_threshold",
                  "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin")
COUNT_FIELDS = ("consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
                "success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor",
                "failure_percentage_minimum_hosts", "failure_percentage_request_volume")
BOOL_FIELDS = ("split_external_local_origin_errors", "successful_active_health_check_uneject_host",
               "always_eject_one_host")
UINT32_MAX = (1 << 32) - 1


@dataclass
class OutlierDetection:
    """Envoy's OutlierDetection (times in seconds; max_ejection_time None: the larger of
    300 s and base_ejection_time, as Envoy)."""

    consecutive_5xx: int = 5
    interval: float = DEFAULT_INTERVAL
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_local_origin_success_rate: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    max_ejection_time: Optional[float] = None
    max_ejection_time_jitter: float = 0.0
    successful_active_health_check_uneject_host: bool = True
    always_eject_one_host: bool = False

    @property
    def effective_max_ejection_time(self) -> float:
        if self.max_ejection_time is not None:
            return self.max_ejection_time
        return max(DEFAULT_MAX_EJECTION_TIME, self.base_ejection_time)

    def validate(self, path: str = "outlier_detection") -> None:
        """Envoy's rules (the proto's and the detector's), each error with its field's path."""
        for name in PERCENT_FIELDS + COUNT_FIELDS:
            value = getattr(self, name)
            high = 100 if name in PERCENT_FIELDS else UINT32_MAX
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise ConfigError(f"{path}.{name}", f"must be an integer 0..{high}, got {value!r}")
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{path}.{name}", f"must be a bool, got {getattr(self, name)!r}")
        for name, positive in (("interval", True), ("base_ejection_time", True), ("max_ejection_time", True),
                               ("max_ejection_time_jitter", False)):
            value = getattr(self, name)
            if value is None and name == "max_ejection_time":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or (positive and value <= 0) or value != value:
                raise ConfigError(f"{path}.{name}", f"must be a duration {'>' if positive else '>='} 0 seconds, "
                                                    f"got {value!r}")
        if self.effective_max_ejection_time < self.base_ejection_time:
            # Envoy refuses it when it builds the detector, with these words.
            raise ConfigError(f"{path}.max_ejection_time",
                              "outlier detector's max_ejection_time cannot be smaller than base_ejection_time")

    def to_spec(self) -> dict:
        """What the core's detector takes (outlier_configure): milliseconds for times."""
        spec = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("interval", "base_ejection_time", "max_ejection_time_jitter"):
            spec[name] = _ms(spec[name])
        spec["max_ejection_time"] = _ms(self.effective_max_ejection_time)
        return spec


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))


class OutlierTicker:
    """The detectors' interval timer: one thread per proxy runs each cluster's interval
    (un-ejections, success-rate and failure-percentage ejections) when it is due.

    Why a thread of its own and not a worker's timer: the tick is per cluster, not per
    request, so the GIL it takes (once per interval per cluster; Envoy's default interval
    is 10 s) costs nothing measurable, while the tick itself runs without the GIL
    (_core.outlier_tick_now). A worker's timer would tie the detector's life and its
    counters to one worker's loop and need a message per config change to arm it.
    Consecutive-failure ejections do not wait for it: the worker that sees the failure
    ejects at once."""

    def __init__(self, clusters):
        # clusters(): [(ClusterHandle, interval seconds)] of the clusters with outlier
        # detection, as configured now.
        self._clusters = clusters
        self._wake = threading.Event()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._due: dict = {}

    def start(self) -> None:
        """Run (once; later calls only wake it to see a config change)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fastproxy-outlier", daemon=True)
            self._thread.start()
        else:
            self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        from .. import _core
        while not self._stop:
            self._wake.clear()
            now = time.monotonic()
            wait = None
            due = {}
            for handle, interval in self._clusters():
                at = self._due.get(handle)
                if at is None:
                    at = now + interval     # (a new detector: its first interval starts now)
                elif at <= now:
                    _core.outlier_tick_now(handle)
                    at = time.monotonic() + interval
                due[handle] = at
                wait = at - now if wait is None else min(wait, at - now)
            self._due = due
            self._wake.wait(None if wait is None else max(0.001, wait))
