"""The Python surface: the public names (fastproxy and fastproxy.http), Listener's one
handler and its deprecated spellings, and a package without import cycles."""
from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import pathlib
import re
import subprocess
import sys
import threading
import warnings

import pytest

import fastproxy
import fastproxy.http
from fastproxy import Bootstrap, Cluster, ConfigError, Endpoint, Listener, Proxy, TcpProxy
from fastproxy.http import HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost

from conftest import echo_roundtrip, envoy_yaml, static_cluster, tcp_listener
from http_upstreams import http_request
from upstreams import EchoServer

SRC = pathlib.Path(fastproxy.__file__).resolve().parents[1]
PKG = SRC / "fastproxy"


def hcm(cluster="c"):
    return HttpConnectionManager("ingress", RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster=cluster))])]))


# --- fastproxy.http ------------------------------------------------------------------------

def test_the_http_model_has_a_public_namespace():
    from fastproxy.http import model, native_filters
    assert fastproxy.http.Route is model.Route
    assert fastproxy.http.HttpConnectionManager is model.HttpConnectionManager
    assert fastproxy.http.BufferFilter is native_filters.Buffer is fastproxy.BufferFilter
    assert sorted(set(fastproxy.http.__all__)) == sorted(fastproxy.http.__all__)
    missing = [n for n in fastproxy.http.__all__ if not hasattr(fastproxy.http, n)]
    assert missing == []
    # every model class an HttpConnectionManager is built from is there
    classes = {n for n, v in vars(model).items()
               if dataclasses.is_dataclass(v) and v.__module__ == model.__name__}
    assert classes <= set(fastproxy.http.__all__), classes - set(fastproxy.http.__all__)


@pytest.mark.parametrize("old, new", [("model_http", "fastproxy.http.model"),
                                      ("model_filters", "fastproxy.http.native_filters")])
def test_the_old_model_modules_warn_and_re_export(old, new):
    # A fresh interpreter: the warning is given when the module is first imported.
    code = (f"import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
            f"import fastproxy\n"
            f"try:\n    importlib.import_module('fastproxy.{old}')\n"
            f"except DeprecationWarning as e:\n    print(e)\nelse:\n    raise SystemExit('no warning')\n"
            f"warnings.simplefilter('ignore', DeprecationWarning)\n"
            f"import sys; sys.modules.pop('fastproxy.{old}', None)\n"
            f"m = importlib.import_module('fastproxy.{old}'); n = importlib.import_module('{new}')\n"
            f"assert n.__all__ and all(getattr(m, k) is getattr(n, k) for k in n.__all__)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent, env=_env(),
                         capture_output=True, text=True).stdout
    assert f"fastproxy.{old} is deprecated; import from fastproxy.http" in out


def test_import_fastproxy_is_enough_for_fastproxy_http():
    code = "import fastproxy; fastproxy.http.Route; fastproxy.http.HttpConnectionManager"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent, env=_env())


def test_the_http_package_does_not_hide_the_standard_librarys():
    # fastproxy/http/ is a package inside fastproxy; `import http` still finds the stdlib's.
    code = "import fastproxy.http, http, http.client; assert http.__file__ != fastproxy.http.__file__"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent, env=_env())


# --- Listener: one handler ------------------------------------------------------------------

def test_a_listener_takes_one_handler_tcp_and_http(upstream):
    echo = EchoServer()
    try:
        # Neither the new spelling nor the package (start, stats, update, stop) reads the
        # deprecated attributes: any DeprecationWarning fails the test.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            proxy = Proxy([Listener("tcp", TcpProxy("echo")),
                           Listener("web", hcm("up"), port=0)],
                          [Cluster("echo", [Endpoint("127.0.0.1", echo.port)]),
                           Cluster("up", [Endpoint("127.0.0.1", upstream.port)])])
            with proxy:
                assert echo_roundtrip(proxy.listener_address("tcp"), b"ping") == b"ping"
                r, body = http_request(proxy.listener_address("web")[:2], path="/x")
                assert (r.status, body) == (200, b"GET /x 0")
                stats = proxy.stats()
                assert stats["http.ingress.downstream_rq_2xx"] == 1
                assert stats["tcp.tcp.downstream_cx_total"] == 1
                proxy.update(listeners=[Listener("web", hcm("up"), port=0)])
                r, body = http_request(proxy.listener_address("web")[:2], path="/y")
                assert (r.status, body) == (200, b"GET /y 0")
    finally:
        echo.close()


