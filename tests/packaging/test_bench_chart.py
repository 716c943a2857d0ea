"""The benchmarks' SVG chart (benchmarks/chart.py): what http_bench.py and tcp_bench.py write
beside their JSON, from summaries made by their own summarize(), and the committed charts
that benchmarks/README.md shows. No benchmark is run."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import chart  # noqa: E402
import http_bench  # noqa: E402
import tcp_bench  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def http_runs() -> list[dict]:
    figures = {  # proxy: {workload: (requests/s, CPU s per 100k requests)}
        "direct": {"small": (41279, None), "1m": (1101, None)},
        "floor": {"small": (33926, 2.22), "1m": (1191, 61.9)},
        "nginx": {"small": (30677, 3.155), "1m": (744, 127.2)},
        "fastproxy": {"small": (34703, 2.693), "1m": (1392, 51.5)},
    }
    return [{"proxy": p, "workload": wl, "rps": rps, "cpu_s_per_100k": cpu, "p50_ms": 1.0,
             "p99_ms": 4.0, "mb_per_s": 5.0, "error_count": 0, "noisy": False}
            for p, wls in figures.items() for wl, (rps, cpu) in wls.items()]


def bars(root) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if r.get("data-proxy")]


def texts(root) -> list[str]:
    return [t.text for t in root.iter(f"{SVG}text")]


def test_http_chart_beside_the_json(tmp_path):
    names = ["direct", "floor", "nginx", "fastproxy"]
    summary = http_bench.summarize(http_runs(), names, ["small", "1m"])
    out = tmp_path / "http_bench.json"
    benchlib.write_json(str(out), {"meta": {"time": "T", "pinned": True, "rounds": 3},
                                   "summary": summary}, chart="http")
    svg = tmp_path / "http_bench.svg"
    assert out.exists() and svg.exists()
    root = ET.fromstring(svg.read_text())  # well-formed XML, an <svg> root
    assert root.tag == f"{SVG}svg" and float(root.get("width")) > 0

    panels = list(root.iter(f"{SVG}g"))
    titles = [p.find(f"{SVG}text").text for p in panels]
    assert titles == ["/small: requests/s (higher is better)",
                      "/small: proxy CPU s per 100k requests (lower is better)",
                      "/1m: requests/s (higher is better)",
                      "/1m: proxy CPU s per 100k requests (lower is better)"]
    for panel, title in zip(panels, titles):
        proxies = [r.get("data-proxy") for r in bars(panel)]
        # direct has no proxy process, so no CPU bar.
        assert proxies == (names if "requests/s" in title else names[1:]), (title, proxies)
        by = {r.get("data-proxy"): r for r in bars(panel)}
        assert by["fastproxy"].get("class") == "highlight"
        assert by["floor"].get("class") == "reference"
        assert by["nginx"].get("class") == "bar"
        # The floor is marked across the panel at the end of its bar.
        floor_line = panel.find(f"{SVG}line[@class='floor']")
        assert floor_line is not None and floor_line.get("data-proxy") == "floor"
        end = float(by["floor"].get("x")) + float(by["floor"].get("width"))
        assert abs(float(floor_line.get("x1")) - end) < 0.2
        # Bars are to scale: fastproxy's length / nginx's = their values' ratio.
        ratio = float(by["fastproxy"].get("width")) / float(by["nginx"].get("width"))
        assert ratio == pytest.approx(float(by["fastproxy"].get("data-value"))
                                      / float(by["nginx"].get("data-value")), rel=0.01)
    labels = texts(root)
    for needed in ("34,703", "41,279", "2.693", "127.2", "fastproxy", "floor", "nginx", "direct"):
        assert needed in labels, needed
    assert any("floor relay" in (t or "") for t in labels)


def test_tcp_chart_marks_the_direct_path(tmp_path):
    runs = [{"proxy": p, "direction": d, "gbps": g, "cpu_s_per_gb": c}
            for p, g, c in (("haproxy", 6.0, 0.364), ("fastproxy", 12.75, 0.312), ("direct", 12.66, None))
            for d in ("c2s", "s2c")]
    summary = tcp_bench.summarize(runs, ["haproxy", "fastproxy", "direct"])
    out = tmp_path / "tcp.json"
    benchlib.write_json(str(out), {"meta": {}, "summary": summary}, chart="tcp")
    root = ET.fromstring(out.with_suffix(".svg").read_text())
    panels = list(root.iter(f"{SVG}g"))
    assert len(panels) == 4
    gbit = panels[0]
    assert [r.get("data-proxy") for r in bars(gbit)] == ["haproxy", "fastproxy", "direct"]
    assert gbit.find(f"{SVG}line[@class='floor']").get("data-proxy") == "direct"
    # The CPU panels have no direct bar and so no reference line.
    assert [r.get("data-proxy") for r in bars(panels[1])] == ["haproxy", "fastproxy"]
    assert panels[1].find(f"{SVG}line") is None


def test_names_are_escaped_and_missing_data_is_no_chart(tmp_path, capsys):
    svg = chart.chart({"summary": {"a<&>b": {"small": {"rps_median": 5.0}}}}, "http")
    root = ET.fromstring(svg)
    assert "a<&>b" in texts(root)
    # No JSON, no chart; nothing chartable: a note, not an exception (the table and JSON stand).
    assert chart.write_beside("", {"summary": {}}, "http") is None
    assert chart.write_beside(str(tmp_path / "x.json"), {"summary": {}}, "http") is None
    assert "no chart" in capsys.readouterr().out
    assert not (tmp_path / "x.svg").exists()


@pytest.mark.parametrize("name", ["http_latest", "tcp_latest", "conn_latest"])
def test_committed_chart_is_drawn_from_its_data(tmp_path, name):
    """benchmarks/README.md shows benchmarks/charts/*.svg: each must be what chart.py draws
    from the JSON beside it (re-plot with `python benchmarks/chart.py benchmarks/charts/NAME.json`)."""
    out = tmp_path / f"{name}.svg"
    r = subprocess.run([sys.executable, str(BENCH / "chart.py"), str(BENCH / "charts" / f"{name}.json"),
                        "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (BENCH / "charts" / f"{name}.svg").read_text()


def test_tcp_chart_draws_the_new_connections_workload(tmp_path):
    """tcp_bench.py keeps the conn workload's summary under result["conn"]: a run of that
    workload alone still gets its chart, read against the no-proxy path (direct)."""
    conn = {"direct": {"cps_median": 17016.0, "cpu_us_per_conn_median": None},
            "haproxy": {"cps_median": 16007.0, "cpu_us_per_conn_median": 60.0},
            "fastproxy": {"cps_median": 15445.0, "cpu_us_per_conn_median": 60.2}}
    out = tmp_path / "tcp_bench.json"
    benchlib.write_json(str(out), {"meta": {"time": "T", "pinned": True, "rounds": 3},
                                   "summary": {}, "conn": {"summary": conn}}, chart="tcp")
    root = ET.fromstring((tmp_path / "tcp_bench.svg").read_text())
    titles = [p.find(f"{SVG}text").text for p in root.iter(f"{SVG}g")]
    assert titles == ["new connections: connections/s (higher is better)",
                      "new connections: proxy CPU us per connection (lower is better)"]
    rate = [b.get("data-proxy") for b in bars(root)]
    assert rate[:3] == ["direct", "haproxy", "fastproxy"]      # direct has no CPU bar
    assert "dashed line, hatched bar = direct: wrk to the origin with no proxy in between" in texts(root)
    assert chart.kind_of(json.loads(out.read_text())) == "tcp"
