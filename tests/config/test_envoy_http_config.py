"""The Envoy loader's HTTP part: http_connection_manager and its inline route_config become
the exact fastproxy.http.model objects, bad configs fail with the Envoy-style path of the
offending field, the sample configs are accepted by the real Envoy binary, configs Envoy
rejects are rejected too, validate_http checks hand-built models the same way, and the RE2
-> POSIX regex translation matches what the original regex matches (checked with the C
library's regcomp/regexec through ctypes)."""
import ctypes
import ctypes.util
import dataclasses
import json
import re
import threading
from pathlib import Path

import pytest

from fastproxy.config import load_envoy
from fastproxy.config.proto import to_camel
from fastproxy.config.regex import re2_to_posix, rewrite_to_posix, translate
from fastproxy.errors import ConfigError
from fastproxy.model import Bootstrap, Cluster, Endpoint, Listener, TcpProxy
from fastproxy.http.model import (AccessLog, DirectResponse, HeaderMatcher, HeaderMutations, HeaderValueOption,
                                  Http2ProtocolOptions, HttpConnectionManager, InternalAddressConfig, KeepaliveSettings,
                                  MaxStreamDuration, QueryParameterMatcher, RedirectAction, RegexRewrite, Route,
                                  RouteAction, RouteConfiguration, RouteMatch, StringMatch, VirtualHost,
                                  WeightedCluster, validate_http)
from test_envoy_config import DELETE, edit, envoy_validate, needs_envoy

from conftest import CONFIGS, envoy_bootstrap, http_listener, router_filter, static_cluster  # noqa: E402
HTTP_SAMPLES = sorted(CONFIGS.glob("http_*.yaml"))
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

L0 = "static_resources.listeners[0]"
F0 = f"{L0}.filter_chains[0].filters[0]"
H0 = f"{F0}.typed_config"
RC = f"{H0}.route_config"
VH0 = f"{RC}.virtual_hosts[0]"
R0 = f"{VH0}.routes[0]"
M0 = f"{R0}.match"
A0 = f"{R0}.route"


def base():
    """A minimal valid HTTP bootstrap, as parsed data; tests edit a copy of it."""
    return envoy_bootstrap([http_listener(port=10000, route_config={"name": "local", "virtual_hosts": [{
                               "name": "vh", "domains": ["*"],
                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]})],
                           [static_cluster("backend", [9000]), static_cluster("other", [9001])], admin=False)


def edited(*changes):
    config = base()
    for path, value in changes:
        edit(config, path, value)
    return config


def only_route(route):
    """The base config with its single route replaced."""
    return edited((R0, route))


def load_hcm(config):
    return load_envoy(config).listeners[0].handler


def rc_of(*virtual_hosts, **kw):
    return RouteConfiguration(virtual_hosts=list(virtual_hosts), **kw)


def default_hcm(route_config, **kw):
    fields = dict(stat_prefix="web", route_config=route_config)
    fields.update(kw)
    return HttpConnectionManager(**fields)


def catch_all(cluster="backend", **match):
    return Route(match=RouteMatch(prefix="/", **match), route=RouteAction(cluster=cluster))


def string_header(name, kind, value, **kw):
    return HeaderMatcher(name, string_match=StringMatch(kind, value), **kw)


# --- good configs -------------------------------------------------------------------------

def test_minimal_http_listener_uses_envoy_defaults():
    boot = load_envoy(base())
    (listener,) = boot.listeners
    assert listener == Listener(
        "web", address="127.0.0.1", port=10000, stat_prefix="web", idle_timeout=3600.0, filters=[],
        handler=HttpConnectionManager(
            stat_prefix="web",
            route_config=RouteConfiguration(name="local", virtual_hosts=[
                VirtualHost(name="vh", domains=["*"], routes=[catch_all()])]),
            server_name="fastproxy", use_remote_address=False, xff_num_trusted_hops=0, generate_request_id=True,
            request_headers_timeout=None, stream_idle_timeout=300.0, request_timeout=None, idle_timeout=3600.0,
            max_requests_per_connection=None, max_headers_count=100, max_request_headers_kb=60,
            max_request_bytes=None, drain_timeout=5.0, access_log=[]))
    route = listener.handler.route_config.virtual_hosts[0].routes[0]
    assert route.route.timeout == 15.0 and route.name == "" and route.headers == HeaderMutations()


def test_sample_http_routing():
    boot = load_envoy(CONFIGS / "http_routing.yaml")
    assert [c.name for c in boot.clusters] == ["api_v1", "api_v2", "api_v3", "static"]
    (listener,) = boot.listeners
    assert (listener.name, listener.address, listener.port, listener.tcp_proxy) == ("web", "127.0.0.1", 8080, None)
    api = VirtualHost(name="api", domains=["api.example.com", "api.example.com:8080"], routes=[
        Route(name="users", match=RouteMatch(path="/v1/users"), route=RouteAction(cluster="api_v1")),
        Route(match=RouteMatch(safe_regex=r"/v1/users/\d+(/(profile|settings))?"),
              route=RouteAction(cluster="api_v1", regex_rewrite=RegexRewrite(r"^/v1/users/(\d+)", r"/users/\1"))),
        Route(match=RouteMatch(path_separated_prefix="/v2"),
              route=RouteAction(cluster="api_v2", prefix_rewrite="/", timeout=2.5)),
        Route(match=RouteMatch(prefix="/", headers=[
            string_header("x-canary", "exact", "yes"),
            HeaderMatcher("user-agent", StringMatch("contains", "bot", ignore_case=True), invert_match=True)]),
            route=RouteAction(weighted_clusters=[WeightedCluster("api_v1", 90), WeightedCluster("api_v2", 10)])),
        Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster="api_v1", timeout=None)),
    ])
    static = VirtualHost(name="static", domains=["*.static.example.com", "*-cdn.example.com"], routes=[
        Route(match=RouteMatch(prefix="/Assets/", case_sensitive=False),
              route=RouteAction(cluster="static", host_rewrite_literal="assets.internal")),
        Route(match=RouteMatch(prefix="/", query_parameters=[
            QueryParameterMatcher("v", StringMatch("safe_regex", "[0-9a-f]{8}")),
            QueryParameterMatcher("debug", present_match=True),
            QueryParameterMatcher("nocache", present_match=False)]),
            route=RouteAction(cluster="static", auto_host_rewrite=True)),
    ])
    regional = VirtualHost(name="regional", domains=["eu.*", "us-*"], routes=[
        Route(match=RouteMatch(prefix="/", headers=[
            string_header("x-tenant", "prefix", "acme-"),
            string_header("x-region", "suffix", "-1"),
            HeaderMatcher("x-trace", present_match=True),
            HeaderMatcher("x-debug", present_match=False),
            string_header("x-shard", "safe_regex", "[a-z]+-[0-9]{2}"),
            string_header("x-optional", "exact", "", treat_missing_header_as_empty=True),
            HeaderMatcher("x-present"),
            string_header(":method", "exact", "GET"),
            string_header("x-legacy-prefix", "prefix", "a"),
            string_header("x-legacy-suffix", "suffix", "z"),
            string_header("x-legacy-contains", "contains", "m"),
            string_header("x-legacy-regex", "safe_regex", r"\w+"),
        ]), route=RouteAction(cluster="api_v2")),
    ])
    fallback = VirtualHost(name="fallback", domains=["*"], routes=[catch_all("static")])
    assert listener.handler == HttpConnectionManager(
        stat_prefix="web", route_config=RouteConfiguration(name="web_routes",
                                                           virtual_hosts=[api, static, regional, fallback]))


def test_sample_http_actions():
    (listener,) = load_envoy(CONFIGS / "http_actions.yaml").listeners
    redirects = VirtualHost(name="redirects", domains=["old.example.com"], routes=[
        Route(match=RouteMatch(prefix="/secure"), redirect=RedirectAction(https_redirect=True)),
        Route(match=RouteMatch(path="/moved"), redirect=RedirectAction(
            scheme_redirect="https", host_redirect="new.example.com", port_redirect=8443,
            path_redirect="/new/location?from=old", response_code=302)),
        Route(match=RouteMatch(prefix="/docs/"), redirect=RedirectAction(
            prefix_rewrite="/documentation/", response_code=303, strip_query=True)),
        Route(match=RouteMatch(prefix="/tmp"), redirect=RedirectAction(path_redirect="/temporary", response_code=307)),
        Route(match=RouteMatch(prefix="/perm"), redirect=RedirectAction(host_redirect="perm.example.com",
                                                                         response_code=308)),
        Route(match=RouteMatch(prefix="/"), redirect=RedirectAction(host_redirect="www.example.com", response_code=301)),
    ])
    local = VirtualHost(name="local", domains=["*"], routes=[
        Route(match=RouteMatch(path="/healthz"), direct_response=DirectResponse(200, b"ok\n")),
        Route(match=RouteMatch(path="/favicon.ico"), direct_response=DirectResponse(204, b"")),
        Route(match=RouteMatch(path="/teapot"), direct_response=DirectResponse(418, b"I'm a teapot\x00\x01\xff")),
        Route(match=RouteMatch(prefix="/"), direct_response=DirectResponse(404, b"not here")),
    ])
    hcm = HttpConnectionManager(stat_prefix="edge", codec_type="HTTP1", route_config=rc_of(redirects, local))
    assert listener == Listener("edge", hcm, address="0.0.0.0", port=8000, stat_prefix="edge", filters=[])


def test_sample_http_headers():
    (listener,) = load_envoy(CONFIGS / "http_headers.yaml").listeners
    vh = VirtualHost(
        name="api", domains=["*"],
        routes=[
            Route(match=RouteMatch(prefix="/v1/"), route=RouteAction(cluster="backend"), headers=HeaderMutations(
                request_headers_to_add=[
                    HeaderValueOption("x-route", "v1", "OVERWRITE_IF_EXISTS"),
                    HeaderValueOption("x-discount", "50%"),  # %% is a literal percent sign
                    # x-empty is dropped: an empty value adds nothing without keep_empty_value
                    HeaderValueOption("x-kept-empty", "", keep_empty_value=True)],
                request_headers_to_remove=["cookie"],
                response_headers_to_add=[HeaderValueOption("cache-control", "no-store")],
                response_headers_to_remove=["set-cookie"])),
            catch_all(),
        ],
        headers=HeaderMutations(
            request_headers_to_add=[HeaderValueOption("x-vhost", "api", "OVERWRITE_IF_EXISTS_OR_ADD"),
                                    HeaderValueOption("x-append", "1", "APPEND_IF_EXISTS_OR_ADD")],
            response_headers_to_add=[HeaderValueOption("x-cache", "MISS", "ADD_IF_ABSENT")]))
    table = RouteConfiguration(name="api", virtual_hosts=[vh], headers=HeaderMutations(
        request_headers_to_add=[HeaderValueOption("x-proxy", "fastproxy")],
        request_headers_to_remove=["x-internal-token"],
        response_headers_to_add=[HeaderValueOption("strict-transport-security", "max-age=31536000",
                                                   "OVERWRITE_IF_EXISTS_OR_ADD")],
        response_headers_to_remove=["server", "x-powered-by"]))
    assert listener.handler == HttpConnectionManager(stat_prefix="api", route_config=table,
                                                  suppress_envoy_headers=True)


def test_sample_http_manager():
    boot = load_envoy(CONFIGS / "http_manager.yaml")
    public, database = boot.listeners
    hcm = HttpConnectionManager(
        stat_prefix="public_http",
        route_config=rc_of(VirtualHost(name="all", domains=["*"], routes=[
            Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster="app", timeout=30.0))])),
        server_name="edge-proxy", use_remote_address=True, xff_num_trusted_hops=1, generate_request_id=False,
        request_headers_timeout=10.0, stream_idle_timeout=None, request_timeout=60.0, idle_timeout=120.0,
        max_requests_per_connection=1000, max_headers_count=64, max_request_headers_kb=96, drain_timeout=2.0,
        accept_http_10=True,
        access_log=[
            AccessLog("/dev/null", '[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%" '
                                   "%RESPONSE_CODE% %BYTES_SENT%\n"),
            AccessLog("/dev/stderr", "%RESPONSE_CODE% %DURATION%\n"),
            AccessLog("/dev/stdout", None),
            AccessLog("/dev/stdout", "%RESPONSE_CODE%\n"),
        ])
    assert public == Listener("public", hcm, address="0.0.0.0", port=8443, stat_prefix="public_http",
                              idle_timeout=120.0, buffer_limit=32768, filters=[])
    assert database == Listener("database", TcpProxy("db"), address="127.0.0.1", port=5432, stat_prefix="db",
                                filters=[])
    assert [c.name for c in boot.clusters] == ["app", "db"]


def test_there_are_http_samples():
    assert len(HTTP_SAMPLES) >= 4


def _camel_keys(node):
    if isinstance(node, dict):
        return {to_camel(k): _camel_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_camel_keys(v) for v in node]
    return node


@pytest.mark.parametrize("sample", HTTP_SAMPLES, ids=[p.name for p in HTTP_SAMPLES])
def test_camel_case_http_config_loads_the_same(sample):
    import yaml
    data = yaml.safe_load(sample.read_text())
    assert load_envoy(_camel_keys(data)) == load_envoy(sample)


