"""Readers shared by the HTTP connection manager's loader (config/http.py) and the native
HTTP filters' (config/http_filters_native.py): protobuf oneofs and bools, string and header
matchers, and what an HTTP filter kind is. A module of its own so that neither loader
imports the other's internals.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from ..errors import ConfigError
from ..http import model as mh
from ..validation import check_header_name
from .proto import INT64_MAX, Message, describe, integer
from .regex import re2_to_posix

INT64_MIN = -INT64_MAX - 1


def _bool(msg: Message, name: str, default: bool = False) -> bool:
    """A bool or google.protobuf.BoolValue field (both are a plain JSON bool)."""
    value = msg.raw(name)
    if value is None:
        return default
    if isinstance(value, str) and value in ("true", "false"):  # protobuf JSON accepts these too
        return value == "true"
    if not isinstance(value, bool):
        raise ConfigError(msg.at(name), f"expected true or false, got {describe(value)}")
    return value


def _present(msg: Message, name: str) -> bool:
    return msg.raw(name) is not None


def _oneof(msg: Message, names: tuple, required: bool = False, what: str = "") -> Optional[str]:
    """The one field of a protobuf oneof that is set (an empty string counts as set)."""
    given = [name for name in names if _present(msg, name)]
    if len(given) > 1:
        raise ConfigError(msg.at(given[1]), f"only one of {', '.join(names)} may be set "
                                            f"({given[0]} is set too)")
    if not given:
        if required:
            raise ConfigError(msg.path, f"one of {', '.join(names)} is required{what}")
        return None
    return given[0]


def _timeout(msg: Message, name: str, default: Optional[float]) -> Optional[float]:
    """A Duration where Envoy's 0s means "disabled" (None in the model)."""
    value = msg.duration(name, default=default)
    return None if value == 0 else value


def _any(msg: Message, name: str) -> Tuple[str, Mapping, str]:
    """A required google.protobuf.Any: (type URL, its fields, its path)."""
    value = msg.mapping(name)
    if value is None:
        raise ConfigError(msg.at(name), "required field is missing")
    type_url = value.get("@type")
    if not isinstance(type_url, str) or not type_url:
        raise ConfigError(msg.at(name) + ".@type", "an '@type' string is required")
    return type_url, value, msg.at(name)


@dataclass(frozen=True)
class HttpFilterKind:
    """How to read one HTTP filter's typed_config. ``terminal``: it must be last (the
    router). ``parse`` gets the typed_config as a Message of ``fields`` and returns what the
    model should hold for it (nothing yet: the model has no HTTP filter list so far)."""

    terminal: bool
    fields: tuple
    parse: Callable[[Message], Any]
    per_route: Optional[Callable[[Message], Any]] = None    # typed_per_filter_config, if it has one
    per_route_fields: tuple = ()
    per_route_types: tuple = ()                             # accepted per-route @type URLs


# --- matchers -----------------------------------------------------------------------------

_STRING_MATCH_FIELDS = mh.STRING_MATCH_KINDS + ("ignore_case",)
_REGEX_FIELDS = ("regex", "google_re2")


def _regex(msg: Message) -> str:
    """A type.matcher.v3.RegexMatcher: returns its RE2 text, checked to translate to POSIX."""
    msg.message("google_re2", ())  # the deprecated engine selector: RE2 is the only one anyway
    regex = msg.string("regex", required=True, non_empty=True)
    re2_to_posix(regex, msg.at("regex"))
    return regex


def _string_match(sm: Message) -> mh.StringMatch:
    kind = _oneof(sm, mh.STRING_MATCH_KINDS, required=True)
    ignore_case = _bool(sm, "ignore_case")
    if kind == "safe_regex":
        if ignore_case:
            raise ConfigError(sm.at("ignore_case"), "ignore_case has no effect for safe_regex (Envoy rejects it too)")
        return mh.StringMatch("safe_regex", _regex(sm.message("safe_regex", _REGEX_FIELDS)))
    return mh.StringMatch(kind, sm.string(kind, non_empty=kind != "exact"), ignore_case)


# The deprecated HeaderMatcher forms and the StringMatcher kind each stands for.
_LEGACY_HEADER_MATCHES = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                          "contains_match": "contains", "safe_regex_match": "safe_regex"}
_HEADER_SPECIFIERS = ("string_match", "present_match", "range_match") + tuple(_LEGACY_HEADER_MATCHES)


def _header_matcher(item: Any, path: str) -> mh.HeaderMatcher:
    h = Message(item, path, ("name",) + _HEADER_SPECIFIERS + ("invert_match", "treat_missing_header_as_empty"))
    name = check_header_name(h.string("name", required=True, non_empty=True), h.at("name"), pseudo=True)
    spec = _oneof(h, _HEADER_SPECIFIERS)
    string_match = present = range_match = None
    if spec == "string_match":
        string_match = _string_match(h.message("string_match", _STRING_MATCH_FIELDS))
    elif spec == "range_match":
        r = h.message("range_match", ("start", "end"))
        bounds = [integer(r.raw(k) if r.raw(k) is not None else 0, r.at(k), INT64_MIN, INT64_MAX,
                          "a signed 64-bit integer") for k in ("start", "end")]
        range_match = mh.Int64Range(*bounds)
    elif spec == "present_match":
        present = _bool(h, "present_match")
    elif spec == "safe_regex_match":
        string_match = mh.StringMatch("safe_regex", _regex(h.message(spec, _REGEX_FIELDS)))
    elif spec is not None:
        kind = _LEGACY_HEADER_MATCHES[spec]
        string_match = mh.StringMatch(kind, h.string(spec, non_empty=kind != "exact"))
    return mh.HeaderMatcher(name=name, string_match=string_match, present_match=present, range_match=range_match,
                            invert_match=_bool(h, "invert_match"),
                            treat_missing_header_as_empty=_bool(h, "treat_missing_header_as_empty"))


def _query_matcher(item: Any, path: str) -> mh.QueryParameterMatcher:
    q = Message(item, path, ("name", "string_match", "present_match"))
    name = q.string("name", required=True, non_empty=True)
    spec = _oneof(q, ("string_match", "present_match"))
    string_match = present = None
    if spec == "string_match":
        string_match = _string_match(q.message("string_match", _STRING_MATCH_FIELDS))
    elif spec == "present_match":
        present = _bool(q, "present_match")
    return mh.QueryParameterMatcher(name=name, string_match=string_match, present_match=present)
