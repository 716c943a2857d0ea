"""File-based discovery: Envoy's ``path_config_source``.

The file at ``path`` holds a DiscoveryResponse (JSON when its name ends in .json, else
YAML, as Envoy reads it). It is read when the proxy starts (CDS before LDS, Envoy's order)
and again when a file is *moved* into place: onto ``path`` itself, or, with
``watched_directory``, into that directory (Kubernetes updates a ConfigMap volume by
swapping its ``..data`` symlink with a rename). Only moves are watched, as in Envoy,
because only a rename replaces a file atomically: a reload never sees half a write.

Watching is inotify through ctypes (IN_MOVED_TO on the directory holding the path, or on
the watched directory): reloads follow a swap at once, without a polling interval's delay
or cost, and no dependency is needed. One daemon thread per proxy waits on the inotify
descriptor and applies reloads itself; Proxy.update() is thread-safe (the proxy's lock)
and already serves the DNS thread the same way, while the main thread of a library proxy
belongs to its user.

Envoy's counting: each reload is an update_attempt; a file that cannot be read or parsed
is an update_failure; a parsed response whose resources are refused is update_rejected.
Either way the configuration in force stays, and a warning names the type, the version
and the reason (with the field's path).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from typing import Any, Optional

from ..config.source import parse_json, parse_yaml, read_file
from ..errors import ConfigError
from ..model import ConfigSource, DynamicResources
from .resources import CLUSTER_TYPE, LISTENER_TYPE, TYPES, XdsResources, parse_discovery_response

log = logging.getLogger("fastproxy.config")   # Envoy logs xDS updates under [config]

_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")      # struct inotify_event: wd, mask, cookie, len; then the name


class Inotify:
    """The few inotify calls needed here (Linux), on a non-blocking descriptor."""

    def __init__(self):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd

    def add_watch(self, directory: str, mask: int = _IN_MOVED_TO) -> int:
        wd = self._add(self.fd, os.fsencode(directory), mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_add_watch({directory!r}): {os.strerror(e)}")
        return wd

    def rm_watch(self, wd: int) -> None:
        """Stop watching ``wd`` (already gone, e.g. its directory removed: nothing to do)."""
        self._rm(self.fd, wd)

    def read(self) -> list:
        """[(wd, name)] of the events queued now (none: [])."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + _EVENT.size <= len(data):
            wd, _, _, length = _EVENT.unpack_from(data, i)
            name = data[i + _EVENT.size:i + _EVENT.size + length].split(b"\0", 1)[0]
            out.append((wd, os.fsdecode(name)))
            i += _EVENT.size + length
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileSubscription:
    """One resource type read from one file."""

    def __init__(self, resources: XdsResources, type_url: str, source: ConfigSource):
        self.resources = resources
        self.type_url = type_url
        self.source = source
        self.kind = TYPES[type_url][0]

    def watch(self) -> tuple:
        """(directory to watch, entry name that triggers a reload or None for any)."""
        if self.source.watched_directory is not None:
            return self.source.watched_directory, None
        directory, name = os.path.split(os.path.abspath(self.source.path))
        return directory, name

    def count(self, counter: str) -> None:
        """A subscription counter: the type's (LDS, CDS), or each named resource's this
        file feeds (RDS, EDS)."""
        if self.type_url in self.resources.stats:
            self.resources.stats[self.type_url].count(counter)
        else:
            self.resources.count_named(self.type_url, counter, self.names())

    def names(self) -> list:
        """RDS, EDS: the names in force that this file is the source of."""
        return [n for n, src in self.resources.wanted()[self.type_url].items()
                if src is not None and src.path == self.source.path]

    def refresh(self) -> bool:
        """Read the file and apply it; False when it failed or was rejected (logged and
        counted; the configuration in force stays)."""
        named = self.type_url not in self.resources.stats
        if not named:                   # (RDS/EDS: apply() counts each name's attempt)
            self.count("update_attempt")
        path = self.source.path
        try:
            text = read_file(path)
            data = parse_json(text, path) if path.lower().endswith(".json") else parse_yaml(text, path)
        except ConfigError as e:
            log.warning("%s update failed: %s: %s", self.kind, path, e)
            self.count("update_failure")
            return False
        try:
            version, items = parse_discovery_response(data, self.type_url)
        except ConfigError as e:
            log.warning("%s update rejected: %s: %s", self.kind, path, e)
            self.count("update_rejected")
            return False
        try:
            self.resources.apply(self.type_url, version, items)
        except ConfigError:
            return False        # logged and counted by apply()
        except RuntimeError as e:   # the proxy stopped meanwhile
            log.debug("%s update of %s not applied: %s", self.kind, path, e)
            return False
        except Exception:           # a bug must not end the watcher: the next move is read
            log.exception("%s update of %s failed", self.kind, path)
            self.count("update_failure")
            return False
        return True


