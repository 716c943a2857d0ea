"""Deprecated: the native HTTP filters' configs moved to ``fastproxy.http.native_filters``; import its public names from
``fastproxy.http``. This module re-exports it and warns when imported from outside the package."""
from ._deprecation import warn_moved_module
from .http.native_filters import *  # noqa: F401,F403
from .http.native_filters import __all__  # noqa: F401

warn_moved_module(__name__, "fastproxy.http")
