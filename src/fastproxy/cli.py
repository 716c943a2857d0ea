"""The ``fastproxy`` command (also ``python -m fastproxy``).

Flags mirror Envoy's, so a fastproxy can stand in for an Envoy whose configuration it
implements (TCP proxy and HTTP/1.1 listeners, static clusters, the admin)::

    fastproxy -c envoy.yaml [--config-yaml YAML] [--concurrency N] [-l LEVEL]
              [--mode serve|validate|init_only] [--log-path FILE] [--log-format FMT]
              [--component-log-level C:LEVEL,...] [--service-node ID] [--service-cluster NAME]
              [--service-zone ZONE] [--drain-time-s N] [--restart-epoch N] [--base-id N]
              [--use-dynamic-base-id] [--base-id-path FILE] [--parent-shutdown-time-s N]
    fastproxy demo [--port P] [--https-port P] [--no-https] [--upstream-port P] [--admin-port P] [--concurrency N]
    fastproxy --version

Exit status: 0 on success (and after a drain on SIGINT/SIGTERM or ``POST /quitquitquit``),
1 when the configuration is invalid or a listener cannot bind, 2 on a command-line error.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, List, Optional

from . import log as _log
from .admin import package_version
from .validation import MAX_PORT

logger = logging.getLogger("fastproxy")

MODES = ("serve", "validate", "init_only")
#: Seconds open connections get to finish on shutdown (--drain-time-s).
DEFAULT_DRAIN_TIME_S = 5
#: Seconds a process that handed its sockets over waits for its connections (Envoy's default).
DEFAULT_PARENT_SHUTDOWN_TIME_S = 900


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= n <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port {n} out of range 0..{MAX_PORT}")
    return n


def _uint32(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an unsigned integer, got {text!r}") from None
    if not 0 <= n < 1 << 32:
        raise argparse.ArgumentTypeError(f"expected an unsigned 32-bit integer, got {n}")
    return n


def _log_level(text: str) -> str:
    try:
        _log.parse_level(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.lower()


def _log_format(text: str) -> str:
    try:
        _log.compile_pattern(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _component_levels(text: str) -> dict:
    try:
        return _log.parse_component_levels(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                   help="number of worker threads (default: the number of CPUs)")
    p.add_argument("-l", "--log-level", type=_log_level, default="info", metavar="LEVEL",
                   help="trace, debug, info, warning (warn), error, critical or off (default: info)")
    p.add_argument("--component-log-level", type=_component_levels, default=None, metavar="C:LEVEL,...",
                   help="levels per component, e.g. admin:debug,main:warning; fastproxy's components: "
                        + ", ".join(_log.components()))
    p.add_argument("--log-path", default=None, metavar="FILE",
                   help="append log lines to FILE instead of stderr")
    p.add_argument("--log-format", type=_log_format, default=None, metavar="FMT",
                   help="log line format in spdlog syntax, as Envoy's (default: "
                        "'[%%Y-%%m-%%d %%T.%%e][%%t][%%l][%%n] %%v'); %%g:%%# is the Python source")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastproxy",
        description="fastproxy: an Envoy-class proxy with a Cython data plane: TCP proxy "
                    "(tcp_proxy) and HTTP/1.1 (http_connection_manager with routes, native, "
                    "Python and C filters) listeners, static and DNS clusters, access logs and "
                    "the admin interface. Reads Envoy v3 bootstrap YAML/JSON and takes Envoy's "
                    "command line.",
        epilog="Run 'fastproxy demo' for a ready-made example (see 'fastproxy demo --help'). "
               "Exit status: 0 on success and after a drain on SIGINT/SIGTERM, 1 on an invalid "
               "configuration or a listener that cannot bind, 2 on a command-line error.",
    )
    p.add_argument("-c", "--config-path", dest="config_path", metavar="FILE",
                   help="Envoy v3 bootstrap file (.yaml, .yml or .json)")
    p.add_argument("--config-yaml", dest="config_yaml", metavar="YAML",
                   help="bootstrap as inline YAML; merged over --config-path when both are given "
                        "(maps merged, lists appended, as Envoy does)")
    p.add_argument("--admin-address-path", default=None, metavar="FILE",
                   help="once the admin listens, write its address (host:port) to FILE, as Envoy does")
    p.add_argument("--mode", choices=MODES, default="serve",
                   help="serve (default); validate: check the configuration, report every error, "
                        "and exit; init_only: start everything, then exit")
    _add_common(p)
    node = p.add_argument_group("identity (override the bootstrap's node; shown on /server_info)")
    node.add_argument("--service-node", default=None, metavar="ID", help="node id")
    node.add_argument("--service-cluster", default=None, metavar="NAME", help="node cluster")
    node.add_argument("--service-zone", default=None, metavar="ZONE", help="node locality zone")
    drain = p.add_argument_group("draining")
    drain.add_argument("--drain-time-s", type=_uint32, default=None, metavar="N",
                       help="on SIGINT/SIGTERM or /quitquitquit, let open connections finish for up "
                            "to N seconds before closing them; the connections of a listener an "
                            "update changed or removed are closed after N seconds too "
                            f"(default: {DEFAULT_DRAIN_TIME_S})")
    drain.add_argument("--drain-strategy", choices=("gradual", "immediate"), default="gradual",
                       help="how the connections of a changed or removed listener are asked to "
                            "close: gradual (each response says Connection: close with a "
                            "probability rising over the drain time) or immediate (every next "
                            "response); on shutdown fastproxy stops accepting at once either way")
    hot = p.add_argument_group(
        "hot restart (a new process takes the listening sockets over from the running one; "
        "on when --restart-epoch, --base-id or --use-dynamic-base-id is given)")
    hot.add_argument("--restart-epoch", type=_uint32, default=None, metavar="N",
                     help="0: start afresh; N > 0: take over from the fastproxy of epoch N-1 "
                          "with the same base id, which then drains and exits")
    hot.add_argument("--base-id", type=_uint32, default=None, metavar="N",
                     help="names the Unix domain socket hot restart uses (default: 0); "
                          "fastproxies that run side by side need different ones")
    hot.add_argument("--use-dynamic-base-id", action="store_true",
                     help="epoch 0: pick an unused base id (from --base-id up); see --base-id-path")
    hot.add_argument("--base-id-path", default=None, metavar="FILE",
                     help="write the base id in use to FILE (for --use-dynamic-base-id)")
    hot.add_argument("--parent-shutdown-time-s", type=_uint32, default=None, metavar="N",
                     help="after a hand-over the previous process exits when its last connection "
                          "ends, or after N seconds, closing what is left (default: "
                          f"{DEFAULT_PARENT_SHUTDOWN_TIME_S})")
    hot.add_argument("--disable-hot-restart", action="store_true",
                     help="never open the hot restart socket (the default without the flags above)")
    compat = p.add_argument_group("accepted for Envoy command lines, without effect here "
                                  "(fastproxy writes each access log record unbuffered)")
    compat.add_argument("--file-flush-interval-msec", type=_uint32, default=None, metavar="MS",
                        help="(access log records are written as each stream ends)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def build_demo_parser() -> argparse.ArgumentParser:
    from . import demo

    p = argparse.ArgumentParser(
        prog="fastproxy demo",
        description="Run the bundled default configuration: a TCP proxy listener in front of "
                    "a small bundled HTTP server, plus the admin interface. Port 0 picks a free port.",
    )
    p.add_argument("--port", type=_port, default=demo.DEFAULT_LISTENER_PORT,
                   help=f"proxy listener port (default: {demo.DEFAULT_LISTENER_PORT})")
    p.add_argument("--upstream-port", type=_port, default=demo.DEFAULT_UPSTREAM_PORT,
                   help=f"bundled upstream server port (default: {demo.DEFAULT_UPSTREAM_PORT})")
    p.add_argument("--admin-port", type=_port, default=demo.DEFAULT_ADMIN_PORT,
                   help=f"admin interface port (default: {demo.DEFAULT_ADMIN_PORT})")
    p.add_argument("--no-admin", action="store_true", help="do not start the admin interface")
    p.add_argument("--https-port", type=_port, default=demo.DEFAULT_HTTPS_PORT,
                   help=f"HTTPS listener port (default: {demo.DEFAULT_HTTPS_PORT}; its self-signed "
                        "certificate is made at start-up)")
    p.add_argument("--no-https", action="store_true", help="do not start the HTTPS listener")
    _add_common(p)
    return p


def _setup_logging(args) -> None:
    stream = None
    if args.log_path:
        stream = open(args.log_path, "a", buffering=1, encoding="utf-8")
    components = args.component_log_level or {}
    _log.setup(args.log_level, stream, pattern=args.log_format, component_levels=components)
    known = _log.components()
    unknown = sorted(set(components) - set(known))
    if unknown:
        logger.warning("--component-log-level: fastproxy has no component %s (its components: %s); "
                       "no line is logged under it", ", ".join(unknown), ", ".join(known))


def _say(line: str = "") -> None:
    print(line, flush=True)


def _import_path(config_path: Optional[str]) -> None:
    """Make `class: module:Name` in a config import from the current directory (first, as
    'python -m fastproxy' has it) and the config file's directory (last, so it never shadows
    an installed package), whichever way fastproxy was started: the console script's
    sys.path[0] is its own bin directory."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    if config_path:
        directory = os.path.dirname(os.path.abspath(config_path))
        if directory not in sys.path and not (directory == cwd and "" in sys.path):
            sys.path.append(directory)


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _merge(base, over):
    """Envoy merges --config-yaml over the file like protobuf MergeFrom: maps merge
    recursively, lists are appended, scalars replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + over
    return over


def _shown_name(args) -> str:
    """How messages name the configuration."""
    if args.config_path and args.config_yaml:
        return f"{args.config_path} + --config-yaml"
    return args.config_path or "--config-yaml"


def _config_source(args):
    """(source for load_envoy, name to show)."""
    if args.config_path and args.config_yaml:
        import yaml

        from .errors import ConfigError

        try:
            with open(args.config_path, encoding="utf-8") as f:
                base = yaml.safe_load(f) or {}
            over = yaml.safe_load(args.config_yaml) or {}
        except yaml.YAMLError as e:
            raise ConfigError("", f"cannot parse YAML: {e}") from None
        if over is not None and not isinstance(over, dict):
            raise ConfigError("", f"--config-yaml must be a YAML mapping (a bootstrap), got {type(over).__name__}")
        return _merge(base, over), _shown_name(args)
    if args.config_path:
        return args.config_path, args.config_path
    # Parsed here so that a scalar is not taken for a file name.
    from .config.source import parse_yaml
    from .errors import ConfigError

    data = parse_yaml(args.config_yaml, "--config-yaml")
    if data is not None and not isinstance(data, dict):
        raise ConfigError("", f"--config-yaml must be a YAML mapping (a bootstrap), got {type(data).__name__}")
    return data, _shown_name(args)


def _check_config_path(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"unable to read file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; -c/--config-path takes a bootstrap file "
                                "(.yaml, .yml or .json)")


def _load(args):
    from .config import load_envoy

    if args.config_path:
        _check_config_path(args.config_path)
    source, name = _config_source(args)
    bootstrap = load_envoy(source)
    node = bootstrap.node
    # Envoy: the command line's identity overrides the bootstrap's node.
    if args.service_node is not None:
        node.id = args.service_node
    if args.service_cluster is not None:
        node.cluster = args.service_cluster
    if args.service_zone is not None:
        node.zone = args.service_zone
    return bootstrap, name


def _startup_lines(proxy, bootstrap) -> None:
    """One line per listener with the address it actually bound, then the admin's."""
    for l in bootstrap.listeners:
        try:
            host, port = proxy.listener_address(l.name)[:2]
        except Exception:
            host, port = l.address, l.port
        # A listener of filter chains (one with TLS is one) says what its first chain does.
        chains = l.chains or ((l.default_filter_chain,) if l.default_filter_chain is not None else ())
        chain = chains[0] if chains else None
        hcm = chain.http_connection_manager if chain is not None else None
        if hcm is not None:
            target = f"http_connection_manager '{hcm.stat_prefix}'"
        elif chain is not None and getattr(chain.handler, "cluster", None):
            target = f"cluster '{chain.handler.cluster}'"
        else:
            target = "filter chains"
        if chain is not None and chain.tls is not None:
            target += " (TLS)"
        if len(chains) > 1:
            target += f" and {len(chains) - 1} more filter chain(s)"
        _say(f"fastproxy: listener '{l.name}' listening on {_hp(host, port)} -> {target}")
    admin = getattr(proxy, "admin_address", None)
    if admin:
        _say(f"fastproxy: admin listening on http://{_hp(admin[0], admin[1])}/")


