"""Envoy YAML for the native HTTP filters -> fastproxy.http.native_filters.

Registered into config/http.py's HTTP_FILTERS. Each filter accepts the subset of its
Envoy v3 config that fastproxy implements; any other field is a ConfigError naming its path
(see docs/native-filters.md for what each filter supports). Where Envoy reads a value from
its runtime (RuntimeFractionalPercent), fastproxy has no runtime: ``runtime_key`` is
accepted and the ``default_value`` is always used.
"""
from __future__ import annotations

from typing import Any, Optional

from ..errors import ConfigError
from ..http import model as mh
from ..http import native_filters as mf
from ..validation import APPEND_ACTIONS, check_header_name, check_header_value, literal_header_value
from .http_common import _STRING_MATCH_FIELDS, HttpFilterKind, _bool, _header_matcher, _oneof, _present, _string_match
from .proto import Message, describe

T = "type.googleapis.com/envoy.extensions.filters.http."
LOCAL_RATELIMIT_TYPE = T + "local_ratelimit.v3.LocalRateLimit"
CORS_TYPE = T + "cors.v3.Cors"
CORS_POLICY_TYPE = T + "cors.v3.CorsPolicy"
FAULT_TYPE = T + "fault.v3.HTTPFault"
BUFFER_TYPE = T + "buffer.v3.Buffer"
BUFFER_PER_ROUTE_TYPE = T + "buffer.v3.BufferPerRoute"
HEALTH_CHECK_TYPE = T + "health_check.v3.HealthCheck"
HEADER_MUTATION_TYPE = T + "header_mutation.v3.HeaderMutation"
HEADER_MUTATION_PER_ROUTE_TYPE = T + "header_mutation.v3.HeaderMutationPerRoute"

# envoy.type.v3.FractionalPercent.DenominatorType: name -> proto number (the model keeps
# the names and their meaning, in proto order).
DENOMINATORS = {name: number for number, name in enumerate(mf.DENOMINATORS)}

# envoy.type.v3.StatusCode (HttpStatus.code), name -> number.
STATUS_CODES = {
    "Continue": 100, "OK": 200, "Created": 201, "Accepted": 202, "NonAuthoritativeInformation": 203,
    "NoContent": 204, "ResetContent": 205, "PartialContent": 206, "MultiStatus": 207, "AlreadyReported": 208,
    "IMUsed": 226, "MultipleChoices": 300, "MovedPermanently": 301, "Found": 302, "SeeOther": 303,
    "NotModified": 304, "UseProxy": 305, "TemporaryRedirect": 307, "PermanentRedirect": 308, "BadRequest": 400,
    "Unauthorized": 401, "PaymentRequired": 402, "Forbidden": 403, "NotFound": 404, "MethodNotAllowed": 405,
    "NotAcceptable": 406, "ProxyAuthenticationRequired": 407, "RequestTimeout": 408, "Conflict": 409,
    "Gone": 410, "LengthRequired": 411, "PreconditionFailed": 412, "PayloadTooLarge": 413, "URITooLong": 414,
    "UnsupportedMediaType": 415, "RangeNotSatisfiable": 416, "ExpectationFailed": 417,
    "MisdirectedRequest": 421, "UnprocessableEntity": 422, "Locked": 423, "FailedDependency": 424,
    "UpgradeRequired": 426, "PreconditionRequired": 428, "TooManyRequests": 429,
    "RequestHeaderFieldsTooLarge": 431, "InternalServerError": 500, "NotImplemented": 501, "BadGateway": 502,
    "ServiceUnavailable": 503, "GatewayTimeout": 504, "HTTPVersionNotSupported": 505,
    "VariantAlsoNegotiates": 506, "InsufficientStorage": 507, "LoopDetected": 508, "NotExtended": 510,
    "NetworkAuthenticationRequired": 511,
}

MIN_FILL_INTERVAL = 0.05        # Envoy's local rate limiter refuses a shorter fill_interval


# --- shared pieces ----------------------------------------------------------------------------

def _fractional_percent(msg: Optional[Message]) -> mf.FractionalPercent:
    if msg is None:
        return mf.FractionalPercent(0)
    numerator = msg.uint32("numerator", default=0)
    denominator = msg.enum("denominator", DENOMINATORS, default="HUNDRED")
    return mf.FractionalPercent(numerator, denominator)


def _runtime_fractional_percent(parent: Message, name: str) -> Optional[mf.FractionalPercent]:
    msg = parent.message(name, ("default_value", "runtime_key"))
    if msg is None:
        return None
    msg.string("runtime_key")       # no runtime in fastproxy: the default value is always used
    return _fractional_percent(msg.message("default_value", ("numerator", "denominator"), required=True))


