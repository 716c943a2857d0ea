"""xds/proto_dict.py reads the endpoints of received clusters and load assignments without
json_format; what it gives must be exactly MessageToDict's output, whatever the shape."""
from __future__ import annotations

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2", reason="xds-protos (the xds extra) is not installed")
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from google.protobuf import any_pb2, json_format  # noqa: E402

from fastproxy.xds.proto_dict import ASSIGNMENT, CLUSTER, resource_dict  # noqa: E402

CLASSES = {CLUSTER: cluster_pb2.Cluster, ASSIGNMENT: endpoint_pb2.ClusterLoadAssignment}


def ep(port, **more):
    sock = {"address": "127.0.0.1", "port_value": port}
    sock.update(more.pop("sock", {}))
    item = {"endpoint": {"address": {"socket_address": sock}, **more.pop("endpoint", {})}}
    item.update(more)
    return item


SHAPES = {
    "plain": [{"lb_endpoints": [ep(1), ep(2)]}],
    "weights": [{"lb_endpoints": [ep(1, load_balancing_weight=3), ep(2)]}],
    "hostname": [{"lb_endpoints": [ep(1, endpoint={"hostname": "a.example"})]}],
    "locality": [{"locality": {"zone": "z"}, "lb_endpoints": [ep(1)]}],
    "priority": [{"lb_endpoints": [ep(1)]}, {"priority": 1, "lb_endpoints": [ep(2)]}],
    "empty group": [{}, {"lb_endpoints": [ep(1)]}],
    "udp": [{"lb_endpoints": [ep(1, sock={"protocol": "UDP"})]}],
    "port 0": [{"lb_endpoints": [ep(0)]}],
    "health": [{"lb_endpoints": [ep(1, health_status="DRAINING")]}],
    "none": [],
    "big weight, high port": [{"lb_endpoints": [ep(65535, load_balancing_weight=300), ep(128)]}],
    "weight 0": [{"lb_endpoints": [ep(1, load_balancing_weight=0)]}],
    "ipv6": [{"lb_endpoints": [ep(80, sock={"address": "2001:db8::1"})]}],
    "long name": [{"lb_endpoints": [ep(80, sock={"address": "h" * 200 + ".example"})]}],
    "ipv4 compat": [{"lb_endpoints": [ep(80, sock={"ipv4_compat": True})]}],
    "endpoint name": [{"lb_endpoints": [{"endpoint_name": "named"}]}],
    "metadata": [{"lb_endpoints": [ep(1, metadata={"filter_metadata": {"a": {"b": 1}}})]}],
    "non-ascii": [{"lb_endpoints": [ep(1, sock={"address": "h\u00e9.example"})]}],
}


def packed(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_cluster_reads_as_message_to_dict(shape):
    data = {"name": "c", "connect_timeout": "2s", "load_assignment": {"cluster_name": "c", "endpoints": SHAPES[shape]}}
    a = packed(json_format.ParseDict(data, cluster_pb2.Cluster()))
    assert resource_dict(a, CLASSES) == json_format.MessageToDict(a, preserving_proto_field_name=True)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_assignment_reads_as_message_to_dict(shape):
    data = {"cluster_name": "c", "endpoints": SHAPES[shape], "policy": {"overprovisioning_factor": 140}}
    a = packed(json_format.ParseDict(data, endpoint_pb2.ClusterLoadAssignment()))
    assert resource_dict(a, CLASSES) == json_format.MessageToDict(a, preserving_proto_field_name=True)


def test_other_types_and_a_cluster_without_assignment():
    a = packed(cluster_pb2.Cluster(name="eds", type=cluster_pb2.Cluster.EDS))
    assert resource_dict(a, CLASSES) == json_format.MessageToDict(a, preserving_proto_field_name=True)
    assert resource_dict(a, {}) == json_format.MessageToDict(a, preserving_proto_field_name=True)
