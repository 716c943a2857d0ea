"""The compiled router (core/router.pxi): virtual host selection, route matching, actions,
rewrites, redirects and header mutations, checked through RouteTableHandle.select(), which
calls the same nogil C functions a worker calls."""
from __future__ import annotations

import pathlib
import random
import sys

import pytest

from conftest import SRC  # noqa: E402
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from fastproxy._core import compile_route_table  # noqa: E402
from fastproxy._testing import route_select_bench  # noqa: E402
from fastproxy.errors import ConfigError  # noqa: E402
from fastproxy.model_http import (  # noqa: E402
    DirectResponse,
    HeaderMatcher,
    HeaderMutations,
    HeaderValueOption,
    Int64Range,
    QueryParameterMatcher,
    RedirectAction,
    RegexRewrite,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    StringMatch,
    VirtualHost,
    WeightedCluster,
)

CLUSTERS = {"c0": 0, "c1": 1, "c2": 2, "c3": 3}


def table(*vhosts, headers=None, ignore_port=False, **kw):
    rc = RouteConfiguration(name="rc", virtual_hosts=list(vhosts), ignore_port_in_host_matching=ignore_port)
    if headers is not None:
        rc.headers = headers
    return compile_route_table(rc, kw.pop("clusters", CLUSTERS), **kw)


def to(cluster="c0", name="", **match):
    """A route to a cluster; the keyword arguments are the RouteMatch."""
    return Route(RouteMatch(**match), RouteAction(cluster=cluster), name=name)


def vh(name, domains, *routes, headers=None):
    v = VirtualHost(name, list(domains), routes=list(routes))
    if headers is not None:
        v.headers = headers
    return v


def sel(t, path="/", host="example.com", headers=(), method="GET", **kw):
    return t.select(method, path, host, list(headers), **kw)


def route_name(t, path="/", host="example.com", headers=(), **kw):
    r = sel(t, path, host, headers, **kw)
    return None if r is None else r["route"]


def vhost_of(t, host):
    return t.find_virtual_host(host)


# ------------------------------------------------------------------ virtual hosts


def domains_table():
    catch = dict(prefix="/")
    return table(
        vh("exact", ["api.foo.com", "WWW.Foo.COM"], to(**catch)),
        vh("suffix", ["*.foo.com"], to(**catch)),
        vh("suffix-long", ["*-bar.foo.com"], to(**catch)),
        vh("prefix", ["api.*"], to(**catch)),
        vh("prefix-long", ["api.foo.*"], to(**catch)),
        vh("default", ["*"], to(**catch)),
    )


def test_exact_domain_wins_and_is_case_insensitive():
    t = domains_table()
    assert vhost_of(t, "api.foo.com") == "exact"
    assert vhost_of(t, "API.FOO.COM") == "exact"
    assert vhost_of(t, "www.foo.com") == "exact"


def test_longest_suffix_wildcard_wins():
    t = domains_table()
    assert vhost_of(t, "x.foo.com") == "suffix"
    assert vhost_of(t, "x-bar.foo.com") == "suffix-long"
    assert vhost_of(t, "X-BAR.Foo.Com") == "suffix-long"
    # the '*' must cover at least one character
    assert vhost_of(t, "-bar.foo.com") == "suffix"
    assert vhost_of(t, ".foo.com") == "default"
    assert vhost_of(t, "foo.com") == "default"


def test_suffix_wildcard_beats_prefix_wildcard():
    t = domains_table()
    # "api.other.foo.com" matches "*.foo.com" and "api.*": suffix first
    assert vhost_of(t, "api.other.foo.com") == "suffix"


def test_longest_prefix_wildcard_then_default():
    t = domains_table()
    assert vhost_of(t, "api.example.org") == "prefix"
    assert vhost_of(t, "api.foo.org") == "prefix-long"
    assert vhost_of(t, "api.") == "default"         # '*' must cover a character
    assert vhost_of(t, "nothing.org") == "default"


def test_precedence_exact_suffix_prefix_default():
    host = "api.foo.com"
    full = [vh("e", ["api.foo.com"], to(prefix="/")), vh("s", ["*.foo.com"], to(prefix="/")),
            vh("p", ["api.*"], to(prefix="/")), vh("d", ["*"], to(prefix="/"))]
    for expect in ("e", "s", "p", "d"):
        t = table(*full)
        assert vhost_of(t, host) == expect
        assert sel(t, host=host)["vhost"] == expect
        full = full[1:]


def test_no_default_vhost_is_404():
    t = table(vh("a", ["a.com"], to(prefix="/")))
    assert sel(t, host="b.com") is None
    assert sel(t, host="a.com")["vhost"] == "a"


def test_the_port_takes_part_in_matching():
    # Envoy's default (ignore_port_in_host_matching false): the host is matched as sent.
    t = table(vh("a", ["a.com"], to(prefix="/")), vh("w", ["*.b.com"], to(prefix="/")),
              vh("p", ["c.*"], to(prefix="/")), vh("d", ["*"], to(prefix="/")))
    assert vhost_of(t, "a.com:8080") == "d"
    assert vhost_of(t, "x.b.com:443") == "d"
    assert vhost_of(t, "c.org:80") == "p"     # the prefix wildcard covers the port
    assert vhost_of(t, "a.com") == "a"


def test_ignore_port_in_host_matching_strips_the_port():
    t = table(vh("a", ["a.com"], to(prefix="/")), vh("w", ["*.b.com"], to(prefix="/")),
              vh("p", ["c.*"], to(prefix="/")), vh("port", ["e.com:8080"], to(prefix="/")),
              ignore_port=True)
    assert vhost_of(t, "a.com:8080") == "a"
    assert vhost_of(t, "x.b.com:443") == "w"
    assert vhost_of(t, "c.org:80") == "p"
    assert vhost_of(t, "a.com:") == "a"
    assert vhost_of(t, "e.com:8080") is None  # a domain naming a port never matches then


def test_domains_with_a_port_match_the_host_with_its_port():
    t = table(vh("plain", ["a.com", "*.b.com"], to(prefix="/")),
              vh("port", ["a.com:8080", "*.b.com:8443"], to(prefix="/")))
    assert vhost_of(t, "a.com:8080") == "port"
    assert vhost_of(t, "a.com:9090") is None
    assert vhost_of(t, "a.com") == "plain"
    assert vhost_of(t, "x.b.com:8443") == "port"
    assert vhost_of(t, "x.b.com:1") is None


