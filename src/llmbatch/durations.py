"""How every message, table and page of llmbatch writes a duration: one format.

format_duration(45)      # '45s'
format_duration(185)     # '3m05s'
format_duration(7805)    # '2h10m05s'
"""

from __future__ import annotations

import math

__all__ = ["format_duration"]


def format_duration(seconds: float) -> str:
    """Whole seconds, rounded to the nearest; negatives (and nan) as 0s."""
    total = max(0, round(seconds)) if math.isfinite(seconds) else 0
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
