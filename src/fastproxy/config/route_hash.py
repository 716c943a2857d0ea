"""Route hash policies in Envoy's v3 YAML: RouteAction.hash_policy (model:
fastproxy.http.hash_policy). Owner: issue 16's HASH work."""
from __future__ import annotations

from ..errors import ConfigError
from ..http import hash_policy as hp
from ..http import model as mh
from .http_common import _REGEX_FIELDS, _bool, _oneof, _regex
from .proto import Message
from .regex import rewrite_to_posix

ROUTE_HASH_FIELDS = ("hash_policy",)

_POLICY_FIELDS = hp.HASH_POLICY_KINDS + ("terminal",)


def route_hash_policy(a: Message) -> dict:
    """mh.RouteAction's keyword arguments for the hash policy of route action ``a``."""
    policies = [_hash_policy(Message(item, path, _POLICY_FIELDS)) for item, path in a.repeated("hash_policy")]
    if not policies:
        return {}
    hp.validate_hash_policies(policies, a.at("hash_policy"))
    return {"hash_policy": policies}


def _hash_policy(m: Message) -> hp.HashPolicy:
    kind = _oneof(m, hp.HASH_POLICY_KINDS, required=True)
    out = hp.HashPolicy(terminal=_bool(m, "terminal"))
    if kind == "header":
        h = m.message("header", ("header_name", "regex_rewrite"))
        rewrite = None
        rr = h.message("regex_rewrite", ("pattern", "substitution"))
        if rr is not None:
            pattern = _regex(rr.message("pattern", _REGEX_FIELDS, required=True))
            substitution = rr.string("substitution", default="")
            rewrite_to_posix(pattern, substitution, rr.at("pattern.regex"), rr.at("substitution"))
            rewrite = mh.RegexRewrite(pattern, substitution)
        out.header = hp.HeaderHash(h.string("header_name", default=""), rewrite)
    elif kind == "cookie":
        c = m.message("cookie", ("name", "ttl", "path", "attributes"))
        attributes = []
        for item, ap in c.repeated("attributes"):
            am = Message(item, ap, ("name", "value"))
            attributes.append(hp.CookieAttribute(am.string("name", default=""), am.string("value", default="")))
        ttl = c.duration("ttl")
        if ttl is not None and ttl < 0:
            raise ConfigError(c.at("ttl"), "must not be negative")
        out.cookie = hp.CookieHash(c.string("name", default=""), ttl, c.string("path", default=""), attributes)
    elif kind == "connection_properties":
        cp = m.message("connection_properties", ("source_ip",))
        out.connection_properties = hp.ConnectionPropertiesHash(_bool(cp, "source_ip"))
    elif kind == "query_parameter":
        q = m.message("query_parameter", ("name",))
        out.query_parameter = hp.QueryParameterHash(q.string("name", default=""))
    else:
        f = m.message("filter_state", ("key",))
        out.filter_state = hp.FilterStateHash(f.string("key", default=""))
    return out
