"""The live page: a run followed in a browser while it goes on, from its output file alone.

    from llmbatch.watch import LiveState, serve_live_page
    server = serve_live_page(LiveState("results.jsonl", total=lambda: 10_000), port=8765)
    print(server.url)      # http://127.0.0.1:8765/ ... server.close()

`llmbatch watch OUTPUT` serves it for any run, in this process or another (even on another
machine, the output on a shared disk); `llmbatch run --watch PORT` / `RunConfig(watch=PORT)`
serves it beside the run. Progress, the current rate, time left, spend and its projection,
errors by code, latency, provider batches and their states, cache hits, and the report's
plots drawn by the report's code (`llmbatch.report.html.figures`). Offline (plotly.js comes
from the installed package), read-only, on 127.0.0.1. Needs `pip install 'llmbatch[report]'`.
"""

from .server import HOST, LivePageServer, serve_live_page
from .state import LiveState

__all__ = ["HOST", "LivePageServer", "LiveState", "serve_live_page"]
