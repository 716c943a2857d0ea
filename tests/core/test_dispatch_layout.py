"""Dispatch is generic, a layout rule a build cannot check: the worker loop, the engine and the
TCP proxy know no HTTP. The HTTP connection manager plugs in through the generic hooks
(endpoint callbacks, worker hooks and state slots, ListenerCfg.start, stat kinds), so a
second protocol (HTTP/2, TLS) plugs in the same way without touching these files."""
from __future__ import annotations

import pathlib
import re

import pytest

import fastproxy

CORE = pathlib.Path(fastproxy.__file__).resolve().parent / "core"

# What naming HTTP looks like in the core: its types (HConn, UpConn, HStream, HttpCfg,
# HttpWorker, HttpPool, ...), its functions and constants (http_*, hconn_*, upconn_*, hcm_*,
# EP_HTTP_*, HTTP_*/HTTP1_*/LISTENER_HTTP_* stat blocks, H_* stat indexes) and its stat
# kinds ("http", "http1", "listener_http"), and the ListenerCfg fields only HTTP reads.
HTTP_NAMES = re.compile(r"""\b(?:HConn|UpConn|HStream|Http[A-Z]\w*|H1[A-Z]\w*|h1_\w+|http_\w+|hconn_\w+|upconn_\w+
                           |hcm_\w+|EP_HTTP\w*|(?:LISTENER_)?HTTP1?_[A-Z]\w*|H_[A-Z]\w*)\b
                           |\.(?:http|lhstats)\b
                           |["'](?:http|http1|listener_http)["']""", re.VERBOSE)

PROTOCOL_FREE = ("dispatcher.pxi", "engine.pxi", "tcp_proxy.pxi")


def http_names(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in HTTP_NAMES.finditer(text)]


@pytest.mark.parametrize("name", PROTOCOL_FREE)
def test_the_dispatcher_the_engine_and_the_tcp_proxy_name_no_http(name):
    found = http_names((CORE / name).read_text())
    assert not found, f"core/{name} names HTTP (line, name): {found}"


def test_the_rule_sees_what_it_forbids():
    # The names the old dispatcher, engine and TCP proxy used, each caught.
    for old in ("EP_HTTP_DOWN = 5", "HConn* hconns", "UpConn* upconn_deferred", "hconn_on_event(w, c, ev)",
                "upconn_on_event(w, u, ev)", "http_worker_teardown(w)", "HttpCfgHandle http=None",
                'if kind == "listener_http":', "LISTENER_HTTP_STATS", "HTTP1_STATS", "if cfg.http != NULL:",
                "http_free_deferred(w)", "hconn_start(w, cfg, fd, peer)", "HttpWorker* hw", "c.lhstats = lhstats.b"):
        assert http_names(old), old
    # Prose about the protocol is not a name.
    assert not http_names("# e.g. the HTTP connection manager sets it") and not http_names("cfg.start(w)")
