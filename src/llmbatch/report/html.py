"""The run report as ONE self-contained HTML file: plots, tables and the data behind them.

    html = render(aggregate("results.jsonl"))      # str; write it anywhere, open it offline

Why plotly: the plots are interactive (hover for exact values, zoom into the 429 storm at
02:10, toggle series), it is one pure-Python dependency (`pip install 'llmbatch[report]'`),
and its JavaScript bundle embeds in the file, so the report opens without a network (no CDN).
The price is size: the bundle is about 4.8 MB, once per file, whatever the run's size (the
data itself is bucketed, a few hundred KB at most). Vega-Lite would need a JS runtime or
`vl-convert` to render; matplotlib SVGs are static and pull in a heavier dependency.

The aggregates are embedded as JSON in `<script type="application/json" id="llmbatch-data">`,
so tools and tests read the numbers back without scraping markup.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any

import orjson

from ..durations import format_seconds
from ..metrics import MissingExtraError
from ..stats import price_note

__all__ = ["figures", "render", "summary_rows"]

_COLORS = {
    "ok": "#2ca02c",
    "failed": "#d62728",
    "attempts": "#7f7f7f",
    "wait": "#ff7f0e",
    "provider": "#1f77b4",
    "limit": "#9467bd",
}
_PERCENTILE_COLORS = {"p50": "#2ca02c", "p95": "#ff7f0e", "p99": "#d62728"}


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MissingExtraError("the report needs plotly: pip install 'llmbatch[report]'") from None
    return go


def _times(ts: list[float]) -> list[str]:
    return [dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] for t in ts]


def _layout(go: Any, title: str, **kw: Any) -> Any:
    return go.Layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        height=360,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        **kw,
    )


def _empty(go: Any, title: str, why: str) -> Any:
    fig = go.Figure(layout=_layout(go, title))
    fig.add_annotation(text=why, showarrow=False, font={"size": 14, "color": "#888"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _throughput(go: Any, data: dict[str, Any]) -> Any:
    tp, width = data["throughput"], data["bucket_seconds"]
    title = "Throughput (requests finished per minute)"
    if not tp["t"]:
        return _empty(go, title, "no timed results")
    per_min = 60.0 / width
    x = _times(tp["t"])
    fig = go.Figure(layout=_layout(go, title, barmode="stack", yaxis={"title": "per minute"}))
    fig.add_bar(
        x=x, y=[v * per_min for v in tp["ok"]], name="succeeded", marker_color=_COLORS["ok"]
    )
    fig.add_bar(
        x=x, y=[v * per_min for v in tp["failed"]], name="failed", marker_color=_COLORS["failed"]
    )
    fig.add_scatter(
        x=x,
        y=[v * per_min for v in tp["attempts"]],
        name="attempts",
        mode="lines",
        line={"color": _COLORS["attempts"], "dash": "dot"},
    )
    limit = data["summary"]["limit_rpm"]
    if limit:
        fig.add_scatter(
            x=[x[0], x[-1]],
            y=[limit, limit],
            name=f"limit {limit:g}/min",
            mode="lines",
            line={"color": _COLORS["limit"], "dash": "dash"},
        )
    return fig


def _histogram(go: Any, hist: dict[str, Any], title: str, color: str, marks: bool) -> Any:
    bins = hist["bins"]
    if not hist["count"]:
        return _empty(go, title, "no requests with a call")
    centers = [math.sqrt(max(lo, 1e-4) * hi) for lo, hi in zip(bins["lo"], bins["hi"], strict=True)]
    widths = [hi - lo for lo, hi in zip(bins["lo"], bins["hi"], strict=True)]
    fig = go.Figure(
        layout=_layout(
            go, title, xaxis={"type": "log", "title": "seconds"}, yaxis={"title": "requests"}
        )
    )
    fig.add_bar(x=centers, y=bins["count"], width=widths, name="requests", marker_color=color)
    if marks:
        top = max(bins["count"])
        for name in ("p50", "p95", "p99"):
            value = hist[name]
            if value <= 0:
                continue
            # Scatter segments, not shapes: on a log axis they sit where the data says.
            fig.add_scatter(
                x=[value, value],
                y=[0, top * 1.05],
                mode="lines",
                name=f"{name} {format_seconds(value)}",
                line={"color": _PERCENTILE_COLORS[name], "dash": "dash"},
            )
    return fig


def _errors(go: Any, data: dict[str, Any]) -> Any:
    title = "Failed attempts by status / error code (per minute)"
    series = data["errors_over_time"]["attempts"]
    if not series:
        return _empty(go, title, "no failed attempts")
    per_min = 60.0 / data["bucket_seconds"]
    x = _times(data["throughput"]["t"])
    fig = go.Figure(layout=_layout(go, title, barmode="stack", yaxis={"title": "per minute"}))
    for code, counts in series.items():
        fig.add_bar(x=x, y=[c * per_min for c in counts], name=code)
    return fig


def _time_split(go: Any, data: dict[str, Any]) -> Any:
    title = "Where the time went: mean admission wait vs provider time per request"
    split = data["time_split"]
    if not any(v is not None for v in split["wait_mean"]):
        return _empty(go, title, "no timed results")
    x = _times(data["throughput"]["t"])
    fig = go.Figure(layout=_layout(go, title, yaxis={"title": "seconds"}))
    for key, name in (("provider_mean", "provider"), ("wait_mean", "admission wait")):
        fig.add_scatter(
            x=x,
            y=split[key],
            name=name,
            mode="lines",
            stackgroup="one",
            line={"color": _COLORS["provider" if key == "provider_mean" else "wait"]},
        )
    return fig


def _wait_vs_provider(go: Any, data: dict[str, Any]) -> Any:
    title = "Admission wait and provider time per request (distribution)"
    if not data["wait"]["count"]:
        return _empty(go, title, "no timed results")
    fig = go.Figure(
        layout=_layout(
            go,
            title,
            barmode="overlay",
            xaxis={"type": "log", "title": "seconds"},
            yaxis={"title": "requests"},
        )
    )
    for key, name in (("provider", "provider"), ("wait", "admission wait")):
        bins = data[key]["bins"]
        fig.add_bar(
            x=[
                math.sqrt(max(lo, 1e-4) * hi) for lo, hi in zip(bins["lo"], bins["hi"], strict=True)
            ],
            y=bins["count"],
            width=[hi - lo for lo, hi in zip(bins["lo"], bins["hi"], strict=True)],
            name=name,
            opacity=0.6,
            marker_color=_COLORS[key],
        )
    return fig


def _retries(go: Any, data: dict[str, Any]) -> Any:
    title = "Attempts per request"
    dist = data["attempts_per_request"]
    if not dist:
        return _empty(go, title, "no requests")
    fig = go.Figure(
        layout=_layout(
            go, title, xaxis={"title": "attempts", "dtick": 1}, yaxis={"title": "requests"}
        )
    )
    fig.add_bar(x=[int(k) for k in dist], y=list(dist.values()), marker_color=_COLORS["attempts"])
    return fig


def _table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(s: dict[str, Any]) -> list[list[str]]:
    def when(t: float | None) -> str:
        return "–" if t is None else _times([t])[0] + " UTC"

    effective, limit = s["effective_rpm"], s["limit_rpm"]
    rate = "–" if effective is None else f"{effective:,.1f} req/min"
    if effective is not None and limit:
        rate += f" of a {limit:,.0f}/min limit ({100 * effective / limit:.0f}%)"
    share = "–" if s["wait_share"] is None else f"{100 * s['wait_share']:.1f}%"
    rows = [
        ["requests", f"{s['requests']:,}"],
        ["succeeded", f"{s['succeeded']:,} ({s['success_rate']:.1f}%)"],
        ["failed", f"{s['failed']:,}"],
        ["cached", f"{s['cached']:,}"],
        ["attempts / retries", f"{s['attempts']:,} / {s['retries']:,}"],
        ["tokens in / out", f"{s['tokens_in']:,} / {s['tokens_out']:,}"],
        ["cost", "–" if s["cost_usd"] is None else f"${s['cost_usd']:,.6f}"],
        ["first start", when(s["started_at"])],
        ["last finish", when(s["finished_at"])],
        ["wall time", format_seconds(s["wall_seconds"]) if s["wall_seconds"] else "–"],
        ["effective rate", rate],
        ["admission wait (sum)", format_seconds(s["wait_seconds"])],
        ["provider time (sum)", format_seconds(s["provider_seconds"])],
        ["backoff (sum)", format_seconds(s["backoff_seconds"])],
        ["share of time waiting for admission", share],
    ]
    if s["batch_api"]:
        rows.insert(4, ["via batch API", f"{s['batch_api']:,}"])
    lanes = s.get("answers_by_lane") or {}
    if lanes and set(lanes) != {"standard"}:
        costs, priced = s.get("cost_by_lane") or {}, s.get("priced_by_lane") or {}

        def lane_cell(lane: str, n: int) -> str:
            if lane not in costs:
                return f"{lane} {n:,}"
            return f"{lane} {n:,} (${costs[lane]:,.4f}{price_note(lane, priced.get(lane))})"

        by_lane = ", ".join(lane_cell(lane, n) for lane, n in lanes.items())
        rows.insert(4, ["answers by lane", by_lane])
    if s.get("cached_prompt_tokens"):
        saved = s.get("cache_saved_usd")
        after_cost = next(i for i, row in enumerate(rows) if row[0] == "cost") + 1
        rows.insert(
            after_cost,
            [
                "prompt cache",
                f"{100 * s['cache_hit_share']:.1f}% of input tokens read from it"
                + ("" if saved is None else f", saved ${saved:,.6f}"),
            ],
        )
    if s["untimed"]:
        rows.append(["lines without timing (older versions, cache hits)", f"{s['untimed']:,}"])
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px}
.sub{color:#666;margin-top:0}.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.wide{grid-column:1/3}table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td:nth-child(n+2){font-variant-numeric:tabular-nums}
.none{color:#888}.cols{display:flex;gap:40px;flex-wrap:wrap}
@media(max-width:900px){.grid{grid-template-columns:1fr}.wide{grid-column:1}}
"""


