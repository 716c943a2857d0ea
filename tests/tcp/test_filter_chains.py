"""Several filter chains per listener (Envoy's filter_chains, filter_chain_match,
default_filter_chain) and the tls_inspector listener filter: the ClientHello parser and the
chain matcher of core/listener_filters.pxi against their pure-Python twins
(fastproxy/_testing/tls_reference.py) on many inputs, then real connections: TLS
passthrough by SNI beside plaintext on one port, ALPN, addresses and ports, the default
chain, no match, the inspector's timeout, bad ClientHellos, the bound on pending
connections, the loader, and the same YAML through Envoy 1.40."""
from __future__ import annotations

import random
import socket
import ssl
import subprocess

import pytest

import fastproxy
from fastproxy import Cluster, Endpoint, Listener, TcpProxy, _core
from fastproxy._testing.tls_reference import DuplicateMatch, FilterChainTree, parse_client_hello
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError
from fastproxy.model import FilterChain, FilterChainMatch

from conftest import (find_envoy, free_port, listener_stat,
                      socket_address, start_envoy, stat, static_cluster, typed, wait_closed,
                      wait_for)
from upstreams import ThreadedServer

TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"


# --------------------------------------------------------------------------- ClientHellos

def client_hello(server_name=None, alpn=None, maximum=None) -> bytes:
    """The bytes Python's ssl sends first as a client (a real ClientHello)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def rerecord(hello: bytes, sizes) -> bytes:
    """The same handshake message split over records of the given payload sizes (cycled)."""
    assert hello[0] == 22
    message = hello[5:]
    out, i, k = b"", 0, 0
    while i < len(message):
        part = message[i:i + sizes[k % len(sizes)]]
        out += bytes([22, 3, 1]) + len(part).to_bytes(2, "big") + part
        i += len(part)
        k += 1
    return out


def hello_with(extensions: list) -> bytes:
    """A minimal ClientHello record with these (type, content) extensions."""
    ext = b"".join(t.to_bytes(2, "big") + len(c).to_bytes(2, "big") + c for t, c in extensions)
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + \
        len(ext).to_bytes(2, "big") + ext
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def big_hello(padding: int) -> bytes:
    """A ClientHello record with a padding extension (RFC 7685) of ``padding`` bytes."""
    return hello_with([(21, bytes(padding))])


def parse(data: bytes):
    got = _core._tls_hello_parse(data)
    assert got == parse_client_hello(data), data[:80]
    return got


def test_real_client_hellos_parse_with_their_sni_and_alpn():
    assert parse(client_hello("a.example.com")) == ("tls", b"a.example.com", None)
    assert parse(client_hello("b.example", ["h2", "http/1.1"])) == ("tls", b"b.example", [b"h2", b"http/1.1"])
    assert parse(client_hello(None, ["x"])) == ("tls", None, [b"x"])
    assert parse(big_hello(15000)) == ("tls", None, None)
    assert parse(big_hello(16384)) == ("not_tls",)          # a record over 16 KiB
    assert parse(client_hello("c.example", maximum=ssl.TLSVersion.TLSv1_2))[:2] == ("tls", b"c.example")
    # a ClientHello over several records (TLS allows it; Envoy's BoringSSL reads it)
    hello = client_hello("split.example", ["h2"])
    for sizes in ([1], [7, 3], [100], [len(hello)]):
        assert parse(rerecord(hello, sizes)) == ("tls", b"split.example", [b"h2"]), sizes


def test_extensions_each_once():
    many = [(t, b"") for t in range(100, 4100)]         # 16 KiB of empty extensions
    assert parse(hello_with(many)) == ("tls", None, None)
    assert parse(hello_with(many[:3000] + [(1000, b"")])) == ("not_tls",)
    sni = (0, b"\x00\x06\x00\x00\x03a.b")
    assert parse(hello_with([sni])) == ("tls", b"a.b", None)
    assert parse(hello_with([sni, sni])) == ("not_tls",)
    assert parse(hello_with([(0, b"\x00\x06\x01\x00\x03a.b")])) == ("not_tls",)    # not a host_name
    assert parse(hello_with([(16, b"\x00\x03\x00h2")])) == ("tls", None, None)       # an empty name
    assert parse(hello_with([(43, b"\x02\x03\x00")])) == ("not_tls",)                # SSL 3.0 only


def test_a_client_hello_that_cannot_end_within_64_kib_is_too_large():
    tiny = rerecord(big_hello(15000), [1])              # 6 bytes per byte of message: 90 KiB
    assert len(tiny) > 65536
    # known once what is left of the message cannot fit in one more record before 64 KiB
    assert parse(tiny[:60000]) == ("more",)
    assert parse(tiny[:61200]) == ("too_large",)
    # a record whose end would be past 64 KiB
    head = rerecord(big_hello(15000), [1])[:6 * 1000]
    assert parse(head + bytes([22, 3, 1, 0x3f, 0xff]) + bytes(100)) == ("more",)
    tail = rerecord(big_hello(15000), [1, 1, 1, 1, 12000, 1])
    assert parse(tail[:2000]) == ("more",)
    fits = rerecord(big_hello(9000), [1])               # about 54 KiB: may end in time
    assert parse(fits[:30000]) == ("more",) and parse(fits)[0] == "tls"


def test_every_truncation_of_a_client_hello_asks_for_more():
    hello = rerecord(client_hello("t.example", ["h2"]), [50])
    for n in range(len(hello)):
        assert parse(hello[:n]) == ("more",), n
    assert parse(hello)[0] == "tls"


def test_not_tls_is_told_from_the_first_bytes():
    for data in (b"GET / HTTP/1.1\r\n", b"\x80\x2e\x01\x03\x01", b"\x16\x02\x00", b"\x15\x03\x01\x00\x02",
                 b"\x16\x03\x01\x40\x01" + b"\0" * 10,             # a record over 16 KiB
                 b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"):         # a ServerHello first
        assert parse(data) == ("not_tls",), data


def _mutations(rng: random.Random, seeds: list, n: int):
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            if op == 0 and data:                    # flip a byte
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:                  # truncate
                del data[rng.randrange(len(data)):]
            elif op == 2:                           # insert junk
                at = rng.randrange(len(data) + 1)
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif data:                              # drop a span
                at = rng.randrange(len(data))
                del data[at:at + rng.randint(1, 16)]
        yield bytes(data)


def test_the_parser_agrees_with_its_reference_on_random_and_mangled_input():
    """A fuzz loop with a fixed seed: mutated real ClientHellos (flips, cuts, junk,
    holes) and random bytes behind a handshake record header."""
    rng = random.Random(14)
    seeds = [client_hello("a.example.com"), client_hello("b.example", ["h2", "http/1.1"]),
             client_hello(None), rerecord(client_hello("c.example", ["x"]), [9, 40])]
    seen = set()
    for data in _mutations(rng, seeds, 20000):
        seen.add(parse(data)[0])
    for _ in range(5000):
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        seen.add(parse(bytes([22, 3, 1]) + len(body).to_bytes(2, "big") + body)[0])
    assert {"more", "not_tls", "tls"} <= seen


# --------------------------------------------------------------------------- the matcher

def _random_match(rng: random.Random) -> FilterChainMatch:
    def some(pool, k=2):
        return tuple(rng.sample(pool, rng.randint(0, k))) if rng.random() < 0.5 else ()
    return FilterChainMatch(
        destination_port=rng.choice([None, None, 8000, 8001]),
        prefix_ranges=some(["127.0.0.0/8", "127.0.0.1/32", "10.0.0.0/8", "::1/128", "0.0.0.0/0"]),
        server_names=some(["a.example.com", "*.example.com", "*.com", "b.example.com", "x.y.example.com"]),
        transport_protocol=rng.choice(["", "", "tls", "raw_buffer"]),
        application_protocols=some(["h2", "http/1.1", "x"]),
        source_type=rng.choice(["ANY", "ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"]),
        source_prefix_ranges=some(["127.0.0.0/8", "127.0.0.2/32", "10.1.0.0/16", "::/0"]),
        source_ports=some([1000, 2000, 3000]))


def _spec(m: FilterChainMatch) -> dict:
    from fastproxy.installer import _match_spec
    return _match_spec(m)


def test_the_matcher_agrees_with_envoys_tree_on_random_tables():
    rng = random.Random(1414)
    tables = checked = 0
    while tables < 300:
        matches = [_random_match(rng) for _ in range(rng.randint(1, 6))]
        try:
            tree = FilterChainTree(matches)
        except DuplicateMatch:
            # the model refuses the same tables (Envoy's duplicate check)
            with pytest.raises(ConfigError, match="same matching rules|overlapping matching rules"):
                Listener("l", filter_chains=[FilterChain(TcpProxy("c"), match=m) for m in matches]).validate()
            continue
        Listener("l", filter_chains=[FilterChain(TcpProxy("c"), match=m) for m in matches]).validate()
        table = _core.make_chain_table([_spec(m) for m in matches])
        tables += 1
        for _ in range(60):
            conn = {"local": (rng.choice(["127.0.0.1", "10.0.0.5", "::1"]), rng.choice([8000, 8001, 9000])),
                    "remote": (rng.choice(["127.0.0.1", "127.0.0.2", "10.1.2.3", "192.0.2.1", "::1"]),
                               rng.choice([1000, 2000, 4000])),
                    "transport": rng.choice(["tls", "raw_buffer"]),
                    "server_name": rng.choice(["", "a.example.com", "B.Example.com", "z.x.y.example.com",
                                               "example.com", "other.org"]),
                    "application_protocols": rng.sample([b"h2", b"http/1.1", b"x", b"y"], rng.randint(0, 3))}
            if (":" in conn["local"][0]) != (":" in conn["remote"][0]):
                continue
            want = tree.find(conn["local"], conn["remote"], conn["transport"], conn["server_name"],
                             conn["application_protocols"])
            got = _core._chain_table_match(table, conn)
            assert got == (-1 if want is None else want), (matches, conn)
            checked += 1
    assert checked > 10000


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate (openssl) for the TLS upstreams."""
    d = tmp_path_factory.mktemp("certs")
    crt, key = d / "c.pem", d / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=upstream", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return str(crt), str(key)


