"""The run report: one self-contained HTML file with plots of a run, read from its output.

    from llmbatch.report import write_report
    write_report("results.jsonl", "report.html", limit_rpm=600)

`aggregate` streams the output file into bounded aggregates (time buckets, log-spaced
latency bins, the slowest requests, the first failures); `render` draws them with plotly
into HTML that opens offline. Needs `pip install 'llmbatch[report]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.atomic import write_atomic
from .aggregate import aggregate
from .html import render

__all__ = ["aggregate", "render", "write_atomic", "write_report"]


def write_report(
    output: str | Path,
    report: str | Path,
    *,
    limit_rpm: float | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Write the report of the output file `output` to `report`; return its data.

    Written to a temp file and renamed, so a failure never leaves half a report."""
    data = aggregate(output, limit_rpm=limit_rpm)
    write_atomic(report, render(data, title))
    return data