def test_json_text_of_a_sample_loads_the_same():
    import yaml
    sample = CONFIGS / "http_routing.yaml"
    assert load_envoy(json.dumps(yaml.safe_load(sample.read_text()))) == load_envoy(sample)


@pytest.mark.parametrize("text, seconds", [("0.5s", 0.5), ("300s", 300.0), ({"seconds": 2, "nanos": 500000000}, 2.5)])
def test_timeouts_parse(text, seconds):
    hcm = load_hcm(edited((f"{H0}.stream_idle_timeout", text), (f"{H0}.request_timeout", text),
                          (f"{A0}.timeout", text)))
    assert hcm.stream_idle_timeout == hcm.request_timeout == seconds
    assert hcm.route_config.virtual_hosts[0].routes[0].route.timeout == seconds


@pytest.mark.parametrize("field", ["stream_idle_timeout", "request_timeout", "request_headers_timeout"])
def test_zero_timeouts_disable(field):
    assert getattr(load_hcm(edited((f"{H0}.{field}", "0s"))), field) is None


def test_zero_idle_timeout_disables_it_on_the_listener_too():
    listener = load_envoy(edited((f"{H0}.common_http_protocol_options", {"idle_timeout": "0s"}))).listeners[0]
    assert listener.handler.idle_timeout is None and listener.idle_timeout is None


def test_max_requests_per_connection_zero_means_unlimited():
    hcm = load_hcm(edited((f"{H0}.common_http_protocol_options", {"max_requests_per_connection": 0})))
    assert hcm.max_requests_per_connection is None


def test_bool_fields_accept_protobuf_json_strings():
    hcm = load_hcm(edited((f"{H0}.generate_request_id", "false"), (f"{M0}.case_sensitive", "false")))
    assert hcm.generate_request_id is False
    assert hcm.route_config.virtual_hosts[0].routes[0].match.case_sensitive is False


def test_case_sensitive_is_ignored_for_safe_regex_like_envoy():
    hcm = load_hcm(edited((M0, {"safe_regex": {"regex": "/A.*"}, "case_sensitive": False})))
    assert hcm.route_config.virtual_hosts[0].routes[0].match == RouteMatch(safe_regex="/A.*", case_sensitive=True)


def test_empty_server_name_means_the_default():
    assert load_hcm(edited((f"{H0}.server_name", ""))).server_name == "fastproxy"


def test_server_header_transformation_by_name_or_number():
    assert load_hcm(base()).server_header_transformation == "OVERWRITE"
    assert load_hcm(edited((f"{H0}.server_header_transformation", "PASS_THROUGH"))).server_header_transformation \
        == "PASS_THROUGH"
    assert load_hcm(edited((f"{H0}.server_header_transformation", 1))).server_header_transformation \
        == "APPEND_IF_ABSENT"


def test_http1_codec_and_empty_http_protocol_options():
    hcm = load_hcm(edited((f"{H0}.codec_type", "HTTP1"), (f"{H0}.http_protocol_options", {})))
    assert hcm.codec_type == "HTTP1"
    assert dataclasses.replace(hcm, codec_type="AUTO") == load_hcm(base())


def test_route_config_may_be_empty():
    hcm = load_hcm(edited((f"{H0}.route_config", {})))
    assert hcm.route_config == RouteConfiguration(name="", virtual_hosts=[])


def test_virtual_host_without_routes():
    vh = load_hcm(edited((f"{VH0}.routes", DELETE))).route_config.virtual_hosts[0]
    assert vh == VirtualHost(name="vh", domains=["*"], routes=[])


def test_weighted_cluster_of_weight_zero_is_left_out_but_must_exist():
    hcm = load_hcm(edited((A0, {"weighted_clusters": {"clusters": [
        {"name": "backend", "weight": 3}, {"name": "other", "weight": 0}], "total_weight": 3}})))
    assert hcm.route_config.virtual_hosts[0].routes[0].route.weighted_clusters == [WeightedCluster("backend", 3)]
    with pytest.raises(ConfigError) as err:
        load_envoy(edited((A0, {"weighted_clusters": {"clusters": [
            {"name": "backend", "weight": 3}, {"name": "nope", "weight": 0}]}})))
    assert err.value.path == f"{A0}.weighted_clusters.clusters[1].name"
    assert "unknown cluster 'nope'" in err.value.message


def test_header_value_percent_escapes():
    hcm = load_hcm(edited((f"{R0}.response_headers_to_add", [
        {"header": {"key": "x-a", "value": "100%% sure, %%%% two"}}])))
    (opt,) = hcm.route_config.virtual_hosts[0].routes[0].headers.response_headers_to_add
    assert opt == HeaderValueOption("x-a", "100% sure, %% two")


def test_domains_keep_their_spelling_and_duplicates_ignore_case():
    hcm = load_hcm(edited((f"{VH0}.domains", ["API.Example.com", "*.Example.org", "Example.*", "*"])))
    assert hcm.route_config.virtual_hosts[0].domains == ["API.Example.com", "*.Example.org", "Example.*", "*"]


def test_direct_response_body_limit_follows_the_route_config():
    big = "x" * 5000
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": big}}}
    with pytest.raises(ConfigError) as err:
        load_envoy(only_route(route))
    assert err.value.path == f"{R0}.direct_response.body"
    config = only_route(route)
    edit(config, f"{RC}.max_direct_response_body_size_bytes", 5000)
    assert load_hcm(config).route_config.virtual_hosts[0].routes[0].direct_response == DirectResponse(200, big.encode())


@pytest.mark.parametrize("encoded", ["aGk+Pz8=", "aGk-Pz8", "aGk+Pz8"])
def test_inline_bytes_accepts_standard_and_url_safe_base64(encoded):
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_bytes": encoded}}}
    assert load_hcm(only_route(route)).route_config.virtual_hosts[0].routes[0].direct_response.body == b"hi>??"


def test_http_listener_validates_through_bootstrap():
    boot = load_envoy(base())
    boot.validate()  # the loader's output passes the model's own checks


# --- listener dispatch --------------------------------------------------------------------

def test_http_connection_manager_must_be_last():
    config = base()
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"].append({"name": "tcp", "typed_config": {"@type": TCP_PROXY, "stat_prefix": "t",
                                                              "cluster": "backend"}})
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path == H0
    assert "http_connection_manager is a terminal filter" in err.value.message


def test_network_filters_before_http_connection_manager_are_not_supported_yet():
    config = base()
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"].insert(0, {"name": "py", "typed_config": {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "type.googleapis.com/fastproxy.python.NetworkFilter",
        "value": {"class": "filters_for_tests:Tagger"}}})
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path == F0
    assert "not supported yet" in err.value.message


def test_unknown_terminal_filter_names_both_terminals():
    with pytest.raises(ConfigError) as err:
        load_envoy(edited((f"{H0}.@type", "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo")))
    assert err.value.path == f"{H0}.@type"
    assert "tcp_proxy" in err.value.message and "http_connection_manager" in err.value.message


# --- bad configs --------------------------------------------------------------------------

def hv(key, value="v", **kw):
    return dict({"header": {"key": key, "value": value}}, **kw)


