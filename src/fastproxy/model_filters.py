"""Deprecated: the native HTTP filters' configs moved to ``fastproxy.http.native_filters``; import its public names from
``fastproxy.http``. This module re-exports it and warns on import."""
import warnings

from .http.native_filters import *  # noqa: F401,F403
from .http.native_filters import __all__  # noqa: F401

warnings.warn("fastproxy.model_filters is deprecated; import from fastproxy.http", DeprecationWarning, stacklevel=2)
