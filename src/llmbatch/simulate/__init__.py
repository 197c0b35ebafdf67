"""The built-in provider simulator: OpenAI, Anthropic and Gemini routes with latency, limits,
faults.

    async with Simulator(SimulatorConfig(rpm=1200, limit_style="bare")) as sim: ...
    with SimulatorProcess("--limit-style", "queue", "--slots", "2") as sim: ...

`Simulator` runs in the current event loop; `SimulatorProcess` runs `llmbatch simulate` in a
process of its own (for tests and benchmarks). The wire formats are `dialects.OPENAI` and
`dialects.ANTHROPIC` (Gemini's, `gemini_wire`, is read as a chat body); the ways of telling a
client about limits are `styles.STYLES`.
"""

from .config import LIMIT_STYLES, OVER_LIMIT_STATUSES, LimitStyleName, SimulatorConfig
from .process import SimulatorProcess, fetch_stats, reset_stats
from .server import Simulator

__all__ = [
    "LIMIT_STYLES",
    "OVER_LIMIT_STATUSES",
    "LimitStyleName",
    "Simulator",
    "SimulatorConfig",
    "SimulatorProcess",
    "fetch_stats",
    "reset_stats",
]
