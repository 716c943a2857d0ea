"""Route hash policies: Envoy's ``RouteAction.hash_policy``.

A route's policies make the request's hash, which the consistent-hash load balancers
(``RING_HASH``, ``MAGLEV``) turn into a host: requests with the same hash go to the same host
while the host set does not change. Each policy hashes one thing with xxHash64, as Envoy 1.40
does (core/http/hash_policy.pxi computes it on the worker, without the GIL):

* ``header``: the values of a request header (all of its lines, sorted, each after the optional
  ``regex_rewrite``); ``:authority`` (or ``host``), ``:path``, ``:method``, ``:scheme`` name
  the pseudo-headers.
* ``cookie``: the value of a request cookie. With a ``ttl`` a request without it gets one: its
  value (a hash of the connection's two addresses) is hashed and sent back on the response in
  ``Set-Cookie: <name>="<16 hex digits>"; Max-Age=<ttl>; Path=<path>; <attributes>; HttpOnly``
  (no Max-Age for a ttl of 0 s, no Path without a path).
* ``connection_properties.source_ip``: the client's address (Envoy's downstream remote
  address: x-forwarded-for decides it as for the access log's %DOWNSTREAM_REMOTE_ADDRESS%).
* ``query_parameter``: the first value of a query parameter (as sent, not decoded).
* ``filter_state``: the string a filter set on the stream under ``key`` (a Python filter's
  ``callbacks.filter_state[key] = "..."``, a C filter's ``api->filter_state_set``).

A policy that finds nothing is skipped; the hashes of the others are combined in order (the
previous result rotated left by one bit, xor the new hash). ``terminal``: once a hash exists
after this policy, the later ones are not evaluated. No hash at all: the balancer picks at
random. Only hash-based balancers compute it (a cookie is generated only for them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..validation import boolean, each, fail, seconds, string, typed

__all__ = ["HeaderHash", "CookieAttribute", "CookieHash", "ConnectionPropertiesHash", "QueryParameterHash",
           "FilterStateHash", "HashPolicy", "HASH_POLICY_KINDS", "MAX_GENERATED_COOKIES", "validate_hash_policies"]

# The policy specifiers (Envoy's oneof policy_specifier): exactly one is set.
HASH_POLICY_KINDS = ("header", "cookie", "connection_properties", "query_parameter", "filter_state")
# Cookie policies with a ttl (the ones that may send a cookie) on one route: each stream keeps
# one bit per such policy until its response head.
MAX_GENERATED_COOKIES = 64
# Envoy's limit on a cookie attribute's name and value.
MAX_ATTRIBUTE_BYTES = 16384


def _no_ctl(value: str, path: str, what: str) -> None:
    """Envoy's HTTP_HEADER_NAME / HTTP_HEADER_VALUE (non-strict) rules: no NUL, CR or LF.
    (Envoy does not check a cookie's name and path; fastproxy does, since both go into the
    Set-Cookie field it writes.)"""
    if any(c in value for c in "\0\r\n"):
        fail(path, f"{what} must not contain NUL, CR or LF")


@dataclass
class HeaderHash:
    """Hash the request header ``header_name`` (lower-cased; all of its values)."""

    header_name: str
    # a fastproxy.http.RegexRewrite (not imported: fastproxy.http.model checks routes with
    # this module, so importing it back would make a cycle)
    regex_rewrite: Optional[Any] = None

    def validate(self, path: str) -> None:
        _no_ctl(string(self.header_name, path + ".header_name", non_empty=True), path + ".header_name",
                "a header name")
        if self.regex_rewrite is not None:
            rp = path + ".regex_rewrite"
            if type(self.regex_rewrite).__name__ != "RegexRewrite":
                fail(rp, f"expected a fastproxy.http.RegexRewrite, got {type(self.regex_rewrite).__name__}")
            self.regex_rewrite.validate(rp)


@dataclass
class CookieAttribute:
    """An attribute written into a generated cookie: ``; name=value`` (``; name`` if empty)."""

    name: str
    value: str = ""

    def validate(self, path: str) -> None:
        name = string(self.name, path + ".name", non_empty=True)
        value = string(self.value, path + ".value")
        _no_ctl(name, path + ".name", "a cookie attribute name")
        _no_ctl(value, path + ".value", "a cookie attribute value")
        for text, where in ((name, ".name"), (value, ".value")):
            if len(text.encode("utf-8", "surrogateescape")) > MAX_ATTRIBUTE_BYTES:
                fail(path + where, f"must be at most {MAX_ATTRIBUTE_BYTES} bytes")


@dataclass
class CookieHash:
    """Hash the request cookie ``name``. ``ttl`` (seconds; None: never generate one): a request
    without the cookie gets one, Max-Age the ttl's whole seconds (0: a session cookie)."""

    name: str
    ttl: Optional[float] = None
    path: str = ""
    attributes: List[CookieAttribute] = field(default_factory=list)

    def validate(self, path: str) -> None:
        _no_ctl(string(self.name, path + ".name", non_empty=True), path + ".name", "a cookie name")
        _no_ctl(string(self.path, path + ".path"), path + ".path", "a cookie path")
        seconds(self.ttl, path + ".ttl")        # (Envoy refuses a negative one too)
        for attr, ap in each(self.attributes, path + ".attributes", CookieAttribute):
            attr.validate(ap)