def tls_named_server(name: bytes, cert):
    """A TLS upstream that answers each connection with its name and what the client's
    SNI and ALPN were, after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    ctx.set_alpn_protocols(["h2", "http/1.1", "x"])
    seen = {}

    def sni_cb(sock, server_name, _ctx):
        seen[id(sock)] = server_name

    ctx.sni_callback = sni_cb

    def handler(sock, server):
        sock.settimeout(5)
        with ctx.wrap_socket(sock, server_side=True) as t:
            t.sendall(name + b" " + (seen.get(id(t)) or "-").encode() + b" " +
                      (t.selected_alpn_protocol() or "-").encode() + b"\n")
            t.recv(1)

    return ThreadedServer(handler, name=name.decode())


def named_server(name: bytes):
    """A plaintext upstream that answers each connection with its name."""
    def handler(sock, server):
        sock.sendall(name + b"\n")
        sock.settimeout(5)
        while sock.recv(4096):          # to the client's end: no reset for unread bytes
            pass
    return ThreadedServer(handler, name=name.decode())


def tls_hello_via(addr, server_name, alpn=None, source=None) -> bytes:
    """Connect (from ``source``), do a TLS handshake with SNI through the proxy (no
    verification: the proxy passes the bytes through), return the upstream's line."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(addr, timeout=5, source_address=source)
    with ctx.wrap_socket(raw, server_hostname=server_name) as t:
        return t.recv(200)


