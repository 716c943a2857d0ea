"""Logging set-up for the command line: the ``fastproxy`` logger, Envoy-style lines.

A line looks like Envoy's default format::

    [2025-01-31 12:00:00.123][41234][info][main] fastproxy 0.1.0 starting

that is ``[date time.millis][thread id][level][component] message``. The component is
the logger name below ``fastproxy`` (``fastproxy.admin`` -> ``admin``), or ``main`` for
the ``fastproxy`` logger itself.

Library code only ever gets loggers with :func:`logging.getLogger` and never configures
them; :func:`setup` is for programs (the CLI calls it once).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import IO, Callable, Dict, List, Optional

#: Envoy's ``trace`` level, below DEBUG.
TRACE = 5
#: Level used for ``off``: above every level anything logs at.
OFF = logging.CRITICAL + 10

logging.addLevelName(TRACE, "TRACE")

#: Accepted ``--log-level`` values (Envoy's names, plus ``warn`` as an alias).
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": OFF,
}

ROOT = "fastproxy"


def components() -> tuple:
    """The components fastproxy logs under (``--component-log-level``): ``main`` for the
    ``fastproxy`` logger itself, and X for each ``fastproxy.X`` logger its modules made."""
    names = {name[len(ROOT) + 1:].split(".")[0] for name in logging.Logger.manager.loggerDict
             if name.startswith(ROOT + ".")}
    return ("main",) + tuple(sorted(names))


def component_of(name: str) -> str:
    if name == ROOT:
        return "main"
    if name.startswith(ROOT + "."):
        return name[len(ROOT) + 1:]
    return name


def logger_for(component: str) -> logging.Logger:
    return logging.getLogger(ROOT if component == "main" else f"{ROOT}.{component}")


_LEVEL_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "critical"}


def _level(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelno, record.levelname.lower())


def _strftime(fmt: str) -> Callable[[logging.LogRecord], str]:
    return lambda r: time.strftime(fmt, time.localtime(r.created))


def _frac(digits: int) -> Callable[[logging.LogRecord], str]:
    return lambda r: f"{int((r.created % 1) * 10 ** digits):0{digits}d}"


# spdlog's pattern flags (what Envoy's --log-format takes) that mean something here.
_FLAGS: Dict[str, Callable[[logging.LogRecord], str]] = {
    "v": lambda r: r.getMessage(),
    "_": lambda r: r.getMessage().encode("unicode_escape").decode("ascii"),  # Envoy: escaped message
    "j": lambda r: r.getMessage().encode("unicode_escape").decode("ascii").replace('"', '\\"'),
    # The record is formatted on the thread that emitted it (StreamHandler is synchronous),
    # so this is the emitting thread's kernel id, like Envoy's %t.
    "t": lambda r: str(threading.get_native_id()),
    "P": lambda r: str(os.getpid()),
    "n": lambda r: component_of(r.name),
    "l": _level,
    "L": lambda r: _level(r)[:1].upper(),
    "Y": _strftime("%Y"), "C": _strftime("%y"), "m": _strftime("%m"), "d": _strftime("%d"),
    "H": _strftime("%H"), "I": _strftime("%I"), "M": _strftime("%M"), "S": _strftime("%S"),
    "p": _strftime("%p"), "a": _strftime("%a"), "A": _strftime("%A"), "b": _strftime("%b"),
    "h": _strftime("%b"), "B": _strftime("%B"), "c": _strftime("%a %b %d %H:%M:%S %Y"),
    "D": _strftime("%m/%d/%y"), "x": _strftime("%m/%d/%y"), "T": _strftime("%H:%M:%S"),
    "X": _strftime("%H:%M:%S"), "R": _strftime("%H:%M"), "r": _strftime("%I:%M:%S %p"), "z": _strftime("%z"),
    "E": lambda r: str(int(r.created)),
    "e": _frac(3), "f": _frac(6), "F": _frac(9),
    # Source location: the Python module that logged (Envoy shows its C++ file).
    "g": lambda r: r.pathname, "s": lambda r: r.filename, "#": lambda r: str(r.lineno),
    "@": lambda r: f"{r.filename}:{r.lineno}", "!": lambda r: r.funcName,
    "^": lambda r: "", "$": lambda r: "",                 # colour range: no colours here
    "%": lambda r: "%",
}


def compile_pattern(pattern: str) -> List[Callable[[logging.LogRecord], str]]:
    """An spdlog pattern (Envoy's --log-format) -> the parts of a line; ValueError names an
    unsupported flag."""
    parts: List[Callable[[logging.LogRecord], str]] = []
    text: List[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch != "%":
            text.append(ch)
            i += 1
            continue
        flag = pattern[i + 1:i + 2]
        if flag not in _FLAGS:
            raise ValueError(f"unsupported log format flag %{flag} at offset {i} (supported: "
                             f"{' '.join('%' + f for f in _FLAGS)})" if flag else
                             "the log format ends with a lone '%' (write %% for a percent sign)")
        if text:
            literal = "".join(text)
            parts.append(lambda r, literal=literal: literal)
            text = []
        parts.append(_FLAGS[flag])
        i += 2
    if text:
        literal = "".join(text)
        parts.append(lambda r, literal=literal: literal)
    return parts


class EnvoyFormatter(logging.Formatter):
    """``[%Y-%m-%d %H:%M:%S.mmm][tid][level][component] message`` by default, or an spdlog
    pattern (Envoy's ``--log-format``)."""

    def __init__(self, pattern: Optional[str] = None):
        super().__init__()
        self._parts = compile_pattern(pattern) if pattern is not None else None

    def format(self, record: logging.LogRecord) -> str:
        if self._parts is not None:
            line = "".join(part(record) for part in self._parts)
        else:
            secs = int(record.created)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs))
            millis = int((record.created - secs) * 1000)
            tid = threading.get_native_id()
            line = (f"[{stamp}.{millis:03d}][{tid}][{_level(record)}][{component_of(record.name)}] "
                    f"{record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _Handler(logging.StreamHandler):
    """Marks the handler :func:`setup` installed, so a second call replaces it."""


def parse_level(name: str) -> int:
    """The numeric level for an Envoy level name; ValueError if unknown."""
    try:
        return LEVELS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"invalid log level {name!r} (expected one of: {', '.join(LEVELS)})") from None


