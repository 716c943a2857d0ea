"""Every dynamic subscription of a proxy on one resource layer: the file-based ones
(files.py) and the ADS ones (ads.py), so that what each discovers is kept beside the
other's. Proxy starts it when the bootstrap has dynamic_resources."""
from __future__ import annotations

from typing import Any

from ..model import DynamicResources
from .resources import XdsResources


class Discovery:
    """Every dynamic subscription of a proxy (files and ADS), on one resource layer, so that
    what each discovers is kept beside the other's."""

    def __init__(self, proxy: Any, dynamic: DynamicResources):
        self.resources = XdsResources(proxy, proxy.config)
        self.transports: list = []
        sources = [s for s in (dynamic.cds, dynamic.lds) if s is not None]
        if any(s.ads for s in sources):
            from .ads import AdsDiscovery       # (grpcio and xds-protos: only when needed)
            self.transports.append(AdsDiscovery(proxy, dynamic, self.resources))
        if any(not s.ads for s in sources):
            from .files import FileDiscovery
            self.transports.append(FileDiscovery(proxy, dynamic, self.resources))

    def start(self) -> None:
        started = []
        try:
            for t in self.transports:
                t.start()
                started.append(t)
        except BaseException:
            for t in started:
                t.stop()
            raise

    def wait_initial(self) -> None:
        for t in self.transports:
            if hasattr(t, "wait_initial"):
                t.wait_initial()

    def stop(self) -> None:
        for t in self.transports:
            t.stop()

    def read_stats(self) -> dict:
        out: dict = {}
        for t in self.transports:
            out.update(t.read_stats())
        return out

    def gauge_names(self) -> set:
        return set().union(*(t.gauge_names() for t in self.transports)) if self.transports else set()


__all__ = ["Discovery"]
