"""The validation rules, one home each: shared by the model's ``validate()`` methods (the
Python API), the Envoy loader (fastproxy.config) and, through them, the core's builders
(which assume validated input). Each rule raises ConfigError naming the field's path.

This module imports nothing from the package but errors, so every layer can use it.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterator, Optional

from .errors import ConfigError

# Envoy's enums the HTTP model names, name -> proto number (the loader reads either).
SERVER_HEADER_TRANSFORMATIONS = {"OVERWRITE": 0, "APPEND_IF_ABSENT": 1, "PASS_THROUGH": 2}
HEADERS_WITH_UNDERSCORES_ACTIONS = {"ALLOW": 0, "REJECT_REQUEST": 1, "DROP_HEADER": 2}
PATH_WITH_ESCAPED_SLASHES_ACTIONS = {"IMPLEMENTATION_SPECIFIC_DEFAULT": 0, "KEEP_UNCHANGED": 1, "REJECT_REQUEST": 2,
                                     "UNESCAPE_AND_REDIRECT": 3, "UNESCAPE_AND_FORWARD": 4}
APPEND_ACTIONS = {"APPEND_IF_EXISTS_OR_ADD": 0, "ADD_IF_ABSENT": 1, "OVERWRITE_IF_EXISTS_OR_ADD": 2,
                  "OVERWRITE_IF_EXISTS": 3}
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
DNS_LOOKUP_FAMILIES = {"AUTO": 0, "V4_ONLY": 1, "V6_ONLY": 2, "V4_PREFERRED": 3, "ALL": 4}

MAX_PORT = 65535


def describe(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- types and ranges (the Python API: the loader's proto readers check these as they read) --

def fail(path: str, message: str) -> None:
    raise ConfigError(path, message)


def typed(value: Any, cls: type, path: str) -> Any:
    if not isinstance(value, cls):
        fail(path, f"expected {cls.__name__}, got {type(value).__name__}")
    return value


def string(value: Any, path: str, non_empty: bool = False, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        fail(path, f"expected a string, got {value!r}")
    if non_empty and not value:
        fail(path, "must not be empty")
    return value


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        fail(path, f"expected True or False, got {value!r}")


def integer(value: Any, path: str, low: int, high: Optional[int] = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        fail(path, f"expected an integer {f'{low}..{high}' if high is not None else f'>= {low}'}"
                   f"{' or None' if optional else ''}, got {value!r}")


def seconds(value: Any, path: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        fail(path, f"expected a non-negative number of seconds{' or None' if optional else ''}, got {value!r}")


def timeout(path: str, value: Any, allow_none: bool = True) -> Optional[float]:
    """A listener's or cluster's timeout in seconds (None: disabled, where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(path, f"timeout must be a non-negative number of seconds, got {value!r}")
    return float(value)


def each(value: Any, path: str, cls: Optional[type] = None) -> Iterator:
    """The items of a list field with their paths (``cls``: each must be one)."""
    if not isinstance(value, (list, tuple)):
        fail(path, f"expected a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if cls is not None:
            typed(item, cls, f"{path}[{i}]")
        yield item, f"{path}[{i}]"


def one_of(value: Any, path: str, allowed) -> None:
    """An enum given by name."""
    if value not in allowed:
        fail(path, f"expected one of {', '.join(allowed)}, got {value!r}")


def port(path: str, value: Any, allow_zero: bool) -> int:
    """A TCP port (``allow_zero``: 0 asks the kernel for one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"port must be an integer, got {value!r}")
    if not (0 if allow_zero else 1) <= value <= MAX_PORT:
        raise ConfigError(path, f"port {value} out of range {0 if allow_zero else 1}..{MAX_PORT}")
    return value


# --- HTTP syntax --------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# The path_separated_prefix rule of Envoy's proto (at least two characters, no '?' or '#',
# not ending with '/').
_PATH_SEPARATED_PREFIX = re.compile(r"[^?#]+[^?#/]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB
_SPACE = re.compile(r"\s")    # what str.isspace() calls a space (re uses the same table)


def is_token(name: Any) -> bool:
    """An RFC 9110 token (a valid header field name)."""
    return isinstance(name, str) and _TOKEN.fullmatch(name) is not None


def check_header_name(name: str, path: str, pseudo: bool = False) -> str:
    """A header name (``pseudo``: a ':method'-style pseudo-header is allowed); returns it
    lower-cased."""
    bare = name[1:] if pseudo and name.startswith(":") else name
    if not is_token(bare):
        raise ConfigError(path, f"{name!r} is not a valid HTTP header name")
    return name.lower()


def check_modifiable(name: str, path: str, verb: str) -> None:
    """Envoy refuses to add, set or remove pseudo-headers and Host through header lists."""
    if name.startswith(":") or name.lower() == "host":
        raise ConfigError(path, f":-prefixed or host headers may not be {verb} ({name!r})")


def check_header_value(value: str, path: str) -> None:
    if _CONTROL.search(value):
        raise ConfigError(path, f"control characters are not allowed in a header value: {describe(value)}")


def check_host_value(value: str, path: str) -> None:
    """A Host value the proxy supplies itself: host[:port], no spaces, controls or '/'."""
    if not value or any(c.isspace() or c in "/?#@" for c in value) or _CONTROL.search(value):
        raise ConfigError(path, f"{value!r} is not a valid host")


def check_domain(domain: str, path: str) -> None:
    if not domain:
        raise ConfigError(path, "a domain must not be empty")
    if _SPACE.search(domain) or _CONTROL.search(domain):
        raise ConfigError(path, f"{domain!r} is not a valid host")
    if domain == "*":
        return
    stars = domain.count("*")
    if stars and not (stars == 1 and (domain[0] == "*" or domain[-1] == "*")):
        raise ConfigError(path, f"invalid wildcard domain {domain!r}: '*' may only be the whole domain, "
                                "its first character ('*.example.com') or its last ('example.*')")


def check_path_separated_prefix(value: str, path: str) -> None:
    if not _PATH_SEPARATED_PREFIX.fullmatch(value):
        raise ConfigError(path, "path_separated_prefix must not contain '?' or '#', must not end with '/' "
                                f"and needs at least two characters, got {value!r}")


def check_scheme(value: str, path: str) -> None:
    if not _SCHEME.fullmatch(value):
        raise ConfigError(path, f"{value!r} is not a URI scheme")


def literal_header_value(value: str, path: str) -> str:
    """Envoy parses header values as substitution formats: "%%" is a literal percent sign,
    "%NAME%" a substitution (not supported yet), a lone "%" an error."""
    if "%" not in value:
        return value
    pieces = value.split("%%")
    if any("%" in piece for piece in pieces):
        raise ConfigError(path, f"header value substitutions (%...%) are not supported yet; write %% for a "
                                f"literal percent sign: {describe(value)}")
    return "%".join(pieces)


def check_redirect_host(host: str, path: str) -> None:
    """A redirect's host_redirect: a host, no whitespace, controls or '/'."""
    if any(c.isspace() for c in host) or _CONTROL.search(host) or "/" in host:
        raise ConfigError(path, f"{host!r} is not a valid host")


def parse_cidr(text: str, path: str):
    """"prefix/len" -> an ipaddress network, as Envoy's CidrRange makes it: host bits
    dropped, a length past the address's bits taken as all of them. ConfigError naming
    ``path`` if it is not one."""
    prefix, sep, length = text.partition("/")
    try:
        if not sep or not length.isdigit():
            raise ValueError("expected prefix/length")
        address = ipaddress.ip_address(prefix)
        return ipaddress.ip_network(f"{address}/{min(int(length), address.max_prefixlen)}", strict=False)
    except ValueError as e:
        raise ConfigError(path, f"{text!r} is not a CIDR range ({e})") from None