def test_the_old_spellings_warn_and_mean_the_same():
    with pytest.warns(DeprecationWarning, match=r"Listener\(cluster=\.\.\.\) is deprecated"):
        old_tcp = Listener("l", cluster="c", port=5)
    assert old_tcp == Listener("l", TcpProxy("c"), port=5)
    h = hcm()
    with pytest.warns(DeprecationWarning, match=r"Listener\(http=\.\.\.\) is deprecated"):
        old_http = Listener("l", cluster="", http=h)     # what the old loader wrote
    assert old_http == Listener("l", h)
    with pytest.warns(DeprecationWarning, match=r"Listener\.http is deprecated"):
        assert old_http.http is h
    with pytest.warns(DeprecationWarning, match=r"Listener\.cluster is deprecated"):
        assert old_tcp.cluster == "c"
    assert (old_tcp.tcp_proxy, old_tcp.http_connection_manager) == (TcpProxy("c"), None)
    assert (old_http.tcp_proxy, old_http.http_connection_manager) == (None, h)


@pytest.mark.parametrize("kwargs, message", [
    ({}, r"Listener\('l'\) needs a handler: handler=TcpProxy\(cluster\) or handler=HttpConnectionManager"),
    ({"handler": TcpProxy("c"), "cluster": "c"}, r"give the handler once: handler= and cluster="),
    ({"handler": TcpProxy("c"), "http": hcm()}, r"give the handler once: handler= and http="),
    ({"cluster": "c", "http": hcm()}, r"cluster= and http= both given"),
    ({"handler": "c"}, r"handler= must be a TcpProxy or an HttpConnectionManager, got str \(TcpProxy\('c'\)"),
    ({"handler": Cluster("c")}, r"handler= must be a TcpProxy or an HttpConnectionManager, got Cluster"),
])
def test_a_listener_without_exactly_one_handler_is_a_type_error(kwargs, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match=message):
            Listener("l", **kwargs)


def test_the_listener_options_are_keyword_arguments():
    with pytest.raises(TypeError):
        Listener("l", TcpProxy("c"), "127.0.0.1")


