"""The xDS transport: one Aggregated Discovery Service stream to a control plane, state of
the world (StreamAggregatedResources) or incremental (DeltaAggregatedResources), as Envoy
speaks it. It knows nothing of listeners or clusters: each response's resources are handed,
as dicts in Envoy's JSON shape, to an `apply` callback that validates and installs them and
returns None (the client ACKs) or the reason it refused them (the client NACKs with that
reason as error_detail, and keeps the version it had).

Protocol, per type URL (Envoy's behaviour, pinned down by tests/xds/test_ads_reference_envoy.py):
* The first request of each type names no version and no nonce; the node goes on the first
  message of the stream only (set_node_on_first_message_only).
* Each response is answered: an ACK carries the response's version_info and nonce; a NACK
  carries the version the client still has, the response's nonce and error_detail.
* State of the world: a response holds every resource of the type (a listener or cluster
  missing from it is removed, which is `apply`'s business). Delta: responses carry changed
  resources and removed_resources; the client keeps the version of each resource it holds
  and, on a new stream, tells them in initial_resource_versions.
* The stream fails (the control plane restarts, the network drops): reconnect after a
  jittered exponential back-off, re-request every type with what it holds; whatever was
  applied keeps serving meanwhile.

Threads: grpcio runs the stream on its own threads; `apply` is called on the client's reader
thread, one response at a time (the caller's hot-update path posts to the workers)."""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .proto_dict import ASSIGNMENT as ASSIGNMENT_MESSAGE, CLUSTER as CLUSTER_MESSAGE, resource_dict

log = logging.getLogger("fastproxy.xds")

ApplyFn = Callable[[str, list, str, list], Optional[str]]   # (type_url, resources, version, removed)


# The messages a received resource may hold, by module: the resources themselves and every
# typed_config fastproxy reads (the loader's own list). A resource's Any is unpacked through
# protobuf's descriptor pool, which knows a type only once its module is imported; a type
# outside this list is refused (NACKed) with its name, as the loader would refuse it.
MESSAGE_MODULES = (
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.filters.http.fault.v3.fault_pb2",
    "envoy.extensions.filters.http.cors.v3.cors_pb2",
    "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.extensions.filters.http.health_check.v3.health_check_pb2",
    "envoy.extensions.filters.http.buffer.v3.buffer_pb2",
    "envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
    "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
    "xds.type.v3.typed_struct_pb2",
    "udpa.type.v1.typed_struct_pb2",
)


