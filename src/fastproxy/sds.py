"""TLS secrets and the core TLS contexts that use them: static secrets (the bootstrap's
``static_resources.secrets``, ``Proxy.update(secrets=...)``), file-based SDS (an
SdsSecretConfig whose ``sds_config`` has a path: the file holds a DiscoveryResponse of
Secret resources, YAML or JSON as Envoy reads it) and the compiled contexts
(``TlsContextHandle``) built from them.

Rotation: when a secret changes (a file moved into place, a new static secret given by
update()), every context that names it is compiled again and its handle updated
(``TlsContextHandle.update``): new handshakes use the new certificate or CA, connections
open already keep theirs, and no listener drains. A file that cannot be read or parsed, or
whose new secret does not compile (a key that does not match its certificate, a file it
names that is missing), changes nothing: the old secret stays, counted as Envoy counts SDS
updates (``sds.<secret name>.update_attempt / update_success / update_rejected /
update_failure``) and logged with the reason.

Over xDS (an SdsSecretConfig whose ``sds_config`` is ``ads`` or an api_config_source):
fastproxy.xds subscribes the Secret type by name and hands what comes to ``set_xds``.
Until a secret has come, what uses it warms (``missing``: a listener is not bound, a
cluster has no endpoints); a new version rotates the contexts in place as above, a refused
one (NACKed) keeps the old, and one the server removes stays (Envoy keeps the last good
secret while something names it).

Files are watched as Envoy watches path_config_source: a move onto the path, or with
``watched_directory`` a move into that directory (inotify, xds/files.py's Inotify), on one
daemon thread per proxy. The files a secret from SDS (a file or xDS) names are watched as
Envoy watches them: a move onto one of their paths, or into the certificate's (validation
context's) own ``watched_directory``, compiles the contexts using the secret again. The
secret itself is then the same model (the same file names): what tells a rotation is the
compiled data, so a reload compiles every context naming any secret of the file and
updates the handles whose spec changed.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from typing import Any, Callable, Iterable, Optional

from .errors import ConfigError
from .model import ConfigSource
from .model_tls import SdsSecretConfig, Secret, over_xds
from .tls_spec import compile_context
from .xds.files import InotifyWatcher

log = logging.getLogger("fastproxy.config")


class _Use:
    """One compiled context: its model, side, stats name, owner and handle, and the spec
    the handle was built from."""

    __slots__ = ("ctx", "server", "stats", "owner", "handle", "spec")

    def __init__(self, ctx, server: bool, stats: str, owner: str, handle, spec: dict):
        self.ctx, self.server, self.stats, self.owner, self.handle, self.spec = ctx, server, stats, owner, handle, spec


class SecretMissing(ConfigError):
    """A secret from xDS that has not come yet (what names it warms)."""


class _FetchFailure(ConfigError):
    """The file could not be read or parsed as a DiscoveryResponse (Envoy: update_failure;
    a response whose resources are refused is update_rejected)."""


class _SecretFile:
    """One SDS file: its secrets by name, and the version_info it came with."""

    def __init__(self, source: ConfigSource):
        self.source = source
        self.secrets: dict[str, Secret] = {}
        self.version_info = ""
        self.loaded = False
        self.loaded_at = 0.0

    def read(self) -> tuple:
        """(version_info, {name: Secret}) of the file now; raises ConfigError (its path
        the field's, prefixed by the file's name)."""
        from .config.source import parse_json, parse_yaml, read_file
        from .config.tls import SECRET_TYPE, secret
        from .xds.resources import _body, parse_discovery_response
        path = self.source.path
        try:
            text = read_file(path)
            data = parse_json(text, path) if path.lower().endswith(".json") else parse_yaml(text, path)
            version, items = parse_discovery_response(data, SECRET_TYPE)
        except ConfigError as e:
            raise _FetchFailure(e.path, e.message) from None
        out: dict[str, Secret] = {}
        for i, item in enumerate(items):
            try:
                s = secret(_body(item, SECRET_TYPE, f"resources[{i}]"), f"resources[{i}]")
            except ConfigError as e:
                raise ConfigError(f"{path}: {e.path}", e.message) from None
            if s.name in out:
                raise ConfigError(f"{path}: resources[{i}].name", f"duplicate secret name {s.name!r}")
            out[s.name] = s
        return version, out


class SecretStore(InotifyWatcher):
    """The secrets of one proxy and the contexts built from them (see the module)."""

    def __init__(self, engine: Any, lock: Any, stat_block: Callable[[str, str], Any]):
        self._engine = engine
        self._lock = lock                   # the proxy's: updates of handles take it
        self._stat_block = stat_block
        self.static: dict[str, Secret] = {}
        self.files: dict[str, _SecretFile] = {}
        self.uses: dict[tuple, _Use] = {}
        # Envoy's sds.<name>.* subscription counters, per secret name from a file.
        self.stats: dict[str, dict[str, int]] = {}
        self.updated: dict[str, float] = {}     # secret name -> when its version came (dump)
        # Secrets from xDS: name -> (Secret, version_info, last_updated), while subscribed.
        self.xds: dict[str, tuple] = {}
        self._inotify = None
        self._watches: dict = {}            # wd -> [(SDS file or None: secrets' files, entry name or None)]
        self._watched: dict = {}            # (directory, entry, SDS file or None) -> wd
        self._thread: Optional[threading.Thread] = None
        self._stop_r = self._stop_w = -1
        # While an update installs (begin .. commit / rollback): what it changed here, undone
        # if the install fails, so Proxy.update is all or nothing.
        self._journal: Optional[list] = None

    # ---- looking secrets up ----

    def lookup(self, sds: SdsSecretConfig) -> Secret:
        """The secret ``sds`` names: a static one, or one of its file (read, and watched,
        the first time). Raises ConfigError naming the secret when it is not there."""
        source = sds.sds_config
        if over_xds(sds):
            got = self.xds.get(sds.name)
            if got is None:
                raise SecretMissing(f"sds[{sds.name}]", f"secret {sds.name!r} has not come from the "
                                                        "management server yet")
            return got[0]
        if source is None:
            s = self.static.get(sds.name)
            if s is None:
                raise ConfigError(f"secrets[{sds.name}]", f"unknown static secret {sds.name!r}")
            return s
        f = self._file(source)
        s = f.secrets.get(sds.name)
        if s is None:
            raise ConfigError(f"sds[{source.path}]", f"secret {sds.name!r} is not in {source.path!r} "
                                                     f"(it has {', '.join(sorted(f.secrets)) or 'none'})")
        return s

    def _file(self, source: ConfigSource) -> _SecretFile:
        f = self.files.get(source.path)
        if f is None:
            f = _SecretFile(source)
            try:
                self._watch(f)
            except OSError as e:
                raise ConfigError(f"sds[{source.path}]", f"cannot watch the SDS file: {e.strerror or e}") from None
            self.files[source.path] = f
        if not f.loaded:
            self._count_names(None, "update_attempt", f)
            try:
                f.version_info, f.secrets = f.read()
            except ConfigError as e:
                self._count_names(None, "update_failure" if isinstance(e, _FetchFailure) else "update_rejected", f)
                raise
            f.loaded = True
            f.loaded_at = time.time()
            self._watch_secrets(f.secrets.values(), f.source.path)
            for name in f.secrets:
                self._count(name, "update_attempt")
                self._count(name, "update_success")
        return f

    def _count(self, name: str, counter: str) -> None:
        st = self.stats.setdefault(name, dict.fromkeys(("update_attempt", "update_success", "update_rejected",
                                                        "update_failure"), 0))
        st[counter] += 1

    def _count_names(self, names: Optional[list], counter: str, f: _SecretFile) -> None:
        for name in (names if names is not None else list(f.secrets)):
            self._count(name, counter)

    # ---- contexts ----

    def context(self, ctx, server: bool, stats_name: str, owner: str):
        """The TlsContextHandle for ``ctx`` (a DownstreamTlsContext when ``server``): the one
        built before for this owner and side when the model and what it compiles to are
        the same; updated in place when only the compiled data changed (a file's new
        contents); else a new one. Raises ConfigError naming ``owner``."""
        # (a listener's filter chains share its owner and stats name: the model tells them apart)
        key = (owner, server, stats_name, repr(ctx))
        spec = compile_context(ctx, self.lookup, owner)
        use = self.uses.get(key)
        if use is not None and use.ctx == ctx:
            if use.spec != spec:
                old = use.spec
                self._update_handle(use, spec, owner)
                self._note(("update", use, old))
            return use.handle
        try:
            handle = self._engine.make_tls_context(spec, server, self._stat_block("ssl", stats_name), owner)
        except ValueError as e:
            raise ConfigError(owner, f"TLS context: {e}") from None
        self._note(("use", key, use))
        self.uses[key] = _Use(ctx, server, stats_name, owner, handle, spec)
        return handle

    # ---- an update's changes, all or nothing ----

    def begin(self) -> None:
        """An update starts: what set_static and context change is recorded until
        commit() or rollback()."""
        self._journal = []

    def commit(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        """The update failed: the static secrets, the handles updated in place and the
        contexts added since begin() are put back as they were (a context built for the
        failed install is dropped; the core frees it with the objects that held it)."""
        journal, self._journal = self._journal or [], None
        for entry in reversed(journal):
            if entry[0] == "use":
                _, key, previous = entry
                if previous is None:
                    self.uses.pop(key, None)
                else:
                    self.uses[key] = previous
            elif entry[0] == "update":
                _, use, old = entry
                use.handle.update(old)
                use.spec = old
            else:
                self.static = entry[1]
        self._release_files()

    def _note(self, entry: tuple) -> None:
        if self._journal is not None:
            self._journal.append(entry)

    @staticmethod
    def _update_handle(use: _Use, spec: dict, what: str) -> None:
        try:
            use.handle.update(spec)
        except ValueError as e:
            raise ConfigError(what, f"TLS context: {e}") from None
        use.spec = spec

    def keep(self, live: Iterable) -> None:
        """Forget the contexts no longer configured (``live``: (owner, server, ctx) of those
        in force); their handles live on in the core while a draining listener version
        uses them, without rotation."""
        wanted = {(owner, server, repr(ctx)) for owner, server, ctx in live}
        for key in [k for k in self.uses if (k[0], k[1], k[3]) not in wanted]:
            del self.uses[key]
        self._release_files()

    def _release_files(self) -> None:
        """SDS files no context built names any more are dropped: their watches, their
        secrets' counters and dump entries (Envoy ends a subscription nothing uses)."""
        named = {sds.sds_config.path for u in self.uses.values() for sds in u.ctx.secret_names()
                 if sds.sds_config is not None and not over_xds(sds)}
        for path in [p for p in self.files if p not in named]:
            f = self.files.pop(path)
            for wd, entries in list(self._watches.items()):
                entries[:] = [e for e in entries if e[0] is not f]
                if not entries:
                    self._unwatch(wd)
            for key in [k for k in self._watched if k[2] is f]:
                del self._watched[key]
            kept = {n for g in self.files.values() for n in g.secrets} | set(self.xds)
            for name in f.secrets:
                if name not in kept:
                    self.stats.pop(name, None)
                    self.updated.pop(name, None)
        # The certificate files' watches follow the secrets still held.
        held = [s for g in self.files.values() for s in g.secrets.values()] + [e[0] for e in self.xds.values()]
        wanted_paths = {p for s in held for p in s.watched_paths()}
        for key in [k for k in self._watched if k[2] is None and (k[0], k[1]) not in wanted_paths]:
            wd = self._watched.pop(key)
            entries = self._watches.get(wd, [])
            entries[:] = [e for e in entries if not (e[0] is None and e[1] == key[1])]
            if not entries:
                self._unwatch(wd)

    def _unwatch(self, wd: int) -> None:
        self._watches.pop(wd, None)
        if self._inotify is not None:
            self._inotify.rm_watch(wd)

    def set_static(self, secrets: list) -> list:
        """Static secrets replaced (Proxy.update(secrets=...)): the contexts naming one
        are compiled again and updated where their data changed. Returns the names that
        changed. On an error nothing is changed (the handles updated so far get their old
        spec back); after begin(), rollback() undoes it too."""
        new = {s.name: s for s in secrets}
        changed = [n for n in set(new) | set(self.static) if new.get(n) != self.static.get(n)]
        old = self.static
        self.static = new
        try:
            # Every context naming a static secret, not only a changed one: the same file
            # name may hold new data (compiled specs tell; unchanged handles are left alone).
            done = self._recompile(lambda sds: sds.sds_config is None)
        except ConfigError:
            self.static = old
            raise
        self._note(("static", old))
        for use, old_spec in done:
            self._note(("update", use, old_spec))
        return changed

    def _recompile(self, names: Callable[[SdsSecretConfig], bool]) -> None:
        """Compile again every context one of whose secrets ``names`` selects, and update
        its handle; all or nothing."""
        todo = [(u, compile_context(u.ctx, self.lookup, u.owner)) for u in self.uses.values()
                if any(names(s) for s in u.ctx.secret_names())]
        done: list = []
        try:
            for use, spec in todo:
                if spec != use.spec:
                    old = use.spec
                    self._update_handle(use, spec, use.owner)
                    done.append((use, old))
        except ConfigError:
            self._undo(done)
            raise
        return done

    @staticmethod
    def _undo(done: list) -> None:
        """The handles _recompile updated get their old specs back."""
        for use, old in done:
            use.handle.update(old)
            use.spec = old

    # ---- SDS over xDS ----

    def missing(self, contexts: Iterable) -> list:
        """The names of the xDS secrets the TLS ``contexts`` (models, None skipped) name
        that have not come: while there are any, what uses the contexts warms."""
        out: list = []
        for ctx in contexts:
            if ctx is None:
                continue
            for sds in ctx.secret_names():
                if over_xds(sds) and sds.name not in self.xds and sds.name not in out:
                    out.append(sds.name)
        return out

    def xds_in_use(self) -> list:
        """The xDS SdsSecretConfigs of the contexts built (a listener version still serving
        keeps its secrets subscribed while its successor warms)."""
        return [sds for u in self.uses.values() for sds in u.ctx.secret_names() if over_xds(sds)]

    def set_xds(self, secrets: dict, version_info: str, reinstall: Callable[[], None]) -> None:
        """New secrets from xDS ({name: Secret}, of a response at ``version_info``): the
        contexts built that name one are compiled again and updated in place; then
        ``reinstall`` (the proxy's update) builds what was warming for them. All or nothing:
        raises ConfigError (the response is NACKed) and keeps the old secrets."""
        with self._lock:
            now = time.time()
            old = dict(self.xds)
            for name, s in secrets.items():
                self.xds[name] = (s, version_info, now)
            try:
                done = self._recompile(lambda sds: over_xds(sds) and sds.name in secrets)
            except ConfigError:
                self.xds = old
                raise
            try:
                reinstall()
            except BaseException:
                self.xds = old
                self._undo(done)
                raise
            self._watch_secrets(secrets.values(), None)

    def forget_xds(self, wanted: Iterable[str]) -> None:
        """xDS secrets no longer named by anything are dropped (Envoy ends the subscription)."""
        keep = set(wanted)
        for name in [n for n in self.xds if n not in keep]:
            del self.xds[name]
            if not any(name in f.secrets for f in self.files.values()):    # (a file's own stats stay)
                self.stats.pop(name, None)

    def count(self, name: str, counter: str) -> None:
        """An SDS subscription counter (sds.<name>.update_*)."""
        self._count(name, counter)

    # ---- file watching ----

    def _start_watcher(self) -> None:
        from .xds.files import Inotify
        self._inotify = Inotify()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fastproxy-sds-files", daemon=True)
        self._thread.start()

    def _watch(self, f: _SecretFile) -> None:
        if self._inotify is None:
            self._start_watcher()
        if f.source.watched_directory is not None:
            directory, entry = f.source.watched_directory, None
        else:
            directory, entry = os.path.split(os.path.abspath(f.source.path))
        self._add_watch(directory, entry, f)

    def _add_watch(self, directory: str, entry: Optional[str], f: Optional[_SecretFile]) -> None:
        key = (directory, entry, f)
        if key in self._watched:
            return
        wd = self._inotify.add_watch(directory)
        self._watched[key] = wd
        self._watches.setdefault(wd, []).append((f, entry))

    def _watch_secrets(self, secrets: Iterable, where: Optional[str]) -> None:
        """Watch the files the SDS ``secrets`` name (those of the SDS file ``where``, or from
        xDS: None). A directory that cannot be watched is logged: the secret still works,
        and rotates when its SDS source sends it again."""
        for secret in secrets:
            for directory, entry in secret.watched_paths():
                try:
                    if self._inotify is None:
                        self._start_watcher()
                    self._add_watch(directory, entry, None)
                except OSError as e:
                    log.warning("sds: cannot watch %s for secret %r%s: %s", directory, secret.name,
                                f" of {where}" if where else "", e)

    def files_changed(self) -> bool:
        """A file an SDS secret names was replaced: compile again every context naming a
        secret from a file or xDS, and update the handles whose data changed (all or
        nothing; a refusal, e.g. a certificate moved in before its key, keeps the old)."""
        with self._lock:
            try:
                self._recompile(lambda sds: sds.sds_config is not None)
            except ConfigError as e:
                log.warning("sds update rejected (a certificate file changed): %s", e)
                return False
            return True

    def reload(self, f: _SecretFile) -> bool:
        """Read ``f`` again and apply the secrets that changed (see the module); False when
        the file or a new secret was refused (the old ones stay)."""
        with self._lock:
            self._count_names(None, "update_attempt", f)
            try:
                version, secrets = f.read()
            except _FetchFailure as e:
                log.warning("sds update failed: %s", e)
                self._count_names(None, "update_failure", f)
                return False
            except ConfigError as e:
                log.warning("sds update rejected: %s", e)
                self._count_names(None, "update_rejected", f)
                return False
            changed = [n for n in set(secrets) | set(f.secrets) if secrets.get(n) != f.secrets.get(n)]
            old = f.secrets
            f.secrets = {**old, **secrets}      # a secret left out of the file stays (in use)
            try:
                # Every context naming a secret of the file: a secret the same as before
                # may name files whose contents changed (compiled specs tell).
                self._recompile(lambda sds: sds.sds_config is not None and sds.sds_config.path == f.source.path
                                and sds.name in f.secrets)
            except ConfigError as e:
                f.secrets = old
                log.warning("sds update rejected: %s version %r: %s", f.source.path, version, e)
                self._count_names(changed, "update_rejected", f)
                return False
            f.version_info = version
            self._watch_secrets(secrets.values(), f.source.path)
            for name in changed:
                self.updated[name] = time.time()
            self._count_names(list(secrets), "update_success", f)
            return True

    def _run(self) -> None:
        while True:
            inotify = self._inotify
            if inotify is None:
                return
            try:
                ready, _, _ = select.select([inotify.fd, self._stop_r], [], [])
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                return
            if self._stop_r in ready:
                return
            due: list = []
            for wd, name in inotify.read():
                for f, wanted in self._watches.get(wd, ()):
                    if (wanted is None or wanted == name) and f not in due:
                        due.append(f)
            for f in due:
                try:
                    if f is None:
                        self.files_changed()
                    else:
                        self.reload(f)
                except Exception:       # a bug must not end the watcher
                    log.exception("sds update of %s failed", "certificate files" if f is None else f.source.path)

    def stop(self) -> None:
        super().stop()
        self._watches.clear()
        self._watched.clear()

    def dynamic_secrets(self) -> list:
        """(Secret, version_info, last_updated) of every secret from a file or xDS (the dump's
        dynamic_active_secrets), by name."""
        out = []
        for f in self.files.values():
            for name, secret in f.secrets.items():
                out.append((secret, f.version_info, self.updated.get(name, f.loaded_at)))
        out += list(self.xds.values())
        return sorted(out, key=lambda e: e[0].name)

    def read_stats(self) -> dict:
        return {f"sds.{name}.{k}": v for name, st in self.stats.items() for k, v in st.items()}


__all__ = ["SecretMissing", "SecretStore"]