def test_ipv6_hosts():
    t = table(vh("v6", ["[::1]", "[::1]:8080"], to(prefix="/")), vh("v6port", ["[fe80::1]:8080"], to(prefix="/")),
              vh("d", ["*"], to(prefix="/")))
    assert vhost_of(t, "[::1]") == "v6"
    assert vhost_of(t, "[::1]:8080") == "v6"
    assert vhost_of(t, "[::1]:9") == "d"
    assert vhost_of(t, "[FE80::1]:8080") == "v6port"
    assert vhost_of(t, "[fe80::1]:9") == "d"
    assert vhost_of(t, "::1") == "d"


def test_missing_host():
    t = table(vh("a", ["a.com"], to(prefix="/")), vh("d", ["*"], to(prefix="/")))
    assert t.find_virtual_host(None) is None
    assert sel(t, host=None) is None
    only = table(vh("d", ["*"], to(prefix="/")))
    assert only.find_virtual_host(None) == "d"
    assert sel(only, host=None)["vhost"] == "d"
    assert vhost_of(t, "") == "d"             # an empty Host is a host: the default


def test_domain_errors():
    with pytest.raises(ConfigError, match=r"virtual_hosts\[1\]\.domains\[0\].*unique"):
        table(vh("a", ["A.com"], to(prefix="/")), vh("b", ["a.COM"], to(prefix="/")))
    with pytest.raises(ConfigError, match="unique"):
        table(vh("a", ["*"], to(prefix="/")), vh("b", ["*"], to(prefix="/")))
    with pytest.raises(ConfigError, match=r"domains"):
        table(vh("a", [], to(prefix="/")))


def test_many_vhosts_hash_lookup():
    vhosts = [vh(f"v{i}", [f"h{i}.example.com", f"*.w{i}.example.com", f"p{i}.*"], to(prefix="/"))
              for i in range(300)]
    t = table(*vhosts)
    for i in range(300):
        assert vhost_of(t, f"H{i}.example.com") == f"v{i}"
        assert vhost_of(t, f"x.w{i}.example.com") == f"v{i}"
        assert vhost_of(t, f"p{i}.net") == f"v{i}"
    assert vhost_of(t, "h300.example.com") is None


# ------------------------------------------------------------------ path matching


def test_prefix_case_sensitive_and_not():
    t = table(vh("v", ["*"], to(name="cs", prefix="/Api"),
                 to(name="ci", prefix="/LOWER", case_sensitive=False)))
    assert route_name(t, "/Api/x") == "cs"
    assert route_name(t, "/api/x") is None
    assert route_name(t, "/lower/x") == "ci"
    assert route_name(t, "/LoWeR") == "ci"
    assert route_name(t, "/lowe") is None


def test_prefix_ignores_query_and_a_prefix_with_query_never_matches():
    t = table(vh("v", ["*"], to(name="q", prefix="/a?b"), to(name="a", prefix="/a")))
    assert route_name(t, "/a?b=1") == "a"
    assert route_name(t, "/abc?x") == "a"
    t2 = table(vh("v", ["*"], to(name="long", prefix="/abc")))
    assert route_name(t2, "/ab?c") is None


def test_case_folding_is_ascii_only():
    t = table(vh("v", ["ÉX.com"], to(name="ci", prefix="/Ä", case_sensitive=False),
                 to(name="h", prefix="/", headers=[hm("x", "exact", "É", ignore_case=True)])))
    assert route_name(t, "/Äb", "éx.com") is None       # the vhost's É is not folded
    assert route_name(t, "/Äb", "Éx.COM") == "ci"
    assert route_name(t, "/äb", "Éx.com") is None        # neither is the route's Ä
    assert route_name(t, "/z", "Éx.com", headers=[("x", "É")]) == "h"
    assert route_name(t, "/z", "Éx.com", headers=[("x", "é")]) is None


def test_case_folding_touches_letters_only():
    # '@' and '[' sit right before 'A' and after 'Z'; '`' and '{' are them + 0x20
    t = table(vh("v", ["a@[z.example"], to(prefix="/")),
              vh("w", ["*.long-domain-name.example"], to(prefix="/")))
    assert vhost_of(t, "A@[Z.EXAMPLE") == "v"
    assert vhost_of(t, "a`{z.example") is None
    assert vhost_of(t, "X.LONG-Domain-NAME.example") == "w"
    assert vhost_of(t, "x.long-domain-name.examplE") == "w"
    assert vhost_of(t, "x.long-domain-namE.examp1e") is None


def test_exact_path():
    t = table(vh("v", ["*"], to(name="p", path="/exact"),
                 to(name="pi", path="/Other", case_sensitive=False)))
    assert route_name(t, "/exact") == "p"
    assert route_name(t, "/exact?x=1") == "p"
    assert route_name(t, "/exact#frag") == "p"
    assert route_name(t, "/exact/") is None
    assert route_name(t, "/exac") is None
    assert route_name(t, "/EXACT") is None
    assert route_name(t, "/other") == "pi"
    assert route_name(t, "/OTHER?q") == "pi"


def test_safe_regex_is_a_full_match_on_the_path_without_query():
    t = table(vh("v", ["*"], to(name="re", safe_regex="/users/[0-9]+"),
                 to(name="alt", safe_regex="/a|/b")))
    assert route_name(t, "/users/42") == "re"
    assert route_name(t, "/users/42?x=1") == "re"
    assert route_name(t, "/users/42/x") is None
    assert route_name(t, "/v1/users/42") is None
    assert route_name(t, "/a") == "alt"     # alternation is anchored as a whole
    assert route_name(t, "/b") == "alt"
    assert route_name(t, "/ab") is None
    # case_sensitive has no effect on safe_regex
    t2 = table(vh("v", ["*"], to(name="re", safe_regex="/x", case_sensitive=False)))
    assert route_name(t2, "/X") is None


def test_regex_literal_prefix_prefilter_keeps_semantics():
    t = table(vh("v", ["*"], to(name="opt", safe_regex="/ab?c"),
                 to(name="esc", safe_regex="^/file\\.json"),
                 to(name="star", safe_regex="/x*y"),
                 to(name="alt", safe_regex="/m|/n/[0-9]"),
                 to(name="rep", safe_regex="/q{2}")))
    assert route_name(t, "/ac") == "opt"
    assert route_name(t, "/abc") == "opt"
    assert route_name(t, "/file.json") == "esc"
    assert route_name(t, "/fileXjson") is None
    assert route_name(t, "/y") == "star"
    assert route_name(t, "/xxy") == "star"
    assert route_name(t, "/n/5") == "alt"
    assert route_name(t, "/m") == "alt"
    assert route_name(t, "/qq") == "rep"
    assert route_name(t, "/q") is None


