"""The HTTP configuration model: Envoy's http_connection_manager, its route configuration and
the native HTTP filters' configs, as plain Python objects.

An :class:`HttpConnectionManager` is a listener's handler::

    from fastproxy import Listener
    from fastproxy.http import (HttpConnectionManager, Route, RouteAction, RouteConfiguration,
                                RouteMatch, VirtualHost)

    routes = RouteConfiguration(virtual_hosts=[VirtualHost("all", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="backend"))])])
    Listener("web", HttpConnectionManager("ingress", routes), port=8000)

Field names follow Envoy's v3 protos. The Envoy YAML loader produces the same objects. The
filters themselves (PythonHttpFilter, NativeHttpFilter, CHttpFilter) are in ``fastproxy``;
the configs of the native ones are here (the buffer filter's is ``BufferFilter``, as in
``fastproxy``, so that it is not taken for ``fastproxy.Buffer``).
"""
from __future__ import annotations

from .native_filters import (BUFFER, CORS, FAULT, HEADER_MUTATION, HEALTH_CHECK, LOCAL_RATELIMIT,
                             NATIVE_FILTER_KINDS, BufferPerRoute, Cors, CorsPolicy, FaultAbort, FaultDelay,
                             FractionalPercent, HeaderMutation, HeaderMutationOp, HeaderMutationPerRoute,
                             HealthCheck, HTTPFault, LocalRateLimit, Mutations, TokenBucket)
from .native_filters import Buffer as BufferFilter
from .model import (AccessLog, DirectResponse, HeaderMatcher, HeaderMutations, HeaderValueOption,
                          Http2ProtocolOptions, HttpConnectionManager, Int64Range, InternalAddressConfig,
                          KeepaliveSettings, MaxStreamDuration, QueryParameterMatcher, Rds, RedirectAction,
                          RegexRewrite, Route, RouteAction, RouteConfiguration, RouteMatch,
                          SetCurrentClientCertDetails, StringMatch, UpgradeConfig, VirtualHost, WeightedCluster)

__all__ = [
    # the connection manager and its routes
    "HttpConnectionManager", "RouteConfiguration", "VirtualHost", "Route", "RouteMatch", "RouteAction",
    "RedirectAction", "DirectResponse", "WeightedCluster", "RegexRewrite", "HeaderMatcher",
    "QueryParameterMatcher", "StringMatch", "Int64Range", "HeaderValueOption", "HeaderMutations",
    "AccessLog", "UpgradeConfig", "InternalAddressConfig", "Rds", "SetCurrentClientCertDetails",
    "MaxStreamDuration",
    # HTTP/2 (a connection manager's and a cluster's http2_protocol_options)
    "Http2ProtocolOptions", "KeepaliveSettings",
    # the native HTTP filters: their names (NativeHttpFilter's kind) and configs
    "LOCAL_RATELIMIT", "CORS", "FAULT", "BUFFER", "HEALTH_CHECK", "HEADER_MUTATION", "NATIVE_FILTER_KINDS",
    "LocalRateLimit", "TokenBucket", "Cors", "CorsPolicy", "HTTPFault", "FaultDelay", "FaultAbort",
    "FractionalPercent", "BufferFilter", "BufferPerRoute", "HealthCheck", "HeaderMutation",
    "HeaderMutationPerRoute", "HeaderMutationOp", "Mutations",
]
