"""TLS secrets that rotate without a restart: file-based SDS (an SdsSecretConfig whose
sds_config is a path_config_source; the file a DiscoveryResponse of Secrets) and static
secrets replaced by Proxy.update(secrets=...).

End to end (real sockets, a real TLS upstream made with Python's ssl module, the proxy's
core TLS): a client certificate rotated in the SDS file is what the upstream sees on the
next connection, while a connection opened before keeps working; a bad file keeps the old
secret (sds.<name>.update_rejected / update_failure). These need the core's TLS
(Engine.make_tls_context, branch tls-engine) and are skipped without it.

The rotation logic itself (which contexts a changed secret recompiles, all or nothing,
what is counted) is also tested on its own, with a stand-in for the core's context
factory that checks a spec as the core does (key matches certificate) and records what it
is given: that part runs everywhere."""
import os
import socket
import ssl
import threading

import pytest
import yaml

from conftest import wait_for
from fastproxy import Proxy
from fastproxy._core import Engine
from fastproxy.errors import ConfigError
from fastproxy.model import Cluster, ConfigSource, Endpoint, Listener, TcpProxy
from fastproxy import model_tls as t
from upstreams import EchoServer, ThreadedServer

trustme = pytest.importorskip("trustme")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CORE_TLS = hasattr(Engine, "make_tls_context")
needs_core_tls = pytest.mark.skipif(not CORE_TLS, reason="the core has no TLS yet (Engine.make_tls_context: "
                                                         "branch tls-engine)")


# --- certificates and SDS files ----------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_pem(directory, name, cert):
    chain, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


def sds_document(version, secrets):
    """A DiscoveryResponse of Secret resources: secrets = {name: (chain file, key file)}."""
    return {"version_info": version, "resources": [
        {"@type": SECRET, "name": name, "tls_certificate": {"certificate_chain": {"filename": str(chain)},
                                                           "private_key": {"filename": str(key)}}}
        for name, (chain, key) in secrets.items()]}


