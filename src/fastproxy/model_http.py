"""Deprecated: the HTTP model moved to ``fastproxy.http.model``; import its public names from
``fastproxy.http``. This module re-exports it and warns when imported from outside the package."""
from ._deprecation import warn_moved_module
from .http.model import *  # noqa: F401,F403

warn_moved_module(__name__, "fastproxy.http")
