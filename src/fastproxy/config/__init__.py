"""Configuration loaders. Today: Envoy v3 bootstrap files (YAML or JSON) -> model.Bootstrap.

Only submodules are imported here (never the compiled core), so the loader works, and can
be tested, without building the data plane.
"""
from .envoy import load_envoy, load_envoy_json, load_envoy_yaml

__all__ = ["load_envoy", "load_envoy_yaml", "load_envoy_json"]