BAD = [
    # (changes, expected path, fragment of the message)
    ([(f"{H0}.foo", 1)], f"{H0}.foo", "unsupported field 'foo'"),
    ([(f"{H0}.stat_prefix", DELETE)], f"{H0}.stat_prefix", "required"),
    ([(f"{H0}.stat_prefix", "")], f"{H0}.stat_prefix", "empty"),
    ([(f"{H0}.codec_type", "HTTP3")], f"{H0}.codec_type", "HTTP/3 is unsupported in fastproxy (not planned)"),
    ([(f"{H0}.codec_type", "SPDY")], f"{H0}.codec_type", "unknown enum"),
    ([(f"{H0}.route_config", DELETE)], f"{H0}.route_config", "required"),
    ([(f"{H0}.rds", {"route_config_name": "r", "config_source": {"ads": {}}})],
     f"{H0}.rds", "only one of route_config, rds may be set"),
    ([(f"{H0}.rds", {"route_config_name": "r"}), (f"{H0}.route_config", DELETE)],
     f"{H0}.rds.config_source", "required"),
    ([(f"{H0}.rds", {"route_config_name": "", "config_source": {"ads": {}}}), (f"{H0}.route_config", DELETE)],
     f"{H0}.rds.route_config_name", "empty"),
    ([(f"{H0}.rds", {"route_config_name": "r", "config_source": {"ads": {}, "path": "/x"}}),
      (f"{H0}.route_config", DELETE)], f"{H0}.rds.config_source", "only one of ads, path"),
    ([(f"{H0}.rds", {"route_config_name": "r", "config_source": {"ads": {}}, "name": "x"}),
      (f"{H0}.route_config", DELETE)], f"{H0}.rds.name", "unsupported field 'name'"),
    ([(f"{H0}.scoped_routes", {})], f"{H0}.scoped_routes", "scoped routes (SRDS) is unsupported in fastproxy"),
    ([(f"{H0}.http_protocol_options", {"default_host_for_http_10": "a b"})],
     f"{H0}.http_protocol_options.default_host_for_http_10", "not a valid host"),
    ([(f"{H0}.http_protocol_options", {"allow_absolute_url": False})],
     f"{H0}.http_protocol_options.allow_absolute_url", "unsupported field"),
    ([(f"{H0}.http_filters", [])], f"{H0}.http_filters", "must end with envoy.filters.http.router"),
    ([(f"{H0}.http_filters", DELETE)], f"{H0}.http_filters", "must end with envoy.filters.http.router"),
    ([(f"{H0}.http_filters[0].typed_config", DELETE)], f"{H0}.http_filters[0].typed_config", "required"),
    ([(f"{H0}.http_filters[0].name", "")], f"{H0}.http_filters[0].name", "empty"),
    ([(f"{H0}.http_filters[0].typed_config.dynamic_stats", True)],
     f"{H0}.http_filters[0].typed_config.dynamic_stats", "unsupported field"),
    ([(f"{H0}.http_filters[0].typed_config.suppress_envoy_headers", 1)],
     f"{H0}.http_filters[0].typed_config.suppress_envoy_headers", "true or false"),
    ([(f"{H0}.http_filters[0].disabled", True)], f"{H0}.http_filters[0].disabled", "not supported"),
    ([(f"{H0}.http_filters", [{"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}}, router_filter()])],
     f"{H0}.http_filters[0].typed_config.@type", "is not supported"),
    ([(f"{H0}.http_filters", [router_filter(), router_filter()])], f"{H0}.http_filters[0].typed_config",
     "must be the last HTTP filter"),
    ([(f"{H0}.server_name", 5)], f"{H0}.server_name", "expected a string"),
    ([(f"{H0}.server_header_transformation", "HIDE")], f"{H0}.server_header_transformation", "HIDE"),
    ([(f"{H0}.use_remote_address", "yes")], f"{H0}.use_remote_address", "true or false"),
    ([(f"{H0}.xff_num_trusted_hops", -1)], f"{H0}.xff_num_trusted_hops", "out of range"),
    ([(f"{H0}.stream_idle_timeout", "5")], f"{H0}.stream_idle_timeout", "invalid Duration"),
    ([(f"{H0}.drain_timeout", "-1s")], f"{H0}.drain_timeout", "negative"),
    ([(f"{H0}.max_request_headers_kb", 0)], f"{H0}.max_request_headers_kb", ">= 1"),
    ([(f"{H0}.max_request_headers_kb", 8193)], f"{H0}.max_request_headers_kb", "1..8192"),
    ([(f"{H0}.common_http_protocol_options", {"max_headers_count": 0})],
     f"{H0}.common_http_protocol_options.max_headers_count", ">= 1"),
    ([(f"{H0}.common_http_protocol_options", {"headers_with_underscores_action": "DROP"})],
     f"{H0}.common_http_protocol_options.headers_with_underscores_action", "DROP"),
    ([(f"{H0}.path_with_escaped_slashes_action", "UNESCAPE")], f"{H0}.path_with_escaped_slashes_action",
     "UNESCAPE"),
    ([(f"{H0}.path_with_escaped_slashes_action", 9)], f"{H0}.path_with_escaped_slashes_action", "9"),
    ([(f"{H0}.normalize_path", "yes")], f"{H0}.normalize_path", "true or false"),
    ([(f"{H0}.merge_slashes", 1)], f"{H0}.merge_slashes", "true or false"),
    ([(f"{H0}.strip_any_host_port", True), (f"{H0}.strip_matching_host_port", True)],
     f"{H0}.strip_any_host_port", "only one of"),
    ([(f"{H0}.via", "a\nb")], f"{H0}.via", "control characters"),
    ([(f"{H0}.skip_xff_append", "no")], f"{H0}.skip_xff_append", "true or false"),
    ([(f"{H0}.add_user_agent", True)], f"{H0}.add_user_agent", "node.cluster"),
    ([(f"{H0}.common_http_protocol_options", {"max_stream_duration": "1s"})],
     f"{H0}.common_http_protocol_options.max_stream_duration", "unsupported"),
    ([(f"{H0}.http_protocol_options", {"allow_absolute_url": True})],
     f"{H0}.http_protocol_options.allow_absolute_url", "unsupported"),
    ([(f"{H0}.http_protocol_options", {"accept_http_10": "1"})],
     f"{H0}.http_protocol_options.accept_http_10", "true or false"),
    # access logs
    ([(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG}}])], f"{H0}.access_log[0].typed_config.path",
     "required"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "log_format": {}}}])],
     f"{H0}.access_log[0].typed_config.log_format", "one of text_format_source, text_format is required"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "format": "x",
                                              "log_format": {"text_format": "y"}}}])],
     f"{H0}.access_log[0].typed_config.format", "only one of log_format, format"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null",
                                              "log_format": {"json_format": {"a": "b"}}}}])],
     f"{H0}.access_log[0].typed_config.log_format.json_format", "unsupported"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": STDOUT_LOG,
                                              "log_format": {"text_format_source": {"filename": "/x"}}}}])],
     f"{H0}.access_log[0].typed_config.log_format.text_format_source.filename", "unsupported"),
    ([(f"{H0}.access_log", [{"filter": {}, "typed_config": {"@type": STDOUT_LOG}}])],
     f"{H0}.access_log[0].filter", "unsupported"),
    ([(f"{H0}.access_log", [{"typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"}}])],
     f"{H0}.access_log[0].typed_config.@type", "unsupported access logger"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "log_format": {
        "text_format_source": {"inline_string": "%RESPONSE_CODE% %NO_SUCH_THING%\n"}}}}])],
     f"{H0}.access_log[0].typed_config.log_format.text_format_source.inline_string",
     "unsupported access log command operator %NO_SUCH_THING%"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": STDOUT_LOG, "log_format": {"text_format": "%REQ()%"}}}])],
     f"{H0}.access_log[0].typed_config.log_format.text_format", "needs a header name"),
    ([(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "format": "100% sure"}}])],
     f"{H0}.access_log[0].typed_config.format", "invalid access log format at offset 3"),
    ([(f"{H0}.upgrade_configs", [{"upgrade_type": "h2c"}])], f"{H0}.upgrade_configs[0].upgrade_type",
     "not supported"),
    ([(f"{H0}.upgrade_configs", [{"upgrade_type": "CONNECT", "filters": [{"name": "x"}]}])],
     f"{H0}.upgrade_configs[0].filters", "not supported"),
    ([(M0, {"connect_matcher": {}, "prefix": "/"})], f"{M0}.connect_matcher", "only one of"),
    # route configuration and virtual hosts
    ([(f"{RC}.vhds", {})], f"{RC}.vhds", "unsupported"),
    ([(f"{RC}.virtual_hosts", {})], f"{RC}.virtual_hosts", "expected a list"),
    ([(f"{VH0}.name", DELETE)], f"{VH0}.name", "required"),
    ([(f"{VH0}.domains", [])], f"{VH0}.domains", "at least one domain"),
    ([(f"{VH0}.domains", DELETE)], f"{VH0}.domains", "at least one domain"),
    ([(f"{VH0}.domains", [""])], f"{VH0}.domains[0]", "must not be empty"),
    ([(f"{VH0}.domains", [5])], f"{VH0}.domains[0]", "expected a string"),
    ([(f"{VH0}.domains", ["a b.com"])], f"{VH0}.domains[0]", "not a valid host"),
    ([(f"{VH0}.domains", ["a*b.com"])], f"{VH0}.domains[0]", "invalid wildcard"),
    ([(f"{VH0}.domains", ["**"])], f"{VH0}.domains[0]", "invalid wildcard"),
    ([(f"{VH0}.domains", ["*.a.*"])], f"{VH0}.domains[0]", "invalid wildcard"),
    ([(f"{VH0}.domains", ["a.com", "A.com"])], f"{VH0}.domains[1]", "duplicate domain 'A.com'"),
    ([(f"{RC}.virtual_hosts[1]", {"name": "vh2", "domains": ["b.com", "*"]})],
     f"{RC}.virtual_hosts[1].domains[1]", "only one virtual host may use the wildcard domain"),
    ([(f"{VH0}.domains", ["a.com"]), (f"{RC}.virtual_hosts[1]", {"name": "vh2", "domains": ["A.COM"]})],
     f"{RC}.virtual_hosts[1].domains[0]", f"already in {VH0}.domains[0]"),
    ([(f"{VH0}.require_tls", "ALL")], f"{VH0}.require_tls", "unsupported"),
    ([(f"{VH0}.routes", {})], f"{VH0}.routes", "expected a list"),
    # routes and matches
    ([(f"{R0}.match", DELETE)], f"{R0}.match", "required"),
    ([(f"{R0}.route", DELETE)], R0, "one of route, redirect, direct_response is required"),
    ([(f"{R0}.redirect", {})], f"{R0}.redirect", "only one of route, redirect, direct_response"),
    ([(f"{R0}.decorator", {"operation": "x"})], f"{R0}.decorator", "unsupported"),
    ([(M0, {})], M0, "one of prefix, path, safe_regex, path_separated_prefix, connect_matcher is required"),
    ([(M0, {"prefix": "/", "path": "/a"})], f"{M0}.path", "only one of"),
    ([(M0, {"prefix": 1})], f"{M0}.prefix", "expected a string"),
    ([(M0, {"path_separated_prefix": "/a/"})], f"{M0}.path_separated_prefix", "must not end with '/'"),
    ([(M0, {"path_separated_prefix": "/a?b"})], f"{M0}.path_separated_prefix", "must not contain"),
    ([(M0, {"path_separated_prefix": "/"})], f"{M0}.path_separated_prefix", "at least two characters"),
    ([(M0, {"safe_regex": {"regex": ""}})], f"{M0}.safe_regex.regex", "empty"),
    ([(M0, {"safe_regex": {}})], f"{M0}.safe_regex.regex", "required"),
    ([(M0, {"safe_regex": {"regex": "a.*?b"}})], f"{M0}.safe_regex.regex", "non-greedy"),
    ([(M0, {"safe_regex": {"regex": "(?i)/api"}})], f"{M0}.safe_regex.regex", "flags"),
    ([(M0, {"safe_regex": {"regex": "/(a"}})], f"{M0}.safe_regex.regex", "missing ')'"),
    ([(M0, {"safe_regex": {"regex": "/a", "google_re2": {"max_program_size": 100}}})],
     f"{M0}.safe_regex.google_re2.max_program_size", "unsupported"),
    ([(M0, {"prefix": "/", "case_sensitive": 0})], f"{M0}.case_sensitive", "true or false"),
    ([(M0, {"prefix": "/", "grpc": {}})], f"{M0}.grpc", "unsupported"),
    ([(M0, {"prefix": "/", "runtime_fraction": {}})], f"{M0}.runtime_fraction", "unsupported"),
    ([(f"{M0}.headers", [{"string_match": {"exact": "a"}}])], f"{M0}.headers[0].name", "required"),
    ([(f"{M0}.headers", [{"name": "x y"}])], f"{M0}.headers[0].name", "not a valid HTTP header name"),
    ([(f"{M0}.headers", [{"name": "x", "string_match": {"exact": "a"}, "present_match": True}])],
     f"{M0}.headers[0].present_match", "only one of"),
    ([(f"{M0}.headers", [{"name": "x", "exact_match": "a", "prefix_match": "b"}])],
     f"{M0}.headers[0].prefix_match", "only one of"),
    ([(f"{M0}.headers", [{"name": "x", "range_match": {"start": 1, "end": 2}, "present_match": True}])],
     f"{M0}.headers[0].range_match", "only one of"),
    ([(f"{M0}.headers", [{"name": "x", "range_match": {"start": "1x"}}])],
     f"{M0}.headers[0].range_match.start", "signed 64-bit integer"),
    ([(f"{M0}.headers", [{"name": "x", "string_match": {}}])], f"{M0}.headers[0].string_match",
     "one of exact, prefix, suffix, contains, safe_regex is required"),
    ([(f"{M0}.headers", [{"name": "x", "string_match": {"prefix": ""}}])],
     f"{M0}.headers[0].string_match.prefix", "empty"),
    ([(f"{M0}.headers", [{"name": "x", "prefix_match": ""}])], f"{M0}.headers[0].prefix_match", "empty"),
    ([(f"{M0}.headers", [{"name": "x", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True}}])],
     f"{M0}.headers[0].string_match.ignore_case", "no effect for safe_regex"),
    ([(f"{M0}.headers", [{"name": "x", "string_match": {"safe_regex": {"regex": r"\bword"}}}])],
     f"{M0}.headers[0].string_match.safe_regex.regex", "word boundaries"),
    ([(f"{M0}.headers", [{"name": "x", "safe_regex_match": {"regex": r"\p{Greek}"}}])],
     f"{M0}.headers[0].safe_regex_match.regex", "Unicode classes"),
    ([(f"{M0}.headers", [{"name": "x", "string_match": {"custom": {}}}])],
     f"{M0}.headers[0].string_match.custom", "unsupported"),
    ([(f"{M0}.query_parameters", [{"name": ""}])], f"{M0}.query_parameters[0].name", "empty"),
    ([(f"{M0}.query_parameters", [{"name": "q", "string_match": {"exact": "1"}, "present_match": True}])],
     f"{M0}.query_parameters[0].present_match", "only one of"),
    ([(f"{M0}.query_parameters", [{"name": "q", "string_match": {"safe_regex": {"regex": "(?=x)"}}}])],
     f"{M0}.query_parameters[0].string_match.safe_regex.regex", "lookahead"),
    # route actions
    ([(A0, {})], A0, "one of cluster, weighted_clusters is required"),
    ([(A0, {"cluster": "nope"})], f"{A0}.cluster", "unknown cluster 'nope'"),
    ([(A0, {"cluster": ""})], f"{A0}.cluster", "empty"),
    ([(A0, {"cluster_header": "x-cluster"})], f"{A0}.cluster_header", "unsupported"),
    ([(A0, {"cluster": "backend", "weighted_clusters": {"clusters": [{"name": "backend", "weight": 1}]}})],
     f"{A0}.weighted_clusters", "only one of cluster, weighted_clusters"),
    ([(A0, {"weighted_clusters": {"clusters": []}})], f"{A0}.weighted_clusters.clusters", "at least one"),
    ([(A0, {"weighted_clusters": {"clusters": [{"name": "backend"}]}})],
     f"{A0}.weighted_clusters.clusters[0].weight", "required"),
    ([(A0, {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 0}]}})],
     f"{A0}.weighted_clusters.clusters", "greater than 0"),
    ([(A0, {"weighted_clusters": {"clusters": [{"name": "nope", "weight": 1}]}})],
     f"{A0}.weighted_clusters.clusters[0].name", "unknown cluster 'nope'"),
    ([(A0, {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 4294967295},
                                               {"name": "other", "weight": 1}]}})],
     f"{A0}.weighted_clusters.clusters[1].weight", "exceeds"),
    ([(A0, {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 1}], "total_weight": 100}})],
     f"{A0}.weighted_clusters.total_weight", "must equal the sum"),
    ([(A0, {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 1, "host_rewrite_literal": "x"}]}})],
     f"{A0}.weighted_clusters.clusters[0].host_rewrite_literal", "unsupported"),
    ([(A0, {"cluster": "backend", "prefix_rewrite": "/x", "regex_rewrite": {
        "pattern": {"regex": "a"}, "substitution": "b"}})], f"{A0}.regex_rewrite", "only one of prefix_rewrite"),
    ([(A0, {"cluster": "backend", "regex_rewrite": {"pattern": {"regex": "^/(a)"}, "substitution": r"/\2"}})],
     f"{A0}.regex_rewrite.substitution", "group \\2"),
    ([(A0, {"cluster": "backend", "regex_rewrite": {"pattern": {"regex": "^/(a)"}, "substitution": r"\q"}})],
     f"{A0}.regex_rewrite.substitution", "invalid escape"),
    ([(A0, {"cluster": "backend", "regex_rewrite": {"pattern": {"regex": r"(\w+)\1"}, "substitution": ""}})],
     f"{A0}.regex_rewrite.pattern.regex", "backreferences"),
    ([(A0, {"cluster": "backend", "regex_rewrite": {"substitution": "x"}})], f"{A0}.regex_rewrite.pattern",
     "required"),
    ([(A0, {"cluster": "backend", "host_rewrite_literal": "a", "auto_host_rewrite": True})],
     f"{A0}.auto_host_rewrite", "only one of host_rewrite_literal, auto_host_rewrite"),
    ([(A0, {"cluster": "backend", "prefix_rewrite": "/a\r\nx: y"})], f"{A0}.prefix_rewrite", "control characters"),
    ([(A0, {"cluster": "backend", "timeout": "1"})], f"{A0}.timeout", "invalid Duration"),
    ([(A0, {"cluster": "backend", "retry_policy": {"retry_priority": {"name": "x"}}})],
     f"{A0}.retry_policy.retry_priority", "unsupported"),
    ([(A0, {"cluster": "backend", "idle_timeout": "1s"})], f"{A0}.idle_timeout", "unsupported"),
    # redirects
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"https_redirect": True, "scheme_redirect": "http"})],
     f"{R0}.redirect.scheme_redirect", "only one of https_redirect, scheme_redirect"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"path_redirect": "/a", "prefix_rewrite": "/b"})],
     f"{R0}.redirect.prefix_rewrite", "only one of path_redirect, prefix_rewrite"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"port_redirect": 70000})], f"{R0}.redirect.port_redirect",
     "1..65535"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"response_code": "MULTIPLE_CHOICES"})],
     f"{R0}.redirect.response_code", "unknown enum"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"scheme_redirect": "ht tp"})],
     f"{R0}.redirect.scheme_redirect", "not a URI scheme"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"host_redirect": "a b"})], f"{R0}.redirect.host_redirect",
     "not a valid host"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"path_redirect": "relative"})],
     f"{R0}.redirect.path_redirect", "must start with '/'"),
    ([(f"{R0}.route", DELETE), (f"{R0}.redirect", {"regex_rewrite": {"pattern": {"regex": "a"}},
                                                    "prefix_rewrite": "/b"})],
     f"{R0}.redirect.regex_rewrite", "only one of"),
    # direct responses
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {})], f"{R0}.direct_response.status", "required"),
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 99})], f"{R0}.direct_response.status",
     "100..599"),
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 600})], f"{R0}.direct_response.status",
     "100..599"),
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 200, "body": {}})],
     f"{R0}.direct_response.body", "one of inline_string, inline_bytes is required"),
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 200, "body": {"filename": "/etc/hosts"}})],
     f"{R0}.direct_response.body.filename", "unsupported"),
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 200, "body": {"inline_bytes": "!!"}})],
     f"{R0}.direct_response.body.inline_bytes", "invalid base64"),
    ([(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 200, "body": {"inline_string": "x" * 4097}})],
     f"{R0}.direct_response.body", "response body size is 4097 bytes; maximum is 4096"),
    # header mutations, on each level
    ([(f"{R0}.request_headers_to_add", [hv(":path")])], f"{R0}.request_headers_to_add[0].header.key",
     ":-prefixed or host headers may not be modified"),
    ([(f"{VH0}.request_headers_to_add", [hv("Host")])], f"{VH0}.request_headers_to_add[0].header.key",
     "may not be modified"),
    ([(f"{RC}.response_headers_to_add", [hv(":status")])], f"{RC}.response_headers_to_add[0].header.key",
     "may not be modified"),
    ([(f"{R0}.request_headers_to_remove", ["host"])], f"{R0}.request_headers_to_remove[0]", "may not be removed"),
    ([(f"{VH0}.response_headers_to_remove", [":authority"])], f"{VH0}.response_headers_to_remove[0]",
     "may not be removed"),
    ([(f"{RC}.request_headers_to_remove", [""])], f"{RC}.request_headers_to_remove[0]", "empty"),
    ([(f"{RC}.request_headers_to_remove", ["a b"])], f"{RC}.request_headers_to_remove[0]", "not a valid HTTP header"),
    ([(f"{RC}.request_headers_to_remove", "cookie")], f"{RC}.request_headers_to_remove", "expected a list"),
    ([(f"{R0}.request_headers_to_add", [hv("")])], f"{R0}.request_headers_to_add[0].header.key", "empty"),
    ([(f"{R0}.request_headers_to_add", [hv("x a")])], f"{R0}.request_headers_to_add[0].header.key",
     "not a valid HTTP header name"),
    ([(f"{R0}.request_headers_to_add", [hv("x-a", "1\n2")])], f"{R0}.request_headers_to_add[0].header.value",
     "control characters"),
    ([(f"{R0}.request_headers_to_add", [hv("x-a", "50%")])], f"{R0}.request_headers_to_add[0].header.value",
     "not supported yet"),
    ([(f"{R0}.request_headers_to_add", [hv("x-a", "%DOWNSTREAM_REMOTE_ADDRESS%")])],
     f"{R0}.request_headers_to_add[0].header.value", "substitutions"),
    ([(f"{R0}.request_headers_to_add", [hv("x-a", append=True, append_action="ADD_IF_ABSENT")])],
     f"{R0}.request_headers_to_add[0].append", "both append and append_action"),
    ([(f"{R0}.request_headers_to_add", [hv("x-a", append_action="REPLACE")])],
     f"{R0}.request_headers_to_add[0].append_action", "unknown enum"),
    ([(f"{R0}.request_headers_to_add", [{"header": {"key": "x-a", "raw_value": "eA=="}}])],
     f"{R0}.request_headers_to_add[0].header.raw_value", "unsupported"),
    ([(f"{R0}.request_headers_to_add", [{"append_action": "ADD_IF_ABSENT"}])],
     f"{R0}.request_headers_to_add[0].header", "required"),
]


