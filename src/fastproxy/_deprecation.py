"""The warning of a module that moved (fastproxy.model_http -> fastproxy.http.model, ...)."""
from __future__ import annotations

import sys
import warnings


def warn_moved_module(old: str, new: str) -> None:
    """Warn the code that imports ``old`` (called from that module's body) that it is
    deprecated. The warning points at the importing line. An import from inside fastproxy
    is not warned about: the compiled core still names the old modules in its build code
    (core/*.pxi), and its users could do nothing about that warning."""
    # stacklevel counts the frames warnings does not skip itself (it skips importlib's
    # _bootstrap frames); 1 is here, 2 the old module's body.
    frame, level = sys._getframe(2), 3
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        if "_bootstrap" not in frame.f_code.co_filename:
            level += 1
        frame = frame.f_back
    importer = frame.f_globals.get("__name__", "") if frame is not None else ""
    if importer == "fastproxy" or importer.startswith("fastproxy."):
        return
    warnings.warn(f"{old} is deprecated; import from {new}", DeprecationWarning, stacklevel=level)