@pytest.mark.parametrize("make, path", [
    (lambda: Listener("l", TcpProxy("nope")), "listeners[0].handler.cluster"),
    (lambda: Listener("l", TcpProxy("")), "listeners[0].handler.cluster"),
    (lambda: Listener("l", hcm("nope")), "listeners[0].handler.route_config.virtual_hosts[0].routes[0].route.cluster"),
    (lambda: Listener("l", cluster="nope"), "listeners[0].cluster"),
    (lambda: Listener("l", http=hcm("nope")), "listeners[0].http.route_config.virtual_hosts[0].routes[0].route.cluster"),
])
def test_errors_name_the_handler_as_it_was_spelled(make, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        listener = make()
    with pytest.raises(ConfigError) as e:
        Bootstrap([listener], [Cluster("c", [Endpoint("127.0.0.1", 1)])]).validate()
    assert e.value.path == path


def test_the_envoy_loader_builds_handlers(tmp_path):
    from fastproxy import load_envoy
    text = envoy_yaml([tcp_listener("c", name="db", stat_prefix="db")], [static_cluster("c", [1])], admin=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tmp_path / "envoy.yaml").write_text(text)
        (listener,) = load_envoy(tmp_path / "envoy.yaml").listeners
    assert listener.handler == TcpProxy("c")


# --- the package: no import cycles ----------------------------------------------------------

def _env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _modules():
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: pathlib.Path, modules: dict, lazy: bool) -> set:
    """The package modules `name` imports: at import time (module level), or anywhere (lazy
    imports in functions included). The package's own ancestors do not count: importing a
    submodule always imports them first, and they import it, not the other way round."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = ast.walk(tree) if lazy else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                found.add(full if full in modules else base)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in modules and m != name and m not in ancestors}


def _cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycle_at_import_time():
    modules = _modules()
    graph = {m: _imports(m, p, modules, lazy=False) for m, p in modules.items()}
    assert "fastproxy.http" in graph and "fastproxy._testing" in graph
    assert _cycles(graph) == []


def test_no_import_cycle_through_lazy_imports():
    # The model, the Envoy loader and the builders share fastproxy.validation, which imports
    # nothing of the package but errors: no cycle, not even through imports in functions.
    modules = _modules()
    graph = {m: _imports(m, p, modules, lazy=True) for m, p in modules.items()}
    assert _cycles(graph) == []


def test_nothing_in_the_package_imports_the_deprecated_model_modules():
    modules = _modules()
    old = {"fastproxy.model_http", "fastproxy.model_filters"}
    users = {m: sorted(_imports(m, p, modules, lazy=True) & old) for m, p in modules.items() if m not in old}
    assert {m: u for m, u in users.items() if u} == {}
    # The compiled core's build code imports model classes too (core/**/*.pxi).
    core = [str(p.relative_to(SRC)) for p in (SRC / "fastproxy" / "core").rglob("*.pxi")
            if re.search(r"\bfrom fastproxy\.model_(http|filters) import", p.read_text())]
    assert core == []


def test_the_cycle_checker_sees_a_cycle(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from . import b\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from .a import x\n")
    modules = {"p.a": a, "p.b": b}
    graph = {m: _imports(m, p, modules, lazy=True) for m, p in modules.items()}
    assert _cycles(graph) == [["p.a", "p.b"]]
    graph = {m: _imports(m, p, modules, lazy=False) for m, p in modules.items()}
    assert _cycles(graph) == []


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(m for m in _modules() if m != "fastproxy.__main__")   # __main__ runs the CLI
    code = ("import importlib, sys\n"
            "name = sys.argv[1]\n"
            "importlib.import_module(name)\n")
    failed = {}
    for name in names:
        r = subprocess.run([sys.executable, "-W", "error::ImportWarning", "-c", code, name],
                           capture_output=True, text=True, cwd=SRC.parent, env=_env(), timeout=60)
        if r.returncode:
            failed[name] = r.stderr[-800:]
    assert failed == {}


# --- docstrings and annotations on every public name ---------------------------------------

def _public():
    for space in (fastproxy, fastproxy.http):
        for name in space.__all__:
            obj = getattr(space, name)
            if not isinstance(obj, (str, tuple)):           # constants: __version__, FAULT, ...
                yield f"{space.__name__}.{name}", obj


def _own_doc(obj):
    doc = inspect.getdoc(obj)
    # a dataclass without a docstring gets its signature as one
    if dataclasses.is_dataclass(obj) and doc and doc.startswith(obj.__name__ + "("):
        return None
    return doc


def _members(cls):
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if callable(value) or inspect.isroutine(value) or inspect.isdatadescriptor(value):
            yield name, value


def _stub() -> dict:
    """{class: {method: (fully annotated?, docstring)}} from the compiled core's stub
    (_core.pyi): the core is Cython, so its annotations and its attributes' docs are there."""
    tree = ast.parse((PKG / "_core.pyi").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {}
            for f in node.body:
                if isinstance(f, ast.FunctionDef):
                    args = f.args.posonlyargs + f.args.args + f.args.kwonlyargs
                    args = [a for a in args if a.arg not in ("self", "cls")]
                    for extra in (f.args.vararg, f.args.kwarg):
                        if extra is not None:
                            args.append(extra)
                    annotated = all(a.annotation is not None for a in args) and f.returns is not None
                    old = methods.get(f.name, (True, None))       # a property's setter keeps the doc
                    methods[f.name] = (annotated and old[0], old[1] or ast.get_docstring(f))
            out[node.name] = (ast.get_docstring(node), methods)
    return out


def _compiled(obj) -> bool:
    return inspect.isclass(obj) and obj.__module__ == "fastproxy._core"


def test_every_public_name_has_a_docstring():
    missing = [name for name, obj in _public() if not _own_doc(obj)]
    assert missing == []
    stub = _stub()
    undocumented = []
    for name, obj in _public():
        if not inspect.isclass(obj) or issubclass(obj, enum.Enum):
            continue
        for m, v in _members(obj):
            if m == "__init__" or m.startswith("__") or isinstance(v, type):
                continue
            doc = inspect.getdoc(v)
            if _compiled(obj):
                doc = doc if doc and not doc.startswith(f"{obj.__name__}.{m}(") else None
                doc = doc or stub.get(obj.__name__, (None, {}))[1].get(m, (False, None))[1]
            if not doc:
                undocumented.append(f"{name}.{m}")
    assert undocumented == []


def test_every_public_callable_is_annotated():
    stub = _stub()
    bare = []
    for name, obj in _public():
        if _compiled(obj):
            if obj.__name__ not in stub:
                bare.append(f"{name} (not in _core.pyi)")
                continue
            methods = stub[obj.__name__][1]
            for m, _ in _members(obj):
                if m != "__init__" and not methods.get(m, (False, None))[0]:
                    bare.append(f"{name}.{m} (_core.pyi)")
            continue
        targets = [(name, obj)] if inspect.isfunction(obj) else \
            [(f"{name}.{m}", v) for m, v in _members(obj)] if inspect.isclass(obj) else []
        for what, f in targets:
            if not inspect.isfunction(f):
                continue
            sig = inspect.signature(f)
            params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
            if any(p.annotation is inspect.Parameter.empty for p in params) or \
                    (sig.return_annotation is inspect.Signature.empty and f.__name__ != "__init__"):
                bare.append(what)
    assert bare == []


def test_help_of_proxy_reads_well():
    text = inspect.getdoc(fastproxy.Proxy)
    assert "Listener(" in text and "TcpProxy(" in text
    rendered = __import__("pydoc").render_doc(fastproxy.Proxy, renderer=__import__("pydoc").plaintext)
    for method in ("start", "stop", "update", "stats", "listener_address"):
        assert f"{method}(self" in rendered, method



@pytest.mark.parametrize("admin, path", [
    (lambda: fastproxy.Admin(port=-1), "admin.port"),
    (lambda: fastproxy.Admin(address="localhost"), "admin.address"),
    (lambda: fastproxy.Admin(access_log=["/tmp/x"]), "admin.access_log[0]"),
    (lambda: fastproxy.Admin(access_log=[fastproxy.http.AccessLog("/tmp/x", "%NOPE%")]),
     "admin.access_log[0].format"),
], ids=["port", "address", "not-an-AccessLog", "format"])
def test_a_bad_admin_is_refused_before_anything_starts(admin, path):
    """The admin is validated with the rest of the configuration, naming the field, before
    any worker starts (the admin server opens its access-log sinks only after the workers
    run: before, a bad admin left a started engine behind)."""
    from fastproxy import Cluster, ConfigError, Endpoint, Listener, Proxy, TcpProxy
    before = set(threading.enumerate())
    with pytest.raises(ConfigError) as e:
        Proxy([Listener("l", TcpProxy("c"))], [Cluster("c", [Endpoint("127.0.0.1", 1)])], admin=admin())
    assert e.value.path == path
    assert not [t for t in threading.enumerate() if t not in before and t.name.startswith("fastproxy")]


def test_a_python_built_configuration_dumps_as_envoy_resources():
    """What admin /config_dump writes for a configuration built in Python is Envoy's form
    of it: the loader reads it back as the same clusters and connection manager, and
    writing that again gives the same JSON (the listener's implicit stat prefix is made
    explicit, as the loader does)."""
    import json
    from fastproxy import Admin, NativeHttpFilter
    from fastproxy.config import load_envoy
    from fastproxy.config.dump import bootstrap_json
    from fastproxy.http import DirectResponse, HeaderMatcher, RedirectAction, StringMatch
    from fastproxy.model import Node
    from fastproxy.http.native_filters import FAULT, FaultAbort, FractionalPercent, HTTPFault
    routes = [Route(RouteMatch(prefix="/api", headers=[HeaderMatcher("x-a", StringMatch("exact", "1"))]),
                    route=RouteAction(cluster="c", timeout=3.0, prefix_rewrite="/")),
              Route(RouteMatch(path="/r"), redirect=RedirectAction(https_redirect=True, response_code=302)),
              Route(RouteMatch(prefix="/"), direct_response=DirectResponse(200, b"hi"))]
    hcm = HttpConnectionManager("web", RouteConfiguration("rc", [VirtualHost("v", ["*"], routes=routes)]),
                                http_filters=[NativeHttpFilter("f", FAULT, HTTPFault(abort=FaultAbort(
                                    503, FractionalPercent(100))))],
                                use_remote_address=True, stream_idle_timeout=None)
    boot = Bootstrap([Listener("web", hcm, port=8080), Listener("t", TcpProxy("c"), port=9000, idle_timeout=None,
                                                                max_connections=5)],
                     [Cluster("c", [Endpoint("127.0.0.1", 80, weight=3)], lb_policy="RANDOM", max_connections=10,
                              idle_timeout=None, max_requests_per_connection=7)],
                     Admin("127.0.0.1", 9901), Node("n", "c", "z"), 1000)
    boot.validate()
    written = json.loads(json.dumps(bootstrap_json(boot)))
    back = load_envoy(written)
    assert back.clusters == boot.clusters
    assert back.listeners[0].handler == hcm
    assert (back.admin, back.node, back.max_downstream_connections) == (boot.admin, boot.node, 1000)
    assert [(l.effective_stat_prefix, l.idle_timeout, l.max_connections) for l in back.listeners] == \
        [(l.effective_stat_prefix, l.idle_timeout, l.max_connections) for l in boot.listeners]
    assert bootstrap_json(back) == written
