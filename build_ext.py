"""Build hook: cythonize the compiled core, once per change of its sources or build settings.

Switches (environment variables):
  FASTPROXY_DEBUG=1   -O0 -g3, C asserts on, Cython bounds checks on: for gdb and tests.
  FASTPROXY_ASAN=1    like DEBUG plus AddressSanitizer/LeakSanitizer (run Python with
                      LD_PRELOAD=$(gcc -print-file-name=libasan.so), see `make test-asan`).
  FASTPROXY_ANNOTATE=1  write the Cython HTML annotation next to _core.pyx.
  FASTPROXY_SKIP_CORE=1  no extension at all (the Makefile's editable install: `make core`
                      builds the module in place right after, so it is compiled once).

One build serves the in-place module (`setup.py build_ext --inplace`, `make core`) and the
wheel: setuptools compiles into build/lib.*, then copies the module into src/ when in place,
and a wheel built from the same tree finds that module up to date and reuses it. What decides
"up to date" besides timestamps are two keys, recorded in stamps under build/:

  the Cython key (directives and Cython version): what _core.c depends on besides its
      sources. A different one regenerates _core.c, unless build/cython/<key>/ keeps the
      _core.c made with it (each one made is kept there), which is put back in place and
      regenerated only if a source is newer: switching flavours back and forth runs Cython
      once per source change and flavour, not at every switch.
  the compile key (C flags, link flags, macros, include dirs, and the Cython key): a
      different one recompiles the module from _core.c, without running Cython when only
      C flags changed (debug <-> asan have the same directives).

A release module is stripped (--strip-unneeded) when it is installed into a wheel; the
in-place module keeps its symbols for perf and gdb.
"""
import hashlib
import os
import shutil
import subprocess
import sys

from setuptools import Extension
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.install_lib import install_lib as _install_lib

