"""Deprecated: the HTTP model moved to ``fastproxy.http.model``; import its public names from
``fastproxy.http``. This module re-exports it and warns on import."""
import warnings

from .http.model import *  # noqa: F401,F403

warnings.warn("fastproxy.model_http is deprecated; import from fastproxy.http", DeprecationWarning, stacklevel=2)
