"""Route hash_policy (Envoy's RouteAction.hash_policy) with the consistent-hash balancers:
the same request reaches the same host while the host set is unchanged, checked host for host
against a real Envoy 1.40 running the same YAML (real upstreams that say who they are), the
generated cookie against Envoy's Set-Cookie, the share of keys that move when a host leaves,
and config errors against `envoy --mode validate`."""
from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess

import pytest

from conftest import envoy_yaml, find_envoy, fragment, http_listener, start_envoy, static_cluster, typed
from http_upstreams import RawHttpUpstream

import fastproxy
from fastproxy.config import load_envoy
from fastproxy.config.dump import bootstrap_json
from fastproxy.errors import ConfigError
from fastproxy.xds.xxhash64 import xxh64      # the pure-Python xxHash64 (xDS versions)

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")

N = 5                       # hosts in the cluster
KEYS = 40                   # keys per kind in the host-for-host checks


# --------------------------------------------------------------------------- helpers

def _named(name):
    def handler(method, path, headers, body):
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name.encode())
    return handler


@pytest.fixture
def hosts():
    """N upstreams, each answering with its name (h0..h4)."""
    ups = [RawHttpUpstream(_named(f"h{i}")) for i in range(N)]
    yield ups
    for u in ups:
        u.close()


def bootstrap(ports, hash_policy, lb="RING_HASH", filters=()):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "hash_policy": fragment(hash_policy)}}]
    return envoy_yaml([http_listener(routes, http_filters=filters)],
                      [static_cluster("backend", ports, connect_timeout="1s", lb_policy=lb)])


@contextlib.contextmanager
def both(text, tmp_path, envoy_text=None):
    """fastproxy (two workers) and Envoy on the same bootstrap: their listener addresses."""
    p = fastproxy.Proxy.from_envoy(text, concurrency=2)
    p.start()
    try:
        proc, _, eaddr = start_envoy(envoy_text or text, tmp_path)
        try:
            yield p.listener_address("web"), eaddr
        finally:
            proc.terminate()
            proc.wait()
    finally:
        p.stop(drain_timeout=0.5)


class Client:
    """One keep-alive HTTP/1.1 connection; get() -> (the host that answered, Set-Cookie values)."""

    def __init__(self, addr, source=None):
        self.conn = http.client.HTTPConnection(addr[0], addr[1], timeout=10,
                                               source_address=(source, 0) if source else None)

    def get(self, path="/", headers=()):
        c = self.conn
        items = list(headers.items() if isinstance(headers, dict) else headers)
        c.putrequest("GET", path, skip_accept_encoding=True,
                     skip_host=any(name.lower() == "host" for name, _ in items))
        for name, value in items:
            c.putheader(name, value)
        c.endheaders()
        r = c.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body)
        self.headers = r.getheaders()
        return body, [v for k, v in self.headers if k.lower() == "set-cookie"]

    def close(self):
        self.conn.close()


def host_of(addr, path="/", headers=(), source=None):
    c = Client(addr, source)
    try:
        return c.get(path, headers)[0]
    finally:
        c.close()


# --------------------------------------------------------------------------- the same host

# kind -> (hash_policy, request(k) -> (path, headers, source address))
KINDS = {
    "header": ("- header: {header_name: X-User}",
               lambda k: ("/", {"x-user": f"user-{k}"}, None)),
    "header_regex_rewrite": (r"""
        - header:
            header_name: x-user
            regex_rewrite: {pattern: {regex: '^([^.]*)\..*$'}, substitution: '\1'}
        """, lambda k: ("/", {"x-user": f"user-{k}.{k * 7919 % 1000}"}, None)),
    "authority": ("- header: {header_name: ':authority'}",
                  lambda k: ("/", {"host": f"site{k}.example"}, None)),
    "host": ("- header: {header_name: Host}",               # Envoy's alias of :authority
             lambda k: ("/", {"host": f"site{k}.example"}, None)),
    "cookie": ("- cookie: {name: sid}",
               lambda k: ("/", {"cookie": f"a=b; sid=\"s{k}\"; c=d"}, None)),
    "query_parameter": ("- query_parameter: {name: u}",
                        lambda k: (f"/p?x=1&u=q{k}&u=other", {}, None)),
    "source_ip_xff": ("- connection_properties: {source_ip: true}",
                      lambda k: ("/", {"x-forwarded-for": f"10.1.{k // 200}.{k % 200 + 1}"}, None)),
    "source_ip_peer": ("- connection_properties: {source_ip: true}",
                       lambda k: ("/", {}, f"127.0.{k // 200}.{k % 200 + 2}")),
}