def test_path_separated_prefix():
    t = table(vh("v", ["*"], to(name="s", path_separated_prefix="/api"),
                 to(name="ci", path_separated_prefix="/CI", case_sensitive=False)))
    for p in ("/api", "/api/", "/api/x", "/api?x=1", "/api#f"):
        assert route_name(t, p) == "s", p
    for p in ("/apix", "/ap", "/Api"):
        assert route_name(t, p) is None, p
    assert route_name(t, "/ci/x") == "ci"
    assert route_name(t, "/cI") == "ci"
    with pytest.raises(ConfigError, match="path_separated_prefix"):
        table(vh("v", ["*"], to(path_separated_prefix="/api/")))
    with pytest.raises(ConfigError, match="path_separated_prefix"):
        table(vh("v", ["*"], to(path_separated_prefix="/a?b")))


def test_first_matching_route_wins_and_404():
    t = table(vh("v", ["*"], to(name="one", prefix="/a"), to(name="two", prefix="/a/b"),
                 to(name="three", path="/c")))
    assert route_name(t, "/a/b") == "one"
    assert route_name(t, "/c") == "three"
    assert sel(t, "/d") is None
    assert sel(t, "") is None


def test_match_needs_exactly_one_kind():
    with pytest.raises(ConfigError, match=r"routes\[0\]\.match"):
        table(vh("v", ["*"], to(prefix="/", path="/x")))
    with pytest.raises(ConfigError, match=r"routes\[0\]\.match"):
        table(vh("v", ["*"], to()))


def test_invalid_regex_is_a_config_error():
    with pytest.raises(ConfigError, match=r"match\.safe_regex"):
        table(vh("v", ["*"], to(safe_regex="(unclosed")))


# ------------------------------------------------------------------ header matchers


def hroute(*matchers, name="h"):
    return table(vh("v", ["*"], to(name=name, prefix="/", headers=list(matchers))))


def hm(name, kind=None, value=None, ignore_case=False, **kw):
    sm = StringMatch(kind, value, ignore_case) if kind else None
    return HeaderMatcher(name, string_match=sm, **kw)


@pytest.mark.parametrize("kind,value,hit,miss", [
    ("exact", "abc", "abc", "abcd"),
    ("prefix", "ab", "abzz", "zab"),
    ("suffix", "yz", "xxyz", "yzx"),
    ("contains", "mid", "amidb", "mi-d"),
    ("safe_regex", "v[0-9]+", "v12", "v12x"),
])
def test_string_matchers(kind, value, hit, miss):
    t = hroute(hm("x-h", kind, value))
    assert route_name(t, headers=[("x-h", hit)]) == "h"
    assert route_name(t, headers=[("x-h", miss)]) is None
    assert route_name(t, headers=[("X-H", hit)]) == "h"          # names: any case
    assert route_name(t) is None                                  # missing header


@pytest.mark.parametrize("kind,value,hit", [
    ("exact", "AbC", "aBc"), ("prefix", "AB", "abzz"), ("suffix", "Yz", "xxYZ"),
    ("contains", "MiD", "amIdb"),
])
def test_ignore_case(kind, value, hit):
    assert route_name(hroute(hm("x-h", kind, value, ignore_case=True)), headers=[("x-h", hit)])
    assert not route_name(hroute(hm("x-h", kind, value)), headers=[("x-h", hit)])


def test_empty_string_matchers():
    assert route_name(hroute(hm("x", "exact", "")), headers=[("x", "")]) == "h"
    assert route_name(hroute(hm("x", "exact", "")), headers=[("x", "a")]) is None
    assert route_name(hroute(hm("x", "contains", "")), headers=[("x", "a")]) == "h"


def test_presence():
    t = hroute(HeaderMatcher("x-p"))                                  # bare name: present
    assert route_name(t, headers=[("x-p", "")]) == "h"
    assert route_name(t) is None
    t = hroute(HeaderMatcher("x-p", present_match=True))
    assert route_name(t, headers=[("x-p", "1")]) == "h"
    assert route_name(t) is None
    t = hroute(HeaderMatcher("x-p", present_match=False))             # must be absent
    assert route_name(t) == "h"
    assert route_name(t, headers=[("x-p", "1")]) is None
    t = hroute(HeaderMatcher("x-p", present_match=True, invert_match=True))
    assert route_name(t) == "h"
    assert route_name(t, headers=[("x-p", "1")]) is None
    t = hroute(HeaderMatcher("x-p", present_match=False, invert_match=True))
    assert route_name(t) is None
    assert route_name(t, headers=[("x-p", "1")]) == "h"


def test_invert_match():
    t = hroute(hm("x", "exact", "bad", invert_match=True))
    assert route_name(t, headers=[("x", "good")]) == "h"
    assert route_name(t, headers=[("x", "bad")]) is None
    assert route_name(t) is None          # a missing header fails, inverted or not


def test_treat_missing_header_as_empty():
    t = hroute(hm("x", "exact", "", treat_missing_header_as_empty=True))
    assert route_name(t) == "h"
    t = hroute(hm("x", "exact", "v", treat_missing_header_as_empty=True))
    assert route_name(t) is None
    t = hroute(hm("x", "exact", "v", invert_match=True, treat_missing_header_as_empty=True))
    assert route_name(t) == "h"
    assert route_name(t, headers=[("x", "v")]) is None
    t = hroute(hm("x", "safe_regex", ".*", treat_missing_header_as_empty=True))
    assert route_name(t) == "h"


def test_a_repeated_header_matches_when_one_of_its_values_does():
    # Envoy 1.40 matches each field line on its own (checked in test_envoy_conformance).
    t = hroute(hm("x", "exact", "b"))
    assert route_name(t, headers=[("x", "a"), ("y", "z"), ("X", "b"), ("x", "c")]) == "h"
    assert route_name(t, headers=[("x", "a"), ("x", "c")]) is None
    t = hroute(hm("x", "exact", "a,b"))
    assert route_name(t, headers=[("x", "a"), ("x", "b")]) is None
    assert route_name(t, headers=[("x", "a,b")]) == "h"
    t = hroute(hm("x", "exact", "no", invert_match=True))
    assert route_name(t, headers=[("x", "no"), ("x", "yes")]) is None
    assert route_name(t, headers=[("x", "yes"), ("x", "maybe")]) == "h"


def test_range_match():
    t = hroute(HeaderMatcher("x", range_match=Int64Range(-10, 20)))
    for value, hit in (("-10", True), ("19", True), ("+3", True), ("20", False), ("-11", False),
                       ("1x", False), ("", False), ("- 1", False), ("99999999999999999999", False)):
        assert (route_name(t, headers=[("x", value)]) == "h") is hit, value
    assert route_name(t) is None
    assert route_name(t, headers=[("x", "50"), ("x", "5")]) == "h"
    t = hroute(HeaderMatcher("x", range_match=Int64Range(-(1 << 63), (1 << 63) - 1)))
    assert route_name(t, headers=[("x", str(-(1 << 63)))]) == "h"
    assert route_name(t, headers=[("x", str(-(1 << 63) - 1))]) is None