def publish(path, document):
    """Write the SDS file as Envoy's users must: a new file moved onto the path."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    os.rename(tmp, path)


def client_context(sds_path):
    """An UpstreamTlsContext whose client certificate is the secret "client" of the file."""
    return t.UpstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("client", ConfigSource(path=str(sds_path))),)))


# --- the rotation logic, with a stand-in for the core's context factory -------------------

class RecordingContexts:
    """What the proxy's secret store asks of the core: make_tls_context(spec, server,
    stats, name) and handle.update(spec); each spec checked as the core checks it (the
    key belongs to the certificate), a ValueError otherwise."""

    def __init__(self):
        self.handles = []

    @staticmethod
    def check(spec):
        for i, c in enumerate(spec["certificates"]):
            cert = x509.load_pem_x509_certificate(c["chain"])
            key = serialization.load_pem_private_key(c["key"], None)
            if cert.public_key().public_numbers() != key.public_key().public_numbers():
                raise ValueError(f"certificates[{i}]: key does not match certificate")

    def make_tls_context(self, spec, server, stats, name):
        self.check(spec)
        owner = self

        class Handle:
            def __init__(self):
                self.specs = [spec]

            def update(self, new):
                owner.check(new)
                self.specs.append(new)

        h = Handle()
        self.handles.append(h)
        return h


def subject_cn(spec):
    cert = x509.load_pem_x509_certificate(spec["certificates"][0]["chain"])
    return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value if \
        cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME) else \
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)[0]


def sans(spec):
    cert = x509.load_pem_x509_certificate(spec["certificates"][0]["chain"])
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


@pytest.fixture
def store():
    import threading as th
    from fastproxy.sds import SecretStore
    core = RecordingContexts()
    s = SecretStore(core, th.RLock(), lambda kind, name: (kind, name))
    s.core = core
    yield s
    s.stop()


def test_file_secret_rotation_updates_the_context_in_place(store, ca, tmp_path):
    first = write_pem(tmp_path, "one", ca.issue_cert("one.test"))
    second = write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"client": first}))
    handle = store.context(client_context(sds), False, "cluster.c.ssl", "c")
    assert sans(handle.specs[-1]) == ["one.test"]
    assert store.read_stats()["sds.client.update_success"] == 1

    publish(sds, sds_document("v2", {"client": second}))
    wait_for(lambda: len(handle.specs) == 2)
    assert sans(handle.specs[-1]) == ["two.test"]
    assert store.read_stats()["sds.client.update_success"] == 2
    # the same handle (the listener or cluster using it is not rebuilt, nothing drains)
    assert store.context(client_context(sds), False, "cluster.c.ssl", "c") is handle
    assert [s.name for s, version, _ in store.dynamic_secrets()] == ["client"]
    assert store.dynamic_secrets()[0][1] == "v2"


def test_a_bad_file_keeps_the_old_secret(store, ca, tmp_path):
    good = write_pem(tmp_path, "good", ca.issue_cert("good.test"))
    other = write_pem(tmp_path, "other", ca.issue_cert("other.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"client": good}))
    handle = store.context(client_context(sds), False, "cluster.c.ssl", "c")
    stats = store.read_stats

    publish(sds, "resources: [unclosed\n")                     # not YAML
    wait_for(lambda: stats()["sds.client.update_failure"] == 1)
    publish(sds, sds_document("v3", {"client": (good[0], other[1])}))   # key of another cert
    wait_for(lambda: stats()["sds.client.update_rejected"] == 1)
    publish(sds, sds_document("v4", {"client": (tmp_path / "missing.crt", good[1])}))
    wait_for(lambda: stats()["sds.client.update_rejected"] == 2)
    assert len(handle.specs) == 1 and sans(handle.specs[0]) == ["good.test"]
    assert store.dynamic_secrets()[0][1] == "v1"
    assert stats()["sds.client.update_success"] == 1
    # and a good one after those is taken
    publish(sds, sds_document("v5", {"client": other}))
    wait_for(lambda: len(handle.specs) == 2)
    assert sans(handle.specs[-1]) == ["other.test"]


def test_watched_directory_reload(store, ca, tmp_path):
    """watched_directory: the file is read again when anything is moved into the
    directory (a Kubernetes secret volume's ..data swap)."""
    data = tmp_path / "vol"
    data.mkdir()
    first = write_pem(tmp_path, "one", ca.issue_cert("one.test"))
    second = write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    sds = data / "sds.yaml"
    publish(sds, sds_document("v1", {"client": first}))
    ctx = t.UpstreamTlsContext(common_tls_context=t.CommonTlsContext(tls_certificate_sds_secret_configs=(
        t.SdsSecretConfig("client", ConfigSource(path=str(sds), watched_directory=str(data))),)))
    handle = store.context(ctx, False, "cluster.c.ssl", "c")
    sds.write_text(yaml.safe_dump(sds_document("v2", {"client": second})))    # in place: no event
    (data / "trigger.new").write_text("x")
    os.rename(data / "trigger.new", data / "..data")
    wait_for(lambda: len(handle.specs) == 2)
    assert sans(handle.specs[-1]) == ["two.test"]


def kube_volume(directory, files):
    """A Kubernetes secret volume: the files in a timestamped directory, ``..data`` a
    symlink to it and each file a symlink through ``..data``; ``files``: {file name: bytes}.
    Called again, it swaps ``..data`` atomically to a new directory (as the kubelet does)."""
    n = len([p for p in directory.iterdir() if p.name.startswith("..2")]) if directory.exists() else 0
    directory.mkdir(exist_ok=True)
    stamp = directory / f"..2026_{n}"
    stamp.mkdir()
    for name, data in files.items():
        (stamp / name).write_bytes(data)
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    os.symlink(stamp.name, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", directory / "..data")


def pem_files(cert):
    return {"tls.crt": cert.cert_chain_pems[0].bytes(), "tls.key": cert.private_key_pem.bytes()}


def test_kubernetes_volume_swap_rotates_a_certificate_of_the_same_path(store, ca, tmp_path):
    """The SDS file and the certificate files in one Kubernetes volume, the SDS source's
    watched_directory the volume: the ``..data`` swap leaves the SDS file the same (same
    secret, same file names) but the certificate files hold the new certificate, and the
    context is compiled again with it."""
    vol = tmp_path / "vol"
    doc = yaml.safe_dump(sds_document("v1", {"client": (vol / "tls.crt", vol / "tls.key")})).encode()
    kube_volume(vol, {**pem_files(ca.issue_cert("one.test")), "sds.yaml": doc})
    ctx = t.UpstreamTlsContext(common_tls_context=t.CommonTlsContext(tls_certificate_sds_secret_configs=(
        t.SdsSecretConfig("client", ConfigSource(path=str(vol / "sds.yaml"), watched_directory=str(vol))),)))
    handle = store.context(ctx, False, "cluster.c.ssl", "c")
    assert sans(handle.specs[-1]) == ["one.test"]
    kube_volume(vol, {**pem_files(ca.issue_cert("two.test")), "sds.yaml": doc})
    wait_for(lambda: len(handle.specs) == 2)
    assert sans(handle.specs[-1]) == ["two.test"]


def test_certificate_watched_directory_of_a_secret(store, ca, tmp_path):
    """A TlsCertificate from SDS with its own watched_directory (the certificate files in
    a Kubernetes volume, the SDS file elsewhere): the ``..data`` swap rotates it."""
    vol = tmp_path / "vol"
    kube_volume(vol, pem_files(ca.issue_cert("one.test")))
    sds = tmp_path / "sds.yaml"
    doc = sds_document("v1", {"client": (vol / "tls.crt", vol / "tls.key")})
    doc["resources"][0]["tls_certificate"]["watched_directory"] = {"path": str(vol)}
    publish(sds, doc)
    handle = store.context(client_context(sds), False, "cluster.c.ssl", "c")
    assert sans(handle.specs[-1]) == ["one.test"]
    kube_volume(vol, pem_files(ca.issue_cert("two.test")))
    wait_for(lambda: len(handle.specs) == 2)
    assert sans(handle.specs[-1]) == ["two.test"]
    assert store.read_stats()["sds.client.update_success"] == 1     # the SDS file was not read again


def test_a_certificate_file_moved_onto_its_path_rotates(store, ca, tmp_path):
    """Without watched_directory the certificate files' directory is watched for a move
    onto their names (Envoy's default): the certificate moved in first does not match the
    old key (refused, the old stays), the key after it completes the new pair."""
    chain, key = write_pem(tmp_path, "server", ca.issue_cert("one.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"client": (chain, key)}))
    handle = store.context(client_context(sds), False, "cluster.c.ssl", "c")
    new_chain, new_key = write_pem(tmp_path, "new", ca.issue_cert("two.test"))
    os.rename(new_chain, chain)
    os.rename(new_key, key)
    wait_for(lambda: len(handle.specs) == 2)
    assert sans(handle.specs[-1]) == ["two.test"]


def test_static_secret_given_again_with_new_file_contents(store, ca, tmp_path):
    """update(secrets=...) with the same secret (the same file names) after the files
    changed: the context takes the new data."""
    one = write_pem(tmp_path, "server", ca.issue_cert("one.test"))
    store.set_static([file_secret("server", one)])
    ctx = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("server"),)))
    handle = store.context(ctx, True, "listener.x.ssl", "l")
    write_pem(tmp_path, "server", ca.issue_cert("two.test"))
    store.set_static([file_secret("server", one)])
    assert sans(handle.specs[-1]) == ["two.test"]


def test_a_file_nothing_uses_is_released(store, ca, tmp_path):
    """When no context names an SDS file any more, its watch, its secrets' counters and
    dump entries go (and the watches of the certificate files it named)."""
    first = write_pem(tmp_path, "one", ca.issue_cert("one.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"client": first}))
    ctx = client_context(sds)
    store.context(ctx, False, "cluster.c.ssl", "c")
    store.keep([("c", False, ctx)])
    assert list(store.files) == [str(sds)] and store.read_stats()["sds.client.update_success"] == 1
    assert store._watches
    store.keep([])
    assert store.files == {} and store.read_stats() == {} and store.dynamic_secrets() == []
    assert store._watches == {} and store._watched == {}
    # used again later: read again from the start
    store.context(ctx, False, "cluster.c.ssl", "c")
    assert store.read_stats()["sds.client.update_success"] == 1


def test_an_sds_file_whose_directory_cannot_be_watched_is_a_config_error(store, ca, tmp_path):
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"client": write_pem(tmp_path, "one", ca.issue_cert("one.test"))}))
    ctx = t.UpstreamTlsContext(common_tls_context=t.CommonTlsContext(tls_certificate_sds_secret_configs=(
        t.SdsSecretConfig("client", ConfigSource(path=str(sds), watched_directory=str(tmp_path / "gone"))),)))
    with pytest.raises(ConfigError, match="cannot watch") as err:
        store.context(ctx, False, "cluster.c.ssl", "c")
    assert err.value.path == f"sds[{sds}]"
    assert store.files == {}


