"""The run pipeline as a library: `llmbatch.run(RunConfig(...))` does what `llmbatch run` does.

    from llmbatch import RunConfig, run
    summary = run(RunConfig(input="in.jsonl", output="out.jsonl", model="gpt-4o-mini",
                            batch_api=True, max_cost=20.0))
    summary.exit_code          # 0 all answered, 1 some failed, 4 max_cost reached, ...

    plan = llmbatch.plan(RunConfig(input="in.jsonl", model="gpt-4o-mini", rpm=500))

The layers, each a module: `config` (what a run is told), `source` and `paths` (what it
reads and writes), `precheck` (the first pass), `costs` (prices and budget), `executors`
(realtime, Ray, provider batch API, deadline: one protocol), `harness` (drains an executor
into the sink), `runner` (the steps in order), `plan`, `summary` and `events` (what
listeners hear). None imports the CLI, argparse or rich, and none prints.
"""

from .config import RunConfig
from .errors import ConfigError
from .events import (
    DeadlineProgress,
    InputChecked,
    OutputOpened,
    PassStarted,
    ResultWritten,
    RunNotice,
    RunStarted,
    RunStopped,
)
from .executors import BatchAPIFailed, Executor
from .harness import RunControl
from .plan import Plan, plan
from .runner import BadInput, arun, run
from .summary import DeadlineOutcome, RunSummary

__all__ = [
    "BadInput",
    "BatchAPIFailed",
    "ConfigError",
    "DeadlineOutcome",
    "DeadlineProgress",
    "Executor",
    "InputChecked",
    "OutputOpened",
    "PassStarted",
    "Plan",
    "ResultWritten",
    "RunConfig",
    "RunControl",
    "RunNotice",
    "RunStarted",
    "RunStopped",
    "RunSummary",
    "arun",
    "plan",
    "run",
]
