"""fastproxy.prometheus without a proxy: Envoy's tag extraction on the stat names fastproxy
emits, and histogram buckets at Envoy's bounds from the core's log-linear buckets. The page
as a whole is checked against real Envoy's in test_http_stats_parity.py."""
from __future__ import annotations

import shutil

import pytest

from conftest import admin_get, envoy_yaml, find_envoy, http_listener, start_envoy, static_cluster
from fastproxy import _core
from fastproxy.histogram import Histogram
from fastproxy.prometheus import BUCKET_BOUNDS, cumulative_buckets, render, tag


@pytest.mark.parametrize("name, metric, labels", [
    ("cluster.backend.upstream_rq_total", "envoy_cluster_upstream_rq_total",
     [("envoy_cluster_name", "backend")]),
    ("cluster.backend.upstream_rq_503", "envoy_cluster_upstream_rq",
     [("envoy_response_code", "503"), ("envoy_cluster_name", "backend")]),
    ("cluster.backend.upstream_rq_5xx", "envoy_cluster_upstream_rq_xx",
     [("envoy_response_code_class", "5"), ("envoy_cluster_name", "backend")]),
    # Envoy's name parts have no dots: the rest of a dotted cluster name stays in the metric
    ("cluster.back.end.upstream_cx_total", "envoy_cluster_end_upstream_cx_total",
     [("envoy_cluster_name", "back")]),
    ("http.ingress_http.downstream_rq_2xx", "envoy_http_downstream_rq_xx",
     [("envoy_response_code_class", "2"), ("envoy_http_conn_manager_prefix", "ingress_http")]),
    ("http.ingress_http.no_route", "envoy_http_no_route",
     [("envoy_http_conn_manager_prefix", "ingress_http")]),
    ("listener.127.0.0.1_10000.http.ingress_http.downstream_rq_4xx", "envoy_listener_http_downstream_rq_xx",
     [("envoy_response_code_class", "4"), ("envoy_http_conn_manager_prefix", "ingress_http"),
      ("envoy_listener_address", "127.0.0.1_10000")]),
    ("listener.[__1]_8080.worker_1.downstream_cx_active", "envoy_listener_worker_downstream_cx_active",
     [("envoy_worker_id", "1"), ("envoy_listener_address", "[__1]_8080")]),
    ("listener.0.0.0.0_80.downstream_cx_total", "envoy_listener_downstream_cx_total",
     [("envoy_listener_address", "0.0.0.0_80")]),
    ("tcp.db.downstream_cx_total", "envoy_tcp_downstream_cx_total", [("envoy_tcp_prefix", "db")]),
    ("http_local_rate_limit.lrl.rate_limited", "envoy_http_local_rate_limit_rate_limited",
     [("envoy_local_http_ratelimit_prefix", "lrl")]),
    ("server.live", "envoy_server_live", []),
    ("listener.127.0.0.1_8443.ssl.ciphers.TLS_AES_128_GCM_SHA256", "envoy_listener_ssl_ciphers",
     [("envoy_ssl_cipher", "TLS_AES_128_GCM_SHA256"), ("envoy_listener_address", "127.0.0.1_8443")]),
    ("listener.127.0.0.1_8443.ssl.versions.TLSv1.3", "envoy_listener_ssl_versions",
     [("envoy_ssl_version", "TLSv1.3"), ("envoy_listener_address", "127.0.0.1_8443")]),
    ("cluster.up.ssl.curves.X25519", "envoy_cluster_ssl_curves",
     [("envoy_ssl_curve", "X25519"), ("envoy_cluster_name", "up")]),
    ("cluster.up.ssl.ciphers.ECDHE-ECDSA-AES128-GCM-SHA256", "envoy_cluster_ssl_ciphers",
     [("envoy_ssl_cipher_suite", "ECDHE-ECDSA-AES128-GCM-SHA256"), ("envoy_cluster_name", "up")]),
    ("listener.127.0.0.1_8443.ssl.handshake", "envoy_listener_ssl_handshake",
     [("envoy_listener_address", "127.0.0.1_8443")]),
    ("cluster_manager.active_clusters", "envoy_cluster_manager_active_clusters", []),
    ("cluster.a-b.upstream_cx_total", "envoy_cluster_upstream_cx_total", [("envoy_cluster_name", "a-b")]),
    # HTTP/2 codec stats: the server-wide block has no tag, a cluster's its name (as Envoy 1.40
    # prints them: test_http2_names_are_envoys below)
    ("http2.rx_reset", "envoy_http2_rx_reset", []),
    ("http2.streams_active", "envoy_http2_streams_active", []),
    ("cluster.up.http2.rx_reset", "envoy_cluster_http2_rx_reset", [("envoy_cluster_name", "up")]),
    ("cluster.up.x.http2.pending_send_bytes", "envoy_cluster_x_http2_pending_send_bytes",
     [("envoy_cluster_name", "up")]),
    ("http.ing.downstream_cx_http2_total", "envoy_http_downstream_cx_http2_total",
     [("envoy_http_conn_manager_prefix", "ing")]),
    ("cluster.up.upstream_cx_http2_total", "envoy_cluster_upstream_cx_http2_total", [("envoy_cluster_name", "up")]),
])
def test_tag_extraction(name, metric, labels):
    assert tag(name) == (metric, tuple(labels))