def _header_value_option(item: Any, path: str) -> Optional[mh.HeaderValueOption]:
    """A config.core.v3.HeaderValueOption; None if its value is empty (Envoy adds nothing
    then, unless keep_empty_value)."""
    opt = Message(item, path, ("header", "append", "append_action", "keep_empty_value"))
    header = opt.message("header", ("key", "value"), required=True)
    key = header.string("key", required=True, non_empty=True)
    if key.startswith(":"):
        raise ConfigError(header.at("key"), f":-prefixed headers may not be modified ({key!r})")
    key = check_header_name(key, header.at("key"))
    value = header.string("value", default="")
    check_header_value(value, header.at("value"))
    value = literal_header_value(value, header.at("value"))
    if _present(opt, "append") and _present(opt, "append_action"):
        raise ConfigError(opt.at("append"), "both append and append_action are set (append is deprecated: "
                                            "use append_action alone)")
    if _present(opt, "append"):
        action = "APPEND_IF_EXISTS_OR_ADD" if _bool(opt, "append") else "OVERWRITE_IF_EXISTS_OR_ADD"
    else:
        action = opt.enum("append_action", APPEND_ACTIONS, default="APPEND_IF_EXISTS_OR_ADD")
    if not value and not _bool(opt, "keep_empty_value"):
        return None
    return mh.HeaderValueOption(key, value, action)


def _header_value_options(msg: Message, name: str) -> list:
    out = []
    for item, path in msg.repeated(name):
        opt = _header_value_option(item, path)
        if opt is not None:
            out.append(opt)
    return out


def _native(kind: str, config: Any):
    from ..http_filter import NativeHttpFilter
    return NativeHttpFilter(name="", kind=kind, config=config)


# --- envoy.filters.http.local_ratelimit ---------------------------------------------------------

LOCAL_RATELIMIT_FIELDS = ("stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
                          "response_headers_to_add")


def local_rate_limit(msg: Message) -> mf.LocalRateLimit:
    stat_prefix = msg.string("stat_prefix", required=True, non_empty=True)
    status = 429
    st = msg.message("status", ("code",))
    if st is not None:
        status = STATUS_CODES[_status_code(st)]
        if status < 400:
            status = 429            # Envoy: a code below 400 means the default
    bucket = None
    tb = msg.message("token_bucket", ("max_tokens", "tokens_per_fill", "fill_interval"))
    if tb is not None:
        max_tokens = tb.uint32("max_tokens", required=True)    # Envoy accepts 0: every request is limited
        tokens_per_fill = tb.uint32("tokens_per_fill", default=1, minimum=1)
        fill_interval = tb.duration("fill_interval", required=True)
        if fill_interval < MIN_FILL_INTERVAL:
            raise ConfigError(tb.at("fill_interval"), f"must be at least 50ms (Envoy's minimum), got {fill_interval}s")
        bucket = mf.TokenBucket(max_tokens, tokens_per_fill, fill_interval)
    return mf.LocalRateLimit(
        stat_prefix=stat_prefix, token_bucket=bucket,
        filter_enabled=_runtime_fractional_percent(msg, "filter_enabled"),
        filter_enforced=_runtime_fractional_percent(msg, "filter_enforced"),
        status=status, response_headers_to_add=_header_value_options(msg, "response_headers_to_add"))


def _status_code(st: Message) -> str:
    value = st.raw("code")
    if value is None:
        raise ConfigError(st.at("code"), "required field is missing")
    if isinstance(value, str):
        for name in STATUS_CODES:
            if name.upper() == value.upper():
                return name
    elif isinstance(value, int) and not isinstance(value, bool):
        for name, number in STATUS_CODES.items():
            if number == value:
                return name
    raise ConfigError(st.at("code"), f"{describe(value)} is not an envoy.type.v3.StatusCode")


# --- envoy.filters.http.fault ------------------------------------------------------------------

FAULT_FIELDS = ("delay", "abort", "max_active_faults")


def http_fault(msg: Message) -> mf.HTTPFault:
    delay = abort = None
    d = msg.message("delay", ("fixed_delay", "percentage"))
    if d is not None:
        fixed = d.duration("fixed_delay", required=True)
        if fixed <= 0:
            raise ConfigError(d.at("fixed_delay"), "must be greater than 0s")
        delay = mf.FaultDelay(fixed, _fractional_percent(d.message("percentage", ("numerator", "denominator"))))
    a = msg.message("abort", ("http_status", "percentage"))
    if a is not None:
        status = a.uint32("http_status", required=True)
        if not 200 <= status < 600:
            raise ConfigError(a.at("http_status"), f"must be in [200, 600), got {status}")
        abort = mf.FaultAbort(status, _fractional_percent(a.message("percentage", ("numerator", "denominator"))))
    return mf.HTTPFault(delay=delay, abort=abort, max_active_faults=msg.uint32("max_active_faults"))


# --- envoy.filters.http.buffer -----------------------------------------------------------------

def buffer(msg: Message) -> mf.Buffer:
    return mf.Buffer(msg.uint32("max_request_bytes", required=True, minimum=1))


