"""The warning of a module that moved (fastproxy.model_http -> fastproxy.http.model, ...)."""
from __future__ import annotations

import sys
import warnings


def warn_moved_module(old: str, new: str) -> None:
    """Warn the code that imports ``old`` (called from that module's body) that it is
    deprecated. The warning points at the importing line. Nothing inside fastproxy, the
    compiled core included, imports the old modules (tests/config/test_python_api.py)."""
    # stacklevel counts the frames warnings does not skip itself (it skips importlib's
    # _bootstrap frames); 1 is here, 2 the old module's body.
    frame, level = sys._getframe(2), 3
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        if "_bootstrap" not in frame.f_code.co_filename:
            level += 1
        frame = frame.f_back
    warnings.warn(f"{old} is deprecated; import from {new}", DeprecationWarning, stacklevel=level)