ROOT = os.path.dirname(os.path.abspath(__file__))
C_SOURCE = os.path.join(ROOT, "src", "fastproxy", "_core.c")
C_STAMP = os.path.join(ROOT, "build", "core-c.key")         # the Cython key of C_SOURCE
C_CACHE = os.path.join(ROOT, "build", "cython")             # <Cython key>/_core.c


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _debug() -> bool:
    return _flag("FASTPROXY_DEBUG") or _flag("FASTPROXY_ASAN")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_stats_table() -> None:
    """core/stats_table.pxi from src/fastproxy/stats_table.py (the one definition of the
    core's stat blocks); rewritten only when it changes, so Cython's timestamp check does
    not regenerate _core.c for nothing. The table is loaded by path: the package itself
    needs the core it is building."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_fastproxy_stats_table", os.path.join(ROOT, "src/fastproxy/stats_table.py"))
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    text = table.render_pxi()
    path = os.path.join(ROOT, "src/fastproxy/core/stats_table.pxi")
    if _read(path) != text:
        _write(path, text)


def _key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _c_source_for(cython_key: str) -> bool:
    """Put the _core.c generated with cython_key in place (from C_CACHE if it is not the
    one there). False: there is none (Cython must run)."""
    if _read(C_STAMP) == cython_key and os.path.exists(C_SOURCE):
        return True
    kept = os.path.join(C_CACHE, cython_key, "_core.c")
    if not os.path.exists(kept):
        return False
    shutil.copy2(kept, C_SOURCE)            # with its time: Cython's check still applies
    _write(C_STAMP, cython_key)
    print(f"core: reusing the _core.c generated with these Cython directives ({cython_key})",
          file=sys.stderr)
    return True


def _keep_c_source(cython_key: str) -> None:
    """Keep a copy of _core.c under its Cython key (if it is not already the same file)."""
    kept = os.path.join(C_CACHE, cython_key, "_core.c")
    try:
        src = os.stat(C_SOURCE)
        dst = os.stat(kept)
        if (src.st_mtime_ns, src.st_size) == (dst.st_mtime_ns, dst.st_size):
            return
    except FileNotFoundError:
        if not os.path.exists(C_SOURCE):
            return
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copy2(C_SOURCE, kept + ".tmp")
    os.replace(kept + ".tmp", kept)


def extensions():
    if _flag("FASTPROXY_SKIP_CORE"):
        return []
    write_stats_table()
    import Cython
    from Cython.Build import cythonize

    debug = _debug()
    cflags = ["-std=gnu11", "-Wno-unused-function", "-Wno-unreachable-code"]
    # OpenSSL 3 (TLS) and nghttp2 (the HTTP/2 codec; docs/http2.md says why) from the
    # system (libssl-dev, libnghttp2-dev: the Makefile installs them when missing); a wheel
    # gets libssl/libcrypto/libnghttp2 bundled by auditwheel.
    ldflags = ["-lpthread", "-lssl", "-lcrypto", "-lnghttp2"]
    macros = []
    if debug:
        cflags += ["-O0", "-g3", "-UNDEBUG", "-fno-omit-frame-pointer"]
    else:
        cflags += ["-O2", "-DNDEBUG"]
    if _flag("FASTPROXY_ASAN"):
        cflags += ["-fsanitize=address"]
        ldflags += ["-fsanitize=address"]
    include_dirs = ["src/fastproxy/core/includes", "src/fastproxy/include"]
    directives = {
        "language_level": "3",
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": debug,
        "embedsignature": True,
        "freethreading_compatible": False,
    }
    cython_key = _key(sorted(directives.items()), Cython.__version__)
    key = _key(cflags, ldflags, macros, include_dirs, cython_key)
    ext = Extension(
        "fastproxy._core",
        ["src/fastproxy/_core.pyx"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=macros,
        include_dirs=include_dirs,
    )
    # Cython regenerates _core.c when a source is newer; other directives also need it
    # regenerated, which timestamps cannot tell: the _core.c generated with these
    # directives before, if kept, comes back with its own time (so a source changed since
    # still regenerates it), else Cython runs.
    regenerate = not _c_source_for(cython_key)
    exts = cythonize(
        [ext],
        compiler_directives=directives,
        annotate=_flag("FASTPROXY_ANNOTATE"),
        include_path=["src"],
        force=regenerate,
    )
    _write(C_STAMP, cython_key)
    _keep_c_source(cython_key)
    for e in exts:
        e.fastproxy_key = key
    return exts


class BuildExt(_build_ext):
    """Recompile a module whose build key differs from the one it was built with, even when
    it is newer than _core.c (a debug module left in build/lib.* must not reach a wheel)."""

    def build_extension(self, ext):
        key = getattr(ext, "fastproxy_key", "")
        stamp = os.path.join(self.build_temp, ext.name + ".key")
        force = self.force
        had = _read(stamp)
        if key and had != key:
            if had:
                print(f"core: build settings changed since the last build ({self.build_temp}): "
                      "compiling again", file=sys.stderr)
            self.force = True
        try:
            super().build_extension(ext)
        finally:
            self.force = force
        if key:
            _write(stamp, key)


class InstallLib(_install_lib):
    """Strip the release module on its way into a wheel (or any install): debug symbols are
    most of its size and no user of the wheel needs them."""

    def install(self):
        outfiles = super().install() or []
        if _debug():
            return outfiles
        suffixes = (".so",)
        modules = [f for f in outfiles if f.endswith(suffixes) and "/fastproxy/" in f.replace(os.sep, "/")]
        strip = shutil.which("strip")
        if modules and not strip:
            print("warning: no `strip` found (binutils): the wheel's module keeps its debug symbols",
                  file=sys.stderr)
            return outfiles
        for m in modules:
            subprocess.run([strip, "--strip-unneeded", m], check=True)
        return outfiles


def cmdclass():
    return {"build_ext": BuildExt, "install_lib": InstallLib}