def buffer_per_route(msg: Message) -> mf.BufferPerRoute:
    kind = _oneof(msg, ("disabled", "buffer"), required=True)
    if kind == "disabled":
        if not _bool(msg, "disabled"):
            raise ConfigError(msg.at("disabled"), "must be true")
        return mf.BufferPerRoute(disabled=True)
    return mf.BufferPerRoute(buffer=buffer(msg.message("buffer", ("max_request_bytes",))))


# --- envoy.filters.http.health_check -----------------------------------------------------------

def health_check(msg: Message) -> mf.HealthCheck:
    if msg.raw("pass_through_mode") is None:
        raise ConfigError(msg.at("pass_through_mode"), "required field is missing")
    return mf.HealthCheck(pass_through_mode=_bool(msg, "pass_through_mode"),
                          headers=[_header_matcher(item, path) for item, path in msg.repeated("headers")])


# --- envoy.filters.http.cors -------------------------------------------------------------------

CORS_POLICY_FIELDS = ("allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers", "max_age",
                      "allow_credentials", "forward_not_matching_preflights")


def cors(msg: Message) -> mf.Cors:
    return mf.Cors()


def cors_policy(msg: Message) -> mf.CorsPolicy:
    origins = []
    for item, path in msg.repeated("allow_origin_string_match"):
        sm = Message(item, path, _STRING_MATCH_FIELDS)
        origins.append(_string_match(sm))
    strings = {}
    for name in ("allow_methods", "allow_headers", "expose_headers", "max_age"):
        value = msg.string(name, default="")
        check_header_value(value, msg.at(name))
        strings[name] = value
    forward = _bool(msg, "forward_not_matching_preflights", default=True)
    if not forward:
        raise ConfigError(msg.at("forward_not_matching_preflights"), "only true (Envoy's default) is supported")
    return mf.CorsPolicy(allow_origin_string_match=origins, allow_credentials=_bool(msg, "allow_credentials"),
                         forward_not_matching_preflights=True, **strings)


# --- envoy.filters.http.header_mutation --------------------------------------------------------

def _mutation_ops(msg: Message, name: str) -> list:
    ops = []
    for item, path in msg.repeated(name):
        op = Message(item, path, ("append", "remove"))
        kind = _oneof(op, ("append", "remove"), required=True)
        if kind == "remove":
            header = op.string("remove", non_empty=True)
            if header.startswith(":"):
                raise ConfigError(op.at("remove"), f":-prefixed headers may not be removed ({header!r})")
            ops.append(mf.HeaderMutationOp(remove=check_header_name(header, op.at("remove"))))
        else:
            opt = _header_value_option(op.raw("append"), op.at("append"))
            if opt is not None:
                ops.append(mf.HeaderMutationOp(append=opt))
    return ops


def header_mutation(msg: Message) -> mf.HeaderMutation:
    m = msg.message("mutations", ("request_mutations", "response_mutations"))
    if m is None:
        return mf.HeaderMutation()
    return mf.HeaderMutation(mf.Mutations(_mutation_ops(m, "request_mutations"),
                                          _mutation_ops(m, "response_mutations")))


# --- registration --------------------------------------------------------------------------------

def register_native_filters(table: dict) -> None:
    def kind(name, type_url, fields, parse, per_route=None, per_route_fields=(), per_route_types=()):
        table[type_url] = HttpFilterKind(
            terminal=False, fields=fields, parse=lambda msg: _native(name, parse(msg)),
            per_route=per_route, per_route_fields=per_route_fields, per_route_types=per_route_types)

    kind(mf.LOCAL_RATELIMIT, LOCAL_RATELIMIT_TYPE, LOCAL_RATELIMIT_FIELDS, local_rate_limit,
         local_rate_limit, LOCAL_RATELIMIT_FIELDS, (LOCAL_RATELIMIT_TYPE,))
    kind(mf.FAULT, FAULT_TYPE, FAULT_FIELDS, http_fault, http_fault, FAULT_FIELDS, (FAULT_TYPE,))
    kind(mf.BUFFER, BUFFER_TYPE, ("max_request_bytes",), buffer, buffer_per_route, ("disabled", "buffer"),
         (BUFFER_PER_ROUTE_TYPE,))
    kind(mf.HEALTH_CHECK, HEALTH_CHECK_TYPE, ("pass_through_mode", "headers"), health_check)
    kind(mf.CORS, CORS_TYPE, (), cors, cors_policy, CORS_POLICY_FIELDS, (CORS_POLICY_TYPE,))
    kind(mf.HEADER_MUTATION, HEADER_MUTATION_TYPE, ("mutations",), header_mutation, header_mutation,
         ("mutations",), (HEADER_MUTATION_PER_ROUTE_TYPE,))


__all__ = ["register_native_filters", "LOCAL_RATELIMIT_TYPE", "CORS_TYPE", "CORS_POLICY_TYPE", "FAULT_TYPE",
           "BUFFER_TYPE", "BUFFER_PER_ROUTE_TYPE", "HEALTH_CHECK_TYPE", "HEADER_MUTATION_TYPE",
           "HEADER_MUTATION_PER_ROUTE_TYPE"]