@pytest.mark.parametrize("changes, path, fragment", BAD, ids=[f"{i}:{'.'.join(case[1].rsplit('.', 2)[-2:])}"
                                                              for i, case in enumerate(BAD)])
def test_bad_http_config_names_the_field(changes, path, fragment):
    with pytest.raises(ConfigError) as err:
        load_envoy(edited(*changes))
    assert err.value.path == path, err.value
    assert fragment in err.value.message
    first = getattr(err.value, "errors", [err.value])[0]      # one error, or the first of several
    assert str(first).startswith(path + ": ")


def test_internal_address_config():
    iac = {"unix_sockets": True, "cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8},
                                                 {"address_prefix": "fd00::", "prefix_len": 8},
                                                 {"address_prefix": "192.0.2.1"}]}
    hcm = load_hcm(edited((f"{H0}.internal_address_config", iac)))
    assert hcm.internal_address_config == InternalAddressConfig(["10.0.0.0/8", "fd00::/8", "192.0.2.1/0"],
                                                                unix_sockets=True)
    assert load_hcm(edited((f"{H0}.internal_address_config", {}))).internal_address_config == InternalAddressConfig()
    assert load_hcm(base()).internal_address_config is None, "absent: no address is internal"


@pytest.mark.parametrize("cidr, message", [
    ({"address_prefix": "nope", "prefix_len": 8}, "is not a CIDR range"),
    ({"prefix_len": 8}, "required field is missing"),
])
def test_bad_internal_address_config(cidr, message):
    with pytest.raises(ConfigError) as err:
        load_envoy(edited((f"{H0}.internal_address_config", {"cidr_ranges": [cidr]})))
    assert err.value.path.startswith(f"{H0}.internal_address_config.cidr_ranges[0]"), err.value
    assert message in err.value.message


# --- the real Envoy agrees ----------------------------------------------------------------

@needs_envoy
@pytest.mark.parametrize("sample", HTTP_SAMPLES, ids=[p.name for p in HTTP_SAMPLES])
def test_envoy_accepts_http_sample(sample):
    rc, output = envoy_validate(sample)
    assert rc == 0, output
    load_envoy(sample)


@needs_envoy
def test_base_http_config_is_valid_for_envoy_too(tmp_path):
    # Guards the tables: their failures must come from the change, not the base.
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base()))
    rc, output = envoy_validate(path)
    assert rc == 0, output


ENVOY_REJECTS = [
    [(f"{H0}.stat_prefix", "")],
    [(f"{H0}.internal_address_config", {"cidr_ranges": [{"address_prefix": "nope", "prefix_len": 8}]})],
    [(f"{H0}.internal_address_config", {"cidr_ranges": [{"prefix_len": 8}]})],
    [(f"{H0}.route_config", DELETE)],
    [(f"{H0}.max_request_headers_kb", 8193)],
    [(f"{H0}.http_filters", [router_filter(), router_filter()])],
    [(f"{H0}.http_filters[0].typed_config", DELETE)],
    [(f"{H0}.common_http_protocol_options", {"max_headers_count": 0})],
    [(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG}}])],
    [(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "log_format": {}}}])],
    [(f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "log_format": {
        "text_format_source": {"inline_string": "%RESPONSE_CODE% %NO_SUCH_THING%\n"}}}}])],
    [(f"{VH0}.domains", [])],
    [(f"{VH0}.name", "")],
    [(f"{VH0}.domains", ["a.com", "A.com"])],
    [(f"{RC}.virtual_hosts[1]", {"name": "vh2", "domains": ["*"]})],
    [(f"{R0}.route", DELETE)],
    [(M0, {})],
    [(M0, {"path_separated_prefix": "/a/"})],
    [(M0, {"safe_regex": {"regex": "/(a"}})],
    [(M0, {"safe_regex": {"regex": "/a(?=b)"}})],
    [(f"{M0}.headers", [{"name": "x", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True}}])],
    [(f"{M0}.headers", [{"name": "x", "prefix_match": ""}])],
    [(f"{M0}.query_parameters", [{"name": ""}])],
    [(A0, {"cluster": "nope"})],
    [(A0, {"weighted_clusters": {"clusters": [{"name": "nope", "weight": 1}]}})],
    [(A0, {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 0}]}})],
    [(A0, {"weighted_clusters": {"clusters": [{"name": "backend"}]}})],
    [(A0, {"cluster": "backend", "prefix_rewrite": "/x", "regex_rewrite": {"pattern": {"regex": "a"},
                                                                            "substitution": "b"}})],
    [(A0, {"cluster": "backend", "host_rewrite_literal": "a", "auto_host_rewrite": True})],
    [(f"{R0}.route", DELETE), (f"{R0}.redirect", {"https_redirect": True, "scheme_redirect": "http"})],
    [(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 600})],
    [(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 200, "body": {"inline_string": "x" * 4097}})],
    [(f"{R0}.route", DELETE), (f"{R0}.direct_response", {"status": 200, "body": {"inline_bytes": "!!"}})],
    [(f"{R0}.request_headers_to_add", [hv(":path")])],
    [(f"{R0}.request_headers_to_add", [hv("x-a", "50%")])],
    [(f"{R0}.request_headers_to_add", [hv("x-a", append=True, append_action="ADD_IF_ABSENT")])],
    [(f"{R0}.request_headers_to_remove", ["host"])],
    [(f"{R0}.request_headers_to_remove", [""])],
    [(f"{H0}.path_with_escaped_slashes_action", "UNESCAPE")],
    [(f"{H0}.common_http_protocol_options", {"headers_with_underscores_action": "DROP"})],
    [(f"{H0}.strip_any_host_port", True), (f"{H0}.strip_matching_host_port", True)],
]


HCM_OPTIONS = [(f"{H0}.via", "1.1 edge"), (f"{H0}.skip_xff_append", True),
               (f"{H0}.preserve_external_request_id", True), (f"{H0}.always_set_request_id_in_response", True),
               (f"{H0}.normalize_path", True), (f"{H0}.merge_slashes", True),
               (f"{H0}.path_with_escaped_slashes_action", "UNESCAPE_AND_REDIRECT"),
               (f"{H0}.strip_any_host_port", True),
               (f"{H0}.common_http_protocol_options", {"headers_with_underscores_action": "REJECT_REQUEST"})]


def test_hcm_header_and_path_options_parse():
    hcm = load_hcm(edited(*HCM_OPTIONS))
    assert (hcm.via, hcm.skip_xff_append, hcm.preserve_external_request_id,
            hcm.always_set_request_id_in_response, hcm.normalize_path, hcm.merge_slashes,
            hcm.path_with_escaped_slashes_action, hcm.strip_host_port, hcm.headers_with_underscores_action) == \
        ("1.1 edge", True, True, True, True, True, "UNESCAPE_AND_REDIRECT", "ANY", "REJECT_REQUEST")
    default = load_hcm(base())
    assert (default.via, default.normalize_path, default.merge_slashes, default.path_with_escaped_slashes_action,
            default.strip_host_port, default.headers_with_underscores_action) == \
        ("", False, False, "KEEP_UNCHANGED", "NONE", "ALLOW")
    # Envoy 1.40's IMPLEMENTATION_SPECIFIC_DEFAULT keeps escaped slashes (checked with envoy)
    assert load_hcm(edited((f"{H0}.path_with_escaped_slashes_action", "IMPLEMENTATION_SPECIFIC_DEFAULT"))) \
        .path_with_escaped_slashes_action == "KEEP_UNCHANGED"
    assert load_hcm(edited((f"{H0}.path_with_escaped_slashes_action", 4))).path_with_escaped_slashes_action \
        == "UNESCAPE_AND_FORWARD"
    assert load_hcm(edited((f"{H0}.strip_matching_host_port", True))).strip_host_port == "MATCHING"
    assert load_hcm(edited((f"{H0}.strip_matching_host_port", False))).strip_host_port == "NONE"
    assert load_hcm(edited((f"{H0}.add_user_agent", False))) == default


@needs_envoy
def test_hcm_header_and_path_options_are_valid_for_envoy(tmp_path):
    for i, changes in enumerate((HCM_OPTIONS, [(f"{H0}.strip_matching_host_port", True),
                                               (f"{H0}.path_with_escaped_slashes_action", "REJECT_REQUEST")])):
        path = tmp_path / f"options{i}.json"
        path.write_text(json.dumps(edited(*changes)))
        rc, output = envoy_validate(path)
        assert rc == 0, output
        load_envoy(path)


@needs_envoy
@pytest.mark.parametrize("changes", ENVOY_REJECTS, ids=[f"{i}:{c[-1][0].rsplit('.', 1)[-1]}"
                                                       for i, c in enumerate(ENVOY_REJECTS)])
def test_http_configs_envoy_rejects_are_rejected_too(tmp_path, changes):
    config = edited(*changes)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    rc, output = envoy_validate(path)
    assert rc != 0, "envoy accepted it: " + output
    with pytest.raises(ConfigError):
        load_envoy(path)