class InotifyWatcher:
    """What a class whose thread waits on an Inotify shares (FileDiscovery here, the secret
    store's file SDS): its ``_run`` selects on ``_inotify.fd`` and ``_stop_r``; ``stop()``
    wakes it through the pipe, joins it and closes the descriptors. Subclasses set the four
    attributes (None / -1 until started)."""

    _inotify: Optional[Inotify]
    _thread: Optional[threading.Thread]
    _stop_r: int
    _stop_w: int

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


class FileDiscovery(InotifyWatcher):
    """Every file subscription of a proxy, and the thread that reloads them."""

    def __init__(self, proxy: Any, dynamic: DynamicResources, resources: XdsResources):
        self.resources = resources
        # CDS before LDS: a discovered listener may route to a discovered cluster. (A type
        # whose source is ads comes over the ADS stream: xds/ads.py.)
        self.subscriptions = [FileSubscription(self.resources, url, src) for url, src in
                              ((CLUSTER_TYPE, dynamic.cds), (LISTENER_TYPE, dynamic.lds))
                              if src is not None and src.path is not None]
        self._inotify: Optional[Inotify] = None
        self._watches: dict = {}        # wd -> [(subscription, name or None)]
        self._lock = threading.Lock()
        self._stop_r = self._stop_w = -1
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """The initial fetch (synchronous: the proxy serves what the files hold as soon as
        start() returns), then the watching thread. Watches are set first, so that a swap
        during the initial read is not missed."""
        self._inotify = Inotify()
        try:
            for sub in self.subscriptions:
                directory, name = sub.watch()
                wd = self._inotify.add_watch(directory)
                self._watches.setdefault(wd, []).append((sub, name))
        except OSError:
            self.stop()
            raise
        self._stop_r, self._stop_w = os.pipe()
        for sub in list(self.subscriptions):    # (a reload may name more files: add())
            sub.refresh()
        self._thread = threading.Thread(target=self._run, name="fastproxy-xds-files", daemon=True)
        self._thread.start()

    def add(self, type_url: str, source: ConfigSource) -> None:
        """A file named by a resource in force (an RDS connection manager's or an EDS
        cluster's config source): watched and read now, if not already."""
        with self._lock:
            if any(s.type_url == type_url and s.source.path == source.path for s in self.subscriptions):
                return
            sub = FileSubscription(self.resources, type_url, source)
            self.subscriptions.append(sub)
            if self._inotify is None:
                return                  # start() watches and reads it
            directory, name = sub.watch()
            self._watches.setdefault(self._inotify.add_watch(directory), []).append((sub, name))
        sub.refresh()

    def keep(self, type_url: str, paths: set) -> None:
        """Drop the ``type_url`` files whose path is not in ``paths`` (nothing names them)."""
        with self._lock:
            self.subscriptions = [s for s in self.subscriptions
                                  if s.type_url != type_url or s.source.path in paths]


    def _run(self) -> None:
        assert self._inotify is not None
        while True:
            try:
                ready, _, _ = select.select([self._inotify.fd, self._stop_r], [], [])
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if self._stop_r in ready:
                return
            due = []
            for wd, name in self._inotify.read():
                for sub, wanted in self._watches.get(wd, ()):
                    if (wanted is None or wanted == name) and sub not in due:
                        due.append(sub)
            # In subscription order (CDS first), once per burst of events.
            for sub in list(self.subscriptions):
                if sub in due:
                    sub.refresh()


__all__ = ["FileDiscovery", "FileSubscription", "Inotify"]