def test_pseudo_headers():
    t = hroute(hm(":method", "exact", "POST"))
    assert route_name(t, method="POST") == "h"
    assert route_name(t, method="GET") is None
    t = hroute(hm(":path", "suffix", "?x=1"))             # :path includes the query
    assert route_name(t, "/a?x=1") == "h"
    t = hroute(hm(":authority", "exact", "a.com:8080"))   # as received, port included
    assert route_name(t, host="a.com:8080") == "h"
    assert route_name(t, host="a.com") is None
    t = hroute(hm("host", "prefix", "a.com"))
    assert route_name(t, host="a.com:1") == "h"
    t = hroute(hm(":scheme", "exact", "https"))
    assert route_name(t, scheme="https") == "h"
    assert route_name(t, scheme="http") is None
    t = hroute(HeaderMatcher(":authority", present_match=False))
    assert route_name(t, host=None) == "h"                # a lone "*" vhost takes it
    assert route_name(t, host="a.com") is None
    # a pseudo-header name in the header list is not the request's field
    t = hroute(hm(":method", "exact", "PUT"))
    assert route_name(t, method="GET", headers=[(":method", "PUT")]) is None


def test_all_header_matchers_must_hold():
    t = hroute(hm("a", "exact", "1"), hm("b", "prefix", "x"))
    assert route_name(t, headers=[("a", "1"), ("b", "xy")]) == "h"
    assert route_name(t, headers=[("a", "1"), ("b", "yx")]) is None
    assert route_name(t, headers=[("b", "xy")]) is None


def test_header_routes_fall_through_in_order():
    t = table(vh("v", ["*"],
                 to(name="canary", prefix="/", headers=[hm("x-canary", "exact", "1")]),
                 to(name="main", prefix="/")))
    assert route_name(t, headers=[("x-canary", "1")]) == "canary"
    assert route_name(t, headers=[("x-canary", "0")]) == "main"


# ------------------------------------------------------------------ query parameters


def qroute(*matchers):
    return table(vh("v", ["*"], to(name="q", prefix="/", query_parameters=list(matchers))))


def qm(name, kind=None, value=None, ignore_case=False, **kw):
    sm = StringMatch(kind, value, ignore_case) if kind else None
    return QueryParameterMatcher(name, string_match=sm, **kw)


def test_query_exact_and_presence():
    t = qroute(qm("debug", "exact", "1"))
    assert route_name(t, "/x?debug=1") == "q"
    assert route_name(t, "/x?a=b&debug=1&c") == "q"
    assert route_name(t, "/x?debug=2") is None
    assert route_name(t, "/x?debug") is None
    assert route_name(t, "/x") is None
    assert route_name(t, "/x?Debug=1") is None            # names are case-sensitive
    t = qroute(qm("debug"))
    assert route_name(t, "/x?debug") == "q"
    assert route_name(t, "/x?debug=") == "q"
    assert route_name(t, "/x?debugx=1") is None
    t = qroute(qm("debug", present_match=False))         # Envoy: present either way
    assert route_name(t, "/x?debug=0") == "q"


def test_query_first_occurrence_no_decoding_fragment_and_kinds():
    t = qroute(qm("a", "exact", "1"))
    assert route_name(t, "/?a=1&a=2") == "q"
    assert route_name(t, "/?a=2&a=1") is None
    t = qroute(qm("a", "exact", "x y"))
    assert route_name(t, "/?a=x%20y") is None              # not percent-decoded
    t = qroute(qm("a", "exact", "x%20y"))
    assert route_name(t, "/?a=x%20y") == "q"
    t = qroute(qm("a", "exact", "1"))
    assert route_name(t, "/?b=2#a=1") is None              # the fragment is not query
    assert route_name(t, "/?a=1#frag") == "q"
    t = qroute(qm("a", "exact", ""))
    assert route_name(t, "/?a") == "q"
    t = qroute(qm("v", "safe_regex", "[0-9]+"), qm("w", "prefix", "AB", ignore_case=True))
    assert route_name(t, "/?v=123&w=abc") == "q"
    assert route_name(t, "/?v=123x&w=abc") is None
    assert route_name(t, "/?v=123") is None
    t = qroute(qm("a", "exact", "1=2"))
    assert route_name(t, "/?a=1=2") == "q"                 # split at the first '='


# ------------------------------------------------------------------ actions


def test_cluster_timeout_and_host_rewrite():
    t = table(vh("v", ["*"],
                 Route(RouteMatch(prefix="/a"), RouteAction(cluster="c2", timeout=2.5,
                                                            host_rewrite_literal="up.local")),
                 Route(RouteMatch(prefix="/b"), RouteAction(cluster="c1", timeout=None,
                                                            auto_host_rewrite=True)),
                 Route(RouteMatch(prefix="/c"), RouteAction(cluster="c0"))))
    a = sel(t, "/a")
    assert (a["action"], a["cluster"], a["timeout_ms"]) == ("cluster", "c2", 2500)
    assert a["host_rewrite_literal"] == "up.local" and not a["auto_host_rewrite"]
    b = sel(t, "/b")
    assert (b["cluster"], b["timeout_ms"], b["auto_host_rewrite"]) == ("c1", 0, True)
    assert b["host_rewrite_literal"] is None
    assert sel(t, "/c")["timeout_ms"] == 15000              # Envoy's default


def test_weighted_clusters_are_deterministic_for_a_random_value():
    wcs = [WeightedCluster("c0", 1), WeightedCluster("c1", 2), WeightedCluster("c3", 0),
           WeightedCluster("c2", 3)]
    t = table(vh("v", ["*"], Route(RouteMatch(prefix="/"), RouteAction(weighted_clusters=wcs))))
    r = sel(t)
    assert r["action"] == "weighted_clusters"
    assert r["weighted_clusters"] == [("c0", 1), ("c1", 2), ("c3", 0), ("c2", 3)]
    picks = [sel(t, random=i)["cluster"] for i in range(7)]
    assert picks == ["c0", "c1", "c1", "c2", "c2", "c2", "c0"]
    counts = {}
    for i in range(600):
        c = sel(t, random=i)["cluster"]
        counts[c] = counts.get(c, 0) + 1
    assert counts == {"c0": 100, "c1": 200, "c2": 300}     # zero weight: never
    big = sel(t, random=2**64 - 1)["cluster"]               # (2^64-1) % 6 == 3
    assert big == "c2"


