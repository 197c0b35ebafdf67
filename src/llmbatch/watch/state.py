"""What the live page shows, read from a run's output file (and batch ledger) alone.

    live = LiveState("results.jsonl", total=lambda: 10_000)
    payload = live.payload()          # JSON bytes: progress, tables, the report's plots

The journal is the interface: the page works for a run in this process, in another one, or on
another machine whose output is on a shared disk. Each refresh reads the whole output with
the report's own `aggregate` (so every number and plot is the report's, superseded lines of
redone ids and the compaction at the end of a run included), plus the batch ledger if there
is one. Reading a million-line output takes seconds, so a refresh is never computed more
often than `COST_FACTOR` times its own cost: the reader stays a small share of a core however
large the file, and any number of browser tabs share one computation.

Nothing beyond what the report shows leaves this module: no prompts, no replies, no keys
(the ledger's batch ids and states are shown, as `llmbatch batches list` shows them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..batch_api import Ledger, LedgerError, ledger_paths
from ..durations import format_duration, format_seconds

__all__ = ["COST_FACTOR", "MIN_REFRESH", "LiveState"]

MIN_REFRESH = 2.0  # seconds between refreshes at least
COST_FACTOR = 5.0  # ... and at least this many times the last refresh's cost
RECENT = 60.0  # the current rate: results finished in the last minute (or two buckets)


class LiveState:
    """The page's data for `output`, recomputed at most every `refreshformat_seconds()`."""

    def __init__(
        self,
        output: str | Path,
        *,
        total: Callable[[], int | None] | None = None,
        limit_rpm: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.output = Path(output)
        self.total = total or (lambda: None)
        self.limit_rpm = limit_rpm
        self.clock = clock
        self._lock = threading.Lock()
        self._payload: bytes | None = None
        self._at = 0.0
        self._cost = 0.0

    def refreshformat_seconds(self) -> float:
        return max(MIN_REFRESH, COST_FACTOR * self._cost)

    def payload(self) -> bytes:
        """The latest data as JSON (computed now if the last is older than a refresh)."""
        with self._lock:
            now = time.monotonic()
            if self._payload is None or now - self._at >= self.refreshformat_seconds():
                self._payload = orjson.dumps(self.compute(), option=orjson.OPT_SERIALIZE_NUMPY)
                self._cost = time.monotonic() - now
                self._at = time.monotonic()
            return self._payload

    def compute(self) -> dict[str, Any]:
        from ..report import aggregate
        from ..report.html import figures, summary_rows

        now = self.clock()
        exists = self.output.is_file()
        data = aggregate(self.output, limit_rpm=self.limit_rpm) if exists else None
        batches = self._batches(now)
        total = self.total()
        if total is None and batches["rows"]:
            total = batches["requests"]  # a batch run: its chunks cover the requests
        progress = _progress(data, total, now)
        page: dict[str, Any] = {
            "output": str(self.output),
            "generated_at": now,
            "refresh_ms": int(self.refreshformat_seconds() * 1000),
            "exists": exists,
            "progress": progress,
            "batches": batches,
        }
        if data is None:
            page.update(summary=[], latency=[], errors=[], failed=[], slowest=[], figures=[])
            return page
        page["summary"] = summary_rows(data["summary"])
        page["latency"] = [
            [f"{name} {q}", format_seconds(data[key][q]) if data[key]["count"] else "–"]
            for key, name in (("latency", "duration"), ("provider", "provider"))
            for q in ("p50", "p95", "p99")
        ]
        page["errors"] = [[code, f"{n:,}"] for code, n in data["errors_by_code"].items()]
        page["failed"] = [
            [r["id"], r["code"], str(r["attempts"]), r["message"]]
            for r in data["failed_requests"][:20]
        ]
        page["slowest"] = [
            [
                r["id"],
                format_seconds(r["duration"]),
                str(r["attempts"]),
                "ok" if r["ok"] else r["code"],
            ]
            for r in data["slowest"][:10]
        ]
        page["figures"] = [
            {"cls": cls, "figure": orjson.loads(fig.to_json())} for cls, fig in figures(data)
        ]
        return page

    def _batches(self, now: float) -> dict[str, Any]:
        path, _ = ledger_paths(self.output)
        empty: dict[str, Any] = {"rows": [], "states": {}, "requests": 0, "error": None}
        if not path.exists():
            return empty
        try:
            ledger = Ledger.read(self.output)
        except LedgerError as exc:  # being replaced as we read, or damaged: say so
            return empty | {"error": str(exc)}
        states: dict[str, int] = {}
        rows = []
        for c in ledger.chunks:
            shown = c.status or c.state
            states[shown] = states.get(shown, 0) + 1
            rows.append(
                [
                    str(c.n),
                    c.state,
                    c.status or "–",
                    f"{c.count:,}",
                    c.batch_id or "–",
                    format_duration(max(0.0, (c.ended_at or now) - c.intent_at)),
                ]
            )
        return {
            "rows": rows,
            "states": states,
            "requests": sum(c.count for c in ledger.chunks),
            "error": None,
        }


def _progress(data: dict[str, Any] | None, total: int | None, now: float) -> dict[str, Any]:
    """Done, total, the rate now, the time left, the spend and its projection."""
    s = data["summary"] if data else None
    done = s["requests"] if s else 0
    tp = data["throughput"] if data else {"t": [], "ok": [], "failed": []}
    width = data["bucket_seconds"] if data else 1.0
    window = max(RECENT, 2 * width)
    # Buckets are keyed by their start: one whose end is inside the window counts.
    recent = sum(
        ok + failed
        for t, ok, failed in zip(tp["t"], tp["ok"], tp["failed"], strict=True)
        if t + width > now - window
    )
    rate = recent / window * 60.0  # per minute
    spent = s["cost_usd"] if s else None
    left = None if total is None else max(0, total - done)
    eta = None
    if left is not None and left and rate > 0:
        eta = left / rate * 60.0
    projected = None
    if spent is not None and total and done:
        projected = spent / done * max(total, done)
    last = s["finished_at"] if s else None
    return {
        "done": done,
        "succeeded": s["succeeded"] if s else 0,
        "failed": s["failed"] if s else 0,
        "cached": s["cached"] if s else 0,
        "total": total,
        "percent": None if not total else min(100.0, 100.0 * done / total),
        "rate_per_min": rate,
        "eta": None if eta is None else format_duration(eta),
        "spent": spent,
        "projected": projected,
        "last_result_ago": None if last is None else format_duration(max(0.0, now - last)),
    }
