"""Turn what the caller handed to load_envoy (a path, YAML/JSON text or a dict) into plain
Python data. Syntax errors become ConfigError("", ...) with the line and column.

Duplicate mapping keys are rejected: YAML and JSON parsers otherwise keep the last value
silently, so a repeated key is almost always a mistake that would change the config unseen.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Union

import yaml

from ..errors import ConfigError

Source = Union[str, bytes, "os.PathLike[str]", Mapping]

_FILE_SUFFIXES = (".yaml", ".yml", ".json")

# The C parser is several times faster; the constructor (where duplicates are caught) is
# Python either way.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):
    """yaml safe loader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # Duplicates are looked for among the keys written in this mapping only: keys brought in
    # by a YAML merge (<<: *anchor) may legitimately be overridden.
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise ConfigError("", f"unhashable mapping key at {_where(key_node.start_mark)}") from None
        if duplicate:
            raise ConfigError("", f"duplicate key {key!r} at {_where(key_node.start_mark)}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)  # SafeLoader's, which resolves merges


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def parse_yaml(text: Union[str, bytes], origin: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at {_where(mark)}" if mark is not None else ""
        raise ConfigError("", f"{origin}: YAML syntax error{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"{origin}: YAML error: {e}") from None


def _json_pairs(pairs: list) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError("", f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(text: Union[str, bytes], origin: str = "<string>") -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_pairs)
    except json.JSONDecodeError as e:
        raise ConfigError("", f"{origin}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ConfigError as e:  # a duplicate key: json gives no position, name the file at least
        raise ConfigError("", f"{origin}: {e.message}") from None


def read_file(path: Union[str, "os.PathLike[str]"]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read config file {os.fspath(path)!r}: {e}") from None


def _looks_like_path(source: str) -> bool:
    # Text with a newline is never a path; otherwise trust the suffix or the file system.
    if "\n" in source:
        return False
    return source.lower().endswith(_FILE_SUFFIXES) or os.path.isfile(source)


def load_source(source: Source) -> Any:
    """Parse ``source`` into plain data (dicts, lists, scalars); see load_envoy for the forms."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, (str, os.PathLike)) and "\n" not in os.fspath(source) and os.path.isdir(source):
        raise ConfigError("", f"{os.fspath(source)!r} is a directory, not a bootstrap file "
                              "(.yaml, .yml or .json)")
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        path = os.fspath(source)
        text = read_file(path)
        if path.lower().endswith(".json"):
            return parse_json(text, path)
        return parse_yaml(text, path)
    if isinstance(source, (str, bytes)):
        # Inline text is read as YAML, like Envoy's --config-yaml. JSON is nearly a subset of
        # YAML, but not quite (tab indentation), so text that looks like JSON is tried as JSON
        # first; a YAML flow mapping also starts with "{" and falls through to YAML.
        if source.lstrip()[:1] in ("{", b"{"):
            try:
                return json.loads(source, object_pairs_hook=_json_pairs)
            except json.JSONDecodeError:
                pass
            except ConfigError as e:
                raise ConfigError("", f"<string>: {e.message}") from None
        return parse_yaml(source)
    raise ConfigError("", f"expected a path, YAML/JSON text or a dict, got {type(source).__name__}")