def figures(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report's plots of `data` (from `aggregate`), as (CSS class, plotly Figure); the
    live page (`llmbatch.watch`) draws the same ones."""
    go = _plotly()
    return [
        ("wide", _throughput(go, data)),
        ("", _histogram(go, data["latency"], "Latency per request", _COLORS["provider"], True)),
        ("", _errors(go, data)),
        ("", _time_split(go, data)),
        ("", _wait_vs_provider(go, data)),
        ("", _retries(go, data)),
    ]


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The report's summary table, as rows of text."""
    return _summary_rows(summary)


def render(data: dict[str, Any], title: str | None = None) -> str:
    """The report's HTML, plotly.js and `data` embedded."""
    from plotly.offline import get_plotlyjs

    s = data["summary"]
    title = title or f"llmbatch report: {s['output']}"
    divs = "".join(
        f'<div class="{cls}">'
        + fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        + "</div>"
        for cls, fig in figures(data)
    )
    lat = data["latency"]
    latency_rows = [
        [f"{name} {q}", format_seconds(data[key][q]) if data[key]["count"] else "–"]
        for key, name in (
            ("latency", "duration"),
            ("wait", "admission wait"),
            ("provider", "provider"),
        )
        for q in ("p50", "p95", "p99")
    ]
    slowest = [
        [
            r["id"],
            format_seconds(r["duration"]),
            str(r["attempts"]),
            format_seconds(r["wait"]),
            format_seconds(r["provider"]),
            format_seconds(r["backoff"]),
            "ok" if r["ok"] else r["code"],
        ]
        for r in data["slowest"]
    ]
    failed = [
        [r["id"], r["code"], str(r["attempts"]), r["message"]] for r in data["failed_requests"]
    ]
    more = s["failed"] - len(failed)
    errors = [[code, f"{n:,}"] for code, n in data["errors_by_code"].items()]
    outcomes = [[code, f"{n:,}"] for code, n in data["attempt_outcomes"].items()]
    # `<` escaped: the JSON cannot end its <script> element early, whatever the ids hold.
    payload = orjson.dumps(data).replace(b"<", b"\\u003c").decode()
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="sub">generated {generated}; {lat["count"]:,} requests with a call; time buckets of
{format_seconds(data["bucket_seconds"])}</p>
<div class="cols">
<div><h2>Summary</h2>{_table(["", ""], _summary_rows(s))}</div>
<div><h2>Latency</h2>{_table(["", ""], latency_rows)}
<h2>Final errors by code</h2>{_table(["code", "requests"], errors)}
<h2>Attempts by outcome</h2>{_table(["status / code", "attempts"], outcomes)}</div>
</div>
<div class="grid">{divs}</div>
<h2>Slowest requests</h2>
{_table(["id", "duration", "attempts", "wait", "provider", "backoff", "result"], slowest)}
<h2>Failed requests{f" (first {len(failed):,}; {more:,} more)" if more > 0 else ""}</h2>
{_table(["id", "code", "attempts", "message"], failed)}
<script type="application/json" id="llmbatch-data">{payload}</script>
</body></html>
"""
