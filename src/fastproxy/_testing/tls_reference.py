"""Pure-Python twins of the listener filter's C code (core/listener_filters.pxi), written
the other way round so that tests can compare the two on many inputs:

* ``parse_client_hello(data)``: what Envoy's tls_inspector makes of a client's first
  bytes, written as a reader of TLS records and of the ClientHello fields
  (RFC 8446 section 4.1.2, RFC 6066 section 3, RFC 7301 section 3.1) with the checks
  BoringSSL makes before Envoy's servername callback.
* ``FilterChainTree``: Envoy's FilterChainManagerImpl as nested maps (destination port ->
  destination IP -> server name -> transport protocol -> application protocol -> source
  type -> source IP -> source port -> chain), built from FilterChainMatch models and
  walked for a connection. The core filters candidates level by level instead.

Neither is used by the proxy.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

MAX_RECORD = 16384
MAX_HELLO_BODY = 16384
MAX_HOST_NAME = 255


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> Optional[bytes]:
        if self.left() < n:
            return None
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> Optional[int]:
        b = self.take(1)
        return None if b is None else b[0]

    def u16(self) -> Optional[int]:
        b = self.take(2)
        return None if b is None else int.from_bytes(b, "big")

    def vec(self, width: int) -> Optional[bytes]:
        n = self.u8() if width == 1 else self.u16()
        return None if n is None else self.take(n)


MAX_CLIENT_HELLO = 65536     # Envoy's max_client_hello_size


def parse_client_hello(data: bytes) -> tuple:
    """("more",), ("too_large",) (it cannot end within MAX_CLIENT_HELLO bytes), ("not_tls",)
    or ("tls", server name or None, [ALPN names] or None)."""
    message = b""
    rest = data
    while True:
        if not rest:
            return ("more",)
        if rest[0] != 22:                       # handshake
            return ("not_tls",)
        if len(rest) < 2:
            return ("more",)
        if rest[1] != 3:                        # TLS 1.x record version major
            return ("not_tls",)
        if len(rest) < 5:
            return ("more",)
        length = int.from_bytes(rest[3:5], "big")
        if length > MAX_RECORD:
            return ("not_tls",)
        start = len(data) - len(rest)           # where this record begins
        if len(rest) < 5 + length:
            return ("too_large",) if start + 5 + length > MAX_CLIENT_HELLO else ("more",)
        message += rest[5:5 + length]
        rest = rest[5 + length:]
        if len(message) < 4:
            continue
        if message[0] != 1:                     # client_hello
            return ("not_tls",)
        body_len = int.from_bytes(message[1:4], "big")
        if body_len > MAX_HELLO_BODY:
            return ("not_tls",)
        if len(message) < 4 + body_len:
            # what is missing needs one more record header at least
            if len(data) - len(rest) + 5 + (4 + body_len - len(message)) > MAX_CLIENT_HELLO:
                return ("too_large",)
            continue
        if len(message) > 4 + body_len:         # more handshake data in the hello's record
            return ("not_tls",)
        return _client_hello(message[4:])


def _client_hello(body: bytes) -> tuple:
    r = _Reader(body)
    legacy_version = r.u16()
    if legacy_version is None or r.take(32) is None:
        return ("not_tls",)
    session_id = r.vec(1)
    if session_id is None or len(session_id) > 32:
        return ("not_tls",)
    suites = r.vec(2)
    if suites is None or len(suites) < 2 or len(suites) % 2:
        return ("not_tls",)
    compression = r.vec(1)
    if not compression:
        return ("not_tls",)
    extensions: dict = {}
    if r.left():
        block = r.vec(2)
        if block is None or r.left():
            return ("not_tls",)
        e = _Reader(block)
        while e.left():
            kind, content = e.u16(), e.vec(2)
            if kind is None or content is None or kind in extensions:
                return ("not_tls",)
            extensions[kind] = content
    sni = None
    if 0 in extensions:
        s = _Reader(extensions[0])
        names = s.vec(2)
        if names is None or s.left():
            return ("not_tls",)
        n = _Reader(names)
        name_type, host = n.u8(), n.vec(2)
        if name_type != 0 or host is None or n.left() or not host or len(host) > MAX_HOST_NAME \
                or b"\0" in host:
            return ("not_tls",)
        sni = host
    alpn = None
    if 16 in extensions:
        a = _Reader(extensions[16])
        names = a.vec(2)
        if names is not None and not a.left() and len(names) >= 2:
            protos, p = [], _Reader(names)
            while p.left():
                name = p.vec(1)
                if not name:
                    protos = None
                    break
                protos.append(name)
            alpn = protos
    if 43 in extensions:
        v = _Reader(extensions[43])
        listed = v.vec(1)
        if listed is None or v.left() or len(listed) < 2 or len(listed) % 2:
            return ("not_tls",)
        versions = [int.from_bytes(listed[i:i + 2], "big") for i in range(0, len(listed), 2)]
        ok = any(0x0301 <= x <= 0x0304 for x in versions)
    else:
        ok = legacy_version >= 0x0301
    return ("tls", sni, alpn) if ok else ("not_tls",)


# ---- Envoy's filter chain tree ----

class DuplicateMatch(ValueError):
    """Two chains claim the same combination (Envoy: "multiple filter chains with the
    same matching rules are defined")."""


_ANY_V4 = ipaddress.ip_network("0.0.0.0/0")
_ANY_V6 = ipaddress.ip_network("::/0")


def _nets(ranges) -> list:
    return [ipaddress.ip_network(r, strict=False) for r in ranges] or [_ANY_V4, _ANY_V6]


class FilterChainTree:
    """Envoy's nested maps of filter chain matches; ``find`` returns the index of the
    matching chain or None."""

    def __init__(self, matches: list):
        self.root: dict = {}
        for index, m in enumerate(matches):
            for port in (m.destination_port or 0,):
                ips = self.root.setdefault(port, {})
                for net in _nets(m.prefix_ranges):
                    names = ips.setdefault(net, {})
                    for name in [n.lower() for n in m.server_names] or [""]:
                        key = name[1:] if name.startswith("*.") else name
                        transports = names.setdefault(key, {})
                        protos = transports.setdefault(m.transport_protocol, {})
                        for proto in list(m.application_protocols) or [""]:
                            types = protos.setdefault(proto, {})
                            srcs = types.setdefault(m.source_type, {})
                            for src in _nets(m.source_prefix_ranges):
                                sports = srcs.setdefault(src, {})
                                for sport in list(m.source_ports) or [0]:
                                    if sport in sports and sports[sport] != index:
                                        raise DuplicateMatch(f"chains {sports[sport]} and {index}")
                                    sports[sport] = index

    @staticmethod
    def _longest(nets: dict, ip):
        best = None
        for net in nets:
            if net.version == ip.version and ip in net and (best is None or net.prefixlen > best.prefixlen):
                best = net
        return None if best is None else nets[best]

    def find(self, local: tuple, remote: tuple, transport: str, server_name: str = "",
             application_protocols=()) -> Optional[int]:
        application_protocols = [p.decode() if isinstance(p, bytes) else p for p in application_protocols]
        lip, lport = ipaddress.ip_address(local[0]), local[1]
        rip, rport = ipaddress.ip_address(remote[0]), remote[1]
        if lport in self.root:
            return self._dest_ip(self.root[lport], lip, rip, rport, transport, server_name,
                                 application_protocols)
        if 0 in self.root:
            return self._dest_ip(self.root[0], lip, rip, rport, transport, server_name,
                                 application_protocols)
        return None

    def _dest_ip(self, ips, lip, rip, rport, transport, server_name, protos):
        names = self._longest(ips, lip)
        if names is None:
            return None
        server_name = server_name.lower()
        if server_name in names:
            transports = names[server_name]
        else:
            transports = None
            pos = server_name.find(".", 1)
            while transports is None and pos != -1 and pos < len(server_name) - 1:
                transports = names.get(server_name[pos:])
                pos = server_name.find(".", pos + 1)
            if transports is None:
                transports = names.get("")
        if transports is None:
            return None
        by_proto = transports.get(transport, transports.get(""))
        if by_proto is None:
            return None
        types = next((by_proto[p] for p in protos if p in by_proto), by_proto.get(""))
        if types is None:
            return None
        local = rip.is_loopback or rip == lip
        srcs = types.get("SAME_IP_OR_LOOPBACK" if local else "EXTERNAL", types.get("ANY"))
        if srcs is None:
            return None
        sports = self._longest(srcs, rip)
        if sports is None:
            return None
        return sports.get(rport, sports.get(0))
