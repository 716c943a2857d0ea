"""A control plane for the xDS tests: a real gRPC server (grpcio) speaking Envoy's Aggregated
Discovery Service, state of the world (StreamAggregatedResources) and incremental
(DeltaAggregatedResources), on an ephemeral loopback port.

The test scripts it: `set(type, resources, version)` replaces what the server holds for a
type and pushes it to every open stream; `drop_streams()` ends them (a stream failure);
`requests` records every request a client sent (type URL, version_info, response_nonce,
error_detail, resource names, node), so a test can assert the ACK/NACK sequence. The same
server drives real Envoy 1.40 and fastproxy, so their sequences can be compared.

Resources are given as dicts in Envoy's JSON shape (the YAML of a bootstrap's
static_resources, as Python values); they are packed into the protobuf types of
data-plane-api (xds-protos) by their type URL."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, json_format

# The message modules must be imported for their types to be known by URL (Any packing,
# typed_config inside listeners and clusters).
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (typed_config)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401  (SDS; transport_socket)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
NAMED = (ROUTE, ENDPOINT, SECRET)  # subscribed by name (an empty list: none); the others: wildcard
MESSAGES = {CLUSTER: cluster_pb2.Cluster, LISTENER: listener_pb2.Listener,
            ROUTE: route_pb2.RouteConfiguration, ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            SECRET: secret_pb2.Secret}


def pack(type_url: str, resource: dict) -> any_pb2.Any:
    """A resource in Envoy's JSON shape as the Any a DiscoveryResponse carries."""
    msg = json_format.ParseDict(resource, MESSAGES[type_url](), ignore_unknown_fields=False)
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def resource_name(type_url: str, resource: dict) -> str:
    return resource["cluster_name"] if type_url == ENDPOINT else resource["name"]


@dataclass
class Request:
    """One request a client sent on a stream, as the test reads it."""
    stream: int
    delta: bool
    type_url: str
    version_info: str
    response_nonce: str
    error_detail: str               # "" unless the request is a NACK
    resource_names: list[str]       # SotW: subscribed names; delta: subscribe list
    unsubscribe: list[str] = field(default_factory=list)
    node_id: str = ""
    initial_versions: dict[str, str] = field(default_factory=dict)   # delta, on a new stream
    at: float = 0.0                 # time.monotonic() when it arrived
    service: str = "ads"            # the stream's service: "ads", or the type's own ("cds", "lds", ...)

    @property
    def nack(self) -> bool:
        return bool(self.error_detail)


class _Stream:
    def __init__(self, sid: int, delta: bool, service: str):
        self.id = sid
        self.delta = delta
        self.service = service
        self.outbox: queue.Queue = queue.Queue()
        self.subscribed: dict[str, set[str] | None] = {}    # type -> names (None: wildcard)
        self.sent_versions: dict[str, dict[str, str]] = {}   # delta: type -> name -> version the
                                                             #   client ACKed holding
        self.pending: dict[str, tuple[str, dict[str, str]]] = {}   # nonce -> (type, what it holds
                                                                     #   if it ACKs that response)
        self.closed = threading.Event()


