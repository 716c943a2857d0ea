"""Retries and hedging of a route (Envoy's route.v3.RetryPolicy and HedgePolicy) and a
cluster's retry budget (circuit_breakers.thresholds.retry_budget). The data plane that acts
on them: core/http/retry.pxi; Envoy YAML: fastproxy.config.retry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..validation import fail, is_token

# Envoy's x-envoy-retry-on / retry_on values (RetryStateImpl::parseRetryOn) and the gRPC
# ones (x-envoy-retry-grpc-on; retry_on takes both).
RETRY_ON_HTTP = ("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
                 "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
                 "retriable-headers", "http3-post-connect-failure")
RETRY_ON_GRPC = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
RETRY_ON = RETRY_ON_HTTP + RETRY_ON_GRPC


@dataclass
class RetryPolicy:
    """route.v3.RetryPolicy. Durations in seconds (None: Envoy's default). retry_on: the
    comma-separated conditions as Envoy spells them. previous_hosts: the
    envoy.retry_host_predicates.previous_hosts predicate is configured."""

    retry_on: str = ""
    num_retries: int = 1
    per_try_timeout: Optional[float] = None
    per_try_idle_timeout: Optional[float] = None
    base_interval: Optional[float] = None           # retry_back_off (default 25 ms)
    max_interval: Optional[float] = None            # (default 10 x base_interval)
    previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1
    retriable_status_codes: list = field(default_factory=list)
    retriable_headers: list = field(default_factory=list)            # [http.model.HeaderMatcher]
    retriable_request_headers: list = field(default_factory=list)    # [http.model.HeaderMatcher]
    # rate_limited_retry_back_off: [ResetHeader] (empty: not set) and its max_interval
    reset_headers: list = field(default_factory=list)
    reset_max_interval: Optional[float] = None      # (default 300 s)

    def conditions(self) -> list:
        return [c.strip() for c in self.retry_on.split(",") if c.strip()]

    def validate(self, path: str) -> None:
        if not isinstance(self.retry_on, str):
            fail(path + ".retry_on", "must be a string")
        for c in self.conditions():
            if c not in RETRY_ON:
                fail(path + ".retry_on", f"unknown retry condition {c!r} "
                                                      f"(expected some of {', '.join(RETRY_ON)})")
            if c == "http3-post-connect-failure":
                fail(path + ".retry_on", "http3-post-connect-failure: HTTP/3 is not built")
        if not isinstance(self.num_retries, int) or not 0 <= self.num_retries < 1 << 32:
            fail(path + ".num_retries", "must be an unsigned 32-bit integer")
        for name in ("per_try_timeout", "per_try_idle_timeout"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                fail(f"{path}.{name}", "must be a duration >= 0")
        bpath = path + ".retry_back_off"
        if self.base_interval is not None:
            if not isinstance(self.base_interval, (int, float)) or self.base_interval < 0.001:
                fail(bpath + ".base_interval", "must be at least 1ms")
        if self.max_interval is not None:
            if not isinstance(self.max_interval, (int, float)) or self.max_interval < 0.001:
                fail(bpath + ".max_interval", "must be at least 1ms")
            if self.max_interval < (self.base_interval or 0.025):
                fail(bpath + ".max_interval", "max_interval must be greater than or "
                                                           "equal to the base_interval")
        if not isinstance(self.host_selection_retry_max_attempts, int) \
                or not 0 <= self.host_selection_retry_max_attempts < 1 << 63:
            fail(path + ".host_selection_retry_max_attempts", "must be an integer >= 0")
        for i, code in enumerate(self.retriable_status_codes):
            if not isinstance(code, int) or not 0 <= code < 1 << 32:
                fail(f"{path}.retriable_status_codes[{i}]", "must be an unsigned 32-bit integer")
        rpath = path + ".rate_limited_retry_back_off"
        for i, rh in enumerate(self.reset_headers):
            if not isinstance(rh, ResetHeader):
                fail(f"{rpath}.reset_headers[{i}]", "must be a ResetHeader")
            rh.validate(f"{rpath}.reset_headers[{i}]")
        if self.reset_max_interval is not None:
            if not self.reset_headers:
                fail(rpath + ".reset_headers", "must have at least one item")
            if not isinstance(self.reset_max_interval, (int, float)) or self.reset_max_interval <= 0.001:
                fail(rpath + ".max_interval", "must be greater than 1ms")
        for name in ("retriable_headers", "retriable_request_headers"):
            for i, hm in enumerate(getattr(self, name)):
                if not callable(getattr(hm, "validate", None)):     # (fastproxy.http.HeaderMatcher)
                    fail(f"{path}.{name}[{i}]", "must be a HeaderMatcher")
                hm.validate(f"{path}.{name}[{i}]")


RESET_HEADER_FORMATS = ("SECONDS", "UNIX_TIMESTAMP")


@dataclass
class ResetHeader:
    """route.v3.RetryPolicy.ResetHeader: a response header telling when to retry, as a
    number of seconds (SECONDS) or the Unix time to retry at (UNIX_TIMESTAMP)."""

    name: str = ""
    format: str = "SECONDS"

    def validate(self, path: str) -> None:
        if not is_token(self.name):
            fail(path + ".name", "must be a non-empty HTTP header name")
        if self.format not in RESET_HEADER_FORMATS:
            fail(path + ".format", f"must be one of {', '.join(RESET_HEADER_FORMATS)}")


@dataclass
class HedgePolicy:
    """route.v3.HedgePolicy: hedge_on_per_try_timeout (a per-try timeout starts the next
    attempt without resetting the one in flight; the first usable response wins).
    initial_requests and additional_request_chance are not built (refused)."""

    hedge_on_per_try_timeout: bool = False

    def validate(self, path: str) -> None:
        if not isinstance(self.hedge_on_per_try_timeout, bool):
            fail(path + ".hedge_on_per_try_timeout", "must be a bool")


@dataclass
class RetryBudget:
    """circuit_breakers.thresholds[].retry_budget: at most budget_percent % of the cluster's
    active and pending requests may be retries, never fewer than min_retry_concurrency.
    Replaces max_retries when set, as in Envoy."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3

    def validate(self, path: str) -> None:
        if not isinstance(self.budget_percent, (int, float)) or not 0.0 <= self.budget_percent <= 100.0:
            fail(path + ".budget_percent", "must be a percentage in [0, 100]")
        if not isinstance(self.min_retry_concurrency, int) or not 0 <= self.min_retry_concurrency < 1 << 32:
            fail(path + ".min_retry_concurrency", "must be an unsigned 32-bit integer")