@pytest.fixture
def upstreams(cert):
    made = {"a": tls_named_server(b"a", cert), "b": tls_named_server(b"b", cert),
            "c": tls_named_server(b"c", cert), "plain": named_server(b"plain"),
            "other": named_server(b"other")}
    yield made
    for s in made.values():
        s.close()


def chain(cluster, **match):
    return FilterChain(TcpProxy(cluster), match=FilterChainMatch(**match), stat_prefix=cluster)


def chains_proxy(proxy_factory, upstreams, chains, default=None, address="127.0.0.1", port=0, **kw):
    clusters = [Cluster(name, [Endpoint("127.0.0.1", s.port)]) for name, s in upstreams.items()]
    listener = Listener("l", filter_chains=chains, default_filter_chain=default, address=address, port=port, **kw)
    p = proxy_factory([listener], clusters)
    host, port = p.listener_address("l")
    return p, ("127.0.0.1" if host == "0.0.0.0" else host, port)


def test_tls_passthrough_by_sni_and_plaintext_share_one_port(proxy_factory, upstreams):
    p, addr = chains_proxy(proxy_factory, upstreams, [
        chain("a", server_names=["a.example.com"]),
        chain("b", server_names=["*.b.example.com"]),
        chain("plain", transport_protocol="raw_buffer"),
    ], tls_inspector=True)
    assert tls_hello_via(addr, "a.example.com") == b"a a.example.com -\n"
    assert tls_hello_via(addr, "x.b.example.com") == b"b x.b.example.com -\n"
    assert tls_hello_via(addr, "deep.x.b.example.com", ["h2"]) == b"b deep.x.b.example.com h2\n"
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"hello")                  # plaintext: the inspector sees it is not TLS
        assert s.recv(100) == b"plain\n"
    # TLS with an SNI no chain names: no chain (raw_buffer is not "tls"), closed
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_hello_via(addr, "c.example.com")
    wait_for(lambda: listener_stat(p, "l", "no_filter_chain_match") == 1)
    st = p.stats()
    assert st["tls_inspector.tls_found"] == 4 and st["tls_inspector.tls_not_found"] == 1
    assert st["tls_inspector.sni_found"] == 4 and st["tls_inspector.alpn_found"] == 1
    assert st["tcp.a.downstream_cx_total"] == 1 and st["tcp.b.downstream_cx_total"] == 2
    wait_for(lambda: listener_stat(p, "l", "downstream_pre_cx_active") == 0)