class ControlPlane(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """See the module docstring. Use as a context manager, or start() / stop()."""

    def __init__(self):
        self._lock = threading.Lock()
        self._resources: dict[str, dict[str, dict]] = {}      # type -> name -> resource
        self._versions: dict[str, str] = {}                   # type -> version_info
        self._streams: list[_Stream] = []
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self.requests: list[Request] = []
        self.responses: list[tuple[int, str, str, str]] = []   # (stream, type, version, nonce)
        self.sent_at: dict[str, float] = {}     # nonce -> time.monotonic() it went to grpc
        self._changed = threading.Condition(self._lock)
        self._server = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ControlPlane":
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        # The per-type services (a client's api_config_source): the same server, one stream per type.
        for add, servicer in ((lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server,
                               _TypeService(self, "lds", "StreamListeners", "DeltaListeners")),
                              (cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server,
                               _TypeService(self, "cds", "StreamClusters", "DeltaClusters")),
                              (rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server,
                               _TypeService(self, "rds", "StreamRoutes", "DeltaRoutes")),
                              (eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server,
                               _TypeService(self, "eds", "StreamEndpoints", "DeltaEndpoints")),
                              (sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server,
                               _TypeService(self, "sds", "StreamSecrets", "DeltaSecrets"))):
            add(servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self):
        self.drop_streams()
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ scripting
    def set(self, type_url: str, resources: list[dict], version: str):
        """Hold `resources` (the whole set) for `type_url` at `version`, and push it to every
        stream that subscribed to the type. Each resource is packed first, so a dict the
        protobuf types refuse fails here, in the test, not in the client."""
        for r in resources:
            pack(type_url, r)
        with self._lock:
            self._resources[type_url] = {resource_name(type_url, r): r for r in resources}
            self._versions[type_url] = version
            streams = list(self._streams)
        for s in streams:
            if type_url in s.subscribed and s.subscribed[type_url] != set():
                self._push(s, type_url)

    def send_unrequested(self, type_url: str, resources: list[dict], version: str):
        """Push a response of `type_url` to every stream, subscribed or not (a server that
        sends what nobody asked for)."""
        with self._lock:
            self._resources[type_url] = {resource_name(type_url, r): r for r in resources}
            self._versions[type_url] = version
            streams = list(self._streams)
        for s in streams:
            self._push(s, type_url)

    def drop_streams(self):
        """End every open stream (the client sees the stream fail and reconnects)."""
        with self._lock:
            streams, self._streams = self._streams, []
        for s in streams:
            s.closed.set()
            s.outbox.put(None)

    def wait_for(self, pred, timeout=20.0) -> list[Request]:
        """Wait until pred(requests) is true; returns the requests."""
        with self._changed:
            if not self._changed.wait_for(lambda: pred(self.requests), timeout=timeout):
                raise AssertionError(f"control plane: condition not met in {timeout}s; requests: {self.requests}")
            return list(self.requests)

    def wait_answered(self, timeout=20.0) -> list[Request]:
        """Wait until every response sent so far has been ACKed or NACKed."""
        def answered(rs):       # (called with the lock held, by wait_for)
            return {n for _, _, _, n in self.responses} <= {r.response_nonce for r in rs}
        return self.wait_for(answered, timeout)

    def acks(self, type_url: str) -> list[Request]:
        """The requests of a type that answer a response (ACK or NACK), in order."""
        with self._lock:
            return [r for r in self.requests if r.type_url == type_url and r.response_nonce]

    # ------------------------------------------------------------------ responses
    def _push(self, s: _Stream, type_url: str):
        with self._lock:
            held = dict(self._resources.get(type_url, {}))
            version = self._versions.get(type_url, "")
            names = s.subscribed.get(type_url)
            nonce = str(next(self._nonces))
        if names is not None and type_url in NAMED:
            held = {n: r for n, r in held.items() if n in names}
        if s.delta:
            # The difference from what the client ACKed holding (a NACKed response changed
            # nothing on its side, so the next one is computed from the same state).
            sent = s.sent_versions.setdefault(type_url, {})
            after = dict(sent)
            resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce,
                                                        system_version_info=version)
            for n, r in held.items():
                if sent.get(n) != version:
                    resp.resources.add(name=n, version=version, resource=pack(type_url, r))
                    after[n] = version
            for n in [n for n in sent if n not in held]:
                resp.removed_resources.append(n)
                del after[n]
            s.pending[nonce] = (type_url, after)
        else:
            resp = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce,
                                                   resources=[pack(type_url, r) for r in held.values()])
        with self._lock:
            self.responses.append((s.id, type_url, version, nonce))
        s.outbox.put(resp)

    def _record(self, s: _Stream, req, delta: bool):
        with self._changed:
            if delta:
                self.requests.append(Request(s.id, True, req.type_url, "", req.response_nonce,
                                             req.error_detail.message, list(req.resource_names_subscribe),
                                             list(req.resource_names_unsubscribe), req.node.id,
                                             dict(req.initial_resource_versions), time.monotonic(), s.service))
            else:
                self.requests.append(Request(s.id, False, req.type_url, req.version_info, req.response_nonce,
                                             req.error_detail.message, list(req.resource_names),
                                             node_id=req.node.id, at=time.monotonic(), service=s.service))
            self._changed.notify_all()

    def _serve(self, request_iterator, context, delta: bool, service: str = "ads"):
        s = _Stream(next(self._ids), delta, service)
        with self._lock:
            self._streams.append(s)

        def read():
            try:
                for req in request_iterator:
                    self._record(s, req, delta)
                    if delta and req.response_nonce in s.pending:
                        t, after = s.pending.pop(req.response_nonce)
                        if not req.error_detail.message:
                            s.sent_versions[t] = after
                    first = req.type_url not in s.subscribed
                    if delta:
                        names = s.subscribed.get(req.type_url) or set()
                        names |= set(req.resource_names_subscribe)
                        names -= set(req.resource_names_unsubscribe)
                        s.subscribed[req.type_url] = names if names or req.type_url in NAMED else None
                        if first and req.initial_resource_versions:
                            s.sent_versions[req.type_url] = dict(req.initial_resource_versions)
                        changed = first or req.resource_names_subscribe
                    else:
                        old = s.subscribed.get(req.type_url)
                        s.subscribed[req.type_url] = set(req.resource_names) \
                            if req.resource_names or req.type_url in NAMED else None
                        changed = first or (old != s.subscribed[req.type_url] and not req.error_detail.message)
                    if changed and req.type_url in self._resources and s.subscribed[req.type_url] != set():
                        self._push(s, req.type_url)
            except grpc.RpcError:
                pass
            finally:
                s.closed.set()
                s.outbox.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            resp = s.outbox.get()
            if resp is None:
                return
            self.sent_at[resp.nonce] = time.monotonic()
            yield resp

    def StreamAggregatedResources(self, request_iterator, context):
        return self._serve(request_iterator, context, delta=False)

    def DeltaAggregatedResources(self, request_iterator, context):
        return self._serve(request_iterator, context, delta=True)


class _TypeService:
    """One type's own discovery service (e.g. ListenerDiscoveryService: StreamListeners,
    DeltaListeners) on the control plane's streams."""

    def __init__(self, cp: ControlPlane, name: str, sotw: str, delta: str):
        setattr(self, sotw, lambda it, ctx: cp._serve(it, ctx, delta=False, service=name))
        setattr(self, delta, lambda it, ctx: cp._serve(it, ctx, delta=True, service=name))
        # (REST-style Fetch*: not served; grpcio wants the method to exist.)
        setattr(self, sotw.replace("Stream", "Fetch"), lambda req, ctx: ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "no"))
