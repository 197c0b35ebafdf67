"""How every message, table and page of llmbatch writes a duration: one format.

format_duration(45)      # '45s'
format_duration(185)     # '3m05s'
format_duration(7805)    # '2h10m05s'
format_seconds(0.25)     # '250 ms': a latency, finer below two minutes
"""

from __future__ import annotations

import math

__all__ = ["format_duration", "format_seconds"]


def format_duration(seconds: float) -> str:
    """Whole seconds, rounded to the nearest; negatives (and nan) as 0s."""
    total = max(0, round(seconds)) if math.isfinite(seconds) else 0
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_seconds(seconds: float | None) -> str:
    """A latency (the report's and the live page's tables): milliseconds below a second,
    seconds with two decimals below two minutes, else `format_duration`; None as a dash."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:,.0f} ms"
    if seconds < 120:
        return f"{seconds:,.2f} s"
    return format_duration(seconds)