def test_alpn_picks_the_first_client_protocol_a_chain_names(proxy_factory, upstreams):
    p, addr = chains_proxy(proxy_factory, upstreams, [
        chain("a", application_protocols=["http/1.1"]),
        chain("b", application_protocols=["h2"]),
        chain("c"),
    ], tls_inspector=True)
    assert tls_hello_via(addr, "s", ["h2", "http/1.1"]) == b"b s h2\n"
    assert tls_hello_via(addr, "s", ["http/1.1", "h2"]).startswith(b"a ")    # (the upstream picks h2)
    assert tls_hello_via(addr, "s", ["x"]) == b"c s x\n"
    assert tls_hello_via(addr, "s") == b"c s -\n"


def test_source_prefix_and_port_and_type(proxy_factory, upstreams):
    p, addr = chains_proxy(proxy_factory, upstreams, [
        chain("a", source_prefix_ranges=["127.0.0.2/32"]),
        chain("plain", source_prefix_ranges=["127.0.0.0/8"]),
        chain("other", source_type="EXTERNAL"),
    ])
    with socket.create_connection(addr, timeout=5, source_address=("127.0.0.3", 0)) as s:
        assert s.recv(100) == b"plain\n"     # longest source prefix: /8 (the /32 is another address)
    raw = socket.create_connection(addr, timeout=5, source_address=("127.0.0.2", 0))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(raw, server_hostname="x") as t:
        assert t.recv(100).startswith(b"a ")
    port = free_port()
    p2, addr2 = chains_proxy(proxy_factory, upstreams, [
        chain("plain", source_ports=[port]), chain("other")], address="127.0.0.1")
    with socket.create_connection(addr2, timeout=5, source_address=("127.0.0.1", port)) as s:
        assert s.recv(100) == b"plain\n"
    with socket.create_connection(addr2, timeout=5) as s:
        assert s.recv(100) == b"other\n"


def test_destination_port_and_address(proxy_factory, upstreams):
    port = free_port()
    p, _ = chains_proxy(proxy_factory, upstreams, [
        chain("plain", destination_port=port, prefix_ranges=["127.0.0.3/32"]),
        chain("other", destination_port=port),
        chain("a", destination_port=port + 1),      # another port: never this listener's
    ], address="0.0.0.0", port=port)
    with socket.create_connection(("127.0.0.3", port), timeout=5) as s:
        assert s.recv(100) == b"plain\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(100) == b"other\n"


def test_the_default_chain_and_no_match(proxy_factory, upstreams):
    p, addr = chains_proxy(proxy_factory, upstreams, [chain("a", server_names=["a.example.com"])],
                           default=FilterChain(TcpProxy("other"), stat_prefix="d"), tls_inspector=True)
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"plain text")
        assert s.recv(100) == b"other\n"
    assert tls_hello_via(addr, "a.example.com").startswith(b"a ")
    p2, addr2 = chains_proxy(proxy_factory, upstreams, [chain("a", server_names=["a.example.com"])],
                             tls_inspector=True)
    with socket.create_connection(addr2, timeout=5) as s:
        s.sendall(b"plain text")
        assert wait_closed(s) in ("eof", "reset")
    wait_for(lambda: listener_stat(p2, "l", "no_filter_chain_match") == 1)
    assert listener_stat(p2, "l", "downstream_cx_active") == 0


