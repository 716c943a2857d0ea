"""What active health checks cost: one cluster of N endpoints (default 1,000), each checked
every second, in fastproxy and in Envoy 1.40 on the same bootstrap; the proxy's CPU time
over a measured window, as a share of one core.

The endpoints are N listening ports on 127.0.0.1 served by one small epoll server (a
process of its own, not measured): it answers every HTTP/1.1 request with 200 and keeps
connections open (the checkers reuse them, Envoy's default), and accepts TCP connect checks.
The proxy gets no traffic, so no_traffic_interval is set to the interval (Envoy's default
would check an idle cluster every 60 s).

    python benchmarks/health_check_bench.py [--endpoints 1000] [--seconds 20] [--kind http|tcp]
        [--only fastproxy,envoy]

Prints one row per proxy: checks per second seen by the proxy's own stats
(health_check.attempt), successes, CPU % of one core (utime + stime of the proxy process
from /proc, over the window), and the ratio to the goal (< 5 %).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def serve(n: int, ready_fd: int) -> None:
    """The endpoints: n listening ports and their connections on one epoll loop. Writes the
    ports (one line, space-separated) to ready_fd, then serves until killed."""
    _raise_nofile(4 * n + 64)
    sel = selectors.EpollSelector()
    ports = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "listen")
        ports.append(s.getsockname()[1])
    os.write(ready_fd, (" ".join(map(str, ports)) + "\n").encode())
    os.close(ready_fd)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data == "listen":
                try:
                    c, _ = sock.accept()
                except OSError:
                    continue
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ, bytearray())
                continue
            try:
                d = sock.recv(65536)
            except OSError:
                d = b""
            if not d:
                sel.unregister(sock)
                sock.close()
                continue
            buf = key.data
            buf += d
            while b"\r\n\r\n" in buf:
                del buf[:buf.index(b"\r\n\r\n") + 4]
                try:
                    sock.send(RESPONSE)
                except OSError:
                    pass


def bootstrap(ports, kind: str) -> str:
    check = {"http": "      http_health_check: {path: /health}\n", "tcp": "      tcp_health_check: {}\n"}[kind]
    eps = "".join(f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n"
                  for p in ports)
    return f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: many
  clusters:
  - name: many
    connect_timeout: 1s
    health_checks:
    - timeout: 1s
      interval: 1s
      no_traffic_interval: 1s
      unhealthy_threshold: 2
      healthy_threshold: 1
{check}    load_assignment:
      cluster_name: many
      endpoints:
      - lb_endpoints:
{eps}"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK       # utime, stime


def read_stat(admin: str, name: str) -> int:
    with urllib.request.urlopen(f"http://{admin}/stats", timeout=5) as r:
        for line in r.read().decode().splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
    return 0


def run_proxy(which: str, cfg: pathlib.Path, tmp: pathlib.Path, seconds: float, warmup: float) -> dict:
    admin_file = tmp / f"{which}.admin"
    admin_file.unlink(missing_ok=True)
    if which == "envoy":
        envoy = shutil.which("envoy") or str(pathlib.Path(sys.executable).parent / "envoy")
        argv = [envoy, "--disable-hot-restart", "--log-level", "critical"]
    else:
        argv = [sys.executable, "-m", "fastproxy", "--log-level", "critical"]
    argv += ["-c", str(cfg), "--concurrency", "1", "--admin-address-path", str(admin_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: _raise_nofile(8192))
    try:
        deadline = time.monotonic() + 30
        while not (admin_file.exists() and admin_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{which} did not start")
            time.sleep(0.05)
        admin = admin_file.read_text().strip()
        time.sleep(warmup)                  # connections made, first rounds done
        a0, s0, c0, t0 = (read_stat(admin, "cluster.many.health_check.attempt"),
                          read_stat(admin, "cluster.many.health_check.success"), cpu_seconds(proc.pid),
                          time.monotonic())
        time.sleep(seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        a1, s1 = (read_stat(admin, "cluster.many.health_check.attempt"),
                  read_stat(admin, "cluster.many.health_check.success"))
        healthy = read_stat(admin, "cluster.many.health_check.healthy")
        return {"checks_per_s": (a1 - a0) / (t1 - t0), "success_per_s": (s1 - s0) / (t1 - t0),
                "cpu_pct": 100.0 * (c1 - c0) / (t1 - t0), "healthy": healthy}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--kind", choices=("http", "tcp"), default="http")
    ap.add_argument("--only", default="fastproxy,envoy")
    args = ap.parse_args()
    _raise_nofile(8192)
    r, w = os.pipe()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(args.endpoints), str(w)], pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        ports = [int(p) for p in f.readline().split()]
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = pathlib.Path(d)
            cfg = tmp / "bootstrap.yaml"
            cfg.write_text(bootstrap(ports, args.kind))
            print(f"{args.endpoints} endpoints, {args.kind} checks every 1 s, window {args.seconds:g} s",
                  file=sys.stderr)
            print(f"| proxy | checks/s | successes/s | healthy | CPU (% of one core) |")
            print(f"| --- | --- | --- | --- | --- |")
            for which in args.only.split(","):
                res = run_proxy(which, cfg, tmp, args.seconds, args.warmup)
                print(f"| {which} | {res['checks_per_s']:.0f} | {res['success_per_s']:.0f} | {res['healthy']} "
                      f"| {res['cpu_pct']:.2f} |", flush=True)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
