"""A configuration that a control plane pushes change after change of: the mix the tests
under load and benchmarks/xds_bench.py --churn share.

Push number ``step`` changes one resource type, in turn EDS, RDS, CDS, LDS:
  * EDS: cluster "c0" (type EDS) has the upstream alone, or the upstream and a second one;
  * RDS: route table "r" (every request to c0) adds an x-push response header that counts;
  * CDS: cluster "c1" (static, not routed to) changes its connect timeout;
  * LDS: listener "web" (its routes from RDS "r") changes its stat prefix, which makes it a
    new listener version: its old connections drain.
"""
from __future__ import annotations

from conftest import static_cluster
from test_ads_reference_envoy import web

import xds_control_plane as xcp

ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}
KINDS = ("eds", "rds", "cds", "lds")


def counts(step: int) -> dict:
    """How many pushes of each kind the first ``step`` pushes made."""
    return {k: sum(1 for i in range(step) if KINDS[i % len(KINDS)] == k) for k in KINDS}


def resources(step: int, up_port: int, alt_port: int) -> dict:
    """{type URL: [resource]} in force after push number ``step`` (0: the initial set)."""
    n = counts(step)
    assignment = static_cluster("c0", [up_port] if n["eds"] % 2 == 0 else [up_port, alt_port])["load_assignment"]
    c0 = {"name": "c0", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": ADS_SOURCE}}
    c1 = static_cluster("c1", [up_port], connect_timeout=f"{1 + n['cds'] % 2}s")
    route = {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c0"}}]}],
             "response_headers_to_add": [{"header": {"key": "x-push", "value": str(n["rds"])}}]}
    listener = web("c0", stat_prefix=f"web{n['lds'] % 2}")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "r", "config_source": ADS_SOURCE}
    return {xcp.CLUSTER: [c0, c1], xcp.ENDPOINT: [assignment], xcp.ROUTE: [route], xcp.LISTENER: [listener]}


def changed(step: int, up_port: int, alt_port: int) -> dict:
    """The types push number ``step`` changes, with their new resources."""
    before, after = resources(step - 1, up_port, alt_port), resources(step, up_port, alt_port)
    return {t: r for t, r in after.items() if r != before[t]}


def bootstrap(cp_port: int) -> str:
    """The ADS bootstrap (CDS and LDS over ADS; EDS and RDS follow from the resources)."""
    from test_ads_reference_envoy import ads_bootstrap
    return ads_bootstrap(cp_port)