def test_weighted_cluster_errors():
    with pytest.raises(ConfigError, match="weights"):
        table(vh("v", ["*"], Route(RouteMatch(prefix="/"), RouteAction(
            weighted_clusters=[WeightedCluster("c0", 0)]))))
    with pytest.raises(ConfigError, match=r"clusters\[1\]\.name"):
        table(vh("v", ["*"], Route(RouteMatch(prefix="/"), RouteAction(
            weighted_clusters=[WeightedCluster("c0", 1), WeightedCluster("nope", 1)]))))


def test_action_errors():
    with pytest.raises(ConfigError, match=r"routes\[0\]\.route\.cluster.*unknown cluster"):
        table(vh("v", ["*"], to(cluster="missing", prefix="/")))
    with pytest.raises(ConfigError, match=r"routes\[0\]: exactly one of route"):
        table(vh("v", ["*"], Route(RouteMatch(prefix="/"))))
    with pytest.raises(ConfigError, match="exactly one of cluster"):
        table(vh("v", ["*"], Route(RouteMatch(prefix="/"), RouteAction())))
    with pytest.raises(ConfigError, match="only one of prefix_rewrite"):
        table(vh("v", ["*"], Route(RouteMatch(prefix="/"), RouteAction(
            cluster="c0", prefix_rewrite="/x", regex_rewrite=RegexRewrite("a", "b")))))


# ------------------------------------------------------------------ path rewrites


def rw(match, **action):
    return table(vh("v", ["*"], Route(RouteMatch(**match), RouteAction(cluster="c0", **action))))


def test_prefix_rewrite():
    t = rw(dict(prefix="/api/"), prefix_rewrite="/v2/")
    assert sel(t, "/api/users?x=1&y")["path"] == "/v2/users?x=1&y"
    t = rw(dict(prefix="/API", case_sensitive=False), prefix_rewrite="/b")
    assert sel(t, "/aPi/x")["path"] == "/b/x"
    t = rw(dict(path="/old"), prefix_rewrite="/new")
    assert sel(t, "/old?q")["path"] == "/new?q"
    t = rw(dict(path_separated_prefix="/svc"), prefix_rewrite="/")
    assert sel(t, "/svc/a")["path"] == "//a"                # Envoy's literal replacement
    t = rw(dict(safe_regex="/[a-z]+"), prefix_rewrite="/fixed")
    assert sel(t, "/abc?k=v")["path"] == "/fixed?k=v"       # whole query-less path
    t = rw(dict(prefix="/"), prefix_rewrite="/" + "x" * 500)  # longer than any first buffer
    assert sel(t, "/a?b")["path"] == "/" + "x" * 500 + "a?b"


def test_no_rewrite():
    assert sel(rw(dict(prefix="/")), "/a")["path"] is None
    assert sel(rw(dict(prefix="/"), prefix_rewrite=""), "/a")["path"] is None


def test_regex_rewrite_with_groups_and_query_kept():
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite("^/service/([^/]+)(/.*)$",
                                                         "\\2/instance/\\1"))
    assert sel(t, "/service/foo/v1/api?x=1")["path"] == "/v1/api/instance/foo?x=1"
    assert sel(t, "/other")["path"] == "/other"             # no match: unchanged


def test_regex_rewrite_replaces_every_match():
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite("one", "two"))
    assert sel(t, "/xxx/one/yyy/one/zzz?one")["path"] == "/xxx/two/yyy/two/zzz?one"
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite("x*", "-"))
    assert sel(t, "/ab")["path"] == "-/-a-b-"               # RE2 GlobalReplace on empty matches
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite("^/", "/root/"))
    assert sel(t, "/a/b")["path"] == "/root/a/b"            # '^' only at the start
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite("(a)(b)?", "[\\0|\\1|\\2]\\\\"))
    assert sel(t, "/ab/a")["path"] == "/[ab|a|b]\\/[a|a|]\\"


def test_regex_rewrite_errors():
    with pytest.raises(ConfigError, match="substitution"):
        rw(dict(prefix="/"), regex_rewrite=RegexRewrite("(a)", "\\2"))
    with pytest.raises(ConfigError, match="substitution"):
        rw(dict(prefix="/"), regex_rewrite=RegexRewrite("a", "\\x"))
    with pytest.raises(ConfigError, match="regex_rewrite"):
        rw(dict(prefix="/"), regex_rewrite=RegexRewrite("(", "x"))


def test_regex_copies_per_worker():
    t = table(vh("v", ["*"], Route(RouteMatch(safe_regex="/r/[0-9]+"), RouteAction(
        cluster="c1", regex_rewrite=RegexRewrite("[0-9]+", "N")))), regex_copies=4)
    for w in range(9):
        r = sel(t, "/r/12", worker=w)
        assert (r["cluster"], r["path"]) == ("c1", "/r/N")


# ------------------------------------------------------------------ redirects


def redirect(host="a.com", path="/p/x?q=1", scheme="http", headers=(), match=None, **kw):
    t = table(vh("v", ["*"], Route(RouteMatch(**(match or {"prefix": "/"})),
                                   redirect=RedirectAction(**kw))))
    r = sel(t, path, host, headers, scheme=scheme)
    assert r["action"] == "redirect" and r["path"] is None
    return r["location"], r["status"]


def test_redirect_defaults_keep_the_request_url():
    assert redirect() == ("http://a.com/p/x?q=1", 301)
    assert redirect(scheme="https", host="a.com:8443") == ("https://a.com:8443/p/x?q=1", 301)


def test_https_redirect_and_default_ports():
    assert redirect(https_redirect=True)[0] == "https://a.com/p/x?q=1"
    assert redirect(https_redirect=True, host="a.com:80")[0] == "https://a.com/p/x?q=1"
    assert redirect(https_redirect=True, host="a.com:8080")[0] == "https://a.com:8080/p/x?q=1"
    # https to https: the port stays
    assert redirect(https_redirect=True, host="a.com:443", scheme="https")[0] == \
        "https://a.com:443/p/x?q=1"
    # x-forwarded-proto says which default port to drop
    assert redirect(scheme_redirect="http", host="a.com:443", scheme="http",
                    headers=[("X-Forwarded-Proto", "https")])[0] == "http://a.com/p/x?q=1"
    assert redirect(https_redirect=True, host="[::1]:80")[0] == "https://[::1]/p/x?q=1"
    assert redirect(https_redirect=True, host="[::1]")[0] == "https://[::1]/p/x?q=1"


