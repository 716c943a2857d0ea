"""Envoy access-log format strings -> the op list the data plane formats records from.

A format is compiled once, here, on the main thread; the worker only walks the op list
(core/access_log.pxi) and never runs Python. Supported command operators (Envoy's names and
meaning; anything else is a ConfigError naming the field that holds the format):

  %START_TIME%, %START_TIME(strftime)%   the stream's start, UTC; the strftime format may use
                                          %f (9 digits), %<1-9>f, %E<1-9>S, %Es (epoch
                                          seconds with 3 decimals) and %s like Envoy
  %REQ(X?Y):N%, %RESP(X?Y):N%             a request / response header (X, else Y), at most N
                                          characters; :method, :path, :authority, :scheme
                                          for the request pseudo-headers
  %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %PROTOCOL%
  %DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%
  %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% %HOSTNAME%
  %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%
  %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%
  %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%
  TLS (core/tls/info.pxi; "-" on a plaintext connection):
  %DOWNSTREAM_TLS_VERSION% (TLSv1.3) %DOWNSTREAM_TLS_CIPHER% (TLS_AES_128_GCM_SHA256,
  ECDHE-RSA-AES128-GCM-SHA256) %DOWNSTREAM_TLS_SESSION_ID% %REQUESTED_SERVER_NAME% (the
  SNI, as in Envoy only on a listener with the tls_inspector)
  %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_LOCAL_SUBJECT% (RFC 2253)
  %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_PEER_DNS_SAN%
  %DOWNSTREAM_LOCAL_DNS_SAN% (comma-separated) %DOWNSTREAM_PEER_FINGERPRINT_256% (SHA-256 hex)
  %DOWNSTREAM_PEER_SERIAL% (hex) %DOWNSTREAM_PEER_CERT_V_START(strftime)%
  %DOWNSTREAM_PEER_CERT_V_END(strftime)% (the format as %START_TIME%'s, optional)

Values that are not available print as "-", as in Envoy.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
import stat
import time
from typing import List, Optional, Tuple

from .errors import ConfigError

# Envoy's default format (used when an access log has no format).
DEFAULT_FORMAT = ('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
                  '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
                  '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
                  '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')

# Operators without an argument. Their names are also the op kinds the core knows.
SIMPLE = ("RESPONSE_CODE", "RESPONSE_FLAGS", "BYTES_RECEIVED", "BYTES_SENT", "PROTOCOL",
          "DURATION", "REQUEST_DURATION", "RESPONSE_DURATION", "RESPONSE_TX_DURATION",
          "UPSTREAM_HOST", "UPSTREAM_CLUSTER", "ROUTE_NAME",
          "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
          "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
          "DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
          "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_TLS_CIPHER", "DOWNSTREAM_TLS_SESSION_ID",
          "REQUESTED_SERVER_NAME", "DOWNSTREAM_PEER_SUBJECT", "DOWNSTREAM_LOCAL_SUBJECT",
          "DOWNSTREAM_PEER_URI_SAN", "DOWNSTREAM_LOCAL_URI_SAN", "DOWNSTREAM_PEER_DNS_SAN",
          "DOWNSTREAM_LOCAL_DNS_SAN", "DOWNSTREAM_PEER_FINGERPRINT_256", "DOWNSTREAM_PEER_SERIAL")

# Operators with an optional strftime argument, formatted like %START_TIME%.
TIMES = ("START_TIME", "DOWNSTREAM_PEER_CERT_V_START", "DOWNSTREAM_PEER_CERT_V_END")

_COMMAND = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PSEUDO = (":method", ":path", ":authority", ":scheme")

# One op: (kind, text, alternative, max_len). kind "LIT": text is the literal bytes;
# "REQ"/"RESP": text/alternative are lower-case header names (alternative b"" if none);
# "START_TIME": text is the strftime format (b"" = Envoy's default). max_len -1: no limit.
Op = Tuple[str, bytes, bytes, int]


def _header_name(name: str, path: str, request: bool) -> bytes:
    lower = name.lower()
    if lower.startswith(":"):
        if not request or lower not in _PSEUDO:
            raise ConfigError(path, f"unsupported pseudo-header {name!r} in an access log format")
        return lower.encode()
    if not _HEADER.fullmatch(name):
        raise ConfigError(path, f"invalid header name {name!r} in an access log format")
    return lower.encode()


def compile_format(fmt: Optional[str], path: str) -> List[Op]:
    """The op list for `fmt` (None: Envoy's default). `path` names the config field."""
    if fmt is None:
        fmt = DEFAULT_FORMAT
    if not isinstance(fmt, str):
        raise ConfigError(path, f"expected a string, got {type(fmt).__name__}")
    ops: List[Op] = []
    lit = []
    pos = 0

    def flush():
        if lit:
            ops.append(("LIT", "".join(lit).encode(), b"", -1))
            lit.clear()

    while pos < len(fmt):
        i = fmt.find("%", pos)
        if i < 0:
            lit.append(fmt[pos:])
            break
        lit.append(fmt[pos:i])
        m = _COMMAND.match(fmt, i)
        if m is None:
            raise ConfigError(path, f"invalid access log format at offset {i}: a '%' must start a "
                                    f"%COMMAND% (near {fmt[i:i + 24]!r})")
        name, arg, max_len = m.group(1), m.group(2), m.group(3)
        limit = int(max_len) if max_len is not None else -1
        if name in ("REQ", "RESP"):
            if not arg:
                raise ConfigError(path, f"%{name}(...)% needs a header name")
            parts = arg.split("?")
            if len(parts) > 2:
                raise ConfigError(path, f"%{name}({arg})%: at most one alternative header (X?Y)")
            main = _header_name(parts[0], path, name == "REQ")
            alt = _header_name(parts[1], path, name == "REQ") if len(parts) == 2 else b""
            flush()
            ops.append((name, main, alt, limit))
        elif name in TIMES:
            if max_len is not None:
                raise ConfigError(path, f"%{name}% takes no length limit")
            flush()
            ops.append((name, (arg or "").encode(), b"", -1))
        elif name == "HOSTNAME" and arg is None:
            lit.append(socket.gethostname()[:limit] if limit >= 0 else socket.gethostname())
        elif name in SIMPLE:
            if arg is not None:
                raise ConfigError(path, f"%{name}% takes no argument")
            flush()
            ops.append((name, b"", b"", limit))
        else:
            raise ConfigError(path, f"unsupported access log command operator %{name}%")
        pos = m.end()
    flush()
    return ops


_TIME_SPEC = re.compile(r"%([1-9]?)f|%E([1-9])S|%Es|%s")


def _start_time(fmt: bytes, start: float) -> str:
    """%START_TIME(fmt)% in Python, as the core prints it (UTC; Envoy's sub-second forms)."""
    whole = int(start)
    nanos = int(round((start - whole) * 1e9))
    if not fmt:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos // 1_000_000:03d}Z"

    def sub(m: "re.Match") -> str:
        text = m.group(0)
        if text == "%s":
            return str(whole)
        if text == "%Es":
            return f"{whole}.{nanos // 1_000_000:03d}"
        if m.group(2):
            digits = int(m.group(2))
            return time.strftime("%S", time.gmtime(whole)) + "." + f"{nanos:09d}"[:digits]
        return f"{nanos:09d}"[:int(m.group(1) or 9)]

    return time.strftime(_TIME_SPEC.sub(lambda m: sub(m).replace("%", "%%"), fmt.decode()), time.gmtime(whole))


def format_record(ops: List[Op], start: float, request: dict, response: dict, facts: dict) -> bytes:
    """One record for a request the data plane did not carry (the admin's own): ``request``
    and ``response`` map lower-case header names (and the request's pseudo-headers) to
    values, ``facts`` maps SIMPLE operator names to their values; the rest print "-"."""
    out = []
    for kind, text, alt, max_len in ops:
        if kind == "LIT":
            out.append(text.decode())
            continue
        if kind == "START_TIME":
            value = _start_time(text, start)
        elif kind in TIMES:
            value = None                # the admin's own requests are not TLS
        elif kind in ("REQ", "RESP"):
            headers = request if kind == "REQ" else response
            value = headers.get(text.decode())
            if value is None and alt:
                value = headers.get(alt.decode())
        else:
            value = facts.get(kind)
        value = "-" if value is None else str(value)
        out.append(value[:max_len] if max_len >= 0 else value)
    return "".join(out).encode("utf-8", "replace")


# Paths that name the process's own stdout/stderr (what Envoy's stdout/stderr loggers write).
INHERITED = {"/dev/stdout": 1, "/dev/stderr": 2, "/dev/fd/1": 1, "/dev/fd/2": 2,
             "/proc/self/fd/1": 1, "/proc/self/fd/2": 2}


def open_sink(path: str) -> Tuple[int, bool]:
    """The descriptor an access log writes to, and whether it is a socket (the core then
    uses send(MSG_DONTWAIT)). Records must never block a worker, and stdout/stderr are the
    process's inherited descriptors, not a fresh open() of /dev/stdout: that fails when
    stdout is a socket (systemd's journal), and on a file redirected with '>' a second open
    has an offset of its own, so lines written through one overwrite the other's.
    Raises OSError."""
    inherited = INHERITED.get(path)
    if inherited is None:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644), False
    mode = os.fstat(inherited).st_mode
    if stat.S_ISSOCK(mode):
        return fcntl.fcntl(inherited, fcntl.F_DUPFD_CLOEXEC, 0), True
    if not stat.S_ISREG(mode):
        # A pipe, FIFO or terminal: a description of its own, so that O_NONBLOCK does not
        # make the process's own stdout non-blocking (a regular file never blocks anyway).
        try:
            return os.open(f"/proc/self/fd/{inherited}", os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK), False
        except OSError:
            pass
    # A regular file: the same description, so one offset is shared with everything else
    # the process writes there.
    return fcntl.fcntl(inherited, fcntl.F_DUPFD_CLOEXEC, 0), False


__all__ = ["DEFAULT_FORMAT", "INHERITED", "compile_format", "format_record", "open_sink"]