# --- validate_http: the same rules for hand-built models ----------------------------------

P = "listeners[0].handler"         # the Python API's names (Bootstrap.validate)
MP = f"{P}.route_config.virtual_hosts[0].routes[0]"


def good_hcm():
    return HttpConnectionManager(
        stat_prefix="web",
        route_config=RouteConfiguration(virtual_hosts=[
            VirtualHost(name="vh", domains=["*", "*.example.com", "api.*"], routes=[
                Route(match=RouteMatch(prefix="/", headers=[HeaderMatcher("x-a", StringMatch("safe_regex", r"\d+"))],
                                       query_parameters=[QueryParameterMatcher("q", present_match=False)]),
                      route=RouteAction(cluster="backend", regex_rewrite=RegexRewrite(r"^/(\w+)", r"/x/\1")),
                      headers=HeaderMutations(request_headers_to_add=[HeaderValueOption("X-Mixed-Case", "50%")])),
                Route(match=RouteMatch(path="/r"), redirect=RedirectAction(https_redirect=True, response_code=308)),
                Route(match=RouteMatch(safe_regex="/d.*"), direct_response=DirectResponse(200, b"x" * 10000)),
                Route(match=RouteMatch(path_separated_prefix="/w"),
                      route=RouteAction(weighted_clusters=[WeightedCluster("backend", 1), WeightedCluster("other", 2)])),
            ])]),
        access_log=[AccessLog("/dev/stdout")])


def boot_with(hcm):
    return Bootstrap(listeners=[Listener("web", hcm, port=0)],
                     clusters=[Cluster("backend", [Endpoint("127.0.0.1", 9000)]),
                               Cluster("other", [Endpoint("127.0.0.1", 9001)])])


def test_good_model_passes():
    boot_with(good_hcm()).validate()
    validate_http(good_hcm(), P, {"backend", "other"})


def route0(h):
    return h.route_config.virtual_hosts[0].routes[0]


def _set(obj, attr, value):
    setattr(obj, attr, value)


MODEL_BAD = [
    # (mutation of good_hcm(), expected path, fragment)
    (lambda h: _set(h, "stat_prefix", ""), f"{P}.stat_prefix", "empty"),
    (lambda h: _set(h, "route_config", None), f"{P}.route_config", "expected RouteConfiguration"),
    (lambda h: _set(h, "use_remote_address", 1), f"{P}.use_remote_address", "True or False"),
    (lambda h: _set(h, "xff_num_trusted_hops", -1), f"{P}.xff_num_trusted_hops", ">= 0"),
    (lambda h: _set(h, "stream_idle_timeout", -1), f"{P}.stream_idle_timeout", "non-negative"),
    (lambda h: _set(h, "drain_timeout", None), f"{P}.drain_timeout", "non-negative"),
    (lambda h: _set(h, "max_request_headers_kb", 9000), f"{P}.max_request_headers_kb", "1..8192"),
    (lambda h: _set(h, "max_headers_count", 0), f"{P}.max_headers_count", ">= 1"),
    (lambda h: _set(h, "max_requests_per_connection", 0), f"{P}.max_requests_per_connection", ">= 1"),
    (lambda h: _set(h, "access_log", [AccessLog("")]), f"{P}.access_log[0].path", "empty"),
    (lambda h: _set(h, "access_log", ["/dev/stdout"]), f"{P}.access_log[0]", "expected AccessLog"),
    (lambda h: _set(h.route_config.virtual_hosts[0], "domains", []), f"{P}.route_config.virtual_hosts[0].domains",
     "at least one domain"),
    (lambda h: _set(h.route_config.virtual_hosts[0], "domains", ["a*b"]),
     f"{P}.route_config.virtual_hosts[0].domains[0]", "invalid wildcard"),
    (lambda h: h.route_config.virtual_hosts.append(VirtualHost("vh2", ["API.*"])),
     f"{P}.route_config.virtual_hosts[1].domains[0]", "duplicate domain"),
    (lambda h: h.route_config.virtual_hosts.append(VirtualHost("vh2", ["*"])),
     f"{P}.route_config.virtual_hosts[1].domains[0]", "wildcard domain '*'"),
    (lambda h: _set(route0(h).match, "path", "/a"), f"{MP}.match", "exactly one of prefix, path"),
    (lambda h: _set(route0(h).match, "prefix", None), f"{MP}.match", "exactly one of prefix, path"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[2].match, "case_sensitive", False),
     f"{P}.route_config.virtual_hosts[0].routes[2].match.case_sensitive", "no effect for safe_regex"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[2].match, "safe_regex", "a++"),
     f"{P}.route_config.virtual_hosts[0].routes[2].match.safe_regex", "bad repetition"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[3].match, "path_separated_prefix", "/w/"),
     f"{P}.route_config.virtual_hosts[0].routes[3].match.path_separated_prefix", "must not end with '/'"),
    (lambda h: _set(route0(h).match.headers[0], "present_match", True), f"{MP}.match.headers[0]", "only one of"),
    (lambda h: _set(route0(h).match.headers[0], "name", "a b"), f"{MP}.match.headers[0].name", "not a valid"),
    (lambda h: _set(route0(h).match.headers[0].string_match, "kind", "glob"),
     f"{MP}.match.headers[0].string_match.kind", "expected one of"),
    (lambda h: _set(route0(h).match.headers[0].string_match, "value", "(?P<x"),
     f"{MP}.match.headers[0].string_match.value", "invalid named group"),
    (lambda h: _set(route0(h).match.headers[0].string_match, "ignore_case", True),
     f"{MP}.match.headers[0].string_match.ignore_case", "no effect"),
    (lambda h: _set(route0(h).match.headers[0], "string_match", StringMatch("suffix", "")),
     f"{MP}.match.headers[0].string_match.value", "empty"),
    (lambda h: _set(route0(h).match.query_parameters[0], "name", ""), f"{MP}.match.query_parameters[0].name",
     "empty"),
    (lambda h: _set(route0(h), "redirect", RedirectAction()), MP, "exactly one of route, redirect"),
    (lambda h: _set(route0(h), "route", None), MP, "exactly one of route, redirect"),
    (lambda h: _set(route0(h).route, "cluster", "nope"), f"{MP}.route.cluster", "unknown cluster 'nope'"),
    (lambda h: _set(route0(h).route, "weighted_clusters", [WeightedCluster("backend", 1)]), f"{MP}.route",
     "exactly one of cluster and weighted_clusters"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[3].route.weighted_clusters[1], "weight", 0),
     f"{P}.route_config.virtual_hosts[0].routes[3].route.weighted_clusters[1].weight", ">= 1"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[3].route.weighted_clusters[0], "name", "nope"),
     f"{P}.route_config.virtual_hosts[0].routes[3].route.weighted_clusters[0].name", "unknown cluster"),
    (lambda h: _set(route0(h).route, "prefix_rewrite", "/p"), f"{MP}.route.regex_rewrite", "only one of"),
    (lambda h: _set(route0(h).route.regex_rewrite, "substitution", r"\3"), f"{MP}.route.regex_rewrite.substitution",
     "group \\3"),
    (lambda h: _set(route0(h).route.regex_rewrite, "pattern", r"(?i)x"), f"{MP}.route.regex_rewrite.pattern",
     "flags"),
    (lambda h: (_set(route0(h).route, "host_rewrite_literal", "h"), _set(route0(h).route, "auto_host_rewrite", True)),
     f"{MP}.route.auto_host_rewrite", "only one of"),
    (lambda h: _set(route0(h).route, "timeout", "15s"), f"{MP}.route.timeout", "non-negative number"),
    (lambda h: _set(route0(h).headers.request_headers_to_add[0], "key", ":path"),
     f"{MP}.headers.request_headers_to_add[0].key", "may not be modified"),
    (lambda h: _set(route0(h).headers.request_headers_to_add[0], "value", "a\r\nb"),
     f"{MP}.headers.request_headers_to_add[0].value", "control characters"),
    (lambda h: _set(route0(h).headers.request_headers_to_add[0], "append_action", "APPEND"),
     f"{MP}.headers.request_headers_to_add[0].append_action", "unknown append_action"),
    (lambda h: _set(h.route_config.headers, "response_headers_to_remove", ["Host"]),
     f"{P}.route_config.headers.response_headers_to_remove[0]", "may not be removed"),
    (lambda h: _set(h.route_config.virtual_hosts[0].headers, "request_headers_to_remove", "cookie"),
     f"{P}.route_config.virtual_hosts[0].headers.request_headers_to_remove", "expected a list"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[1].redirect, "scheme_redirect", "http"),
     f"{P}.route_config.virtual_hosts[0].routes[1].redirect.scheme_redirect", "only one of"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[1].redirect, "response_code", 200),
     f"{P}.route_config.virtual_hosts[0].routes[1].redirect.response_code", "301, 302"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[1].redirect, "port_redirect", 0),
     f"{P}.route_config.virtual_hosts[0].routes[1].redirect.port_redirect", "1..65535"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[1].redirect, "path_redirect", "x"),
     f"{P}.route_config.virtual_hosts[0].routes[1].redirect.path_redirect", "must start with '/'"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[2].direct_response, "status", 700),
     f"{P}.route_config.virtual_hosts[0].routes[2].direct_response.status", "100..599"),
    (lambda h: _set(h.route_config.virtual_hosts[0].routes[2].direct_response, "body", "text"),
     f"{P}.route_config.virtual_hosts[0].routes[2].direct_response.body", "expected bytes"),
    (lambda h: _set(h, "path_with_escaped_slashes_action", "DROP"), f"{P}.path_with_escaped_slashes_action",
     "KEEP_UNCHANGED"),
    (lambda h: _set(h, "strip_host_port", "SOME"), f"{P}.strip_host_port", "MATCHING"),
    (lambda h: _set(h, "headers_with_underscores_action", "drop_header"), f"{P}.headers_with_underscores_action",
     "DROP_HEADER"),
    (lambda h: _set(h, "normalize_path", 1), f"{P}.normalize_path", "True or False"),
    (lambda h: _set(h, "via", "a\r\nb: c"), f"{P}.via", "control characters"),
]


@pytest.mark.parametrize("mutate, path, fragment", MODEL_BAD,
                         ids=[f"{i}:{case[1].rsplit('.', 1)[-1]}" for i, case in enumerate(MODEL_BAD)])
def test_validate_http_names_the_model_field(mutate, path, fragment):
    hcm = good_hcm()
    mutate(hcm)
    with pytest.raises(ConfigError) as err:
        boot_with(hcm).validate()
    assert err.value.path == path, err.value
    assert fragment in err.value.message


def test_validate_http_rejects_a_non_model_object():
    # Listener(name, handler) refuses one already (TypeError); validate_http is the model's
    # check for any other caller.
    with pytest.raises(ConfigError) as err:
        validate_http({"stat_prefix": "x"}, P, {"backend"})
    assert err.value.path == P
    with pytest.raises(TypeError, match="handler= must be a TcpProxy or an HttpConnectionManager"):
        boot_with({"stat_prefix": "x"})


# --- RE2 -> POSIX: compared with libc's regcomp/regexec -----------------------------------

REG_EXTENDED, REG_NOSUB = 1, 8
REG_NOTBOL = 1  # an eflags bit of regexec
LC_ALL_MASK = 0x1FBF  # glibc: every LC_*_MASK but the unused bit of LC_ALL


class RegexMatch(ctypes.Structure):
    _fields_ = [("rm_so", ctypes.c_int), ("rm_eo", ctypes.c_int)]  # glibc: regoff_t is int


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    libc.regcomp.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    libc.regexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
    libc.regfree.argtypes = [ctypes.c_void_p]
    libc.regerror.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    libc.newlocale.restype = ctypes.c_void_p
    libc.newlocale.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
    libc.uselocale.restype = ctypes.c_void_p
    libc.uselocale.argtypes = [ctypes.c_void_p]
    libc.freelocale.argtypes = [ctypes.c_void_p]
    return libc


LIBC = _libc()
needs_libc_regex = pytest.mark.skipif(LIBC is None or not hasattr(LIBC, "regcomp"), reason="no libc regex")


class Posix:
    """A compiled POSIX ERE, used the way the core will: in the C locale."""

    def __init__(self, pattern, flags=REG_EXTENDED):
        self.buf = ctypes.create_string_buffer(1024)  # > sizeof(regex_t) everywhere
        rc = LIBC.regcomp(self.buf, pattern.encode(), flags)
        if rc:
            message = ctypes.create_string_buffer(256)
            LIBC.regerror(rc, self.buf, message, 256)
            raise AssertionError(f"regcomp({pattern!r}) failed: {message.value.decode()}")

    def search(self, subject, start=0, groups=10):
        """(start, end) of each group of the leftmost-longest match at or after ``start``
        (-1 pairs for unset groups), or None."""
        matches = (RegexMatch * groups)()
        data = subject.encode()[start:]
        # After the first match the subject no longer starts at the string's start: '^'
        # must not match there (the core does the same).
        if LIBC.regexec(self.buf, data, groups, matches, REG_NOTBOL if start else 0):
            return None
        return [(m.rm_so + start if m.rm_so >= 0 else -1, m.rm_eo + start if m.rm_eo >= 0 else -1) for m in matches]

    def matches(self, subject):
        return LIBC.regexec(self.buf, subject.encode(), 0, None, 0) == 0

    def close(self):
        LIBC.regfree(self.buf)