@dataclass
class ConnectionPropertiesHash:
    """Hash the client's address (``source_ip``; false: the policy does nothing)."""

    source_ip: bool = False

    def validate(self, path: str) -> None:
        boolean(self.source_ip, path + ".source_ip")


@dataclass
class QueryParameterHash:
    """Hash the first value of the query parameter ``name`` (exact, case-sensitive name)."""

    name: str

    def validate(self, path: str) -> None:
        string(self.name, path + ".name", non_empty=True)


@dataclass
class FilterStateHash:
    """Hash the string a filter set on the stream under ``key``."""

    key: str

    def validate(self, path: str) -> None:
        string(self.key, path + ".key", non_empty=True)


@dataclass
class HashPolicy:
    """route.v3.RouteAction.HashPolicy: exactly one of the kinds, and ``terminal``."""

    header: Optional[HeaderHash] = None
    cookie: Optional[CookieHash] = None
    connection_properties: Optional[ConnectionPropertiesHash] = None
    query_parameter: Optional[QueryParameterHash] = None
    filter_state: Optional[FilterStateHash] = None
    terminal: bool = False

    @property
    def kind(self) -> Optional[str]:
        """The kind that is set (None if none is)."""
        return next((k for k in HASH_POLICY_KINDS if getattr(self, k) is not None), None)

    def validate(self, path: str) -> None:
        kinds = [k for k in HASH_POLICY_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            fail(path, f"exactly one of {', '.join(HASH_POLICY_KINDS)} must be set"
                       + (f" (got {', '.join(kinds)})" if kinds else ""))
        boolean(self.terminal, path + ".terminal")
        classes = {"header": HeaderHash, "cookie": CookieHash, "connection_properties": ConnectionPropertiesHash,
                   "query_parameter": QueryParameterHash, "filter_state": FilterStateHash}
        kind = kinds[0]
        typed(getattr(self, kind), classes[kind], f"{path}.{kind}").validate(f"{path}.{kind}")


def validate_hash_policies(policies: list, path: str) -> None:
    """Check a route action's ``hash_policy`` list (``path``: the list's path)."""
    generated = 0
    for policy, pp in each(policies, path, HashPolicy):
        policy.validate(pp)
        if policy.cookie is not None and policy.cookie.ttl is not None:
            generated += 1
            if generated > MAX_GENERATED_COOKIES:
                fail(pp + ".cookie.ttl", f"at most {MAX_GENERATED_COOKIES} cookie policies with a ttl "
                                         "on one route (fastproxy's limit)")