def test_a_missing_secret_name_is_a_config_error(store, ca, tmp_path):
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"other": write_pem(tmp_path, "o", ca.issue_cert("o.test"))}))
    with pytest.raises(ConfigError, match="'client' is not in"):
        store.context(client_context(sds), False, "cluster.c.ssl", "c")


def test_static_secret_replaced_all_or_nothing(store, ca, tmp_path):
    one, two = write_pem(tmp_path, "one", ca.issue_cert("one.test")), write_pem(tmp_path, "two", ca.issue_cert("two.test"))

    def secret(files):
        return t.Secret("client", tls_certificate=t.TlsCertificate(t.DataSource(filename=str(files[0])),
                                                                   t.DataSource(filename=str(files[1]))))
    store.static = {"client": secret(one)}
    ctx = t.UpstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("client"),)))
    a = store.context(ctx, False, "cluster.a.ssl", "a")
    b = store.context(ctx, False, "cluster.b.ssl", "b")
    assert store.set_static([secret(two)]) == ["client"]
    assert sans(a.specs[-1]) == sans(b.specs[-1]) == ["two.test"]
    with pytest.raises(ConfigError, match="key does not match"):
        store.set_static([secret((one[0], two[1]))])
    assert sans(a.specs[-1]) == sans(b.specs[-1]) == ["two.test"]     # both kept the good one
    assert store.static["client"] == secret(two)
    with pytest.raises(ConfigError, match="unknown static secret"):
        store.set_static([])                            # still in use


