"""gRPC peers for the gRPC tests: a grpcio server with a proto-less service (bytes in, bytes
out: grpc.method_handlers_generic_handler, no protoc step) and a client channel to it,
both with the message-size limits raised so messages of several MiB pass.

Service "test.Svc":
  Unary         echoes the request; echoes the request metadata "x-echo" as initial
                metadata and sends the trailing metadata "x-trail: done" (a custom trailer)
  ClientStream  the concatenation of every request message
  ServerStream  the request is b"<n>:<size>": n messages of size bytes each
  Bidi          echoes every message as it comes
  Abort         ends the call with the status and details the request names
                (b"<code>:<details>") and the trailing metadata "x-why: aborted"
  Slow          waits (up to 30 s) until the call is cancelled or its deadline passes;
                records how it ended and the time the server had left when it started
                (context.time_remaining(): the grpc-timeout that reached it)
"""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Svc"
MAX_MESSAGE = 64 << 20
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
           ("grpc.max_receive_message_length", MAX_MESSAGE)]


def _ident(b: bytes) -> bytes:
    return b


class GrpcServer:
    """A grpcio server on 127.0.0.1:<ephemeral> (``port``), serving test.Svc; ``slow_calls``
    records each Slow call as {"remaining": seconds or None, "ended": "cancelled" |
    "deadline" | "timeout"}. ``slow_names``: more method names served by Slow (so routes
    with different timeouts can point at the same behaviour)."""

    def __init__(self, slow_names=()):
        self.slow_calls: list[dict] = []
        self.slow_started = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=OPTIONS,
                                  maximum_concurrent_rpcs=None)
        m = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary, _ident, _ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream, _ident, _ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream, _ident, _ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi, _ident, _ident),
            "Abort": grpc.unary_unary_rpc_method_handler(self._abort, _ident, _ident),
            "Slow": grpc.unary_unary_rpc_method_handler(self._slow, _ident, _ident),
        }
        for name in slow_names:
            m[name] = m["Slow"]
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, m),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0)

    def _unary(self, request, context):
        md = dict(context.invocation_metadata())
        if "x-echo" in md:
            context.send_initial_metadata((("x-echo", md["x-echo"]),))
        context.set_trailing_metadata((("x-trail", "done"),))
        return request

    def _client_stream(self, it, context):
        return b"".join(it)

    def _server_stream(self, request, context):
        n, size = map(int, request.split(b":"))
        for i in range(n):
            yield bytes([i % 256]) * size

    def _bidi(self, it, context):
        for msg in it:
            yield msg

    def _abort(self, request, context):
        code, details = request.split(b":", 1)
        context.set_trailing_metadata((("x-why", "aborted"),))
        context.abort(grpc.StatusCode[code.decode()], details.decode())

    def _slow(self, request, context):
        rec = {"remaining": context.time_remaining(), "ended": None}
        self.slow_calls.append(rec)
        done = threading.Event()
        context.add_callback(done.set)          # the call ended: cancelled, or its deadline
        self.slow_started.set()
        deadline = time.monotonic() + 30
        while not done.wait(0.01) and time.monotonic() < deadline:
            pass
        rec["ended"] = ("timeout" if not done.is_set() else
                        "deadline" if (context.time_remaining() or 1) <= 0 else "cancelled")
        return request


def channel(addr) -> grpc.Channel:
    """A plaintext channel (HTTP/2 with prior knowledge) to addr = (host, port), its own
    connection (a local subchannel pool), with the raised message limits."""
    return grpc.insecure_channel(f"{addr[0]}:{addr[1]}",
                                 options=OPTIONS + [("grpc.use_local_subchannel_pool", 1),
                                                    ("grpc.enable_retries", 0)])


def method(ch: grpc.Channel, name: str, kind: str = "unary_unary"):
    """A multi-callable for test.Svc/<name> of the given kind, bytes in and out."""
    return getattr(ch, kind)(f"/{SERVICE}/{name}", request_serializer=_ident,
                             response_deserializer=_ident)
