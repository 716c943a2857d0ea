"""Bar charts of a benchmark run as a standalone SVG file, drawn by hand (no plotting library).

http_bench.py and tcp_bench.py call write_beside() where they write their JSON, so every run
leaves RESULT.svg next to RESULT.json. One panel per workload (or direction) and metric, one
bar per proxy; fastproxy's bars are highlighted, and the reference row (the floor relay in
the HTTP benchmark, the no-proxy path in the L4 one) is drawn hatched, with a dashed line at
its value across the panel, so every other bar reads against it.

Re-plot a saved result (or a summary transcribed from a README table):

    python benchmarks/chart.py benchmarks/results/http_bench.json [-o chart.svg] [--title T]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import escape

HIGHLIGHT = "fastproxy"


@dataclass
class Panel:
    title: str
    bars: list[tuple[str, float]]       # (proxy, value); proxies without the value are left out
    reference: Optional[str] = None     # the proxy whose value is marked across the panel


@dataclass
class Kind:
    """How a benchmark's summary ({proxy: {group: {metric: value}}}) becomes panels."""
    reference: str                      # the row every bar is read against
    reference_note: str
    groups: tuple[str, ...]             # preferred order of the groups; others follow
    group_label: str                    # "{}" gets the group name
    metrics: tuple[tuple[str, str], ...]  # (summary key, panel title); a metric absent from a group is skipped


KINDS = {
    "http": Kind("floor", "floor relay: the four socket calls a request needs, nothing else",
                 ("small", "1m"), "/{}",
                 (("rps_median", "requests/s (higher is better)"),
                  ("cpu_s_per_100k_median", "proxy CPU s per 100k requests (lower is better)"))),
    "tcp": Kind("direct", "direct: iperf3 with no proxy in between",
                ("c2s", "s2c"), "{}",
                (("gbps_median", "Gbit/s (higher is better)"),
                 ("cpu_s_per_gb_median", "proxy CPU s per GB (lower is better)"))),
}

# tcp_bench.py's conn workload keeps its summary apart ({proxy: {metric: value}} under
# result["conn"]); its reference is the no-proxy path too: wrk straight to the origin, the
# most new connections/s this machine's load-generating core can make.
CONN = Kind("direct", "direct: wrk to the origin with no proxy in between",
            ("conn",), "new connections",
            (("cps_median", "connections/s (higher is better)"),
             ("cpu_us_per_conn_median", "proxy CPU us per connection (lower is better)")))


def panels(summary: dict, kind: Kind) -> list[Panel]:
    groups = list(kind.groups)
    for wls in summary.values():
        groups += [g for g in wls if g not in groups]
    out = []
    for group in groups:
        for key, title in kind.metrics:
            bars = [(name, wls[group][key]) for name, wls in summary.items()
                    if isinstance(wls.get(group), dict)
                    and isinstance(wls[group].get(key), (int, float)) and wls[group][key] >= 0]
            if bars:
                ref = kind.reference if any(n == kind.reference for n, _ in bars) else None
                out.append(Panel(f"{kind.group_label.format(group)}: {title}", bars, ref))
    return out


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


# Layout, in SVG user units (pixels at 100 %).
LABEL_W, BAR_W, VALUE_W, PAD = 120, 300, 60, 16
ROW_H, BAR_H, HEAD_H = 22, 15, 26
PANEL_W = LABEL_W + BAR_W + VALUE_W
COLS = 2


def _panel(p: Panel, x0: float, y0: float) -> list[str]:
    top = max(v for _, v in p.bars) or 1.0
    scale = BAR_W / (top * 1.05)
    bx = x0 + LABEL_W
    out = [f'<g class="panel">',
           f'<text x="{x0}" y="{y0 + 14}" class="ptitle">{escape(p.title)}</text>']
    y = y0 + HEAD_H
    if p.reference:  # first, so the bars and their labels are drawn over it
        rx = bx + dict(p.bars)[p.reference] * scale
        out.append(f'<line class="floor" data-proxy="{escape(p.reference)}" x1="{rx:.1f}" '
                   f'y1="{y - 4}" x2="{rx:.1f}" y2="{y + ROW_H * len(p.bars)}"/>')
    for name, v in p.bars:
        cls = ("reference" if name == p.reference else
               "highlight" if name == HIGHLIGHT else "bar")
        w = max(v * scale, 1.0)
        out.append(f'<text x="{bx - 6}" y="{y + BAR_H - 3}" class="label">{escape(name)}</text>')
        out.append(f'<rect class="{cls}" data-proxy="{escape(name)}" data-value="{v:g}" '
                   f'x="{bx}" y="{y}" width="{w:.1f}" height="{BAR_H}"/>')
        out.append(f'<text x="{bx + w + 4:.1f}" y="{y + BAR_H - 3}" class="value">{fmt(v)}</text>')
        y += ROW_H
    out.append("</g>")
    return out


