"""fastproxy: an Envoy-class proxy engine you can import.

The data plane is compiled (fastproxy._core) and runs on worker threads without the GIL;
this package is the control surface: config objects, Envoy YAML loading, the Proxy.
The HTTP model (connection manager, routes, native filter configs) is ``fastproxy.http``.
"""
from .errors import ConfigError, FastProxyError, ListenerBindError
from .filters import FilterStatus, NetworkFilter
from .model import Admin, Bootstrap, Cluster, Endpoint, Listener, TcpProxy
from ._core import Body, Buffer, Connection, Headers, HttpFilterCallbacks, StreamInfo
from .http_filter import CHttpFilter, HttpFilter, NativeHttpFilter, PythonHttpFilter, get_include, register_http_filter
from .model_filters import (Cors, CorsPolicy, FaultAbort, FaultDelay, FractionalPercent, HTTPFault, HealthCheck,
                            HeaderMutation, HeaderMutationOp, LocalRateLimit, Mutations, TokenBucket)
from .model_filters import Buffer as BufferFilter, BufferPerRoute
from .proxy import Proxy
from . import http
from .config import load_envoy, load_envoy_json, load_envoy_yaml

__version__ = "0.1.0"

__all__ = [
    "Admin", "Bootstrap", "Buffer", "Cluster", "ConfigError", "Connection", "Endpoint",
    "FastProxyError", "FilterStatus", "Listener", "ListenerBindError", "NetworkFilter", "Proxy", "TcpProxy",
    "load_envoy", "load_envoy_json", "load_envoy_yaml", "__version__",
    "Body", "CHttpFilter", "Headers", "HttpFilter", "HttpFilterCallbacks", "NativeHttpFilter",
    "PythonHttpFilter", "StreamInfo", "get_include", "register_http_filter",
    # native HTTP filter configs (fastproxy.model_filters; Buffer there is BufferFilter here)
    "BufferFilter", "BufferPerRoute", "Cors", "CorsPolicy", "FaultAbort", "FaultDelay", "FractionalPercent",
    "HTTPFault", "HealthCheck", "HeaderMutation", "HeaderMutationOp", "LocalRateLimit", "Mutations", "TokenBucket",
]
