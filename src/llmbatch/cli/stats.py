"""`llmbatch stats OUTPUT`: the summary of an output file, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..io.journal import journal_stats
from ..stats import BatchStats, price_note
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["add_parser", "main", "stats_table"]

_MAX_IDS_SHOWN = 20


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stats",
        help="summarise an output file: counts, durations, tokens, errors, failed ids",
        description="Read an llmbatch output file and print its statistics.",
    )
    p.add_argument("output", metavar="OUTPUT", help="an output file written by `llmbatch run`")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def stats_table(stats: BatchStats, title: str = "llmbatch") -> Table:
    """The stats as a two-column table. Ids, error codes and the title (a path) are user data:
    they go in as `Text`, never parsed as rich markup (`app/[slug]/page.tsx` stays itself)."""
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{stats.total_requests:,}"),
        ("succeeded", f"{stats.success_count:,}"),
        ("failed", f"{stats.failure_count:,}"),
        ("success rate", f"{stats.success_rate:.1f}%"),
        ("cached", f"{stats.cached_count:,}"),
        ("attempts", f"{stats.total_attempts:,}"),
        ("duration p50", f"{stats.p50_duration * 1000:,.0f} ms"),
        ("duration p95", f"{stats.p95_duration * 1000:,.0f} ms"),
        ("duration p99", f"{stats.p99_duration * 1000:,.0f} ms"),
        ("duration max", f"{stats.max_duration * 1000:,.0f} ms"),
        *_timing_rows(stats),
        ("prompt tokens", f"{stats.prompt_tokens:,}"),
        ("completion tokens", f"{stats.completion_tokens:,}"),
    ]
    rows += cost_rows(stats)
    for code, count in stats.errors_by_type.items():
        rows.append((f"errors: {code}", f"{count:,}"))
    if stats.failed_requests:
        shown = ", ".join(stats.failed_requests[:_MAX_IDS_SHOWN])
        more = len(stats.failed_requests) - _MAX_IDS_SHOWN
        rows.append(("failed ids", shown + (f" ... and {more:,} more" if more > 0 else "")))
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def _timing_rows(stats: BatchStats) -> list[tuple[str, str]]:
    """Admission wait and provider time percentiles, when the results carry timing."""
    if not stats.timed_requests:
        return []
    return [
        (f"{label} p{q}", f"{getattr(stats, f'p{q}_{series}') * 1000:,.0f} ms")
        for series, label in (("wait", "admission wait"), ("provider", "provider time"))
        for q in (50, 95, 99)
    ]


def cost_rows(stats: BatchStats) -> list[tuple[str, str]]:
    """Cost in total and per model (when more than one answered); unpriced successes."""
    rows: list[tuple[str, str]] = []
    if stats.cost is not None:
        rows.append(("cost", f"${stats.cost:,.6f}"))
        if len(stats.cost_by_model) > 1:
            for model, usd in stats.cost_by_model.items():
                rows.append((f"cost: {model or '?'}", f"${usd:,.6f}"))
    lanes = stats.answers_by_lane
    if lanes and set(lanes) != {"standard"}:  # batch, flex, priority: show the split
        for lane, n in lanes.items():
            share = 100.0 * n / max(1, stats.success_count)
            spent = stats.cost_by_lane.get(lane)
            money = "" if spent is None else f", ${spent:,.6f}"
            note = price_note(lane, stats.priced_by_lane.get(lane))
            rows.append((f"lane: {lane}", f"{n:,} answers ({share:.1f}%{money}){note}"))
    if stats.unpriced_count:
        rows.append(("unpriced", f"{stats.unpriced_count:,} (no price known for their model)"))
    if stats.cached_prompt_tokens or stats.cache_write_tokens:
        rows.append(
            (
                "prompt cache",
                f"{stats.cache_hit_share:.1%} of input tokens read from it "
                f"({stats.cached_prompt_tokens:,}); {stats.cache_write_tokens:,} written",
            )
        )
        if stats.cache_saved is not None:
            rows.append(("saved by the cache", f"${stats.cache_saved:,.6f}"))
    return rows


def main(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if not path.is_file():
        print(f"llmbatch stats: error: {path} does not exist or is not a file", file=sys.stderr)
        return EXIT_USAGE
    try:
        stats = journal_stats(path)
    except OSError as exc:
        print(f"llmbatch stats: error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        Console().print(stats_table(stats, title=str(path)))
    return EXIT_FAILED if stats.failure_count else EXIT_OK
