"""Read values the way Envoy's protobuf JSON mapping does, with Envoy-style error paths.

Envoy turns its YAML into JSON and parses that as a protobuf message, so these rules apply
to YAML too: a field may be spelt snake_case or lowerCamelCase; integers may be given as
numbers or decimal strings; enums by name (Envoy 1.40 ignores case) or by number; a Duration
is "<seconds>s" with at most 9 fractional digits, or {seconds, nanos}. Anything not listed for
a message is an error here: fastproxy implements a subset and must never ignore a field whose
meaning it does not honour.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import re
from collections.abc import Mapping
from typing import Any, Callable, Iterator, List, Optional

from ..errors import ConfigError, ConfigErrors
from ..validation import describe

_MISSING = object()

UINT32_MAX = (1 << 32) - 1
INT64_MAX = (1 << 63) - 1
# google.protobuf.Duration's own limit (about 10,000 years).
DURATION_MAX_SECONDS = 315_576_000_000

_INT_TEXT = re.compile(r"-?[0-9]+")
_DURATION_TEXT = re.compile(r"(-)?([0-9]+)(?:\.([0-9]{1,9}))?s")


# Envoy fields fastproxy knows and does not implement: (the feature, whether it is planned).
# A field here is refused with what it is; any other unknown field gets a spelling hint.
UNSUPPORTED_FIELDS = {
    "transport_socket": ("TLS (transport_socket)", True),
    "transport_socket_matches": ("TLS (transport_socket_matches)", True),
    "upstream_tls_context": ("TLS", True),
    "http3_protocol_options": ("HTTP/3", False),
    "self": ("the 'self' config source", False),
    "authorities": ("xDS authorities", False),
    "lds_resources_locator": ("xdstp:// resource locators", False),
    "cds_resources_locator": ("xdstp:// resource locators", False),
    "named_endpoints": ("named endpoints (LEDS)", False),
    "drop_overloads": ("drop_overloads", False),
    "endpoint_stale_after": ("endpoint_stale_after", False),
    "rate_limit_settings": ("xDS rate limiting (rate_limit_settings)", False),
    "scoped_routes": ("scoped routes (SRDS)", False),
    "listener_filters": ("listener filters (tls_inspector, proxy_protocol, ...)", False),
    "filter_chain_match": ("filter chain matching", False),
    "tracing": ("tracing", False),
    "stats_sinks": ("stats sinks (statsd, metrics_service)", False),
    "stats_config": ("stats tag configuration", False),
    "overload_manager": ("the overload manager (use layered_runtime's "
                         "overload.global_downstream_max_connections for a connection limit)", False),
    "watchdog": ("the watchdog", False),
    "watchdogs": ("the watchdog", False),
    "cluster_manager": ("cluster_manager settings (outlier event log, upstream bind config)", False),
    "hds_config": ("health discovery (HDS)", False),
    "upstream_bind_config": ("upstream source address binding", False),
    "lb_subset_config": ("subset load balancing", False),
    "socket_options": ("socket options", False),
    "retry_policy": ("retries of this message (e.g. an xDS gRPC service's)", False),
    "hash_policy": ("hash policies (ring hash / Maglev)", False),
    "typed_dns_resolver_config": ("a custom DNS resolver", False),
    "use_original_dst": ("original destination", False),
    "secrets": ("TLS secrets (static_resources.secrets)", True),
    "pipe": ("Unix domain socket addresses (pipe)", False),
    "envoy_internal_address": ("internal listeners", False),
    "weighted_clusters": ("weighted clusters", False),
    "per_host_thresholds": ("per-host circuit breakers", False),
    "priority": ("route priorities (RouteAction.priority)", False),
    "health_status": ("endpoint health status (with active health checking)", True),
    "health_check_config": ("an endpoint's own health check address (health_check_config)", False),
    "metadata": ("metadata", False),
    "filter": ("access log filters", False),
    "access_log_path": ("admin.access_log_path (removed from Envoy's v3 API: use admin.access_log)", False),
    "access_log": ("access logs here (the HTTP connection manager and the admin have them)", False),
    "stat_prefix": ("a stat prefix here", False),
    "tls_context": ("TLS (tls_context)", True),
    "connection_balance_config": ("connection balancing", False),
    "enable_reuse_port": ("enable_reuse_port (fastproxy always uses SO_REUSEPORT)", False),
    "bind_to_port": ("listeners that do not bind", False),
    "listener_filters_timeout": ("listener filters", False),
    "upstream_connection_options": ("upstream TCP keepalive", False),
    "close_connections_on_host_health_failure": ("active health checking", True),
    "ignore_health_on_host_removal": ("active health checking", True),
    "track_cluster_stats": ("optional cluster stats", False),
    "dns_resolution_config": ("DNS resolver options", False),
    "respect_dns_ttl": ("DNS TTLs", False),
    "wait_for_warm_on_init": ("cluster warming", False),
    "load_balancing_policy": ("load balancing policy extensions", False),
    "hidden_envoy_deprecated_tls_context": ("TLS", True),
    # route retry_policy / hedge_policy parts (fastproxy.config.retry)
    "retry_priority": ("retry priority predicates", False),
    "retry_options_predicates": ("retry options predicates", False),
    "initial_requests": ("hedged initial requests", False),
    "additional_request_chance": ("hedged additional requests", False),
}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def unsupported_field(path: str, name: str, fix: Optional[str] = None) -> ConfigError:
    """The error for a known Envoy feature fastproxy does not implement (``name``: its key in
    UNSUPPORTED_FIELDS, in either spelling): one wording for every place it can be asked
    for. ``fix`` replaces the default advice (remove the field)."""
    feature, planned = UNSUPPORTED_FIELDS[_snake(name)]
    plan = "planned, not implemented yet" if planned else "not planned"
    return ConfigError(path, f"{feature} is unsupported in fastproxy ({plan}); {fix or f'remove {name!r}'}")


def unknown_field(path: str, name: Any, valid: Any) -> ConfigError:
    """The error for a field that is not part of this message: a known Envoy feature is named
    as such, anything else gets the nearest valid spellings."""
    text = str(name)
    if _snake(text) in UNSUPPORTED_FIELDS:
        return unsupported_field(path, text)
    # Suggest in the spelling the author used (snake_case or lowerCamelCase).
    camel = text != text.lower()
    names = sorted({to_camel(v) if camel else v for v in valid})
    # Close enough to be a typo (a missing, extra or swapped letter or two), not merely a
    # field with a word in common: Envoy has many of those that fastproxy does not read.
    close = difflib.get_close_matches(text, names, n=2, cutoff=0.8)
    if close:
        return ConfigError(path, f"unknown field {text!r} (did you mean {' or '.join(repr(c) for c in close)}?)")
    return ConfigError(path, f"unsupported field {text!r}: not an Envoy field, or one that fastproxy "
                             "does not implement (see the README for the subset it reads)")


# --- reporting every error of a configuration in one run -----------------------------------

_errors: "contextvars.ContextVar[Optional[List[ConfigError]]]" = contextvars.ContextVar("fastproxy_config_errors",
                                                                                       default=None)


@contextlib.contextmanager
def collecting() -> Iterator[List[ConfigError]]:
    """Within this block, report() records errors instead of raising; the caller raises
    them all at the end (raise_collected)."""
    errors: List[ConfigError] = []
    token = _errors.set(errors)
    try:
        yield errors
    finally:
        _errors.reset(token)


def report(error: ConfigError) -> None:
    """Record a configuration error that does not stop the rest of the configuration from
    being checked (raise it when nothing collects)."""
    errors = _errors.get()
    if errors is None:
        raise error
    for e in (error.errors if isinstance(error, ConfigErrors) else [error]):
        errors.append(e)


def checked(fn: Callable, *args, **kwargs) -> Any:
    """fn(*args, **kwargs); a ConfigError it raises is reported, and None returned, so that
    the next item of the configuration is still checked."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        report(e)
        return None