@pytest.mark.skipif(find_envoy() is None or shutil.which("curl") is None, reason="needs envoy and curl")
def test_http2_names_are_envoys(tmp_path):
    """Every HTTP/2 stat the real Envoy 1.40 has after an HTTP/2 request through an HTTP/2
    cluster (http2.*, cluster.<name>.http2.*, *_http2_*) gets from tag() the metric name and
    labels Envoy's own /stats/prometheus gives it."""
    import json
    import subprocess
    cluster = {"name": "up.x", "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}}
    text = envoy_yaml([http_listener("[{match: {prefix: /}, route: {cluster: up.x}}]", stat_prefix="ing",
                                     codec_type="HTTP2")],
                      [static_cluster(cluster.pop("name"), [9], **cluster)])
    proc, admin, (host, port) = start_envoy(text, tmp_path)
    try:
        # (the upstream port is closed: the answer is a 503, the stats are made all the same)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", f"http://{host}:{port}/"],
                       timeout=20, check=True)
        names = [s["name"] for s in json.loads(admin_get(admin, "/stats?format=json"))["stats"] if "name" in s]
        page = admin_get(admin, "/stats/prometheus")
    finally:
        proc.terminate()
        proc.wait()
    series = set()
    for line in page.splitlines():
        if line and not line.startswith("#"):
            series.add(line.rsplit(" ", 1)[0])
    h2 = [n for n in names if "http2" in n and not n.startswith("http.admin.")]
    assert any(n.startswith("http2.") for n in h2) and any(n.startswith("cluster.up.x.http2.") for n in h2)
    for name in h2:
        metric, labels = tag(name)
        assert metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" in series, name


def hist(values):
    buckets = [0] * _core.HISTOGRAM_BUCKETS
    for v in values:
        buckets[_core.histogram_bucket_of(v)] += 1
    return Histogram(buckets, sum(values))


def test_buckets_exact_where_the_core_buckets_are():
    # values up to 15 have a bucket each; 0 is the only value <= 0.5
    h = hist([0, 1, 1, 4, 5, 6, 10, 11])
    got = dict(zip(BUCKET_BOUNDS, cumulative_buckets(h)))
    assert got[0.5] == 1 and got[1] == 3 and got[5] == 5 and got[10] == 7 and got[25] == 8
    assert got[3600000] == 8


def test_buckets_cumulative_and_bounded_for_any_values():
    import random
    rng = random.Random(7)
    values = [int(rng.expovariate(1 / 400)) for _ in range(5000)] + [10 ** 7]
    h = hist(values)
    counts = cumulative_buckets(h)
    assert counts == sorted(counts), "cumulative counts never decrease"
    for bound, n in zip(BUCKET_BOUNDS, counts):
        exact = sum(v <= bound for v in values)
        # a straddled core bucket is at most 12.5% wide: the error is what it holds
        low, high = next(_core.histogram_bucket_bounds(i) for i in range(_core.HISTOGRAM_BUCKETS)
                         if _core.histogram_bucket_bounds(i)[0] <= bound < (_core.histogram_bucket_bounds(i)[1] or 1 << 62))
        inside = sum(low <= v < high for v in values)
        assert abs(n - exact) <= inside, (bound, n, exact)
    assert counts[-1] == len(values) - 1     # 10^7 ms is past the last bound


def test_render_histogram_family_and_escaping():
    page = render({'cluster.c.upstream_rq_total': 3, 'http.a"b\\c.downstream_rq_total': 1},
                  set(), {"cluster.c.upstream_rq_time": hist([3, 7, 40])})
    lines = page.splitlines()
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="a\\"b\\\\c"} 1' in lines
    i = lines.index("# TYPE envoy_cluster_upstream_rq_time histogram")
    assert lines[i + 1] == 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="0.5"} 0'
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="5"} 1' in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="50"} 3' in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="+Inf"} 3' in lines
    assert lines[-2:] == ['envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="c"} 50',
                          'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="c"} 3']