def test_scheme_host_port_redirects():
    assert redirect(scheme_redirect="ftp")[0] == "ftp://a.com/p/x?q=1"
    assert redirect(host_redirect="b.org", host="a.com:8080")[0] == "http://b.org/p/x?q=1"
    assert redirect(port_redirect=8443, host="a.com:8080")[0] == "http://a.com:8443/p/x?q=1"
    assert redirect(port_redirect=8443, host="a.com")[0] == "http://a.com:8443/p/x?q=1"
    assert redirect(port_redirect=9, host="[::1]:8080")[0] == "http://[::1]:9/p/x?q=1"
    assert redirect(host_redirect="b.org", port_redirect=1, https_redirect=True)[0] == \
        "https://b.org:1/p/x?q=1"


def test_path_and_prefix_redirects_and_strip_query():
    assert redirect(path_redirect="/new")[0] == "http://a.com/new?q=1"
    assert redirect(path_redirect="/new", strip_query=True)[0] == "http://a.com/new"
    assert redirect(path_redirect="/new?z=9")[0] == "http://a.com/new?z=9"
    assert redirect(path_redirect="/new?z=9", strip_query=True)[0] == "http://a.com/new?z=9"
    assert redirect(path_redirect="rel")[0] == "http://a.com/rel?q=1"
    assert redirect(path="/p/x", path_redirect="/new")[0] == "http://a.com/new"
    assert redirect(match={"prefix": "/p/"}, prefix_rewrite="/q/")[0] == "http://a.com/q/x?q=1"
    assert redirect(match={"prefix": "/p/"}, prefix_rewrite="/q/", strip_query=True)[0] == \
        "http://a.com/q/x"
    assert redirect(match={"path": "/p/x"}, prefix_rewrite="/y")[0] == "http://a.com/y?q=1"
    assert redirect(match={"prefix": "/p/"}, prefix_rewrite="q/")[0] == "http://a.com/q/x?q=1"
    assert redirect(strip_query=True)[0] == "http://a.com/p/x"


def test_regex_rewrite_redirects():
    rx = RegexRewrite("^/p/([a-z]+)", "/r/\\1")
    assert redirect(regex_rewrite=rx)[0] == "http://a.com/r/x?q=1"
    assert redirect(regex_rewrite=rx, strip_query=True)[0] == "http://a.com/r/x"
    assert redirect(path="/z", regex_rewrite=rx)[0] == "http://a.com/z"      # no match: as is
    # a rewritten path without its '/' gets one, as Envoy's Location has
    assert redirect(regex_rewrite=RegexRewrite("^/p/", ""), host_redirect="b.org")[0] == "http://b.org/x?q=1"
    with pytest.raises(ConfigError, match="only one of"):
        redirect(regex_rewrite=rx, path_redirect="/n")


@pytest.mark.parametrize("n", [1, 15, 16, 17, 5000])
def test_too_small_a_buffer_reports_the_room_the_text_needs(n):
    """select() writes into 16 bytes first, then into exactly the room the router asked
    for (it fails the test if that is too small), as a worker does past its stack buffer."""
    tail = "a" * n
    strip = RegexRewrite("^/p/", "")            # the '/' put in front is counted too
    assert redirect(path="/p/" + tail, regex_rewrite=strip, host_redirect="b")[0] == "http://b/" + tail
    assert redirect(path="/p/" + tail + "?" + tail)[0] == "http://a.com/p/" + tail + "?" + tail
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite("a", "bb"))
    assert sel(t, "/" + tail + "?a")["path"] == "/" + "bb" * n + "?a"


def test_redirect_codes_and_errors():
    for code in (301, 302, 303, 307, 308):
        assert redirect(response_code=code)[1] == code
    with pytest.raises(ConfigError, match="response_code"):
        redirect(response_code=200)
    with pytest.raises(ConfigError, match="scheme_redirect"):
        redirect(scheme_redirect="https", https_redirect=True)
    with pytest.raises(ConfigError, match="path_redirect"):
        redirect(path_redirect="/a", prefix_rewrite="/b")


def test_direct_response():
    t = table(vh("v", ["*"],
                 Route(RouteMatch(prefix="/ok"), direct_response=DirectResponse(200, b"hi")),
                 Route(RouteMatch(prefix="/moved"), direct_response=DirectResponse(302)),
                 Route(RouteMatch(prefix="/created"), direct_response=DirectResponse(201, "x"))))
    r = sel(t, "/ok")
    assert (r["action"], r["status"], r["body"], r["location"]) == \
        ("direct_response", 200, b"hi", None)
    r = sel(t, "/moved?a", "h:80")
    assert (r["status"], r["body"], r["location"]) == (302, b"", "http://h:80/moved?a")
    assert sel(t, "/created")["location"] == "http://example.com/created"
    with pytest.raises(ConfigError, match="direct_response.status"):
        table(vh("v", ["*"], Route(RouteMatch(prefix="/"), direct_response=DirectResponse(99))))


# ------------------------------------------------------------------ header mutations


def mut(req_add=(), req_rm=(), resp_add=(), resp_rm=()):
    return HeaderMutations(
        request_headers_to_add=[HeaderValueOption(*a) for a in req_add],
        request_headers_to_remove=list(req_rm),
        response_headers_to_add=[HeaderValueOption(*a) for a in resp_add],
        response_headers_to_remove=list(resp_rm))


def apply_ops(ops, headers):
    """The application algorithm documented in core/router.pxi (Envoy's HeaderParser)."""
    headers = [(k.lower(), v) for k, v in headers]
    levels = []
    for op in ops:
        if not levels or levels[-1][0] != op[0]:
            levels.append((op[0], []))
        levels[-1][1].append(op)
    for _, level_ops in levels:
        for _, action, name, _ in level_ops:
            if action == "REMOVE":
                headers = [(k, v) for k, v in headers if k != name]
        present = {k for k, _ in headers}
        overwrite, append = [], []
        for _, action, name, value in level_ops:
            if action == "APPEND_IF_EXISTS_OR_ADD":
                append.append((name, value))
            elif action == "ADD_IF_ABSENT" and name not in present:
                append.append((name, value))
            elif action == "OVERWRITE_IF_EXISTS_OR_ADD":
                overwrite.append((name, value))
            elif action == "OVERWRITE_IF_EXISTS" and name in present:
                overwrite.append((name, value))
        for name, value in overwrite:
            if any(k == name for k, _ in headers):
                i = next(i for i, (k, _) in enumerate(headers) if k == name)
                headers = [(k, v) for k, v in headers if k != name]
                headers.insert(i, (name, value))
            else:
                headers.append((name, value))
        headers += append
    return headers


