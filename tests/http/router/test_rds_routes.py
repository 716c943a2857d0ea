"""RDS route configurations: a connection manager's ``rds`` names a RouteConfiguration that
Proxy.update(routes=...) gives (the xDS layer calls it). Each worker routes with the table
of its RouteProvider slot: an update reaches the next request of an open keep-alive
connection, a request in flight keeps the table it started with, no listener is rebuilt.
A listener whose route configuration has not come is warming. A route may name a cluster
that does not exist: 503 NC, as Envoy answers."""
from __future__ import annotations

import http.client
import socket
import threading

import pytest

from fastproxy import Cluster, Endpoint, Listener, NativeHttpFilter, Proxy
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError
from fastproxy.http import HEADER_MUTATION, HeaderMutation, HeaderMutationOp, Mutations
from fastproxy.http.model import (AccessLog, DirectResponse, HeaderMutations, HeaderValueOption,
                                  HttpConnectionManager, Rds, Route, RouteAction, RouteConfiguration,
                                  RouteMatch, VirtualHost)
from fastproxy.model import ConfigSource

from conftest import envoy_bootstrap, envoy_yaml, find_envoy, free_port, http_listener, start_envoy, wait_for
from http_upstreams import RawHttpUpstream, exchange

ADS = ConfigSource(ads=True)


def direct(name, body, **rc_kw):
    """Route configuration ``name``: every request is answered ``body`` (200)."""
    return RouteConfiguration(name=name, virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), direct_response=DirectResponse(200, body))])], **rc_kw)


def to_cluster(name, cluster, tag=None):
    """Route configuration ``name``: everything to ``cluster``; the response says ``tag``
    (x-routes) when given."""
    headers = HeaderMutations(response_headers_to_add=[HeaderValueOption("x-routes", tag)]) if tag else HeaderMutations()
    return RouteConfiguration(name=name, virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster=cluster), headers=headers)])])


def rds_listener(route_name, name="l", port=0, **hcm_kw):
    return Listener(name, HttpConnectionManager("ingress", rds=Rds(route_name, ADS), **hcm_kw), port=port)


def get(conn, path="/"):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read(), r


# ---------------------------------------------------------------- the model and the loader

def test_envoy_bootstrap_with_rds_loads_without_its_route_configuration():
    l = http_listener()
    tc = l["filter_chains"][0]["filters"][0]["typed_config"]
    del tc["route_config"]
    tc["rds"] = {"route_config_name": "r1", "config_source": {"ads": {}, "resource_api_version": "V3"}}
    b = load_envoy(envoy_bootstrap(listeners=[l]))
    hcm = b.listeners[0].handler
    assert hcm.route_config is None
    assert hcm.rds == Rds("r1", ConfigSource(ads=True))
    p = Proxy.from_bootstrap(b, concurrency=1)
    with p:
        assert p.warming_listeners() == ["web"]
        with pytest.raises(KeyError, match="warming"):
            p.listener_address("web")
        # The config dump writes the rds back as Envoy's fields.
        dumped = p.config_dump()["configs"][0]["bootstrap"]["static_resources"]["listeners"][0]
        tc = dumped["filter_chains"][0]["filters"][0]["typed_config"]
        assert tc["rds"] == {"route_config_name": "r1", "config_source": {"resource_api_version": "V3", "ads": {}}}