def test_the_inspector_timeout_closes_or_continues_as_not_tls(proxy_factory, upstreams):
    # (2 s: the pending connection must be seen before its timeout ends it, even on a
    # loaded machine)
    p, addr = chains_proxy(proxy_factory, upstreams, [chain("plain", transport_protocol="raw_buffer")],
                           tls_inspector=True, listener_filters_timeout=2.0)
    with socket.create_connection(addr, timeout=5) as s:   # sends nothing
        wait_for(lambda: listener_stat(p, "l", "downstream_pre_cx_active") == 1)
        assert wait_closed(s, timeout=10) in ("eof", "reset")
    assert listener_stat(p, "l", "downstream_pre_cx_timeout") == 1
    assert listener_stat(p, "l", "downstream_pre_cx_active") == 0
    p2, addr2 = chains_proxy(proxy_factory, upstreams, [chain("plain", transport_protocol="raw_buffer")],
                             tls_inspector=True, listener_filters_timeout=0.3,
                             continue_on_listener_filters_timeout=True)
    with socket.create_connection(addr2, timeout=5) as s:
        assert s.recv(100) == b"plain\n"     # after the timeout, matched as not TLS
    assert listener_stat(p2, "l", "downstream_pre_cx_timeout") == 1


def test_bad_client_hellos(proxy_factory, upstreams):
    p, addr = chains_proxy(proxy_factory, upstreams, [chain("plain", transport_protocol="raw_buffer")],
                           tls_inspector=True, listener_filters_timeout=0.5)
    hello = client_hello("a.example.com")
    # garbage after a handshake record header: not TLS, so the raw_buffer chain
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(bytes([22, 3, 1, 0, 8]) + b"\x01\x00\x00\x04garb")
        assert s.recv(100) == b"plain\n"
    # truncated, then the client says it is done: it can never complete, closed
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(hello[:40])
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) in ("eof", "reset")
    # truncated and left open: the inspector's timeout
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(hello[:40])
        assert wait_closed(s) in ("eof", "reset")
    wait_for(lambda: listener_stat(p, "l", "downstream_pre_cx_timeout") == 1)
    # a ClientHello that cannot end within 64 KiB (one-byte records): too large, closed.
    # (Once the kernel's receive window, which nothing reads from, is full, no more comes:
    # then, as in Envoy, the inspector's timeout closes it.)
    timeouts = listener_stat(p, "l", "downstream_pre_cx_timeout")
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(rerecord(big_hello(15000), [1])[:61200])
        assert wait_closed(s) in ("eof", "reset")
    wait_for(lambda: stat(p, "tls_inspector.client_hello_too_large") +
             listener_stat(p, "l", "downstream_pre_cx_timeout") == timeouts + 1)
    wait_for(lambda: listener_stat(p, "l", "downstream_cx_active") == 0)
    assert listener_stat(p, "l", "downstream_pre_cx_active") == 0


def test_pending_inspections_are_bounded_and_released(proxy_factory, upstreams):
    # (3 s: the five pending connections must still be pending when counted, on a loaded
    # machine too)
    p, addr = chains_proxy(proxy_factory, upstreams, [chain("plain")], tls_inspector=True,
                           listener_filters_timeout=3.0, max_connections=5)
    socks = [socket.create_connection(addr, timeout=5) for _ in range(20)]
    try:
        wait_for(lambda: listener_stat(p, "l", "downstream_cx_overflow") == 15)
        assert listener_stat(p, "l", "downstream_pre_cx_active") == 5
        wait_for(lambda: listener_stat(p, "l", "downstream_pre_cx_timeout") == 5, timeout=10)
        assert listener_stat(p, "l", "downstream_pre_cx_active") == 0
        # every slot is free again
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(100) == b"plain\n"
    finally:
        for s in socks:
            s.close()


def test_stop_and_update_release_pending_connections(proxy_factory, upstreams):
    p, addr = chains_proxy(proxy_factory, upstreams, [chain("plain")], tls_inspector=True,
                           listener_filters_timeout=None, port=free_port())
    socks = [socket.create_connection(addr, timeout=5) for _ in range(4)]
    wait_for(lambda: listener_stat(p, "l", "downstream_pre_cx_active") == 4)
    # a changed chain (the listener's socket stays): an in-place update, the pending
    # connections end with the old version's drain
    clusters = [Cluster(name, [Endpoint("127.0.0.1", s.port)]) for name, s in upstreams.items()]
    host, port = p.listener_address("l")
    p.update(listeners=[Listener("l", filter_chains=[chain("other")], tls_inspector=True,
                                 listener_filters_timeout=None, port=port)], clusters=clusters)
    assert p.stats()["listener_manager.listener_in_place_updated"] == 1
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"x")
        assert s.recv(100) == b"other\n"
    p.stop(drain_timeout=0.2)
    for s in socks:
        assert wait_closed(s) in ("eof", "reset")
        s.close()