def _fast_read_classes() -> dict:
    """The generated classes xds/proto_dict.py reads endpoints from directly."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    return {CLUSTER_MESSAGE: cluster_pb2.Cluster, ASSIGNMENT_MESSAGE: endpoint_pb2.ClusterLoadAssignment}


def _require_grpc():
    import importlib
    try:
        import grpc  # noqa: F401
        from envoy.service.discovery.v3 import ads_pb2_grpc  # noqa: F401
        for name in MESSAGE_MODULES:
            importlib.import_module(name)
    except ImportError as e:            # pragma: no cover (the test environment has both)
        raise ImportError("xDS needs grpcio and xds-protos: pip install 'fastproxy[xds]'") from e


# Where each type is served: the aggregated service (ADS, every type on one stream) or the
# type's own (api_config_source): (module, stub, state-of-the-world method, delta method).
ADS_SERVICE = ("envoy.service.discovery.v3.ads_pb2_grpc", "AggregatedDiscoveryServiceStub",
               "StreamAggregatedResources", "DeltaAggregatedResources")
TYPE_SERVICES = {
    "type.googleapis.com/envoy.config.listener.v3.Listener":
        ("envoy.service.listener.v3.lds_pb2_grpc", "ListenerDiscoveryServiceStub", "StreamListeners", "DeltaListeners"),
    "type.googleapis.com/envoy.config.cluster.v3.Cluster":
        ("envoy.service.cluster.v3.cds_pb2_grpc", "ClusterDiscoveryServiceStub", "StreamClusters", "DeltaClusters"),
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration":
        ("envoy.service.route.v3.rds_pb2_grpc", "RouteDiscoveryServiceStub", "StreamRoutes", "DeltaRoutes"),
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment":
        ("envoy.service.endpoint.v3.eds_pb2_grpc", "EndpointDiscoveryServiceStub", "StreamEndpoints", "DeltaEndpoints"),
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret":
        ("envoy.service.secret.v3.sds_pb2_grpc", "SecretDiscoveryServiceStub", "StreamSecrets", "DeltaSecrets"),
}


@dataclass
class TypeState:
    """What the client holds of one resource type."""
    version: str = ""                   # the last version applied (ACKed)
    nonce: str = ""                     # the last response's nonce
    names: Optional[set] = None         # subscribed names (None: wildcard, every resource)
    sent: set = field(default_factory=set)          # delta: names subscribed on this stream
    resource_versions: dict = field(default_factory=dict)   # delta: name -> version held
    attempts: int = 0                   # responses received (update_attempt)
    successes: int = 0                  # ... applied (update_success)
    rejections: int = 0                 # ... refused (update_rejected)
    responded: threading.Event = field(default_factory=threading.Event)    # a first response came


class AdsClient:
    """One stream to `target` ("host:port"): the aggregated service (ADS) for `type_urls`
    (wildcard subscriptions, in that order: Envoy asks for clusters before listeners), or,
    with `service` (a TYPE_SERVICES entry), the one type's own discovery service. More
    types and names are subscribed with subscribe(). `node` is a dict in Envoy's JSON
    shape (id, cluster, metadata, locality)."""

    def __init__(self, target: str, node: dict, type_urls: list, apply: ApplyFn, *,
                 delta: bool = False, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 service: tuple = ADS_SERVICE, max_receive_message_length: int = 0):
        _require_grpc()
        self.max_receive_message_length = max_receive_message_length     # 0: no limit
        self.target = target
        self.node = node
        self.delta = delta
        self.apply = apply
        self.service = service
        self.types: dict = {}
        for t in type_urls:
            self.types[t] = TypeState()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connected = threading.Event()      # control_plane.connected_state
        self.streams = 0                        # streams opened
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._channel = None
        self._call = None
        self._lock = threading.RLock()
        self._out: Optional[queue.Queue] = None     # the open stream's requests
        self._node_sent = False                     # ... its first one carried the node

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "AdsClient":
        self._thread = threading.Thread(target=self._run, name="fastproxy-xds", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: bool = True):
        """End the stream. ``wait``: join the client's thread (not from a thread that holds
        what its last response's `apply` may be waiting for)."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if not wait:
            return                      # (the thread closes nothing more; the channel is dropped with it)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._channel is not None:
            self._channel.close()

    def wait_initial(self, timeout: float) -> bool:
        """Every type subscribed so far has had a response (applied or not) within
        `timeout` seconds."""
        end = time.monotonic() + timeout
        return all(st.responded.wait(max(0.0, end - time.monotonic())) for st in list(self.types.values()))

    def pending_requests(self) -> int:
        """Requests waiting to go out on the stream (Envoy's control_plane.pending_requests)."""
        out = self._out
        return out.qsize() if out is not None else 0

    # ------------------------------------------------------------------ subscriptions
    def subscribe(self, type_url: str, names: Optional[Any] = None) -> None:
        """Subscribe to `type_url`'s resources `names` (None: all of them, a wildcard), or
        change the names of a subscription: a request goes out at once on an open stream
        (when called from `apply`, before that response's ACK: as Envoy, which sends the
        EDS request a CDS response makes before the CDS ACK, and RDS's before LDS's)."""
        with self._lock:
            names = None if names is None else set(names)
            st = self.types.get(type_url)
            if st is None:
                st = self.types[type_url] = TypeState(names=names)
                req = self._first_request(type_url)
            elif st.names == names:
                return
            else:
                st.names = names
                if names is not None:           # what is no longer subscribed is forgotten
                    for n in [n for n in st.resource_versions if n not in names]:
                        del st.resource_versions[n]
                req = self._change_request(type_url)
            if self._out is None:
                return                          # the next stream asks for it
            self._send(req)

    def _send(self, req) -> None:
        from google.protobuf import json_format
        if not self._node_sent:
            json_format.ParseDict(self.node, req.node)
            self._node_sent = True
        assert self._out is not None
        self._out.put(req)

    # ------------------------------------------------------------------ the stream
    def _requests(self, out: "queue.Queue"):
        while True:
            req = out.get()
            if req is None:
                return
            yield req

    def _first_request(self, type_url: str):
        """A type's first request on a stream: what it subscribes to, and what it holds."""
        from envoy.service.discovery.v3 import discovery_pb2
        st = self.types[type_url]
        names = sorted(st.names) if st.names is not None else []
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names)
            req.initial_resource_versions.update(st.resource_versions)
            st.sent = set(names)
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=st.version,
                                                 resource_names=names)
        return req

    def _change_request(self, type_url: str):
        """The request that changes a subscription's names on an open stream."""
        from envoy.service.discovery.v3 import discovery_pb2
        st = self.types[type_url]
        names = st.names if st.names is not None else set()
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=sorted(names - st.sent),
                resource_names_unsubscribe=sorted(st.sent - names))
            st.sent = set(names)
            return req
        return discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=st.version,
                                              response_nonce=st.nonce, resource_names=sorted(names))

    def _run(self):
        import grpc
        import importlib
        failures = 0
        module, stub_name, sotw, delta = self.service
        limit = self.max_receive_message_length or -1       # grpcio: -1 is no limit
        self._channel = grpc.insecure_channel(self.target, options=[("grpc.max_receive_message_length", limit)])
        stub = getattr(importlib.import_module(module), stub_name)(self._channel)
        while not self._stop.is_set():
            out: queue.Queue = queue.Queue()
            with self._lock:
                self._out, self._node_sent = out, False
                for t in list(self.types):
                    st = self.types[t]
                    st.nonce = ""
                    self._send(self._first_request(t))
            method = getattr(stub, delta if self.delta else sotw)
            self._call = method(self._requests(out))
            self.streams += 1
            try:
                for resp in self._call:
                    self.connected.set()
                    failures = 0
                    req = self._answer(resp)
                    if req is not None:
                        out.put(req)
            except grpc.RpcError as e:
                if not self._stop.is_set():
                    log.warning("xds: stream to %s failed: %s", self.target, e.code())
            finally:
                with self._lock:
                    self._out = None
                out.put(None)
                self.connected.clear()
            if self._stop.is_set():
                return
            # Envoy's back-off: exponential from the base, capped, fully jittered.
            failures += 1
            delay = random.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** (failures - 1))))
            self._stop.wait(delay)

    def _answer(self, resp):
        """Apply one response and build its ACK or NACK (None: a type not subscribed to)."""
        from envoy.service.discovery.v3 import discovery_pb2
        type_url = resp.type_url
        st = self.types.get(type_url)
        if st is None:
            # Nobody subscribed to it: Envoy ignores such a response (no ACK, no NACK).
            log.warning("xds: ignoring a response of type %s, which is not subscribed to", type_url)
            return None
        st.attempts += 1
        st.nonce = resp.nonce
        st.responded.set()              # (before apply: what it subscribes may depend on it)

        def as_dict(any_msg):
            return resource_dict(any_msg, _fast_read_classes())

        version = resp.system_version_info if self.delta else resp.version_info
        removed = list(resp.removed_resources) if self.delta else []
        error = None
        try:
            resources = [as_dict(r.resource if self.delta else r) for r in resp.resources]
        except (TypeError, ValueError) as e:
            # A type (a resource's, or a typed_config's inside it) this build cannot read.
            resources = []
            error = f"resources: cannot unpack: {e}"
        if error is None:
            try:
                error = self.apply(type_url, resources, version, removed)
            except Exception as e:      # a bug in apply must not end the stream: NACK it
                log.exception("xds: applying %s version %s failed", type_url, version)
                error = f"{type(e).__name__}: {e}"
        if error is None:
            st.successes += 1
            if self.delta:
                for r in resp.resources:
                    st.resource_versions[r.name] = r.version
                for n in removed:
                    st.resource_versions.pop(n, None)
            else:
                st.version = version
            log.info("xds: accepted %s version %s (%d resources, %d removed)", type_url, version,
                     len(resources), len(removed))
        else:
            st.rejections += 1
            log.warning("xds: rejected %s version %s: %s", type_url, version, error)
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=st.version,
                                                 response_nonce=resp.nonce,
                                                 resource_names=sorted(st.names) if st.names is not None else [])
        if error is not None:
            req.error_detail.code = 3   # INVALID_ARGUMENT, as Envoy sends
            req.error_detail.message = error
        return req