# --- end to end: the proxy's own TLS, a real TLS upstream ----------------------------------

def tls_upstream(ca, tmp_path):
    """A TLS server requiring a client certificate of ``ca``: it sends the client
    certificate's first DNS SAN and a newline, then echoes."""
    chain, key = write_pem(tmp_path, "upstream", ca.issue_cert("localhost", "127.0.0.1"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)

    def handler(sock, server):
        with context.wrap_socket(sock, server_side=True) as s:
            peer = s.getpeercert()
            name = [v for k, v in peer.get("subjectAltName", ()) if k == "DNS"][0]
            s.sendall(name.encode() + b"\n")
            while True:
                data = s.recv(65536)
                if not data:
                    return name
                s.sendall(data)

    return ThreadedServer(handler, name="tls-upstream")


def read_line(sock):
    out = b""
    while not out.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        out += chunk
    return out.decode().strip()


@needs_core_tls
def test_rotated_client_certificate_end_to_end(ca, tmp_path):
    upstream = tls_upstream(ca, tmp_path)
    first = write_pem(tmp_path, "one", ca.issue_cert("one.test"))
    second = write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"client": first}))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = t.UpstreamTlsContext(sni="localhost", common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("client", ConfigSource(path=str(sds))),),
        validation_context=t.CertificateValidationContext(trusted_ca=t.DataSource(filename=str(ca_file)))))
    proxy = Proxy([Listener("l", TcpProxy("c"), stat_prefix="t")],
                  [Cluster("c", [Endpoint("127.0.0.1", upstream.port)], tls=tls)], concurrency=1)
    proxy.start()
    try:
        addr = proxy.listener_address("l")
        before = socket.create_connection(addr, timeout=5)
        assert read_line(before) == "one.test"

        publish(sds, sds_document("v2", {"client": second}))
        wait_for(lambda: proxy.stats().get("sds.client.update_success") == 2)
        after = socket.create_connection(addr, timeout=5)
        assert read_line(after) == "two.test"
        # the connection opened before the rotation goes on, with its certificate
        before.sendall(b"still here")
        assert before.recv(64) == b"still here"
        after.close()

        publish(sds, "resources: [unclosed\n")
        wait_for(lambda: proxy.stats().get("sds.client.update_failure") == 1)
        again = socket.create_connection(addr, timeout=5)
        assert read_line(again) == "two.test"
        again.close()
        before.close()
        assert proxy.draining_listeners() == []
    finally:
        proxy.stop(0.5)
        upstream.close()