# --------------------------------------------------------------------------- loader, Envoy

def sni_yaml(a_port, b_port, plain_port, port=0):
    import yaml

    def tcp(cluster):
        return {"name": "envoy.filters.network.tcp_proxy",
                "typed_config": typed(TCP_PROXY, stat_prefix=cluster, cluster=cluster)}
    listener = {
        "name": "sni", "address": socket_address(port),
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                              "typed_config": typed(TLS_INSPECTOR)}],
        "filter_chains": [
            {"filter_chain_match": {"server_names": ["a.example.com"]}, "filters": [tcp("a")]},
            {"filter_chain_match": {"server_names": ["*.b.example.com"]}, "filters": [tcp("b")]},
            {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": [tcp("plain")]},
        ]}
    boot = {"admin": {"address": socket_address()},
            "static_resources": {"listeners": [listener],
                                 "clusters": [static_cluster("a", [a_port]), static_cluster("b", [b_port]),
                                              static_cluster("plain", [plain_port])]}}
    return yaml.safe_dump(boot, sort_keys=False)


def test_the_loader_reads_filter_chains(upstreams):
    boot = load_envoy(sni_yaml(1, 2, 3))
    l = boot.listeners[0]
    assert l.tls_inspector and l.listener_filters_timeout == 15.0 and l.handler is None
    assert [c.match.server_names for c in l.filter_chains] == [("a.example.com",), ("*.b.example.com",), ()]
    assert l.filter_chains[2].match.transport_protocol == "raw_buffer"


@pytest.mark.parametrize("edit, path, words", [
    (lambda l: l["filter_chains"].append(l["filter_chains"][0]),
     "static_resources.listeners[0].filter_chains[3].filter_chain_match",
     "filter chain '' has the same matching rules defined as ''"),
    (lambda l: [l["filter_chains"][k]["filter_chain_match"]["server_names"].append("q.example.com") for k in (0, 1)],
     "static_resources.listeners[0].filter_chains[1].filter_chain_match",
     "multiple filter chains with overlapping matching rules are defined"),
    (lambda l: l.update(filter_chains=[]), "static_resources.listeners[0].filter_chains",
     "no filter chains specified"),
    (lambda l: l["listener_filters"].append({"name": "envoy.filters.listener.proxy_protocol",
                                            "typed_config": typed("x.ProxyProtocol")}),
     "static_resources.listeners[0].listener_filters[1].typed_config", "unsupported listener filter"),
    (lambda l: l["filter_chains"][0]["filter_chain_match"].update(server_names=["a*.example.com"]),
     "static_resources.listeners[0].filter_chains[0].filter_chain_match.server_names[0]", "partial wildcards"),
    (lambda l: l["filter_chains"][0].update(transport_socket={"name": "envoy.transport_sockets.tls"}),
     "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config", "required"),
    (lambda l: l["filter_chains"][0]["filter_chain_match"].update(
        direct_source_prefix_ranges=[{"address_prefix": "10.0.0.0", "prefix_len": 8}]),
     "static_resources.listeners[0].filter_chains[0].filter_chain_match.direct_source_prefix_ranges",
     "unsupported"),
])
def test_the_loader_refuses_with_the_field_path(edit, path, words):
    import yaml
    boot = yaml.safe_load(sni_yaml(1, 2, 3))
    edit(boot["static_resources"]["listeners"][0])
    with pytest.raises(ConfigError) as e:
        load_envoy(boot)
    assert e.value.path == path and words in str(e.value), str(e.value)


@pytest.mark.parametrize("edit, words", [
    (lambda ch: ch.append(dict(ch[0], name="second")),
     "filter chain 'second' has the same matching rules defined as 'first'"),
    (lambda ch: [ch[k]["filter_chain_match"]["server_names"].append("q.example.com") for k in (0, 1)],
     "multiple filter chains with overlapping matching rules are defined"),
])
def test_envoy_refuses_duplicate_matches_as_fastproxy_does(tmp_path, edit, words):
    envoy = find_envoy()
    if envoy is None:
        pytest.skip("envoy not installed (make test-tools)")
    import yaml
    boot = yaml.safe_load(sni_yaml(1, 2, 3))
    chains = boot["static_resources"]["listeners"][0]["filter_chains"]
    chains[0]["name"] = "first"
    edit(chains)
    f = tmp_path / "dup.yaml"
    f.write_text(yaml.safe_dump(boot))
    r = subprocess.run([envoy, "--mode", "validate", "-c", str(f)], capture_output=True, text=True)
    assert r.returncode != 0 and words in r.stdout + r.stderr
    with pytest.raises(ConfigError) as e:
        load_envoy(boot)
    assert words in str(e.value)


