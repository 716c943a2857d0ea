"""The admin interface: a small HTTP server beside the proxy, modelled on Envoy's admin.

It runs the standard library's :class:`http.server.ThreadingHTTPServer` in a daemon
thread of the main process; the data plane never sees it. Endpoints:

==========================  ================================================================
``GET  /stats``             every stat as ``name: value`` lines, sorted by name, then the
                            histograms as Envoy prints them (``P0(nan,1) P25(nan,2) ...``)
``GET  /stats?format=json`` ``{"stats": [{"name": ..., "value": ...}, ..., {"histograms": ...}]}``
``GET  /stats?filter=RE``   only the stats whose name matches the regular expression RE
``GET  /stats?usedonly``    only the stats ever written (Envoy's ``usedonly``)
``GET  /stats/prometheus``  the stats in Prometheus text format, named and labelled as
                            Envoy's (also ``/stats?format=prometheus``; ``?filter=RE``,
                            ``?usedonly``); see :mod:`fastproxy.prometheus`
``GET  /ready``             ``LIVE`` (200) while serving, ``INITIALIZING`` (503) during the
                            initial fetch of dynamic resources, ``DRAINING`` (503) once stopping
``GET  /server_info``       JSON: version, state, uptime, concurrency
``GET  /listeners``         ``name::host:port`` per listener (actual bound address)
``GET  /clusters``          Envoy's lines: circuit breaker limits, then per host its counters
                            (``cluster::host:port::rq_total::N``, ...), hostname,
                            health flags and weight
``GET  /config_dump``       the configuration as Envoy's envoy.admin.v3.ConfigDump JSON:
                            bootstrap, clusters, listeners, route configurations, each with
                            last_updated (``?resource=``, ``?mask=``; see
                            :mod:`fastproxy.config.dump`); ``?include_eds`` adds the
                            EDS assignments (EndpointsConfigDump)
``POST /quitquitquit``      ask the proxy to drain and exit
``GET  /`` or ``/help``     this list
==========================  ================================================================

``/listeners`` and ``/clusters`` also take ``?format=json``.

What it needs from the proxy: ``stats()``, ``gauge_names()`` (optional: without it every
stat is a counter on the Prometheus page), ``histograms()`` (optional), ``concurrency``, ``config`` (the current
:class:`fastproxy.model.Bootstrap`), ``listener_address(name)``, ``config_dump(resource,
mask)`` and ``request_shutdown()``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from . import _core
from .memory import memory_stats
from .stats_table import COUNTER, GAUGE, block as stat_block

log = logging.getLogger("fastproxy.admin")

HELP = {
    "/": "this list",
    "/help": "this list",
    "/stats": "print server stats (?format=json|prometheus, ?filter=REGEX, ?usedonly)",
    "/stats/prometheus": "print server stats in prometheus format (?filter=REGEX, ?usedonly)",
    "/ready": "print server state, 200 when LIVE",
    "/server_info": "print server version, state, uptime and concurrency",
    "/listeners": "print listener names and bound addresses (?format=json)",
    "/clusters": "print upstream clusters and their endpoints (?format=json)",
    "/config_dump": "dump the current configuration as Envoy's ConfigDump JSON (?resource=, ?mask=)",
    "/memory": "print current allocation and heap usage, in bytes",
    "/quitquitquit": "(POST) drain and exit the server",
}
POST_ONLY = {"/quitquitquit"}


def package_version() -> str:
    """fastproxy's version, without importing anything heavy."""
    mod = sys.modules.get("fastproxy")
    v = getattr(mod, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version("fastproxy")
    except Exception:
        return "unknown"


def _fmt_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _duration(secs: float) -> str:
    return f"{int(secs)}s"


class AdminServer:
    """Envoy-style admin endpoints for one proxy.

    >>> admin = AdminServer(proxy, "127.0.0.1", 0).start()
    >>> admin.address          # the bound address, port resolved
    ('127.0.0.1', 40123)
    >>> admin.stop()
    """

    def __init__(self, proxy, host: str = "127.0.0.1", port: int = 0, access_log=()):
        self.proxy = proxy
        self.host = host
        self.port = port
        self._access_log = list(access_log)     # fastproxy.http.AccessLog sinks
        self._sinks: list = []                  # (ops, fd, is_socket), open while serving
        self.state = "PRE_INITIALIZING"
        self._started_at = time.monotonic()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._shutdown_requested = False
        self._used: set = set()         # stats seen with a value (/stats?usedonly)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "AdminServer":
        """Bind and serve in a daemon thread. Raises OSError if the address is taken."""
        with self._lock:
            if self._httpd is not None:
                return self
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

            class _Server(ThreadingHTTPServer):
                address_family = family
                daemon_threads = True
                allow_reuse_address = True

            self._open_access_logs()
            try:
                httpd = _Server((self.host, self.port), _make_handler(self))
            except BaseException:
                self._close_access_logs()
                raise
            self._httpd = httpd
            self._started_at = time.monotonic()
            if self.state == "PRE_INITIALIZING":     # (the proxy may have said INITIALIZING)
                self.state = "LIVE"
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                name="fastproxy-admin", daemon=True)
            self._thread.start()
        host, port = self.address
        # debug: the command line prints the admin's address itself, once
        log.debug("admin address: %s", _fmt_hostport(host, port))
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Safe to call twice, from any thread
        (including an admin request's own thread)."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            self.state = "DRAINING"
        if httpd is None:
            return
        if thread is not threading.current_thread():
            httpd.shutdown()
            if thread is not None:
                thread.join(timeout=5.0)
        httpd.server_close()
        self._close_access_logs()

    # -- the admin's access log (Envoy's admin.access_log) ----------------------------

    def _open_access_logs(self) -> None:
        from .access_log import compile_format, open_sink
        from .errors import ConfigError

        for i, entry in enumerate(self._access_log):
            ops = compile_format(entry.format, f"admin.access_log[{i}].format")
            try:
                fd, is_socket = open_sink(entry.path)
            except OSError as e:
                self._close_access_logs()
                raise ConfigError(f"admin.access_log[{i}].path",
                                  f"cannot open {entry.path!r}: {e.strerror or e}") from None
            self._sinks.append((ops, fd, is_socket))

    def _close_access_logs(self) -> None:
        sinks, self._sinks = self._sinks, []
        for _, fd, _ in sinks:
            os.close(fd)

    def log_access(self, handler: "BaseHTTPRequestHandler", code: int, nbytes: int, start: float) -> None:
        """One record per admin request, in each configured format (one write per record,
        as the data plane's)."""
        if not self._sinks:
            return
        from .access_log import format_record

        target = handler.path or "/"
        request = {k.lower(): v for k, v in handler.headers.items()} if handler.headers else {}
        request.update({":method": handler.command, ":path": target, ":authority": request.get("host"),
                        ":scheme": "http"})
        host, port = handler.client_address[:2]
        local = handler.connection.getsockname()[:2]
        facts = {"RESPONSE_CODE": code, "RESPONSE_FLAGS": "-", "BYTES_RECEIVED": 0, "BYTES_SENT": nbytes,
                 "PROTOCOL": handler.request_version, "DURATION": int((time.time() - start) * 1000),
                 "DOWNSTREAM_REMOTE_ADDRESS": _fmt_hostport(host, port),
                 "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": host,
                 "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _fmt_hostport(host, port),
                 "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": host,
                 "DOWNSTREAM_LOCAL_ADDRESS": _fmt_hostport(local[0], local[1]),
                 "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": local[0]}
        for ops, fd, is_socket in list(self._sinks):
            record = format_record(ops, start, request, {}, facts)
            try:
                # A socket (stdout on the journal) is written blocking: this is the
                # request's own admin thread, never a worker.
                os.write(fd, record)
            except OSError:
                pass        # a full or closed sink loses the record, as the data plane's do

    @property
    def address(self) -> Tuple[str, int]:
        """(host, port) actually bound; the configured pair before :meth:`start`."""
        httpd = self._httpd
        if httpd is None:
            return (self.host, self.port)
        addr = httpd.server_address
        return (addr[0], addr[1])

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_at

    def __enter__(self) -> "AdminServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content ---------------------------------------------------------------------

    def stats(self) -> dict:
        stats = dict(self.proxy.stats())
        stats.setdefault("server.live", 1 if self.state == "LIVE" else 0)
        stats.setdefault("server.concurrency", int(self.proxy.concurrency))
        stats.setdefault("server.uptime", int(self.uptime))
        return stats

    def used(self, name: str, value) -> bool:
        """Envoy's ?usedonly: a stat that was ever written. A counter is once it is not 0
        (it only grows); a gauge that went back to 0 stays used once this admin saw it
        otherwise."""
        if value:
            self._used.add(name)
            return True
        return name in self._used

    def histograms(self) -> dict:
        get = getattr(self.proxy, "histograms", None)
        return dict(get()) if get is not None else {}

    def gauge_names(self) -> set:
        get = getattr(self.proxy, "gauge_names", None)
        names = set(get()) if get is not None else set()
        # the admin's own three (see stats()) are gauges in Envoy
        return names | {"server.live", "server.concurrency", "server.uptime"}

    def outlier_info(self) -> dict:
        """The proxy's outlier detectors (Proxy.outlier_info), {} for a proxy without."""
        info = getattr(self.proxy, "outlier_info", None)
        return info() if info is not None else {}

    def cluster_rows(self):
        """[(cluster, {limit: value}, [(ip, port, hostname, weight, {stat: value})])] for
        /clusters: the proxy's live hosts and counters, or (a proxy without
        cluster_hosts()) the configured endpoints with zero counters."""
        live = getattr(self.proxy, "cluster_hosts", None)
        live = live() if live is not None else {}
        zero = dict.fromkeys(HOST_COUNTERS + HOST_GAUGES, 0)
        out = []
        for c in self.proxy.config.clusters:
            limits = {"max_connections": c.max_connections, "max_pending_requests": c.max_pending_requests,
                      "max_requests": c.max_requests, "max_retries": c.max_retries}
            hosts = live.get(c.name)
            if hosts is None:
                hosts = [(e.address, e.port, e.hostname, e.weight, dict(zero), 0, e.priority)
                         for e in c.endpoints]
            out.append((c.name, limits, hosts))
        return out

    def listeners(self):
        """[(name, host, port)] with the actual bound address where known."""
        out = []
        for l in self.proxy.config.listeners:
            try:
                host, port = self.proxy.listener_address(l.name)[:2]
            except Exception:
                host, port = l.address, l.port
            out.append((l.name, host, port))
        return out

    def request_shutdown(self) -> None:
        self.state = "DRAINING"
        if not self._shutdown_requested:
            self._shutdown_requested = True
            log.info("shutdown requested through /quitquitquit")
        self.proxy.request_shutdown()


# A host's counters and gauges, in the order Envoy's /clusters?format=json lists them (the
# core's HOST block, fastproxy/stats_table.py).
HOST_COUNTERS = tuple(stat for _, stat, kind in stat_block("HOST").stats if kind == COUNTER)
HOST_GAUGES = tuple(stat for _, stat, kind in stat_block("HOST").stats if kind == GAUGE)


OUTLIER_CLUSTER_LINES = ("success_rate_average", "success_rate_ejection_threshold",
                         "local_origin_success_rate_average", "local_origin_success_rate_ejection_threshold")


def _rate(v: float) -> str:
    """A success rate as Envoy prints a double (shortest form: 100, 66.66666666666667)."""
    return str(int(v)) if v == int(v) else repr(v)


def _host_success_rates(hp: str, od, ip: str, port: int) -> list:
    """A host's /clusters success_rate lines: its last interval's (outlier detection's),
    -1 without one."""
    rates = od[4].get((ip, port), (-1, -1, False)) if od is not None else (-1, -1, False)
    return [f"{hp}::success_rate::{_rate(rates[0])}", f"{hp}::local_origin_success_rate::{_rate(rates[1])}"]


# Envoy's Host::HealthFlag, in its order: (bit, /clusters text, HostHealthStatus JSON field).
# The EDS ones are the JSON's eds_health_status instead.
HEALTH_FLAGS = (
    (_core.HOST_HEALTH_FLAGS["FAILED_ACTIVE_HC"], "failed_active_hc", "failed_active_health_check"),
    (_core.HOST_HEALTH_FLAGS["FAILED_OUTLIER_CHECK"], "failed_outlier_check", "failed_outlier_check"),
    (_core.HOST_HEALTH_FLAGS["FAILED_EDS_HEALTH"], "failed_eds_health", None),
    (_core.HOST_HEALTH_FLAGS["DEGRADED_ACTIVE_HC"], "degraded_active_hc", "failed_active_degraded_check"),
    (_core.HOST_HEALTH_FLAGS["DEGRADED_EDS_HEALTH"], "degraded_eds_health", None),
    (_core.HOST_HEALTH_FLAGS["PENDING_DYNAMIC_REMOVAL"], "pending_dynamic_removal", "pending_dynamic_removal"),
    (_core.HOST_HEALTH_FLAGS["PENDING_ACTIVE_HC"], "pending_active_hc", "pending_active_hc"),
    (_core.HOST_HEALTH_FLAGS["EXCLUDED_VIA_IMMEDIATE_HC_FAIL"], "excluded_via_immediate_hc_fail",
     "excluded_via_immediate_hc_fail"),
    (_core.HOST_HEALTH_FLAGS["ACTIVE_HC_TIMEOUT"], "active_hc_timeout", "active_hc_timeout"),
    (_core.HOST_HEALTH_FLAGS["EDS_STATUS_DRAINING"], "eds_status_draining", None),
)


def health_flags_text(flags: int) -> str:
    """A host's health flags as Envoy's /clusters prints them: "healthy", or each set flag
    as /name in Envoy's order (e.g. /failed_active_hc/failed_outlier_check)."""
    return "".join(f"/{name}" for bit, name, _ in HEALTH_FLAGS if flags & bit) or "healthy"


def _health_status_json(flags: int) -> dict:
    """Envoy's HostHealthStatus (proto3 JSON: false fields left out)."""
    out = {field: True for bit, _, field in HEALTH_FLAGS if field is not None and flags & bit}
    if flags & _core.HOST_HEALTH_FLAGS["EDS_STATUS_DRAINING"]:
        out["eds_health_status"] = "DRAINING"
    elif flags & _core.HOST_HEALTH_FLAGS["FAILED_EDS_HEALTH"]:
        out["eds_health_status"] = "UNHEALTHY"
    elif flags & _core.HOST_HEALTH_FLAGS["DEGRADED_EDS_HEALTH"]:
        out["eds_health_status"] = "DEGRADED"
    else:
        out["eds_health_status"] = "HEALTHY"
    return out


def _host_status_json(ip, port, hostname, weight, stats, flags=0, priority=0) -> dict:
    """One HostStatus as Envoy writes it (proto3 JSON: a zero value and an empty hostname
    are left out, 64-bit values are strings)."""
    out = {"address": {"socket_address": {"address": ip, "port_value": port}}, "stats": []}
    for name in HOST_COUNTERS + HOST_GAUGES:
        entry = {}
        if name in HOST_GAUGES:
            entry["type"] = "GAUGE"
        if stats.get(name):
            entry["value"] = str(stats[name])
        entry["name"] = name
        out["stats"].append(entry)
    out["health_status"] = _health_status_json(flags)
    out["weight"] = weight
    if hostname:
        out["hostname"] = hostname
    out["locality"] = {}
    if priority:
        out["priority"] = priority
    return out
def _node_json(proxy) -> dict:
    """Envoy's node object: the bootstrap's node with the command line's overrides."""
    node = getattr(getattr(proxy, "config", None), "node", None)
    if node is None:
        return {}
    return {"id": node.id, "cluster": node.cluster, "locality": {"zone": node.zone} if node.zone else {},
            "user_agent_name": "fastproxy", "user_agent_version": package_version()}


def _make_handler(admin: AdminServer):
    class Handler(_AdminHandler):
        pass

    Handler.admin = admin
    return Handler


class _AdminHandler(BaseHTTPRequestHandler):
    admin: AdminServer
    protocol_version = "HTTP/1.1"
    server_version = "fastproxy-admin"
    sys_version = ""

    # -- plumbing --------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: str, ctype: str = "text/plain; charset=UTF-8", extra=None) -> None:
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, max-age=0")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
        self.admin.log_access(self, int(code), len(data) if self.command != "HEAD" else 0,
                              getattr(self, "_started", time.time()))

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj, indent=2) + "\n", "application/json")

    def _help_text(self) -> str:
        lines = ["admin commands are:"]
        for path, what in HELP.items():
            lines.append(f"  {path}: {what}")
        return "\n".join(lines) + "\n"

    def _dispatch(self, method: str) -> None:
        self._started = time.time()
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if path not in HELP:
            self._send(HTTPStatus.NOT_FOUND, "invalid path. " + self._help_text())
            return
        if path in POST_ONLY and method != "POST":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} requires POST\n", extra={"Allow": "POST"})
            return
        # Read-only endpoints answer POST too, as Envoy's do.
        try:
            getattr(self, "_h_" + (path.strip("/").replace("/", "_") or "help"))(query)
        except Exception as e:  # an admin page must never take the proxy down
            log.exception("admin handler for %s failed", path)
            try:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"error: {e}\n")
            except OSError:
                pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self):  # noqa: N802
        # Drain any request body so a keep-alive connection stays in sync.
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self._dispatch("POST")

    # -- endpoints -------------------------------------------------------------------

    def _h_help(self, query) -> None:
        self._send(HTTPStatus.OK, self._help_text())

    def _filter(self, query):
        """(ok, compiled ?filter= regex or None); answers 400 itself when not ok."""
        pattern = query.get("filter")
        if not pattern:
            return True, None
        try:
            return True, re.compile(pattern)
        except re.error as e:
            self._send(HTTPStatus.BAD_REQUEST, f"invalid filter regex: {e}\n")
            return False, None

    def _h_stats_prometheus(self, query) -> None:
        ok, rx = self._filter(query)
        if not ok:
            return
        from .prometheus import render
        page = render(self.admin.stats(), self.admin.gauge_names(), self.admin.histograms(),
                      pattern=rx, used_only="usedonly" in query)
        self._send(HTTPStatus.OK, page)

    def _h_stats(self, query) -> None:
        if query.get("format") == "prometheus":
            self._h_stats_prometheus(query)
            return
        stats = self.admin.stats()
        ok, rx = self._filter(query)
        if not ok:
            return
        pattern = rx is not None
        if pattern:
            stats = {k: v for k, v in stats.items() if rx.search(k)}
        if "usedonly" in query:
            stats = {k: v for k, v in stats.items() if self.admin.used(k, v)}
        # Histograms that never recorded a value (a TCP-only cluster's upstream_rq_time)
        # are left out; Envoy would print "No recorded values".
        hists = {k: h for k, h in self.admin.histograms().items() if h.count}
        if pattern:
            hists = {k: v for k, v in hists.items() if rx.search(k)}
        items = sorted(stats.items())
        fmt = query.get("format", "text")
        if fmt == "json":
            from .histogram import QUANTILES
            out = [{"name": k, "value": v} for k, v in items]
            if hists:
                # Envoy's shape: one entry holding every histogram's quantiles.
                out.append({"histograms": {
                    "supported_quantiles": [q * 100 for q in QUANTILES],
                    "computed_quantiles": [
                        {"name": k, "values": [{"interval": None, "cumulative": v}
                                               for v in h.quantiles()]}
                        for k, h in sorted(hists.items())]}})
            self._json(HTTPStatus.OK, {"stats": out})
        elif fmt == "text":
            lines = [f"{k}: {v}\n" for k, v in items]
            lines += [f"{k}: {h.envoy_text()}\n" for k, h in sorted(hists.items())]
            self._send(HTTPStatus.OK, "".join(lines))
        else:
            self._send(HTTPStatus.BAD_REQUEST, f"unsupported format {fmt!r} (text, json or prometheus)\n")

    def _h_ready(self, query) -> None:
        state = self.admin.state
        self._send(HTTPStatus.OK if state == "LIVE" else HTTPStatus.SERVICE_UNAVAILABLE, state + "\n")

    def _h_server_info(self, query) -> None:
        up = _duration(self.admin.uptime)
        concurrency = int(self.admin.proxy.concurrency)
        self._json(HTTPStatus.OK, {
            "version": package_version(),
            "state": self.admin.state,
            "uptime_current_epoch": up,
            "uptime_all_epochs": up,
            "hot_restart_version": "disabled",
            "concurrency": concurrency,
            "command_line_options": {"concurrency": concurrency},
            "node": _node_json(self.admin.proxy),
        })

    def _h_memory(self, query) -> None:
        # admin.v3.Memory in proto JSON: its uint64 fields are strings.
        self._json(HTTPStatus.OK, {k: str(v) for k, v in memory_stats().items()})

    def _h_listeners(self, query) -> None:
        rows = self.admin.listeners()
        if query.get("format") == "json":
            self._json(HTTPStatus.OK, {"listener_statuses": [
                {"name": n, "local_address": {"socket_address": {"address": h, "port_value": p}}}
                for n, h, p in rows]})
        else:
            self._send(HTTPStatus.OK, "".join(f"{n}::{_fmt_hostport(h, p)}\n" for n, h, p in rows))

    def _h_clusters(self, query) -> None:
        """Envoy's /clusters: per cluster its observability name, circuit breaker limits
        (the DEFAULT priority, the one enforced), then per host its counters and gauges
        (text: sorted by name, as Envoy prints them), hostname, health flags, weight and
        locality; ?format=json is Envoy's ClusterStatuses shape."""
        rows = self.admin.cluster_rows()
        if query.get("format") == "json":
            self._json(HTTPStatus.OK, {"cluster_statuses": [
                {"name": name,
                 "host_statuses": [_host_status_json(*host) for host in hosts],
                 "circuit_breakers": {"thresholds": [
                     {k: v for k, v in limits.items()}]},
                 "observability_name": name}
                for name, limits, hosts in rows]})
            return
        lines = []
        outlier = self.admin.outlier_info()
        for name, limits, hosts in rows:
            lines.append(f"{name}::observability_name::{name}")
            od = outlier.get(name)
            if od is not None:      # the cluster's detector: last interval's (-1: none)
                lines += [f"{name}::outlier::{k}::{_rate(v)}" for k, v in zip(OUTLIER_CLUSTER_LINES, od)]
            lines += [f"{name}::default_priority::{k}::{v}" for k, v in limits.items()]
            lines.append(f"{name}::added_via_api::false")
            for ip, port, hostname, weight, stats, flags, priority in hosts:
                hp = f"{name}::{_fmt_hostport(ip, port)}"
                lines += [f"{hp}::{k}::{v}" for k, v in sorted(stats.items())]
                lines += [f"{hp}::hostname::{hostname}", f"{hp}::health_flags::{health_flags_text(flags)}",
                          f"{hp}::weight::{weight}", f"{hp}::region::", f"{hp}::zone::",
                          f"{hp}::sub_zone::", f"{hp}::canary::false", f"{hp}::priority::{priority}",
                          *_host_success_rates(hp, od, ip, port)]
        self._send(HTTPStatus.OK, "".join(l + "\n" for l in lines))

    def _h_config_dump(self, query) -> None:
        """Envoy's /config_dump: JSON with a one-space indent as Envoy's; an empty result
        (a resource list with no entries) is ``{}``; what Envoy refuses gets its status
        and message as text."""
        from .config.dump import DumpQueryError
        try:
            dump = self.admin.proxy.config_dump(query.get("resource") or None, query.get("mask") or None,
                                                include_eds="include_eds" in query)
        except DumpQueryError as e:
            self._send(e.status, e.message)
            return
        # A Python filter's config given in Python may hold objects JSON has no form for:
        # shown as their repr rather than failing the page.
        self._send(HTTPStatus.OK, json.dumps(dump, indent=1, default=repr) + "\n", "application/json")

    def _h_quitquitquit(self, query) -> None:
        # DRAINING before the answer: a client that reads "OK" and asks /ready at once must
        # not see LIVE; the proxy is told to stop only after the answer is out.
        self.admin.state = "DRAINING"
        self._send(HTTPStatus.OK, "OK\n", extra={"Connection": "close"})
        self.close_connection = True
        self.admin.request_shutdown()