def test_an_rds_route_configuration_resource_loads_with_clusters_unchecked():
    """What the xDS layer reads an RDS resource with: Envoy's RouteConfiguration, whose
    clusters need not exist; a per-filter config is read with the connection manager's
    filters (those the loader read)."""
    from fastproxy.config.http import route_configuration
    rc = route_configuration({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "r1",
        "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "not-yet"},
             "typed_per_filter_config": {"hm": {
                 "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3."
                          "HeaderMutationPerRoute",
                 "mutations": {"response_mutations": [{"append": {"header": {"key": "x-a", "value": "1"}}}]}}}}]}]},
        "resources[0]", http_filters=_loaded_filters())
    assert rc.name == "r1" and rc.virtual_hosts[0].routes[0].route.cluster == "not-yet"
    assert isinstance(rc.virtual_hosts[0].routes[0].typed_per_filter_config["hm"], HeaderMutation)
    with pytest.raises(ConfigError) as e:
        route_configuration({"name": "r1", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": ""}}]}]}, "resources[0]")
    assert e.value.path == "resources[0].virtual_hosts[0].routes[0].route.cluster"


def _loaded_filters():
    l = http_listener(http_filters=[{"name": "hm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"}}])
    return load_envoy(envoy_bootstrap(listeners=[l])).listeners[0].handler.http_filters


@pytest.mark.parametrize("hcm, path, words", [
    (HttpConnectionManager("i", direct("", b"x"), rds=Rds("r", ADS)), "listeners[0].handler.rds", "only one of"),
    (HttpConnectionManager("i"), "listeners[0].handler.route_config", "expected RouteConfiguration"),
    (HttpConnectionManager("i", rds=Rds("", ADS)), "listeners[0].handler.rds.route_config_name", "empty"),
    (HttpConnectionManager("i", rds=Rds("r", "ads")), "listeners[0].handler.rds.config_source",
     "expected ConfigSource"),
    (HttpConnectionManager("i", rds="r"), "listeners[0].handler.rds", "expected Rds"),
])
def test_bad_rds_in_the_model_names_its_path(hcm, path, words):
    with pytest.raises(ConfigError) as e:
        Proxy([Listener("l", hcm, port=0)], [])
    assert e.value.path == path and words in str(e.value)


def test_bad_routes_given_to_update_name_their_path():
    with Proxy([rds_listener("r1")], [], concurrency=1) as p:
        bad_domain = RouteConfiguration(name="r1", virtual_hosts=[VirtualHost("vh", [])])
        for routes, path in (([direct("", b"x")], "routes[0].name"),
                             ([direct("r1", b"x"), direct("r1", b"y")], "routes[1].name"),
                             ([direct("r2", b"x"), bad_domain], "routes[1].virtual_hosts[0].domains")):
            with pytest.raises(ConfigError) as e:
                p.update(routes=routes)
            assert e.value.path == path, e.value
        with pytest.raises(TypeError, match="routes"):
            p.update(routes=direct("r1", b"x"))
        assert p.warming_listeners() == ["l"]       # nothing was taken


# ---------------------------------------------------------------- updates reach open connections

def test_next_request_on_a_keepalive_connection_follows_new_routes():
    with Proxy([rds_listener("r1")], [], concurrency=2) as p:
        p.update(routes=[direct("r1", b"one")])
        listener = p._listeners["l"]
        conn = http.client.HTTPConnection(*p.listener_address("l"), timeout=5)
        assert get(conn)[:2] == (200, b"one")
        p.update(routes=[direct("r1", b"two")])
        # The same connection (no Connection: close came), its next request: the new table.
        assert get(conn)[:2] == (200, b"two")
        assert not conn.sock._closed
        # No listener was rebuilt for it (a rebuilt one would drain its connections).
        assert p._listeners["l"] is listener
        # Route configurations are in the config dump by their name.
        routes = p.config_dump()["configs"][-2]["static_route_configs"]
        assert [r["route_config"]["name"] for r in routes] == ["r1"]
        conn.close()


def test_listeners_naming_one_route_configuration_share_its_updates():
    with Proxy([rds_listener("r", "a"), rds_listener("r", "b")], [], concurrency=2) as p:
        p.update(routes=[direct("r", b"v1")])
        conns = [http.client.HTTPConnection(*p.listener_address(n), timeout=5) for n in ("a", "b")]
        assert [get(c)[1] for c in conns] == [b"v1", b"v1"]
        p.update(routes=[direct("r", b"v2")])
        assert [get(c)[1] for c in conns] == [b"v2", b"v2"]
        for c in conns:
            c.close()


def test_request_in_flight_keeps_its_table():
    """A request waiting on a slow upstream when the routes change ends with its own
    route (its response header mutation), the next one on that connection takes the new."""
    release = threading.Event()

    def slow(method, path, headers, body):
        if path == "/slow":
            release.wait(10)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    up = RawHttpUpstream(slow)
    try:
        with Proxy([rds_listener("r")], [Cluster("c", [Endpoint("127.0.0.1", up.port)])], concurrency=1) as p:
            p.update(routes=[to_cluster("r", "c", "v1")])
            conn = http.client.HTTPConnection(*p.listener_address("l"), timeout=10)
            conn.request("GET", "/slow")
            wait_for(lambda: any(r[1] == "/slow" for r in up.requests), msg="request at the upstream")
            p.update(routes=[to_cluster("r", "c", "v2")])
            release.set()
            r = conn.getresponse()
            assert (r.status, r.read(), r.getheader("x-routes")) == (200, b"ok", "v1")
            status, body, r = get(conn, "/next")
            assert (status, body, r.getheader("x-routes")) == (200, b"ok", "v2")
            conn.close()
    finally:
        release.set()
        up.close()


def test_per_route_filter_configs_of_an_rds_table_follow_its_updates():
    """The table owns its routes' per-filter configs: they change with it, on an open
    connection, and outlive the listener version they were first built for."""
    filt = NativeHttpFilter("hm", HEADER_MUTATION, HeaderMutation())

    def tagged(tag):
        rc = direct("r", b"x")
        rc.virtual_hosts[0].routes[0].typed_per_filter_config = {"hm": HeaderMutation(Mutations(
            response_mutations=[HeaderMutationOp(append=HeaderValueOption("x-tag", tag))]))}
        return rc
    with Proxy([rds_listener("r", http_filters=[filt])], [], concurrency=1) as p:
        p.update(routes=[tagged("a")])
        conn = http.client.HTTPConnection(*p.listener_address("l"), timeout=5)
        assert get(conn)[2].getheader("x-tag") == "a"
        p.update(routes=[tagged("b")])
        assert get(conn)[2].getheader("x-tag") == "b"
        # A new listener version (another server name) shares the table: still "b".
        addr = p.listener_address("l")
        p.update(listeners=[Listener("l", HttpConnectionManager("ingress", rds=Rds("r", ADS), server_name="s2",
                                                                http_filters=[filt]), address=addr[0], port=addr[1])])
        c2 = http.client.HTTPConnection(*addr, timeout=5)
        status, _, r = get(c2)
        assert (r.getheader("x-tag"), r.getheader("server")) == ("b", "s2")
        conn.close()
        c2.close()


# ---------------------------------------------------------------- warming listeners

def test_new_listener_warms_until_its_routes_come():
    port = free_port()
    with Proxy([Listener("static", HttpConnectionManager("s", direct("", b"static")), port=0)], [],
               concurrency=1) as p:
        p.update(listeners=list(p.config.listeners) + [rds_listener("r", "new", port=port)])
        assert p.warming_listeners() == ["new"]
        assert p.stats()["listener_manager.total_listeners_active"] == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        p.update(routes=[direct("r", b"warm")])
        assert p.warming_listeners() == []
        assert p.listener_address("new") == ("127.0.0.1", port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        assert get(conn)[:2] == (200, b"warm")
        conn.close()


def test_changed_listener_keeps_serving_its_old_version_while_the_new_one_warms():
    with Proxy([Listener("l", HttpConnectionManager("ingress", direct("", b"old")), port=0)], [],
               concurrency=1) as p:
        addr = p.listener_address("l")
        p.update(listeners=[rds_listener("r", port=addr[1])])
        assert p.warming_listeners() == ["l"]
        assert p.listener_address("l") == addr
        conn = http.client.HTTPConnection(*addr, timeout=5)
        assert get(conn)[:2] == (200, b"old")
        conn.close()
        p.update(routes=[direct("r", b"new")])
        assert p.warming_listeners() == []
        conn = http.client.HTTPConnection(*addr, timeout=5)
        assert get(conn)[:2] == (200, b"new")
        conn.close()


def test_warming_listeners_old_version_goes_on_taking_its_route_updates():
    with Proxy([rds_listener("r1")], [], concurrency=1) as p:
        p.update(routes=[direct("r1", b"a")])
        addr = p.listener_address("l")
        p.update(listeners=[rds_listener("r2", port=addr[1])])
        assert p.warming_listeners() == ["l"]
        conn = http.client.HTTPConnection(*addr, timeout=5)
        assert get(conn)[1] == b"a"
        p.update(routes=[direct("r1", b"b")])           # the old version's routes change
        assert get(conn)[1] == b"b"
        p.update(routes=[direct("r1", b"b"), direct("r2", b"c")])
        assert p.warming_listeners() == []
        c2 = http.client.HTTPConnection(*addr, timeout=5)
        assert get(c2)[1] == b"c"
        conn.close()
        c2.close()


# ---------------------------------------------------------------- routes to missing clusters

def _access_log_fmt():
    return "%RESPONSE_CODE% %RESPONSE_FLAGS% [%UPSTREAM_CLUSTER%] body=%BYTES_SENT%\n"


def test_route_to_a_missing_cluster_is_503_nc_until_the_cluster_comes(tmp_path):
    up = RawHttpUpstream()
    log = tmp_path / "access.log"
    try:
        with Proxy([rds_listener("r", access_log=[AccessLog(str(log), _access_log_fmt())])], [],
                   concurrency=2) as p:
            p.update(routes=[to_cluster("r", "later")])
            addr = p.listener_address("l")
            out = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
            head, _, body = out.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"content-length: 0" in head.lower()
            assert body == b""
            assert p.stats()["http.ingress.no_cluster"] == 1
            wait_for(lambda: log.exists() and log.read_text(), msg="access log line")
            assert log.read_text() == "503 NC [-] body=0\n"
            # The cluster comes: the table refers to it from then on.
            p.update(clusters=[Cluster("later", [Endpoint("127.0.0.1", up.port)])])
            out = exchange(addr, b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"GET /now 0")
    finally:
        up.close()


@pytest.mark.skipif(find_envoy() is None, reason="needs the envoy binary")
def test_missing_cluster_answer_is_envoys(tmp_path):
    """Envoy 1.40 with validate_clusters false (RDS's default) answers a route to a cluster
    that does not exist 503, no body, flag NC: fastproxy's answer has the same status line,
    fields (but date and server) and body."""
    rc = {"validate_clusters": False, "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "nope"}}]}]}
    proc, _, envoy_addr = start_envoy(envoy_yaml(listeners=[http_listener(route_config=rc)]), tmp_path)
    try:
        theirs = exchange(envoy_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
    finally:
        proc.terminate()
        proc.wait()
    with Proxy([rds_listener("r")], [], concurrency=1) as p:
        p.update(routes=[to_cluster("r", "nope")])
        ours = exchange(p.listener_address("l"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)

    def shape(raw):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        return lines[0], sorted(l.lower() for l in lines[1:] if not l.lower().startswith(("date:", "server:"))), body
    assert shape(ours) == shape(theirs)