@needs_envoy
@pytest.mark.parametrize("lb", ["RING_HASH", "MAGLEV"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_same_request_same_host_as_envoy(kind, lb, hosts, tmp_path):
    policy, request = KINDS[kind]
    text = bootstrap([u.port for u in hosts], policy, lb)
    with both(text, tmp_path) as (fp, ev):
        picked = set()
        for k in range(KEYS):
            path, headers, source = request(k)
            first = host_of(fp, path, headers, source)
            again = host_of(fp, path, headers, source)     # another connection, maybe another worker
            envoy = host_of(ev, path, headers, source)
            assert first == again == envoy, (k, first, again, envoy)
            picked.add(first)
        assert len(picked) >= 3, picked                     # the hash, not one fixed host


@needs_envoy
@pytest.mark.parametrize("rewrite", [False, True])
@pytest.mark.parametrize("nlines", [2, 12])
def test_header_lines_in_any_order_hash_alike_and_as_envoy(nlines, rewrite, hosts, tmp_path):
    """Every line of the header counts, whatever their order (Envoy sorts them), each after
    the regex_rewrite; 12 lines of 150 bytes rewritten take the core past its stack buffers."""
    policy = "- header: {header_name: x-user}"
    if rewrite:
        policy = r"""
            - header:
                header_name: x-user
                regex_rewrite: {pattern: {regex: '([0-9]+)'}, substitution: '<\1>'}
            """
    text = bootstrap([u.port for u in hosts], policy)
    with both(text, tmp_path) as (fp, ev):
        picked = set()
        for k in range(KEYS // 2):
            lines = [("x-user", f"{j}-{k}-" + "v" * (150 if nlines > 2 else 3)) for j in range(nlines)]
            got = {host_of(addr, "/", order) for addr in (fp, ev) for order in (lines, lines[::-1])}
            assert len(got) == 1, (k, got)
            picked |= got
        assert len(picked) >= 3, picked


def _c_filter_fixture():
    """The C example filter's build fixture, from its own test module (one home)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "http" / "filters" / "test_c_filter.py"
    spec = importlib.util.spec_from_file_location("c_filter_tests", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.c_filter


c_filter = _c_filter_fixture()


def state_setter(kind, request):
    """An HTTP filter that sets the filter state "session.key" from the x-session header:
    a Python filter (callbacks.filter_state) or the C example (api->filter_state_set)."""
    config = {"header": "x-session", "key": "session.key"}
    if kind == "python":
        return {"name": "state", "typed_config": typed(
            "xds.type.v3.TypedStruct", type_url="type.googleapis.com/fastproxy.python.HttpFilter",
            value={"class": "filters_for_tests:FilterStateFromHeader", "config": config})}
    ffi, lib = request.getfixturevalue("c_filter")
    fastproxy.Proxy.register_c_filter("hash_state", ffi.addressof(lib, "header_filter_table"), lib)
    return {"name": "state", "typed_config": typed(
        "xds.type.v3.TypedStruct", type_url="type.googleapis.com/fastproxy.c.HttpFilter",
        value={"filter": "hash_state", "config": {"state_header": "x-session", "state_key": "session.key"}})}


@needs_envoy
@pytest.mark.parametrize("setter", ["python", "c"])
def test_filter_state_set_by_a_filter_picks_as_envoys_hashable_string(setter, hosts, tmp_path, request):
    """A Python filter's callbacks.filter_state["session.key"], or a C filter's
    filter_state_set, is hashed as Envoy hashes the envoy.hashable_string its
    set_filter_state filter makes from the same header."""
    policy = "- filter_state: {key: session.key}"
    ports = [u.port for u in hosts]
    envoy_filter = {"name": "envoy.filters.http.set_filter_state", "typed_config": typed(
        "envoy.extensions.filters.http.set_filter_state.v3.Config",
        on_request_headers=[{"object_key": "session.key", "factory_key": "envoy.hashable_string",
                             "format_string": {"text_format_source": {"inline_string": "%REQ(x-session)%"}}}])}
    with both(bootstrap(ports, policy, filters=[state_setter(setter, request)]), tmp_path,
              envoy_text=bootstrap(ports, policy, filters=[envoy_filter])) as (fp, ev):
        picked = set()
        for k in range(KEYS):
            headers = {"x-session": f"session-{k}"}
            first, again, envoy = host_of(fp, "/", headers), host_of(fp, "/", headers), host_of(ev, "/", headers)
            assert first == again == envoy, (k, first, again, envoy)
            picked.add(first)
        assert len(picked) >= 3, picked


@needs_envoy
def test_terminal_stops_once_a_hash_exists(hosts, tmp_path):
    policy = """
        - header: {header_name: x-a}
          terminal: true
        - header: {header_name: x-b}
        """
    with both(bootstrap([u.port for u in hosts], policy), tmp_path) as (fp, ev):
        for k in range(KEYS):
            # x-a present: x-b does not count
            got = {host_of(addr, "/", {"x-a": f"a{k}", "x-b": b}) for addr in (fp, ev) for b in ("1", "2", "3")}
            assert len(got) == 1, (k, got)
            # x-a absent: x-b decides, as in Envoy
            only_b = {"x-b": f"b{k}"}
            assert host_of(fp, "/", only_b) == host_of(ev, "/", only_b)
        # x-b alone moves requests: the terminal flag did not drop it
        assert len({host_of(fp, "/", {"x-b": f"b{k}"}) for k in range(KEYS)}) >= 3


@needs_envoy
def test_policies_combine_as_envoys(hosts, tmp_path):
    """Several policies, each present or missing (a missing one is skipped), the same policy
    twice (rotation keeps them from cancelling out): the host is Envoy's every time."""
    policy = """
        - header: {header_name: x-a}
        - query_parameter: {name: q}
        - cookie: {name: c}
        - header: {header_name: x-a}
        - connection_properties: {source_ip: true}
        """
    with both(bootstrap([u.port for u in hosts], policy), tmp_path) as (fp, ev):
        picked = set()
        for k in range(KEYS):
            headers = {}
            if k % 2:
                headers["x-a"] = f"a{k}"
            if k % 3:
                headers["cookie"] = f"c=v{k}"
            path = f"/?q={k}" if k % 5 else "/"
            got = [host_of(addr, path, headers) for addr in (fp, fp, ev)]
            assert len(set(got)) == 1, (k, got)
            picked.add(got[0])
        assert len(picked) >= 3, picked


# --------------------------------------------------------------------------- the generated cookie

COOKIE_POLICY = """
    - cookie:
        name: sid
        ttl: 3600.5s
        path: /app
        attributes: [{name: SameSite, value: Lax}, {name: Secure}]
    """
SET_COOKIE = re.compile(r'sid="([0-9a-f]{16})"; Max-Age=3600; Path=/app; SameSite=Lax; Secure; HttpOnly')


@needs_envoy
@pytest.mark.parametrize("filtered", [False, True])
def test_generated_cookie_is_envoys_and_sticks(filtered, hosts, tmp_path, request):
    """filtered: a Python filter on the stream, so the response head goes through the encoder
    filters (the cookie is added before them, as Envoy's router adds it)."""
    ports = [u.port for u in hosts]
    text = bootstrap(ports, COOKIE_POLICY, filters=[state_setter("python", request)] if filtered else ())
    with both(text, tmp_path, envoy_text=bootstrap(ports, COOKIE_POLICY)) as (fp, ev):
        for addr in (fp, ev):
            c = Client(addr)
            try:
                host, cookies = c.get("/app")
                assert len(cookies) == 1 and SET_COOKIE.fullmatch(cookies[0]), cookies
                if filtered and addr == fp:     # the encoder filter saw it
                    assert ("x-filter-saw-set-cookie", "1") in c.headers, c.headers
                value = SET_COOKIE.fullmatch(cookies[0]).group(1)
                # Envoy's value: xxHash64 of the connection's peer then local address.
                peer, local = c.conn.sock.getsockname(), c.conn.sock.getpeername()
                assert value == f"{xxh64(f'{peer[0]}:{peer[1]}{local[0]}:{local[1]}'.encode()):016x}"
                # The same connection gets the same value again (no cookie sent).
                assert c.get("/app")[1] == cookies
                # With the cookie: no new one, and the host the first request went to.
                again, more = c.get("/app", {"cookie": f'sid="{value}"'})
                assert (again, more) == (host, [])
            finally:
                c.close()
            # Every proxy sends a cookie-holder to the same host (fastproxy's value to Envoy too).
            assert {host_of(a, "/app", {"cookie": f"sid={value}"}) for a in (fp, ev)} == {host}


@needs_envoy
def test_no_cookie_without_ttl_nor_for_a_balancer_that_does_not_hash(hosts, tmp_path):
    ports = [u.port for u in hosts]
    for text in (bootstrap(ports, "- cookie: {name: sid}"), bootstrap(ports, COOKIE_POLICY, lb="ROUND_ROBIN")):
        with both(text, tmp_path) as (fp, ev):
            for addr in (fp, ev):
                c = Client(addr)
                try:
                    assert c.get("/app")[1] == []
                finally:
                    c.close()


# --------------------------------------------------------------------------- a host leaves

# How many of the other hosts' keys may move when one of the N hosts leaves. MAGLEV: only the
# leaving host's keys move (its table keeps the others' entries). RING_HASH: Envoy scales the
# ring to minimum_ring_size whatever the host count, so each remaining host gets more points
# (1024/4 instead of 1024/5 by default), and those take keys from the others too: about 1/N
# more move, in Envoy as here (the picks are compared with Envoy's, key for key).
EXTRA_MOVES = {"MAGLEV": 0.03, "RING_HASH": 0.15}


@needs_envoy
@pytest.mark.parametrize("lb", ["RING_HASH", "MAGLEV"])
def test_only_about_one_nth_of_the_keys_move_when_a_host_leaves(lb, hosts, tmp_path, capsys):
    """2,000 keys over N = 5 hosts, then host h2 leaves: the keys that were on h2 move, few
    others (EXTRA_MOVES); fastproxy and Envoy pick the same host for every key, before and
    after."""
    keys = 2000
    policy = "- header: {header_name: x-key}"
    ports = [u.port for u in hosts]

    def picks(addr):
        c = Client(addr)
        try:
            return [c.get("/", {"x-key": f"key-{k}"})[0] for k in range(keys)]
        finally:
            c.close()

    with both(bootstrap(ports, policy, lb), tmp_path) as (fp, ev):
        before = picks(fp)
        assert picks(ev) == before
    (tmp_path / "after").mkdir()
    with both(bootstrap(ports[:2] + ports[3:], policy, lb), tmp_path / "after") as (fp, ev):
        after = picks(fp)
        assert picks(ev) == after
    moved = sum(b != a for b, a in zip(before, after))
    on_h2 = before.count("h2")
    moved_elsewhere = sum(b != a for b, a in zip(before, after) if b != "h2")
    with capsys.disabled():
        print(f"\n{lb}: {moved}/{keys} keys moved ({moved / keys:.1%}; 1/N = {1 / N:.0%}): the "
              f"{on_h2} on the host that left and {moved_elsewhere} others (Envoy: the same keys)")
    assert "h2" not in after
    assert moved == on_h2 + moved_elsewhere
    assert abs(on_h2 / keys - 1 / N) <= 0.05                # the hash spreads the keys
    assert moved_elsewhere / keys <= EXTRA_MOVES[lb]


# --------------------------------------------------------------------------- config

BAD = [
    # (hash_policy, the path fastproxy names under the route action)
    ("- {}", "hash_policy[0]"),
    ("- {header: {header_name: a}, cookie: {name: b}}", "hash_policy[0].cookie"),
    ("- header: {header_name: ''}", "hash_policy[0].header.header_name"),
    ("- header: {header_name: \"a\\nb\"}", "hash_policy[0].header.header_name"),
    ("- header: {header_name: a, regex_rewrite: {pattern: {regex: '('}, substitution: x}}",
     "hash_policy[0].header.regex_rewrite.pattern.regex"),
    ("- query_parameter: {name: ''}", "hash_policy[0].query_parameter.name"),
    ("- filter_state: {key: ''}", "hash_policy[0].filter_state.key"),
    ("- cookie: {name: ''}", "hash_policy[0].cookie.name"),
    ("- cookie: {name: a, ttl: -5s}", "hash_policy[0].cookie.ttl"),
    ("- cookie: {name: a, attributes: [{name: ''}]}", "hash_policy[0].cookie.attributes[0].name"),
    ("- cookie: {name: a, attributes: [{name: x, value: \"a\\nb\"}]}", "hash_policy[0].cookie.attributes[0].value"),
    ("- header: {header_name: a}\n- cookie: {name: b, bogus: 1}", "hash_policy[1].cookie.bogus"),
]
GOOD = [
    "- header: {header_name: X-Upper}",
    "- connection_properties: {source_ip: false}",
    "- cookie: {name: s, ttl: 0s}",
    "- filter_state: {key: k}\n  terminal: true",
]
ROUTE = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config" \
        ".virtual_hosts[0].routes[0].route."


def envoy_validates(text, tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(text)
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    return r.returncode == 0, r.stdout + r.stderr


@needs_envoy
@pytest.mark.parametrize("policy,path", BAD)
def test_bad_hash_policy_is_refused_with_its_path_as_envoy_refuses_it(policy, path, tmp_path):
    text = bootstrap([9], policy)
    with pytest.raises(ConfigError) as e:
        load_envoy(text)
    assert ROUTE + path in str(e.value), str(e.value)
    ok, out = envoy_validates(text, tmp_path)
    assert not ok, out


@needs_envoy
@pytest.mark.parametrize("policy", GOOD)
def test_good_hash_policy_is_taken_and_dumped_back_as_envoy_takes_it(policy, tmp_path):
    boot = load_envoy(bootstrap([9], policy))
    dumped = bootstrap_json(boot)
    assert load_envoy(dumped).listeners == boot.listeners
    for text in (bootstrap([9], policy), __import__("json").dumps(dumped)):
        ok, out = envoy_validates(text, tmp_path)
        assert ok, out


def test_cookie_name_with_a_line_break_is_refused_though_envoy_takes_it():
    """A documented difference: fastproxy writes the name into Set-Cookie, so it refuses CR/LF."""
    with pytest.raises(ConfigError) as e:
        load_envoy(bootstrap([9], "- cookie: {name: \"a\\nb\", ttl: 1s}"))
    assert ROUTE + "hash_policy[0].cookie.name" in str(e.value)


def test_python_model_names_the_field():
    from fastproxy.http import RouteAction
    from fastproxy.http.hash_policy import CookieHash, HashPolicy
    a = RouteAction(cluster="c", hash_policy=[HashPolicy(cookie=CookieHash(name="s", ttl=-1.0))])
    with pytest.raises(ConfigError) as e:
        a.validate("route", ["c"])
    assert "route.hash_policy[0].cookie.ttl" in str(e.value)