def parse_component_levels(text: str) -> Dict[str, int]:
    """Envoy's ``--component-log-level upstream:debug,config:trace`` -> {component: level};
    ValueError when an entry is malformed or a level unknown."""
    out: Dict[str, int] = {}
    for entry in text.split(","):
        name, sep, level = entry.strip().partition(":")
        if not sep or not name or not level:
            raise ValueError(f"invalid component log level {entry.strip()!r} (expected component:level, "
                             "e.g. upstream:debug)")
        out[name] = parse_level(level)
    return out


def setup(level: "str | int" = "info", stream: Optional[IO[str]] = None, pattern: Optional[str] = None,
          component_levels: Optional[Dict[str, int]] = None) -> logging.Logger:
    """Configure the ``fastproxy`` logger: level, Envoy-style format (or the spdlog
    ``pattern``), one handler on ``stream`` (stderr by default), and a level per component
    ({"admin": logging.DEBUG}; see components()). Calling it again replaces the previous set-up."""
    lvl = parse_level(level) if isinstance(level, str) else int(level)
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if isinstance(h, _Handler):
            logger.removeHandler(h)
    known = components()
    for name in known[1:]:
        logger_for(name).setLevel(logging.NOTSET)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(EnvoyFormatter(pattern))
    logger.addHandler(handler)
    levels = dict(component_levels or {})
    if "main" in levels:
        # main is the parent of every other component: they keep `level` unless named.
        logger.setLevel(levels.pop("main"))
        for name in known[1:]:
            logger_for(name).setLevel(lvl)
    else:
        logger.setLevel(lvl)
    for name, component_level in levels.items():
        logger_for(name).setLevel(component_level)
    # Our handler prints the lines; do not print them a second time through the root
    # logger if the embedding program configured one.
    logger.propagate = False
    return logger


def trace(logger: logging.Logger, msg: str, *args) -> None:
    """Log at Envoy's ``trace`` level."""
    if logger.isEnabledFor(TRACE):
        logger.log(TRACE, msg, *args)
