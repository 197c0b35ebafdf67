"""The live page itself: an HTML shell and the script that fills it from `data.json`.

    PAGE, SCRIPT    # served as / and /live.js by `llmbatch.watch.server`

Every value reaches the document as text (`textContent`), never as markup, and the plots are
plotly figures drawn by `Plotly.react` from the data alone, so an id or an error message
holding `<script>` is shown, not run. plotly.js is served by the page's own server from the
installed plotly package: the page works without a network (no CDN).
"""

from __future__ import annotations

__all__ = ["PAGE", "SCRIPT"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:24px}
.sub{color:#666;margin-top:0}.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.wide{grid-column:1/3}table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f6f6}.cols{display:flex;gap:40px;flex-wrap:wrap}
.bar{height:14px;background:#eee;border-radius:7px;overflow:hidden;margin:10px 0;max-width:800px}
.bar div{height:100%;background:#2ca02c;width:0}.stale{color:#d62728}
@media(max-width:900px){.grid{grid-template-columns:1fr}.wide{grid-column:1}}
"""

PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmbatch live</title><style>{_CSS}</style>
<script src="plotly.js"></script><script src="live.js" defer></script>
</head><body>
<h1 id="title">llmbatch live</h1>
<p class="sub" id="status">connecting…</p>
<div class="bar"><div id="bar"></div></div>
<div class="cols">
<div><h2>Progress</h2><table id="progress"></table></div>
<div><h2>Summary</h2><table id="summary"></table></div>
<div><h2>Latency</h2><table id="latency"></table>
<h2>Final errors by code</h2><table id="errors"></table></div>
</div>
<div id="batches-section" hidden><h2>Provider batches</h2><p id="batch-states"></p>
<table id="batches"></table></div>
<div class="grid" id="plots"></div>
<h2>Slowest requests</h2><table id="slowest"></table>
<h2>Failed requests (first 20)</h2><table id="failed"></table>
</body></html>
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);

function table(id, headers, rows) {
  const t = $(id);
  t.replaceChildren();
  if (!rows.length) {
    const r = t.insertRow();
    r.insertCell().textContent = "none";
    return;
  }
  if (headers) {
    const h = t.createTHead().insertRow();
    for (const name of headers) {
      const th = document.createElement("th");
      th.textContent = name;
      h.appendChild(th);
    }
  }
  const body = t.createTBody();
  for (const row of rows) {
    const r = body.insertRow();
    for (const cell of row) r.insertCell().textContent = cell;
  }
}

const money = (v) => (v === null || v === undefined ? "–" : "$" + v.toFixed(4));
const count = (v) => (v === null || v === undefined ? "–" : v.toLocaleString("en-US"));

function draw(d) {
  const p = d.progress;
  $("title").textContent = "llmbatch live: " + d.output;
  const when = new Date(d.generated_at * 1000).toISOString().replace("T", " ").slice(0, 19);
  $("status").textContent = d.exists
    ? "updated " + when + " UTC; last result " + (p.last_result_ago ?? "–") + " ago;"
      + " refreshes every " + (d.refresh_ms / 1000).toFixed(0) + " s"
    : "waiting for " + d.output + " to appear";
  $("status").className = "sub";
  $("bar").style.width = (p.percent ?? 0) + "%";
  table("progress", null, [
    ["done", count(p.done) + (p.total === null ? "" : " of " + count(p.total))
      + (p.percent === null ? "" : " (" + p.percent.toFixed(1) + "%)")],
    ["succeeded / failed", count(p.succeeded) + " / " + count(p.failed)],
    ["cache hits", count(p.cached)],
    ["rate now", p.rate_per_min.toFixed(1) + " / min"],
    ["time left", p.eta ?? "–"],
    ["spent", money(p.spent)],
    ["projected spend", money(p.projected)],
  ]);
  table("summary", null, d.summary);
  table("latency", null, d.latency);
  table("errors", ["code", "requests"], d.errors);
  table("slowest", ["id", "duration", "attempts", "result"], d.slowest);
  table("failed", ["id", "code", "attempts", "message"], d.failed);
  const b = d.batches;
  $("batches-section").hidden = !b.rows.length && !b.error;
  $("batch-states").textContent = b.error
    ?? Object.entries(b.states).map(([s, n]) => s + ": " + n).join(", ");
  table("batches", ["batch", "state", "provider status", "requests", "id", "age"], b.rows);
  const plots = $("plots");
  d.figures.forEach((f, i) => {
    let div = plots.children[i];
    if (!div) {
      div = document.createElement("div");
      plots.appendChild(div);
    }
    div.className = f.cls;
    Plotly.react(div, f.figure.data, f.figure.layout, {displaylogo: false, responsive: true});
  });
}

async function refresh() {
  let wait = 2000;
  try {
    const response = await fetch("data.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const d = await response.json();
    draw(d);
    wait = d.refresh_ms;
  } catch (err) {
    $("status").textContent = "cannot read the run (" + err.message + "); retrying";
    $("status").className = "sub stale";
  }
  setTimeout(refresh, wait);
}

refresh();
"""