def raise_collected(errors: List[ConfigError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def to_camel(snake: str) -> str:
    """The protobuf json_name of a field: port_value -> portValue."""
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.lru_cache(maxsize=1024)
def _spellings(fields: tuple) -> dict:
    """{snake_case or camelCase spelling: field name} for a message's fields, made once per
    field set (a route table of 1,000 virtual hosts builds thousands of Messages)."""
    out = {}
    for name in fields:
        out[name] = name
        out[to_camel(name)] = name
    return out


class Message:
    """One protobuf message given as a mapping, with the set of fields fastproxy accepts.

    Construction rejects unknown fields (naming their full path) and a field given twice
    (snake_case and camelCase). The typed getters then read each field with its path.
    """

    def __init__(self, data: Any, path: str, fields: tuple, ignore: tuple = ()):
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a mapping (message), got {describe(data)}")
        self.path = path
        self._values: dict = {}
        by_spelling = _spellings(fields)
        for key, value in data.items():
            if key in ignore:
                continue
            name = by_spelling.get(key) if isinstance(key, str) else None
            if name is None:
                # Reported, not raised: the other fields (and the rest of the configuration)
                # are still checked, so that one run shows every mistake.
                report(unknown_field(join(path, str(key)), key, fields))
                continue
            if name in self._values:
                report(ConfigError(join(path, name), f"field {name!r} is given twice (as {name} and {to_camel(name)})"))
                continue
            self._values[name] = value

    def at(self, name: str) -> str:
        return join(self.path, name)

    def raw(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def _get(self, name: str, required: bool) -> Any:
        value = self._values.get(name, _MISSING)
        # protobuf JSON treats an explicit null like an absent field.
        if value is None:
            value = _MISSING
        if value is _MISSING and required:
            raise ConfigError(self.at(name), "required field is missing")
        return value

    def string(self, name: str, default: Any = None, required: bool = False, non_empty: bool = False) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.at(name), f"expected a string, got {describe(value)}")
        if non_empty and not value:
            raise ConfigError(self.at(name), "must not be empty")
        return value

    def uint32(self, name: str, default: Any = None, required: bool = False, minimum: int = 0) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        number = integer(value, self.at(name), 0, UINT32_MAX, "an unsigned 32-bit integer")
        if number < minimum:
            raise ConfigError(self.at(name), f"must be >= {minimum}, got {number}")
        return number

    def duration(self, name: str, default: Any = None, required: bool = False) -> Any:
        """A google.protobuf.Duration as float seconds."""
        value = self._get(name, required)
        if value is _MISSING:
            return default
        return duration(value, self.at(name))

    def enum(self, name: str, values: Mapping, default: Any = None) -> Any:
        """An enum by name or number; returns the canonical (upper-case) name."""
        value = self._get(name, False)
        if value is _MISSING:
            return default
        return enum(value, self.at(name), values)

    def message(self, name: str, fields: tuple, required: bool = False, ignore: tuple = ()) -> Optional["Message"]:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        return Message(value, self.at(name), fields, ignore)

    def mapping(self, name: str) -> Optional[Mapping]:
        """A field whose contents are free-form (a Struct, or a block accepted and ignored)."""
        value = self._get(name, False)
        if value is _MISSING:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(self.at(name), f"expected a mapping, got {describe(value)}")
        return value

    def repeated(self, name: str) -> Iterator[tuple]:
        """Yields (item, item_path) for a repeated field; absent means empty."""
        value = self._get(name, False)
        if value is _MISSING:
            return iter(())
        if not isinstance(value, list):
            raise ConfigError(self.at(name), f"expected a list, got {describe(value)}")
        return ((item, f"{self.at(name)}[{i}]") for i, item in enumerate(value))


def integer(value: Any, path: str, low: int, high: int, what: str) -> int:
    """An integer field: a JSON number with no fraction, or a decimal string (proto3 JSON)."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        number = int(value)
    else:
        number = None
    if number is None:
        raise ConfigError(path, f"expected {what}, got {describe(value)}")
    if not low <= number <= high:
        raise ConfigError(path, f"{number} is out of range for {what}")
    return number


def duration(value: Any, path: str) -> float:
    """Parse a Duration ("1.5s" or {seconds: 1, nanos: 500000000}) into float seconds.

    Envoy rejects negative durations everywhere, so they are rejected here ("-0s" is zero).
    """
    if isinstance(value, str):
        match = _DURATION_TEXT.fullmatch(value)
        if not match:
            raise ConfigError(path, f"invalid Duration {describe(value)}: expected '<seconds>s' "
                                    "with up to 9 fractional digits, e.g. '10s' or '0.25s'")
        negative, whole, fraction = match.groups()
        seconds = int(whole)
        nanos = int((fraction or "").ljust(9, "0"))
        if negative and (seconds or nanos):
            raise ConfigError(path, f"Duration must not be negative, got {value!r}")
    elif isinstance(value, Mapping):
        parts = Message(value, path, ("seconds", "nanos"))
        seconds = integer(parts.raw("seconds", 0), parts.at("seconds"), -INT64_MAX, INT64_MAX, "a 64-bit integer")
        nanos = integer(parts.raw("nanos", 0), parts.at("nanos"), -999_999_999, 999_999_999, "nanoseconds (|nanos| < 1e9)")
        if seconds < 0 or nanos < 0:
            raise ConfigError(path, "Duration must not be negative")
    else:
        raise ConfigError(path, f"invalid Duration {describe(value)}: expected a string like '10s'")
    if seconds > DURATION_MAX_SECONDS:
        raise ConfigError(path, f"Duration of {seconds}s is out of range")
    return seconds + nanos / 1e9


def enum(value: Any, path: str, values: Mapping) -> str:
    """``values`` maps each Envoy enum name to its number."""
    if isinstance(value, str):
        name = value.upper()
        if name in values:
            return name
    elif isinstance(value, int) and not isinstance(value, bool):
        for name, number in values.items():
            if number == value:
                return name
    raise ConfigError(path, f"unknown enum value {describe(value)} (expected one of {', '.join(values)})")
