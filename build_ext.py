"""Build hook: cythonize the compiled core.

Switches (environment variables):
  FASTPROXY_DEBUG=1   -O0 -g3, C asserts on, Cython bounds checks on: for gdb and tests.
  FASTPROXY_ASAN=1    like DEBUG plus AddressSanitizer/LeakSanitizer (run Python with
                      LD_PRELOAD=$(gcc -print-file-name=libasan.so), see `make test-asan`).
  FASTPROXY_ANNOTATE=1  write the Cython HTML annotation next to _core.pyx.
"""
import os

from setuptools import Extension


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def extensions():
    from Cython.Build import cythonize

    debug = _flag("FASTPROXY_DEBUG") or _flag("FASTPROXY_ASAN")
    cflags = ["-std=gnu11", "-Wno-unused-function", "-Wno-unreachable-code"]
    ldflags = ["-lpthread"]
    macros = []
    if debug:
        cflags += ["-O0", "-g3", "-UNDEBUG", "-fno-omit-frame-pointer"]
    else:
        cflags += ["-O2", "-DNDEBUG"]
    if _flag("FASTPROXY_ASAN"):
        cflags += ["-fsanitize=address"]
        ldflags += ["-fsanitize=address"]
    ext = Extension(
        "fastproxy._core",
        ["src/fastproxy/_core.pyx"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=macros,
        include_dirs=["src/fastproxy/core/includes", "src/fastproxy/include"],
    )
    directives = {
        "language_level": "3",
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": debug,
        "embedsignature": True,
        "freethreading_compatible": False,
    }
    return cythonize(
        [ext],
        compiler_directives=directives,
        annotate=_flag("FASTPROXY_ANNOTATE"),
        include_path=["src"],
        force=debug,
    )