@pytest.fixture
def c_locale():
    """Run regcomp/regexec under the C locale on this thread (Python sets LC_CTYPE from the
    environment; the core must do the same, see config/regex.py)."""
    loc = LIBC.newlocale(LC_ALL_MASK, b"C", None)
    old = LIBC.uselocale(loc)
    yield
    LIBC.uselocale(old)
    LIBC.freelocale(loc)


def posix_fullmatch(posix, subject):
    """Envoy's safe_regex semantics on the translation, checked both ways the core may use."""
    compiled = Posix(posix)
    try:
        found = compiled.search(subject, groups=1)
        spans_all = found is not None and found[0] == (0, len(subject.encode()))
    finally:
        compiled.close()
    anchored = Posix(f"^({posix})$", REG_EXTENDED | REG_NOSUB)
    try:
        assert anchored.matches(subject) == spans_all, (posix, subject)
    finally:
        anchored.close()
    return spans_all


# (RE2 pattern, the same language in Python's re syntax or None if identical, samples)
REGEX_CASES = [
    (r"/api/v\d+/users/\w+", None, ["/api/v1/users/bob", "/api/v/users/bob", "/api/v12/users/b_b", "/api/v1/users/",
                                    "/api/v1/users/bo-b", "/api/v١/users/x"]),
    (r"/static/.*\.(css|js)", None, ["/static/a.css", "/static/x/y.js", "/static/a.cssx", "/static/acss",
                                     "/static/\n.css"]),
    (r"[^/]+/[\d\-_]+", None, ["ab/12-_", "a/b", "/1", "ab/"]),
    (r"[\D]+", None, ["abc", "a1", "-", ""]),
    (r"[^\s]+\s[\S]+", None, ["a b", "a  b", "a\tb", "ab", "a\fb"]),
    (r"\s", r"[ \t\n\r\f]", ["\v", " ", "\r"]),  # RE2's \s has no \v
    (r"[\w.-]+@[\w.-]+", None, ["a.b-c@x.y", "a@b@c", "@b"]),
    (r"[\W]+", None, ["-/.", "a", "_"]),
    (r"(?:foo|bar)+baz", None, ["foobarbaz", "baz", "foofoobaz"]),
    (r"(?P<v>v[0-9])/(?<rest>.*)", r"(?P<v>v[0-9])/(?P<rest>.*)", ["v1/x", "v/x", "v9/"]),
    (r"\A/a\z", r"/a", ["/a", "/a/", "/a\n"]),
    (r"a{2,3}b{2}c{1,}", None, ["aabbc", "aaabbccc", "abbc", "aaaabbc"]),
    (r"a{,2}", r"a\{,2\}", ["a{,2}", "aa", ""]),  # not a repetition in RE2
    (r"x{", r"x\{", ["x{", "x"]),
    (r"\Q/a.b*\E+", r"/a\.b\*+", ["/a.b*", "/a.b**", "/aXb*"]),
    (r"[[:alpha:]][[:^digit:]]*", r"[A-Za-z][^0-9]*", ["abc", "a1", "a-", "1a"]),
    (r"[[:punct:][:space:]]+", r"[!-/:-@\[-`{-~ \t\n\v\f\r]+", ["!-/ ", "a", "\v"]),
    (r"[]a]+", r"[\]a]+", ["]a]", "b"]),
    (r"[^]a]+", r"[^\]a]+", ["bcd", "b]"]),
    (r"[a\]\[\-]+", None, ["a]-[", "b"]),
    (r"[\^x]", None, ["^", "x", "y"]),
    (r"[-^]+", None, ["^-", "a"]),
    (r"[\x41-\x43]\x2e", None, ["A.", "C.", "D.", "Ax"]),
    (r"a|b|", None, ["a", "b", "", "ab"]),
    (r"()a", None, ["a"]),
    (r"(a|ab)(c|bcd)(d*)", None, ["abcd", "abc"]),
    (r"\$\^\(\)\|\{\}\?\*\+\.\[\]\\/", None, ["$^()|{}?*+.[]\\/", "x"]),
    (r".", None, ["a", "\n", ""]),
    (r"[\s\S]", None, ["a", "\n"]),
    (r"[^a]", None, ["b", "\n", "a"]),
    (r"\t\n\r\f\a\v", "\t\n\r\f\a\v", ["\t\n\r\f\a\v"]),
    (r"é+", None, ["éé", "é", "e"]),
    (r"x\x{e9}+", "x\xe9+", ["xéé", "x"]),
    (r"[a-c-e]", None, ["-", "b", "e", "d"]),
    (r"(a*)*", None, ["aaa", ""]),
    (r"(^a|b$)", None, ["a", "b"]),
    (r"/(\d{4})-(\d{2})", None, ["/2024-01", "/24-01"]),
    (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}", None, ["deadBEEF-0123", "deadbeef-012g"]),
    (r"/v[12]/(users|groups)/[^/]+/?", None, ["/v1/users/x", "/v2/groups/y/", "/v3/users/x", "/v1/users//"]),
]


@needs_libc_regex
@pytest.mark.parametrize("re2, python, samples", REGEX_CASES, ids=[c[0] for c in REGEX_CASES])
def test_translation_matches_like_the_original(c_locale, re2, python, samples):
    posix = re2_to_posix(re2, "p")
    for subject in samples:
        expected = re.fullmatch(python or re2, subject, re.ASCII) is not None
        assert posix_fullmatch(posix, subject) == expected, (re2, posix, subject)


@needs_libc_regex
def test_full_match_translation_is_anchored(c_locale):
    posix = re2_to_posix("a|b", "p", full_match=True)
    assert posix == "^(a|b)$"
    compiled = Posix(posix, REG_EXTENDED | REG_NOSUB)
    try:
        assert compiled.matches("a") and not compiled.matches("ab")
    finally:
        compiled.close()


@pytest.mark.parametrize("re2, posix", [
    (r"\d", "[0-9]"), (r"\w", "[0-9A-Z_a-z]"), (r"\s", "[\t\n\f\r ]"), (r"\D", "[^0-9]"),
    (r"\.", r"\."), (r"\/", "/"), (r"\-", "-"), (r"\{", r"\{"), (r"\}", "}"), (".", "[^\n]"),
    (r"[\s\S]", "."), (r"(?:a)", "(a)"), (r"\A\z", "^$"), (r"[a-z]", "[a-z]"), (r"[^]^-]", "[^]^-]"),
])
def test_translations(re2, posix):
    assert re2_to_posix(re2, "p") == posix


@pytest.mark.parametrize("re2, fragment", [
    (r"a*?", "non-greedy"), (r"a+?", "non-greedy"), (r"a??", "non-greedy"), (r"a{1,2}?", "non-greedy"),
    (r"(?=a)", "lookahead"), (r"(?!a)", "lookahead"), (r"(?<=a)b", "lookbehind"), (r"(?<!a)b", "lookbehind"),
    (r"(?i)abc", "flags"), (r"(?i:abc)", "flags"), (r"(?s).", "flags"), (r"(?P=name)", "backreferences"),
    (r"(a)\1", "backreferences"), (r"\b", "word boundaries"), (r"\B", "word boundaries"),
    (r"\pL", "Unicode classes"), (r"\p{Greek}", "Unicode classes"), (r"\PN", "Unicode classes"),
    (r"\C", "any byte"), (r"\Z", "invalid escape"), (r"\q", "invalid escape"), ("a**", "bad repetition"),
    ("a*+", "bad repetition"), ("*a", "needs something to repeat"), ("a|*", "needs something to repeat"), ("^*", "anchor"),
    ("{2}", "needs something to repeat"), ("a{1001}", "bad repetition"), ("a{3,2}", "bad repetition"),
    ("[z-a]", "bad character class range"), (r"[a-\d]", "bad character class range"), ("[é]", "non-ASCII"),
    ("(a", "missing ')'"), ("a)", "unmatched ')'"), ("[a", "missing ']'"), ("\\", "trailing backslash"),
    ("[[:foo:]]", "unknown character class"), ("(?P<1", "invalid named group"), (r"\x0", "invalid \\x"),
    (r"\x00", "NUL"), ("a\0", "NUL"), ("", "empty"),
])
def test_untranslatable_regexes_are_rejected_with_the_path(re2, fragment):
    with pytest.raises(ConfigError) as err:
        re2_to_posix(re2, "some.field.regex")
    assert err.value.path == "some.field.regex"
    assert fragment in err.value.message


def test_groups_map_through_non_capturing_ones():
    result = translate(r"(?:x)(a)(?:y(b))(?P<n>c)é+", "p")
    assert result.posix == "(x)(a)(y(b))(c)(é)+"
    assert result.groups == [2, 4, 5]
    assert rewrite_to_posix(r"^/(?:v1|v2)/(.*)$", r"/x/\1\\\0", "p") == \
        ("^/(v1|v2)/([^\n]*)$", ["/x/", 2, "\\", 0])


def _posix_global_replace(pattern, parts, subject):
    """What the core does for regex_rewrite: replace every non-overlapping match."""
    compiled = Posix(pattern)
    out, pos = [], 0
    try:
        while pos <= len(subject):
            found = compiled.search(subject, pos)
            if found is None:
                break
            start, end = found[0]
            out.append(subject[pos:start])
            out.append("".join(p if isinstance(p, str) else subject[found[p][0]:found[p][1]] for p in parts))
            if end == start:  # an empty match: copy one character and move on
                out.append(subject[start:start + 1])
                end += 1
            pos = end
    finally:
        compiled.close()
    return "".join(out) + subject[pos:]


@needs_libc_regex
@pytest.mark.parametrize("pattern, substitution, subject", [
    (r"^/api/v1/(.*)$", r"/v2/\1", "/api/v1/users/7"),
    (r"^/(?:service|svc)/([^/]+)/(.*)$", r"/\2?service=\1", "/svc/billing/invoices/3"),
    (r"/+", "/", "//a///b/c//"),
    (r"\d+", r"<\0>", "/a1/b22/c333"),
    (r"^/users/(?P<id>\d+)$", r"/u/\1\\", "/users/42"),
    (r"x*", "-", "abc"),
])
def test_regex_rewrite_translation_replaces_like_re2(c_locale, pattern, substitution, subject):
    posix, parts = rewrite_to_posix(pattern, substitution, "p")
    python_sub = re.sub(r"\\(\d)", r"\\g<\1>", substitution)
    expected = re.sub(pattern, python_sub, subject, flags=re.ASCII)
    assert _posix_global_replace(posix, parts, subject) == expected