def test_sni_routing_is_the_same_through_envoy_and_fastproxy(upstreams, tmp_path):
    if find_envoy() is None:
        pytest.skip("envoy not installed (make test-tools)")
    text = sni_yaml(upstreams["a"].port, upstreams["b"].port, upstreams["plain"].port)
    proc, admin, addr = start_envoy(text, tmp_path)
    try:
        envoy = (tls_hello_via(addr, "a.example.com"), tls_hello_via(addr, "q.b.example.com", ["h2"]),
                 tls_hello_via(addr, "A.Example.COM"))         # server names match in any case
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"hello")             # (Envoy's inspector decides on 5 bytes, a record header)
            envoy += (s.recv(100),)
    finally:
        proc.terminate()
        proc.wait(10)
    p = fastproxy.Proxy.from_bootstrap(load_envoy(text))
    p.start()
    try:
        addr = p.listener_address("sni")
        ours = (tls_hello_via(addr, "a.example.com"), tls_hello_via(addr, "q.b.example.com", ["h2"]),
                tls_hello_via(addr, "A.Example.COM"))
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"hello")
            ours += (s.recv(100),)
    finally:
        p.stop(drain_timeout=0.2)
    assert ours == envoy == (b"a a.example.com -\n", b"b q.b.example.com h2\n", b"a A.Example.COM -\n",
                             b"plain\n")


def test_the_config_dump_writes_the_chains_back(upstreams):
    """listener_json writes filter chains, matches and the inspector that the loader
    reads back to the same model."""
    from fastproxy.config.dump import listener_json
    boot = load_envoy(sni_yaml(1, 2, 3))
    l = boot.listeners[0]
    dumped = listener_json(l)
    assert dumped["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    import yaml
    again = yaml.safe_load(sni_yaml(1, 2, 3))
    again["static_resources"]["listeners"] = [dumped]
    assert load_envoy(again).listeners[0] == l


# --------------------------------------------------------------------------- TLS termination

def test_tls_terminating_chains_chosen_by_sni(upstreams, tmp_path):
    """Each SNI gets its chain's certificate and its chain's cluster: TLS ends at the
    proxy (the upstreams speak plain TCP); plaintext on the same port goes its own way."""
    trustme = pytest.importorskip("trustme")
    import yaml
    ca = trustme.CA()
    files = {}
    for name in ("a.example.com", "b.example.com"):
        leaf = ca.issue_cert(name)
        files[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        leaf.private_key_pem.write_to_path(str(files[name][1]))
        files[name][0].write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))

    def tls_chain(name, cluster):
        crt, key = files[name]
        return {"filter_chain_match": {"server_names": [name]},
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": typed(
                    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    common_tls_context={"tls_certificates": [{"certificate_chain": {"filename": str(crt)},
                                                              "private_key": {"filename": str(key)}}]})},
                "filters": [{"name": "envoy.filters.network.tcp_proxy",
                             "typed_config": typed(TCP_PROXY, stat_prefix=cluster, cluster=cluster)}]}
    listener = {"name": "tls", "address": socket_address(0),
                "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                      "typed_config": typed(TLS_INSPECTOR)}],
                "filter_chains": [tls_chain("a.example.com", "plain"), tls_chain("b.example.com", "other"),
                                  {"filter_chain_match": {"transport_protocol": "raw_buffer"},
                                   "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": typed(
                                       TCP_PROXY, stat_prefix="raw", cluster="other")}]}]}
    boot = {"static_resources": {"listeners": [listener], "clusters": [
        static_cluster("plain", [upstreams["plain"].port]), static_cluster("other", [upstreams["other"].port])]}}
    p = fastproxy.Proxy.from_bootstrap(load_envoy(yaml.safe_dump(boot)))
    p.start()
    try:
        addr = p.listener_address("tls")
        client = ssl.create_default_context()
        ca.configure_trust(client)
        for name, want in (("a.example.com", b"plain\n"), ("b.example.com", b"other\n")):
            with client.wrap_socket(socket.create_connection(addr, timeout=5), server_hostname=name) as t:
                # verified against the chain's own certificate for that name
                assert t.getpeercert()["subjectAltName"] == (("DNS", name),)
                assert t.recv(100) == want
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"plain text")
            assert s.recv(100) == b"other\n"
        st = p.stats()
        assert st["tcp.plain.downstream_cx_total"] == 1 and st["tcp.other.downstream_cx_total"] == 1
        assert st["tcp.raw.downstream_cx_total"] == 1
        host, port = addr
        assert st[f"listener.{host}_{port}.ssl.handshake"] == 2
    finally:
        p.stop(drain_timeout=0.2)