def test_filter_chains_of_one_listener_keep_their_own_contexts(store, ca, tmp_path):
    """Two chains of one listener (same owner, same ssl stats) with their own secrets:
    each has its handle, a rotated secret updates only the one naming it, and the
    contexts no longer in force are forgotten."""
    def secret(name, files):
        return t.Secret(name, tls_certificate=t.TlsCertificate(t.DataSource(filename=str(files[0])),
                                                               t.DataSource(filename=str(files[1]))))

    def server(name):
        return t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
            tls_certificate_sds_secret_configs=(t.SdsSecretConfig(name),)))
    a1, a2, b1 = (write_pem(tmp_path, n, ca.issue_cert(f"{n}.test")) for n in ("a1", "a2", "b1"))
    store.static = {"a": secret("a", a1), "b": secret("b", b1)}
    ha = store.context(server("a"), True, "listener.127.0.0.1_443.ssl", "l")
    hb = store.context(server("b"), True, "listener.127.0.0.1_443.ssl", "l")
    assert ha is not hb
    store.set_static([secret("a", a2), secret("b", b1)])
    assert sans(ha.specs[-1]) == ["a2.test"] and len(hb.specs) == 1
    store.keep([("l", True, server("a")), ("l", True, server("b"))])
    assert len(store.uses) == 2
    store.keep([("l", True, server("a"))])
    assert [k[3] for k in store.uses] == [repr(server("a"))]


