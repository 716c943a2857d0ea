#!/usr/bin/env python3
"""Build the example C filter (header_filter.c) with cffi's API mode.

    python examples/c_filter/build.py [--out DIR]

produces DIR/_c_header_filter.<abi>.so (default DIR: this directory), an extension module
whose ``lib.header_filter_table`` is the filter's ``fp_http_filter`` table. Use it::

    from _c_header_filter import ffi, lib
    fastproxy.Proxy.register_c_filter("c_header", ffi.addressof(lib, "header_filter_table"), lib)

or, without registering, in a Python-built config::

    fastproxy.CHttpFilter("c_header",
                          table=int(ffi.cast("uintptr_t", ffi.addressof(lib, "header_filter_table"))),
                          config={"header": "x-c-filter"}, keepalive=lib)
"""
from __future__ import annotations

import argparse
import os
import sys

import cffi

import fastproxy

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "_c_header_filter"

# Only what Python touches: the table, as a struct cffi need not know the layout of ("...").
CDEF = """
typedef struct fp_http_filter { uint32_t abi_version; ...; } fp_http_filter;
extern fp_http_filter header_filter_table;
"""


def make_ffi() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        MODULE,
        '#include "fastproxy_filter.h"\n'
        "extern fp_http_filter header_filter_table;\n",
        sources=[os.path.join(HERE, "header_filter.c")],
        include_dirs=[fastproxy.get_include()],
        extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra"],
    )
    return ffi


def build(out_dir: str = HERE, verbose: bool = False) -> str:
    """Compile the module into out_dir; returns the path of the shared object."""
    os.makedirs(out_dir, exist_ok=True)
    return make_ffi().compile(tmpdir=out_dir, verbose=verbose)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=HERE, help="output directory (default: next to this script)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    print(build(os.path.abspath(args.out), args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