def render(title: str, subtitle: str, ps: list[Panel], note: str = "") -> str:
    rows = [ps[i:i + COLS] for i in range(0, len(ps), COLS)]
    heights = [HEAD_H + ROW_H * max(len(p.bars) for p in row) + PAD for row in rows]
    width = PAD * 2 + COLS * PANEL_W + (COLS - 1) * PAD * 2
    top = 58
    height = top + sum(heights) + (24 if note else 8)
    body = []
    y = top
    for row, h in zip(rows, heights):
        for i, p in enumerate(row):
            body += _panel(p, PAD + i * (PANEL_W + PAD * 2), y)
        y += h
    if note:
        body.append(f'<text x="{PAD}" y="{height - 10}" class="note">{escape(note)}</text>')
    style = (".title{font:bold 16px sans-serif}.sub{font:12px sans-serif;fill:#555}"
             ".ptitle{font:bold 12px sans-serif}.label{font:12px sans-serif;text-anchor:end}"
             ".value{font:11px sans-serif;fill:#333;paint-order:stroke;stroke:#fff;stroke-width:3px}.note{font:11px sans-serif;fill:#555}"
             ".bar{fill:#9bb7d4}.highlight{fill:#d9731a}"
             ".reference{fill:url(#hatch);stroke:#555;stroke-width:1}"
             ".floor{stroke:#333;stroke-width:1.2;stroke-dasharray:4 3}")
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">',
        f"<title>{escape(title)}</title>",
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#e4e4e4"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#888" stroke-width="2"/></pattern></defs>',
        f"<style>{style}</style>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{PAD}" y="24" class="title">{escape(title)}</text>',
        f'<text x="{PAD}" y="44" class="sub">{escape(subtitle)}</text>',
        *body, "</svg>", ""])


def chart(result: dict, kind_name: str, title: str = "") -> str:
    kind = KINDS[kind_name]
    meta = result.get("meta") or {}
    ps = panels(result.get("summary") or {}, kind)
    notes = [kind.reference_note] if any(p.reference for p in ps) else []
    conn = (result.get("conn") or {}).get("summary") if kind_name == "tcp" else None
    if conn:
        cps = panels({name: {"conn": s} for name, s in conn.items()}, CONN)
        if any(p.reference for p in cps):
            notes.append(("for new connections, " if notes else "") + CONN.reference_note)
        ps += cps
    if not ps:
        raise ValueError("no proxy in the result has a value to chart")
    bits = [meta.get("time", ""), "pinned" if meta.get("pinned") else ("unpinned" if "pinned" in meta else ""),
            f"{meta['rounds']} rounds, medians" if meta.get("rounds") else "medians",
            (meta.get("note") or "")]
    subtitle = "; ".join(b for b in bits if b)
    default = {"http": "HTTP benchmark", "tcp": "L4 (TCP) benchmark"}[kind_name]
    note = "dashed line, hatched bar = " + "; ".join(notes) if notes else ""
    return render(title or default, subtitle, ps, note)


def kind_of(result: dict) -> str:
    for wls in (result.get("summary") or {}).values():
        for s in wls.values():
            if isinstance(s, dict) and "gbps_median" in s:
                return "tcp"
            if isinstance(s, dict) and "rps_median" in s:
                return "http"
    if (result.get("conn") or {}).get("summary"):
        return "tcp"
    raise ValueError("not a tcp_bench.py or http_bench.py result (no summary with gbps_median or rps_median)")


def write_beside(json_path: str, result: dict, kind_name: str) -> Optional[Path]:
    """RESULT.svg next to RESULT.json (nothing when no JSON is written). A chart that cannot
    be drawn is reported, never fatal: the table and JSON are the run's record."""
    if not json_path:
        return None
    out = Path(json_path).with_suffix(".svg")
    try:
        svg = chart(result, kind_name)
    except ValueError as e:
        print(f"no chart: {e}")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg)
    print(f"chart written to {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Draw the SVG chart of a tcp_bench.py / http_bench.py JSON result.")
    ap.add_argument("result", help="the JSON a benchmark wrote (or one with the same 'summary' shape)")
    ap.add_argument("-o", "--output", help="SVG to write (default: the JSON's path with .svg)")
    ap.add_argument("--title", default="", help="chart title (default: the benchmark's name)")
    args = ap.parse_args(argv)
    result = json.loads(Path(args.result).read_text())
    out = Path(args.output) if args.output else Path(args.result).with_suffix(".svg")
    try:
        out.write_text(chart(result, kind_of(result), args.title))
    except ValueError as e:
        ap.error(str(e))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
