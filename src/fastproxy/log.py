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
import sys
import threading
import time
from typing import IO, Optional

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


class EnvoyFormatter(logging.Formatter):
    """``[%Y-%m-%d %H:%M:%S.mmm][tid][level][component] message``."""

    def format(self, record: logging.LogRecord) -> str:
        secs = int(record.created)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs))
        millis = int((record.created - secs) * 1000)
        name = record.name
        if name == ROOT:
            component = "main"
        elif name.startswith(ROOT + "."):
            component = name[len(ROOT) + 1:]
        else:
            component = name
        # The record is formatted on the thread that emitted it (StreamHandler is
        # synchronous), so this is the emitting thread's kernel id, like Envoy's %t.
        tid = threading.get_native_id()
        line = f"[{stamp}.{millis:03d}][{tid}][{record.levelname.lower()}][{component}] {record.getMessage()}"
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


def setup(level: "str | int" = "info", stream: Optional[IO[str]] = None) -> logging.Logger:
    """Configure the ``fastproxy`` logger: level, Envoy-style format, one handler on
    ``stream`` (stderr by default). Calling it again replaces the previous set-up."""
    lvl = parse_level(level) if isinstance(level, str) else int(level)
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if isinstance(h, _Handler):
            logger.removeHandler(h)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(EnvoyFormatter())
    logger.addHandler(handler)
    logger.setLevel(lvl)
    # Our handler prints the lines; do not print them a second time through the root
    # logger if the embedding program configured one.
    logger.propagate = False
    return logger


def trace(logger: logging.Logger, msg: str, *args) -> None:
    """Log at Envoy's ``trace`` level."""
    if logger.isEnabledFor(TRACE):
        logger.log(TRACE, msg, *args)