def server_name_seen(addr, ca, session=None):
    """A TLS connection to the proxy (Python's ssl, trusting ``ca``): (the socket, the
    first DNS SAN of the certificate the proxy presented)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    s = context.wrap_socket(socket.create_connection(addr, timeout=5), server_hostname="localhost")
    der = s.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return s, cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)[0]


@needs_core_tls
def test_rotated_server_certificate_end_to_end(ca, tmp_path):
    """A listener's certificate from an SDS file: after the file is replaced, a new
    handshake gets the new certificate while a connection made before goes on; a bad file
    keeps the certificate in force; nothing drains."""
    echo = EchoServer()
    first = write_pem(tmp_path, "one", ca.issue_cert("one.test"))
    second = write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"server": first}))
    tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("server", ConfigSource(path=str(sds))),)))
    proxy = Proxy([Listener("l", TcpProxy("c"), stat_prefix="t", tls=tls)],
                  [Cluster("c", [Endpoint("127.0.0.1", echo.port)])], concurrency=1)
    proxy.start()
    try:
        addr = proxy.listener_address("l")
        before, name = server_name_seen(addr, ca)
        assert name == "one.test"
        before.sendall(b"ping")
        assert before.recv(64) == b"ping"

        publish(sds, sds_document("v2", {"server": second}))
        wait_for(lambda: proxy.stats().get("sds.server.update_success") == 2)
        after, name = server_name_seen(addr, ca)
        assert name == "two.test"
        after.sendall(b"new")
        assert after.recv(64) == b"new"
        before.sendall(b"old")                  # opened before the rotation: still served
        assert before.recv(64) == b"old"
        after.close()

        publish(sds, sds_document("v3", {"server": (first[0], second[1])}))     # key of another cert
        wait_for(lambda: proxy.stats().get("sds.server.update_rejected") == 1)
        again, name = server_name_seen(addr, ca)
        assert name == "two.test"
        again.close()
        before.close()
        assert proxy.draining_listeners() == [] and proxy.stats()["listener_manager.listener_modified"] == 0
        # No listener uses the file any more: its counters and dump entry go (Envoy ends
        # a subscription nothing uses).
        proxy.update(listeners=[])
        assert not [k for k in proxy.stats() if k.startswith("sds.server.")]
        secrets_dump = [c for c in proxy.config_dump()["configs"] if c["@type"].endswith("SecretsConfigDump")]
        assert not secrets_dump or not secrets_dump[0].get("dynamic_active_secrets")
    finally:
        proxy.stop(0.5)
        echo.close()


@needs_core_tls
def test_certificate_file_replaced_at_its_path_end_to_end(ca, tmp_path):
    """The SDS file names the same certificate and key paths before and after; new files
    moved onto those paths: a new TLS connection gets the new certificate, one made
    before goes on, nothing drains."""
    echo = EchoServer()
    chain, key = write_pem(tmp_path, "server", ca.issue_cert("one.test"))
    sds = tmp_path / "sds.yaml"
    publish(sds, sds_document("v1", {"server": (chain, key)}))
    tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("server", ConfigSource(path=str(sds))),)))
    proxy = Proxy([Listener("l", TcpProxy("c"), stat_prefix="t", tls=tls)],
                  [Cluster("c", [Endpoint("127.0.0.1", echo.port)])], concurrency=1)
    proxy.start()
    try:
        addr = proxy.listener_address("l")
        before, name = server_name_seen(addr, ca)
        assert name == "one.test"
        new_chain, new_key = write_pem(tmp_path, "new", ca.issue_cert("two.test"))
        os.rename(new_chain, chain)
        os.rename(new_key, key)

        def seen():
            s, name = server_name_seen(addr, ca)
            s.close()
            return name == "two.test"
        wait_for(seen)
        before.sendall(b"old")
        assert before.recv(64) == b"old"
        before.close()
        assert proxy.stats()["listener_manager.listener_modified"] == 0
    finally:
        proxy.stop(0.5)
        echo.close()


def file_secret(name, files):
    return t.Secret(name, tls_certificate=t.TlsCertificate(t.DataSource(filename=str(files[0])),
                                                           t.DataSource(filename=str(files[1]))))


@needs_core_tls
def test_static_secret_replaced_by_update_end_to_end(ca, tmp_path):
    """Proxy.update(secrets=...): the listener's certificate changes for new handshakes,
    in place (no listener rebuilt or drained); a secret that does not compile is refused
    with its reason and the one in force stays."""
    echo = EchoServer()
    one, two = write_pem(tmp_path, "one", ca.issue_cert("one.test")), write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("server"),)))
    proxy = Proxy([Listener("l", TcpProxy("c"), stat_prefix="t", tls=tls)],
                  [Cluster("c", [Endpoint("127.0.0.1", echo.port)])], concurrency=1,
                  secrets=[file_secret("server", one)])
    proxy.start()
    try:
        addr = proxy.listener_address("l")
        before, name = server_name_seen(addr, ca)
        assert name == "one.test"
        proxy.update(secrets=[file_secret("server", two)])
        after, name = server_name_seen(addr, ca)
        assert name == "two.test"
        before.sendall(b"old")
        assert before.recv(64) == b"old"
        with pytest.raises(ConfigError, match="key"):
            proxy.update(secrets=[file_secret("server", (one[0], two[1]))])
        with pytest.raises(ConfigError, match="unknown static secret 'server'"):
            proxy.update(secrets=[])
        again, name = server_name_seen(addr, ca)
        assert name == "two.test"
        for s in (before, after, again):
            s.close()
        assert proxy.stats()["listener_manager.listener_modified"] == 0
        assert proxy.config_dump()["configs"][-1]["static_secrets"][0]["name"] == "server"
    finally:
        proxy.stop(0.5)
        echo.close()


@needs_core_tls
def test_update_with_new_secret_and_a_listener_that_fails_changes_nothing(ca, tmp_path):
    """Proxy.update(secrets=..., listeners=...) is all or nothing: a good new certificate
    with a listener that cannot bind raises, and the old certificate is still served (and
    the secret store keeps no context of the failed install)."""
    echo = EchoServer()
    one, two = write_pem(tmp_path, "one", ca.issue_cert("one.test")), write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificate_sds_secret_configs=(t.SdsSecretConfig("server"),)))
    cluster = Cluster("c", [Endpoint("127.0.0.1", echo.port)])
    listener = Listener("l", TcpProxy("c"), stat_prefix="t", tls=tls)
    proxy = Proxy([listener], [cluster], concurrency=1, secrets=[file_secret("server", one)])
    proxy.start()
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        addr = proxy.listener_address("l")
        uses = set(proxy.secret_store.uses)
        other_tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
            tls_certificate_sds_secret_configs=(t.SdsSecretConfig("server"),), alpn_protocols=("x",)))
        bad = Listener("bad", TcpProxy("c"), stat_prefix="b", port=taken.getsockname()[1], tls=other_tls)
        with pytest.raises(Exception, match="(?i)address|bind|in use"):
            proxy.update(secrets=[file_secret("server", two)], listeners=[listener, bad])
        s, name = server_name_seen(addr, ca)
        s.close()
        assert name == "one.test"
        assert set(proxy.secret_store.uses) == uses
        assert [x.name for x in proxy.secret_store.static.values()] == ["server"]
        proxy.update(secrets=[file_secret("server", two)])
        s, name = server_name_seen(addr, ca)
        s.close()
        assert name == "two.test"
    finally:
        taken.close()
        proxy.stop(0.5)
        echo.close()


@needs_core_tls
def test_rotated_trusted_ca_for_client_certificates(ca, tmp_path):
    """Mutual TLS on a listener whose trusted CA comes from an SDS file: a client of a
    new CA is refused until the file names that CA, then accepted on its next handshake."""
    echo = EchoServer()
    other = trustme.CA()
    server = write_pem(tmp_path, "srv", ca.issue_cert("localhost"))
    client = other.issue_cert("client.test")
    chain, key = write_pem(tmp_path, "client", client)
    ca_one, ca_two = tmp_path / "ca1.pem", tmp_path / "ca2.pem"
    ca.cert_pem.write_to_path(str(ca_one))
    other.cert_pem.write_to_path(str(ca_two))
    sds = tmp_path / "sds.yaml"

    def doc(version, ca_file):
        return {"version_info": version, "resources": [{"@type": SECRET, "name": "clients", "validation_context": {
            "trusted_ca": {"filename": str(ca_file)}}}]}
    publish(sds, doc("v1", ca_one))
    tls = t.DownstreamTlsContext(require_client_certificate=True, common_tls_context=t.CommonTlsContext(
        tls_certificates=(t.TlsCertificate(t.DataSource(filename=str(server[0])), t.DataSource(filename=str(server[1]))),),
        validation_context_sds_secret_config=t.SdsSecretConfig("clients", ConfigSource(path=str(sds)))))
    proxy = Proxy([Listener("l", TcpProxy("c"), stat_prefix="t", tls=tls)],
                  [Cluster("c", [Endpoint("127.0.0.1", echo.port)])], concurrency=1)
    proxy.start()

    def roundtrip():
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.load_cert_chain(chain, key)
        with context.wrap_socket(socket.create_connection(proxy.listener_address("l"), timeout=5),
                                 server_hostname="localhost") as s:
            s.sendall(b"hi")
            return s.recv(64)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            if roundtrip() != b"hi":        # (TLS 1.3: the refusal may come on the first read)
                raise ConnectionError("refused")
        publish(sds, doc("v2", ca_two))
        wait_for(lambda: proxy.stats().get("sds.clients.update_success") == 2)
        assert roundtrip() == b"hi"
    finally:
        proxy.stop(0.5)
        echo.close()


@needs_core_tls
def test_envoy_yaml_with_file_sds_end_to_end(ca, tmp_path):
    """The same path from an Envoy bootstrap: a TLS filter chain whose certificate is an
    SDS file secret (path_config_source with watched_directory), rotated by a move into
    the directory; the config dump lists the secret as a dynamic one, its key redacted."""
    echo = EchoServer()
    vol = tmp_path / "vol"
    vol.mkdir()
    first = write_pem(tmp_path, "one", ca.issue_cert("one.test"))
    second = write_pem(tmp_path, "two", ca.issue_cert("two.test"))
    sds = vol / "sds.yaml"
    publish(sds, sds_document("v1", {"server": first}))
    boot = {
        "static_resources": {
            "listeners": [{"name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                           "filter_chains": [{
                               "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                                   "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                   "stat_prefix": "t", "cluster": "echo"}}],
                               "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                                   "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                                            "DownstreamTlsContext",
                                   "common_tls_context": {"tls_certificate_sds_secret_configs": [{
                                       "name": "server", "sds_config": {"path_config_source": {
                                           "path": str(sds), "watched_directory": {"path": str(vol)}}}}]}}}}]}],
            "clusters": [{"name": "echo", "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": echo.port}}}}]}]}}]}}
    proxy = Proxy.from_envoy(boot, concurrency=1)
    proxy.start()
    try:
        addr = proxy.listener_address("tls")
        s, name = server_name_seen(addr, ca)
        assert name == "one.test"
        s.close()
        tmp = vol / "next.yaml"
        tmp.write_text(yaml.safe_dump(sds_document("v2", {"server": second})))
        os.rename(tmp, sds)
        wait_for(lambda: proxy.stats().get("sds.server.update_success") == 2)
        s, name = server_name_seen(addr, ca)
        assert name == "two.test"
        s.close()
        secrets = proxy.config_dump()["configs"][-1]
        (entry,) = secrets["dynamic_active_secrets"]
        assert (entry["name"], entry["version_info"]) == ("server", "v2")
        assert entry["secret"]["tls_certificate"]["private_key"] == {"filename": "[redacted]"}
    finally:
        proxy.stop(0.5)
        echo.close()