def test_an_http_chain_and_a_tls_passthrough_chain_share_one_port(upstreams):
    """The connection manager serves the plaintext connections; TLS ones with a known
    SNI pass through to their TLS upstream."""
    import yaml
    from conftest import http_listener
    from http_upstreams import RawHttpUpstream, http_request
    web = RawHttpUpstream()
    try:
        listener = http_listener("[{match: {prefix: /}, route: {cluster: web}}]", name="mixed")
        listener["filter_chains"][0]["filter_chain_match"] = {"transport_protocol": "raw_buffer"}
        listener["filter_chains"].append(
            {"filter_chain_match": {"server_names": ["a.example.com"]},
             "filters": [{"name": "envoy.filters.network.tcp_proxy",
                          "typed_config": typed(TCP_PROXY, stat_prefix="a", cluster="a")}]})
        listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                         "typed_config": typed(TLS_INSPECTOR)}]
        boot = {"static_resources": {"listeners": [listener], "clusters": [
            static_cluster("web", [web.port]), static_cluster("a", [upstreams["a"].port])]}}
        p = fastproxy.Proxy.from_bootstrap(load_envoy(yaml.safe_dump(boot)))
        p.start()
        try:
            addr = p.listener_address("mixed")
            r, body = http_request(addr, path="/x")
            assert r.status == 200 and body == b"GET /x 0"
            assert tls_hello_via(addr, "a.example.com") == b"a a.example.com -\n"
            assert stat(p, "http.web.downstream_rq_total") == 1
        finally:
            p.stop(drain_timeout=0.2)
    finally:
        web.close()


def test_a_destination_port_branch_does_not_fall_back_as_in_envoy(upstreams, tmp_path):
    """Envoy's tree: once a chain names the connection's destination port, only such
    chains are candidates (no fall back to the port-less ones): the same connections are
    routed, or closed, by Envoy and by fastproxy."""
    if find_envoy() is None:
        pytest.skip("envoy not installed (make test-tools)")
    import yaml
    port = free_port()

    def tcp(cluster):
        return [{"name": "envoy.filters.network.tcp_proxy",
                 "typed_config": typed(TCP_PROXY, stat_prefix=cluster, cluster=cluster)}]
    listener = {"name": "ports", "address": socket_address(port),
                "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                      "typed_config": typed(TLS_INSPECTOR)}],
                "filter_chains": [
                    {"filter_chain_match": {"destination_port": port, "server_names": ["x.example.com"]},
                     "filters": tcp("a")},
                    {"filter_chain_match": {"server_names": ["y.example.com"]}, "filters": tcp("b")},
                    {"filter_chain_match": {"destination_port": port, "application_protocols": ["h2"]},
                     "filters": tcp("c")}]}
    boot = {"admin": {"address": socket_address()},
            "static_resources": {"listeners": [listener], "clusters": [
                static_cluster(n, [upstreams[n].port]) for n in ("a", "b", "c")]}}
    text = yaml.safe_dump(boot, sort_keys=False)

    def outcomes(addr):
        out = []
        for sni, alpn in (("x.example.com", None), ("y.example.com", None), ("z.example.com", ["h2"]),
                          ("y.example.com", ["h2"]), ("z.example.com", None)):
            try:
                out.append(tls_hello_via(addr, sni, alpn).split(b" ")[0])
            except (ssl.SSLError, OSError):
                out.append(b"closed")
        return out
    proc, admin, addr = start_envoy(text, tmp_path)
    try:
        envoy = outcomes(addr)
    finally:
        proc.terminate()
        proc.wait(10)
    p = fastproxy.Proxy.from_bootstrap(load_envoy(text))
    p.start()
    try:
        ours = outcomes(p.listener_address("ports"))
    finally:
        p.stop(drain_timeout=0.2)
    assert ours == envoy == [b"a", b"closed", b"c", b"c", b"closed"]