def mutation_table(most_specific=False):
    route = Route(RouteMatch(prefix="/"), RouteAction(cluster="c0"), name="r", headers=mut(
        req_add=[("X-Who", "route", "OVERWRITE_IF_EXISTS_OR_ADD"), ("x-list", "r"),
                 ("x-gone", "route")],
        req_rm=["x-strip-route"],
        resp_add=[("x-resp", "route", "OVERWRITE_IF_EXISTS_OR_ADD")]))
    v = vh("v", ["*"], route, headers=mut(
        req_add=[("x-who", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD"), ("x-list", "v"),
                 ("x-empty", ""), ("x-vh-only", "1", "ADD_IF_ABSENT")],
        resp_add=[("x-resp", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")]))
    rc = RouteConfiguration(name="rc", virtual_hosts=[v], headers=mut(
        req_add=[("x-who", "config", "OVERWRITE_IF_EXISTS_OR_ADD"), ("x-list", "c"),
                 ("x-if", "set", "OVERWRITE_IF_EXISTS"), ("x-fmt", "%REQ(x)%")],
        req_rm=["x-gone"],
        resp_rm=["server"]))
    if most_specific:
        rc.most_specific_header_mutations_wins = True
    return compile_route_table(rc, CLUSTERS)


def test_keep_empty_value_keeps_an_empty_add():
    route = Route(RouteMatch(prefix="/"), RouteAction(cluster="c0"), name="r", headers=HeaderMutations(
        request_headers_to_add=[HeaderValueOption("x-kept", "", keep_empty_value=True),
                                HeaderValueOption("x-dropped", "")],
        response_headers_to_add=[HeaderValueOption("x-kept", "", "ADD_IF_ABSENT", keep_empty_value=True)]))
    r = sel(table(vh("v", ["*"], route)))
    assert r["request_header_ops"] == [("route", "APPEND_IF_EXISTS_OR_ADD", "x-kept", "")]
    assert r["response_header_ops"] == [("route", "ADD_IF_ABSENT", "x-kept", "")]


def test_header_ops_order_route_then_vhost_then_config():
    r = sel(mutation_table())
    assert r["request_header_ops"] == [
        ("route", "REMOVE", "x-strip-route", None),
        ("route", "OVERWRITE_IF_EXISTS_OR_ADD", "x-who", "route"),
        ("route", "APPEND_IF_EXISTS_OR_ADD", "x-list", "r"),
        ("route", "APPEND_IF_EXISTS_OR_ADD", "x-gone", "route"),
        ("virtual_host", "OVERWRITE_IF_EXISTS_OR_ADD", "x-who", "vhost"),
        ("virtual_host", "APPEND_IF_EXISTS_OR_ADD", "x-list", "v"),
        ("virtual_host", "ADD_IF_ABSENT", "x-vh-only", "1"),     # the empty value is dropped
        ("route_configuration", "REMOVE", "x-gone", None),
        ("route_configuration", "OVERWRITE_IF_EXISTS_OR_ADD", "x-who", "config"),
        ("route_configuration", "APPEND_IF_EXISTS_OR_ADD", "x-list", "c"),
        ("route_configuration", "OVERWRITE_IF_EXISTS", "x-if", "set"),
        ("route_configuration", "APPEND_IF_EXISTS_OR_ADD", "x-fmt", "%REQ(x)%"),
    ]
    assert r["response_header_ops"] == [
        ("route", "OVERWRITE_IF_EXISTS_OR_ADD", "x-resp", "route"),
        ("virtual_host", "OVERWRITE_IF_EXISTS_OR_ADD", "x-resp", "vhost"),
        ("route_configuration", "REMOVE", "server", None),
    ]


def test_default_order_least_specific_overwrite_wins():
    r = sel(mutation_table())
    out = apply_ops(r["request_header_ops"], [("x-strip-route", "1"), ("x-if", "old"),
                                              ("x-vh-only", "client")])
    d = {}
    for k, v in out:
        d.setdefault(k, []).append(v)
    assert d["x-who"] == ["config"]                 # the route configuration's overwrite wins
    assert d["x-list"] == ["r", "v", "c"]
    assert "x-gone" not in d                        # removed by a later (config) level
    assert "x-strip-route" not in d
    assert d["x-if"] == ["set"]
    assert d["x-vh-only"] == ["client"]
    assert dict(apply_ops(r["response_header_ops"], [("Server", "up")])) == {"x-resp": "vhost"}


def test_most_specific_header_mutations_wins():
    r = sel(mutation_table(most_specific=True))
    assert [op[0] for op in r["request_header_ops"]][:3] == ["route_configuration"] * 3
    d = dict(apply_ops(r["request_header_ops"], []))
    assert d["x-who"] == "route"
    assert d["x-gone"] == "route"                   # the config's remove now runs first


def test_same_level_conditions_see_the_headers_before_the_level():
    route = Route(RouteMatch(prefix="/"), RouteAction(cluster="c0"), headers=mut(req_add=[
        ("x-a", "1", "APPEND_IF_EXISTS_OR_ADD"), ("x-a", "2", "ADD_IF_ABSENT"),
        ("x-b", "1", "OVERWRITE_IF_EXISTS"), ("x-b", "2", "OVERWRITE_IF_EXISTS_OR_ADD")]))
    t = table(vh("v", ["*"], route))
    out = apply_ops(sel(t)["request_header_ops"], [])
    assert out == [("x-b", "2"), ("x-a", "1"), ("x-a", "2")]


def test_header_mutation_errors():
    for bad in (mut(req_rm=[":path"]), mut(req_rm=["Host"]), mut(resp_add=[(":status", "1")]),
                mut(req_add=[("host", "x")]), mut(req_add=[("x", "y", "SOMETIMES")])):
        with pytest.raises(ConfigError, match=r"virtual_hosts\[0\]\.(request|response)"):
            table(vh("v", ["*"], to(prefix="/"), headers=bad))


# ------------------------------------------------------------------ large tables


def reference_select(routes, path):
    """First match by the documented rules, for plain routes: (kind, value, case_sensitive)."""
    noq = path
    for c in "?#":
        noq = noq.split(c, 1)[0]
    for i, (kind, value, cs) in enumerate(routes):
        p, v = (noq, value) if cs else (noq.lower(), value.lower())
        if kind == "prefix" and "?" not in value and "#" not in value and p.startswith(v):
            return i
        if kind == "path" and p == v:
            return i
        if kind == "path_separated_prefix" and p.startswith(v) and (
                len(p) == len(v) or p[len(v)] == "/"):
            return i
    return None


def test_thousand_routes_across_hundred_vhosts():
    vhosts = []
    for v in range(100):
        routes = [to(name=f"v{v}r{r}", cluster=f"c{r % 4}", prefix=f"/svc{r}/") for r in range(9)]
        routes.append(to(name=f"v{v}default", prefix="/"))
        vhosts.append(vh(f"vh{v}", [f"host{v}.example.com"], *routes))
    t = table(*vhosts)
    assert t.segments(0) == [(0, 10, True)]
    for v in range(0, 100, 7):
        for r in range(9):
            got = sel(t, f"/svc{r}/x?y", f"host{v}.example.com")
            assert (got["route"], got["cluster"]) == (f"v{v}r{r}", f"c{r % 4}")
        assert route_name(t, "/svc9/x", f"host{v}.example.com") == f"v{v}default"
    assert sel(t, "/", "host100.example.com") is None


def test_thousand_route_index_agrees_with_first_match_in_order():
    rnd = random.Random(1234)
    alphabet = "abAB/"
    routes = []
    for i in range(1000):
        kind = rnd.choice(["prefix", "prefix", "path", "path_separated_prefix"])
        value = "/" + "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 5)))
        if kind == "path_separated_prefix":
            value = value.rstrip("/") or "/x"
        if rnd.random() < 0.01:
            value += "?"                                       # never matches
            kind = "prefix"
        cs = rnd.random() < 0.8
        routes.append((kind, value, cs))
    model = [to(name=str(i), **{kind: value}, case_sensitive=cs)
             for i, (kind, value, cs) in enumerate(routes)]
    # a header route in the middle splits the runs
    model.insert(500, to(name="hdr", prefix="/", headers=[hm("x-split", "exact", "1")]))
    t = table(vh("v", ["*"], *model))
    segs = t.segments(0)
    assert [s[2] for s in segs] == [True, False, True]
    for _ in range(3000):
        path = "/" + "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 7)))
        if rnd.random() < 0.3:
            path += rnd.choice(["?q=1", "#f", "?"])
        want = reference_select(routes, path)
        got = route_name(t, path)
        assert got == (None if want is None else str(want)), (path, want, got)
        # with x-split: 1 the header route (prefix "/") takes everything after route 499
        split = str(want) if want is not None and want < 500 else "hdr"
        assert route_name(t, path, headers=[("x-split", "1")]) == split, path


def test_short_runs_are_scanned_and_long_runs_indexed():
    t = table(vh("v", ["*"], *[to(prefix=f"/{i}") for i in range(7)]))
    assert t.segments(0) == [(0, 7, False)]
    with pytest.raises(IndexError):
        t.segments(1)
    t = table(vh("v", ["*"], *[to(prefix=f"/{i}") for i in range(8)],
                 to(safe_regex="/r"), *[to(prefix=f"/{i}") for i in range(3)]))
    assert t.segments(0) == [(0, 8, True), (8, 4, False)]


def test_index_duplicate_keys_keep_the_first_route():
    routes = [to(name=f"r{i}", prefix="/same") for i in range(10)]
    routes.insert(0, to(name="ci", prefix="/SAME", case_sensitive=False))
    t = table(vh("v", ["*"], *routes))
    assert route_name(t, "/same") == "ci"
    routes = [to(name=f"p{i}", prefix=f"/p{i}") for i in range(10)] + [
        to(name="exact", path="/exact"), to(name="sep", path_separated_prefix="/exact"),
        to(name="root", prefix="/")]
    t = table(vh("v", ["*"], *routes))
    assert route_name(t, "/exact") == "exact"
    assert route_name(t, "/exact/x") == "sep"
    assert route_name(t, "/exactly") == "root"
    assert route_name(t, "/p3/x") == "p3"
    assert route_name(t, "") is None
    # an empty prefix matches every path, the empty one too
    routes = [to(name=f"p{i}", path=f"/p{i}") for i in range(10)] + [to(name="all", prefix="")]
    t = table(vh("v", ["*"], *routes))
    assert t.segments(0) == [(0, 11, True)]
    assert route_name(t, "/p1?x") == "p1"
    assert route_name(t, "/p1/") == "all"
    assert route_name(t, "") == "all"
    assert route_name(t, "*") == "all"


# ------------------------------------------------------------------ lifetime and bench hook


def test_share_keeps_the_table_alive():
    t = table(vh("v", ["*"], to(prefix="/")))
    assert t.refcnt == 1
    t2 = t.share()
    assert t.refcnt == 2 and t2.refcnt == 2
    del t
    assert t2.refcnt == 1
    assert sel(t2)["vhost"] == "v"


def test_bench_select_runs_without_the_gil():
    t = table(vh("v", ["*"], *[to(prefix=f"/p{i}/") for i in range(50)]))
    ns, matched = route_select_bench(t, "GET", "/p49/x", "h", rounds=1000)
    assert matched and ns > 0
    ns, matched = route_select_bench(t, "GET", "/none", "h", rounds=10)
    assert not matched


@pytest.mark.parametrize("copies", [1, 4])
def test_concurrent_selects_without_the_gil(copies):
    import threading
    routes = [to(name=f"r{i}", safe_regex=f"/r{i}/[0-9]+", headers=[hm("x", "safe_regex", "v.*")])
              for i in range(20)] + [to(name="p", prefix="/")]
    t = table(vh("v", ["*"], *routes), regex_copies=copies)
    results = []

    def work(i):
        results.append(route_select_bench(t, "GET", f"/r{i % 20}/123", "h", [("x", "vv")], rounds=3000))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 4 and all(matched for _, matched in results)
    assert route_name(t, "/r7/1", headers=[("x", "v")]) == "r7"


def test_re2_syntax_through_the_translator():
    pytest.importorskip("fastproxy.config.regex")
    t = table(vh("v", ["*"], to(name="d", safe_regex=r"/users/\d+"),
                 to(name="nc", safe_regex=r"/(?:a|b)/\w+")))
    assert route_name(t, "/users/42") == "d"
    assert route_name(t, "/users/4x") is None
    assert route_name(t, "/b/x_1") == "nc"
    # (?:...) becomes a POSIX group: the substitution's \1 must still mean RE2's group 1
    t = rw(dict(prefix="/"), regex_rewrite=RegexRewrite(r"^/(?:api|v1)/(\d+)/(?P<rest>.*)$",
                                                         r"/id/\1/\2"))
    assert sel(t, "/api/42/x/y?q")["path"] == "/id/42/x/y?q"
    assert sel(t, "/v1/7/z")["path"] == "/id/7/z"
    with pytest.raises(ConfigError, match=r"safe_regex"):
        table(vh("v", ["*"], to(safe_regex="a*?")))          # non-greedy: refused
    with pytest.raises(ConfigError, match=r"substitution"):
        rw(dict(prefix="/"), regex_rewrite=RegexRewrite("(?:a)(b)", "\\2"))


def test_regex_matches_bytes_that_are_not_utf8():
    t = table(vh("v", ["*"], to(name="any", safe_regex="/x/.+")))
    assert t.select("GET", b"/x/\xff\xfe", "h") is not None
