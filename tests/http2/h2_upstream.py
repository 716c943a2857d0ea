"""An HTTP/2 upstream server for the HTTP/2 tests (prior knowledge, h2c), built on the `h2`
package's conforming state machine: it records every request exactly as it arrived (header
fields in order, pseudo-headers included, body, trailers) and every RST_STREAM it receives
with its error code, and answers as the test says.

    up = H2Upstream(respond)        # respond(req) -> Reply, or None to never answer
    up.port, up.requests, up.resets, up.connections; up.close()
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from http_upstreams import ThreadedUpstream


@dataclass
class Request:
    stream_id: int
    headers: list                       # [(name, value)] as received, str
    body: bytes = b""
    trailers: list = field(default_factory=list)
    ended: bool = False

    def get(self, name: str):
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Reply:
    status: int = 200
    headers: tuple = ()
    body: bytes = b""
    trailers: tuple = ()


def default_reply(req: Request) -> Reply:
    """Echo the request's method, path and body length (text/plain)."""
    text = f"{req.get(':method')} {req.get(':path')} {len(req.body)}".encode()
    return Reply(200, (("content-type", "text/plain"),), text)


class H2Upstream(ThreadedUpstream):
    """A threaded HTTP/2 (h2c prior knowledge) server on 127.0.0.1:<ephemeral>. The reply
    goes out when a request has ended (respond returning None: never; the stream waits for
    the client's RST_STREAM, recorded in ``resets`` as {stream_id: error code})."""

    def __init__(self, respond=default_reply):
        self.respond = respond
        self.requests: list[Request] = []
        self.resets: list[tuple[int, int]] = []          # (stream id, error code) received
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        super().__init__(self.lock)

    def wait(self, pred, timeout: float = 5.0):
        """Wait until pred(self) holds (under the lock); its value, or AssertionError."""
        with self.cv:
            ok = self.cv.wait_for(lambda: pred(self), timeout)
        assert ok, "H2Upstream: condition not met in time"
        return ok

    def _serve(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
        conn.initiate_connection()
        live: dict[int, Request] = {}
        try:
            sock.sendall(conn.data_to_send())
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    return
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    sock.sendall(conn.data_to_send())
                    return
                for ev in events:
                    self._event(conn, live, ev)
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except OSError:
            return
        finally:
            sock.close()

    def _event(self, conn, live, ev):
        if isinstance(ev, h2.events.RequestReceived):
            live[ev.stream_id] = Request(ev.stream_id, list(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            live[ev.stream_id].body += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            live[ev.stream_id].trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamReset):
            with self.cv:
                self.resets.append((ev.stream_id, int(ev.error_code)))
                self.cv.notify_all()
        if isinstance(ev, h2.events.RequestReceived):
            with self.cv:
                self.requests.append(live[ev.stream_id])
                self.cv.notify_all()
        ended = getattr(ev, "stream_ended", None) is not None or isinstance(ev, h2.events.StreamEnded)
        if ended and ev.stream_id in live and not live[ev.stream_id].ended:
            req = live[ev.stream_id]
            req.ended = True
            with self.cv:
                self.cv.notify_all()
            reply = self.respond(req)
            if reply is None:
                return
            conn.send_headers(ev.stream_id, [(":status", str(reply.status)), *reply.headers],
                              end_stream=not reply.body and not reply.trailers)
            if reply.body:
                self._send_body(conn, ev.stream_id, reply.body, end=not reply.trailers)
            if reply.trailers:
                conn.send_headers(ev.stream_id, list(reply.trailers), end_stream=True)

    @staticmethod
    def _send_body(conn, sid, body, end):
        # Within the peer's windows only (the tests' bodies are small).
        step = conn.max_outbound_frame_size
        for i in range(0, len(body), step):
            conn.send_data(sid, body[i:i + step], end_stream=end and i + step >= len(body))