def serve(proxy, bootstrap, banner: Optional[Callable[[], None]] = None, init_only: bool = False,
          drain_timeout: float = DEFAULT_DRAIN_TIME_S, hot_restart=None, admin_address_path: Optional[str] = None) -> int:
    """Start ``proxy``, print where it listens, then block in ``proxy.run()`` until
    SIGINT/SIGTERM or /quitquitquit, drain and return 0. With ``hot_restart`` (a
    fastproxy.hot_restart.HotRestart): take the listening sockets over from the previous
    epoch before starting, have it drain once this process accepts, and hand this one's
    over to the next epoch when it asks."""
    # SIGINT/SIGTERM ask for a drain from here on, not only once run() is inside its loop:
    # someone who saw the startup lines may signal right away.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: proxy.request_shutdown())
    try:
        if hot_restart is not None and hot_restart.epoch > 0:
            hot_restart.connect_parent()
            proxy._adopt_listen_sockets(hot_restart.take_sockets(bootstrap.listeners))
        proxy.start()
        try:
            _startup_lines(proxy, bootstrap)
            admin = getattr(proxy, "admin_address", None)
            if admin_address_path and admin:
                with open(admin_address_path, "w") as f:
                    f.write(_hp(admin[0], admin[1]))
            if banner is not None:
                banner()
            if hot_restart is not None and hot_restart.epoch > 0 and not init_only:
                hot_restart.drain_parent()
        except BaseException:
            proxy.stop()
            raise
        if init_only:
            proxy.stop()
            return 0
        if hot_restart is not None:
            hot_restart.serve(proxy, on_drained=lambda: proxy.stop(drain_timeout=0))
        logger.info("fastproxy %s serving (concurrency %s); SIGINT/SIGTERM to stop",
                    package_version(), proxy.concurrency)
        proxy.run(drain_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("fastproxy exited cleanly")
    return 0


def _fail(msg: str) -> int:
    print(msg, file=sys.stderr, flush=True)
    return 1


def main_config(argv: List[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        _say(f"fastproxy version: {package_version()}")
        return 0
    if not args.config_path and not args.config_yaml:
        parser.error("a configuration is required: -c/--config-path FILE or --config-yaml YAML "
                     "(or try 'fastproxy demo')")
    _setup_logging(args)
    _import_path(args.config_path)

    from .errors import ConfigError, ListenerBindError

    shown = _shown_name(args)
    try:
        bootstrap, shown = _load(args)
    except (ConfigError, OSError) as e:
        return _fail(f"error initializing configuration '{shown}': {e}")
    if args.mode == "validate":
        _say(f"configuration '{shown}' OK")
        return 0

    from . import Proxy
    from .hot_restart import HotRestartError

    hot = None
    try:
        hot = _hot_restart(args)
        drain = DEFAULT_DRAIN_TIME_S if args.drain_time_s is None else args.drain_time_s
        proxy = Proxy.from_bootstrap(bootstrap, concurrency=args.concurrency, drain_time_s=drain,
                                     drain_strategy=args.drain_strategy)
        logger.info("fastproxy %s starting: %d listener(s), %d cluster(s)", package_version(),
                    len(bootstrap.listeners), len(bootstrap.clusters))
        return serve(proxy, bootstrap, init_only=args.mode == "init_only", drain_timeout=drain,
                     hot_restart=hot, admin_address_path=args.admin_address_path)
    except ConfigError as e:
        return _fail(f"error initializing configuration '{shown}': {e}")
    except HotRestartError as e:
        return _fail(f"error: hot restart: {e}")
    except (ListenerBindError, OSError) as e:
        return _fail(f"error: {e}")
    finally:
        if hot is not None:
            hot.close()


def _hot_restart(args):
    """The process's hot restart side, or None when hot restart is off (Envoy turns it on
    by default; fastproxy only when asked, so that fastproxies started without the flags
    never contend for base id 0)."""
    from .hot_restart import HotRestart, HotRestartError

    asked = args.restart_epoch is not None or args.base_id is not None or args.use_dynamic_base_id
    if not asked:
        return None
    if args.disable_hot_restart:
        raise HotRestartError("--disable-hot-restart contradicts --restart-epoch/--base-id/"
                              "--use-dynamic-base-id")
    epoch = args.restart_epoch or 0
    if args.use_dynamic_base_id and epoch:
        raise HotRestartError("--use-dynamic-base-id starts afresh (epoch 0); a later epoch "
                              "takes the base id the first one picked (--base-id-path)")
    shutdown = (DEFAULT_PARENT_SHUTDOWN_TIME_S if args.parent_shutdown_time_s is None
                else args.parent_shutdown_time_s)
    hot = HotRestart(args.base_id or 0, epoch, shutdown, args.use_dynamic_base_id)
    if args.base_id_path:
        try:
            with open(args.base_id_path, "w", encoding="utf-8") as f:
                f.write(f"{hot.base_id}\n")
        except OSError:
            hot.close()
            raise
    logger.info("hot restart: base id %d, epoch %d", hot.base_id, epoch)
    return hot


def main_demo(argv: List[str]) -> int:
    from . import demo
    from .errors import ConfigError, ListenerBindError

    args = build_demo_parser().parse_args(argv)
    _setup_logging(args)
    try:
        upstream = demo.DemoUpstream("127.0.0.1", args.upstream_port).start()
    except OSError as e:
        return _fail(f"error: cannot start the demo upstream on 127.0.0.1:{args.upstream_port}: {e}")
    certificate = None
    if not args.no_https:
        try:
            certificate = demo.DemoCertificate()
        except OSError as e:
            _say(f"fastproxy: demo runs without its HTTPS listener: {e}")
    try:
        from . import Proxy

        def bootstrap_with(cert):
            return demo.demo_bootstrap(port=args.port, upstream_port=upstream.address[1],
                                       admin_port=None if args.no_admin else args.admin_port,
                                       https_port=args.https_port, certificate=cert)

        try:
            bootstrap = bootstrap_with(certificate)
        except ConfigError as e:
            if certificate is None:
                raise
            # A build without TLS refuses the HTTPS listener's transport_socket: the
            # plaintext demo still runs.
            _say(f"fastproxy: demo runs without its HTTPS listener: {e}")
            certificate.remove()
            certificate = None
            bootstrap = bootstrap_with(None)
        proxy = Proxy.from_bootstrap(bootstrap, concurrency=args.concurrency)
        _say(f"fastproxy: demo upstream (HTTP) listening on {_hp(*upstream.address)}")

        def banner():
            https = proxy.listener_address(demo.HTTPS_LISTENER_NAME)[:2] if certificate else None
            _say(demo.instructions(proxy.listener_address(demo.LISTENER_NAME)[:2], upstream.address,
                                   getattr(proxy, "admin_address", None), https,
                                   certificate.cert if certificate else None))

        return serve(proxy, bootstrap, banner=banner)
    except ConfigError as e:
        return _fail(f"error in the bundled demo configuration: {e}")
    except (ListenerBindError, OSError) as e:
        return _fail(f"error: {e} (choose other ports with --port/--https-port/--upstream-port/--admin-port, "
                     "0 = any free port)")
    finally:
        upstream.stop()
        if certificate is not None:
            certificate.remove()


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return main_demo(argv[1:])
    return main_config(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
