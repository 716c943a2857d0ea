"""Received resources (google.protobuf.Any) as the plain data the loader reads: what
json_format.MessageToDict gives (proto field names), faster where a push is big.

MessageToDict walks every field in Python; of a CDS push of 1,000 clusters with 10,000
endpoints, or an EDS push of as many, the endpoints are nearly all of it and nearly all of
one shape (an IP address and a port, perhaps a weight). Those are read here directly from
the message; an endpoint with anything else in it leaves its whole assignment to
MessageToDict, so what the loader sees never differs from MessageToDict's output.
"""
from __future__ import annotations

from typing import Any, Optional

CLUSTER = "envoy.config.cluster.v3.Cluster"
ASSIGNMENT = "envoy.config.endpoint.v3.ClusterLoadAssignment"



def _varint_size(n: int) -> int:
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4 if n < 0x10000000 else 5


def _plain_size(address: str, port: int, weight: Optional[int]) -> int:
    """The encoded size of LbEndpoint{endpoint: {address: {socket_address: {address: (2),
    port_value: (3)}}}, load_balancing_weight: (4)}: every field number below 16, so every
    tag one byte; a length-delimited field is tag, length varint, payload."""
    sock = 1 + _varint_size(len(address)) + len(address) + 1 + _varint_size(port)
    address_msg = 1 + _varint_size(sock) + sock
    endpoint = 1 + _varint_size(address_msg) + address_msg
    size = 1 + _varint_size(endpoint) + endpoint
    if weight is not None:
        wrapper = 1 + _varint_size(weight) if weight else 0
        size += 1 + _varint_size(wrapper) + wrapper
    return size


def _names(msg) -> set:
    return {f.name for f, _ in msg.ListFields()}


def plain_endpoints(assignment) -> Optional[list]:
    """assignment.endpoints as MessageToDict would give them, or None when one of them has
    more than an address, a port and a weight (then MessageToDict reads it all)."""
    groups = []
    for group in assignment.endpoints:
        if _names(group) - {"lb_endpoints"}:
            return None                 # locality, priority, weights: the general reading
        out = []
        for lb in group.lb_endpoints:
            sock = lb.endpoint.address.socket_address
            address, port = sock.address, sock.port_value
            weighted = lb.HasField("load_balancing_weight")
            weight = lb.load_balancing_weight.value if weighted else None
            # One size check instead of a look at each message's fields: the wire size of
            # an LbEndpoint holding this address, port and weight and nothing else. If it
            # has anything more (a hostname, health, metadata, a protocol), its size differs.
            if not address or not port or not address.isascii() or lb.ByteSize() != _plain_size(address, port, weight):
                return None
            item = {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}
            if weighted:
                item["load_balancing_weight"] = weight
            out.append(item)
        groups.append({"lb_endpoints": out} if out else {})
    return groups


def resource_dict(any_msg: Any, message_classes: dict) -> dict:
    """One resource (an Any) as a dict with its "@type"; ``message_classes``: full type
    name -> generated class, for the types read here directly."""
    from google.protobuf import json_format
    name = any_msg.TypeName()
    cls = message_classes.get(name) if name in (CLUSTER, ASSIGNMENT) else None
    if cls is not None:
        msg = cls()
        if any_msg.Unpack(msg):
            if name == CLUSTER:
                if msg.HasField("load_assignment"):
                    endpoints = plain_endpoints(msg.load_assignment)
                    if endpoints is not None:
                        msg.load_assignment.ClearField("endpoints")
                        out = json_format.MessageToDict(msg, preserving_proto_field_name=True)
                        if endpoints:
                            out["load_assignment"]["endpoints"] = endpoints
                        return {"@type": any_msg.type_url, **out}
            else:
                endpoints = plain_endpoints(msg)
                if endpoints is not None:
                    msg.ClearField("endpoints")
                    out = json_format.MessageToDict(msg, preserving_proto_field_name=True)
                    if endpoints:
                        out["endpoints"] = endpoints
                    return {"@type": any_msg.type_url, **out}
    return json_format.MessageToDict(any_msg, preserving_proto_field_name=True)