@needs_envoy
def test_connect_tunnel_config_is_valid_for_envoy_and_loads(tmp_path):
    config = edited((f"{H0}.upgrade_configs", [{"upgrade_type": "CONNECT"}]),
                    (M0, {"connect_matcher": {}}),
                    (f"{H0}.access_log", [{"typed_config": {"@type": FILE_LOG, "path": "/dev/null", "log_format": {
                        "text_format_source": {"inline_string":
                            "[%START_TIME(%Y/%m/%dT%H:%M:%S.%3f)%] %REQ(:METHOD)% %REQ(X-A?X-B):5% "
                            "%RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                            "%ROUTE_NAME% %REQUEST_DURATION% %RESP(SERVER)%\n"}}}}]))
    path = tmp_path / "connect.json"
    path.write_text(json.dumps(config))
    rc, output = envoy_validate(path)
    assert rc == 0, output
    hcm = load_envoy(path).listeners[0].handler
    assert [(u.upgrade_type, u.enabled) for u in hcm.upgrade_configs] == [("CONNECT", True)]
    assert hcm.route_config.virtual_hosts[0].routes[0].match.connect_matcher


@pytest.mark.parametrize("route", [
    {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
    {"match": {"path": "/exact"}, "route": {"cluster": "c"}, "name": "named"},
    {"match": {"prefix": ""}, "route": {"cluster": "c"}},
])
def test_plain_routes_read_as_the_general_reading_does(route):
    """config/http.py reads the common route shape with plain lookups; the result, and the
    cluster reference it records, are the general reading's (forced here by a field the
    plain reading leaves to it: an empty typed_per_filter_config changes nothing)."""
    from fastproxy.config.http import _Context, _route
    plain_ctx, general_ctx = _Context([], 4096), _Context([], 4096)
    plain = _route(route, "r", plain_ctx)
    general = _route({**route, "typed_per_filter_config": {}}, "r", general_ctx)
    assert plain == general
    assert plain_ctx.refs == general_ctx.refs == [("c", "r.route.cluster")]


@pytest.mark.parametrize("route, path", [
    ({"match": {"prefix": "/", "headerz": []}, "route": {"cluster": "c"}}, "r.match.headerz"),
    ({"match": {"prefix": "/"}, "route": {"cluster": ""}}, "r.route.cluster"),
    ({"match": {"prefix": 3}, "route": {"cluster": "c"}}, "r.match.prefix"),
    ({"match": {"prefix": "/"}, "route": {"cluster": "c"}, "nme": "x"}, "r.nme"),
])
def test_routes_the_plain_reading_leaves_are_named_by_the_general_one(route, path):
    from fastproxy.config.http import _Context, _route
    from fastproxy.config.proto import collecting, raise_collected
    with pytest.raises(ConfigError) as e:
        with collecting() as errors:
            _route(route, "r", _Context([], 4096))
        raise_collected(errors)
    assert e.value.path == path


@pytest.mark.parametrize("vhost", [
    {"name": "v", "domains": ["a.example", "*.b.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]},
    {"name": "v", "domains": ["x"]},
    {"name": "v", "domains": ["x"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]},
])
def test_plain_virtual_hosts_read_as_the_general_reading_does(vhost):
    """The usual virtual host (name, domains, routes) is read without the generic walk; the
    result is the general reading's (forced by an empty typed_per_filter_config)."""
    from fastproxy.config.http import _Context, _virtual_host
    plain_ctx, general_ctx = _Context([], 4096), _Context([], 4096)
    plain_seen, general_seen = {}, {}
    plain = _virtual_host(vhost, "v", plain_ctx, plain_seen)
    general = _virtual_host({**vhost, "typed_per_filter_config": {}}, "v", general_ctx, general_seen)
    assert plain == general
    assert plain_ctx.refs == general_ctx.refs and plain_seen == general_seen


@pytest.mark.parametrize("vhost, seen, path", [
    ({"name": "v", "domains": []}, {}, "v.domains"),
    ({"name": "v", "domains": [3]}, {}, "v.domains[0]"),
    ({"name": "v", "domains": ["a", "A"]}, {}, "v.domains[1]"),
    ({"name": "v", "domains": ["*"]}, {"*": "w.domains[0]"}, "v.domains[0]"),
    ({"name": "v", "domains": ["a"], "routes": [{"match": {}, "route": {"cluster": "c"}}]}, {}, "v.routes[0].match"),
])
def test_virtual_host_errors_name_the_field_on_either_reading(vhost, seen, path):
    from fastproxy.config.http import _Context, _virtual_host
    from fastproxy.config.proto import collecting, raise_collected
    for item in (vhost, {**vhost, "typed_per_filter_config": {}}):
        with pytest.raises(ConfigError) as e:
            with collecting() as errors:
                _virtual_host(item, "v", _Context([], 4096), dict(seen))
            raise_collected(errors)
        assert e.value.path == path


# --- HTTP/2 and gRPC fields ---------------------------------------------------------------

H2 = f"{H0}.http2_protocol_options"
KA = f"{H2}.connection_keepalive"
# Envoy 1.40's defaults (what the real one announces: the SETTINGS tests below read them off
# the wire, as a server and as a client).
ENVOY_H2_DEFAULTS = dict(hpack_table_size=4096, max_concurrent_streams=1024, initial_stream_window_size=16 << 20,
                         initial_connection_window_size=24 << 20, allow_connect=False, max_outbound_frames=10000,
                         max_outbound_control_frames=1000, max_consecutive_inbound_frames_with_empty_payload=1,
                         max_inbound_priority_frames_per_stream=100,
                         max_inbound_window_update_frames_per_data_frame_sent=10,
                         override_stream_error_on_invalid_http_message=None,
                         stream_error_on_invalid_http_messaging=False, connection_keepalive=None)
# Every field, none at its default.
H2_ALL = {"hpack_table_size": 0, "max_concurrent_streams": 7, "initial_stream_window_size": 65535,
          "initial_connection_window_size": 2147483647, "allow_connect": False, "max_outbound_frames": 1,
          "max_outbound_control_frames": 2, "max_consecutive_inbound_frames_with_empty_payload": 0,
          "max_inbound_priority_frames_per_stream": 0, "max_inbound_window_update_frames_per_data_frame_sent": 1,
          "override_stream_error_on_invalid_http_message": False, "stream_error_on_invalid_http_messaging": True,
          "connection_keepalive": {"interval": "0.5s", "timeout": "0.001s", "interval_jitter": {"value": 2.5},
                                   "connection_idle_interval": "90s"},
          "max_metadata_size": 1024, "allow_metadata": False, "use_oghttp2_codec": False,
          "enable_huffman_encoding": True, "custom_settings_parameters": []}


def test_codec_type_and_http2_defaults_are_envoys():
    hcm = load_hcm(base())
    assert hcm.codec_type == "AUTO"
    assert hcm.http2_protocol_options == Http2ProtocolOptions() == Http2ProtocolOptions(**ENVOY_H2_DEFAULTS)
    assert load_hcm(edited((H2, {}))).http2_protocol_options == Http2ProtocolOptions()
    assert load_hcm(edited((f"{H0}.codec_type", "HTTP2"))).codec_type == "HTTP2"
    assert load_hcm(edited((f"{H0}.codec_type", 2))).codec_type == "HTTP2"       # by number, as protobuf
    assert Http2ProtocolOptions().to_spec() == {
        "hpack_table_size": 4096, "max_concurrent_streams": 1024, "initial_stream_window_size": 16777216,
        "initial_connection_window_size": 25165824, "max_outbound_frames": 10000, "max_outbound_control_frames": 1000,
        "max_consecutive_inbound_frames_with_empty_payload": 1, "max_inbound_priority_frames_per_stream": 100,
        "max_inbound_window_update_frames_per_data_frame_sent": 10,
        "override_stream_error_on_invalid_http_message": 0, "allow_connect": 0, "keepalive_interval_ms": 0,
        "keepalive_timeout_ms": 0, "keepalive_interval_jitter_pct": 0, "keepalive_idle_interval_ms": 0}


def test_every_http2_field_is_read():
    o = load_hcm(edited((H2, H2_ALL))).http2_protocol_options
    assert o == Http2ProtocolOptions(
        hpack_table_size=0, max_concurrent_streams=7, initial_stream_window_size=65535,
        initial_connection_window_size=2147483647, allow_connect=False, max_outbound_frames=1,
        max_outbound_control_frames=2, max_consecutive_inbound_frames_with_empty_payload=0,
        max_inbound_priority_frames_per_stream=0, max_inbound_window_update_frames_per_data_frame_sent=1,
        override_stream_error_on_invalid_http_message=False, stream_error_on_invalid_http_messaging=True,
        connection_keepalive=KeepaliveSettings(timeout=0.001, interval=0.5, interval_jitter=2.5,
                                               connection_idle_interval=90.0))
    assert o.to_spec() == {
        "hpack_table_size": 0, "max_concurrent_streams": 7, "initial_stream_window_size": 65535,
        "initial_connection_window_size": 2147483647, "max_outbound_frames": 1, "max_outbound_control_frames": 2,
        "max_consecutive_inbound_frames_with_empty_payload": 0, "max_inbound_priority_frames_per_stream": 0,
        "max_inbound_window_update_frames_per_data_frame_sent": 1,
        "override_stream_error_on_invalid_http_message": 0,     # the override wins over the deprecated field
        "allow_connect": 0, "keepalive_interval_ms": 500, "keepalive_timeout_ms": 1,
        "keepalive_interval_jitter_pct": 2, "keepalive_idle_interval_ms": 90000}
    # camelCase, and the keepalive's own default jitter (15%)
    o = load_hcm(edited((f"{H0}.http2ProtocolOptions", {"maxConcurrentStreams": "9", "connectionKeepalive":
                                                        {"timeout": "2s"}}))).http2_protocol_options
    assert o.max_concurrent_streams == 9 and o.connection_keepalive == KeepaliveSettings(timeout=2.0)
    assert o.connection_keepalive.interval_jitter == 15.0
    assert o.to_spec()["keepalive_interval_jitter_pct"] == 15 and o.to_spec()["keepalive_interval_ms"] == 0


@pytest.mark.parametrize("options, reset_stream", [
    ({}, False),
    ({"stream_error_on_invalid_http_messaging": True}, True),
    ({"override_stream_error_on_invalid_http_message": True}, True),
    ({"stream_error_on_invalid_http_messaging": True, "override_stream_error_on_invalid_http_message": False}, False),
])
def test_stream_error_override_wins_over_the_deprecated_field(options, reset_stream):
    o = load_hcm(edited((H2, options))).http2_protocol_options
    assert o.stream_error_on_invalid_http_message is reset_stream
    assert o.to_spec()["override_stream_error_on_invalid_http_message"] == int(reset_stream)


def test_route_grpc_timeouts_are_read():
    route = load_hcm(only_route({"match": {"prefix": "/"}, "route": {
        "cluster": "backend", "max_grpc_timeout": "0s", "grpc_timeout_offset": "0.1s",
        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "2.5s",
                                "grpc_timeout_header_offset": "0s"}}})).route_config.virtual_hosts[0].routes[0]
    # 0s stays 0 where it means "no cap"; a stream duration of 0s is none (Envoy's docs).
    assert route.route == RouteAction(cluster="backend", timeout=15.0, max_grpc_timeout=0.0, grpc_timeout_offset=0.1,
                                      max_stream_duration=MaxStreamDuration(None, 2.5, 0.0))
    plain = load_hcm(base()).route_config.virtual_hosts[0].routes[0].route
    assert (plain.max_grpc_timeout, plain.grpc_timeout_offset, plain.max_stream_duration) == (None, None, None)


H2_BAD = [
    # (changes, path, fragment): Envoy refuses these too (test_envoy_agrees_on_the_http2_fields)
    ([(H2, {"max_concurrent_streams": 0})], f"{H2}.max_concurrent_streams", "1..2147483647"),
    ([(H2, {"max_concurrent_streams": 2147483648})], f"{H2}.max_concurrent_streams", "1..2147483647"),
    ([(H2, {"initial_stream_window_size": 65534})], f"{H2}.initial_stream_window_size", "65535..2147483647"),
    ([(H2, {"initial_connection_window_size": 2147483648})], f"{H2}.initial_connection_window_size",
     "65535..2147483647"),
    ([(H2, {"hpack_table_size": 4294967296})], f"{H2}.hpack_table_size", "out of range"),
    ([(H2, {"hpack_table_size": -1})], f"{H2}.hpack_table_size", "out of range"),
    ([(H2, {"max_outbound_frames": 0})], f"{H2}.max_outbound_frames", "1..4294967295"),
    ([(H2, {"max_outbound_control_frames": 0})], f"{H2}.max_outbound_control_frames", "1..4294967295"),
    ([(H2, {"max_inbound_window_update_frames_per_data_frame_sent": 0})],
     f"{H2}.max_inbound_window_update_frames_per_data_frame_sent", "1..4294967295"),
    ([(H2, {"allow_connect": [True]})], f"{H2}.allow_connect", "true or false"),
    ([(H2, {"max_frame_size": 16384})], f"{H2}.max_frame_size", "unsupported field"),
    ([(H2, {"connection_keepalive": {}})], f"{KA}.timeout", "required"),
    ([(H2, {"connection_keepalive": {"interval": "10s"}})], f"{KA}.timeout", "required"),
    ([(H2, {"connection_keepalive": {"timeout": "0.0009s"}})], f"{KA}.timeout", "at least 1ms"),
    ([(H2, {"connection_keepalive": {"timeout": "1s", "interval": "0s"}})], f"{KA}.interval", "at least 1ms"),
    ([(H2, {"connection_keepalive": {"timeout": "1s", "connection_idle_interval": "0s"}})],
     f"{KA}.connection_idle_interval", "at least 1ms"),
    ([(H2, {"connection_keepalive": {"timeout": "1s", "interval_jitter": {"value": 100.5}}})],
     f"{KA}.interval_jitter.value", "0..100"),
    ([(H2, {"connection_keepalive": {"timeout": "-1s"}})], f"{KA}.timeout", "negative"),
    ([(f"{H0}.codec_type", "HTTP3")], f"{H0}.codec_type", "HTTP/3 is unsupported in fastproxy (not planned)"),
    ([(f"{A0}.max_grpc_timeout", "-1s")], f"{A0}.max_grpc_timeout", "negative"),
    ([(f"{A0}.max_stream_duration", {"grpc_timeout_header_max": "soon"})],
     f"{A0}.max_stream_duration.grpc_timeout_header_max", "invalid Duration"),
]
# Envoy takes these; fastproxy has not built what they ask for, and says so at the field.
H2_NOT_BUILT = [
    ([(H2, {"allow_connect": True})], f"{H2}.allow_connect", "extended CONNECT (RFC 8441) is not built"),
    ([(H2, {"allow_metadata": True})], f"{H2}.allow_metadata", "METADATA frames are not supported"),
    ([(H2, {"custom_settings_parameters": [{"identifier": 9, "value": 1}]})],
     f"{H2}.custom_settings_parameters[0]", "custom SETTINGS parameters are not supported"),
    ([(H2, {"use_oghttp2_codec": True})], f"{H2}.use_oghttp2_codec", "nghttp2"),
    ([(H2, {"enable_huffman_encoding": False})], f"{H2}.enable_huffman_encoding", "Huffman"),
]


@pytest.mark.parametrize("changes, path, fragment", H2_BAD + H2_NOT_BUILT,
                         ids=[f"{i}:{case[1].rsplit('.', 1)[-1]}" for i, case in enumerate(H2_BAD + H2_NOT_BUILT)])
def test_bad_http2_and_grpc_fields_name_the_field(changes, path, fragment):
    with pytest.raises(ConfigError) as err:
        load_envoy(edited(*changes))
    assert err.value.path == path, err.value
    assert fragment in err.value.message


@needs_envoy
def test_envoy_agrees_on_the_http2_fields(tmp_path):
    """Envoy 1.40 refuses each of H2_BAD, and takes H2_ALL and each of H2_NOT_BUILT."""
    def rc_of_envoy(changes, name):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(edited(*changes)))
        return envoy_validate(path)
    for i, (changes, path, _) in enumerate(H2_BAD):
        if path.endswith(".max_frame_size"):
            continue        # (an unknown field: Envoy's own error, tested elsewhere)
        rc, output = rc_of_envoy(changes, f"bad{i}")
        assert rc != 0, f"envoy accepted {changes}: {output}"
    for i, (changes, _, _) in enumerate(H2_NOT_BUILT + [([(H2, H2_ALL), (f"{H0}.codec_type", "HTTP2")], "", "")]):
        rc, output = rc_of_envoy(changes, f"good{i}")
        assert rc == 0, output
    rc, output = rc_of_envoy([(f"{A0}.max_stream_duration", {"grpc_timeout_header_max": "1s"}),
                              (f"{A0}.max_grpc_timeout", "0s"), (f"{A0}.grpc_timeout_offset", "0.1s")], "grpc")
    assert rc == 0, output


def _read_settings(sock) -> tuple:
    """Read HTTP/2 frames from ``sock`` (after the connection preface) until the peer's first
    SETTINGS and its WINDOW_UPDATE of the connection have come: ({id: value}, the
    connection window it opened)."""
    import struct
    settings, window, data = None, None, b""
    while settings is None or window is None:
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = sock.recv(65536)
            assert chunk, f"closed before SETTINGS and WINDOW_UPDATE (got {settings}, {window})"
            data += chunk
        length, kind, flags, stream = int.from_bytes(data[:3], "big"), data[3], data[4], \
            int.from_bytes(data[5:9], "big")
        payload, data = data[9:9 + length], data[9 + length:]
        if kind == 0x4 and not flags & 0x1 and settings is None:    # SETTINGS, not an ACK
            settings = dict(struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload), 6))
        elif kind == 0x8 and stream == 0:                           # WINDOW_UPDATE of the connection
            window = 65535 + (int.from_bytes(payload, "big") & 0x7FFFFFFF)
    return settings, window


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _h2_cluster_bootstrap(port, options) -> dict:
    """A listener routing everything to "backend", an HTTP/2 cluster (explicit_http_config
    with the http2_protocol_options ``options``) of one endpoint at ``port``."""
    protocol = {"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": options or {}}}}}
    return envoy_bootstrap([http_listener("[{match: {prefix: /}, route: {cluster: backend}}]")],
                           [static_cluster("backend", [port], **protocol)])


def _client_settings(listening) -> tuple:
    """Accept the HTTP/2 client's connection on ``listening``, check its preface and read
    its SETTINGS and connection window (_read_settings)."""
    listening.settimeout(10)
    conn, _ = listening.accept()
    with conn:
        conn.settimeout(10)
        preface = b""
        while len(preface) < len(PREFACE):
            chunk = conn.recv(len(PREFACE) - len(preface))
            assert chunk, "closed before the preface"
            preface += chunk
        assert preface == PREFACE
        return _read_settings(conn)


def _assert_announced(settings, window, spec):
    assert settings[0x3] == spec["max_concurrent_streams"]                 # SETTINGS_MAX_CONCURRENT_STREAMS
    assert settings[0x4] == spec["initial_stream_window_size"]             # SETTINGS_INITIAL_WINDOW_SIZE
    assert settings.get(0x1, 4096) == spec["hpack_table_size"]             # SETTINGS_HEADER_TABLE_SIZE
    assert window == spec["initial_connection_window_size"]


H2_ANNOUNCED = [None, {"max_concurrent_streams": 77, "initial_stream_window_size": 70000,
                       "initial_connection_window_size": 5000000, "hpack_table_size": 1000}]


@needs_envoy
@pytest.mark.parametrize("options", H2_ANNOUNCED)
def test_http2_settings_are_what_envoy_announces_as_a_server(tmp_path, options):
    """The real Envoy, given the same http2_protocol_options (or none) on its connection
    manager, announces the SETTINGS and connection window the model says: its defaults are
    the model's, and the fields mean the same numbers."""
    import socket
    import yaml
    from conftest import start_envoy
    changes = [(f"{L0}.address.socket_address.port_value", 0), (f"{H0}.codec_type", "HTTP2")]
    if options is not None:
        changes.append((H2, options))
    config = edited(*changes)
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    spec = load_hcm(config).http2_protocol_options.to_spec()
    proc, _admin, address = start_envoy(yaml.safe_dump(config), tmp_path)
    try:
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(PREFACE + EMPTY_SETTINGS)
            settings, window = _read_settings(s)
    finally:
        proc.terminate()
        proc.wait()
    _assert_announced(settings, window, spec)


@needs_envoy
@pytest.mark.parametrize("options", H2_ANNOUNCED)
def test_http2_settings_are_what_envoy_announces_as_a_client(tmp_path, options):
    """The same for a cluster's explicit_http_config.http2_protocol_options: what the real
    Envoy sends an HTTP/2 upstream (a listening socket of the test's) is the model's."""
    import socket
    import yaml
    from conftest import start_envoy
    upstream = socket.create_server(("127.0.0.1", 0))
    with upstream:
        config = _h2_cluster_bootstrap(upstream.getsockname()[1], options)
        spec = load_envoy(config).clusters[0].h2_options.to_spec()
        proc, _admin, address = start_envoy(yaml.safe_dump(config), tmp_path)
        try:
            # A request makes Envoy connect upstream (its answer does not matter here).
            threading.Thread(target=_request_ignoring_errors, args=(f"http://{address[0]}:{address[1]}/",),
                             daemon=True).start()
            settings, window = _client_settings(upstream)
        finally:
            proc.terminate()
            proc.wait()
    _assert_announced(settings, window, spec)


@pytest.mark.parametrize("options", H2_ANNOUNCED)
def test_fastproxy_announces_the_same_http2_settings(options):
    """fastproxy, given the config of the Envoy test above, announces the same SETTINGS and
    connection window (the model's to_spec(), through the core)."""
    import socket
    from fastproxy import Proxy
    changes = [(f"{L0}.address.socket_address.port_value", 0), (f"{H0}.codec_type", "HTTP2")]
    if options is not None:
        changes.append((H2, options))
    boot = load_envoy(edited(*changes))
    spec = boot.listeners[0].handler.http2_protocol_options.to_spec()
    with Proxy.from_bootstrap(boot, concurrency=1) as p:
        with socket.create_connection(p.listener_address("web"), timeout=10) as s:
            s.sendall(PREFACE + EMPTY_SETTINGS)
            settings, window = _read_settings(s)
    _assert_announced(settings, window, spec)


@pytest.mark.parametrize("options", H2_ANNOUNCED)
def test_fastproxy_announces_the_same_http2_settings_upstream(options):
    """The client side of the same: what fastproxy sends an HTTP/2 cluster's upstream."""
    import socket
    from fastproxy import Proxy
    upstream = socket.create_server(("127.0.0.1", 0))
    with upstream:
        boot = load_envoy(_h2_cluster_bootstrap(upstream.getsockname()[1], options))
        spec = boot.clusters[0].h2_options.to_spec()
        with Proxy.from_bootstrap(boot, concurrency=1) as p:
            address = p.listener_address("web")
            threading.Thread(target=_request_ignoring_errors, args=(f"http://{address[0]}:{address[1]}/",),
                             daemon=True).start()
            settings, window = _client_settings(upstream)
    _assert_announced(settings, window, spec)


def _request_ignoring_errors(url):
    import urllib.request
    try:
        urllib.request.urlopen(url, timeout=10).read()
    except OSError:
        pass


MODEL_BAD_H2 = [
    (lambda h: _set(h, "codec_type", "HTTP3"), f"{P}.codec_type", "HTTP/3 is not supported"),
    (lambda h: _set(h, "codec_type", "http2"), f"{P}.codec_type", "AUTO, HTTP1, HTTP2"),
    (lambda h: _set(h, "http2_protocol_options", None), f"{P}.http2_protocol_options",
     "expected Http2ProtocolOptions"),
    (lambda h: _set(h.http2_protocol_options, "max_concurrent_streams", 0),
     f"{P}.http2_protocol_options.max_concurrent_streams", "1..2147483647"),
    (lambda h: _set(h.http2_protocol_options, "initial_connection_window_size", 1 << 31),
     f"{P}.http2_protocol_options.initial_connection_window_size", "65535..2147483647"),
    (lambda h: _set(h.http2_protocol_options, "hpack_table_size", True),
     f"{P}.http2_protocol_options.hpack_table_size", "0..4294967295"),
    (lambda h: _set(h.http2_protocol_options, "override_stream_error_on_invalid_http_message", 1),
     f"{P}.http2_protocol_options.override_stream_error_on_invalid_http_message", "True or False"),
    (lambda h: _set(h.http2_protocol_options, "connection_keepalive", {"timeout": 1}),
     f"{P}.http2_protocol_options.connection_keepalive", "expected KeepaliveSettings"),
    (lambda h: _set(h.http2_protocol_options, "connection_keepalive", KeepaliveSettings(timeout=None)),
     f"{P}.http2_protocol_options.connection_keepalive.timeout", "non-negative number of seconds"),
    (lambda h: _set(h.http2_protocol_options, "connection_keepalive", KeepaliveSettings(1.0, interval=0.0001)),
     f"{P}.http2_protocol_options.connection_keepalive.interval", "at least 1ms"),
    (lambda h: _set(h.http2_protocol_options, "connection_keepalive", KeepaliveSettings(1.0, interval_jitter=-1)),
     f"{P}.http2_protocol_options.connection_keepalive.interval_jitter", "0..100"),
    (lambda h: _set(route0(h).route, "max_grpc_timeout", -1), f"{MP}.route.max_grpc_timeout", "non-negative"),
    (lambda h: _set(route0(h).route, "grpc_timeout_offset", "1s"), f"{MP}.route.grpc_timeout_offset",
     "non-negative"),
    (lambda h: _set(route0(h).route, "max_stream_duration", 5), f"{MP}.route.max_stream_duration",
     "expected MaxStreamDuration"),
    (lambda h: _set(route0(h).route, "max_stream_duration", MaxStreamDuration(grpc_timeout_header_max=-2)),
     f"{MP}.route.max_stream_duration.grpc_timeout_header_max", "non-negative"),
]


@pytest.mark.parametrize("mutate, path, fragment", MODEL_BAD_H2,
                         ids=[f"{i}:{case[1].rsplit('.', 1)[-1]}" for i, case in enumerate(MODEL_BAD_H2)])
def test_validate_http_names_the_http2_model_field(mutate, path, fragment):
    hcm = good_hcm()
    mutate(hcm)
    with pytest.raises(ConfigError) as err:
        boot_with(hcm).validate()
    assert err.value.path == path, err.value
    assert fragment in err.value.message


def test_http2_model_built_in_python_passes():
    hcm = good_hcm()
    hcm.codec_type = "HTTP2"
    hcm.http2_protocol_options = Http2ProtocolOptions(max_concurrent_streams=10, connection_keepalive=KeepaliveSettings(
        timeout=1.0, interval=5.0, interval_jitter=0, connection_idle_interval=0.001))
    route0(hcm).route.max_stream_duration = MaxStreamDuration(grpc_timeout_header_max=0.0)
    boot_with(hcm).validate()
    assert hcm.http2_protocol_options.to_spec()["keepalive_idle_interval_ms"] == 1


def test_http2_dump_writes_what_differs_from_envoys_defaults():
    """/config_dump's HCM: codec_type and http2_protocol_options as Envoy's fields, only
    those away from the defaults; the route's gRPC fields; and they load back the same."""
    from fastproxy.config.dump import bootstrap_json, http2_options_json
    assert http2_options_json(Http2ProtocolOptions()) == {}
    assert http2_options_json(Http2ProtocolOptions(max_concurrent_streams=5, override_stream_error_on_invalid_http_message=False,
                                                   connection_keepalive=KeepaliveSettings(timeout=1.5))) == \
        {"max_concurrent_streams": 5, "override_stream_error_on_invalid_http_message": False,
         "connection_keepalive": {"timeout": "1.500s"}}
    config = edited((f"{H0}.codec_type", "HTTP2"), (H2, H2_ALL),
                    (f"{A0}.max_stream_duration", {"grpc_timeout_header_max": "0s", "max_stream_duration": "3s"}),
                    (f"{A0}.max_grpc_timeout", "1s"))
    boot = load_envoy(config)
    written = json.loads(json.dumps(bootstrap_json(boot)))
    hcm = written["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["codec_type"] == "HTTP2"
    assert hcm["http2_protocol_options"]["connection_keepalive"] == {
        "timeout": "0.001s", "interval": "0.500s", "connection_idle_interval": "90s", "interval_jitter": {"value": 2.5}}
    action = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert action["max_stream_duration"] == {"max_stream_duration": "3s", "grpc_timeout_header_max": "0s"}
    assert action["max_grpc_timeout"] == "1s"
    assert load_envoy(written) == boot
    assert "codec_type" not in json.dumps(bootstrap_json(load_envoy(base())))
